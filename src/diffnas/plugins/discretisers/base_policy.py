"""Helpers for discretisers that build on another discretiser (the *base* policy).

``degeneracy_argmax`` post-processes its base's genotype and ``selective_stop`` keeps a history of its
base's genotypes. The base is named in the recipe (``base: argmax_per_edge``, ``base_params: {...}``)
and built lazily from the search's catalogue, so any registered policy (``argmax_per_edge``,
``top_k_edges`` ...) can be used without duplicating it. Bases must be stateless: a policy that keeps
state through lifecycle hooks would not receive them, so such a base is refused.
"""

from __future__ import annotations

from typing import Any

from ...core.config import structure
from ...core.errors import RecipeError
from ...core.protocols import Discretiser


def base_config(catalogue: Any, name: str, params: dict, owner: str) -> tuple[Any, list[tuple[str, str]]]:
    """``(config, [])`` of the base discretiser ``name`` with ``params``, or ``(None, problems)``:
    unknown name (with a did-you-mean), ``params`` that do not fit the base's Config, or a base that
    keeps state through hooks. What :meth:`WrappingDiscretiser.check_composition` reports."""
    entry = catalogue.entries["discretiser"].get(name)
    if entry is None:
        return None, [(f"{owner}: {catalogue.unknown_message('discretiser', name)}", "recipe.discretiser.params.base")]
    hooks = sorted(a for a in dir(entry.cls) if a.startswith("diffnas_"))
    if hooks or name == owner:
        why = "it is the wrapping policy itself" if name == owner else f"it keeps state through hooks ({', '.join(hooks)})"
        return None, [(f"{owner}: discretiser {name!r} cannot be used as a base: {why}", "recipe.discretiser.params.base")]
    return structure(dict(params), entry.cls.Config, "recipe.discretiser.params.base_params")


def build_base(search: Any, name: str, params: dict, owner: str) -> Discretiser:
    """Build the base discretiser ``name`` with ``params`` from ``search.catalogue``.

    :raises RecipeError: what :func:`base_config` finds (the search refuses it before it starts).
    """
    cfg, problems = base_config(search.catalogue, name, params, owner)
    if problems:
        raise RecipeError(problems, search.source)
    return search.catalogue.build("discretiser", name, cfg)


class WrappingDiscretiser(Discretiser):
    """A discretiser whose Config has ``base`` and ``base_params``; :meth:`base` builds it once."""

    _base: Discretiser | None = None

    def check_composition(self, composition):
        """The base policy exists, may be a base and takes ``base_params``."""
        return base_config(composition.catalogue, self.config.base, self.config.base_params, self.registered_name)[1]

    def base(self, search: Any) -> Discretiser:
        if self._base is None:
            self._base = build_base(search, self.config.base, self.config.base_params, self.registered_name)
        return self._base

    registered_name = ""
