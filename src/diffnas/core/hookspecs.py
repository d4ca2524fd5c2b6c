"""pluggy hook specifications of the ``diffnas`` project.

Three families, pytest style:

* **Catalogue hooks** (``diffnas_register_*``) are called once on every plugin when the plugin
  manager is built. Each receives a host-supplied ``register(name, component_class)`` callback; the
  host records which plugin registered which name and refuses a name registered twice. Component
  classes follow the protocols in :mod:`diffnas.core.protocols`; a recipe picks one by name per slot
  (a study picks its executor by name).
* **Decision hooks** (``firstresult=True``): the first non-``None`` answer wins; bundled defaults are
  ``trylast`` so installed plugins can override them.
* **Lifecycle hooks** are called on every plugin, and on every component of the running search,
  which the engine registers as plugins for the run's duration (schedules, stopping rules and loggers
  are written this way). Arguments are keyword-only and only ever added; an implementation may accept
  any subset of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Search
    from .genotype import Genotype

hookspec = pluggy.HookspecMarker("diffnas")
hookimpl = pluggy.HookimplMarker("diffnas")

Register = Callable[[str, type], None]

# --------------------------------------------------------------------------- catalogue


@hookspec
def diffnas_register_search_spaces(register: Register) -> None:
    """Register search-space classes (see :class:`~diffnas.core.protocols.SearchSpace`).

    Called once on every plugin while the catalogue is built.

    :param register: ``register(name, cls)``; ``name`` is the recipe's ``search_space.name``.
    :returns: nothing; results are ignored.
    """


@hookspec
def diffnas_register_relaxations(register: Register) -> None:
    """Register relaxation classes (α → op weights; :class:`~diffnas.core.protocols.Relaxation`).

    Called once on every plugin while the catalogue is built.

    :param register: ``register(name, cls)``; ``name`` is the recipe's ``relaxation.name``.
    """


@hookspec
def diffnas_register_update_rules(register: Register) -> None:
    """Register update-rule classes (order of weight and α steps; :class:`~diffnas.core.protocols.UpdateRule`).

    Called once on every plugin while the catalogue is built.

    :param register: ``register(name, cls)``; ``name`` is the recipe's ``update_rule.name``.
    """


@hookspec
def diffnas_register_regularisers(register: Register) -> None:
    """Register regulariser classes (loss terms, α projections, supernet modifiers, stopping rules;
    :class:`~diffnas.core.protocols.Regulariser`).

    Called once on every plugin while the catalogue is built.

    :param register: ``register(name, cls)``; names appear in the recipe's ``regularisers`` list.
    """


@hookspec
def diffnas_register_discretisers(register: Register) -> None:
    """Register discretisation policies (α → genotype; :class:`~diffnas.core.protocols.Discretiser`).

    Called once on every plugin while the catalogue is built.

    :param register: ``register(name, cls)``; ``name`` is the recipe's ``discretiser.name``.
    """


@hookspec
def diffnas_register_schedules(register: Register) -> None:
    """Register hyperparameter schedules (τ annealing, decaying coefficients;
    :class:`~diffnas.core.protocols.Schedule`).

    Called once on every plugin while the catalogue is built.

    :param register: ``register(name, cls)``; names appear in the recipe's ``schedules`` list.
    """


@hookspec
def diffnas_register_datasets(register: Register) -> None:
    """Register dataset classes (:class:`~diffnas.core.protocols.Dataset`).

    Called once on every plugin while the catalogue is built.

    :param register: ``register(name, cls)``; ``name`` is the recipe's ``data.dataset``.
    """


@hookspec
def diffnas_register_executors(register: Register) -> None:
    """Register study executors (where a study's runs run: this process, local GPUs, a Ray cluster,
    SLURM; :class:`~diffnas.core.protocols.Executor`).

    Called once on every plugin while the catalogue is built. A study file names an executor only by
    its registered name: no executor is ever imported from a file.

    :param register: ``register(name, cls)``; ``name`` is the study's ``executor.name`` (and
        ``diffnas study --executor NAME``).
    """


@hookspec
def diffnas_register_loggers(register: Register) -> None:
    """Register logger classes (TensorBoard and the like; :class:`~diffnas.core.protocols.Logger`).

    Called once on every plugin while the catalogue is built. A logger implements the lifecycle
    hooks below as methods; it runs only when a recipe lists it under ``loggers`` (or
    ``diffnas search --logger NAME`` adds it).

    :param register: ``register(name, cls)``; names appear in the recipe's ``loggers`` list.
    """


# --------------------------------------------------------------------------- decisions


@hookspec(firstresult=True)
def diffnas_resolve_device(requested: str) -> Any:
    """Turn the recipe's ``trainer.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...) into a
    :class:`torch.device`.

    Called once when a search is built. Stops at the first non-``None`` result; the bundled default
    (``trylast``) picks CUDA when ``auto`` and a GPU is present.

    :param requested: the string from the recipe.
    :returns: a ``torch.device``, or ``None`` to defer.
    """


@hookspec
def diffnas_score_genotype(genotype: "Genotype", context: dict) -> dict | None:
    """Score a discrete architecture against a benchmark or a surrogate.

    Called on every plugin at the end of each epoch and of the search, and by ``diffnas score``.
    Every non-``None`` result is kept.

    :param genotype: the architecture to score.
    :param context: extra facts, e.g. ``{"epoch": 3, "dataset": "cifar10"}``; may be empty.
    :returns: ``{scorer_name: {metric: value, ...}}`` for the genotypes this plugin knows, else ``None``.
    """


# --------------------------------------------------------------------------- lifecycle


@hookspec
def diffnas_search_start(search: "Search") -> None:
    """Called once before the first step of a search (also after a resume).

    :param search: the running search; ``search.state`` says where it starts.
    """


@hookspec
def diffnas_epoch_start(search: "Search", epoch: int) -> None:
    """Called at the start of every epoch, before its first step. Schedules set their targets here.

    :param search: the running search.
    :param epoch: 0-based epoch index.
    """


@hookspec
def diffnas_step_start(search: "Search", epoch: int, step: int) -> None:
    """Called before every step (per-step schedules, e.g. mixed-sparsity τ sampling).

    With ``trainer.cuda_graphs`` the step is a replayed graph: a plugin implementing this hook is
    refused unless it declares ``cuda_graph_safe = True`` and follows ``docs/graph_safety.md``.

    :param search: the running search.
    :param epoch: 0-based epoch index.
    :param step: 0-based step index inside the epoch.
    """


@hookspec
def diffnas_step_end(search: "Search", epoch: int, step: int, metrics: dict) -> None:
    """Called after every step.

    :param search: the running search.
    :param epoch: 0-based epoch index.
    :param step: 0-based step index inside the epoch.
    :param metrics: the step's metrics as **tensors on the device** (no host synchronisation has
        happened; call ``.item()`` only if you accept the cost). With ``trainer.cuda_graphs`` they are
        copies of the graph's output buffers (yours to keep), a plugin implementing this hook is
        refused unless it declares ``cuda_graph_safe = True``, and a host synchronisation in it is
        refused at the first step (``docs/graph_safety.md``).
    """


@hookspec
def diffnas_step_diagnostics(search: "Search", record: dict) -> None:
    """Called on the recording steps of ``diagnostics.every_steps`` (and before the run's first
    step), between two steps, after the engine filled the record's own keys
    (:mod:`diffnas.core.step_records`); add keys to ``record``. Unlike the step hooks it may
    synchronise with the device (with ``trainer.cuda_graphs`` it runs between replays) and needs no
    ``cuda_graph_safe``. It must leave the search as it found it (no optimiser state, ``.grad`` or
    buffer changed; the engine forks the random state around it), so that recording never changes
    the search.

    :param search: the running search; ``search.state.global_step`` steps are done.
    :param record: the step record (plain data, mutable); it goes into the epoch's ``metrics.jsonl``
        line under ``"steps"``, into ``steps.csv`` and to the loggers.
    """


@hookspec
def diffnas_epoch_end(search: "Search", epoch: int, record: dict) -> None:
    """Called at the end of every epoch, after evaluation and discretisation, before the record is
    written. Stopping rules set ``search.request_stop(reason)``; loggers read or extend ``record``.

    :param search: the running search.
    :param epoch: 0-based epoch index.
    :param record: the epoch's ``metrics.jsonl`` line as plain Python data (mutable).
    """


@hookspec
def diffnas_search_end(search: "Search", genotype: "Genotype", record: dict) -> None:
    """Called once after the final genotype is chosen.

    :param search: the finished search.
    :param genotype: the final discrete architecture.
    :param record: the final summary written to ``result.json`` (mutable).
    """
