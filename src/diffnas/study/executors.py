"""Executors: the seam between a study's list of :class:`~diffnas.study.schema.RunSpec` and the
machines that run them.

An executor is any object with ``run(specs, context) -> list[Outcome]``. Two are bundled:

* :class:`SequentialExecutor` (``sequential``): runs one after another in this process (a CPU, or
  the one GPU ``trainer.device: auto`` picks);
* :class:`GpuExecutor` (``gpus``): one worker per GPU slot on this machine, each running
  ``python -m diffnas.cli search ...`` in a subprocess with ``CUDA_VISIBLE_DEVICES`` set to its GPU;
  ``per_gpu`` slots per GPU run several small searches on one GPU at once.

Anything larger (a SLURM array, Ray, Kubernetes) runs the commands of :func:`command_for` /
``diffnas study --print-commands`` or calls ``diffnas study --run-index I``; diffnas does not schedule
clusters itself. A third-party executor is named ``package.module:Class`` in the study's
``executor.name`` and built as ``Class(executor_config)``.

Every executor skips finished runs (``result.json`` exists) and resumes interrupted ones from their
``checkpoint.pt``; a run directory is locked while a search writes it, so two workers never run the
same run at once.
"""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol, Sequence

import attrs
import yaml

from ..core.errors import DiffnasError
from ..core.rundir import write_text
from .schema import ExecutorConfig, RunSpec


@attrs.define
class Outcome:
    """What happened to one run: ``done``, ``skipped`` (already finished) or ``failed``."""

    id: str
    status: str
    message: str = ""
    wall_s: float = 0.0


@attrs.define
class Context:
    """What executors may need besides the specs."""

    out: Path
    catalogue: Any = None
    progress: bool | None = None
    log: Any = print


class Executor(Protocol):
    def run(self, specs: Sequence[RunSpec], context: Context) -> list[Outcome]: ...


# --------------------------------------------------------------------------- commands


def recipe_path(spec: RunSpec, out: Path) -> Path:
    return out / "recipes" / f"{spec.id}.yaml"


def materialise(specs: Sequence[RunSpec], out: Path) -> None:
    """Write each run's recipe (every override applied) to ``OUT/recipes/<id>.yaml`` (atomically;
    unchanged files are not rewritten), so that a plain ``diffnas search`` can run it anywhere."""
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


# --------------------------------------------------------------------------- in process


def run_one(spec: RunSpec, catalogue: Any = None, progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) one spec in this process; return its summary."""
    from .. import api

    if spec.status == "partial":
        return api.resume(spec.out_dir, progress=progress, cat=catalogue)
    return api.search(spec.recipe, out=spec.out_dir, progress=progress, cat=catalogue)


class SequentialExecutor:
    """Runs the specs one after another in this process."""

    def __init__(self, config: ExecutorConfig | None = None):
        self.config = config or ExecutorConfig()

    def run(self, specs: Sequence[RunSpec], context: Context) -> list[Outcome]:
        out: list[Outcome] = []
        total = len(specs)
        for n, spec in enumerate(specs, 1):
            status = spec.status
            if status == "done":
                out.append(Outcome(spec.id, "skipped", "already finished"))
                continue
            context.log(f"[{n}/{total}] {spec.id}: {'resuming from checkpoint' if status == 'partial' else 'starting'}")
            t0 = time.perf_counter()
            try:
                run_one(spec, context.catalogue, context.progress)
            except DiffnasError as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                context.log(f"[{n}/{total}] {spec.id}: FAILED: {msg}")
                _write_error(context.out, spec, str(exc))
                out.append(Outcome(spec.id, "failed", msg, time.perf_counter() - t0))
                continue
            out.append(Outcome(spec.id, "done", "", time.perf_counter() - t0))
        return out


def _write_error(out: Path, spec: RunSpec, text: str) -> None:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    write_text(out / "logs" / f"{spec.id}.error.txt", text + "\n")


# --------------------------------------------------------------------------- one subprocess per GPU


def visible_gpus(requested: Sequence[str] | None = None) -> list[str]:
    """The GPUs to use: ``requested``, else ``CUDA_VISIBLE_DEVICES``, else every CUDA device."""
    if requested:
        return [str(g) for g in requested]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # pragma: no cover - torch always imports here
        return []


class GpuExecutor:
    """One worker per GPU slot (``per_gpu`` slots per GPU), each running its runs as subprocesses
    with ``CUDA_VISIBLE_DEVICES`` set to its GPU; output goes to ``OUT/logs/<id>.log``."""

    def __init__(self, config: ExecutorConfig | None = None, program: Sequence[str] | None = None):
        self.config = config or ExecutorConfig(name="gpus")
        self.program = list(program) if program is not None else [sys.executable, "-m", "diffnas.cli"]

    def command(self, spec: RunSpec, out: Path) -> list[str]:
        return command_for(spec, out, self.program)

    def run(self, specs: Sequence[RunSpec], context: Context) -> list[Outcome]:
        gpus = visible_gpus(self.config.gpus)
        if not gpus:
            raise DiffnasError("executor 'gpus': no GPU is visible (set executor.gpus, CUDA_VISIBLE_DEVICES, "
                               "or use executor 'sequential')")
        outcomes: dict[str, Outcome] = {}
        queue = deque()
        for spec in specs:
            if spec.status == "done":
                outcomes[spec.id] = Outcome(spec.id, "skipped", "already finished")
            else:
                queue.append(spec)
        materialise(list(queue), context.out)
        (context.out / "logs").mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()
        total = len(queue)
        slots = [g for g in gpus for _ in range(self.config.per_gpu)]
        context.log(f"running {total} run(s) on GPU(s) {', '.join(gpus)} ({self.config.per_gpu} per GPU)")

        def worker(gpu: str) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    spec = queue.popleft()
                    n = total - len(queue)
                cmd = self.command(spec, context.out)
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                log_path = context.out / "logs" / f"{spec.id}.log"
                context.log(f"[{n}/{total}] {spec.id} on GPU {gpu}: {shell_line(cmd)}")
                t0 = time.perf_counter()
                with open(log_path, "ab") as log:
                    rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                dt = time.perf_counter() - t0
                with lock:
                    if rc == 0:
                        outcomes[spec.id] = Outcome(spec.id, "done", "", dt)
                    else:
                        msg = f"exit status {rc}; see {log_path}"
                        outcomes[spec.id] = Outcome(spec.id, "failed", msg, dt)
                        context.log(f"{spec.id}: FAILED ({msg})")

        threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [outcomes[s.id] for s in specs if s.id in outcomes]


EXECUTORS = {"sequential": SequentialExecutor, "gpus": GpuExecutor}


def make_executor(config: ExecutorConfig) -> Executor:
    """The executor ``config.name`` names (bundled, or ``package.module:Class``)."""
    if config.name in EXECUTORS:
        return EXECUTORS[config.name](config)
    mod, _, cls = config.name.partition(":")
    try:
        return getattr(importlib.import_module(mod), cls)(config)
    except Exception as exc:
        raise DiffnasError(f"cannot build executor {config.name!r}: {type(exc).__name__}: {exc}") from None
