"""Fair-DARTS zero-one loss (Chu, Zhou, Zhang & Li, "Fair DARTS: Eliminating Unfair Advantages in
Differentiable Architecture Search", ECCV 2020; METHODS.md §5).

Fair-DARTS relaxes each op independently with σ(α) and pushes every σ(α_o) away from 0.5, towards 0
or 1, so that the relaxed supernet is close to the discrete one:
L = CE + w01·L_01 with L_01 = −mean((σ(α) − 0.5)²), the mean taken over every entry of α of every
cell type; w01 = 10 (``xiaomi-automl/FairDARTS: fairdarts/``). Added to the α step's loss (phase
``arch``). Pair it with a sigmoid relaxation and a threshold discretiser (σ > 0.85) to get Fair-DARTS.
"""

from __future__ import annotations

import attrs
import torch

from ...core.cells import cell_alphas
from ...core.config import help_field, non_negative
from ...core.hookspecs import hookimpl
from ...core.protocols import Regulariser


def zero_one_loss(alphas: list[torch.Tensor]) -> torch.Tensor:
    """L_01 = −mean((σ(α) − 0.5)²) over every entry of ``alphas`` (a 0-dim tensor)."""
    flat = torch.cat([a.reshape(-1) for a in alphas])
    return -((torch.sigmoid(flat) - 0.5) ** 2).mean()


class FairDartsZeroOne(Regulariser):
    """w01·(−mean((σ(α) − 0.5)²)) on the α step (Fair-DARTS, ECCV 2020)."""

    @attrs.frozen
    class Config:
        weight: float = help_field(10.0, "w01 (the paper's default 10; schedulable as "
                                         "regularisers.fair_darts_zero_one.weight)", validator=non_negative)

    phases = ("arch",)

    def loss(self, search, phase):
        w = float(self.hparams["weight"])
        if w == 0.0:
            return None
        return w * zero_one_loss(list(cell_alphas(search).values()))


@hookimpl
def diffnas_register_regularisers(register):
    register("fair_darts_zero_one", FairDartsZeroOne)
