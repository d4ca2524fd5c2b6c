"""Cells as networkx DAGs, and the generic supernet cell built from them.

A *cell graph* is a ``networkx.DiGraph``:

* node attributes: ``role`` = ``"input"``, ``"intermediate"`` or ``"output"``;
* searched edges ``(src, dst)``: ``ops`` = tuple of candidate op names, ``index`` = the edge's row
  in the architecture parameters (edges are numbered by ``(dst, src)``);
* graph attributes: ``name`` (the cell type, e.g. ``"normal"``), ``concat`` (nodes whose outputs
  are concatenated into the cell output; ``[3]`` for NAS-Bench-201), ``reduction`` (bool).

:class:`SearchCell` turns such a graph into a module: every edge holds one module per candidate op
and every non-input node is the sum of its incoming mixed edges, computed in topological order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import networkx as nx
import torch
from torch import nn

from .protocols import OpWeights


def make_cell_graph(name: str, num_inputs: int, num_intermediate: int, ops: Sequence[str] | Callable[[int, int], Sequence[str]],
                    concat: Sequence[int] | None = None, reduction: bool = False, dense: bool = True) -> nx.DiGraph:
    """A dense DARTS-style cell graph: each non-input node reads every earlier node.

    :param ops: the candidate ops of every edge, or ``ops(src, dst)`` giving them per edge.
    :param concat: output nodes (default: every intermediate node).
    """
    g = nx.DiGraph(name=name, reduction=reduction)
    n = num_inputs + num_intermediate
    concat = list(concat) if concat is not None else list(range(num_inputs, n))
    for i in range(n):
        role = "input" if i < num_inputs else ("output" if concat == [i] else "intermediate")
        g.add_node(i, role=role)
    index = 0
    for dst in range(num_inputs, n):
        for src in range(dst):
            edge_ops = tuple(ops(src, dst) if callable(ops) else ops)
            g.add_edge(src, dst, ops=edge_ops, index=index)
            index += 1
    g.graph["concat"] = concat
    return g


def searched_edges(graph: nx.DiGraph) -> list[tuple[int, int]]:
    """The searched edges in α-row order."""
    return sorted(((u, v) for u, v, d in graph.edges(data=True) if "index" in d), key=lambda e: graph.edges[e]["index"])


def edge_ops(graph: nx.DiGraph) -> list[tuple[str, ...]]:
    return [tuple(graph.edges[e]["ops"]) for e in searched_edges(graph)]


def alpha_shape(graph: nx.DiGraph) -> tuple[int, int]:
    """``(num_edges, num_ops)``; every edge of a cell must have the same number of candidates."""
    ops = edge_ops(graph)
    widths = {len(o) for o in ops}
    if len(widths) != 1:
        raise ValueError(f"cell {graph.graph.get('name')!r}: edges have different numbers of candidate ops {sorted(widths)}")
    return len(ops), widths.pop()


OpFactory = Callable[[str, int, int], nn.Module]  # (op name, src node, dst node) -> module


class SearchCell(nn.Module):
    """A supernet cell built from a cell graph: node_j = Σ_{i→j} Σ_o w[e, o]·op_o(node_i).

    ``none`` ops (``is_zero = True`` on the module) are never computed: their output is zero, so
    their term and its gradient with respect to the weight are exactly zero.

    ``make_op(op, src, dst)`` builds one candidate op. A space may also accept the keyword
    ``channel_divisor=k`` (build the op for 1/k of the edge's channels, raising ``ValueError`` when
    they do not divide): partial-channel modifiers (PC-DARTS) need it and refuse spaces without it.

    :attr:`fixed` holds the edges a progressive discretiser (SGAS) has decided: ``{e: o}`` makes
    edge ``e`` compute op ``o`` alone, unweighted (its row of op weights is ignored), and
    ``{e: None}`` drops the edge from its node's sum. It is changed between steps (an epoch hook),
    never inside one.
    """

    def __init__(self, graph: nx.DiGraph, make_op: OpFactory):
        super().__init__()
        self.graph = graph
        self.make_op = make_op  # kept so modifiers can build extra per-edge modules (e.g. DARTS-'s skip)
        self.edges = searched_edges(graph)
        self.inputs = sorted(n for n, d in graph.nodes(data=True) if d["role"] == "input")
        self.order = [n for n in nx.topological_sort(graph) if n not in self.inputs]
        self.concat = list(graph.graph["concat"])
        self.incoming = {n: [(graph.edges[(u, n)]["index"], u) for u in sorted(graph.predecessors(n))] for n in self.order}
        self.mixed = nn.ModuleList(
            nn.ModuleList(make_op(op, u, v) for op in graph.edges[(u, v)]["ops"]) for (u, v) in self.edges
        )
        self.zero_mask = [[bool(getattr(m, "is_zero", False)) for m in edge] for edge in self.mixed]
        # auxiliary per-edge terms added by supernet modifiers: ``term(e, x)`` returns a tensor added to
        # edge e's output, or None (DARTS-'s β·skip(x)); empty by default, so it costs nothing
        self.edge_terms = nn.ModuleList()
        #: decided edges: e -> the op computed alone (weight 1), or None for a dropped edge (see the class docstring)
        self.fixed: dict[int, int | None] = {}

    def edge_forward(self, e: int, x: torch.Tensor, w: Sequence[torch.Tensor], active: Sequence[bool] | None) -> torch.Tensor:
        """Edge ``e``'s output: its mixed op (:meth:`mixed_forward`) plus the modifiers' ``edge_terms``."""
        out = self.mixed_forward(e, x, w, active)
        for term in self.edge_terms:
            t = term(e, x)
            if t is not None:
                out = out + t
        return out

    def mixed_forward(self, e: int, x: torch.Tensor, w: Sequence[torch.Tensor], active: Sequence[bool] | None) -> torch.Tensor:
        """Σ_o w[o]·op_o(x) on edge ``e`` (only op ``fixed[e]``, unweighted, once the edge is decided)."""
        if self.fixed.get(e) is not None:
            o = self.fixed[e]
            # + 0·w[o]: α stays in the graph (a zero gradient) when every edge of a cell is decided
            return self.mixed[e][o](x) + w[o] * 0.0
        out = None
        extra = []
        for o, op in enumerate(self.mixed[e]):
            if active is not None and not active[o]:
                extra.append(w[o])  # zero-valued, keeps the straight-through gradient (GDAS)
                continue
            if self.zero_mask[e][o]:
                continue
            y = op(x) * w[o]
            out = y if out is None else out + y
        if out is None:
            out = self.zero_output(e, x)
        for s in extra:
            out = out + s
        return out

    def zero_output(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Zeros of edge ``e``'s output shape (its ``none`` op, else ``x·0``)."""
        zero = next((m for m, z in zip(self.mixed[e], self.zero_mask[e]) if z), None)
        return zero(x) if zero is not None else x * 0.0

    def forward(self, inputs: Sequence[torch.Tensor], op_weights: OpWeights) -> torch.Tensor:
        rows = [r.unbind(0) for r in op_weights.weights.unbind(0)]
        active = op_weights.active.tolist() if op_weights.active is not None else None
        states = dict(zip(self.inputs, inputs))
        for node in self.order:
            acc = None
            for e, src in self.incoming[node]:
                if e in self.fixed and self.fixed[e] is None:
                    continue  # dropped by a progressive discretiser
                y = self.edge_forward(e, states[src], rows[e], None if active is None else active[e])
                acc = y if acc is None else acc + y
            if acc is None:  # every input dropped: the node is zero
                e, src = self.incoming[node][0]
                acc = self.zero_output(e, states[src])
            states[node] = acc
        if len(self.concat) == 1:
            return states[self.concat[0]]
        return torch.cat([states[n] for n in self.concat], dim=1)


def cell_alphas(search) -> dict[str, torch.Tensor]:
    """``search.alphas`` restricted to the cell types (``search.cells``): leaves out architecture
    parameters outside the per-edge layout (:meth:`SearchSpace.extra_arch_parameters`, e.g. LHD's
    output-path γ), which relaxations, per-edge regularisers and discretisers must not treat as edges.
    An object without ``cells`` (a test double) gets all of its ``alphas``."""
    cells = getattr(search, "cells", None)
    return {k: a for k, a in search.alphas.items() if cells is None or k in cells}
