"""Threshold discretisation of Fair-DARTS (Chu et al., ECCV 2020; METHODS.md §5).

Fair-DARTS relaxes every op with an independent sigmoid, so op strengths do not compete, and keeps
the ops whose σ(α) reaches the threshold T = 0.85. The authors' parser
(``xiaomi-automl/FairDARTS: fairdarts/utils.py parse``, default ``threshold_sparse``) does, per
intermediate node:

* ``mode: sparse`` (default): take the top-2 incoming edges by their strongest op (as DARTS does),
  and keep each one's strongest op only if its strength ≥ T;
* ``mode: edge`` (``threshold_edge``): on every incoming edge keep up to the 2 strongest ops whose
  strength ≥ T (several ops may then share an edge).

The code compares with ``>=``; the paper's rule is commonly quoted as σ > 0.85 — the two differ only
on a tie with T.

ASSUMPTION (the sources give none): a node may keep nothing, which disconnects it. The fallback
``min_inputs`` (default 1) then adds that node's strongest remaining (edge, op) pairs, ignoring the
threshold, until it has ``min_inputs`` inputs, so that every intermediate node stays connected; set
``min_inputs: 0`` for the authors' unguarded parse, or 2 for a cell shaped like a DARTS one. Ops in
``exclude`` (default: the space's ``zero_ops()``, ``none``; the Fair-DARTS op set has no ``none``) are never kept.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import attrs
import networkx as nx
import torch

from ...core.cells import edge_ops
from ...core.config import help_field, in_range, non_negative, one_of, positive
from ...core.genotype import CellGenotype, Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import Discretiser
from .top_k import best_op, excluded_ops, incoming, intermediate_nodes


def threshold_cell(p: torch.Tensor, graph: nx.DiGraph, threshold: float = 0.85, mode: str = "sparse", k: int = 2,
                   ops_per_edge: int = 2, min_inputs: int = 1, exclude: Sequence[str] = ("none",)) -> CellGenotype:
    """The Fair-DARTS threshold parse of one cell, with the connectivity fallback (see the module doc)."""
    rows = p.detach().cpu().tolist()
    ops = edge_ops(graph)
    edges: list[tuple[int, int, str]] = []
    for node in intermediate_nodes(graph):
        preds = incoming(graph, node)
        # every allowed (strength, src, row, op) of this node, strongest first (ties: lower src, earlier op)
        pairs = sorted(((rows[e][o], u, e, o) for u, e in preds for o, op in enumerate(ops[e]) if op not in exclude),
                       key=lambda t: (-t[0], t[1], t[3]))
        kept: list[tuple[int, int]] = []  # (row, op index)
        if mode == "sparse":
            scored = [(u, e, *best_op(rows[e], ops[e], exclude)) for u, e in preds]
            for u, e, o, v in sorted(scored, key=lambda t: -t[3])[:k]:
                if v >= threshold and ops[e][o] not in exclude:
                    kept.append((e, o))
        else:
            for u, e in preds:
                top = [(v, e2, o) for v, _, e2, o in pairs if e2 == e][:ops_per_edge]
                kept += [(e, o) for v, _, o in top if v >= threshold]
        for v, u, e, o in pairs:  # ASSUMPTION: connectivity fallback
            if len(kept) >= min_inputs:
                break
            if (e, o) not in kept:
                kept.append((e, o))
        src_of = {e: u for u, e in preds}
        edges += [(src_of[e], node, ops[e][o]) for e, o in kept]
    return CellGenotype(edges=edges, concat=graph.graph["concat"])


def threshold_genotype(probs: Mapping[str, torch.Tensor], cells: Mapping[str, nx.DiGraph], space: str,
                       **kwargs) -> Genotype:
    return Genotype(space=space, cells={n: threshold_cell(probs[n], g, **kwargs) for n, g in cells.items()})


class Threshold(Discretiser):
    """Fair-DARTS: keep ops with σ(α) ≥ 0.85 (Chu et al., ECCV 2020), with a connectivity fallback (ASSUMPTION)."""

    @attrs.frozen
    class Config:
        threshold: float = help_field(0.85, "keep an op when its strength is at least this", validator=in_range(0.0, 1.0))
        mode: str = help_field("sparse", "sparse: top-k edges, best op each if ≥ T (Fair-DARTS default); "
                                         "edge: every edge, up to ops_per_edge ops ≥ T", validator=one_of("sparse", "edge"))
        k: int = help_field(2, "edges considered per node in sparse mode", validator=positive)
        ops_per_edge: int = help_field(2, "ops kept per edge at most in edge mode", validator=positive)
        min_inputs: int = help_field(1, "ASSUMPTION: a node keeping fewer inputs gets its strongest remaining "
                                        "(edge, op) pairs until it has this many", validator=non_negative)
        exclude: Optional[tuple[str, ...]] = help_field(None, "ops never kept (default: the search space's "
                                                              "zero_ops(), e.g. none)",
                                                        converter=attrs.converters.optional(tuple))

    def discretise(self, search):
        c = self.config
        return threshold_genotype(search.probabilities(), search.cells, search.search_space.name,
                                  threshold=self.hparams["threshold"], mode=c.mode, k=c.k, ops_per_edge=c.ops_per_edge,
                                  min_inputs=c.min_inputs, exclude=excluded_ops(c.exclude, search))


@hookimpl
def diffnas_register_discretisers(register):
    register("threshold", Threshold)
