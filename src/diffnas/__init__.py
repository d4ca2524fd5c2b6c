"""diffnas: differentiable neural architecture search (the DARTS family), composed from plugins.

Write a plugin with ``hookimpl`` and the component base classes in ``diffnas.core.protocols``;
see the README for the recipe format, ``diffnas.core.hookspecs`` for the hooks and ``diffnas.api``
for the Python API. Importing the package is cheap (no torch): ``Genotype`` and ``CellGenotype``
are loaded on first use.
"""

from typing import TYPE_CHECKING, Any

from .core.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["CellGenotype", "Genotype", "hookimpl", "hookspec", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .core.genotype import CellGenotype, Genotype


def __getattr__(name: str) -> Any:
    if name in ("CellGenotype", "Genotype"):
        from .core import genotype

        return getattr(genotype, name)
    raise AttributeError(f"module 'diffnas' has no attribute {name!r}")
