"""Bundled relaxations plugins."""
