"""Node-level joint softmax (LHD; Zhang & Ding, ICML 2023; METHODS.md §6 item 3).

Every non-input node i of a cell has one softmax over all of its (predecessor, op) pairs: with
α^(j,i) the α rows of the edges entering i,

    w[(j, i), o] = exp(α^(j,i)_o / τ) / Σ_{j'→i} Σ_{o'} exp(α^(j',i)_{o'} / τ),

so a node's weights sum to 1 over (i+2)×|O| entries in the LHD space (node i = 0..4 has i+2
predecessors), where per-edge softmax gives each edge weights summing to 1. This is
``chaoji90/LHD: search/concate_sum_five_sig.py Network.inputSoftmax`` (softmax of
``alphas[start:end].view(-1)/temp``). α starts at 1e-3·N(0, 1) as in that code.

The relaxation groups α rows by their edge's destination node in the cell graph (``attach``). It
refuses a cell where some node has an incoming edge that is not searched (no α row), because such a
node has no set of (predecessor, op) pairs to normalise over. With any dense DARTS-style space
(darts, nb201, lhd) it is well defined; only ``lhd`` is the published combination.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs
import networkx as nx
import torch

from ...core.config import help_field, positive
from ...core.errors import PluginError, RecipeError
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights
from .softmax import Softmax


def node_groups(graph: nx.DiGraph) -> list[list[int]]:
    """α rows grouped by destination node (nodes ascending, rows by source node).

    :raises ValueError: if a node mixes searched and fixed (unsearched) incoming edges.
    """
    groups = []
    for node in sorted(graph.nodes):
        ins = sorted(graph.predecessors(node))
        rows = [graph.edges[(u, node)]["index"] for u in ins if "index" in graph.edges[(u, node)]]
        if not rows:
            continue
        fixed = [u for u in ins if "index" not in graph.edges[(u, node)]]
        if fixed:
            raise ValueError(f"node {node} of cell {graph.graph.get('name')!r} has unsearched incoming edges from "
                             f"{fixed}, so its (predecessor, op) pairs cannot share one softmax")
        groups.append(rows)
    return groups


def node_softmax(alpha: torch.Tensor, groups: Sequence[Sequence[int]], tau: float = 1.0) -> torch.Tensor:
    """Joint softmax of ``alpha / tau`` over the rows of each group (differentiable); rows in no
    group are left out of every softmax and get weight 0."""
    num_ops = alpha.shape[-1]
    flat = [i for g in groups for i in g]
    if flat == list(range(alpha.shape[0])):  # contiguous groups in row order (every bundled space)
        parts = [torch.softmax(alpha[g[0]:g[-1] + 1].reshape(-1) / tau, 0).view(len(g), num_ops) for g in groups]
        return torch.cat(parts, 0)
    out = alpha.new_zeros(alpha.shape)
    for g in groups:
        idx = torch.as_tensor(list(g), device=alpha.device)
        out = out.index_copy(0, idx, torch.softmax(alpha.index_select(0, idx).reshape(-1) / tau, 0).view(len(g), num_ops))
    return out


class NodeSoftmax(Softmax):
    """One softmax over all (predecessor, op) pairs of each node (LHD, ICML 2023); τ = 1 by default."""

    @attrs.frozen
    class Config:
        tau: float = help_field(1.0, "softmax temperature τ (schedulable as relaxation.tau)", validator=positive)
        init_std: float = help_field(1e-3, "α is initialised as init_std·N(0, 1)", validator=positive, schedulable=False)

    def __init__(self, config=None):
        super().__init__(config)  # τ in hparams and α initialisation as Softmax
        self.groups: dict[str, list[list[int]]] = {}

    def check_composition(self, composition):
        """Every cell type can be grouped by node (validate-time)."""
        try:
            self.groups_of(composition.cells(), composition.source)
        except RecipeError as exc:
            return exc.problems
        return []

    def attach(self, search):
        self.groups = self.groups_of(search.cells, getattr(search, "source", None))

    @staticmethod
    def groups_of(cells: Mapping[str, nx.DiGraph], source: str | None = None) -> dict[str, list[list[int]]]:
        """α-row groups of every cell type; a RecipeError if a cell cannot be grouped by node."""
        out, problems = {}, []
        for name, graph in cells.items():
            try:
                out[name] = node_groups(graph)
            except ValueError as exc:
                problems.append((f"relaxation node_softmax cannot be used with this search space: {exc}",
                                 "recipe.relaxation.name"))
        if problems:
            raise RecipeError(problems, source)
        return out

    def _groups(self, cell: str) -> list[list[int]]:
        try:
            return self.groups[cell]
        except KeyError:
            raise PluginError(f"node_softmax: no node grouping for cell type {cell!r}; the engine calls attach(search) "
                              f"first (outside a search, set relaxation.groups = NodeSoftmax.groups_of(space.cells()))") from None

    def cell_op_weights(self, cell, alpha, search):
        return OpWeights(node_softmax(alpha, self._groups(cell), self.hparams["tau"]))

    def cell_probabilities(self, cell, alpha):
        return node_softmax(alpha, self._groups(cell), self.hparams["tau"])

    def op_weights(self, alpha, search):
        raise PluginError("node_softmax needs to know the cell of an α (it normalises over each node's edges): "
                          "call cell_op_weights(cell, alpha, search)")

    def probabilities(self, alpha):
        raise PluginError("node_softmax needs to know the cell of an α (it normalises over each node's edges): "
                          "call cell_probabilities(cell, alpha)")


@hookimpl
def diffnas_register_relaxations(register):
    register("node_softmax", NodeSoftmax)
