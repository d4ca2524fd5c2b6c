"""β-DARTS regularisation (Ye, Li, Zhang, Gao, Tian, Wu & Ji, "β-DARTS: Beta-Decay Regularization for
Differentiable Architecture Search", CVPR 2022; METHODS.md §5).

The α step minimises L_val + λ_e·L_β with L_β = mean_edges(logsumexp(α_edge)): the log-sum-exp of each
edge's α row, averaged over every edge of every cell type (the authors' ``mlc_loss`` stacks the normal
and reduce α and takes one mean; ``Sunshine-Ye/Beta-DARTS: optimizers/darts/architect.py``). The
coefficient grows linearly with the 0-based epoch index e: λ_e = 0.5·e (``0 + 50·epoch/100`` in the
code, 100 epochs on NB201). With ``ramp: false`` the plugin leaves λ to a schedule
(target ``regularisers.beta_darts.weight``).
"""

from __future__ import annotations

import attrs
import torch

from ...core.cells import cell_alphas
from ...core.config import help_field, non_negative
from ...core.hookspecs import hookimpl
from ...core.protocols import Regulariser


def beta_loss(alphas: list[torch.Tensor]) -> torch.Tensor:
    """mean over all edges of logsumexp(α_edge) (rows of every tensor in ``alphas``)."""
    return torch.cat([torch.logsumexp(a, dim=-1).reshape(-1) for a in alphas]).mean()


class BetaDarts(Regulariser):
    """λ_e·mean_edges(logsumexp(α_edge)) on the α step, λ_e = 0.5·e (β-DARTS, CVPR 2022)."""

    @attrs.frozen
    class Config:
        slope: float = help_field(0.5, "λ grows by this much per epoch (the paper's 0.5)", validator=non_negative, schedulable=False)
        offset: float = help_field(0.0, "λ at epoch 0", validator=non_negative, schedulable=False)
        ramp: bool = help_field(True, "set λ_e = offset + slope·e at each epoch start; false: λ starts at offset "
                                      "and a schedule may drive regularisers.beta_darts.weight")

    phases = ("arch",)

    def __init__(self, config=None):
        super().__init__(config)
        self.hparams["weight"] = self.config.offset

    def coefficient(self, epoch: int) -> float:
        """λ_e = offset + slope·e."""
        return self.config.offset + self.config.slope * epoch

    @hookimpl
    def diffnas_epoch_start(self, search, epoch):
        if self.config.ramp:
            self.hparams["weight"] = self.coefficient(epoch)

    def loss(self, search, phase):
        lam = float(self.hparams["weight"])
        if lam == 0.0:
            return None
        return lam * beta_loss(list(cell_alphas(search).values()))


@hookimpl
def diffnas_register_regularisers(register):
    register("beta_darts", BetaDarts)
