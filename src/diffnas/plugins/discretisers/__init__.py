"""Bundled discretisers plugins."""
