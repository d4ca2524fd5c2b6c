"""DARTS+ early stopping (Liang, Zhang, Sun, He, Huang, Zhuang & Li, "DARTS+: Improved Differentiable
Architecture Search with Early Stopping", arXiv 1909.06035; METHODS.md §5).

A stopping rule, checked at the end of every epoch:

* criterion 1: stop when the tracked cell (``normal``) of the current genotype has at least
  ``max_skips`` = 2 ``skip_connect`` edges (on NB201, the skip edges among the 6);
* criterion 2: stop when the ranking of α is unchanged for ``patience`` = 10 epochs.

As in the NB201 reimplementation (``chaoji90/Selective-Stop: AutoDL-Projects_ss/exps/algos/DARTS-V1.py``)
the ranking is ``argsort`` of each edge's α row over all ops (``ranking: parametric`` ranks only the
ops with parameters, the paper's wording) and "unchanged for 10 epochs" means the same ranking at 10
consecutive epoch ends (the counter starts at 1 and grows by one per unchanged epoch). Here the
ranking covers every cell type. Either criterion can be switched off with ``null``. The search then
ends after that epoch (``search.request_stop``) and the discretiser gives the final genotype.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ...core.cells import cell_alphas, edge_ops
from ...core.config import help_field, one_of, positive
from ...core.errors import DiffnasError
from ...core.genotype import Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import Regulariser


def alpha_ranking(alphas: dict[str, torch.Tensor], keep: dict[str, torch.Tensor] | None = None) -> dict[str, list]:
    """Per cell type and edge, the op indices sorted by ascending α (stable), as plain lists.

    :param keep: optional ``[num_edges, num_ops]`` bool masks; only those ops are ranked.
    """
    out = {}
    for name, a in alphas.items():
        a = a.detach().float().cpu()
        rows = []
        for e in range(a.shape[0]):
            idx = torch.arange(a.shape[1]) if keep is None else keep[name][e].nonzero().flatten()
            order = torch.argsort(a[e, idx], stable=True)
            rows.append(idx[order].tolist())
        out[name] = rows
    return out


class DartsPlusStop(Regulariser):
    """Stop at ≥ 2 skip connects in the normal cell or an α ranking unchanged for 10 epochs (DARTS+)."""

    @attrs.frozen
    class Config:
        max_skips: int | None = help_field(2, "criterion 1: stop at this many skip_connect edges in the cell "
                                              "(null: off)", validator=positive)
        patience: int | None = help_field(10, "criterion 2: stop when the α ranking is the same for this many "
                                             "consecutive epochs (null: off)", validator=positive)
        ranking: str = help_field("all", "rank 'all' ops (the reimplementation) or only 'parametric' ones (the paper)",
                                  validator=one_of("all", "parametric"))
        cell: str | None = help_field(None, "cell type whose skip connects are counted (default: the search "
                                            "space's primary_cell(), e.g. normal)")
        skip_op: str | None = help_field(None, "the op counted by criterion 1 (default: the search space's "
                                               "skip_op(), e.g. skip_connect)")

    phases = ()

    def __init__(self, config=None):
        super().__init__(config)
        self.previous: dict[str, list] | None = None
        self.retain = 0
        self.cell, self.skip_op = self.config.cell, self.config.skip_op

    def _resolve(self, search: Any) -> None:
        """Fill the tracked cell and skip op the config leaves unset from the search space."""
        space = search.search_space
        if self.cell is None:
            self.cell = space.primary_cell()
        if self.skip_op is None:
            self.skip_op = space.skip_op()

    def count_skips(self, genotype: Genotype) -> int:
        """How many of the tracked cell's edges carry the skip op (0 when the space has none)."""
        cell = genotype.cells.get(self.cell)
        return 0 if cell is None or self.skip_op is None else sum(op == self.skip_op for op in cell.ops())

    def _current_genotype(self, search: Any, record: dict) -> Genotype:
        text = record.get("genotype")
        if isinstance(text, str):
            try:
                return Genotype.parse(text)
            except DiffnasError:
                pass
        return search.discretiser.discretise(search)

    def _masks(self, search: Any) -> dict[str, torch.Tensor] | None:
        if self.config.ranking == "all":
            return None
        free = search.search_space.parameter_free_ops()
        return {name: torch.tensor([[op not in free for op in ops] for ops in edge_ops(g)])
                for name, g in search.cells.items()}

    def observe(self, ranking: dict[str, list]) -> int:
        """Update the unchanged-ranking counter with this epoch's ranking; return it."""
        if self.previous is not None and ranking == self.previous:
            self.retain += 1
        else:
            self.retain = 1
            self.previous = ranking
        return self.retain

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        self._resolve(search)
        skips = self.count_skips(self._current_genotype(search, record))
        retain = self.observe(alpha_ranking(cell_alphas(search), self._masks(search)))
        record["darts_plus"] = {"skips": skips, "rank_retain": retain}
        c = self.config
        if c.max_skips is not None and skips >= c.max_skips:
            search.request_stop(f"DARTS+ criterion 1: {skips} {self.skip_op} in the {self.cell} cell (>= {c.max_skips})")
        elif c.patience is not None and retain >= c.patience:
            search.request_stop(f"DARTS+ criterion 2: α ranking unchanged for {retain} epochs")

    def state_dict(self):
        state = super().state_dict()
        state["previous"] = self.previous
        state["retain"] = self.retain
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.previous = state.get("previous")
        self.retain = int(state.get("retain", 0))


@hookimpl
def diffnas_register_regularisers(register):
    register("darts_plus_stop", DartsPlusStop)
