"""DrNAS's KL regulariser (Chen et al., ICLR 2021; METHODS.md §5).

L_α += scale·Σ_edges KL(Dir(elu(β) + 1) ‖ Dir(1)), summed over every cell type's β, added to the α
step's loss only (the term depends on β alone), as ``xiangning-chen/DrNAS: 201-space/model_search.py``
``_get_kl_reg`` (``reg_type: kl``, ``reg_scale`` 1e-3). Pair it with the ``dirichlet`` relaxation.

DrNAS regularises β one way or the other, never both (METHODS.md, "Corrections"): ``reg_type: l2``,
the code's default, is the α optimiser's weight decay (1e-3) and no loss term; ``reg_type: kl`` is
this term with the α weight decay at 0. A recipe that names this regulariser with a non-zero
``trainer.arch_optimizer.weight_decay`` is refused (a RecipeError naming that key), rather than
silently running a mix of the two that the paper never ran.
"""

from __future__ import annotations

import attrs
import torch

from ...core.config import help_field, positive
from ...core.cells import cell_alphas
from ...core.hookspecs import hookimpl
from ...core.protocols import Regulariser
from ..relaxations.dirichlet import concentration


class DirichletKL(Regulariser):
    """scale·KL(Dir(elu(β)+1) ‖ Dir(1)) on the α step (DrNAS ``reg_type: kl``, ICLR 2021)."""

    @attrs.frozen
    class Config:
        scale: float = help_field(1e-3, "regulariser scale (DrNAS reg_scale)", validator=positive)

    phases = ("arch",)

    def check_composition(self, composition):
        """DrNAS's KL runs without α weight decay (the two are its alternatives, never combined)."""
        wd = composition.recipe.trainer.arch_optimizer.weight_decay
        if wd:
            return [(f"dirichlet_kl is DrNAS's reg_type 'kl', which runs with no α weight decay; got {wd!r} "
                     "(DrNAS's L2 regularisation is that weight decay alone: drop dirichlet_kl, or set it to 0.0)",
                     "recipe.trainer.arch_optimizer.weight_decay")]
        return []

    def loss(self, search, phase):
        total = None
        for beta in cell_alphas(search).values():
            c = concentration(beta)
            # c > 0 by construction; argument validation would read the device on the host every step
            kl = torch.distributions.kl_divergence(torch.distributions.Dirichlet(c, validate_args=False),
                                                   torch.distributions.Dirichlet(torch.ones_like(c), validate_args=False)).sum()
            total = kl if total is None else total + kl
        return None if total is None else self.hparams["scale"] * total


@hookimpl
def diffnas_register_regularisers(register):
    register("dirichlet_kl", DirichletKL)
