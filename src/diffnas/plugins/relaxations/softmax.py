"""Softmax relaxation (DARTS; Liu, Simonyan & Yang, ICLR 2019, eq. 2).

ō(x) = Σ_o softmax(α)_o · o(x) on every edge; α starts at 1e-3·N(0, 1) as in the authors' code
(``quark0/darts: cnn/model_search.py``; the paper says zeros). An optional temperature τ gives
softmax(α/τ); τ is a runtime hyperparameter that schedules can drive (``relaxation.tau``).
"""

from __future__ import annotations

import attrs
import torch

from ...core.config import help_field, positive
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights, Relaxation


class Softmax(Relaxation):
    """softmax(α/τ) per edge (DARTS, ICLR 2019); τ = 1 by default."""

    @attrs.frozen
    class Config:
        tau: float = help_field(1.0, "softmax temperature τ (schedulable as relaxation.tau)", validator=positive)
        init_std: float = help_field(1e-3, "α is initialised as init_std·N(0, 1)", validator=positive, schedulable=False)

    def init_alpha(self, num_edges, num_ops, generator):
        return self.config.init_std * torch.randn(num_edges, num_ops, generator=generator)

    def op_weights(self, alpha, search):
        return OpWeights(torch.softmax(alpha / self.hparams["tau"], dim=-1))

    def probabilities(self, alpha):
        return torch.softmax(alpha / self.hparams["tau"], dim=-1)


@hookimpl
def diffnas_register_relaxations(register):
    register("softmax", Softmax)
