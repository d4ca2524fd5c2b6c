"""Bundled regularisers plugins."""
