"""The LHD discretisation policies Base, 3op and 4out (Zhang & Ding, ICML 2023; METHODS.md §6), from
``chaoji90/LHD: eval/gen_trans.py genotype_unbind`` and the evaluation scripts that call it
(``eval/cifar10/train_ori.sh``, ``train_3op.sh``, ``train_4out.sh``).

For each cell type, with p the node-softmax op weights (``search.probabilities()``) and the
output-path weights w_sum = softmax(γ_sum), w_cat = σ(γ_cat) of the intermediate nodes:

1. **Ops**: for every intermediate node keep its ``ops_per_node`` largest (predecessor, op) pairs
   of p (flattened over the node's incoming edges; two ops may come from the same predecessor).
2. **Sum path**: the nodes with w_sum > ``sum_threshold`` (0.2), or the ``sum_top`` largest.
3. **Concat path**: the nodes with w_cat > ``concat_threshold`` (default: the mean of w_cat over
   the cell's nodes), or the ``concat_top`` largest.
4. **Pruning**: a kept pair is dropped when its node is not an output node and reaches no output
   node through kept pairs (``gen_trans.py``'s forward walk; ``prune``).

Policies (the registered names only change the defaults):

* ``lhd_base``: top-2 pairs per node; sum nodes with weight > 0.2; concat nodes with σ > mean σ
  (``train_ori.sh``: gen_trans defaults ``--operations_cumsum_threshold 2 --sum_path_wise_threshold 0.2``,
  concat threshold 0 → the mean);
* ``lhd_3op``: top-3 pairs per node, outputs as Base (``train_3op.sh``: ``--operations_cumsum_threshold 3``);
* ``lhd_4out``: top-2 pairs per node; the top-4 nodes of each output path (``train_4out.sh``:
  ``--sum_path_wise_threshold 0 --sum_output_cumsum_threshold 4`` and concat thresholds 4).

ASSUMPTION [I]: that these three evaluation settings are the paper's "discretisation policies"
Base / 3op / 4out (METHODS.md §6 infers it; the paper text was not available). The fourth setting,
*1M* (25 cells, more channels), changes the evaluation network, not the genotype, and is not a
discretiser.
ASSUMPTION: ties are broken by a stable sort (lower predecessor, then earlier op; lower node for the
output paths), where the code's ``np.argsort`` (quicksort) leaves them unspecified.
Thresholds are strict (``>``), as in the code; if every σ equals the mean, the concat path is empty
(the code gives the same).

The genotype numbers nodes as the search space's cell graph does (inputs 0, 1; intermediate nodes
2..6): the code's pair ``(op, pre_node, i)`` is the edge ``(pre_node, i + 2, op)`` and its output
index k is node k + 2. ``CellGenotype.concat`` holds the concat path, ``CellGenotype.sum_nodes`` the
sum path.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import attrs
import networkx as nx
import torch

from ...core.cells import edge_ops
from ...core.config import help_field, positive
from ...core.errors import RecipeError
from ...core.genotype import CellGenotype, Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import Discretiser
from .top_k import incoming, intermediate_nodes


def top_pairs(p: torch.Tensor, graph: nx.DiGraph, node: int, k: int) -> list[tuple[int, int, str]]:
    """The ``k`` largest (predecessor, op) pairs entering ``node`` as edges ``(src, node, op)``
    (largest first; ties: lower source, then earlier op)."""
    rows = p.detach().cpu().tolist()
    ops = edge_ops(graph)
    pairs = [(rows[e][o], u, ops[e][o]) for u, e in incoming(graph, node) for o in range(len(ops[e]))]
    ranked = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])  # stable: flat (pred, op) order on ties
    return [(pairs[i][1], node, pairs[i][2]) for i in ranked[:k]]


def select_nodes(weights: Sequence[float], nodes: Sequence[int], top: Optional[int], threshold: float) -> list[int]:
    """``nodes[i]`` with ``weights[i] > threshold``, or the ``top`` largest (ties: lower node)."""
    if top is not None:
        order = sorted(range(len(nodes)), key=lambda i: -weights[i])
        return sorted(nodes[i] for i in order[:top])
    return sorted(n for n, w in zip(nodes, weights) if w > threshold)


def prune_unreachable(edges: Sequence[tuple[int, int, str]], outputs: set[int]) -> list[tuple[int, int, str]]:
    """Keep the edges whose destination is an output node or reaches one through ``edges``."""
    succ: dict[int, set[int]] = {}
    for s, d, _ in edges:
        succ.setdefault(s, set()).add(d)
    useful = set(outputs)
    changed = True
    while changed:  # backward closure over a DAG (a handful of nodes)
        changed = False
        for s, ds in succ.items():
            if s not in useful and ds & useful:
                useful.add(s)
                changed = True
    return [e for e in edges if e[1] in useful]


def lhd_cell(p: torch.Tensor, graph: nx.DiGraph, w_sum: Sequence[float], w_cat: Sequence[float], ops_per_node: int = 2,
             sum_top: Optional[int] = None, sum_threshold: float = 0.2, concat_top: Optional[int] = None,
             concat_threshold: Optional[float] = None, prune: bool = True) -> CellGenotype:
    """One LHD cell genotype from node-softmax weights ``p`` and output-path weights (see the module docstring).

    ``w_sum`` / ``w_cat`` list the weights of the intermediate nodes in ascending node order.
    """
    nodes = intermediate_nodes(graph)
    w_sum, w_cat = [float(x) for x in w_sum], [float(x) for x in w_cat]
    if len(w_sum) != len(nodes) or len(w_cat) != len(nodes):
        raise ValueError(f"{len(nodes)} intermediate nodes but {len(w_sum)} sum and {len(w_cat)} concat weights")
    edges = [e for node in nodes for e in top_pairs(p, graph, node, ops_per_node)]
    sums = select_nodes(w_sum, nodes, sum_top, sum_threshold)
    cat_thr = sum(w_cat) / len(w_cat) if concat_threshold is None else concat_threshold
    concat = select_nodes(w_cat, nodes, concat_top, cat_thr)
    if prune:
        edges = prune_unreachable(edges, set(sums) | set(concat))
    return CellGenotype(edges=edges, concat=concat, sum_nodes=sums)


def _make_config(k: int, s_top: Optional[int], c_top: Optional[int]) -> type:
    """The Config of one policy (the three differ only in their defaults)."""
    @attrs.frozen
    class Config:
        ops_per_node: int = help_field(k, "(predecessor, op) pairs kept per node", validator=positive)
        sum_top: Optional[int] = help_field(s_top, "keep the top-k sum-path nodes (null: those above sum_threshold)",
                                            validator=positive)
        sum_threshold: float = help_field(0.2, "sum-path nodes with softmax(γ_sum) > this (when sum_top is null)")
        concat_top: Optional[int] = help_field(c_top, "keep the top-k concat nodes (null: those above concat_threshold)",
                                               validator=positive)
        concat_threshold: Optional[float] = help_field(None, "concat nodes with σ(γ_cat) > this (null: the mean σ of the cell)")
        prune: bool = help_field(True, "drop the pairs of nodes that reach no output node")

    return Config


class LhdBase(Discretiser):
    """LHD Base: top-2 (predecessor, op) pairs per node; sum nodes with weight > 0.2; concat nodes with σ > mean σ (ICML 2023)."""

    Config = _make_config(2, None, None)

    def discretise(self, search) -> Genotype:
        space = search.search_space
        self._check_space(search)
        probs = search.probabilities()
        c = self.config
        cells = {}
        for name, graph in search.cells.items():
            w_sum, w_cat = space.output_paths(name, search.alphas)
            cells[name] = lhd_cell(probs[name], graph, w_sum.cpu().tolist(), w_cat.cpu().tolist(), c.ops_per_node,
                                   c.sum_top, self.hparams["sum_threshold"], c.concat_top,
                                   self.hparams["concat_threshold"], c.prune)
        return Genotype(space=space.name, cells=cells)

    @staticmethod
    def _check_space(search) -> None:
        if not callable(getattr(search.search_space, "output_paths", None)):
            raise RecipeError([(f"the LHD discretisers need a search space with learned output paths (lhd); "
                                f"{getattr(search.search_space, 'name', type(search.search_space).__name__)!r} has none",
                                "recipe.discretiser.name")], getattr(search, "source", None))

    def check_composition(self, composition):
        """Refused before the search (and by ``diffnas validate``), not at the first epoch's end."""
        space = composition.components["search_space"]
        if not callable(getattr(space, "output_paths", None)):
            return [(f"the LHD discretisers need a search space with learned output paths (lhd); "
                     f"{getattr(space, 'name', type(space).__name__)!r} has none", "recipe.discretiser.name")]
        return []


class Lhd3op(LhdBase):
    """LHD 3op: top-3 (predecessor, op) pairs per node; output paths as Base (ICML 2023)."""

    Config = _make_config(3, None, None)


class Lhd4out(LhdBase):
    """LHD 4out: top-2 pairs per node; the top-4 nodes of both the sum and the concat path (ICML 2023)."""

    Config = _make_config(2, 4, 4)


@hookimpl
def diffnas_register_discretisers(register):
    register("lhd_base", LhdBase)
    register("lhd_3op", Lhd3op)
    register("lhd_4out", Lhd4out)
