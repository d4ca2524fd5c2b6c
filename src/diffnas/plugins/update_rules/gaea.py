"""GAEA mirror descent (Li, Khodak, Balcan & Talwalkar, "Geometry-Aware Gradient Algorithms for
Neural Architecture Search", ICLR 2021; METHODS.md §5).

α lives on the probability simplex of every edge and is the op weight itself (use it with the
``simplex`` relaxation, α₀ = uniform). The α step is exponentiated gradient (mirror descent with the
entropic mirror map) in place of the α optimiser:

    α ← normalise(max(α ⊙ exp(−η∇_α L), 1e-5)),   η = 0.1,

as reimplemented in ``chaoji90/LHD: search/GAEA``. Two variants:

* ``bilevel``: ∇_α L_val on a validation batch, then the weight step on the training batch (the
  first-order DARTS order);
* ``erm``: single level: one forward/backward on the training batch gives both gradients.

η is a runtime hyperparameter (``update_rule.eta``, schedulable). trainer.arch_optimizer is not
stepped (only its zero_grad is used); regularisers' ``after_arch_step`` still run after each α step.

Every architecture parameter takes the step, a search space's extra ones included (LHD's output-path
γ), each normalised along its last dimension, as ``chaoji90/LHD: search/GAEA/architect_gaea.py`` does.
``uniform_init: true`` starts them all at the uniform point of that simplex (that code's
``normalize(ones)``), whatever the relaxation's own initialisation: with the ``node_softmax``
relaxation and the ``lhd`` space this is the LHD benchmark's GAEA (``examples/recipes/lhd_gaea.yaml``).
"""

from __future__ import annotations

import attrs
import torch

from ...core.config import help_field, non_negative, one_of, positive
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights, Relaxation, UpdateRule


def exponentiated_step(alpha: torch.Tensor, grad: torch.Tensor, eta: float, floor: float) -> torch.Tensor:
    """normalise(max(α ⊙ exp(−η·g), floor)) along the last dimension."""
    a = torch.clamp(alpha * torch.exp(-eta * grad), min=floor)
    return a / a.sum(-1, keepdim=True)


class Simplex(Relaxation):
    """α is already a point of each edge's simplex and is used as the op weights (GAEA, ICLR 2021).

    ASSUMPTION: α₀ = uniform 1/|O| plus ``init_std``·N(0, 1) (renormalised; 0 gives exactly uniform).
    """

    @attrs.frozen
    class Config:
        init_std: float = help_field(0.0, "noise added to the uniform initial α (then renormalised)",
                                     validator=non_negative, schedulable=False)

    def init_alpha(self, num_edges, num_ops, generator):
        a = torch.full((num_edges, num_ops), 1.0 / num_ops)
        if self.config.init_std > 0:
            a = (a + self.config.init_std * torch.randn(num_edges, num_ops, generator=generator)).clamp_min(1e-5)
        return a / a.sum(-1, keepdim=True)

    def op_weights(self, alpha, search):
        return OpWeights(alpha)

    def probabilities(self, alpha):
        return alpha


class GAEA(UpdateRule):
    """GAEA: exponentiated-gradient α step on the simplex, bilevel or ERM (ICLR 2021)."""

    @attrs.frozen
    class Config:
        mode: str = help_field("bilevel", "'bilevel': α on validation batches; 'erm': α and w on the same batch",
                               validator=one_of("bilevel", "erm"))
        eta: float = help_field(0.1, "mirror-descent step size η (schedulable as update_rule.eta)", validator=positive)
        floor: float = help_field(1e-5, "entries are clamped to at least this before renormalising",
                                  validator=positive)
        uniform_init: bool = help_field(False, "start every architecture parameter (extra ones such as LHD's γ "
                                               "included) at the uniform point of its last-dimension simplex")

    def __init__(self, config=None):
        super().__init__(config)
        self.uses_valid_batch = self.config.mode == "bilevel"

    @hookimpl
    def diffnas_search_start(self, search):
        if self.config.uniform_init and not search.resumed and search.state.global_step == 0:
            with torch.no_grad():
                for a in search.arch_parameters():
                    a.fill_(1.0 / a.shape[-1])

    def _alpha_step(self, search, grads):
        with torch.no_grad():
            for a, g in zip(search.arch_parameters(), grads):
                if g is not None:
                    a.copy_(exponentiated_step(a, g, self.hparams["eta"], self.hparams["floor"]))
        for reg in search.regularisers:
            reg.after_arch_step(search)

    def step(self, search, train, valid):
        alphas = search.arch_parameters()
        search.a_optimizer.zero_grad(set_to_none=True)
        if self.config.mode == "erm":
            out = search.loss(train, ("weights", "arch"))
            params = search.weight_parameters()
            search.w_optimizer.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(out["loss"], params + alphas, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
            search.sync_grads(params)
            search.clip_weight_grads()
            search.w_optimizer.step()
            a_grads = list(grads[len(params):])
            self._sync(search, a_grads)
            self._alpha_step(search, a_grads)
            return {"loss": out["loss"].detach(), "correct": out["correct"], "count": out["count"]}
        out_v = search.loss(valid, ("arch",))
        a_grads = list(torch.autograd.grad(out_v["loss"], alphas, allow_unused=True))
        self._sync(search, a_grads)
        self._alpha_step(search, a_grads)
        out_t = search.loss(train, ("weights",))
        search.weights_step(out_t["loss"])
        return {"loss": out_t["loss"].detach(), "correct": out_t["correct"], "count": out_t["count"],
                "arch_loss": out_v["loss"].detach(), "arch_correct": out_v["correct"], "arch_count": out_v["count"]}

    def population_refusal(self, members):
        # its α step is its own (not search.arch_step) and calls each regulariser itself, through
        # search.regularisers, which a population keeps per member
        return ("update rule 'gaea' steps α itself and calls search.regularisers, which a population "
                "keeps per member; run its searches separately")

    @staticmethod
    def _sync(search, grads):
        # average α gradients across ranks (Search.sync_grads works on .grad)
        if search.world.world_size == 1:
            return
        for a, g in zip(search.arch_parameters(), grads):
            a.grad = g
        search.sync_grads(search.arch_parameters())
        grads[:] = [a.grad for a in search.arch_parameters()]


@hookimpl
def diffnas_register_relaxations(register):
    register("simplex", Simplex)


@hookimpl
def diffnas_register_update_rules(register):
    register("gaea", GAEA)
