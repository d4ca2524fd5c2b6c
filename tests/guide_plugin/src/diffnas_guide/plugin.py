"""The module the ``diffnas.plugins`` entry point names: it registers every component; the scorer
hook it imports is registered with it."""

from __future__ import annotations

from diffnas import hookimpl

from .dataset import Stripes
from .discretiser import StrongestOp
from .executor import Isolated
from .logger import CsvLog
from .regularisers import EntropyPenalty, EntropyStop
from .relaxation import SoftplusSimplex
from .schedule import StepDecay
from .scorer import diffnas_score_genotype  # noqa: F401 - a hook: registered with this module
from .space import ChainSpace
from .update_rule import WeightsFirst


@hookimpl
def diffnas_register_search_spaces(register):
    register("chain", ChainSpace)


@hookimpl
def diffnas_register_relaxations(register):
    register("softplus_simplex", SoftplusSimplex)


@hookimpl
def diffnas_register_update_rules(register):
    register("weights_first", WeightsFirst)


@hookimpl
def diffnas_register_regularisers(register):
    register("entropy_penalty", EntropyPenalty)
    register("entropy_stop", EntropyStop)


@hookimpl
def diffnas_register_discretisers(register):
    register("strongest_op", StrongestOp)


@hookimpl
def diffnas_register_schedules(register):
    register("step_decay", StepDecay)


@hookimpl
def diffnas_register_datasets(register):
    register("stripes", Stripes)


@hookimpl
def diffnas_register_loggers(register):
    register("csv_log", CsvLog)


@hookimpl
def diffnas_register_executors(register):
    register("isolated", Isolated)
