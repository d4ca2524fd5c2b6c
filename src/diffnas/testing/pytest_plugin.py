"""pytest fixtures for diffnas and plugin packages (entry point ``pytest11: diffnas``)."""

from __future__ import annotations

import pytest

from . import fresh_catalogue


@pytest.fixture
def catalogue():
    """A catalogue of the bundled plugins, without entry-point autoload."""
    return fresh_catalogue()


@pytest.fixture
def plugin_manager(catalogue):
    """The plugin manager behind :func:`catalogue`."""
    return catalogue.pm
