"""Bi-level update rule of DARTS (Liu, Simonyan & Yang, ICLR 2019, §2.3).

min_α L_val(w*(α), α) s.t. w*(α) = argmin_w L_tr(w, α), approximated per batch:

* first order (``order: 1``, DARTS-V1): g_α = ∇_α L_val(w, α);
* second order (``order: 2``, DARTS-V2): w' = w − ξ∇_w L_tr(w, α) and
  g_α = ∇_α L_val(w', α) − ξ·[∇_α L_tr(w⁺, α) − ∇_α L_tr(w⁻, α)] / (2ε), w^± = w ± ε·v,
  v = ∇_{w'} L_val(w', α), ε = 0.01 / ‖v‖₂ (the paper's formula, METHODS.md §1 and §8). As in the
  authors' code the virtual step is the real SGD step: w' = w − ξ(μ·m + ∇_w L_tr + λ_w·w) with the
  momentum buffer m; ξ defaults to the current weight learning rate.

Each batch makes one α step on a validation batch (Adam) and one weight step on the training batch
(SGD, gradient norm clipped). ``step_order`` says which comes first, and it changes results: with
``weights_first`` the α gradient is taken at the weights just updated on this batch.

* ``arch_first`` (the default): the DARTS paper's Algorithm 1 (update α, then w) and
  ``quark0/darts: cnn/train_search.py``, for both orders. The default follows the paper, the rule of
  METHODS.md §9 where a paper and a code base differ; DARTS-space recipes and every DARTS-V2 recipe use it.
* ``weights_first``: the NAS-Bench-201 code base, whose first-order searches step w, then α
  (``xautodl: exps/NAS-Bench-201-algos/DARTS-V1.py`` and ``GDAS.py``, and every ``chaoji90`` NB201
  script built on it: PCD, EDD, SP-DARTS, LR swap, selective stop), while its ``DARTS-V2.py`` steps α
  first (METHODS.md, "Corrections found by comparing the implementation with the authors' code").
  The NB201 first-order recipes built on xautodl set it; β-DARTS and SDARTS on NB201 step α first
  (``Sunshine-Ye/Beta-DARTS: nasbench201/train_search.py`` calls ``architect.step`` before the weight step).

The weight step runs on :meth:`Search.weight_step_op_weights`: regularisers that perturb the op
weights of the weight step (SDARTS-RS / -ADV, ``plugins/regularisers/sdarts.py``) act there, while the α
step always sees the unperturbed relaxation.
"""

from __future__ import annotations

import attrs
import torch

from ...core.config import help_field, one_of, positive
from ...core.hookspecs import hookimpl
from ...core.protocols import UpdateRule


def _alpha_grads_around(train_loss, params, backup, v, alphas, eps_for):
    """∇_α L_tr at w⁺ = w + ε·v and at w⁻ = w − ε·v (the two sides of DARTS's finite-difference
    Hessian-vector product), then w restored from ``backup``. ``eps_for(t)`` is ε shaped to
    broadcast against ``t`` (a scalar for one search, one value per member for a population)."""
    grads = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, b, x in zip(params, backup, v):
                p.copy_(b + sign * eps_for(p) * x)
        g = torch.autograd.grad(train_loss(), alphas, allow_unused=True)
        grads.append([torch.zeros_like(a) if x is None else x for x, a in zip(g, alphas)])
    with torch.no_grad():
        for p, b in zip(params, backup):
            p.copy_(b)
    return grads


class BiLevel(UpdateRule):
    """DARTS bi-level optimisation: α on the validation half, w on the training half (ICLR 2019)."""

    @attrs.frozen
    class Config:
        order: int = help_field(1, "1: first-order approximation (DARTS-V1); 2: unrolled second order (DARTS-V2)",
                                validator=one_of(1, 2))
        xi: float | None = help_field(None, "virtual-step learning rate ξ for order 2 (default: the current weight lr)",
                                      validator=positive)
        epsilon: float = help_field(0.01, "finite-difference scale: ε = epsilon / ‖v‖₂", validator=positive)
        step_order: str = help_field("arch_first", "which step of a batch comes first: 'arch_first' (DARTS paper, "
                                     "quark0/darts) or 'weights_first' (NAS-Bench-201 code, first order)",
                                     validator=one_of("arch_first", "weights_first"))

    uses_valid_batch = True
    member_hparams = True  # ξ and ε are read per member (search.member_searches()), see _unrolled_grads
    perturbable_weight_step = True  # the weight step runs on search.weight_step_op_weights (SDARTS)

    def step(self, search, train, valid):
        if self.config.step_order == "weights_first":
            out_t = self._weights_step(search, train)
            out_v = self._arch_step(search, train, valid)
        else:
            out_v = self._arch_step(search, train, valid)
            out_t = self._weights_step(search, train)
        return {"loss": out_t["loss"].detach(), "correct": out_t["correct"], "count": out_t["count"],
                "arch_loss": out_v["loss"].detach(), "arch_correct": out_v["correct"], "arch_count": out_v["count"]}

    def warmup_step(self, search, train, valid):
        """A warm-up batch (``trainer.warmup_epochs`` / ``warmup_steps``): the weight step alone, on the
        op weights the regularisers perturb, as every weight step of this rule."""
        out = self._weights_step(search, train)
        return {"loss": out["loss"].detach(), "correct": out["correct"], "count": out["count"]}

    def _weights_step(self, search, train):
        """One weight step on the training batch (on the op weights the regularisers perturb, if any:
        SDARTS; second order's virtual step is not perturbed, as in the authors' code, where the α step
        precedes the perturbation); returns the loss outputs."""
        out_t = search.loss(train, ("weights",), search.weight_step_op_weights(train))
        search.weights_step(out_t["loss"])
        return out_t

    def _arch_step(self, search, train, valid):
        """One α step on the validation batch (first order, or the unrolled second order); returns the
        validation loss outputs."""
        search.a_optimizer.zero_grad(set_to_none=True)
        if self.config.order == 1:
            out_v = search.loss(valid, ("arch",))
            alphas = search.arch_parameters()
            grads = torch.autograd.grad(out_v["loss"], alphas)
        else:
            out_v, grads = self._unrolled_grads(search, train, valid)
            alphas = search.arch_parameters()
        for a, g in zip(alphas, grads):
            a.grad = g
        search.arch_step()
        return out_v

    def population_refusal(self, members):
        for key in ("order", "step_order"):
            values = sorted({getattr(s.update_rule.config, key) for s in members})
            if len(values) > 1:
                return f"members use different {key} {values} (update_rule.params.{key})"
        return None

    # ------------------------------------------------------------------ second order

    def _unrolled_grads(self, search, train, valid):
        """DARTS-V2's α gradient, per member where ``search`` is a population (ξ, ε, the SGD settings
        and ‖v‖ each member's own, through the search's member-axis building blocks)."""
        members, hps = search.member_searches(), search.weight_hparams()
        xi = [m.update_rule.hparams["xi"] if m.update_rule.hparams["xi"] is not None else h["lr"]
              for m, h in zip(members, hps)]
        params, alphas = search.weight_parameters(), search.arch_parameters()
        backup = [p.detach().clone() for p in params]
        # w' = w − ξ(μ·m + ∇_w L_tr + λ_w·w): the SGD step the weight optimiser would take
        loss = search.loss(train, ("weights",))["loss"]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        state = search.w_optimizer.state
        with torch.no_grad():
            for p, g in zip(params, grads):
                g = torch.zeros_like(p) if g is None else g
                d = g + search.member_values([h["weight_decay"] for h in hps], p) * p.detach()
                buf = state.get(p, {}).get("momentum_buffer")
                if buf is not None and any(h["momentum"] for h in hps):
                    d = d + search.member_values([h["momentum"] for h in hps], p) * buf
                p.copy_(p.detach() - search.member_values(xi, p) * d)
        out_v = search.loss(valid, ("arch",))
        g = torch.autograd.grad(out_v["loss"], alphas + params, allow_unused=True)
        d_alpha = [x if x is not None else torch.zeros_like(a) for x, a in zip(g[: len(alphas)], alphas)]
        v = [x if x is not None else torch.zeros_like(p) for x, p in zip(g[len(alphas):], params)]
        norm = torch.sqrt(sum(search.member_sum(x * x) for x in v))
        # ε = epsilon / ‖v‖ (python's scalar / tensor is reciprocal(tensor) · scalar: the same rounding)
        eps = norm.clamp_min(1e-12).reciprocal() * search.member_values(
            [m.update_rule.hparams["epsilon"] for m in members], norm)
        eps_for = lambda t: search.member_view(eps, t)  # noqa: E731
        # finite differences of ∇_α L_tr around the original w (the paper's formula)
        g_plus, g_minus = _alpha_grads_around(lambda: search.loss(train, ("weights",))["loss"], params, backup, v,
                                              alphas, eps_for)
        return out_v, [da - search.member_values(xi, a) * (gp - gm) / (2 * eps_for(a))
                       for da, gp, gm, a in zip(d_alpha, g_plus, g_minus, alphas)]


@hookimpl
def diffnas_register_update_rules(register):
    register("bilevel", BiLevel)
