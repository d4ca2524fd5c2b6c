"""How the engine installs a search space's fast path (``trainer.fused_cells``).

The fused supernet itself belongs to the search space (:meth:`SearchSpace.fused_supernet
<diffnas.core.protocols.SearchSpace.fused_supernet>`); the bundled ``nb201`` and ``darts`` spaces
offer theirs like any third-party space would. This module holds what every space relies on:

* the generic refusals: relaxations that return an ``active`` mask and spaces without a fused
  supernet (:func:`fused_cells_reasons`, before the space is asked; ``diffnas validate`` reports
  them too) and regularisers that changed the weight optimiser's parameters
  (:func:`refuse_changed_optimizer`, after the space's own checks);
* the :class:`~diffnas.core.protocols.FusedSupernet` contract, checked on what the space returns
  (:func:`check_fused_contract`): a ``param_mapping`` that covers both supernets, parts with the
  plain shapes, and a fused supernet that starts from the plain supernet's weights;
* the swap (:func:`install_fused_supernet`): the fused module moved to the device and memory
  format, the plain supernet kept as ``search.plain_model``, the weight optimiser rebuilt.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .errors import PluginError
from .protocols import FastPathContext, FusedSupernet

FUSED_SWITCH = "trainer.fused_cells"


def fast_path_context(search: Any, switch: str) -> FastPathContext:
    """The :class:`FastPathContext` of ``search`` for the recipe switch ``switch``."""
    t = search.recipe.trainer
    return FastPathContext(switch=switch, device=search.device, channels_last=bool(t.channels_last),
                           source=search.resolved.source)


def fused_cells_reasons(search_space: Any, relaxation: Any, catalogue: Any = None,
                        regularisers: Sequence[Any] = ()) -> list[str]:
    """Why ``trainer.fused_cells`` cannot serve these components, known before a supernet is built
    (the search and ``diffnas validate`` both ask; empty if nothing is known to refuse): a relaxation
    that returns an ``active`` mask, a search space that does not implement ``fused_supernet``
    (``catalogue``, if given, names the spaces that do), a regulariser whose
    :meth:`~diffnas.core.protocols.Regulariser.fast_path_refusal` gives a reason."""
    reasons = [f"regulariser {reg.name!r} {why}" for reg in regularisers
               if (why := reg.fast_path_refusal(FUSED_SWITCH)) is not None]
    if relaxation.sets_active:
        reasons.append(f"relaxation {relaxation.name!r} samples one op per edge (an 'active' mask); the fused "
                       "cell computes every op densely")
    if not implements(type(search_space), "fused_supernet"):
        offering = "" if catalogue is None else \
            f"; spaces that implement one: {', '.join(spaces_offering(catalogue, 'fused_supernet')) or '(none)'}"
        reasons.append(f"search space {search_space.name!r} offers no fused supernet (its SearchSpace.fused_supernet "
                       f"returns None){offering}")
    return reasons


def implements(space_cls: type, method: str) -> bool:
    """Whether the search-space class overrides the :class:`~diffnas.core.protocols.SearchSpace` default of ``method``."""
    from .protocols import SearchSpace

    base = getattr(SearchSpace, method)
    return getattr(space_cls, method, base) is not base


def refuse_changed_optimizer(search: Any, context: FastPathContext) -> None:
    """Refuse a weight optimiser whose parameters a regulariser changed (extra supernet modules the
    fused supernet would not train), whatever the space; checked after the space's builder, so that a
    space's own refusal, which names the modification, comes first."""
    model_params = {id(p) for p in search.model.parameters()}
    groups = search.w_optimizer.param_groups
    opt_params = {id(p) for g in groups for p in g["params"]}
    if len(groups) != 1 or opt_params != model_params or search.w_optimizer.state:
        raise context.refuse("a regulariser changed the weight optimiser's parameters (extra supernet modules)")


def check_fused_contract(plain: nn.Module, fused: Any, space: str) -> None:
    """Raise :class:`PluginError` (naming ``space``) if ``fused`` breaks the
    :class:`~diffnas.core.protocols.FusedSupernet` contract against ``plain``."""
    where = f"search space {space!r}: fused_supernet returned"
    if not isinstance(fused, FusedSupernet):
        raise PluginError(f"{where} a {type(fused).__name__}, not a diffnas.core.protocols.FusedSupernet")
    plain_p, fused_p = dict(plain.named_parameters()), dict(fused.named_parameters())
    mapping = fused.param_mapping(plain)
    names = [p for p, _, _ in mapping]
    problems = []
    missing = sorted(set(plain_p) - set(names))
    if missing:
        problems.append(f"param_mapping leaves out plain parameter(s) {missing[:3]}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"param_mapping lists plain parameter(s) {twice[:3]} more than once")
    unmapped = sorted(set(fused_p) - {f for _, f, _ in mapping})
    if unmapped:
        problems.append(f"param_mapping covers no part of fused parameter(s) {unmapped[:3]}")
    with torch.no_grad():
        for pname, fname, part in mapping:
            if pname not in plain_p or fname not in fused_p:
                problems.append(f"param_mapping names an unknown parameter ({pname!r} -> {fname!r})")
                break
            t = fused_p[fname] if part is None else fused_p[fname][part]
            if t.shape != plain_p[pname].shape:
                problems.append(f"{fname}[{part}] has shape {tuple(t.shape)}, plain {pname} {tuple(plain_p[pname].shape)}")
                break
            if not torch.equal(t, plain_p[pname].to(t.dtype)):
                problems.append(f"{fname}[{part}] does not start from the plain supernet's {pname}")
                break
    if problems:
        raise PluginError(f"{where} a module that breaks the FusedSupernet contract: " + "; ".join(problems))


def spaces_offering(catalogue: Any, method: str) -> list[str]:
    """Names of the registered search spaces whose class implements ``method``, for refusal messages."""
    return [n for n in catalogue.names("search_space") if implements(catalogue.get("search_space", n).cls, method)]


def install_fused_supernet(search: Any) -> None:
    """``trainer.fused_cells: true``: swap ``search.model`` for the search space's fused supernet
    (after the regularisers attached), keep the plain one as ``search.plain_model`` (its weights go
    stale: use ``search.model.plain_state_dict(search.plain_model)``) and rebuild the still unused
    weight optimiser on the fused parameters."""
    from .engine import make_optimizer

    ctx = fast_path_context(search, FUSED_SWITCH)
    reasons = fused_cells_reasons(search.search_space, search.relaxation, search.catalogue, search.regularisers)
    if reasons:
        raise ctx.refuse("; ".join(reasons))
    space = search.recipe.search_space.name
    fused = search.search_space.fused_supernet(search.model, ctx)
    if fused is None:  # an implementation may still decline this configuration
        offering = spaces_offering(search.catalogue, "fused_supernet")
        raise ctx.refuse(f"search space {space!r} offers no fused supernet for this configuration (its "
                         f"SearchSpace.fused_supernet returned None); spaces that implement one: "
                         f"{', '.join(offering) or '(none)'}")
    refuse_changed_optimizer(search, ctx)
    check_fused_contract(search.model, fused, space)
    fused = fused.to(search.device)
    if ctx.channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    search.plain_model = search.model
    search.model = fused
    t = search.recipe.trainer
    search.w_optimizer = make_optimizer(t.weights_optimizer, fused.parameters(), t.cuda_graphs)
