"""Bundled search spaces plugins."""
