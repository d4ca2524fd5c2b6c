"""Bundled scorers plugins."""
