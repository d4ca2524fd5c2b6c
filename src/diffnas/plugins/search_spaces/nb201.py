"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020; METHODS.md §1 and §9).

Cell: 4 nodes (0 input, 1 and 2 intermediate, 3 output), 6 edges i→j, x_j = Σ_{i<j} o_ij(x_i),
5 candidate ops (none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3): 5^6 = 15,625 cells.
Macro: 3×3 conv stem (C) + BN; three stages of N cells with C, 2C, 4C channels, joined by stride-2
ResNet basic blocks; BN → ReLU → global average pooling → linear classifier. In the supernet the
cells' BN layers are affine=False with track_running_stats=False, as in AutoDL.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import networkx as nx
import torch
from torch import nn

from ...core.cells import SearchCell, make_cell_graph
from ...core.config import cells, channels, help_field
from ...core.genotype import Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import FastPathContext, FusedSupernet, OpWeights, SearchSpace, Supernet
from .ops import NB201_OPS, ReLUConvBN, divide_channels

NB201_OP_NAMES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def _check_ops(inst: Any, attribute: attrs.Attribute, value: Sequence[str]) -> None:
    unknown = [o for o in value if o not in NB201_OPS]
    if unknown:
        raise ValueError(f"{attribute.name!r}: unknown op(s) {unknown}; known: {', '.join(NB201_OPS)}")
    if len(set(value)) != len(value) or not value:
        raise ValueError(f"{attribute.name!r} must be a non-empty list of distinct ops, got {list(value)}")


class ResNetBasicBlock(nn.Module):
    """The stride-2 reduction block between stages: ReLU-Conv3x3-BN twice plus AvgPool→Conv1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(Supernet):
    """The NAS-Bench-201 macro skeleton around a cell graph (supernet or discrete network)."""

    def __init__(self, graph: nx.DiGraph, C: int, N: int, num_classes: int, affine: bool, track: bool):
        super().__init__()
        self.graph = graph
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
        reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        layers: list[nn.Module] = []
        c_prev = C
        for c, red in zip(channels, reductions):
            if red:
                layers.append(ResNetBasicBlock(c_prev, c))
            else:
                layers.append(SearchCell(graph, lambda op, u, v, *, channel_divisor=1, _c=c_prev, _o=c: NB201_OPS[op](
                    divide_channels(_c, channel_divisor), divide_channels(_o, channel_divisor), 1, affine, track)))
            c_prev = c
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights]) -> torch.Tensor:
        w = op_weights["normal"]
        x = self.stem(x)
        for layer in self.layers:
            x = layer([x], w) if isinstance(layer, SearchCell) else layer(x)
        x = self.pool(self.lastact(x)).flatten(1)
        return self.classifier(x)


class DiscreteNB201Network(nn.Module):
    """A discrete NB201 network (one op per edge, affine BN with running statistics)."""

    def __init__(self, genotype: Genotype, C: int, N: int, num_classes: int):
        super().__init__()
        cell = genotype.cells["normal"]
        g = cell.to_graph("normal")
        for i, (u, v) in enumerate(sorted(g.edges, key=lambda e: (e[1], e[0]))):
            g.edges[(u, v)]["ops"] = (g.edges[(u, v)]["op"],)
            g.edges[(u, v)]["index"] = i
        self.net = NB201Network(g, C, N, num_classes, affine=True, track=True)
        self.register_buffer("ones", torch.ones(g.number_of_edges(), 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, {"normal": OpWeights(self.ones)})


class NB201Space(SearchSpace):
    """NAS-Bench-201: 4-node cells with 6 edges and 5 ops, 3 stages × N cells (Dong & Yang, ICLR 2020).

    Defaults C=16, N=5 are the benchmark's. ``ops`` may be narrowed (e.g. without ``none``) to build
    reduced spaces; genotypes of such spaces can still be looked up in the NB201 table.
    """

    @attrs.frozen
    class Config:
        C: int = help_field(16, "channels of the first stage", validator=channels)
        N: int = help_field(5, "cells per stage", validator=cells)
        ops: tuple[str, ...] = help_field(NB201_OP_NAMES, "candidate ops on every edge", validator=_check_ops,
                                          converter=tuple)

    name = "nb201"

    def cells(self) -> dict[str, nx.DiGraph]:
        return {"normal": make_cell_graph("normal", 1, 3, self.config.ops, concat=[3])}

    def build_supernet(self, num_classes: int) -> Supernet:
        return NB201Network(self.cells()["normal"], self.config.C, self.config.N, num_classes, affine=False, track=False)

    def build_network(self, genotype: Genotype, num_classes: int, **overrides: Any) -> nn.Module:
        return DiscreteNB201Network(genotype, overrides.get("C", self.config.C), overrides.get("N", self.config.N), num_classes)

    # what discretisers, regularisers and diagnostics read (protocols.SearchSpace)
    def parameter_free_ops(self) -> frozenset[str]:
        return frozenset({"none", "skip_connect", "avg_pool_3x3"}) & set(self.config.ops)

    def zero_ops(self) -> frozenset[str]:
        return frozenset({"none"}) & set(self.config.ops)

    def skip_op(self) -> str | None:
        return "skip_connect" if "skip_connect" in self.config.ops else None

    def primary_cell(self) -> str:
        return "normal"

    def fused_supernet(self, supernet: Supernet, context: FastPathContext) -> FusedSupernet:
        """:class:`~diffnas.fast.nb201.FusedNB201Network` (per source node: one wide convolution, one
        batch norm, one mixing GEMM); refuses ops outside NB201's five and cells a plugin modified.
        Convolutions are embedded as one 3x3 on CUDA and split into 1x1 + 3x3 elsewhere."""
        from ...fast.nb201 import FusedNB201Network, check_plain_supernet

        check_plain_supernet(supernet, context.source)
        return FusedNB201Network.from_plain(supernet)


@hookimpl
def diffnas_register_search_spaces(register):
    register("nb201", NB201Space)
