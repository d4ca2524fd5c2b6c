"""The ``chain`` search space: a small dense cell stacked ``cells`` times on a 3×3 stem.

The cell has one input node (0) and ``nodes`` computed nodes; node j sums a mixed op over every
earlier node, and the last node is the cell output. Candidate ops: ``none`` (zero), ``skip_connect``
(identity), ``conv_3x3`` (ReLU → conv → BN) and ``avg_pool_3x3``.
"""

from __future__ import annotations

from typing import Any

import attrs
import networkx as nx
import torch
from torch import nn

from diffnas.core.cells import SearchCell, make_cell_graph
from diffnas.core.config import help_field, positive
from diffnas.core.genotype import Genotype
from diffnas.core.protocols import FastPathContext, OpWeights, SearchSpace, Supernet

from .fast import ChainPopulation, FusedChain

CHAIN_OPS = ("none", "skip_connect", "conv_3x3", "avg_pool_3x3")


class Zero(nn.Module):
    """The ``none`` op. ``is_zero`` tells the supernet cell never to compute it."""

    is_zero = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int, affine: bool) -> nn.Module:
    """One candidate op on ``channels`` feature maps (stride 1, shape-preserving)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "conv_3x3":
        return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                             nn.BatchNorm2d(channels, affine=affine))
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise KeyError(name)


def _check_ops(inst: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    unknown = [op for op in value if op not in CHAIN_OPS]
    if unknown or not value:
        raise ValueError(f"{attribute.name!r} must be a non-empty subset of {list(CHAIN_OPS)}, got {list(value)}")


class ChainSupernet(Supernet):
    """Stem, ``cells`` weight-sharing cells, global pooling and a linear classifier."""

    def __init__(self, graph: nx.DiGraph, C: int, cells: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList(SearchCell(graph, lambda op, u, v: make_op(op, C, affine=False))
                                   for _ in range(cells))
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights]) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell([x], op_weights["normal"])
        return self.classifier(x.mean((2, 3)))


class ChainNetwork(nn.Module):
    """The discrete network of a genotype: each node sums its kept edges' ops."""

    def __init__(self, genotype: Genotype, C: int, cells: int, num_classes: int):
        super().__init__()
        cell = genotype.cells["normal"]
        self.edges = list(cell.edges)
        self.output = cell.concat[-1]
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.ops = nn.ModuleList(nn.ModuleList(make_op(op, C, affine=True) for _, _, op in self.edges)
                                 for _ in range(cells))
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for ops in self.ops:
            nodes = {0: x}
            for (src, dst, _), op in zip(self.edges, ops):  # edges are sorted by destination
                nodes[dst] = nodes.get(dst, 0) + op(nodes[src])
            x = nodes[self.output]
        return self.classifier(x.mean((2, 3)))


class ChainSpace(SearchSpace):
    """A dense one-input cell of ``nodes`` computed nodes, stacked ``cells`` times (the guide's space)."""

    @attrs.frozen
    class Config:
        C: int = help_field(8, "channels of every cell", validator=positive)
        cells: int = help_field(2, "cells stacked after the stem", validator=positive)
        nodes: int = help_field(2, "computed nodes per cell (the last is the output)", validator=positive)
        ops: tuple[str, ...] = help_field(CHAIN_OPS, "candidate ops on every edge", converter=tuple,
                                          validator=_check_ops)

    def cells(self) -> dict[str, nx.DiGraph]:
        n = self.config.nodes
        return {"normal": make_cell_graph("normal", 1, n, self.config.ops, concat=[n])}

    def build_supernet(self, num_classes: int) -> Supernet:
        return ChainSupernet(self.cells()["normal"], self.config.C, self.config.cells, num_classes)

    def build_network(self, genotype: Genotype, num_classes: int, **overrides: Any) -> nn.Module:
        return ChainNetwork(genotype, overrides.get("C", self.config.C), overrides.get("cells", self.config.cells),
                            num_classes)

    # what discretisers, regularisers and diagnostics read about this space
    def parameter_free_ops(self) -> frozenset[str]:
        return frozenset({"none", "skip_connect", "avg_pool_3x3"}) & set(self.config.ops)

    def zero_ops(self) -> frozenset[str]:
        return frozenset({"none"}) & set(self.config.ops)

    def skip_op(self) -> str | None:
        return "skip_connect" if "skip_connect" in self.config.ops else None

    def primary_cell(self) -> str:
        return "normal"

    # the optional fast paths (§4): the same mathematics as build_supernet's, in fewer kernels
    def fused_supernet(self, supernet: Supernet, context: FastPathContext) -> FusedChain:
        if modified(supernet):
            raise context.refuse("a regulariser changed the chain supernet; its fused cells would not")
        return FusedChain(supernet)

    def population_supernet(self, supernets: list[nn.Module], context: FastPathContext) -> ChainPopulation:
        if any(modified(s) for s in supernets):
            raise context.refuse("a regulariser changed a member's chain supernet; the population would not")
        return ChainPopulation(supernets)


def modified(supernet: nn.Module) -> bool:
    """Whether ``supernet`` is not a ChainSupernet as built (a regulariser's ``attach`` added edge terms)."""
    return type(supernet) is not ChainSupernet or any(len(cell.edge_terms) for cell in supernet.cells)
