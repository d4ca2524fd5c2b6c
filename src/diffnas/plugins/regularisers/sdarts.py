"""SDARTS: smooth the weight training by perturbing the op weights (Chen & Hsieh, "Stabilizing
Differentiable Architecture Search via Perturbation-based Regularization", ICML 2020; METHODS.md §5).

Each weight step runs on perturbed op weights α̃ = clip(softmax(α) + δ) instead of softmax(α); α itself
is never changed, so the α step (and every view of α: genotype, record) sees the unperturbed weights.
Both follow the authors' code (``Sunshine-Ye/Beta-DARTS: attacker/perturb.py`` and
``nasbench201/train_search.py``, ``sota/cnn/train_search.py``, taken from SmoothDARTS):

* **SDARTS-RS** (``sdarts_rs``, ``Random_alpha``): δ ~ U[−ε, ε] per op weight, drawn anew each step;
* **SDARTS-ADV** (``sdarts_adv``, ``Linf_PGD_alpha``): δ maximises the training loss of the step's batch
  by ``steps`` = 7 steps of L∞ projected gradient ascent with step size 2ε/steps (``Linf_SGD``: a step
  along the gradient's sign) from a random start in the ε-ball; each iterate is projected onto the
  ε-ball around softmax(α), then clipped. The attack runs with the supernet in eval mode, and when it
  ends with a lower loss than the unperturbed weights, the unperturbed weights are used.
* ``clip`` (the authors' ``model.clip``): per edge, clamp to [0, 1] and renormalise to sum 1; an edge
  whose entries all clamp to 0 becomes one-hot at its largest entry.
* ε rises linearly with the epoch e (0-based) of E: ε_e = ε_min + (ε_max − ε_min)·e/E, ε_min = 0.03,
  ε_max = 0.3 (the code's ``epsilon_alpha``), so the last epoch uses ε_min + (ε_max − ε_min)(E − 1)/E.

**The seam.** These are regularisers that implement
:meth:`~diffnas.core.protocols.Regulariser.perturb_op_weights`: an update rule whose weight step runs on
:meth:`Search.weight_step_op_weights` (``UpdateRule.perturbable_weight_step``; ``bilevel``, either order
and step order) gets the perturbed weights for that step only. The recipes use ``bilevel`` with
``step_order: arch_first``, as the code (``architect.step`` before the perturbed weight step); with
``order: 2`` the virtual step is unperturbed, as in the code. Refused when the recipe is loaded:

* with ``single_level`` (and every rule without ``perturbable_weight_step``): its one backward of one
  loss moves w and α together, so perturbing that forward pass would also change α's gradient, while
  SDARTS takes α's step on the unperturbed weights;
* with relaxations that sample one op per edge (GDAS's ``active`` mask): a perturbation of a one-hot
  sample is not the paper's softmax(α) + δ;
* in populations (the fused population step has no perturbed weight step).

The clip assumes op weights on the simplex (softmax, as in the paper); other relaxations get the same
projection. Randomness (δ, the random start) comes from the torch generator of the search's device,
seeded by ``trainer.seed`` and saved in every checkpoint, so a resumed run draws the same δ.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from ...core.config import help_field, in_range, positive
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights, Regulariser


def simplex_clip(w: torch.Tensor) -> torch.Tensor:
    """The authors' ``model.clip()`` per edge (last dimension): clamp to [0, 1], then divide by the
    sum; a row that clamps to all zeros becomes one-hot at its (pre-clamp) largest entry."""
    top = w.argmax(-1, keepdim=True)
    c = w.clamp(0.0, 1.0)
    empty = c.sum(-1, keepdim=True) == 0
    c = torch.where(empty, torch.zeros_like(c).scatter(-1, top, 1.0), c)
    return c / c.sum(-1, keepdim=True)


def epsilon_at(epoch: int, epochs: int, eps_min: float, eps_max: float) -> float:
    """ε of (0-based) ``epoch`` of ``epochs``: ``eps_min + (eps_max − eps_min)·epoch/epochs`` (the code's
    ``0.03 + (args.epsilon_alpha - 0.03) * epoch / args.epochs``)."""
    return eps_min + (eps_max - eps_min) * epoch / epochs


class _Perturbation(Regulariser):
    """What SDARTS-RS and -ADV share: the ε ramp, the record, no loss term."""

    phases = ()

    def epsilon(self, search) -> float:
        """ε of the epoch the search is in."""
        return epsilon_at(search.state.epoch, search.epochs, self.config.epsilon_min, self.config.epsilon_max)

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        """Record the epoch's ε as ``record[<name>]["epsilon"]``."""
        record[self.name or "sdarts"] = {"epsilon": epsilon_at(epoch, search.epochs, self.config.epsilon_min,
                                                                self.config.epsilon_max)}

    @staticmethod
    def _cells(search, op_weights):
        return [k for k in op_weights if k in search.cells]


def _check_range(instance, attribute, value):
    if value < instance.epsilon_min:
        raise ValueError(f"{attribute.name} ({value}) must be at least epsilon_min ({instance.epsilon_min})")


class SDARTSRandom(_Perturbation):
    """SDARTS-RS: the weight step on clip(softmax(α) + δ), δ ~ U[−ε, ε], ε linear 0.03 → 0.3 (ICML 2020)."""

    @attrs.frozen
    class Config:
        epsilon_min: float = help_field(0.03, "ε at epoch 0", validator=in_range(0.0, 1.0), schedulable=False)
        epsilon_max: float = help_field(0.3, "ε approached at the end: ε_e = ε_min + (ε_max − ε_min)·e/E",
                                        validator=[in_range(0.0, 1.0), _check_range], schedulable=False)

    def perturb_op_weights(self, search, op_weights, batch):
        eps = self.epsilon(search)
        out = dict(op_weights)
        for k in self._cells(search, op_weights):
            w = op_weights[k].weights
            out[k] = OpWeights(simplex_clip(w + torch.empty_like(w).uniform_(-eps, eps)), op_weights[k].active)
        return out


class SDARTSAdversarial(_Perturbation):
    """SDARTS-ADV: the weight step on clip(softmax(α) + δ), δ from a 7-step L∞ PGD attack on the
    training loss with a random start, ε linear 0.03 → 0.3 (ICML 2020)."""

    @attrs.frozen
    class Config:
        epsilon_min: float = help_field(0.03, "ε at epoch 0", validator=in_range(0.0, 1.0), schedulable=False)
        epsilon_max: float = help_field(0.3, "ε approached at the end: ε_e = ε_min + (ε_max − ε_min)·e/E",
                                        validator=[in_range(0.0, 1.0), _check_range], schedulable=False)
        steps: int = help_field(7, "PGD steps (step size 2ε/steps)", validator=positive)
        random_start: bool = help_field(True, "start the attack at a uniform draw in the ε-ball")

    def perturb_op_weights(self, search, op_weights, batch):
        eps = self.epsilon(search)
        step = 2.0 * eps / self.config.steps
        x, y = batch
        cells = self._cells(search, op_weights)
        saved = {k: op_weights[k].weights for k in cells}

        def ce(weights):
            ow = dict(op_weights)
            ow.update({k: OpWeights(weights[k], op_weights[k].active) for k in cells})
            return nn.functional.cross_entropy(search.forward(x, ow), y)

        model = search.model
        training = model.training
        model.eval()  # as Linf_PGD_alpha: the attack's forward passes use (and update) no batch statistics
        try:
            with torch.no_grad():
                before = ce(saved)
                cur = dict(saved)
                if self.config.random_start:
                    cur = {k: simplex_clip(w + torch.empty_like(w).uniform_(-eps, eps)) for k, w in cur.items()}
            for _ in range(self.config.steps):
                leaves = {k: w.detach().requires_grad_(True) for k, w in cur.items()}
                with torch.enable_grad():
                    grads = torch.autograd.grad(ce(leaves), [leaves[k] for k in cells])
                with torch.no_grad():  # ascend along the sign, project onto the ε-ball around softmax(α), clip
                    cur = {k: simplex_clip(saved[k] + (leaves[k] + step * g.sign() - saved[k]).clamp(-eps, eps))
                           for k, g in zip(cells, grads)}
            with torch.no_grad():
                worse = before > ce(cur)  # the attack lowered the loss: keep the unperturbed weights (a device bool)
                cur = {k: torch.where(worse, saved[k], cur[k]) for k in cells}
        finally:
            model.train(training)
        out = dict(op_weights)
        out.update({k: OpWeights(cur[k], op_weights[k].active) for k in cells})
        return out


@hookimpl
def diffnas_register_regularisers(register):
    register("sdarts_rs", SDARTSRandom)
    register("sdarts_adv", SDARTSAdversarial)
