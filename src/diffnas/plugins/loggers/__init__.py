"""Bundled loggers (the ``loggers:`` list of a recipe)."""
