"""The ``isolated`` study executor: every run in a fresh subprocess with a time limit."""

from __future__ import annotations

import subprocess
import sys
import time

import attrs

from diffnas.core.config import help_field, positive
from diffnas.core.protocols import Executor
from diffnas.study.executors import Context, Outcome, WorkItem, shell_line


class Isolated(Executor):
    """Runs each work item's ``diffnas search`` commands in fresh subprocesses, one after another, each
    with a time limit, so a crash or a hang costs one run and not the study; output goes to
    ``OUT/logs/<item>.log``."""

    @attrs.frozen
    class Config:
        timeout_s: int = help_field(3600, "seconds one command may run before it is stopped (its run fails)",
                                    validator=positive)

    #: the command line that starts diffnas (the interpreter running the study, so its plugins too)
    program = (sys.executable, "-m", "diffnas.cli")

    def run(self, items: list[WorkItem], context: Context) -> list[Outcome]:
        (context.out / "logs").mkdir(parents=True, exist_ok=True)
        outcomes = []
        for n, item in enumerate(items, 1):
            before = {spec.id: spec.status for spec in item.specs}  # now, not when the study was planned
            log_path = context.out / "logs" / f"{item.key}.log"
            failure, t0 = "", time.perf_counter()
            for cmd in item.commands(context.out, self.program):  # one per unfinished run; --resume if it can
                context.log(f"[{n}/{len(items)}] {item.key}: {shell_line(cmd)}")
                with open(log_path, "ab") as log:
                    try:
                        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              timeout=self.config.timeout_s).returncode
                    except subprocess.TimeoutExpired:  # the child was killed; its checkpoint can resume
                        code = None
                if code != 0:
                    failure = f"timed out after {self.config.timeout_s} s" if code is None else f"exit status {code}"
            wall = time.perf_counter() - t0
            for spec in item.specs:  # a run succeeded when its directory holds result.json
                resumed = before[spec.id] == "partial"
                if before[spec.id] == "done":
                    outcomes.append(Outcome(spec.id, "skipped", "already finished"))
                elif spec.status == "done":
                    outcomes.append(Outcome(spec.id, "done", "", wall, resumed))
                else:
                    msg = f"{failure or 'no result.json'}; see {log_path}"
                    context.log(f"{spec.id}: FAILED ({msg})")
                    outcomes.append(Outcome(spec.id, "failed", msg, wall, resumed))
        return outcomes
