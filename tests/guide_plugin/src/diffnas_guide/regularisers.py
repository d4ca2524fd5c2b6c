"""Two regularisers: a loss term and a stopping rule."""

from __future__ import annotations

import attrs
import torch

from diffnas.core.cells import cell_alphas
from diffnas.core.config import help_field, non_negative, positive
from diffnas.core.hookspecs import hookimpl
from diffnas.core.protocols import Regulariser


def mean_entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean over edges of the entropy of each edge's op weights (rows sum to 1)."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean()


class EntropyPenalty(Regulariser):
    """Adds weight · (mean op-weight entropy) to the α loss: pushes each edge towards one op."""

    @attrs.frozen
    class Config:
        weight: float = help_field(0.1, "coefficient of the entropy term (schedulable)", validator=non_negative)

    phases = ("arch",)

    def loss(self, search, phase):
        terms = [mean_entropy(search.relaxation.cell_probabilities(name, alpha))
                 for name, alpha in cell_alphas(search).items()]
        return self.hparams["weight"] * torch.stack(terms).sum()


class EntropyStop(Regulariser):
    """Stops the search once the mean α entropy stays below ``threshold`` for ``patience`` epochs."""

    @attrs.frozen
    class Config:
        threshold: float = help_field(1.0, "entropy (nats) below which an epoch counts", validator=positive)
        patience: int = help_field(2, "consecutive epochs below the threshold before stopping", validator=positive)

    phases = ()  # no loss term: it only watches

    def __init__(self, config=None):
        super().__init__(config)
        self.below = 0

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        entropy = sum(record["entropy"].values()) / len(record["entropy"])
        self.below = self.below + 1 if entropy < self.hparams["threshold"] else 0
        record["entropy_stop"] = {"below": self.below}
        if self.below >= self.config.patience:
            search.request_stop(f"mean α entropy {entropy:.3f} < {self.hparams['threshold']} "
                                f"for {self.below} epochs")

    def state_dict(self):
        return {**super().state_dict(), "below": self.below}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.below = int(state.get("below", 0))
