"""Single-level update rule of Single-DARTS (Hou, Jin & Chen, "Single-DARTS: Towards Stable
Architecture Search", ICCVW 2021, §3; METHODS.md §2).

w and α are updated *simultaneously on the same batch*: one forward pass and one backward pass of
L = L_tr(w, α) + every regulariser term of both phases ("weights" and "arch"), then

    w ← SGD step on ∇_w L (gradient norm clipped like :meth:`Search.weights_step`),
    α ← trainer.arch_optimizer step on ∇_α L (then the regularisers' ``after_arch_step``).

No validation batch is drawn (``uses_valid_batch = False``): the engine builds no validation loader.
The paper's NB201 hyperparameters are recipe settings (METHODS.md §2): weights SGD lr 0.005 cosine,
momentum 0.9; α Adam β = (0.5, 0.999); ASSUMPTIONS for the values lost in the paper: weight decay
5e-4 and α lr 3e-4 (the NB201/AutoDL defaults). The authors' code was not available.
"""

from __future__ import annotations

import torch

from ...core.hookspecs import hookimpl
from ...core.protocols import UpdateRule


class SingleLevel(UpdateRule):
    """Single-DARTS: one backward on the training batch updates w and α together (ICCVW 2021)."""

    uses_valid_batch = False

    def step(self, search, train, valid):
        """One backward of the joint loss into w and α, then both optimiser steps (``search`` may be
        a population: the same building blocks with a member axis)."""
        out = search.loss(train, ("weights", "arch"))
        params, alphas = search.weight_parameters(), search.arch_parameters()
        search.w_optimizer.zero_grad(set_to_none=True)
        search.a_optimizer.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(out["loss"], params + alphas, allow_unused=True)
        for p, g in zip(params + alphas, grads):
            p.grad = g
        search.sync_grads(params)
        search.clip_weight_grads()
        search.w_optimizer.step()
        search.arch_step()
        return {"loss": out["loss"].detach(), "correct": out["correct"], "count": out["count"]}


@hookimpl
def diffnas_register_update_rules(register):
    register("single_level", SingleLevel)
