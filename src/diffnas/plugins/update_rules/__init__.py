"""Bundled update rules plugins."""
