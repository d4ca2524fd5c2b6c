"""The ``weights_first`` update rule: first-order bi-level DARTS with the weight step before the
α step on each batch (the order of AutoDL-Projects' DARTS-V1 loop)."""

from __future__ import annotations

import torch

from diffnas.core.protocols import UpdateRule


class WeightsFirst(UpdateRule):
    """First-order bi-level steps, weights first: w on the training batch, then α on the validation batch."""

    uses_valid_batch = True

    def step(self, search, train, valid):
        out_t = search.loss(train, ("weights",))
        search.weights_step(out_t["loss"])  # backward into the weights only, clip, step
        search.a_optimizer.zero_grad(set_to_none=True)
        out_v = search.loss(valid, ("arch",))
        alphas = search.arch_parameters()
        for a, g in zip(alphas, torch.autograd.grad(out_v["loss"], alphas)):
            a.grad = g
        search.arch_step()  # sync, step the α optimiser, then the regularisers' after_arch_step
        return {"loss": out_t["loss"].detach(), "correct": out_t["correct"], "count": out_t["count"],
                "arch_loss": out_v["loss"].detach(), "arch_correct": out_v["correct"], "arch_count": out_v["count"]}
