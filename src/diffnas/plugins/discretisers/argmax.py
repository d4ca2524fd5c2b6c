"""Argmax per edge (the NAS-Bench-201 discretisation of AutoDL's DARTS search model).

Every searched edge keeps the op with the largest strength; ``none`` is *not* excluded by default
(AutoDL's ``genotype()`` does not exclude it; METHODS.md §1), ``exclude`` can drop ops.
"""

from __future__ import annotations

import attrs

from ...core.cells import edge_ops, searched_edges
from ...core.config import help_field
from ...core.genotype import CellGenotype, Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import Discretiser


class ArgmaxPerEdge(Discretiser):
    """Keep the strongest op on every edge (NAS-Bench-201 protocol)."""

    @attrs.frozen
    class Config:
        exclude: tuple[str, ...] = help_field((), "ops never chosen (e.g. [none])", converter=tuple)

    def discretise(self, search):
        probs = search.probabilities()
        cells = {}
        for name, graph in search.cells.items():
            p = probs[name].clone()
            ops = edge_ops(graph)
            for e, edge in enumerate(ops):
                for o, op in enumerate(edge):
                    if op in self.config.exclude:
                        p[e, o] = float("-inf")
            best = p.argmax(dim=1).tolist()
            edges = [(u, v, ops[e][best[e]]) for e, (u, v) in enumerate(searched_edges(graph))]
            cells[name] = CellGenotype(edges=edges, concat=graph.graph["concat"])
        return Genotype(space=search.search_space.name, cells=cells)


@hookimpl
def diffnas_register_discretisers(register):
    register("argmax_per_edge", ArgmaxPerEdge)
