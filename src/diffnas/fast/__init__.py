"""Fast paths of the search step, each behind a switch in the recipe's ``trainer`` section.

* ``trainer.fused_cells``: the supernet as fused cells with the same mathematics as the plain one in
  fewer, larger kernels; :func:`fuse_search` picks :mod:`diffnas.fast.nb201` (NAS-Bench-201) or
  :mod:`diffnas.fast.darts` (the DARTS space) and refuses what neither serves.
* ``trainer.cuda_graphs``: :mod:`diffnas.fast.graphs`, each epoch's step captured as one CUDA graph.
"""

from __future__ import annotations

from typing import Any

import torch

#: search spaces with a fused supernet (``trainer.fused_cells``)
FUSED_SPACES = ("nb201", "darts")


def space_has_fused_path(space: Any) -> bool:
    """Whether ``trainer.fused_cells`` can serve the search space ``space``: it overrides
    ``SearchSpace.fused_supernet`` where that hook exists, else it is one of :data:`FUSED_SPACES`."""
    from ..core.protocols import SearchSpace

    base = getattr(SearchSpace, "fused_supernet", None)
    if base is not None:
        return getattr(type(space), "fused_supernet", base) is not base
    return getattr(space, "name", None) in FUSED_SPACES


def fused_cells_reasons(search_space: Any, relaxation: Any) -> list[str]:
    """Why ``trainer.fused_cells`` cannot serve these components, known before a supernet is built
    (``diffnas validate`` and :func:`fuse_search` both ask); empty if nothing is known to refuse."""
    reasons = []
    if relaxation.sets_active:
        reasons.append(f"relaxation {relaxation.name!r} samples one op per edge (an 'active' mask); "
                       "the fused cell computes every op densely")
    if not space_has_fused_path(search_space):
        reasons.append(f"search space {search_space.name!r} has no fused path; fused cells serve the "
                       f"{' and '.join(FUSED_SPACES)} search spaces")
    return reasons


def fuse_search(search: Any) -> None:
    """Swap ``search.model`` for its fused equivalent (``trainer.fused_cells: true``), after the
    regularisers attached; rebuild the (still unused) weight optimiser on the fused parameters.
    Dispatches on the supernet: NB201 → :class:`~diffnas.fast.nb201.FusedNB201Network`, DARTS →
    :class:`~diffnas.fast.darts.FusedDartsNetwork`; any other is refused."""
    from ..core.engine import make_optimizer
    from ..plugins.search_spaces.darts import DartsSupernet
    from ..plugins.search_spaces.nb201 import NB201Network
    from .nb201 import FusedNB201Network, _refuse, check_plain_supernet

    src = search.resolved.source
    reasons = fused_cells_reasons(search.search_space, search.relaxation)
    if reasons:
        raise _refuse("; ".join(reasons), src)
    if type(search.model) is DartsSupernet:
        from .darts import FusedDartsNetwork
        from .darts import check_plain_supernet as check_darts

        check, build = check_darts, FusedDartsNetwork.from_plain
    elif type(search.model) is NB201Network:
        check, build = check_plain_supernet, FusedNB201Network.from_plain
    else:
        raise _refuse(f"search space {search.recipe.search_space.name!r} (supernet {type(search.model).__name__}) has "
                      f"no fused path; fused cells serve the {' and '.join(FUSED_SPACES)} search spaces", src)
    check(search.model, src)
    model_params = {id(p) for p in search.model.parameters()}
    groups = search.w_optimizer.param_groups
    opt_params = {id(p) for g in groups for p in g["params"]}
    if len(groups) != 1 or opt_params != model_params or search.w_optimizer.state:
        raise _refuse("a regulariser changed the weight optimiser's parameters (extra supernet modules)", src)
    t = search.recipe.trainer
    fused = build(search.model).to(search.device)
    if t.channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    search.plain_model = search.model  # kept for param_mapping / plain_state_from_fused (its cell weights go stale)
    search.model = fused
    search.w_optimizer = make_optimizer(t.weights_optimizer, fused.parameters(), t.cuda_graphs)
