"""Dirichlet relaxation of DrNAS (Chen, Wang, Cheng, Tang & Hsieh, "DrNAS: Dirichlet Neural
Architecture Search", ICLR 2021; METHODS.md §5).

The op weights of every edge are a reparameterised sample p ~ Dir(elu(β) + 1) drawn afresh on each
forward pass (``rsample``: pathwise gradients reach β), as ``xiangning-chen/DrNAS:
201-space/model_search.py`` (``process_step_vector``, method ``dirichlet``). β starts at
1e-3·N(0, 1). :meth:`Dirichlet.probabilities` is the mean of the distribution,
c / Σc with c = elu(β) + 1 (monotone in β, so argmax agrees with the code's argmax β).

The paper's regulariser is not part of the relaxation: KL(Dir(c) ‖ Dir(1)) scaled by 1e-3 is the
``dirichlet_kl`` regulariser (:mod:`diffnas.plugins.regularisers.drnas`); the "L2" option of the
code is the α optimiser's weight decay (``trainer.arch_optimizer.weight_decay: 1.0e-3``).
The progressive variant (partial channels, space pruning) is not implemented.
"""

from __future__ import annotations

import attrs
import torch
from torch.nn import functional as F

from ...core.config import help_field, positive
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights, Relaxation


def concentration(beta: torch.Tensor) -> torch.Tensor:
    """Dirichlet concentration elu(β) + 1 (> 0 for every finite β)."""
    return F.elu(beta) + 1.0


class Dirichlet(Relaxation):
    """DrNAS: op weights sampled from Dir(elu(β) + 1) with the reparameterisation trick (ICLR 2021)."""

    @attrs.frozen
    class Config:
        init_std: float = help_field(1e-3, "β is initialised as init_std·N(0, 1)", validator=positive, schedulable=False)

    def init_alpha(self, num_edges, num_ops, generator):
        return self.config.init_std * torch.randn(num_edges, num_ops, generator=generator)

    def op_weights(self, alpha, search):
        c = concentration(alpha.float())  # > 0 for finite β: no argument validation (a host sync per step)
        return OpWeights(torch.distributions.Dirichlet(c, validate_args=False).rsample().to(alpha.dtype))

    def probabilities(self, alpha):
        c = concentration(alpha)
        return c / c.sum(-1, keepdim=True)


@hookimpl
def diffnas_register_relaxations(register):
    register("dirichlet", Dirichlet)
