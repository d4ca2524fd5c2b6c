"""Test helpers for diffnas and for third-party plugin packages.

``tiny_recipe(**overrides)`` gives a recipe dict for a seconds-long CPU search on synthetic 8×8
images with a 4-channel, 1-cell-per-stage NAS-Bench-201 supernet; ``run_tiny`` runs it.
The pytest plugin (:mod:`diffnas.testing.pytest_plugin`) provides ``catalogue`` and ``plugin_manager``
fixtures (builtins only, no entry-point autoload) and a ``registered`` context manager.

Importing this module does not import torch (the pytest plugin loads it into every test session
of an environment where diffnas is installed); the helpers import what they need when called.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from ..registry import Catalogue

TINY: dict[str, Any] = {
    "version": 1,
    "search_space": {"name": "nb201", "params": {"C": 4, "N": 1}},
    "relaxation": {"name": "softmax"},
    "update_rule": {"name": "bilevel", "params": {"order": 1}},
    "discretiser": {"name": "argmax_per_edge"},
    "data": {"dataset": "synthetic", "params": {"num_train": 64, "num_test": 16, "image_size": 8}},
    "trainer": {"epochs": 2, "batch_size": 8, "seed": 0, "device": "cpu", "steps_per_epoch": 2},
    "output": {"progress": False, "draw_cells": False},
}


COMPONENT_SLOTS = ("search_space", "relaxation", "update_rule", "discretiser")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        # a component slot is replaced whole: its params belong to the component named
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("params", *COMPONENT_SLOTS):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def tiny_recipe(**overrides: Any) -> dict[str, Any]:
    """The tiny CPU recipe with sections merged (``trainer={"epochs": 3}`` keeps the rest of
    ``trainer``); a component slot (``relaxation={"name": "sigmoid"}``) replaces the default whole."""
    return _merge(TINY, overrides)


def fresh_catalogue(*plugins: Any) -> Catalogue:
    """A catalogue of the bundled plugins (no entry points) plus ``plugins``."""
    from ..registry import Catalogue, get_plugin_manager

    return Catalogue(get_plugin_manager(autoload=False, extra_plugins=plugins))


def build_tiny_search(recipe: dict[str, Any] | None = None, out_dir: Any = None, cat: Catalogue | None = None):
    """A :class:`~diffnas.core.engine.Search` for ``recipe`` (default: the tiny recipe)."""
    from ..core.engine import Search
    from ..core.recipe import resolve_recipe

    cat = cat or fresh_catalogue()
    resolved = resolve_recipe(recipe or tiny_recipe(), cat)
    return Search(resolved, cat.pm, cat, out_dir)


def run_tiny(recipe: dict[str, Any] | None = None, out_dir: Any = None, cat: Catalogue | None = None) -> tuple[Any, dict]:
    """Build and run a tiny search; return ``(search, summary)``."""
    s = build_tiny_search(recipe, out_dir, cat)
    return s, s.run(progress=False)


@contextlib.contextmanager
def registered(pm: Any, plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` for the duration of a ``with`` block; a catalogue built on ``pm`` (the
    ``catalogue`` fixture) lists its components inside the block and forgets them after."""
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(plugin)
