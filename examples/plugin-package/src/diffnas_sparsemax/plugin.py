"""The plugin module named by the ``diffnas.plugins`` entry point."""

from diffnas import hookimpl

from .relaxation import Sparsemax


@hookimpl
def diffnas_register_relaxations(register):
    register("sparsemax", Sparsemax)
