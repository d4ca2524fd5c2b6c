"""Studies: many searches from one YAML file, with a results table and plots.

    diffnas study STUDY.yaml [--out DIR]          run every unfinished run, then write the report
    diffnas study STUDY.yaml --list               index, id, status of every run
    diffnas study STUDY.yaml --print-commands     one ``diffnas search ...`` line per unfinished run
    diffnas study STUDY.yaml --run-index I        run only run I (a SLURM array task)
    diffnas study STUDY.yaml --report-only        tables and plots from the run directories as they are

A study (:mod:`diffnas.study.schema`) expands into :class:`RunSpec` s with deterministic ids and run
directories ``OUT/runs/<id>``; an executor (:mod:`diffnas.study.executors`) runs them; the report
(:mod:`diffnas.study.report`) reads the run directories back. A finished run (``result.json``) is
never run again; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core.errors import DiffnasError
from ..core.rundir import io_errors, write_text
from .executors import Context, Outcome, WorkItem, command_for, materialise, shell_line, work_items
from .populations import population_work_items
from .report import write_report
from .schema import ExecutorConfig, LoadedStudy, RunSpec, Study, StudyError, executor_config, load_study

__all__ = ["Context", "ExecutorConfig", "LoadedStudy", "Outcome", "RunSpec", "Study", "StudyError", "WorkItem",
           "command_for", "load_study", "make_executor", "print_commands", "report", "run_index", "run_study",
           "run_warmup"]


def _catalogue(cat: Any) -> Any:
    if cat is not None:
        return cat
    from .. import api

    return api.catalogue()


def _write_manifest(ls: LoadedStudy) -> None:
    import yaml

    with io_errors(ls.out, "make the study folder"):
        ls.out.mkdir(parents=True, exist_ok=True)
    doc = {"study": str(ls.source), "name": ls.name,
           "runs": [{"index": s.index, "id": s.id, "label": s.label, "group": s.group, "axes": s.axes,
                     "dir": str(s.out_dir)} for s in ls.specs]}
    write_text(ls.out / "study.runs.yaml", yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def make_executor(ref: ExecutorConfig, catalogue: Any = None, source: str | None = None) -> Any:
    """The registered executor ``ref.name``, built from ``ref.params`` (strictly checked: every problem
    is reported as a :class:`StudyError`). Executors come only from installed plugins."""
    cat = _catalogue(catalogue)
    config, problems = executor_config(cat, ref)
    if problems:
        raise StudyError(problems, source)
    return cat.build("executor", ref.name, config, key_path="study.executor")


def run_study(path: str | os.PathLike, out: str | os.PathLike | None = None, executor: ExecutorConfig | None = None,
              catalogue: Any = None, progress: bool | None = None, report_plots: bool = True,
              log: Callable[[str], None] = print) -> tuple[LoadedStudy, list[Outcome], dict[str, Any]]:
    """Run every unfinished run of the study with its executor (or ``executor``), then write the report.

    The executor is built and checked (:meth:`~diffnas.core.protocols.Executor.check`: a missing
    optional dependency, no GPU) before anything is written.

    :returns: ``(study, outcomes, report)``; finished runs have ``skipped`` outcomes.
    """
    cat = _catalogue(catalogue)
    ls = load_study(path, out, cat)
    ex = make_executor(executor or ls.study.executor, cat, str(path))
    ex.check()
    _write_manifest(ls)
    materialise(ls.specs + ([ls.warmup] if ls.warmup is not None else []), ls.out)
    items = (population_work_items(ls.specs, ls.study.population) if ls.study.population.enabled
             else work_items(ls.specs))
    pending = {s.id for it in items for s in it.specs}
    outcomes = [Outcome(s.id, "skipped", "already finished") for s in ls.specs if s.id not in pending]
    log(f"study {ls.name}: {len(ls.specs)} run(s), {len(outcomes)} already finished; output in {ls.out}")
    context = Context(ls.out, cat, progress, log, ls.name)
    if items and ls.warmup is not None and ls.warmup.status != "done":
        # the stage every run forks from: through the same executor, to its end, before any run starts
        log(f"study {ls.name}: the warm-up stage first ({ls.warmup.out_dir})")
        warm = ex.run([WorkItem(ls.warmup.id, (ls.warmup,))], context)
        if warm and warm[0].status == "submitted":  # an executor that does not wait (slurm, wait: false)
            log(f"study {ls.name}: the warm-up stage is submitted ({warm[0].message}); no run is submitted before it "
                f"has finished: run this command again then")
            return ls, warm, write_report(ls.specs, ls.out, ls.name, cat, plots=report_plots)
        if not warm or warm[0].status != "done":
            why = warm[0].message if warm else "no outcome"
            raise DiffnasError(f"the warm-up stage of study {ls.name} did not finish ({why}); no run was started. "
                               f"Fix it and run the study again (it resumes): see {ls.out / 'logs'}")
    if items:
        outcomes += ex.run(items, context)
    rep = write_report(ls.specs, ls.out, ls.name, cat, plots=report_plots)
    return ls, outcomes, rep


def report(path: str | os.PathLike, out: str | os.PathLike | None = None, catalogue: Any = None,
           plots: bool = True) -> tuple[LoadedStudy, dict[str, Any]]:
    """Tables and plots from the run directories as they are (no run is started, no recipe validated)."""
    ls = load_study(path, out, None)
    if not ls.out.exists():
        raise DiffnasError(f"study output folder {ls.out} does not exist (run the study first, or give --out)")
    return ls, write_report(ls.specs, ls.out, ls.name, _catalogue(catalogue), plots=plots)


def print_commands(path: str | os.PathLike, out: str | os.PathLike | None = None, catalogue: Any = None,
                   program: Sequence[str] = ("diffnas",)) -> list[str]:
    """One shell line per unfinished run (``diffnas search OUT/recipes/<id>.yaml --out OUT/runs/<id>``,
    or ``--resume`` for an interrupted run); writes the per-run recipes the lines name."""
    ls = load_study(path, out, _catalogue(catalogue))
    _write_manifest(ls)
    materialise(ls.specs + ([ls.warmup] if ls.warmup is not None else []), ls.out)
    items = (population_work_items(ls.specs, ls.study.population) if ls.study.population.enabled
             else work_items(ls.specs))
    lines = [shell_line(cmd) for item in items for cmd in item.commands(ls.out, program)]
    if lines and ls.warmup is not None and ls.warmup.status != "done":
        lines = ["# the warm-up stage: run it to its end first, every line after it starts from it",
                 *[shell_line(cmd) for cmd in WorkItem(ls.warmup.id, (ls.warmup,)).commands(ls.out, program)],
                 "# the runs (any order, in parallel)", *lines]
    return lines


def run_warmup(path: str | os.PathLike, out: str | os.PathLike | None = None, catalogue: Any = None,
               progress: bool | None = None, log: Callable[[str], None] = print) -> Outcome:
    """Run (or resume) only the study's warm-up stage in this process (``--warmup-only``: the step a
    launcher runs before the runs' array)."""
    cat = _catalogue(catalogue)
    ls = load_study(path, out, cat)
    if ls.warmup is None:
        raise DiffnasError(f"study {path} has no warm-up stage (no 'warmup:' block)")
    _write_manifest(ls)
    materialise([ls.warmup], ls.out)
    return WorkItem(ls.warmup.id, (ls.warmup,)).run(ls.out, cat, progress, log)[0]


def run_index(path: str | os.PathLike, index: int, out: str | os.PathLike | None = None, catalogue: Any = None,
              progress: bool | None = None, log: Callable[[str], None] = print) -> Outcome:
    """Run only run ``index`` (0-based, over all runs, finished or not: a SLURM array task id)."""
    cat = _catalogue(catalogue)
    ls = load_study(path, out, cat)
    if not 0 <= index < len(ls.specs):
        raise DiffnasError(f"--run-index {index} is out of range: the study {path} has {len(ls.specs)} run(s) "
                           f"(0..{len(ls.specs) - 1})")
    _write_manifest(ls)
    spec = ls.specs[index]
    if ls.warmup is not None and ls.warmup.status != "done":
        raise DiffnasError(f"run {spec.id} starts from the study's warm-up stage, which has not finished "
                           f"({ls.warmup.out_dir}); run it first: diffnas study {path} --warmup-only")
    materialise([spec], ls.out)
    return WorkItem(spec.id, (spec,)).run(ls.out, cat, progress, log)[0]
