"""DARTS- auxiliary skip connection (Chu, Wang, Zhang, Zhang, Wei & Li, "DARTS-: Robustly Stepping out
of Performance Collapse Without Indicators", ICLR 2021; METHODS.md §5).

Every mixed edge gets an extra skip connection outside the softmax, scaled by a coefficient β that
decays to zero: ō(x) = Σ_o p_o·o(x) + β·skip(x). The skip is the search space's own ``skip_connect``
for that edge (identity, or FactorizedReduce where the edge has stride 2), built through
``SearchCell.make_op``; it is a supernet parameter trained with the weights. β decays linearly from
β₀ = 1 to 0 over a fixed horizon T of ``decay_epochs`` = 50 epochs, whatever the run's length:
β_e = β₀·max(T − e, 0)/T with e the 0-based epoch (``Meituan-AutoML/DARTS-: src/utils.py
DecayScheduler``, decay ``linear`` with ``decay_max_epoch = decay_stop_epoch = 50``, start epoch 0; after
the stop epoch the scheduler keeps its last value, 0). A run shorter than T ends with β > 0, as the
code's would. With ``decay: none``, β stays at β₀ unless a schedule drives
``regularisers.darts_minus_skip.beta`` (e.g. ``linear`` with ``start: 1.0, end: 0.0, end_at:
after_last``, which gives ``decay_epochs`` equal to the run's epochs).

The term is added through ``SearchCell.edge_terms``; when β = 0 nothing is computed.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from ...core.cells import SearchCell
from ...core.config import help_field, non_negative, one_of, positive
from ...core.errors import PluginError
from ...core.hookspecs import hookimpl
from ...core.protocols import Regulariser


class AuxiliarySkip(nn.Module):
    """``(e, x) -> β·skip_e(x)`` for one cell (``None`` when β = 0); β is read from ``hparams["beta"]``."""

    def __init__(self, skips: nn.ModuleList, hparams: dict[str, Any]):
        super().__init__()
        self.skips = skips
        self.hparams = hparams  # the regulariser's runtime hyperparameters (not a module, not saved)

    def forward(self, e: int, x: torch.Tensor) -> torch.Tensor | None:
        beta = float(self.hparams["beta"])
        if beta == 0.0:
            return None
        return beta * self.skips[e](x)


def add_auxiliary_skips(model: nn.Module, hparams: dict[str, Any], skip_op: str = "skip_connect") -> list[nn.Parameter]:
    """Give every :class:`SearchCell` of ``model`` one β·``skip_op`` term per edge; return the new parameters."""
    cells = [m for m in model.modules() if isinstance(m, SearchCell)]
    if not cells:
        raise PluginError("darts_minus_skip: the supernet has no SearchCell to add the auxiliary skip to")
    new: list[nn.Parameter] = []
    for cell in cells:
        try:
            skips = nn.ModuleList(cell.make_op(skip_op, u, v) for (u, v) in cell.edges)
        except KeyError as exc:
            raise PluginError(f"darts_minus_skip: the search space cannot build a {skip_op} op ({exc})") from None
        aux = AuxiliarySkip(skips, hparams)
        cell.edge_terms.append(aux)
        new += list(aux.parameters())
    return new


class DartsMinusSkip(Regulariser):
    """ō(x) = Σ_o p_o·o(x) + β·skip(x) on every mixed edge, β linear 1 → 0 (DARTS-, ICLR 2021)."""

    @attrs.frozen
    class Config:
        beta0: float = help_field(1.0, "β at epoch 0 (the paper's β₀ = 1)", validator=non_negative, schedulable=False)
        decay: str = help_field("linear", "'linear': β_e = β₀(E − e)/E set at each epoch start; 'none': β stays "
                                          "β₀ unless a schedule drives regularisers.darts_minus_skip.beta",
                                validator=one_of("linear", "none"))
        decay_epochs: int = help_field(50, "horizon T of the linear decay (the code's decay_max_epoch = 50, fixed "
                                           "whatever the run's length): β_e = β₀·max(T − e, 0)/T", validator=positive)

    phases = ()

    def __init__(self, config=None):
        super().__init__(config)
        self.hparams["beta"] = self.config.beta0

    def attach(self, search):
        skip = search.search_space.skip_op()
        if skip is None:
            raise PluginError(f"darts_minus_skip: search space {search.search_space.name!r} declares no skip_op()")
        params = add_auxiliary_skips(search.model, self.hparams, skip)
        search.model.to(search.device)
        if search.recipe.trainer.channels_last:
            search.model.to(memory_format=torch.channels_last)
        if params:  # FactorizedReduce skips (stride-2 edges) are trained with the weights
            search.w_optimizer.add_param_group({"params": params})

    def beta_at(self, epoch: int) -> float:
        """β_e = β₀·max(T − e, 0)/T with T = ``decay_epochs``."""
        T = self.config.decay_epochs
        return self.config.beta0 * max(T - epoch, 0) / T

    @hookimpl
    def diffnas_epoch_start(self, search, epoch):
        if self.config.decay == "linear":
            self.hparams["beta"] = self.beta_at(epoch)


@hookimpl
def diffnas_register_regularisers(register):
    register("darts_minus_skip", DartsMinusSkip)
