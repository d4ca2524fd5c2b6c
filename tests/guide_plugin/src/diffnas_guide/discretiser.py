"""The ``strongest_op`` discretiser: every edge kept with its strongest op that is not a zero op."""

from __future__ import annotations

from diffnas.core.cells import edge_ops, searched_edges
from diffnas.core.genotype import CellGenotype, Genotype
from diffnas.core.protocols import Discretiser


class StrongestOp(Discretiser):
    """Keeps every edge with its strongest op, never one of the space's zero ops (``none``)."""

    def discretise(self, search):
        zero = search.search_space.zero_ops()  # declared by the space: no op names assumed here
        cells = {}
        for name, probs in search.probabilities().items():
            graph = search.cells[name]
            edges = []
            for (src, dst), ops, row in zip(searched_edges(graph), edge_ops(graph), probs.tolist()):
                allowed = [i for i, op in enumerate(ops) if op not in zero] or list(range(len(ops)))
                best = max(allowed, key=lambda i: row[i])
                edges.append((src, dst, ops[best]))
            cells[name] = CellGenotype(edges=edges, concat=graph.graph["concat"])
        return Genotype(space=search.search_space.name, cells=cells)
