"""The ``softplus_simplex`` relaxation: op weights softplus(α/τ) normalised to sum to 1 per edge.

Smooth in α (softplus and division are infinitely differentiable), so second-order update rules
and the Hessian diagnostic, which differentiate through the op weights twice, work with it.
"""

from __future__ import annotations

import attrs
import torch
from torch.nn import functional as F

from diffnas.core.config import help_field, positive
from diffnas.core.protocols import OpWeights, Relaxation


def softplus_simplex(alpha: torch.Tensor, tau: float) -> torch.Tensor:
    """softplus(α/τ) / Σ_o softplus(α_o/τ) along the last dimension."""
    s = F.softplus(alpha / tau)
    return s / s.sum(-1, keepdim=True)


class SoftplusSimplex(Relaxation):
    """softplus(α/τ) normalised per edge: a smooth, twice-differentiable relaxation."""

    @attrs.frozen
    class Config:
        tau: float = help_field(1.0, "temperature τ (schedulable as relaxation.tau)", validator=positive)
        init_std: float = help_field(1e-3, "α starts at init_std·N(0, 1)", validator=positive, schedulable=False)

    def init_alpha(self, num_edges, num_ops, generator):
        return self.config.init_std * torch.randn(num_edges, num_ops, generator=generator)

    def op_weights(self, alpha, search):
        return OpWeights(softplus_simplex(alpha, self.hparams["tau"]))

    def probabilities(self, alpha):
        return softplus_simplex(alpha, self.hparams["tau"])
