"""diffnas: differentiable neural architecture search (the DARTS family), composed from plugins.

Write a plugin with :data:`hookimpl` and the component base classes in :mod:`diffnas.core.protocols`;
see the README for the recipe format and the hook reference in :mod:`diffnas.core.hookspecs`.
"""

from .core.genotype import CellGenotype, Genotype
from .core.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["CellGenotype", "Genotype", "hookimpl", "hookspec", "__version__"]
