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
from ..core.rundir import write_text
from .executors import (Context, GpuExecutor, Outcome, SequentialExecutor, command_for, make_executor, materialise,
                        run_one, shell_line)
from .report import write_report
from .schema import ExecutorConfig, LoadedStudy, RunSpec, Study, StudyError, load_study

__all__ = ["Context", "ExecutorConfig", "GpuExecutor", "LoadedStudy", "Outcome", "RunSpec", "SequentialExecutor",
           "Study", "StudyError", "command_for", "load_study", "make_executor", "print_commands", "report",
           "run_index", "run_study"]


def _catalogue(cat: Any) -> Any:
    if cat is not None:
        return cat
    from .. import api

    return api.catalogue()


def _write_manifest(ls: LoadedStudy) -> None:
    import yaml

    ls.out.mkdir(parents=True, exist_ok=True)
    doc = {"study": str(ls.source), "name": ls.name,
           "runs": [{"index": s.index, "id": s.id, "label": s.label, "group": s.group, "axes": s.axes,
                     "dir": str(s.out_dir)} for s in ls.specs]}
    write_text(ls.out / "study.runs.yaml", yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def run_study(path: str | os.PathLike, out: str | os.PathLike | None = None, executor: ExecutorConfig | None = None,
              catalogue: Any = None, progress: bool | None = None, report_plots: bool = True,
              log: Callable[[str], None] = print) -> tuple[LoadedStudy, list[Outcome], dict[str, Any]]:
    """Run every unfinished run of the study with its executor (or ``executor``), then write the report.

    :returns: ``(study, outcomes, report)``.
    """
    cat = _catalogue(catalogue)
    ls = load_study(path, out, cat)
    _write_manifest(ls)
    materialise(ls.specs, ls.out)
    ex = make_executor(executor or ls.study.executor)
    done = sum(1 for s in ls.specs if s.status == "done")
    log(f"study {ls.name}: {len(ls.specs)} run(s), {done} already finished; output in {ls.out}")
    outcomes = ex.run(ls.specs, Context(ls.out, cat, progress, log))
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
    materialise(ls.specs, ls.out)
    return [shell_line(command_for(s, ls.out, program)) for s in ls.specs if s.status != "done"]


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
    materialise([spec], ls.out)
    return SequentialExecutor().run([spec], Context(ls.out, cat, progress, log))[0]
