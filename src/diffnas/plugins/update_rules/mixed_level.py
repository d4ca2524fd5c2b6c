"""Mixed-level update rule of MiLeNAS (He, Wang & Chu, "MiLeNAS: Efficient Neural Architecture
Search via Mixed-Level Reformulation", CVPR 2020; METHODS.md §5).

    α ← α − η_α(∇_α L_tr(w, α) + λ·∇_α L_val(w, α)),   w ← w − η_w∇_w L_tr(w, α),

the paper's formula, λ = 1 as in the LHD reimplementation (``chaoji90/LHD: search/MiLeNAS``). Each
batch: the α step first (both gradients at the current w, one backward through L_tr + λ·L_val +
the "arch" regulariser terms, which are added once), then the weight step on the training batch
with the updated α (a fresh forward), the order of the code's ``architect.step`` / weight update.
The α optimiser is trainer.arch_optimizer (Adam 3e-4 in the LHD protocol).
"""

from __future__ import annotations

import attrs
import torch

from ...core.config import help_field, non_negative
from ...core.hookspecs import hookimpl
from ...core.protocols import UpdateRule


class MixedLevel(UpdateRule):
    """MiLeNAS: α follows ∇_α L_tr + λ∇_α L_val, w follows ∇_w L_tr (CVPR 2020)."""

    @attrs.frozen
    class Config:
        lam: float = help_field(1.0, "λ: weight of the validation gradient in the α step", validator=non_negative)

    uses_valid_batch = True

    def population_refusal(self, members):
        # the α objective adds each regulariser's term itself, through search.regularisers, which a
        # population keeps per member
        return ("update rule 'mixed_level' adds regulariser terms through search.regularisers, which a "
                "population keeps per member; run its searches separately")

    def step(self, search, train, valid):
        alphas = search.arch_parameters()
        search.a_optimizer.zero_grad(set_to_none=True)
        out_tr = search.loss(train, ())
        out_v = search.loss(valid, ())
        objective = out_tr["loss"] + self.hparams["lam"] * out_v["loss"]
        for reg in search.regularisers:
            if "arch" in reg.phases:
                term = reg.loss(search, "arch")
                if term is not None:
                    objective = objective + term
        grads = torch.autograd.grad(objective, alphas, allow_unused=True)
        for a, g in zip(alphas, grads):
            a.grad = torch.zeros_like(a) if g is None else g
        search.arch_step()
        out_t = search.loss(train, ("weights",))
        search.weights_step(out_t["loss"])
        return {"loss": out_t["loss"].detach(), "correct": out_t["correct"], "count": out_t["count"],
                "arch_loss": out_v["loss"].detach(), "arch_correct": out_v["correct"], "arch_count": out_v["count"]}


@hookimpl
def diffnas_register_update_rules(register):
    register("mixed_level", MixedLevel)
