"""Sparsemax relaxation (Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016).

sparsemax(z) = argmin_{p in simplex} ||p - z||^2, the Euclidean projection of z onto the simplex:
p_i = max(z_i - t, 0) with the threshold t chosen so that the p_i sum to 1. Unlike softmax it gives
exact zeros, so weak ops drop out of the supernet during search. Its Jacobian is
diag(s) - s s^T / |S| on the support S (s = indicator of S); autograd gets it through the sort-based
formula below, which is piecewise linear in z.
"""

from __future__ import annotations

import attrs
import torch

from diffnas.core.config import help_field, positive
from diffnas.core.protocols import OpWeights, Relaxation


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax along ``dim`` (sort-based threshold, differentiable almost everywhere)."""
    zs, _ = torch.sort(z, dim=dim, descending=True)
    k = torch.arange(1, z.shape[dim] + 1, device=z.device, dtype=z.dtype)
    shape = [1] * z.dim()
    shape[dim] = -1
    k = k.view(shape)
    cssv = zs.cumsum(dim) - 1
    support = (zs - cssv / k) > 0
    k_z = support.sum(dim=dim, keepdim=True).clamp_min(1)
    tau = cssv.gather(dim, k_z - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0)


class Sparsemax(Relaxation):
    """sparsemax(α/τ) per edge (Martins & Astudillo, ICML 2016): sparse op weights that sum to 1."""

    @attrs.frozen
    class Config:
        tau: float = help_field(1.0, "temperature: sparsemax(α/τ); smaller is sparser", validator=positive)
        init_std: float = help_field(1e-3, "α starts at init_std·N(0, 1), as in DARTS", validator=positive,
                                     schedulable=False)

    def init_alpha(self, num_edges, num_ops, generator):
        return self.config.init_std * torch.randn(num_edges, num_ops, generator=generator)

    def op_weights(self, alpha, search):
        return OpWeights(sparsemax(alpha / self.hparams["tau"]))

    def probabilities(self, alpha):
        return sparsemax(alpha / self.hparams["tau"])
