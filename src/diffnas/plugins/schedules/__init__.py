"""Bundled schedules plugins."""
