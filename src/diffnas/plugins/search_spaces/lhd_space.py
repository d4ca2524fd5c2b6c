"""The LHD search space (Zhang & Ding, "Rethink DARTS Search Space and Renovate a New Benchmark",
ICML 2023; METHODS.md §6), from the authors' code ``chaoji90/LHD: search/concate_sum_five_sig.py``
and ``operations_five_dr.py`` (the paper text was not available).

Changes against the DARTS space:

* **5 intermediate nodes** (nodes 2..6; node j reads every earlier node: 2+3+4+5+6 = 20 edges).
* **7 ops, no ``none``**, in the code's PRIMITIVES order: max_pool_3x3, avg_pool_3x3 (each followed
  by a BN), skip_connect (identity; FactorizedReduce at stride 2), sep_conv_3x3/5x5 and
  dil_conv_3x3/5x5. The convs are a **single** ReLU → depthwise k×k conv (dilation 2 for dil_conv)
  → BN: no 1×1 pointwise conv and no second stacked block (so sep_conv_kxk is dil_conv with
  dilation 1).
* **Node-level joint softmax** (the ``node_softmax`` relaxation): the α rows of a node's incoming
  edges share one softmax over all (predecessor, op) pairs. This space works with any relaxation;
  the LHD protocol uses ``node_softmax``.
* **Two learned output paths per cell** (γ, one ``[2, steps]`` tensor per cell type, the extra
  architecture parameters ``gamma_normal`` / ``gamma_reduce``): row 0 "sum", row 1 "concat". With
  n_i the (unscaled) sum of node i's mixed inputs, the cell outputs
  ``sum = Σ_i softmax(γ_sum)_i·n_i`` and ``concat = concat_i(σ(γ_cat,i)·n_i)``; the σ-scaled node
  σ(γ_cat,i)·n_i is also what later nodes read. The next cell gets (sum, concat) as (s0, s1).
* preprocess0 is the identity, except in reduction cells, where it is a 1×1 ReLU-Conv-BN to the new
  width (the code passes the current cell's reduction flag as ``reduction_prev``); preprocess1 is a
  1×1 ReLU-Conv-BN. Edges leaving the two inputs of a reduction cell have stride 2.
* Two stems, 3→C and 3→``stem_multiplier``·C (3×3 conv + BN); the first cell reads (C-stem, 3C-stem);
  the classifier reads GAP(concat(s0, s1)) of the last cell (C_last + steps·C_last channels).

All α, γ included, start at 1e-3·N(0, 1) (γ by the engine, see
:meth:`~diffnas.core.protocols.SearchSpace.extra_arch_parameters`). In the search network every cell
BN is ``affine=False`` (the stems' BNs are affine), as in the code.

ASSUMPTION: the code divides γ_sum by the relaxation temperature (``softmax(γ_sum/temp)``); here the
output paths always use temperature 1 (the code's default, ``temp=1``, in every LHD baseline script
read), because the temperature belongs to the relaxation of the edges.
Genotypes come from the ``lhd_base`` / ``lhd_3op`` / ``lhd_4out`` discretisers; ``build_network`` gives
the discrete evaluation network of ``eval/multi_path_concat_sum.py``
(:class:`~diffnas.training.networks.LhdEvalNetwork`; protocol ``examples/train/lhd_cifar10.yaml``).
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import networkx as nx
import torch
from torch import nn

from ...core.cells import SearchCell, make_cell_graph
from ...core.config import cells, channels, help_field, small_count
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights, SearchSpace, Supernet
from .darts import reduction_layers
from .ops import OpBuilder, Pooling, ReLUConvBN, bn, identity_or_reduce

#: The LHD candidate ops, in ``chaoji90/LHD: search/genotypes.py PRIMITIVES`` order.
LHD_OP_NAMES: tuple[str, ...] = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                                 "dil_conv_3x3", "dil_conv_5x5")

CELL_TYPES = ("normal", "reduce")
NUM_INPUTS = 2
PARAMETER_FREE = frozenset({"skip_connect", "max_pool_3x3", "avg_pool_3x3"})


class DepthwiseConvBN(nn.Sequential):
    """ReLU → depthwise k×k conv (stride, dilation; no bias) → BN: LHD's single-block sep/dil conv
    (``operations_five_dr.py`` SepConv/DilConv with the pointwise conv commented out)."""

    def __init__(self, c: int, k: int, stride: int, padding: int, dilation: int, affine: bool, track: bool):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c, c, k, stride=stride, padding=padding, dilation=dilation, groups=c, bias=False),
                         bn(c, affine, track))


def _same_width(build: OpBuilder) -> OpBuilder:
    def make(ci: int, co: int, s: int, a: bool, t: bool) -> nn.Module:
        if ci != co:
            raise ValueError(f"LHD ops keep the width (c_in {ci} != c_out {co})")
        return build(ci, co, s, a, t)
    return make


#: ``(c_in, c_out, stride, affine, track) -> module``; c_in must equal c_out.
LHD_OPS: dict[str, OpBuilder] = {
    "max_pool_3x3": _same_width(lambda ci, co, s, a, t: Pooling("max", ci, co, s, a, t, bn_after=True)),
    "avg_pool_3x3": _same_width(lambda ci, co, s, a, t: Pooling("avg", ci, co, s, a, t, bn_after=True)),
    "skip_connect": _same_width(lambda ci, co, s, a, t: identity_or_reduce(ci, co, s, a, t)),
    "sep_conv_3x3": _same_width(lambda ci, co, s, a, t: DepthwiseConvBN(ci, 3, s, 1, 1, a, t)),
    "sep_conv_5x5": _same_width(lambda ci, co, s, a, t: DepthwiseConvBN(ci, 5, s, 2, 1, a, t)),
    "dil_conv_3x3": _same_width(lambda ci, co, s, a, t: DepthwiseConvBN(ci, 3, s, 2, 2, a, t)),
    "dil_conv_5x5": _same_width(lambda ci, co, s, a, t: DepthwiseConvBN(ci, 5, s, 4, 2, a, t)),
}


def gamma_key(cell: str) -> str:
    """The name of cell type ``cell``'s output-path parameters in ``search.alphas``."""
    return f"gamma_{cell}"


def path_weights(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(γ[0]), σ(γ[1]))``: the sum-path and concat-path weights of the intermediate nodes."""
    return torch.softmax(gamma[0], dim=-1), torch.sigmoid(gamma[1])


def lhd_cell_graph(name: str, steps: int, ops: Sequence[str], reduction: bool) -> nx.DiGraph:
    """The dense LHD cell graph; both output paths (``concat`` and ``sum``) range over all intermediate nodes."""
    nodes = list(range(NUM_INPUTS, NUM_INPUTS + steps))
    g = make_cell_graph(name, NUM_INPUTS, steps, tuple(ops), concat=nodes, reduction=reduction)
    g.graph["sum"] = list(nodes)
    return g


class LhdCell(nn.Module):
    """One LHD supernet cell: returns ``(sum, concat)`` (see the module docstring)."""

    def __init__(self, graph: nx.DiGraph, c_pp: int, c_p: int, C: int, track: bool, affine: bool = False):
        super().__init__()
        self.reduction = bool(graph.graph["reduction"])
        if self.reduction:
            self.preprocess0: nn.Module = ReLUConvBN(c_pp, C, 1, 1, 0, affine=affine, track=track)
        else:
            if c_pp != C:
                raise ValueError(f"LHD normal cell: preprocess0 is the identity, so s0 must have C={C} channels, has {c_pp}")
            self.preprocess0 = nn.Identity()
        self.preprocess1 = ReLUConvBN(c_p, C, 1, 1, 0, affine=affine, track=track)
        red = self.reduction

        def make_op(op: str, u: int, v: int) -> nn.Module:
            return LHD_OPS[op](C, C, 2 if red and u < NUM_INPUTS else 1, affine, track)

        self.cell = SearchCell(graph, make_op)
        self.nodes = [n for n in self.cell.order]  # intermediate nodes, topological (= ascending) order
        self.position = {n: i for i, n in enumerate(sorted(self.nodes))}  # node -> column of γ
        self.concat = list(graph.graph["concat"])
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: OpWeights, gamma: torch.Tensor):
        w_sum, w_cat = path_weights(gamma)
        cell = self.cell
        rows = [r.unbind(0) for r in weights.weights.unbind(0)]
        active = weights.active.tolist() if weights.active is not None else None
        states = {cell.inputs[0]: self.preprocess0(s0), cell.inputs[1]: self.preprocess1(s1)}
        total = None
        for node in self.nodes:
            acc = None
            for e, src in cell.incoming[node]:
                y = cell.edge_forward(e, states[src], rows[e], None if active is None else active[e])
                acc = y if acc is None else acc + y
            i = self.position[node]
            states[node] = w_cat[i] * acc  # the σ-scaled node feeds later nodes and the concat path
            term = w_sum[i] * acc
            total = term if total is None else total + term
        return total, torch.cat([states[n] for n in self.concat], dim=1)


class LhdSupernet(Supernet):
    """The LHD search network (``chaoji90/LHD: search/concate_sum_five_sig.py Network``)."""

    def __init__(self, cells: dict[str, nx.DiGraph], C: int, num_classes: int, layers: int, stem_multiplier: int,
                 track: bool = True, in_channels: int = 3):
        super().__init__()
        self.stem_0 = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem_1 = nn.Sequential(nn.Conv2d(in_channels, stem_multiplier * C, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(stem_multiplier * C))
        c_pp, c_p, c_curr = C, stem_multiplier * C, C
        self.reduction_layers = reduction_layers(layers)
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                c_curr *= 2
            cell = LhdCell(cells["reduce" if reduction else "normal"], c_pp, c_p, c_curr, track)
            self.cells.append(cell)
            c_pp, c_p = c_curr, cell.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p + c_pp, num_classes)

    def forward(self, x: torch.Tensor, op_weights: dict[str, Any]) -> torch.Tensor:
        s0, s1 = self.stem_0(x), self.stem_1(x)
        for cell in self.cells:
            name = "reduce" if cell.reduction else "normal"
            s0, s1 = cell(s0, s1, op_weights[name], op_weights[gamma_key(name)])
        return self.classifier(self.global_pooling(torch.cat([s0, s1], dim=1)).flatten(1))


def _check_ops(inst: Any, attribute: attrs.Attribute, value: Sequence[str]) -> None:
    unknown = [o for o in value if o not in LHD_OPS]
    if unknown:
        raise ValueError(f"'ops': unknown op(s) {unknown}; known: {', '.join(LHD_OP_NAMES)}")
    if not value or len(set(value)) != len(value):
        raise ValueError(f"'ops' must be a non-empty list of distinct ops, got {list(value)}")


class LhdSpace(SearchSpace):
    """The LHD search space (Zhang & Ding, ICML 2023): 5-node cells, 7 ops without none, learned sum and concat output paths.

    Normal and reduction cells of 2 inputs + ``steps`` = 5 intermediate nodes (20 mixed edges × 7
    ops), two output paths per cell learned by γ (``gamma_normal``, ``gamma_reduce``: ``[2, steps]``,
    row 0 sum/softmax, row 1 concat/sigmoid); 8 cells with C=16 and stems C and 3C by default
    (``chaoji90/LHD: search/DARTS/train_search_darts.py``). Use it with the ``node_softmax``
    relaxation and an ``lhd_*`` discretiser.
    """

    @attrs.frozen
    class Config:
        C: int = help_field(16, "channels of the first cells (stems: C and stem_multiplier·C)", validator=channels)
        layers: int = help_field(8, "cells in the supernet; reductions at layers//3 and 2*layers//3", validator=cells)
        stem_multiplier: int = help_field(3, "width of the second stem as a multiple of C", validator=small_count)
        steps: int = help_field(5, "intermediate nodes per cell (LHD: 5)", validator=small_count)
        ops: tuple[str, ...] = help_field(LHD_OP_NAMES, "candidate ops of every edge (LHD: the 7 ops, no none)",
                                          validator=_check_ops, converter=tuple)
        track_running_stats: bool = help_field(True, "BN running statistics in the search cells (LHD code: true)")

    name = "lhd"

    def cells(self) -> dict[str, nx.DiGraph]:
        return {name: lhd_cell_graph(name, self.config.steps, self.config.ops, name == "reduce") for name in CELL_TYPES}

    def extra_arch_parameters(self) -> dict[str, tuple[int, ...]]:
        """γ per cell type: ``[2, steps]`` (row 0: sum path, softmax; row 1: concat path, sigmoid)."""
        return {gamma_key(name): (2, self.config.steps) for name in CELL_TYPES}

    def output_paths(self, cell: str, alphas: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum weights, concat weights)`` of cell type ``cell``'s intermediate nodes (ascending),
        from the architecture parameters ``alphas`` (``search.alphas``); detached."""
        return tuple(t.detach() for t in path_weights(alphas[gamma_key(cell)].detach()))  # type: ignore[return-value]

    def build_supernet(self, num_classes: int) -> Supernet:
        c = self.config
        return LhdSupernet(self.cells(), c.C, num_classes, c.layers, c.stem_multiplier, c.track_running_stats)

    def build_network(self, genotype: Any, num_classes: int, **overrides: Any) -> nn.Module:
        """The discrete LHD evaluation network (:class:`diffnas.training.networks.LhdEvalNetwork`).

        Defaults are the LHD CIFAR evaluation protocol (``eval/cifar10/train.py``: C=36, 20 cells,
        auxiliary head), not the search network's; ``overrides`` may set ``C``, ``layers``,
        ``auxiliary`` and ``drop_path_prob`` (per concat node of the normal cell).
        """
        from ...training.networks import LhdEvalNetwork

        kw = dict(overrides)
        unknown = sorted(set(kw) - {"C", "layers", "auxiliary", "drop_path_prob"})
        if unknown:
            raise ValueError(f"the LHD network takes C, layers, auxiliary and drop_path_prob, not {unknown}")
        return LhdEvalNetwork(genotype, C=kw.pop("C", 36), layers=kw.pop("layers", 20), num_classes=num_classes,
                              stem_multiplier=self.config.stem_multiplier, **kw)

    def parameter_free_ops(self) -> frozenset[str]:
        return frozenset(PARAMETER_FREE & set(self.config.ops))

    def zero_ops(self) -> frozenset[str]:
        return frozenset()  # the LHD op set has no "none"

    def skip_op(self) -> str | None:
        return "skip_connect" if "skip_connect" in self.config.ops else None

    def primary_cell(self) -> str:
        return "normal"


@hookimpl
def diffnas_register_search_spaces(register):
    register("lhd", LhdSpace)
