"""Limit on parameter-free ops at discretisation: an approximation of Lacharme et al.

Lacharme, Cardot, Lenté & Monmarché, "DARTS with Degeneracy Correction" (IbPRIA 2023) and Pattern
Anal. Appl. 27(2), 2024, control "the number of unweighted operations" with a heuristic whose rule
was not available (METHODS.md §4, §8). ASSUMPTION (METHODS.md §9, **approximation of Lacharme et
al.**): at discretisation at most ``max_param_free`` parameter-free ops (none, skip, pools, noise:
``SearchSpace.parameter_free_ops()``) are kept per cell (default 1 for NB201, 2 for a DARTS normal
cell); where more would be chosen, the kept edges whose parameter-free choice has the smallest
margin p_free − max_{o parametric} p_o switch to their best parametric op.

The genotype to correct comes from a *base* policy, ``argmax_per_edge`` (NB201, the default) or
``top_k_edges`` (the DARTS space), so this discretiser only post-processes it. The during-search parts
(capped-simplex projection, depth regulariser) are the ``degeneracy_cap`` and ``degeneracy_depth``
regularisers.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import attrs
import networkx as nx
import torch

from ...core.cells import edge_ops
from ...core.config import help_field, non_negative
from ...core.genotype import CellGenotype, Genotype
from ...core.hookspecs import hookimpl
from .base_policy import WrappingDiscretiser

log = logging.getLogger(__name__)


def limit_parameter_free(cell: CellGenotype, graph: nx.DiGraph, probs: torch.Tensor, free: frozenset[str],
                         limit: int) -> tuple[CellGenotype, list[tuple[int, int, str, str]]]:
    """Keep at most ``limit`` parameter-free ops in ``cell`` (METHODS.md §9; approximation of Lacharme et al.).

    :param cell: the base policy's cell genotype.
    :param graph: the cell graph (maps each kept edge ``(src, dst)`` to its α row).
    :param probs: ``[num_edges, num_ops]`` op strengths of this cell.
    :param free: the parameter-free op names.
    :param limit: the most parameter-free ops to keep.
    :returns: the corrected cell and the switches made, ``(src, dst, old_op, new_op)``, smallest
        margin first. Edges without a parametric candidate cannot switch; if too few can, the cell
        keeps more than ``limit`` (a warning is logged).
    """
    ops = edge_ops(graph)
    count = 0
    candidates = []
    for src, dst, op in cell.edges:
        if op not in free:
            continue
        count += 1
        data = graph.get_edge_data(src, dst) or {}
        if "index" not in data:
            continue
        e = data["index"]
        names = ops[e]
        param = [i for i, o in enumerate(names) if o not in free]
        if not param or op not in names:
            continue
        best = max(param, key=lambda i: float(probs[e, i]))
        margin = float(probs[e, names.index(op)]) - float(probs[e, best])
        candidates.append((margin, e, src, dst, op, names[best]))
    excess = count - limit
    if excess <= 0:
        return cell, []
    candidates.sort(key=lambda t: (t[0], t[1]))
    chosen = candidates[:excess]
    if len(chosen) < excess:
        log.warning("degeneracy_argmax: %d parameter-free ops kept, only %d can switch to a parametric op "
                    "(limit %d)", count, len(chosen), limit)
    switch = {(s, d): new for _, _, s, d, _, new in chosen}
    edges = [(s, d, switch.get((s, d), op)) for s, d, op in cell.edges]
    return CellGenotype(edges=edges, concat=cell.concat), [(s, d, old, new) for _, _, s, d, old, new in chosen]


class DegeneracyArgmax(WrappingDiscretiser):
    """A base policy's genotype with at most ``max_param_free`` parameter-free ops per cell
    (approximation of Lacharme et al., IbPRIA 2023 / PAA 2024; METHODS.md §9)."""

    @attrs.frozen
    class Config:
        base: str = help_field("argmax_per_edge", "the policy whose genotype is corrected "
                                                  "(argmax_per_edge for NB201, top_k_edges for the DARTS space)")
        base_params: dict[str, Any] = help_field(attrs.Factory(dict), "the base policy's params")
        max_param_free: int | None = help_field(None, "most parameter-free ops kept per cell (default: 1 with "
                                                      "argmax_per_edge, NB201; 2 otherwise, a DARTS normal cell; "
                                                      "ASSUMPTION, approximation of Lacharme et al.)",
                                                validator=non_negative)
        cells: Optional[tuple[str, ...]] = help_field(None, "cell types limited (empty: all; default: the search "
                                                            "space's primary_cell(), e.g. normal)",
                                                      converter=attrs.converters.optional(tuple))

    registered_name = "degeneracy_argmax"

    @property
    def limit(self) -> int:
        if self.config.max_param_free is not None:
            return self.config.max_param_free
        return 1 if self.config.base == "argmax_per_edge" else 2

    def correct(self, search: Any, genotype: Genotype) -> Genotype:
        """Apply the limit to ``genotype`` using the current op strengths."""
        probs = search.probabilities()
        free = search.search_space.parameter_free_ops()
        chosen = self.config.cells if self.config.cells is not None else (search.search_space.primary_cell(),)
        names = list(chosen) or list(genotype.cells)
        cells = dict(genotype.cells)
        for name in names:
            if name in cells and name in search.cells:
                cells[name], _ = limit_parameter_free(cells[name], search.cells[name], probs[name].cpu(), free, self.limit)
        return Genotype(space=genotype.space, cells=cells)

    def discretise(self, search):
        return self.correct(search, self.base(search).discretise(search))

    def final(self, search):
        return self.correct(search, self.base(search).final(search))


@hookimpl
def diffnas_register_discretisers(register):
    register("degeneracy_argmax", DegeneracyArgmax)
