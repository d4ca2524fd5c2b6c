"""Executors for one machine: ``sequential`` (in this process) and ``gpus`` (one subprocess per GPU slot)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, Optional, Sequence

import attrs

from ...core.config import help_field, positive
from ...core.errors import DiffnasError
from ...core.hookspecs import hookimpl
from ...core.protocols import Executor
from ...study.executors import Context, Outcome, WorkItem, shell_line


class SequentialExecutor(Executor):
    """Runs the study's runs one after another in this process (a CPU, or the one GPU
    ``trainer.device: auto`` picks), each with its own progress bar."""

    def run(self, items: Sequence[WorkItem], context: Context) -> list[Outcome]:
        out: list[Outcome] = []
        total = len(items)
        for n, item in enumerate(items, 1):
            out += item.run(context.out, context.catalogue, context.progress,
                            log=lambda msg, n=n: context.log(f"[{n}/{total}] {msg}"))
        return out


def visible_gpus(requested: Sequence[str] | None = None) -> list[str]:
    """The GPUs to use: ``requested``, else ``CUDA_VISIBLE_DEVICES``, else every CUDA device."""
    if requested:
        return [str(g) for g in requested]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class GpuExecutor(Executor):
    """One worker per GPU slot (``per_gpu`` slots per GPU) on this machine, each running its work
    items' commands (``python -m diffnas.cli search ...``) as subprocesses with ``CUDA_VISIBLE_DEVICES``
    set to its GPU; output goes to ``OUT/logs/<item>.log``."""

    @attrs.frozen
    class Config:
        gpus: Optional[list[str]] = help_field(None, "GPU ids to use (default: CUDA_VISIBLE_DEVICES, else every GPU)")
        per_gpu: int = help_field(1, "runs at a time on each GPU", validator=positive)

    #: the program the subprocesses run (tests replace it)
    program: Sequence[str] = (sys.executable, "-m", "diffnas.cli")

    def check(self) -> None:
        if not visible_gpus(self.config.gpus):
            raise DiffnasError("executor 'gpus': no GPU is visible (set executor params gpus, CUDA_VISIBLE_DEVICES, "
                               "or use executor 'sequential')")

    def run(self, items: Sequence[WorkItem], context: Context) -> list[Outcome]:
        gpus = visible_gpus(self.config.gpus)
        self.check()
        outcomes: dict[str, Outcome] = {}
        queue: deque[WorkItem] = deque(items)
        (context.out / "logs").mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()
        total = len(queue)
        slots = [g for g in gpus for _ in range(self.config.per_gpu)]
        context.log(f"running {total} item(s) on GPU(s) {', '.join(gpus)} ({self.config.per_gpu} per GPU)")

        def worker(gpu: str) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    item = queue.popleft()
                    n = total - len(queue)
                if item.status == "done":  # finished meanwhile (another launcher)
                    with lock:
                        outcomes.update({s.id: Outcome(s.id, "skipped", "already finished") for s in item.specs})
                    continue
                resumed = item.status == "partial"
                log_path = context.out / "logs" / f"{item.key}.log"
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                t0 = time.perf_counter()
                failed = ""
                for cmd in item.commands(context.out, self.program):
                    context.log(f"[{n}/{total}] {item.key} on GPU {gpu}: {shell_line(cmd)}")
                    with open(log_path, "ab") as log:
                        rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                    if rc != 0:
                        failed = f"exit status {rc}; see {log_path}"
                dt = time.perf_counter() - t0
                with lock:  # a run succeeded when it has its result.json
                    for s in item.specs:
                        if s.status == "done":
                            outcomes[s.id] = Outcome(s.id, "done", "", dt, resumed)
                        else:
                            msg = failed or f"no result.json after its command; see {log_path}"
                            outcomes[s.id] = Outcome(s.id, "failed", msg, dt, resumed)
                            context.log(f"{s.id}: FAILED ({msg})")

        threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [outcomes[s.id] for it in items for s in it.specs if s.id in outcomes]


@hookimpl
def diffnas_register_executors(register: Any) -> None:
    """Register ``sequential`` and ``gpus``."""
    register("sequential", SequentialExecutor)
    register("gpus", GpuExecutor)
