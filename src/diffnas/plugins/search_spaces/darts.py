"""The DARTS search space (Liu, Simonyan & Yang, ICLR 2019) and the RobustDARTS spaces S1–S4
(Zela et al., ICLR 2020); METHODS.md §1 and §9.

Cell: two input nodes 0 = c_{k-2} and 1 = c_{k-1}, four intermediate nodes 2..5, 14 mixed edges
(node j reads every earlier node), output = concat of nodes 2..5. Eight candidate ops, in the order
of ``quark0/darts: cnn/genotypes.py PRIMITIVES``: none, max_pool_3x3, avg_pool_3x3, skip_connect,
sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5 (see :mod:`.ops`).

Supernet (``quark0/darts: cnn/model_search.py Network``): a 3×3 conv stem with ``stem_multiplier·C``
channels + BN; ``layers`` cells, with reduction cells (channels doubled, stride 2 on the edges
leaving the two inputs) at ⌊layers/3⌋ and ⌊2·layers/3⌋; each cell preprocesses c_{k-2} with
ReLU-Conv1×1-BN, or FactorizedReduce when the previous cell reduced, and c_{k-1} with
ReLU-Conv1×1-BN; global average pooling + a linear classifier. In the search network every BN of a
cell is ``affine=False`` and pooling ops are followed by a BN, as in the authors' code. With the
defaults (C=16, 8 cells, 10 classes) the supernet has 1,930,618 weights, the "param size =
1.930618MB" that ``train_search.py`` logs.

RobustDARTS spaces (``subspace``): S2 = {skip_connect, sep_conv_3x3}, S3 = {none, skip_connect,
sep_conv_3x3}, S4 = {none, noise, sep_conv_3x3} (METHODS.md §9; note that the RobustDARTS code copy
in ``ruocwang/darts-pt: sota/cnn/spaces.py`` lists S4 as {noise, sep_conv_3x3}, which ``ops`` can
select). S1 is a per-edge pruned space of two ops per edge; its default op lists are the ones of
``ruocwang/darts-pt: sota/cnn/spaces.py primitives_1`` (a copy of RobustDARTS's ``spaces.py``), and
``edge_ops`` may replace them (METHODS.md §9 ASSUMPTION: "let the recipe list the ops per edge").
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import attrs
import networkx as nx
import torch
from torch import nn

from ...core.cells import SearchCell, make_cell_graph, searched_edges
from ...core.config import cells, channels, help_field, one_of, small_count
from ...core.genotype import Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import FastPathContext, FusedSupernet, OpWeights, SearchSpace, Supernet
from .ops import DARTS_OPS, FactorizedReduce, ReLUConvBN, divide_channels

#: The DARTS candidate ops, in ``quark0/darts`` PRIMITIVES order.
DARTS_OP_NAMES: tuple[str, ...] = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                   "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

#: RobustDARTS S2–S4 (METHODS.md §9): the same ops on every edge.
ROBUST_OPS: dict[str, tuple[str, ...]] = {
    "s2": ("skip_connect", "sep_conv_3x3"),
    "s3": ("none", "skip_connect", "sep_conv_3x3"),
    "s4": ("none", "noise", "sep_conv_3x3"),
}

#: RobustDARTS S1 per-edge op pairs, in α-row order (edges into node 2, then 3, 4, 5; sources
#: ascending), from ``ruocwang/darts-pt: sota/cnn/spaces.py primitives_1``.
S1_EDGE_OPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "normal": (
        ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
        ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"), ("max_pool_3x3", "skip_connect"),
        ("skip_connect", "sep_conv_3x3"), ("skip_connect", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
        ("skip_connect", "sep_conv_3x3"), ("max_pool_3x3", "skip_connect"), ("skip_connect", "dil_conv_3x3"),
        ("dil_conv_3x3", "dil_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"),
    ),
    "reduce": (
        ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "dil_conv_3x3"), ("max_pool_3x3", "avg_pool_3x3"),
        ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3"),
        ("max_pool_3x3", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),
        ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"),
        ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
    ),
}

#: Ops without learnable weights in the search network (a stride-2 skip_connect is a
#: FactorizedReduce with weights, but it is counted as a skip, as DARTS collapse studies do).
PARAMETER_FREE = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "noise"})

CELL_TYPES = ("normal", "reduce")


def num_edges(steps: int, num_inputs: int = 2) -> int:
    """Mixed edges of a dense cell: node j (0-based among intermediates) reads num_inputs + j nodes."""
    return sum(num_inputs + j for j in range(steps))


def _check_op_list(where: str, ops: Sequence[str]) -> None:
    unknown = [o for o in ops if o not in DARTS_OPS]
    if unknown:
        raise ValueError(f"{where}: unknown op(s) {unknown}; known: {', '.join(DARTS_OPS)}")
    if not ops or len(set(ops)) != len(ops):
        raise ValueError(f"{where} must be a non-empty list of distinct ops, got {list(ops)}")


def _check_ops(inst: Any, attribute: attrs.Attribute, value: Optional[Sequence[str]]) -> None:
    if value is None:
        return
    _check_op_list(repr(attribute.name), value)
    if inst.subspace != "darts":
        raise ValueError(f"'ops' and subspace {inst.subspace!r} both fix the op lists; give only one of them")


def _check_edge_ops(inst: Any, attribute: attrs.Attribute, value: Optional[dict]) -> None:
    if value is None:
        return
    unknown = sorted(set(value) - set(CELL_TYPES))
    if unknown:
        raise ValueError(f"'edge_ops': unknown cell type(s) {unknown}; expected normal and/or reduce")
    if inst.subspace in ROBUST_OPS:
        raise ValueError(f"'edge_ops' cannot be combined with subspace {inst.subspace!r} (use subspace darts or s1)")
    need = num_edges(inst.steps)
    for cell, lists in value.items():
        if len(lists) != need:
            raise ValueError(f"'edge_ops.{cell}' must list the ops of all {need} edges, got {len(lists)}")
        for e, ops in enumerate(lists):
            _check_op_list(f"'edge_ops.{cell}[{e}]'", ops)
        widths = sorted({len(ops) for ops in lists})
        if len(widths) != 1:
            raise ValueError(f"'edge_ops.{cell}': every edge needs the same number of candidate ops (the α "
                             f"rows of a cell have one width), got widths {widths}")


def _to_edge_ops(value: Any) -> Any:
    if value is None:
        return None
    return {str(k): tuple(tuple(e) for e in v) for k, v in dict(value).items()}


class DartsCell(nn.Module):
    """One supernet cell: preprocessing of (c_{k-2}, c_{k-1}) and the mixed DAG (``SearchCell``)."""

    def __init__(self, graph: nx.DiGraph, c_pp: int, c_p: int, C: int, reduction_prev: bool, track: bool):
        super().__init__()
        self.reduction = bool(graph.graph["reduction"])
        self.preprocess0 = (FactorizedReduce(c_pp, C, affine=False, track=track) if reduction_prev
                            else ReLUConvBN(c_pp, C, 1, 1, 0, affine=False, track=track))
        self.preprocess1 = ReLUConvBN(c_p, C, 1, 1, 0, affine=False, track=track)
        red = self.reduction

        def make_op(op: str, u: int, v: int, *, channel_divisor: int = 1) -> nn.Module:
            stride = 2 if red and u < 2 else 1
            c = divide_channels(C, channel_divisor)  # PC-DARTS builds the ops for 1/k of the channels
            return DARTS_OPS[op](c, c, stride, False, track)

        self.cell = SearchCell(graph, make_op)
        self.multiplier = len(graph.graph["concat"])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: OpWeights) -> torch.Tensor:
        return self.cell([self.preprocess0(s0), self.preprocess1(s1)], weights)


class DartsSupernet(Supernet):
    """The DARTS search network (``quark0/darts: cnn/model_search.py Network``) over two cell graphs."""

    def __init__(self, cells: dict[str, nx.DiGraph], C: int, num_classes: int, layers: int, stem_multiplier: int,
                 track: bool = True, in_channels: int = 3):
        super().__init__()
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.reduction_layers = reduction_layers(layers)
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                c_curr *= 2
            cell = DartsCell(cells["reduce" if reduction else "normal"], c_pp, c_p, c_curr, reduction_prev, track)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights]) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, op_weights["reduce" if cell.reduction else "normal"])
        return self.classifier(self.global_pooling(s1).flatten(1))


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: ⌊layers/3⌋ and ⌊2·layers/3⌋ (DARTS)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


class DartsSpace(SearchSpace):
    """The DARTS cell search space (Liu, Simonyan & Yang, ICLR 2019) and RobustDARTS S1–S4 (Zela et al., ICLR 2020).

    Normal and reduction cells of 2 inputs + ``steps`` intermediate nodes, 14 mixed edges for 4
    steps, concat of the intermediate nodes; 8 cells with C=16 and a 3C stem by default (the
    CIFAR-10 search protocol of ``quark0/darts``). ``subspace`` picks the RobustDARTS S1–S4 op sets;
    ``ops`` narrows the op list of every edge; ``edge_ops`` gives the ops edge by edge (S1 style).
    """

    @attrs.frozen
    class Config:
        C: int = help_field(16, "channels of the first cells (the stem has stem_multiplier·C)", validator=channels)
        layers: int = help_field(8, "cells in the supernet; reductions at layers//3 and 2*layers//3", validator=cells)
        stem_multiplier: int = help_field(3, "stem width as a multiple of C", validator=small_count)
        steps: int = help_field(4, "intermediate nodes per cell", validator=small_count)
        subspace: str = help_field("darts", "darts (8 ops) or a RobustDARTS space s1, s2, s3, s4",
                                   validator=one_of("darts", "s1", "s2", "s3", "s4"))
        ops: Optional[tuple[str, ...]] = help_field(None, "candidate ops of every edge (default: the subspace's)",
                                                    validator=_check_ops,
                                                    converter=lambda v: None if v is None else tuple(v))
        edge_ops: Optional[dict[str, tuple[tuple[str, ...], ...]]] = help_field(
            None, "per-edge op lists {normal: [[op, ...] x edges], reduce: [...]} in α-row order (S1 style)",
            validator=_check_edge_ops, converter=_to_edge_ops)
        track_running_stats: bool = help_field(True, "BN running statistics in the search cells (DARTS: true)")

    name = "darts"

    # ------------------------------------------------------------------ op lists

    def op_list(self) -> tuple[str, ...]:
        """The op list shared by every edge (not used for the edges that ``edge_ops``/S1 fix)."""
        c = self.config
        if c.ops is not None:
            return c.ops
        return ROBUST_OPS.get(c.subspace, DARTS_OP_NAMES)

    def edge_op_lists(self, cell: str) -> tuple[tuple[str, ...], ...] | None:
        """Per-edge op lists of ``cell`` (α-row order), or ``None`` when every edge has :meth:`op_list`."""
        c = self.config
        if c.edge_ops is not None and cell in c.edge_ops:
            return c.edge_ops[cell]
        if c.subspace == "s1":
            if c.steps != 4:
                raise ValueError("subspace s1 defines 4-step cells; give edge_ops for other step counts")
            return S1_EDGE_OPS[cell]
        return None

    def cells(self) -> dict[str, nx.DiGraph]:
        out = {}
        n = 2 + self.config.steps
        for name in CELL_TYPES:
            per_edge = self.edge_op_lists(name)
            if per_edge is None:
                ops: Any = self.op_list()
            else:
                index = {(u, v): i for i, (u, v) in enumerate((u, v) for v in range(2, n) for u in range(v))}
                ops = lambda u, v, _p=per_edge, _i=index: _p[_i[(u, v)]]  # noqa: E731
            out[name] = make_cell_graph(name, 2, self.config.steps, ops, concat=list(range(2, n)),
                                        reduction=(name == "reduce"))
        return out

    def build_supernet(self, num_classes: int) -> Supernet:
        c = self.config
        return DartsSupernet(self.cells(), c.C, num_classes, c.layers, c.stem_multiplier, c.track_running_stats)

    def build_network(self, genotype: Genotype, num_classes: int, **overrides: Any) -> nn.Module:
        """The discrete DARTS evaluation network (:class:`diffnas.training.networks.DartsEvalNetwork`).

        Defaults are the DARTS CIFAR evaluation protocol (C=36, 20 cells), not the search
        network's; ``overrides`` may set ``C``, ``layers``, ``auxiliary`` and ``drop_path_prob``.
        """
        from ...training.networks import DartsEvalNetwork

        kw = dict(overrides)
        return DartsEvalNetwork(genotype, C=kw.pop("C", 36), layers=kw.pop("layers", 20), num_classes=num_classes, **kw)

    def parameter_free_ops(self) -> frozenset[str]:
        """The parameter-free ops among this space's candidates (none, skip, pools, noise)."""
        return frozenset(PARAMETER_FREE & self._present_ops())

    def _present_ops(self) -> set[str]:
        return {op for g in self.cells().values() for e in searched_edges(g) for op in g.edges[e]["ops"]}

    def zero_ops(self) -> frozenset[str]:
        return frozenset({"none"}) & self._present_ops()

    def skip_op(self) -> str | None:
        return "skip_connect" if "skip_connect" in self._present_ops() else None

    def primary_cell(self) -> str:
        return "normal"

    def fused_supernet(self, supernet: Supernet, context: FastPathContext) -> FusedSupernet:
        """:class:`~diffnas.fast.darts.FusedDartsNetwork` (per source block: one depthwise convolution
        per conv type, grouped pointwise convolutions, one batch norm, one mixing GEMM); refuses the
        ``noise`` op (S4), per-edge op lists (S1, ``edge_ops``) and cells a plugin modified."""
        from ...fast.darts import fuse_darts_model

        return fuse_darts_model(supernet, context.source)


@hookimpl
def diffnas_register_search_spaces(register):
    register("darts", DartsSpace)
