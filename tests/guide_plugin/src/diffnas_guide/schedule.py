"""The ``step_decay`` schedule: value = start · gamma^⌊epoch / every⌋."""

from __future__ import annotations

import attrs

from diffnas.core.config import help_field, in_range, positive
from diffnas.core.protocols import Schedule


class StepDecay(Schedule):
    """Multiplies the target by ``gamma`` every ``every`` epochs, starting from ``start``."""

    @attrs.frozen
    class Config:
        target: str = help_field(..., "hyperparameter to drive, e.g. relaxation.tau")
        start: float = help_field(..., "value at epoch 0")
        gamma: float = help_field(0.5, "factor applied every `every` epochs", validator=in_range(0.0, 1.0, lo_open=True))
        every: int = help_field(1, "epochs between two decays", validator=positive)

    def value(self, search, epoch, step):
        return self.config.start * self.config.gamma ** (epoch // self.config.every)

    def planned_values(self, epochs):
        return [self.value(None, e, 0) for e in range(epochs)]
