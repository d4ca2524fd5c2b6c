"""Hard Gumbel-softmax relaxation of GDAS (Dong & Yang, "Searching for a Robust Neural
Architecture in Four GPU Hours", CVPR 2019; METHODS.md §5).

Every forward pass samples one op per edge:

    g ~ Gumbel(0, 1),  p = softmax((log_softmax(α) + g)/τ),  h = one_hot(argmax p),
    op weights = h − sg(p) + p   (straight-through: value h, gradient of p).

Only the sampled op is computed on each edge (``OpWeights.active``); the others add their
zero-valued weight so that α still receives the straight-through gradient, as
``D-X-Y/AutoDL-Projects: lib/models/cell_searchs/search_cells.py`` (``forward_gdas``) does. As in
AutoDL's ``search_model_gdas.py`` the sample is drawn again when the Gumbel noise or p holds an
inf or a NaN (at most ``max_resample`` tries; a non-finite α is left to the engine's check).

τ is a runtime hyperparameter (``relaxation.tau``); GDAS anneals it linearly from 10 to 0.1 with the
``linear`` schedule (``{name: linear, params: {target: relaxation.tau, start: 10.0, end: 0.1}}``).
:meth:`GumbelSoftmax.probabilities` is softmax(α) (the genotype is argmax α per edge).
Noise comes from torch's global generator, which the engine seeds and checkpoints.
"""

from __future__ import annotations

import attrs
import torch

from ...core.config import help_field, positive
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights, Relaxation


class GumbelSoftmax(Relaxation):
    """GDAS: one op per edge sampled by hard Gumbel-softmax with a straight-through gradient (CVPR 2019)."""

    sets_active = True

    @attrs.frozen
    class Config:
        tau: float = help_field(10.0, "Gumbel-softmax temperature τ (GDAS: linear 10 → 0.1 via a schedule)",
                                validator=positive)
        init_std: float = help_field(1e-3, "α is initialised as init_std·N(0, 1) (AutoDL GDAS)", validator=positive, schedulable=False)
        max_resample: int = help_field(100, "tries to draw finite Gumbel noise before giving up", validator=positive)

    def init_alpha(self, num_edges, num_ops, generator):
        return self.config.init_std * torch.randn(num_edges, num_ops, generator=generator)

    def gumbel(self, like: torch.Tensor) -> torch.Tensor:
        """Standard Gumbel noise −log(E), E ~ Exp(1), shaped like ``like``."""
        return -torch.empty_like(like).exponential_().log()

    def sample(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hard straight-through weights, one-hot index mask)`` for one forward pass."""
        tau = self.hparams["tau"]
        logp = torch.log_softmax(alpha, dim=-1)
        for _ in range(self.config.max_resample):
            g = self.gumbel(alpha)
            probs = torch.softmax((logp + g) / tau, dim=-1)
            # one host synchronisation per forward, as AutoDL; the cell reads the mask on the host anyway
            if bool(torch.isfinite(g).all()) and bool(torch.isfinite(probs).all()):
                break
        index = probs.argmax(dim=-1, keepdim=True)
        one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
        return one_hot - probs.detach() + probs, one_hot.bool()

    def op_weights(self, alpha, search):
        hard, active = self.sample(alpha)
        return OpWeights(hard, active=active)

    def probabilities(self, alpha):
        return torch.softmax(alpha, dim=-1)


@hookimpl
def diffnas_register_relaxations(register):
    register("gumbel_softmax", GumbelSoftmax)
