"""pytest fixtures for diffnas and plugin packages (entry point ``pytest11: diffnas``).

pytest loads this module into every test session of an environment where diffnas is installed,
so it imports nothing heavy: torch and the plugins are imported when a fixture is first used.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def catalogue():
    """A catalogue of the bundled plugins, without entry-point autoload."""
    from . import fresh_catalogue

    return fresh_catalogue()


@pytest.fixture
def plugin_manager(catalogue):
    """The plugin manager behind :func:`catalogue`."""
    return catalogue.pm
