"""Test helpers for diffnas and for third-party plugin packages.

``tiny_recipe(**overrides)`` gives a recipe dict for a seconds-long CPU search on synthetic 8×8
images with a 4-channel, 1-cell-per-stage NAS-Bench-201 supernet; ``build_tiny_search`` builds it
and ``run_tiny`` runs it; ``check_graph_safe(search)`` lists what ``trainer.cuda_graphs`` would
refuse in a search's step, found on the CPU (``docs/graph_safety.md``). The pytest plugin (:mod:`diffnas.testing.pytest_plugin`) provides ``catalogue`` and ``plugin_manager``
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
    """A built, not yet run :class:`~diffnas.core.engine.Search` for ``recipe``.

    :param recipe: a recipe dict (default: :func:`tiny_recipe`'s), validated as ``diffnas validate``
        would (a :class:`~diffnas.core.errors.RecipeError` lists every problem).
    :param out_dir: the run directory to write (``None``: nothing is written, ``search.run_dir`` is
        ``None``).
    :param cat: the catalogue to resolve names in (the ``catalogue`` fixture, with your plugin
        ``registered``); default: the bundled components only (:func:`fresh_catalogue`).
    """
    from ..core.engine import Search
    from ..core.recipe import resolve_recipe

    cat = cat or fresh_catalogue()
    resolved = resolve_recipe(recipe or tiny_recipe(), cat)
    return Search(resolved, cat.pm, cat, out_dir)


def run_tiny(recipe: dict[str, Any] | None = None, out_dir: Any = None, cat: Catalogue | None = None) -> tuple[Any, dict]:
    """Build and run a tiny search; return ``(search, summary)``."""
    s = build_tiny_search(recipe, out_dir, cat)
    return s, s.run(progress=False)


def check_graph_safe(search: Any, epoch: int = 0, step: int = 0) -> list[str]:
    """What ``trainer.cuda_graphs`` would refuse in ``search``'s steps, found on the CPU without a GPU
    (``docs/graph_safety.md``); an empty list means the step and its hooks can be captured.

    Lists, as one line each: every ``diffnas_step_start`` / ``diffnas_step_end`` implementation (of a
    plugin or of the search's components) whose plugin does not declare ``cuda_graph_safe = True``, and
    every host synchronisation (file and line) made by one step: the step hooks, then what the graph
    captures (the update rule's ``step`` with the relaxation, the regularisers' ``loss`` and
    ``after_arch_step`` and the supernet), run on batch ``(epoch, step)``. The optimisers' own
    ``step`` is not watched: under graphs the engine builds them capturable.

    It runs one real step: ``search``'s weights, α and optimiser state change, so check a search built
    for the purpose (:func:`build_tiny_search`).
    """
    from torch.utils._python_dispatch import _disable_current_modes

    from ..core.graphs import find_host_syncs, unsafe_step_hooks

    problems = [f"{hook} does not declare cuda_graph_safe = True"
                for hook in unsafe_step_hooks(search.pm, search.components())]
    optimizers = [search.w_optimizer, search.a_optimizer]
    own = [opt.__dict__.get("step") for opt in optimizers]
    for opt in optimizers:
        def unwatched(*args: Any, _step: Any = opt.step, **kwargs: Any) -> Any:
            with _disable_current_modes():  # the detector is a dispatch mode: step outside it
                return _step(*args, **kwargs)
        opt.step = unwatched
    search._register_components()  # as a run does: the components' own step hooks fire too
    try:
        _, start = find_host_syncs(lambda: search._fire("diffnas_step_start", search=search, epoch=epoch, step=step))
        train = search.train_loader.batch(epoch, step)  # the data pipeline runs outside the graph
        valid = search.valid_loader.batch(epoch, step) if search.valid_loader is not None else None
        metrics, inside = find_host_syncs(lambda: search._step(train, valid))
        metrics = {k: v.detach().clone() for k, v in metrics.items()}  # what the engine hands the hook under graphs
        _, end = find_host_syncs(lambda: search._fire("diffnas_step_end", search=search, epoch=epoch, step=step,
                                                      metrics=metrics))
    finally:
        search._unregister_components()
        for opt, step_fn in zip(optimizers, own):
            if step_fn is None:
                del opt.step
            else:
                opt.step = step_fn
    return (problems + [f"diffnas_step_start: {s}" for s in start] + [f"the step: {s}" for s in inside]
            + [f"diffnas_step_end: {s}" for s in end])


@contextlib.contextmanager
def registered(pm: Any, plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` for the duration of a ``with`` block; a catalogue built on ``pm`` (the
    ``catalogue`` fixture) lists its components inside the block and forgets them after."""
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(plugin)
