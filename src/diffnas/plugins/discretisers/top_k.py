"""Top-k edges per node, then the best op per kept edge: the DARTS discretisation (Liu, Simonyan &
Yang, ICLR 2019, §2.4; METHODS.md §1).

For every intermediate node keep the ``k`` = 2 predecessors whose edge has the largest
max_{o≠none} p_o, then the argmax_{o≠none} op on each kept edge; the cell output is the graph's
``concat`` (nodes 2..5). This is ``quark0/darts: cnn/model_search.py Network.genotype()``: ties
between edges go to the lower source node (a stable sort), ties between ops to the earlier op.
The code lists a node's kept inputs by strength; :class:`~diffnas.core.genotype.CellGenotype`
sorts them by source node, so the DARTS string lists each node's two inputs in source order (the
same architecture; ``Genotype.from_darts_string`` of the code's string compares equal).

Where an edge has only excluded ops (e.g. ``none`` alone), all its ops are considered, as
``ruocwang/darts-pt: sota/cnn/model_search_darts_proj.py genotype()`` does for spaces without
``none``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import attrs
import networkx as nx
import torch

from ...core.cells import edge_ops
from ...core.config import help_field, positive
from ...core.genotype import CellGenotype, Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import Discretiser


def excluded_ops(exclude: Sequence[str] | None, search: Any) -> tuple[str, ...]:
    """A discretiser's ``exclude`` param, or the search space's :meth:`zero_ops` when it is unset."""
    return tuple(exclude) if exclude is not None else tuple(sorted(search.search_space.zero_ops()))


def best_op(row: Sequence[float], ops: Sequence[str], exclude: Sequence[str]) -> tuple[int, float]:
    """``(index, value)`` of the largest entry of ``row`` among ops not in ``exclude`` (first on ties);
    all ops count when every op is excluded."""
    allowed = [o for o, op in enumerate(ops) if op not in exclude] or list(range(len(ops)))
    best = allowed[0]
    for o in allowed[1:]:
        if row[o] > row[best]:
            best = o
    return best, float(row[best])


def intermediate_nodes(graph: nx.DiGraph) -> list[int]:
    """Non-input nodes of a cell graph, ascending."""
    return sorted(n for n, d in graph.nodes(data=True) if d["role"] != "input")


def incoming(graph: nx.DiGraph, node: int) -> list[tuple[int, int]]:
    """``[(src, α row), ...]`` of the searched edges entering ``node``, by source node."""
    return sorted((u, graph.edges[(u, node)]["index"]) for u in graph.predecessors(node) if "index" in graph.edges[(u, node)])


def top_k_cell(p: torch.Tensor, graph: nx.DiGraph, k: int = 2, exclude: Sequence[str] = ("none",)) -> CellGenotype:
    """The DARTS parse of one cell: top-``k`` predecessors per node, argmax op per kept edge."""
    rows = p.detach().cpu().tolist()
    ops = edge_ops(graph)
    edges = []
    for node in intermediate_nodes(graph):
        preds = incoming(graph, node)
        scored = [(u, e, *best_op(rows[e], ops[e], exclude)) for u, e in preds]
        kept = sorted(scored, key=lambda t: -t[3])[:k]  # stable: ties keep the lower source
        edges += [(u, node, ops[e][o]) for u, e, o, _ in kept]
    return CellGenotype(edges=edges, concat=graph.graph["concat"])


def top_k_genotype(probs: Mapping[str, torch.Tensor], cells: Mapping[str, nx.DiGraph], space: str, k: int = 2,
                   exclude: Sequence[str] = ("none",)) -> Genotype:
    """:func:`top_k_cell` on every cell type."""
    return Genotype(space=space, cells={name: top_k_cell(probs[name], g, k, exclude) for name, g in cells.items()})


class TopKEdges(Discretiser):
    """DARTS: keep the k=2 strongest incoming edges per node and their best non-``none`` op (ICLR 2019)."""

    @attrs.frozen
    class Config:
        k: int = help_field(2, "incoming edges kept per intermediate node", validator=positive)
        exclude: Optional[tuple[str, ...]] = help_field(None, "ops never chosen (default: the search space's zero_ops(), e.g. none)",
                                                        converter=attrs.converters.optional(tuple))

    def discretise(self, search):
        return top_k_genotype(search.probabilities(), search.cells, search.search_space.name,
                              self.config.k, excluded_ops(self.config.exclude, search))


@hookimpl
def diffnas_register_discretisers(register):
    register("top_k_edges", TopKEdges)
