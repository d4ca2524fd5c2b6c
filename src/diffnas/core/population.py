"""Population-fused search: K searches of one composition run as one fused supernet.

Researchers run seeds × hyperparameters; a small supernet leaves an accelerator idle, dispatching
thousands of tiny kernels per step. A :class:`Population` runs K ordinary :class:`~.engine.Search`
objects (its *members*) in lockstep through ONE forward and ONE backward per loss: the members'
supernet weights and α are stacked along a leading member axis, so each op runs once for all K
(convolutions become grouped convolutions, matmuls batched matmuls). Everything else stays the
member's own and behaves as in its separate run:

* its data order and augmentation (its own loaders), its global RNG streams (torch and Python,
  swapped in around every call into its components), its learning-rate schedule;
* its optimiser hyperparameters: :class:`MemberwiseSGD` / :class:`MemberwiseAdam` step the stacked
  tensors with per-member lr, momentum, weight decay, betas, with torch.optim's arithmetic
  (bit-exact against ``torch.optim`` in float64, tested); its gradient-norm clip
  (:func:`clip_grad_norm_members`, the norm taken per member);
* its components: the relaxation, regularisers, schedules, discretiser and stopping rules are the
  member's own objects, called with the member's ``Search`` (whose ``alphas`` are, during a step,
  views of the member's row of the stacked α, so gradients flow into the stack); hooks fire once per
  member with only that member's components (and the global plugins) listening;
* its outputs: each member writes its own run directory, checkpoints and ``metrics.jsonl`` through
  its own writer, identical in files and keys to the separate run; a member that stops early leaves
  the population (the rest is re-stacked) and finishes as its separate run would.

The update rule is the one shared piece: its one :meth:`~.protocols.UpdateRule.step` steps the
whole population, through this class's building blocks (:meth:`Population.loss`,
:meth:`~Population.weights_step`, :meth:`~Population.arch_step`, :meth:`~Population.member_values`,
...), which are :class:`~.engine.Search`'s with a leading member axis (a search is the case K = 1). The fused supernet comes from the search
space (:meth:`~.protocols.SearchSpace.population_supernet`); the default,
:class:`VmapPopulationSupernet`, serves any space whose supernet can run under ``torch.func.vmap``,
and members with ``trainer.fused_cells`` hand it their fused supernets (the space's
:meth:`~.protocols.SearchSpace.fused_supernet`), so the population runs the fused kernels with a
member axis (one wide grouped convolution, one batch norm and one batched mixing GEMM per source node
for all K members).

With ``trainer.cuda_graphs`` (every member's) the population step is one CUDA graph, as a
separate run's is (:mod:`.graphs`): the step hooks and the stacked batches stay eager, the update
rule's step and the bookkeeping (:meth:`Population._step`) are captured at each epoch start and
replayed. What makes that possible: the member-wise optimisers' per-member constants are device
tensors made when the learning rates are set, Adam's step counts live on the device
(``capturable``), :meth:`~Population.member_values` fills its tensors (no host-to-device copy), and
each member's CUDA random stream is its own generator, swapped in by reference
(``graphsafe_set_state``) and registered with the graph.

With ``trainer.channels_last`` (every member's) each member's weights and batches are
channels-last, and the stacked batch is laid out ``[B, H, W, K, C]`` (:func:`_stack_batches`), so
that vmap's grouped convolutions read it as a view. ``trainer.autocast`` runs the population's
forward under autocast, which the default :class:`VmapPopulationSupernet` cannot serve (autocast is
not applied under ``torch.func.vmap``): it is refused there, and a space's own population module
may offer it.

What cannot be fused is refused with a :class:`~.errors.RecipeError` naming why (see
:func:`population_refusals`): relaxations that pick ops on the host (GDAS's ``active`` mask),
regularisers that change the supernet (``attach`` with ``modifies_supernet``), update rules that refuse
(:meth:`~.protocols.UpdateRule.population_refusal`) or whose members' settings differ where the rule
reads one set (``member_hparams``),
``on_nonfinite: skip``, ``torchrun``, members that differ in structure (supernet shapes,
epochs, steps per epoch, optimiser kinds).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .engine import default_dtype
from .errors import RecipeError
from .protocols import FastPathContext, OpWeights, Regulariser

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the CPU allocator

#: the environment variable that leaves glibc's allocator as it is (``system``); see heap_allocations
MALLOC_ENV = "DIFFNAS_MALLOC"
_heap_applied = False


def heap_allocations() -> bool:
    """Keep large CPU allocations in glibc's heap for the rest of the process (``mallopt``:
    ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD`` 2 GiB); returns whether it is in effect.

    Why: glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
    and returns it with ``munmap`` when freed, so the kernel maps and zeroes its pages again at every
    step. A population's activations are K times a single run's and cross that threshold: measured
    with ``benchmarks/population_profile.py`` (NB201 C=16 N=1, batch 64, fused, K=4, one thread),
    about 300,000 minor page faults (1.2 GiB mapped afresh) per population step against 28 for the
    four single steps, and the step 10% slower for it. Applied by :meth:`Population.open` on the CPU
    under glibc; ``DIFFNAS_MALLOC=system`` leaves the allocator alone. The heap then keeps up to its
    peak size between steps (what a caching allocator does on a GPU)."""
    global _heap_applied
    if _heap_applied:
        return True
    if os.environ.get(MALLOC_ENV, "").lower() == "system":
        return False
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    _heap_applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    if _heap_applied:
        log.info("population on the CPU: large allocations kept in glibc's heap (%s=system to leave malloc as it is)",
                 MALLOC_ENV)
    return _heap_applied


# --------------------------------------------------------------------------- member-wise optimisers


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[K]`` tensor shaped to broadcast over a stacked ``[K, ...]`` tensor."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _scalar_dtype() -> torch.dtype:
    from torch.optim.optimizer import _get_scalar_dtype

    return _get_scalar_dtype()


class MemberwiseOptimizer:
    """A torch-like optimiser over stacked ``[K, ...]`` parameters whose hyperparameters are per
    member (``lr`` is set per member each epoch with :meth:`set_lrs`). ``zero_grad`` as torch's.

    The per-member constants a step needs are ``[K]`` device tensors made when the learning rates
    are set (:meth:`_constants`), never inside :meth:`step`, so a step makes no tensor from host
    values and can be captured in a CUDA graph. ``capturable`` (Adam) keeps the step count on the
    device as ``torch.optim.Adam(capturable=True)`` does."""

    def __init__(self, params: Sequence[torch.Tensor], cfgs: Sequence[Any], capturable: bool = False):
        self.params = list(params)
        self.cfgs = list(cfgs)
        self.K = len(self.cfgs)
        self.capturable = capturable
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        self.set_lrs([float(c.lr) for c in self.cfgs])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.lrs = [float(v) for v in lrs]
        self._consts = {key: self._constants(*key) for key in dict.fromkeys((p.dtype, p.device) for p in self.params)}

    def _constants(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """The step's per-member ``[K]`` constants for parameters of ``dtype`` on ``device``."""
        raise NotImplementedError


class MemberwiseSGD(MemberwiseOptimizer):
    """SGD (momentum, Nesterov, L2 weight decay, no dampening) per member, as ``torch.optim.SGD``'s
    single-tensor path: ``g += wd·p``; ``buf = g`` (first step) else ``buf = μ·buf + g``;
    ``g = g + μ·buf`` (Nesterov) or ``buf``; ``p -= lr·g``. ``add(x, alpha=a)`` is written as
    ``addcmul(·, a, x)``, which rounds like it (one fused multiply-add per element). SGD keeps no
    host-side state, so it is capturable as it is."""

    def __init__(self, params: Sequence[torch.Tensor], cfgs: Sequence[Any], capturable: bool = False):
        self.use_momentum = cfgs[0].momentum > 0
        self.nesterov = bool(cfgs[0].nesterov) and self.use_momentum
        super().__init__(params, cfgs, capturable)

    def _constants(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        neg_lr, wd, mom = torch.tensor([[-v for v in self.lrs], [c.weight_decay for c in self.cfgs],
                                        [c.momentum for c in self.cfgs]], dtype=dtype, device=device).unbind(0)
        return {"neg_lr": neg_lr, "wd": wd, "mom": mom}

    def step(self) -> None:
        decay = any(c.weight_decay for c in self.cfgs)
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            c = self._consts[(p.dtype, p.device)]
            with torch.no_grad():
                if decay:
                    g = torch.addcmul(g, _col(c["wd"], p), p)
                if self.use_momentum:
                    st = self.state.setdefault(p, {})
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = torch.clone(g).detach()
                    else:
                        buf.mul_(_col(c["mom"], p)).add_(g)
                    g = torch.addcmul(g, _col(c["mom"], p), buf) if self.nesterov else buf
                p.addcmul_(_col(c["neg_lr"], p), g)

    def member_state(self, i: int, m: int) -> dict[str, Any]:
        """Parameter ``i``'s state for member ``m`` as ``torch.optim.SGD`` keeps it."""
        buf = self.state.get(self.params[i], {}).get("momentum_buffer")
        return {"momentum_buffer": buf[m].clone()} if buf is not None else {}

    def load_member_states(self, states: Sequence[Sequence[dict[str, Any]]]) -> None:
        """``states[m][i]``: member ``m``'s torch state of parameter ``i`` (an empty dict: none yet)."""
        for i, p in enumerate(self.params):
            bufs = [s[i].get("momentum_buffer") for s in states]
            if all(b is not None for b in bufs):
                self.state[p] = {"momentum_buffer": torch.stack([b.to(p) for b in bufs])}
            elif any(b is not None for b in bufs):
                raise RecipeError([("members are at different optimiser steps (some have a momentum buffer, "
                                    "some not)", "population")])


class MemberwiseAdam(MemberwiseOptimizer):
    """Adam (L2 weight decay, no AMSGrad) per member, as ``torch.optim.Adam``'s single-tensor path.

    By default the bias corrections are computed on the host per member exactly as torch does, then
    applied as ``[K]`` tensors. ``capturable``: the step counts are ``[K]`` float32 device tensors
    and the bias corrections are computed on the device with the arithmetic of
    ``torch.optim.Adam(capturable=True)`` (what a separate run with ``trainer.cuda_graphs`` uses), so
    the step holds no host value that a CUDA graph would freeze."""

    def _constants(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        b1 = [c.betas[0] for c in self.cfgs]
        b2 = [c.betas[1] for c in self.cfgs]
        wd, w1, beta2, w2 = torch.tensor([[c.weight_decay for c in self.cfgs], [1 - b for b in b1], b2,
                                          [1 - b for b in b2]], dtype=dtype, device=device).unbind(0)
        out = {"wd": wd, "w1": w1, "beta2": beta2, "w2": w2}
        if self.capturable:  # torch's capturable step computes its bias corrections in the step's dtype (float32)
            sd = _scalar_dtype()
            out.update(zip(("b1_s", "b2_s", "lr_s", "eps_s"),
                           torch.tensor([b1, b2, self.lrs, [1e-8] * self.K], dtype=sd, device=device).unbind(0)))
        return out

    def step(self) -> None:
        decay = any(c.weight_decay for c in self.cfgs)
        host: dict[Any, tuple[torch.Tensor, ...]] = {}  # not capturable: the host bias corrections, once per step count
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            c = self._consts[(p.dtype, p.device)]
            with torch.no_grad():
                st = self.state.get(p)
                if st is None:
                    z = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st = self.state[p] = {"exp_avg": z, "exp_avg_sq": z.clone(),
                                          "step": (torch.zeros(self.K, dtype=_scalar_dtype(), device=p.device)
                                                   if self.capturable else
                                                   [torch.tensor(0.0, dtype=_scalar_dtype()) for _ in range(self.K)])}
                if decay:
                    g = torch.addcmul(g, _col(c["wd"], p), p)
                st["exp_avg"].lerp_(g, _col(c["w1"], p))
                st["exp_avg_sq"].mul_(_col(c["beta2"], p)).addcmul_(torch.mul(_col(c["w2"], p), g), g)
                if self.capturable:
                    step = st["step"]
                    step += 1
                    # torch: step_size = lr / (1 - β1^t) (a float over a tensor is reciprocal · float)
                    neg_step = ((1 - torch.pow(c["b1_s"], step)).reciprocal() * c["lr_s"]).neg()
                    bc2_sqrt = (1 - torch.pow(c["b2_s"], step)).sqrt()
                    denom = (st["exp_avg_sq"].sqrt() / _col(bc2_sqrt * neg_step, p)).add_(
                        _col(neg_step.reciprocal() * c["eps_s"], p))
                    p.addcdiv_(st["exp_avg"], denom)
                    continue
                for s in st["step"]:
                    s += 1
                steps = tuple(float(s.item()) for s in st["step"])
                key = (p.dtype, p.device, steps)
                if key not in host:
                    bc1 = [1 - c_.betas[0] ** t for c_, t in zip(self.cfgs, steps)]
                    bc2 = [1 - c_.betas[1] ** t for c_, t in zip(self.cfgs, steps)]
                    host[key] = torch.tensor([[b ** 0.5 for b in bc2], [1e-8] * self.K,
                                              [-lr / b for lr, b in zip(self.lrs, bc1)]],
                                             dtype=p.dtype, device=p.device).unbind(0)
                bc2_sqrt, eps, neg_step = (_col(v, p) for v in host[key])
                denom = (st["exp_avg_sq"].sqrt() / bc2_sqrt).add_(eps)
                p.addcdiv_(torch.mul(neg_step, st["exp_avg"]), denom)

    def member_state(self, i: int, m: int) -> dict[str, Any]:
        st = self.state.get(self.params[i])
        if st is None:
            return {}
        step = st["step"][m].clone()  # capturable: a 0-dim device tensor, as torch keeps it then
        return {"step": step, "exp_avg": st["exp_avg"][m].clone(), "exp_avg_sq": st["exp_avg_sq"][m].clone()}

    def load_member_states(self, states: Sequence[Sequence[dict[str, Any]]]) -> None:
        for i, p in enumerate(self.params):
            have = [bool(s[i]) for s in states]
            if all(have):
                steps = [s[i]["step"].detach() for s in states]
                self.state[p] = {"step": (torch.stack([t.to(device=p.device, dtype=_scalar_dtype()) for t in steps])
                                          if self.capturable else [t.clone().cpu() for t in steps]),
                                 "exp_avg": torch.stack([s[i]["exp_avg"].to(p) for s in states]),
                                 "exp_avg_sq": torch.stack([s[i]["exp_avg_sq"].to(p) for s in states])}
            elif any(have):
                raise RecipeError([("members are at different optimiser steps", "population")])


def make_memberwise_optimizer(cfgs: Sequence[Any], params: Sequence[torch.Tensor],
                              capturable: bool = False) -> MemberwiseOptimizer:
    """The member-wise optimiser for the members' ``OptimizerConfig`` s (which name one kind);
    ``capturable`` as :func:`~diffnas.core.engine.make_optimizer`'s (CUDA graphs)."""
    return (MemberwiseSGD if cfgs[0].name == "sgd" else MemberwiseAdam)(params, cfgs, capturable)


def clip_grad_norm_members(params: Sequence[torch.Tensor], max_norms: torch.Tensor) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` per member of stacked ``[K, ...]`` parameters: each
    member's gradients are scaled by ``min(1, max_norm / (‖g‖₂ + 1e-6))`` with its own total norm.
    Returns the ``[K]`` total norms."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros_like(max_norms)
    K = grads[0].shape[0]
    # per-parameter, per-member norms, as torch's foreach norm takes them, then the total per member
    norms = torch._foreach_norm([s for g in grads for s in g.unbind(0)], 2.0)
    per = torch.stack(norms).view(len(grads), K).t()
    total = torch.stack([torch.linalg.vector_norm(row, 2.0) for row in per.unbind(0)])
    # torch's ``max_norm / (total + 1e-6)`` with a float max_norm is reciprocal(·) * max_norm: same rounding
    coef = torch.clamp((total + 1e-6).reciprocal() * max_norms.to(total), max=1.0)
    with torch.no_grad():
        for g in grads:
            g.mul_(_col(coef.to(g), g))
    return total


# --------------------------------------------------------------------------- the fused supernet


class PopulationSupernet(nn.Module):
    """What :meth:`SearchSpace.population_supernet` returns: K members' supernets as one module.

    Contract: ``forward(x, op_weights)`` takes ``x`` as ``[K, B, ...]`` and ``op_weights`` mapping each
    key of the members' op weights to an :class:`OpWeights` (or raw tensor) with a leading member
    axis, and returns ``[K, B, num_classes]`` logits; ``parameters()`` correspond one to one, in
    order, to each member supernet's ``parameters()``, stacked on a leading axis (row ``m`` is
    member ``m``'s); :meth:`store_to_members` copies the population's weights and buffers back
    into the member supernets (their ``state_dict`` then equals the separate runs').
    """

    def store_to_members(self, supernets: Sequence[nn.Module]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class VmapPopulationSupernet(PopulationSupernet):
    """The default population supernet: the members' parameters and buffers stacked
    (``torch.func.stack_module_state``) and one member's module run under ``torch.func.vmap`` with
    ``functional_call``, which lowers each op to its batched form (grouped convolutions, batched
    matmuls, one batch norm over ``K·C`` channels). BatchNorm running statistics are stacked buffers
    updated in place per member. Random ops inside the supernet are refused by vmap."""

    def __init__(self, supernets: Sequence[nn.Module]):
        super().__init__()
        from torch.func import stack_module_state

        names = [n for n, _ in supernets[0].named_parameters()]
        for s in supernets[1:]:
            if [n for n, _ in s.named_parameters()] != names or type(s) is not type(supernets[0]):
                raise RecipeError([("the members' supernets differ in structure (parameter names or class)",
                                    "population.search_space")])
        params, buffers = stack_module_state(list(supernets))
        self._names = names
        self._buffer_names = list(buffers)
        # one flat ParameterList keeps the members' parameter order (the contract above)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in names])
        for i, n in enumerate(self._buffer_names):
            self.register_buffer(f"buf{i}", buffers[n].clone())
        # the module whose forward runs under vmap: member 0's own (functional_call swaps the stacked
        # tensors in for the call and puts its own back); in a list, so it is no submodule
        self._base = [supernets[0]]

    def forward(self, x: torch.Tensor, op_weights: dict[str, Any]) -> torch.Tensor:
        from torch.func import functional_call, vmap

        base = self._base[0]
        params = dict(zip(self._names, self.stacked))
        buffers = {n: getattr(self, f"buf{i}") for i, n in enumerate(self._buffer_names)}
        is_ow = {k: isinstance(v, OpWeights) for k, v in op_weights.items()}
        raw = {k: (v.weights if is_ow[k] else v) for k, v in op_weights.items()}

        def one(p: dict, b: dict, xm: torch.Tensor, w: dict) -> torch.Tensor:
            ow = {k: (OpWeights(v) if is_ow[k] else v) for k, v in w.items()}
            return functional_call(base, (p, b), (xm, ow))

        return vmap(one)(params, buffers, x, raw)

    @torch.no_grad()
    def store_to_members(self, supernets: Sequence[nn.Module]) -> None:
        for m, s in enumerate(supernets):
            for p, stacked in zip(s.parameters(), self.stacked):
                p.copy_(stacked[m])
            bufs = dict(s.named_buffers())
            for i, n in enumerate(self._buffer_names):
                bufs[n].copy_(getattr(self, f"buf{i}")[m])


# --------------------------------------------------------------------------- refusals


def _rule_schedules(recipe: Any) -> list[tuple[str, Any]]:
    """The recipe's schedules that target the update rule (name and params, in order)."""
    return [(sc.name, sc.params) for sc in recipe.schedules
            if str(sc.params.get("target", "")).split(".")[0] == "update_rule"]


def population_refusals(members: Sequence[Any]) -> list[tuple[str, str]]:
    """Why these built searches cannot run as one population (``(message, key path)`` pairs; empty:
    they can). Checks what changes the fused step's structure; numeric hyperparameters may differ."""
    out: list[tuple[str, str]] = []
    if len(members) < 1:
        return [("a population needs at least one member", "population")]
    first = members[0]
    going = next((s for s in members if not s.state.finished), first)  # the first member still to step
    r0 = first.recipe
    t0 = r0.trainer
    for m, s in enumerate(members):
        r, t = s.recipe, s.recipe.trainer
        where = f"population[{m}]"
        if s.relaxation.sets_active:
            out.append((f"relaxation {r.relaxation.name!r} samples one op per edge on the host (an 'active' mask, "
                        "as GDAS); a fused population computes every member's ops densely", f"{where}.relaxation"))
        for i, reg in enumerate(s.regularisers):
            if reg.perturbs_op_weights:
                out.append((f"regulariser {r.regularisers[i].name!r} perturbs the weight step's op weights "
                            "(perturb_op_weights); the fused population step has no perturbed weight step",
                            f"{where}.regularisers.{i}"))
            if type(reg).attach is not Regulariser.attach and reg.modifies_supernet:
                out.append((f"regulariser {r.regularisers[i].name!r} changes the supernet in attach "
                            f"(Regulariser.modifies_supernet is True for {type(reg).__name__}); members of a "
                            "population share one fused supernet", f"{where}.regularisers.{i}"))
        if t.on_nonfinite == "skip":
            out.append(("on_nonfinite: skip undoes single steps on the host", f"{where}.trainer.on_nonfinite"))
        if s.world.world_size > 1:
            out.append(("more than one process (torchrun)", where))
        if m == 0:
            continue
        same = [("search_space", r.search_space.name == r0.search_space.name and r.search_space.params == r0.search_space.params),
                ("update_rule", r.update_rule.name == r0.update_rule.name),
                ("trainer.epochs", t.epochs == t0.epochs),
                ("trainer.batch_size", t.batch_size == t0.batch_size),
                ("trainer.steps_per_epoch", s.steps_per_epoch == first.steps_per_epoch),
                ("trainer.warmup_epochs/warmup_steps (the warm-up's end)", s.warmup_end_step == first.warmup_end_step),
                ("trainer.device", s.device == first.device),
                ("trainer.autocast", t.autocast == t0.autocast),
                ("trainer.cuda_graphs", t.cuda_graphs == t0.cuda_graphs),
                ("trainer.channels_last", t.channels_last == t0.channels_last),
                ("trainer.dtype", t.dtype == t0.dtype),
                ("trainer.fused_cells", t.fused_cells == t0.fused_cells),
                ("trainer.weights_optimizer.name", t.weights_optimizer.name == t0.weights_optimizer.name),
                ("trainer.arch_optimizer.name", t.arch_optimizer.name == t0.arch_optimizer.name),
                ("trainer.grad_clip", (t.grad_clip is None) == (t0.grad_clip is None)),
                ("alphas", {k: tuple(a.shape) for k, a in s.alphas.items()} == {k: tuple(a.shape) for k, a in first.alphas.items()}),
                # unfinished members step together, so they must stand at the same step (a member that
                # already finished is only finalised again)
                ("position (epoch, step)", s.state.finished or s is going
                 or (s.state.epoch, s.state.step) == (going.state.epoch, going.state.step))]
        for cfg_key in ("weights_optimizer", "arch_optimizer"):
            a, b = getattr(t, cfg_key), getattr(t0, cfg_key)
            if a.name == "sgd":
                same.append((f"trainer.{cfg_key}.momentum", (a.momentum > 0) == (b.momentum > 0)))
                same.append((f"trainer.{cfg_key}.nesterov", (a.nesterov and a.momentum > 0) == (b.nesterov and b.momentum > 0)))
        if not type(first.update_rule).member_hparams:  # one rule object steps all: same settings
            same.append(("update_rule.params (this rule reads one set of hyperparameters for all members: "
                         "UpdateRule.member_hparams is False)", r.update_rule.params == r0.update_rule.params))
            same.append(("schedules of update_rule.* (UpdateRule.member_hparams is False)",
                         _rule_schedules(r) == _rule_schedules(r0)))
        for key, ok in same:
            if not ok:
                out.append((f"differs from population[0] in {key}; members must share the search's structure "
                            "(only seeds and numeric hyperparameters may differ)", f"{where}.{key}"))
    why = first.update_rule.population_refusal(list(members))
    if why:
        out.append((why, "population.update_rule"))
    return out


# --------------------------------------------------------------------------- member views


class MemberAlphas(Mapping):
    """A member's α during a population step: each value is a view of the member's row of the
    stacked α (read afresh on every access, so autograd reaches the stacked leaf); in-place edits
    (projections under ``no_grad``) write into the stack."""

    def __init__(self, pop: "Population", m: int):
        self._pop, self._m = pop, m

    def __getitem__(self, k: str) -> torch.Tensor:
        return self._pop.alphas[k][self._m]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pop.alphas)

    def __len__(self) -> int:
        return len(self._pop.alphas)

    def parameters(self) -> list[torch.Tensor]:
        """The views, in order (what ``ParameterDict.parameters()`` gives a separate run)."""
        return list(self.values())


class Population:
    """K built :class:`~.engine.Search` objects run as one fused search (see the module docstring).

    :param members: searches of one composition (fresh, or all restored from checkpoints taken by
        one population at the same step); refused with a :class:`RecipeError` if they cannot fuse.
    :param step_graph: run the population step through a :class:`~.graphs.StepGraph` (captured as
        one CUDA graph on a CUDA device; on the CPU the same orchestration runs eagerly, what the
        CPU tests exercise); ``None``: as the members' ``trainer.cuda_graphs``.
    """

    def __init__(self, members: Sequence[Any], step_graph: bool | None = None):
        self.members = list(members)
        self.graphed = bool(self.members and self.members[0].recipe.trainer.cuda_graphs) if step_graph is None else step_graph
        self._step_graph: Any = None  # made by open() when graphed
        self._cuda_gens: dict[int, torch.Generator] = {}  # per-member CUDA RNG streams in a graphed step (open)
        self._values: dict[tuple, torch.Tensor] = {}  # member_values' device tensors (see there)
        self._warm_phase: bool | None = None
        self._step_losses: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # see one_step
        problems = population_refusals(self.members)
        if problems:
            raise RecipeError(problems, "population of " + ", ".join(str(m.resolved.source or m.out_dir or i)
                                                                     for i, m in enumerate(self.members)))
        self.device = self.members[0].device
        self.pm = self.members[0].pm
        self.update_rule = self.members[0].update_rule
        self.recipe = self.members[0].recipe
        # each member's global RNG streams, as its separate run would have them now (a fresh member
        # was seeded when built; a resumed one restored its checkpoint's)
        self._rng = [s._population_rng for s in self.members]
        for s in self.members:
            s.apply_init_from()  # a fresh member's trainer.init_from, as its separate run would load it
            s._population_alphas = s.alphas  # the member's own α (the stack's rows are views of it while stepping)
        with default_dtype(self.recipe.trainer.dtype):
            self._stack()  # here, so that a space without a population supernet is refused before anything is written

    # ------------------------------------------------------------------ (re)stacking

    def _stack(self) -> None:
        """Stack the unfinished members' weights, α and optimiser states (fresh, or after a member left)."""
        self._forget_step_graph()  # it reads the tensors replaced here
        self.active = [s for s in self.members if not s.state.finished]
        act = self.active
        self.K = len(act)
        if not act:
            return
        space = act[0].search_space
        context = FastPathContext("population", self.device, channels_last=bool(self.recipe.trainer.channels_last),
                                  source=act[0].resolved.source)
        model = space.population_supernet([s.model for s in act], context)
        if model is None:
            raise RecipeError([(f"search space {act[0].recipe.search_space.name!r} offers no population supernet",
                                "population.search_space")], None)
        if self.recipe.trainer.autocast != "off" and isinstance(model, VmapPopulationSupernet):
            raise RecipeError([(f"trainer.autocast {self.recipe.trainer.autocast!r} is not applied under torch.func.vmap, "
                                "which the default population supernet runs on (measured, torch 2.14 on the CPU: the "
                                "convolutions stay float32, and fused cells fail on mixed dtypes; upstream: "
                                "pytorch/pytorch#192617, #184890); set trainer.autocast: off for populations, or give the "
                                "search space a population_supernet of its own", "population.trainer.autocast")],
                              act[0].resolved.source)
        self.model = model.to(self.device)
        self.alphas = nn.ParameterDict({k: nn.Parameter(torch.stack([s._population_alphas[k].detach() for s in act]))
                                        for k in act[0]._population_alphas})
        t = [s.recipe.trainer for s in act]
        self.w_optimizer = make_memberwise_optimizer([x.weights_optimizer for x in t], list(self.model.parameters()),
                                                     self.graphed)
        self.a_optimizer = make_memberwise_optimizer([x.arch_optimizer for x in t], list(self.alphas.values()),
                                                     self.graphed)
        for opt, get, params in ((self.w_optimizer, lambda s: s.w_optimizer, lambda s: list(s.model.parameters())),
                                 (self.a_optimizer, lambda s: s.a_optimizer, lambda s: list(s._population_alphas.values()))):
            states = [[dict(get(s).state.get(p, {})) for p in params(s)] for s in act]
            opt.load_member_states(states)
        clips = [x.grad_clip for x in t]
        self.max_norms = None if clips[0] is None else torch.tensor(clips, dtype=torch.float64, device=self.device)
        self.rng = [self._rng[self.members.index(s)] for s in act]
        # the step bookkeeping of Search._step, stacked: first non-finite step, global step, epoch sums
        self._nonfinite_step = torch.stack([s._nonfinite_step for s in act])
        self._global_step_t = torch.tensor([s.state.global_step for s in act], dtype=torch.long, device=self.device)
        keys = list(dict.fromkeys(k for s in act for k in s._epoch_sums))
        self._epoch_sums = {k: torch.stack([s._epoch_sums[k] if k in s._epoch_sums else
                                            torch.zeros((), device=self.device) for s in act]) for k in keys}

    def _scatter(self) -> None:
        """Copy the stacked state back into the active members (their own model, α and torch
        optimisers), so that their epoch ends, checkpoints and final steps see their separate run's state."""
        act = self.active
        self.model.store_to_members([s.model for s in act])
        for m, s in enumerate(act):
            s._nonfinite_step.copy_(self._nonfinite_step[m])
            s._global_step_t.copy_(self._global_step_t[m])
            s._epoch_sums = {k: v[m].clone() for k, v in self._epoch_sums.items()}
        with torch.no_grad():
            for m, s in enumerate(act):
                for k, a in s._population_alphas.items():
                    a.copy_(self.alphas[k][m])
        for opt, get, params in ((self.w_optimizer, lambda s: s.w_optimizer, lambda s: list(s.model.parameters())),
                                 (self.a_optimizer, lambda s: s.a_optimizer, lambda s: list(s._population_alphas.values()))):
            for m, s in enumerate(act):
                torch_opt = get(s)
                for i, p in enumerate(params(s)):
                    st = opt.member_state(i, m)
                    if st:
                        torch_opt.state[p] = st

    @contextlib.contextmanager
    def _real_alphas(self) -> Iterator[None]:
        """Give the active members back their own α ``ParameterDict`` (epoch ends, checkpoints)."""
        for s in self.active:
            s.alphas = s._population_alphas
        try:
            yield
        finally:
            for m, s in enumerate(self.active):
                s.alphas = MemberAlphas(self, m)

    # ------------------------------------------------------------------ per-member context

    @contextlib.contextmanager
    def member(self, m: int) -> Iterator[Any]:
        """Member ``m``'s global RNG streams swapped in (torch CPU and CUDA, Python's ``random``)
        around a call into its components; yields the member's Search.

        In a graphed step the CUDA stream is the member's own generator (:attr:`_cuda_gens`),
        swapped in by reference with ``graphsafe_set_state``: copying a state in and out, as the CPU
        streams are, cannot be captured, while a swapped generator registered with the graph is
        advanced by every replay as the eager steps would advance it."""
        saved = self._rng_state()
        self._set_rng(self.rng[m])
        default = outer = None
        if self._cuda_gens:
            default = torch.cuda.default_generators[self._cuda_index()]
            outer = default.graphsafe_get_state()
            default.graphsafe_set_state(self._cuda_gens[id(self.active[m])])
        try:
            yield self.active[m]
        finally:
            self.rng[m] = self._rng_state()
            self._set_rng(saved)
            if default is not None:
                default.graphsafe_set_state(outer)

    def _cuda_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _rng_state(self) -> dict:
        if self._cuda_gens:  # the member's CUDA stream lives in its generator (member()); reading
            # the CUDA state is not done inside a capture
            return {"torch": torch.get_rng_state(), "python": random.getstate()}
        return rng_state(self.device)

    def _set_rng(self, st: dict) -> None:
        torch.set_rng_state(st["torch"])
        random.setstate(st["python"])
        if "cuda" in st and self.device.type == "cuda" and not self._cuda_gens:
            torch.cuda.set_rng_state(st["cuda"], self.device)

    def fire(self, m: int, hook: str, **kwargs: Any) -> Any:
        with self.member(m) as s:
            return s._fire(hook, search=s, **kwargs)

    # ------------------------------------------------------------------ building blocks (a Search's, with a member axis)

    def op_weights(self) -> dict[str, Any]:
        """Every member's op weights (its own relaxation and hyperparameters), stacked."""
        per = []
        for m in range(self.K):
            with self.member(m) as s:
                per.append(s.op_weights())
        out: dict[str, Any] = {}
        for k in per[0]:
            ws = [p[k] for p in per]
            if isinstance(ws[0], OpWeights):
                if any(w.active is not None for w in ws):
                    raise RecipeError([("a relaxation returned an 'active' mask; a population computes ops densely",
                                        "population.relaxation")])
                out[k] = OpWeights(torch.stack([w.weights for w in ws]))
            else:
                out[k] = torch.stack(ws)
        return out

    def forward(self, x: torch.Tensor, op_weights: dict[str, Any] | None = None) -> torch.Tensor:
        ow = self.op_weights() if op_weights is None else op_weights
        dtype = self.members[0].autocast_dtype  # trainer.autocast, the same for every member
        if dtype is not None:  # autocast's weight cast cache would outlive a captured step (as Search.forward)
            with torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.graphed):
                return self.model(x, ow).float()
        return self.model(x, ow)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], phases: tuple[str, ...],
             op_weights: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """:meth:`Search.loss` for every member at once, on ``batch`` = ``([K, B, ...], [K, B])``.

        :returns: ``{"loss": Σ_m member loss (a scalar to differentiate: its gradient in member m's
            weights and α is member m's own), "member_loss": [K], "ce": [K], "correct": [K], "count": [K]}``.
            An update rule that reports ``loss`` (detached) as a step metric gets each member's own
            in the member's records: :meth:`one_step` maps it back to ``member_loss``.
        """
        x, y = batch
        logits = self.forward(x, op_weights)
        K, B = y.shape
        ce = nn.functional.cross_entropy(logits.reshape(K * B, -1), y.reshape(-1), reduction="none").view(K, B).mean(1)
        terms = []
        for m in range(K):
            total = None
            with self.member(m) as s:
                for reg in s.regularisers:
                    for phase in phases:
                        term = reg.loss(s, phase) if phase in reg.phases else None
                        if term is not None:
                            total = term if total is None else total + term
            terms.append(total if total is not None else ce.new_zeros(()))
        member_loss = ce + torch.stack(terms)
        correct = (logits.detach().argmax(-1) == y).sum(1)
        total = member_loss.sum()
        if self._step_losses is not None:  # inside one_step: remember the sum's member losses
            self._step_losses.append((total.detach(), member_loss.detach()))
        return {"loss": total, "member_loss": member_loss, "ce": ce.detach(), "correct": correct,
                "count": y.new_full((K,), B)}

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def weights_step(self, loss: torch.Tensor) -> None:
        """Backward ``loss`` into the weights only, clip per member, step the member-wise optimiser."""
        params = self.weight_parameters()
        self.w_optimizer.zero_grad()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.clip_weight_grads()
        self.w_optimizer.step()

    def sync_grads(self, params: Any) -> None:
        """As :meth:`Search.sync_grads`; a no-op: a population runs in one process (torchrun is refused)."""

    def clip_weight_grads(self) -> None:
        if self.max_norms is not None:
            clip_grad_norm_members(self.weight_parameters(), self.max_norms)

    def arch_step(self) -> None:
        """Step the member-wise α optimiser, then each member's regularisers act on its α."""
        self.a_optimizer.step()
        for m in range(self.K):
            with self.member(m) as s:
                for reg in s.regularisers:
                    reg.after_arch_step(s)

    def member_values(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """Per-member host values as a tensor broadcasting over ``like`` (``[K, ...]``).

        The ``[K]`` device tensor is filled value by value (no host-to-device copy, which a CUDA
        graph capture refuses; a captured fill holds the value, and the graph is captured afresh at
        every epoch start) and kept per values, dtype and device until the step graph is forgotten."""
        key = (tuple(float(v) for v in values), like.dtype, like.device)
        t = self._values.get(key)
        if t is None:
            t = self._values[key] = torch.empty(len(key[0]), dtype=like.dtype, device=like.device)
            for i, v in enumerate(key[0]):
                t[i].fill_(v)
        return _col(t, like)

    # Search's member-axis building blocks (Search.member_searches and what follows it there), so
    # that one UpdateRule.step serves a search and a population.

    def member_searches(self) -> list[Any]:
        """The members stepped together (the active ones, in order): member m's own search."""
        return list(self.active)

    def member_view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A ``[K]`` tensor shaped to broadcast over the stacked ``like`` (``[K, ...]``)."""
        return _col(t, like)

    def member_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of a stacked ``t`` per member: ``[K]``."""
        return t.reshape(self.K, -1).sum(1)

    def weight_hparams(self) -> list[dict[str, float]]:
        """:meth:`Search.weight_hparams` per member (the member-wise SGD's current values)."""
        opt = self.w_optimizer
        return [{"lr": opt.lrs[m], "momentum": float(getattr(c, "momentum", 0.0) or 0.0),
                 "weight_decay": float(c.weight_decay)} for m, c in enumerate(opt.cfgs)]

    def weight_step_op_weights(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """:meth:`Search.weight_step_op_weights`: always ``None`` (the relaxation's own op weights),
        since regularisers that perturb them are refused in populations."""
        return None

    def _member_metrics(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step's metrics with each reported summed loss replaced by its ``[K]`` member losses."""
        out = {}
        for k, v in metrics.items():
            if v.dim() == 0:
                v = next((ml for total, ml in self._step_losses
                          if total.data_ptr() == v.data_ptr() and total.dtype == v.dtype), v)
            out[k] = v
        return out

    # ------------------------------------------------------------------ the loop

    def run(self, progress: bool | None = None) -> list[dict[str, Any]]:
        """Run (or continue) every member to its end; return the members' summaries in order.

        :param progress: one progress bar for the population, in fused steps
            (:mod:`diffnas.core.progress`); ``None``: the first member's ``output.progress``."""
        from .progress import progress_bar

        summaries: dict[int, dict] = {}
        going = [s for s in self.members if not s.state.finished]
        lead = going[0] if going else self.members[0]
        enabled = lead.recipe.output.progress if progress is None else progress
        spe = lead.steps_per_epoch
        bar = progress_bar(lead.epochs * spe, bool(enabled and going), initial=lead.state.epoch * spe + lead.state.step,
                           unit="step", desc=f"population of {len(self.members)}")
        self.open()
        try:
            with default_dtype(self.recipe.trainer.dtype):
                self._run(summaries, bar)
            for w in self._writers.values():  # every member ended: none needs its way back into step
                if w is not None:
                    w.drop_previous()
        finally:
            self.close()
            if bar is not None:
                bar.close()
        return [summaries[id(s)] for s in self.members]

    def open(self, write: bool = True) -> None:
        """Set the population up for stepping (what :meth:`run` does first; benchmarks that drive
        :meth:`one_step` themselves call it, and :meth:`close` after): each member's writer opened
        (``write``), its components registered with hooks that reach only them (and the global
        plugins), the members stacked and their ``alphas`` turned into views of the stack."""
        from .outputs import RunWriter

        if self.device.type == "cpu":
            heap_allocations()
        self._writers = {}
        for s in self.members:
            w = RunWriter(s) if (write and s.out_dir is not None) else None
            if w is not None:
                w.keep_previous = True  # a kill between two members' writes can be undone (bring_into_step)
                w.open()
            self._writers[id(s)] = w
        for s in self.members:
            s._register_components()
        others = {id(s): [n for o in self.members if o is not s for n in o._registered] for s in self.members}
        for s in self.members:
            drop = [self.pm.get_plugin(n) for n in others[id(s)]]
            cache: dict[str, Any] = {}

            def fire(hook: str, _drop=drop, _cache=cache, **kw: Any) -> Any:
                if hook not in _cache:
                    _cache[hook] = self.pm.subset_hook_caller(hook, remove_plugins=_drop)
                return _cache[hook](**kw)
            s._fire = fire
        for m, s in enumerate(self.active):
            s.prepare_steps()  # with trainer.cuda_graphs, also its checks of the step hooks
            s.alphas = MemberAlphas(self, m)
        self._warm_phase = None
        if self.graphed:
            from .graphs import StepGraph

            capture = self.device.type == "cuda"
            if capture:  # each member's CUDA stream as its own generator, swapped in by member()
                for i, s in enumerate(self.members):
                    gen = torch.Generator(self.device)
                    gen.set_state(self._rng[i]["cuda"])
                    self._cuda_gens[id(s)] = gen
            self._step_graph = StepGraph(self._step, capture=capture, source=self.members[0].resolved.source,
                                         generators=lambda: [self._cuda_gens[id(s)] for s in self.active])
            self._step_hooks_checked = False

    def _forget_step_graph(self) -> None:
        """Drop the captured step and the device constants it reads (before they are replaced)."""
        if self._step_graph is not None:
            self._step_graph.reset()
        self._values = {}

    def close(self) -> None:
        """Undo :meth:`open`: the members get their own α back, hooks and writers are released."""
        for s in self.members:
            s._unregister_components()
            s.__dict__.pop("_fire", None)
            for lg in getattr(s, "loggers", ()):  # as Search.run closes its loggers
                lg.close(s)
            if isinstance(s.alphas, MemberAlphas):
                s.alphas = s._population_alphas
        for w in self._writers.values():
            if w is not None:
                w.close()
        if self._cuda_gens:  # the members' CUDA streams back where a later open() reads them
            for i, s in enumerate(self.members):
                self._rng[i]["cuda"] = self._cuda_gens[id(s)].get_state()
            self._cuda_gens = {}
        self._forget_step_graph()  # kept (its capture count) until the next open()

    def start_epoch(self, epoch: int) -> list[dict[str, float]]:
        """Every active member's learning rates for ``epoch`` (also given to the member-wise
        optimisers); a graphed step is captured afresh (learning rates, τ, the supernet may change)."""
        self._forget_step_graph()
        lrs = [s._set_learning_rates(epoch) for s in self.active]
        self.w_optimizer.set_lrs([x["lr"] for x in lrs])
        self.a_optimizer.set_lrs([x["arch_lr"] for x in lrs])
        return lrs

    def _run(self, summaries: dict[int, dict], bar: Any = None) -> None:
        t0 = time.perf_counter()
        for m in range(len(self.active)):
            self.fire(m, "diffnas_search_start")
        for s in self.members:
            if s.state.finished:
                summaries[id(s)] = self._finish(s, t0)
        if self.active and self.active[0].state.epoch >= self.active[0].epochs:
            # resumed from the last epoch's end (killed before the members finished): they end as a
            # separate run does, without another epoch
            with self._real_alphas():
                for m in range(len(self.active)):
                    with self.member(m) as s:
                        summaries[id(s)] = self._finish(s, t0)
            self.active = []
        while self.active:
            first = self.active[0]
            st0 = first.state
            epoch = st0.epoch
            lrs = self.start_epoch(epoch)
            if st0.step == 0:
                for v in self._epoch_sums.values():
                    v.zero_()
            for m, s in enumerate(self.active):
                if s.state.step == 0:
                    s._epoch_t0 = time.perf_counter()
                self.fire(m, "diffnas_epoch_start", epoch=epoch)
            self._step_diagnostics(start=True)  # as Search._run: after the epoch start hooks
            spe = first.steps_per_epoch
            for step in range(st0.step, spe):
                self.one_step(epoch, step)
                for s in self.active:
                    s.state.step = step + 1
                    s.state.global_step += 1
                if bar is not None:
                    bar.update(1)
                self._step_diagnostics()  # before a checkpoint: it carries the records
                due = [m for m, s in enumerate(self.active) if s.out_dir is not None and s.recipe.output.checkpoint_every_steps
                       and s.state.global_step % s.recipe.output.checkpoint_every_steps == 0 and step + 1 < spe]
                if due:  # every member at once, so that their checkpoints stay at one step (bring_into_step)
                    self._checkpoint([m for m, s in enumerate(self.active) if s.out_dir is not None])
            self._scatter()
            ended = []
            with self._real_alphas():
                for m, s in enumerate(self.active):
                    st = s.state
                    with self.member(m):  # as Search._run ends an epoch, in the member's RNG streams
                        record = s._end_epoch(epoch, lrs[m])
                        st.history.append(record)
                        st.epoch, st.step = epoch + 1, 0
                        if s._stop_reason is not None:
                            st.stop_reason = s._stop_reason
                            st.finished = True
                        w = self._writers[id(s)]
                        if w is not None:
                            w.epoch_done(record)
                    if st.finished or st.epoch >= s.epochs:
                        ended.append(m)
                if bar is not None:
                    bar.set_postfix_str(f"ep {epoch}, {len(self.active) - len(ended)} of {len(self.members)} members "
                                        "running", refresh=False)
                for m in ended:
                    with self.member(m) as s:
                        summaries[id(s)] = self._finish(s, t0)
            # the members hold the truth at epoch boundaries (epoch-end hooks may have changed
            # them): stack again from their own state, without those that ended
            for m, s in enumerate(self.active):
                self._rng[self.members.index(s)] = self.rng[m]
            self._stack()
            for m, s in enumerate(self.active):
                s.alphas = MemberAlphas(self, m)

    def _finish(self, s: Any, t0: float) -> dict[str, Any]:
        """A member's end of search, exactly as a separate run ends (:meth:`Search._finish`)."""
        return s._finish(t0, self._writers[id(s)])

    def _step_diagnostics(self, start: bool = False) -> None:
        """The active members' step records where due (``diagnostics.every_steps``), each exactly as
        its separate run records it (:meth:`Search._step_diagnostics`): from its own state, in its
        own RNG streams. Only on recording steps is the stack scattered into the members."""
        due = [m for m, s in enumerate(self.active) if s._step_diagnostics_due(start)]
        if not due:
            return
        self._scatter()
        with self._real_alphas():
            for m in due:
                with self.member(m) as s:
                    s._step_diagnostics(start)

    def _checkpoint(self, due: list[int]) -> None:
        """Checkpoint the active members ``due`` (their ``output.checkpoint_every_steps``), never a
        non-finite state (as :meth:`Search._run`)."""
        self._scatter()
        with self._real_alphas():
            for m in due:
                s = self.active[m]
                s._check_finite()
                w = self._writers[id(s)]
                if w is not None:
                    with self.member(m):  # the checkpoint holds the member's own RNG streams
                        w.checkpoint()

    def one_step(self, epoch: int, step: int) -> None:
        """One fused step of every active member (:meth:`Search._one_step` for all of them): the
        step hooks and the batches eagerly, the step itself (:meth:`_step`) through the step graph
        when graphed."""
        graph = self._step_graph
        watch = graph is not None and not self._step_hooks_checked  # as Search: the first step's hooks
        syncs = self._fire_step_hooks("diffnas_step_start", watch, epoch=epoch, step=step)
        cl = self.recipe.trainer.channels_last
        train = _stack_batches([s.train_loader.batch(epoch, step) for s in self.active], cl)
        valid = (_stack_batches([s.valid_loader.batch(epoch, step) for s in self.active], cl)
                 if self.active[0].valid_loader is not None else None)
        warm = self.active[0].in_warmup  # the warm-up's end is the same for every member (population_refusals)
        if graph is not None and self._warm_phase is not None and self._warm_phase != warm:
            graph.reset(eager_steps=1)  # the warm-up ended inside an epoch: the captured step is the warm-up's
        self._warm_phase = warm
        if graph is not None:
            metrics = graph(train, valid)
            if self.pm.hook.diffnas_step_end.get_hookimpls():  # a replay overwrites its output buffers
                metrics = {k: v.detach().clone() for k, v in metrics.items()}
        else:
            metrics = self._step(train, valid)
        syncs += self._fire_step_hooks("diffnas_step_end", watch, epoch=epoch, step=step,
                                       metrics=lambda m: {k: v[m] for k, v in metrics.items()})
        if watch:
            from .graphs import refuse_step_hook_syncs

            self._step_hooks_checked = True
            refuse_step_hook_syncs(syncs, self.members[0].resolved.source)

    def _fire_step_hooks(self, hook: str, watch: bool, **kwargs: Any) -> list[str]:
        """Fire ``hook`` for every active member (a callable ``metrics`` is given the member's index);
        with ``watch``, under the host-sync detector: return what it found."""
        from .graphs import fire_step_hooks_watched

        def fire() -> None:
            for m in range(self.K):
                self.fire(m, hook, **{k: (v(m) if k == "metrics" else v) for k, v in kwargs.items()})

        return fire_step_hooks_watched(fire, watch)

    def _step(self, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor] | None
              ) -> dict[str, torch.Tensor]:
        """The update rule's step for every member and :meth:`Search._step`'s bookkeeping, all on the
        device and in place: what a graphed population captures."""
        self._step_losses = []
        try:
            if self.active[0].in_warmup:
                metrics = self.update_rule.warmup_step(self, train, valid)
            else:
                metrics = self.update_rule.step(self, train, valid)
            metrics = self._member_metrics(metrics)
        finally:
            self._step_losses = None
        # Search._step's bookkeeping, once for all members: the first non-finite step, the step
        # counter, the epoch's metric sums (each member's row is its own; scattered at epoch ends)
        finite = torch.stack([torch.isfinite(v.detach().float()) for k, v in metrics.items() if k.endswith("loss")]
                             + [torch.isfinite(a.detach()).reshape(self.K, -1).all(1) for a in self.alphas.values()]).all(0)
        bad = (~finite) & (self._nonfinite_step < 0)
        self._nonfinite_step.copy_(torch.where(bad, self._global_step_t, self._nonfinite_step))
        self._global_step_t.add_(1)
        sums = self._epoch_sums
        for k, v in list(metrics.items()) + [("steps", torch.ones(self.K, device=self.device))]:
            v = v.detach().float()
            if k in sums:
                sums[k].add_(v)
            else:  # a new key: an eager step's (see StepGraph.reset)
                sums[k] = v.clone()
        return metrics


def _stack_batches(batches: Sequence[tuple[torch.Tensor, torch.Tensor]], channels_last: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' batches as ``([K, B, C, H, W], [K, B])``. Images are laid out in memory with the
    member axis just outside the channels (``[B, K, C, H, W]``; with ``channels_last``
    ``[B, H, W, K, C]``, each member's batch channels-last): vmap's grouped convolution and batch
    norm merge the member axis into the channels, and with this layout they read the stack as a view
    (the default ``[K, B, ...]`` stack is copied by the first convolution, forward and backward)."""
    xs, ys = [b[0] for b in batches], torch.stack([b[1] for b in batches])
    if xs[0].dim() != 4:
        return torch.stack(xs), ys
    if channels_last:
        return torch.stack([x.permute(0, 2, 3, 1) for x in xs], dim=3).permute(3, 0, 4, 1, 2), ys
    return torch.stack(xs, dim=1).transpose(0, 1), ys


def rng_state(device: torch.device) -> dict:
    """The global RNG streams a member's components draw from (torch CPU, CUDA on ``device``, Python)."""
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def build_population(items: Sequence[tuple[Any, Any, dict | None]], pm: Any, catalogue: Any,
                     data: Any = None, notes: Sequence[dict | None] | None = None,
                     step_graph: bool | None = None) -> Population:
    """Build the members one by one and a :class:`Population` of them.

    :param items: ``(resolved recipe, run directory or None, checkpoint dict or None)`` per member; a
        checkpoint resumes the member (a population resumes from the checkpoints its members wrote).
    :param data: preloaded data shared by every member (tests); ``None``: each member loads its own,
        except that members with equal data settings share one bundle when the dataset's data do not
        depend on the seed (``Dataset.depends_on_seed = False``, as CIFAR-10).
    :param notes: per member, a note for its next ``metrics.jsonl`` record (a resume with ``--force``).
    :param step_graph: as :class:`Population`'s.
    """
    from .engine import Search
    from .outputs import CHECKPOINT, restore_search

    members = []
    loaded: dict[str, Any] = {}  # data bundles by their settings, for datasets whose data ignore the seed
    notes = list(notes) if notes is not None else [None] * len(items)
    for (resolved, out_dir, ckpt), note in zip(items, notes, strict=True):
        bundle = data
        r = resolved.recipe
        if bundle is None and not getattr(catalogue.get("dataset", r.data.dataset).cls, "depends_on_seed", True):
            key = repr(r.data)
            if key not in loaded:
                try:
                    loaded[key] = catalogue.build("dataset", r.data.dataset).load(r.data, r.trainer.seed)
                except RecipeError as exc:  # as Search names the recipe file for a dataset's params
                    if exc.source is None and resolved.source is not None:
                        raise RecipeError(exc.problems, resolved.source) from None
                    raise
            bundle = loaded[key]
        s = Search(resolved, pm, catalogue, out_dir, data=bundle)
        if ckpt is not None:  # the guards of a resume: a damaged or foreign checkpoint is refused by name
            where = Path(out_dir) / CHECKPOINT if out_dir is not None else "<checkpoint>"
            restore_search(s, ckpt, where, resolved.source or "<recipe>", note)
            if out_dir is not None:
                s.last_checkpoint = {"path": str(Path(out_dir) / CHECKPOINT), "epoch": s.state.epoch, "step": s.state.step}
        # the member's RNG streams as its separate run has them when it starts (seeded, or restored)
        s._population_rng = rng_state(s.device)
        members.append(s)
    return Population(members, step_graph=step_graph)


def calibrate_population(resolved: Sequence[Any], pm: Any, catalogue: Any, rounds: int = 3) -> dict[str, Any]:
    """Whether running these recipes as one population is faster here than running them one by one,
    measured in this process (what a study's ``population: {enabled: auto}`` decides by).

    The population of all K recipes and the first recipe as a plain search (its fast paths as its
    recipe sets them) are built without run directories; each takes one untimed step (optimiser
    state, allocator, kernel choice; four with ``trainer.cuda_graphs``, so that both step graphs
    are captured before the timing), then ``rounds`` interleaved rounds time one step of each. The K
    separate runs are estimated as K times the plain step (the members differ only in numeric
    hyperparameters and seeds, which do not change a step's cost). Nothing is written and the built
    searches are discarded. A population that cannot be formed raises :class:`RecipeError` as
    :class:`Population` does.

    :returns: ``{"K", "rounds", "population_step_s", "separate_step_s", "separate_estimate_s",
        "ratio" (population step over K plain steps), "fused" (ratio < 1), "calibration_s"}``; step
        times are medians over the rounds."""
    import statistics
    import time

    from .engine import Search
    from .graphs import WARMUP_STEPS

    t_start = time.perf_counter()
    resolved = list(resolved)
    pop = build_population([(r, None, None) for r in resolved], pm, catalogue)
    single = Search(resolved[0], pm, catalogue, None)
    device = single.device

    def timed(fn: Any) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    single._register_components()
    pop.open(write=False)
    try:
        with default_dtype(single.recipe.trainer.dtype):
            single.prepare_steps()
            single._set_learning_rates(0)
            pop.start_epoch(0)
            spe = single.steps_per_epoch
            one = lambda i: single._one_step(0, i % spe)  # noqa: E731
            fused = lambda i: pop.one_step(0, i % spe)  # noqa: E731
            # untimed: optimiser state, allocator, kernel choice; with CUDA graphs also the
            # eager warm-up steps and the capture (the step after them)
            untimed = WARMUP_STEPS + 1 if single.recipe.trainer.cuda_graphs else 1
            for i in range(untimed):
                one(i)
                fused(i)
            t_one, t_pop = [], []
            for i in range(untimed, untimed + rounds):
                t_one.append(timed(lambda: one(i)))
                t_pop.append(timed(lambda: fused(i)))
    finally:
        pop.close()
        single._unregister_components()
    K = len(resolved)
    sep, step = statistics.median(t_one), statistics.median(t_pop)
    return {"K": K, "rounds": rounds, "population_step_s": step, "separate_step_s": sep,
            "separate_estimate_s": K * sep, "ratio": step / (K * sep), "fused": step < K * sep,
            "calibration_s": time.perf_counter() - t_start}
