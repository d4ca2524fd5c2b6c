"""Generic per-epoch schedules for any runtime hyperparameter (``target``).

``linear`` covers GDAS's τ annealing (10 → 0.1, reached at the last epoch: AutoDL's
``tau_max − (tau_max − tau_min)·e/(E − 1)``) and DARTS-'s decaying auxiliary-skip coefficient
(β₀(E − e)/E, reaching 0 one epoch after the last: ``end_at: after_last``). ``cosine`` and
``exponential`` follow the same conventions; ``step`` holds piecewise-constant values.
"""

from __future__ import annotations

import math

import attrs

from ...core.config import help_field, non_negative, one_of
from ...core.hookspecs import hookimpl
from ...core.protocols import Schedule


def _progress(epoch: int, epochs: int, start_epoch: int, end_at: str) -> float:
    span = (epochs - 1 if end_at == "last" else epochs) - start_epoch
    if span <= 0:
        return 1.0
    return min(max((epoch - start_epoch) / span, 0.0), 1.0)


@attrs.frozen
class _RampConfig:
    target: str = help_field(..., "hyperparameter to drive, e.g. relaxation.tau")
    start: float = help_field(..., "value at start_epoch")
    end: float = help_field(..., "value at the end")
    start_epoch: int = help_field(0, "epoch where the ramp starts (value = start before)", validator=non_negative)
    end_at: str = help_field("last", "'last': end is reached at the last epoch; 'after_last': one epoch later",
                             validator=one_of("last", "after_last"))


class _Ramp(Schedule):
    """A per-epoch ramp from ``start`` to ``end``: :meth:`at` maps progress t ∈ [0, 1] to the value."""

    Config = _RampConfig

    def at(self, t: float) -> float:
        raise NotImplementedError

    def value_at(self, epoch: int, epochs: int) -> float:
        return self.at(_progress(epoch, epochs, self.config.start_epoch, self.config.end_at))

    def value(self, search, epoch, step):
        return self.value_at(epoch, search.epochs)

    def planned_values(self, epochs):
        return [self.value_at(e, epochs) for e in range(epochs)]


class Linear(_Ramp):
    """Linear ramp from ``start`` to ``end`` over the epochs (GDAS τ, DARTS- β)."""

    def at(self, t):
        return self.config.start + (self.config.end - self.config.start) * t


class Cosine(_Ramp):
    """Cosine ramp from ``start`` to ``end`` over the epochs."""

    def at(self, t):
        return self.config.end + (self.config.start - self.config.end) * (1 + math.cos(math.pi * t)) / 2


class Exponential(_Ramp):
    """Geometric ramp from ``start`` to ``end`` (both > 0) over the epochs."""

    def at(self, t):
        return self.config.start * (self.config.end / self.config.start) ** t


class Piecewise(Schedule):
    """Piecewise-constant values: ``values[i]`` from epoch ``milestones[i]`` on."""

    @attrs.frozen
    class Config:
        target: str = help_field(..., "hyperparameter to drive")
        milestones: tuple[int, ...] = help_field(..., "first epoch of each value (ascending, first is 0)", converter=tuple)
        values: tuple[float, ...] = help_field(..., "one value per milestone", converter=tuple)

        def __attrs_post_init__(self):
            if len(self.milestones) != len(self.values) or not self.milestones:
                raise ValueError("'milestones' and 'values' must be non-empty and of equal length")
            if list(self.milestones) != sorted(self.milestones):
                raise ValueError(f"'milestones' must ascend, got {list(self.milestones)}")

    def value(self, search, epoch, step):
        v = None
        for m, x in zip(self.config.milestones, self.config.values):
            if epoch >= m:
                v = x
        return v

    def planned_values(self, epochs):
        return [x for m, x in zip(self.config.milestones, self.config.values) if m < epochs]


@hookimpl
def diffnas_register_schedules(register):
    register("linear", Linear)
    register("cosine", Cosine)
    register("exponential", Exponential)
    register("piecewise", Piecewise)
