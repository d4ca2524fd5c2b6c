"""Small-temperature softmax with the extra τ = 1 gradient ("sparse-noisy softmax"; Zhang & Ding,
"Small Temperature is All You Need for Differentiable Architecture Search", arXiv 2306.06855).

Forward: p = softmax(α/τ) with a small τ (the schedules ``pcd_tau``, ``edd_tau`` and
``mixed_sparsity_tau`` drive ``relaxation.tau``). Backward, to get around the saturation of a
near-one-hot softmax, the upstream gradient g = ∂L/∂p is pushed through both Jacobians:

    ∇_α L = J_{softmax(α/τ)}ᵀ g + J_{softmax(α)}ᵀ g,   J_{softmax(x/t)}ᵀ g = p_t ⊙ (g − ⟨g, p_t⟩) / t,

the rule of the authors' code (``chaoji90/PCDEDD: PCDEDD-DARTS/architect_cyc.py``,
``AutoDL-Projects_pcd/exps/algos/DARTS-V1-10.py``: a hook saves g_p and
``softmax(α).backward(g_p)`` adds the second term), applied only when τ ≠ 1 (METHODS.md §3.1, §9).
The extra term is a switch (``extra_grad``, on by default), and ``extra_grad_cells`` names the cell
types whose α receive it: by default ``normal`` only, as the DARTS-space code, which adds it to
``alphas_normal`` and leaves ``alphas_reduce`` with the saturated J_τᵀg alone
(``PCDEDD-DARTS/architect_cyc.py``); NB201's one cell type is ``normal``. Gradients with respect
to the weights are unaffected (the extra term only reaches α). Departure from the code, by design:
the extra term also reaches any single-level α step.

ASSUMPTION (METHODS.md §9, name only): that this code rule is what the paper calls "sparse-noisy
softmax". The default τ = 1e-3 is SP-DARTS's τ_s (METHODS.md §3.4), inside the 5e-4…4e-3 range the
schedules produce; set a schedule to follow a paper's protocol.
"""

from __future__ import annotations

import math

import attrs
import torch

from ...core.config import help_field, positive
from ...core.errors import PluginError
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights
from .softmax import Softmax


def softmax_vjp(p: torch.Tensor, g: torch.Tensor, tau: float) -> torch.Tensor:
    """Jᵀg for p = softmax(x/τ) along the last dimension: p ⊙ (g − ⟨g, p⟩) / τ."""
    return p * (g - (g * p).sum(-1, keepdim=True)) / tau


class SparseNoisySoftmaxFn(torch.autograd.Function):
    """softmax(α/τ) forward; J_τᵀg + J_1ᵀg backward (only J_τᵀg when ``extra`` is false or τ = 1)."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, tau: float, extra: bool) -> torch.Tensor:
        p = torch.softmax(alpha / tau, dim=-1)
        use_extra = bool(extra) and not math.isclose(tau, 1.0)
        ctx.tau, ctx.use_extra = tau, use_extra
        if use_extra:
            ctx.save_for_backward(p, torch.softmax(alpha, dim=-1))
        else:
            ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        saved = ctx.saved_tensors
        grad = softmax_vjp(saved[0], g, ctx.tau)
        if ctx.use_extra:
            grad = grad + softmax_vjp(saved[1], g, 1.0)
        return grad, None, None


def sparse_noisy_softmax(alpha: torch.Tensor, tau: float, extra: bool = True) -> torch.Tensor:
    """Functional form of :class:`SparseNoisySoftmaxFn`."""
    return SparseNoisySoftmaxFn.apply(alpha, float(tau), bool(extra))


class SparseNoisySoftmax(Softmax):
    """softmax(α/τ) with the extra τ = 1 α-gradient (Zhang & Ding, arXiv 2306.06855; PCD/EDD-DARTS code)."""

    @attrs.frozen
    class Config:
        tau: float = help_field(1e-3, "softmax temperature τ (schedulable as relaxation.tau)", validator=positive)
        extra_grad: bool = help_field(True, "add the τ = 1 term J_1ᵀg to the α gradient (when τ ≠ 1)")
        extra_grad_cells: tuple[str, ...] = help_field(
            ("normal",), "cell types whose α get the τ = 1 term (the DARTS-space code: normal only)", converter=tuple)
        init_std: float = help_field(1e-3, "α is initialised as init_std·N(0, 1)", validator=positive, schedulable=False)

    # τ handling, α initialisation and probabilities() are Softmax's; only the α gradient differs
    def check_composition(self, composition):
        return composition.unknown_cells(self.config.extra_grad_cells, "sparse_noisy_softmax: extra_grad_cells names",
                                         f"{self.key_path}.params.extra_grad_cells")

    def attach(self, search):
        unknown = [c for c in self.config.extra_grad_cells if c not in search.cells]
        if unknown:
            raise PluginError(f"sparse_noisy_softmax: extra_grad_cells names unknown cell type(s) {unknown}; "
                              f"this search space has {sorted(search.cells)}")

    def op_weights(self, alpha, search):
        """Op weights with the extra term on (as for a cell type named in ``extra_grad_cells``)."""
        return OpWeights(sparse_noisy_softmax(alpha, self.hparams["tau"], self.config.extra_grad))

    def cell_op_weights(self, cell, alpha, search):
        extra = self.config.extra_grad and cell in self.config.extra_grad_cells
        return OpWeights(sparse_noisy_softmax(alpha, self.hparams["tau"], extra))


@hookimpl
def diffnas_register_relaxations(register):
    register("sparse_noisy_softmax", SparseNoisySoftmax)
