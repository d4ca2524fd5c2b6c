"""Executors: the seam between a study's runs and the machines that run them.

A study hands its executor (a component registered through ``diffnas_register_executors``; see
:class:`~diffnas.core.protocols.Executor`) the **work items** of its unfinished runs. A
:class:`WorkItem` is the unit an executor schedules: the run specs that run together in one process
(one run per item today; items that fuse several runs into one process, populations, fit the same
interface), with two ways to run it:

* :meth:`WorkItem.run` in a process that has diffnas and its plugins installed (the ``sequential``
  executor, a Ray task, a SLURM job): it checks each run's state *when it starts* (a finished run is
  skipped, a run with a checkpoint resumes from it, as ``diffnas search --resume``), so a retried,
  requeued or re-submitted item continues where the last attempt stopped;
* :meth:`WorkItem.commands`, the ``diffnas search ...`` lines that do the same (the ``gpus``
  executor, ``diffnas study --print-commands``, any other launcher).

The bundled executors (:mod:`diffnas.plugins.executors`) are ``sequential``, ``gpus``, ``ray`` and
``slurm``; a third-party executor uses the same API: subclass
:class:`~diffnas.core.protocols.Executor`, register it, and call ``item.run``/``item.commands``.
The executor API, importable from this module and kept stable (``docs/plugins.md``): :class:`WorkItem`
(``key``, ``specs``, ``status``, ``commands``, ``run``), :class:`~diffnas.study.schema.RunSpec` (a run:
``id``, ``out_dir``, ``status``, ``recipe`` ...), :class:`Outcome` (what an executor returns per run) and
:class:`Context` (``out``, ``log``, ``catalogue``, ``progress``, ``name``), plus the helpers in ``__all__``.
Helpers shared by executors live here too: the study progress bar (:class:`StudyProgress`), the
shared-storage check (:func:`write_token`, :func:`check_token`) and :func:`require` for optional
dependencies.

A run directory is locked while a search writes it, so two workers never run the same run at once.
"""

from __future__ import annotations

import importlib
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import yaml

from ..core.errors import DiffnasError
from ..core.hookspecs import hookimpl
from ..core.rundir import io_errors, write_text
from .schema import RunSpec

#: the file in the study folder every remote worker must see (see :func:`write_token`)
TOKEN_FILE = ".diffnas-study-token"


@attrs.define
class Outcome:
    """What happened to one run: ``done``, ``skipped`` (already finished), ``failed`` or
    ``submitted`` (handed to a scheduler that was not waited for).

    :ivar id: the run's id (:attr:`RunSpec.id <diffnas.study.schema.RunSpec.id>`).
    :ivar status: ``done``, ``skipped``, ``failed`` or ``submitted``.
    :ivar message: one line for the study's summary (why it failed, where its log is).
    :ivar wall_s: seconds the run took here (0 when unknown).
    :ivar resumed: the run continued from a checkpoint rather than starting afresh.
    """

    id: str
    status: str
    message: str = ""
    wall_s: float = 0.0
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Context:
    """What executors may need besides the work items.

    :ivar out: the study's output folder.
    :ivar catalogue: the driver's catalogue (in-process executors reuse it; remote workers build
        their own from the plugins installed there).
    :ivar progress: ``False`` turns progress bars off (one log line per epoch instead); ``None`` or
        ``True``: bars (:mod:`diffnas.core.progress`: redrawn on a terminal, plain lines elsewhere).
    :ivar log: where one-line messages go.
    :ivar name: the study's name (job names, log prefixes).
    """

    out: Path
    catalogue: Any = None
    progress: bool | None = None
    log: Any = print
    name: str = "study"


# --------------------------------------------------------------------------- run recipes and commands


def recipe_path(spec: RunSpec, out: Path) -> Path:
    return out / "recipes" / f"{spec.id}.yaml"


def materialise(specs: Sequence[RunSpec], out: Path) -> None:
    """Write each run's recipe (every override applied) to ``OUT/recipes/<id>.yaml`` (atomically;
    unchanged files are not rewritten), so that a plain ``diffnas search`` can run it anywhere."""
    with io_errors(out / "recipes", "make the folder"):
        (out / "recipes").mkdir(parents=True, exist_ok=True)
    for spec in specs:
        p = recipe_path(spec, out)
        text = f"# run {spec.id} of a study ({spec.label}); generated, edit the study instead\n" + \
            yaml.safe_dump(spec.recipe, sort_keys=False)
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            write_text(p, text)


def command_for(spec: RunSpec, out: Path, program: Sequence[str] = ("diffnas",)) -> list[str]:
    """The command that runs (or resumes) ``spec``: ``diffnas search OUT/recipes/<id>.yaml --out DIR``,
    or ``diffnas search --resume DIR`` when the run has a checkpoint."""
    if spec.status == "partial":
        return [*program, "search", "--resume", str(spec.out_dir), "--no-progress"]
    return [*program, "search", str(recipe_path(spec, out)), "--out", str(spec.out_dir), "--no-progress"]


def shell_line(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def run_one(spec: RunSpec, catalogue: Any = None, progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) one spec in this process; return its summary."""
    from .. import api

    if spec.status == "partial":
        return api.resume(spec.out_dir, progress=progress, cat=catalogue)
    return api.search(spec.recipe, out=spec.out_dir, progress=progress, cat=catalogue)


def write_error(out: Path, spec: RunSpec, text: str) -> Path:
    """Write a failed run's message to ``OUT/logs/<id>.error.txt``; return the path."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    path = out / "logs" / f"{spec.id}.error.txt"
    write_text(path, text + "\n")
    return path


def epochs_of(spec: RunSpec) -> int:
    """The run's epoch budget (``trainer.epochs``; a stopping rule may end it sooner)."""
    epochs = spec.recipe.get("trainer", {}).get("epochs", 1)
    return epochs if isinstance(epochs, int) and epochs > 0 else 1


def epochs_recorded(spec: RunSpec) -> int:
    """How many epochs the run directory records (lines of ``metrics.jsonl``; read, never trusted
    beyond counting, so a torn last line does not matter)."""
    try:
        with open(spec.out_dir / "metrics.jsonl", "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


class _EpochReporter:
    """Reports each finished epoch of one run (a lifecycle plugin registered for that run only)."""

    def __init__(self, run_id: str, total: int, on_epoch: Callable[[str, int, int], None]):
        self.run_id, self.total, self.on_epoch = run_id, total, on_epoch

    @hookimpl
    def diffnas_epoch_end(self, search: Any, epoch: int, record: dict) -> None:
        self.on_epoch(self.run_id, epoch + 1, self.total)


@attrs.frozen
class WorkItem:
    """One unit of scheduling: ``specs`` run in one process, one after another.

    :func:`work_items` makes one item per run; an item that fuses several runs into one process (a
    population) overrides :meth:`commands` and :meth:`run`, and every executor schedules it
    unchanged, since executors only use ``key``, ``specs``, ``status``, ``commands`` and ``run``.

    :ivar key: a stable, file-name-safe name (the run id of a one-run item): log and job names.
    :ivar specs: the runs this item runs.
    """

    key: str
    specs: tuple[RunSpec, ...]

    @property
    def status(self) -> str:
        """``done`` when every run has finished, ``partial`` when one can resume, else ``pending``."""
        states = {s.status for s in self.specs}
        return "done" if states == {"done"} else "partial" if "partial" in states else "pending"

    def commands(self, out: Path, program: Sequence[str] = ("diffnas",)) -> list[list[str]]:
        """The commands that run this item now, in order (decided from the runs' state now): one
        ``diffnas search`` per unfinished run, ``--resume`` for a run with a checkpoint. The item has
        succeeded when every run of it has ``result.json``."""
        return [command_for(s, out, program) for s in self.specs if s.status != "done"]

    def run(self, out: Path, catalogue: Any = None, progress: bool | None = None, log: Callable[[str], None] = print,
            on_epoch: Callable[[str, int, int], None] | None = None) -> list[Outcome]:
        """Run the item in this process: skip finished runs, resume checkpointed ones, start the rest.

        A run that fails with a :class:`~diffnas.core.errors.DiffnasError` (e.g. a non-finite loss)
        gets a ``failed`` outcome and ``OUT/logs/<id>.error.txt``; anything else (a killed process,
        an out-of-memory error) propagates, so a scheduler retries the item.

        :param on_epoch: called as ``on_epoch(run_id, epochs_done, epochs_total)`` after every epoch.
        """
        outcomes = []
        for spec in self.specs:
            state = spec.status
            if state == "done":
                outcomes.append(Outcome(spec.id, "skipped", "already finished"))
                continue
            resumed = state == "partial"
            if resumed:
                log(f"{spec.id}: resuming from its checkpoint ({epochs_recorded(spec)} epoch(s) recorded)")
            else:
                log(f"{spec.id}: starting")
            if on_epoch is not None and catalogue is None:
                from .. import api

                catalogue = api.catalogue()
            reporter = _EpochReporter(spec.id, epochs_of(spec), on_epoch) if on_epoch is not None else None
            if reporter is not None:
                catalogue.pm.register(reporter)
            t0 = time.perf_counter()
            try:
                run_one(spec, catalogue, progress)
            except DiffnasError as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                write_error(out, spec, str(exc))
                log(f"{spec.id}: FAILED: {msg}")
                outcomes.append(Outcome(spec.id, "failed", msg, time.perf_counter() - t0, resumed))
                continue
            finally:
                if reporter is not None:
                    catalogue.pm.unregister(reporter)
            outcomes.append(Outcome(spec.id, "done", "resumed from its checkpoint" if resumed else "",
                                    time.perf_counter() - t0, resumed))
        return outcomes


def work_items(specs: Sequence[RunSpec]) -> list[WorkItem]:
    """One work item per unfinished run, in study order."""
    return [WorkItem(s.id, (s,)) for s in specs if s.status != "done"]


def absolute(item: WorkItem) -> WorkItem:
    """The item with absolute run directories (for workers whose working directory differs)."""
    return attrs.evolve(item, specs=tuple(attrs.evolve(s, out_dir=s.out_dir.absolute()) for s in item.specs))


# --------------------------------------------------------------------------- progress


class StudyProgress:
    """One progress bar for a whole study, counted in epochs over every run (:mod:`diffnas.core.progress`:
    plain status lines when the output is not a terminal; one log line per epoch when bars are off). Fed by :meth:`epoch` from whatever channel an executor has (a Ray
    actor, the run directories on shared storage)."""

    def __init__(self, items: Sequence[WorkItem], progress: bool | None, log: Callable[[str], None]):
        specs = [s for it in items for s in it.specs]
        self.total = {s.id: epochs_of(s) for s in specs}
        self.done = {s.id: epochs_recorded(s) for s in specs}
        self.log = log
        from ..core.progress import progress_bar

        # on a terminal a bar, elsewhere (a log, CI) its status as a plain line now and then
        self.bar = progress_bar(sum(self.total.values()), progress is not False and bool(specs),
                                initial=sum(min(self.done[k], self.total[k]) for k in self.done), unit="epoch", desc="study")

    def epoch(self, run_id: str, done: int, total: int | None = None) -> None:
        """Run ``run_id`` has ``done`` epochs (repeats and older counts are ignored)."""
        if run_id not in self.done or done <= self.done[run_id]:
            return
        step = min(done, self.total[run_id]) - min(self.done[run_id], self.total[run_id])
        self.done[run_id] = done
        if self.bar is not None:
            self.bar.update(step)
        else:
            self.log(f"  {run_id}: epoch {done}/{total or self.total[run_id]}")

    def finished(self, run_id: str) -> None:
        """The run ended (maybe early, by a stopping rule): count its remaining epochs as done."""
        if run_id in self.done and self.bar is not None:
            left = self.total[run_id] - min(self.done[run_id], self.total[run_id])
            self.bar.update(left)
        if run_id in self.done:
            self.done[run_id] = max(self.done[run_id], self.total[run_id])

    def write(self, msg: str) -> None:
        """A log line that does not tear the bar."""
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- remote workers


class StudyFolderUnreachable(DiffnasError):
    """A worker does not see the study folder the driver wrote (not on shared storage)."""


def write_token(out: Path) -> str:
    """Write a fresh random token to ``OUT/.diffnas-study-token``; return it. Each remote task
    checks it (:func:`check_token`) before touching the folder, so a folder that is not shared
    with the workers is named clearly instead of runs silently writing to a node's local disk."""
    token = secrets.token_hex(16)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / TOKEN_FILE, token + "\n")
    return token


def check_token(out: Path, token: str) -> None:
    """Raise :class:`StudyFolderUnreachable` unless ``OUT/.diffnas-study-token`` holds ``token``."""
    path = Path(out) / TOKEN_FILE
    try:
        found = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        found, why = None, f"cannot read {path}: {exc.strerror or exc}"
    else:
        why = f"{path} holds another study's token (a different folder of the same name?)"
    if found != token:
        raise StudyFolderUnreachable(
            f"the study folder {out} is not reachable from worker {socket.gethostname()} ({why}); every worker "
            f"must see the folder the driver writes: put --out on storage all nodes mount (NFS, Lustre, ...)")


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or raise a :class:`DiffnasError` naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DiffnasError(f"{what} needs the optional dependency {module!r} ({exc}); install it with: "
                           f"pip install 'diffnas[{extra}]'") from None


def outcome_from(data: Any, item: WorkItem, message: str) -> list[Outcome]:
    """Outcomes returned by a remote task (a list of dicts), or ``failed`` for each run of the item
    with ``message`` when the task itself failed."""
    if isinstance(data, list) and all(isinstance(d, dict) for d in data):
        return [Outcome(**d) for d in data]
    return [Outcome(s.id, "failed", message) for s in item.specs]


def summary_line(o: Outcome) -> str:
    extra = f" ({o.message})" if o.message else ""
    return f"{o.id}: {o.status}{extra}" + (f" in {o.wall_s:.1f} s" if o.wall_s else "")


def describe(obj: Any) -> str:
    """The first line of an exception (or any object) for a one-line message."""
    text = str(obj).strip()
    return text.splitlines()[0] if text else type(obj).__name__


__all__ = ["Context", "Outcome", "RunSpec", "StudyFolderUnreachable", "StudyProgress", "TOKEN_FILE", "WorkItem", "absolute",
           "check_token", "command_for", "describe", "epochs_of", "epochs_recorded", "materialise", "outcome_from",
           "recipe_path", "require", "run_one", "shell_line", "summary_line", "work_items", "write_error",
           "write_token"]
