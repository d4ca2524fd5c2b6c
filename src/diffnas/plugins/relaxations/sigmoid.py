"""Sigmoid relaxation: independent, non-competing op gates σ(α) (Single-DARTS, Hou, Jin & Chen,
ICCVW 2021, §3; also the relaxation of Fair-DARTS, Chu et al., ECCV 2020).

ō(x) = Σ_o σ(α_o)·o(x) on every edge (METHODS.md §2). Two initialisations:

* default: DARTS's α = init_std·N(0, 1) (init_std = 1e-3), so every gate starts at σ ≈ 0.5;
* "Sigmoid*" (``init_prob`` set): every α = logit(init_prob), so σ(α) = init_prob exactly.
  ASSUMPTION (METHODS.md §9): the paper's value was lost in extraction; 0.1 is the suggested value
  when the option is switched on (``init_prob: 0.1``).

Discretisation reads :meth:`Sigmoid.probabilities` = σ(α) (argmax of σ(α) per edge, METHODS.md §2 [I]).
"""

from __future__ import annotations

import math
from typing import Optional

import attrs
import torch

from ...core.config import help_field, in_range, positive
from ...core.hookspecs import hookimpl
from ...core.protocols import OpWeights, Relaxation


class Sigmoid(Relaxation):
    """Independent sigmoid gates σ(α) per op (Single-DARTS ICCVW 2021 / Fair-DARTS ECCV 2020)."""

    @attrs.frozen
    class Config:
        init_std: float = help_field(1e-3, "α is initialised as init_std·N(0, 1) (DARTS) unless init_prob is set",
                                     validator=positive, schedulable=False)
        init_prob: Optional[float] = help_field(
            None, "'Sigmoid*': set every α so that σ(α) = init_prob (ASSUMPTION: 0.1 when used; the paper's "
                  "value was lost)", validator=in_range(0.0, 1.0, lo_open=True, hi_open=True), schedulable=False)

    def init_alpha(self, num_edges, num_ops, generator):
        if self.config.init_prob is not None:
            p = self.config.init_prob
            return torch.full((num_edges, num_ops), math.log(p / (1.0 - p)))
        return self.config.init_std * torch.randn(num_edges, num_ops, generator=generator)

    def op_weights(self, alpha, search):
        return OpWeights(torch.sigmoid(alpha))

    def probabilities(self, alpha):
        return torch.sigmoid(alpha)


@hookimpl
def diffnas_register_relaxations(register):
    register("sigmoid", Sigmoid)
