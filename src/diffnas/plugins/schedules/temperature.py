"""Temperature schedules of Zhang & Ding's small-temperature DARTS family (METHODS.md §3.2–3.4, §9).

All three drive ``relaxation.tau`` (``target``) of a temperature relaxation (``softmax`` or
``sparse_noisy_softmax``) and share the "exponential" map τ_k = m / ln(1 + s·k), m ≈ 1e-3/√(2π)
(the code's 0.000399, the mean of max(0, α₀) for α₀ ~ 1e-3·N(0, 1) [I]), so that exp(m/τ_k) = 1 + s·k.

* ``pcd_tau``: the cyclic-then-monotone PCD schedule (``chaoji90/PCDEDD:
  AutoDL-Projects_pcd/exps/algos/DARTS-V1-10.py``);
* ``edd_tau``: the entropy-adaptive EDD schedule (``AutoDL-Projects_edd/exps/algos/DARTS-V1-10.py``,
  ``PCDEDD-DARTS/train_search_pl.py``);
* ``mixed_sparsity_tau``: SP-DARTS's per-step mixture of τ_s and 10·τ_s (``chaoji90/SP-DARTS:
  SP-DARTS/train_search_mf.py``).

Only the authors' code was read (the papers' full texts were not available, METHODS.md §8): the
defaults are the code's, for the NB201 CIFAR-10 scripts unless noted.
"""

from __future__ import annotations

import math
from typing import Optional

import attrs
import torch

from ...core.cells import cell_alphas
from ...core.config import help_field, in_range, non_negative, one_of, positive
from ...core.protocols import Schedule
from ...core.hookspecs import hookimpl

PCD_M = 0.000399  # the code's m (≈ 1e-3/√(2π) = 0.000398942)


def exp_tau(m: float, s: float, k: float) -> float:
    """τ_k = m / ln(1 + s·k): the "exponential" temperature map (METHODS.md §3.2)."""
    return m / math.log1p(s * k)


class PCDTau(Schedule):
    """PCD: τ = 1 during warm-up, then a cycle [1, τ_1…τ_h, τ_{h−1}…τ_1], then τ_{(e mod n)+1}.

    For epoch e ≥ ``warmup``: while e < ``monotone_from``, τ = L[e mod n] with the cyclic list
    L = [1, τ_1, …, τ_{n/2}, τ_{n/2−1}, …, τ_1] (n = ``cycle``, even); from ``monotone_from`` on,
    τ = τ_{(e mod n)+1}, decreasing within each block of n epochs. e is the absolute epoch index,
    as in the code. Defaults: s = 0.11, n = 10, monotone from epoch 40, warm-up 5 (NB201 CIFAR-10;
    10 for CIFAR-100, 0 in the DARTS space).
    """

    @attrs.frozen
    class Config:
        target: str = help_field("relaxation.tau", "hyperparameter to drive")
        m: float = help_field(PCD_M, "scale m of τ_k = m/ln(1 + s·k)", validator=positive)
        s: float = help_field(0.11, "growth s of τ_k = m/ln(1 + s·k)", validator=positive)
        cycle: int = help_field(10, "cycle length n in epochs (even)", validator=positive)
        warmup: int = help_field(5, "epochs at τ = warmup_tau before the schedule starts", validator=non_negative)
        warmup_tau: float = help_field(1.0, "τ during warm-up", validator=positive)
        monotone_from: int = help_field(40, "first epoch of the monotone phase τ_{(e mod n)+1}", validator=non_negative)

        def __attrs_post_init__(self):
            if self.cycle % 2:
                raise ValueError(f"'cycle' must be even, got {self.cycle}")

    def cyclic_list(self) -> list[float]:
        """[1, τ_1…τ_{n/2}, τ_{n/2−1}…τ_1] (length n)."""
        c = self.config
        up = [1.0] + [exp_tau(c.m, c.s, k) for k in range(1, c.cycle // 2 + 1)]
        return up + up[::-1][1:-1]

    def value(self, search, epoch, step):
        c = self.config
        if epoch < c.warmup:
            return c.warmup_tau
        if epoch < c.monotone_from:
            return self.cyclic_list()[epoch % c.cycle]
        return exp_tau(c.m, c.s, epoch % c.cycle + 1)

    def planned_values(self, epochs):
        return [self.value(None, e, 0) for e in range(epochs)]  # a function of the epoch alone


class EDDTau(Schedule):
    """EDD: entropy-adaptive τ = m / ln(1 + s·k), s tracking the entropy of softmax(α/τ).

    At epoch ``warmup`` and then every ``interval`` epochs (every epoch from ``late_from`` on):
    H = entropy of softmax(α_cell/τ_prev) (``sum`` over edges in NB201, ``mean`` in the DARTS space),
    s ← r·c·H + (1 − r)·s with c = ``c[0]`` before ``late_from`` and ``c[1]`` after, then
    τ = m / ln(1 + s·k) and k ← k + 1 (s₀ = 0, k₀ = 1). τ = ``warmup_tau`` until the first update.
    Defaults: NB201 (c = 0.04 / 0.08, sum, warm-up 10: ``AutoDL-Projects_edd/exps/algos/DARTS-V1-10.py``
    and ``-100.py`` both set ``warmup=10``; METHODS.md §3.3); the DARTS-space code uses
    c = 0.06 / 0.12, mean and warm-up 5. The state (s, k, τ, last epoch) is checkpointed, so a resumed epoch
    does not update twice. Simplification: the code switches to every-epoch updates at its first
    update at or after epoch 40; here every epoch ≥ ``late_from`` updates.
    """

    @attrs.frozen
    class Config:
        target: str = help_field("relaxation.tau", "hyperparameter to drive")
        m: float = help_field(PCD_M, "scale m of τ = m/ln(1 + s·k)", validator=positive)
        c: tuple[float, float] = help_field((0.04, 0.08), "entropy coefficient c before / from late_from",
                                            converter=tuple)
        r: float = help_field(0.5, "moving-average rate r of s", validator=in_range(0.0, 1.0))
        warmup: int = help_field(10, "first update epoch (τ = warmup_tau before; NB201 code 10, DARTS-space code 5)",
                                 validator=non_negative)
        warmup_tau: float = help_field(1.0, "τ before the first update", validator=positive)
        interval: int = help_field(5, "epochs between updates before late_from", validator=positive)
        late_from: int = help_field(40, "from this epoch on: update every epoch with c[1]", validator=non_negative)
        reduce: str = help_field("sum", "entropy over edges: 'sum' (NB201 code) or 'mean' (DARTS-space code)",
                                 validator=one_of("sum", "mean"))
        cell: Optional[str] = help_field(None, "cell type whose α is measured (default: the first, e.g. normal)")

        def __attrs_post_init__(self):
            if len(self.c) != 2 or min(self.c) <= 0:
                raise ValueError(f"'c' must be two positive numbers, got {list(self.c)}")

    def __init__(self, config=None):
        super().__init__(config)
        self.s, self.k, self.tau, self.last_epoch = 0.0, 1, self.config.warmup_tau, -1

    def is_update_epoch(self, epoch: int) -> bool:
        c = self.config
        return epoch == c.warmup or (epoch > c.warmup and (epoch % c.interval == 0 or epoch >= c.late_from))

    def entropy(self, search) -> float:
        """Entropy of softmax(α/τ_prev) of the measured cell (one host synchronisation per update)."""
        name = self.config.cell or next(iter(cell_alphas(search)))
        alpha = search.alphas[name].detach().double()
        p = torch.softmax(alpha / self.tau, dim=-1)
        h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
        return float(h.sum() if self.config.reduce == "sum" else h.mean())

    def value(self, search, epoch, step):
        c = self.config
        if epoch != self.last_epoch and self.is_update_epoch(epoch):
            coef = c.c[0] if epoch < c.late_from else c.c[1]
            self.s = c.r * coef * self.entropy(search) + (1.0 - c.r) * self.s
            self.tau = exp_tau(c.m, self.s, self.k)
            self.k += 1
        self.last_epoch = epoch
        return self.tau

    def state_dict(self):
        return {"hparams": dict(self.hparams), "s": self.s, "k": self.k, "tau": self.tau, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.s = float(state.get("s", self.s))
        self.k = int(state.get("k", self.k))
        self.tau = float(state.get("tau", self.tau))
        self.last_epoch = int(state.get("last_epoch", self.last_epoch))


class MixedSparsityTau(Schedule):
    """SP-DARTS mixed sparsity: each step uses τ_s with probability C_e, else ``ratio``·τ_s.

    Warm-up epochs (e < ``warmup``) run at ``warmup_tau`` = 10. From epoch e ≥ warm-up,
    C_e = (e − warmup + 1)/(E − warmup), reaching 1 at the last epoch (the code increments C before
    the epoch). At each epoch's first step one Bernoulli(C_e) draw per step is made from a seeded
    generator (``seed``, default trainer.seed); the draws and the generator state are checkpointed.
    The same τ_t serves the α step and the w step of that iteration. Defaults: DARTS space
    (τ_s = 1e-3, ratio 10, warm-up 1); NB201 CIFAR-10 code: τ_s = 1.1e-3, ratio 11.
    ASSUMPTION (METHODS.md §3.4): the NB201 scripts' warm-up reads τ before setting it; we follow the
    DARTS-space/LHD behaviour (τ = 10). The CIFAR-100 switch of τ_s at epoch 45 is not modelled.
    """

    per_step = True

    @attrs.frozen
    class Config:
        target: str = help_field("relaxation.tau", "hyperparameter to drive")
        tau_s: float = help_field(1e-3, "sparse temperature τ_s", validator=positive)
        ratio: float = help_field(10.0, "the other temperature is ratio·τ_s", validator=positive)
        warmup: int = help_field(1, "warm-up epochs", validator=non_negative)
        warmup_tau: float = help_field(10.0, "τ during warm-up", validator=positive)
        seed: Optional[int] = help_field(None, "seed of the Bernoulli draws (default: trainer.seed)",
                                         validator=non_negative)

    def __init__(self, config=None):
        super().__init__(config)
        self.generator: torch.Generator | None = None
        self.draw_epoch = -1
        self.draws: list[bool] = []

    def c_e(self, epoch: int, epochs: int) -> float:
        """Probability of τ_s at ``epoch`` (0 during warm-up)."""
        w = self.config.warmup
        if epoch < w:
            return 0.0
        return min(1.0, (epoch - w + 1) / max(epochs - w, 1))

    def _gen(self, search) -> torch.Generator:
        if self.generator is None:
            seed = self.config.seed if self.config.seed is not None else search.recipe.trainer.seed
            self.generator = torch.Generator().manual_seed(int(seed))
        return self.generator

    def value(self, search, epoch, step):
        c = self.config
        if epoch < c.warmup:
            return c.warmup_tau
        if epoch != self.draw_epoch:
            n = search.steps_per_epoch
            self.draws = (torch.rand(n, generator=self._gen(search)) < self.c_e(epoch, search.epochs)).tolist()
            self.draw_epoch = epoch
        sparse = self.draws[step] if step < len(self.draws) else False
        return c.tau_s if sparse else c.ratio * c.tau_s

    def planned_values(self, epochs):
        c = self.config  # which of the two temperatures a step gets is drawn; both are known
        return ([c.warmup_tau] if c.warmup > 0 else []) + [c.tau_s, c.ratio * c.tau_s]

    def state_dict(self):
        return {"hparams": dict(self.hparams), "draw_epoch": self.draw_epoch, "draws": list(self.draws),
                "generator": self.generator.get_state() if self.generator is not None else None}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.draw_epoch = int(state.get("draw_epoch", -1))
        self.draws = [bool(x) for x in state.get("draws", [])]
        g = state.get("generator")
        if g is not None:
            self.generator = torch.Generator()
            self.generator.set_state(g)


@hookimpl
def diffnas_register_schedules(register):
    register("pcd_tau", PCDTau)
    register("edd_tau", EDDTau)
    register("mixed_sparsity_tau", MixedSparsityTau)
