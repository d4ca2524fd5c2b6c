"""Bundled plugins, one sub-package per component kind; each module is a pluggy plugin."""
