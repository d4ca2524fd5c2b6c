"""The ``slurm`` executor: the study's unfinished runs as one SLURM job array, submitted with submitit.

submitit (https://github.com/facebookincubator/submitit) is an optional extra
(``pip install 'diffnas[slurm]'``), imported only when this executor runs. Each array task runs one
work item in the job's Python process. On pre-emption or at the time limit SLURM signals the job;
submitit then follows its checkpointing protocol (:meth:`SlurmTask.checkpoint`) and requeues the same
call, which resumes the run from its last checkpoint (an epoch end, or every
``output.checkpoint_every_steps`` steps). ``cluster: local`` runs the same jobs as local processes
through submitit's local executor (for trying a study, and for the tests). The driver waits for the
array (``wait: true``), showing one progress bar read from the run directories, or submits and exits.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import attrs

from ...core.config import help_field, non_negative, one_of, positive
from ...core.errors import DiffnasError
from ...core.hookspecs import hookimpl
from ...core.protocols import Executor
from ...study.executors import (Context, Outcome, StudyProgress, WorkItem, absolute, check_token, describe,
                                epochs_recorded, outcome_from, require, summary_line, write_token)


class SlurmTask:
    """What one array task runs (pickled by submitit): check the study folder, run the work item."""

    def __init__(self, out: str, token: str):
        self.out, self.token = out, token

    def __call__(self, item: WorkItem) -> list[dict[str, Any]]:
        check_token(Path(self.out), self.token)
        return [o.to_dict() for o in item.run(Path(self.out), None, progress=False, log=lambda m: print(m, flush=True))]

    def checkpoint(self, item: WorkItem) -> Any:
        """submitit's checkpointing protocol: called when the job is pre-empted or times out; the
        requeued job makes the same call, and :meth:`WorkItem.run` resumes from the run's checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, item)


class SlurmExecutor(Executor):
    """The unfinished runs as one SLURM job array (submitit): one task per run with ``gpus_per_task``
    GPUs and ``cpus_per_task`` CPUs on ``partition`` for at most ``time_min`` minutes; pre-empted or
    timed-out tasks are requeued and resume from their checkpoints."""

    @attrs.frozen
    class Config:
        partition: Optional[str] = help_field(None, "SLURM partition (default: the cluster's)")
        account: Optional[str] = help_field(None, "SLURM account to charge")
        qos: Optional[str] = help_field(None, "SLURM quality of service")
        time_min: int = help_field(1440, "time limit of each task, minutes", validator=positive)
        gpus_per_task: int = help_field(1, "GPUs per task (0 on CPU partitions)", validator=non_negative)
        cpus_per_task: int = help_field(4, "CPUs per task", validator=positive)
        mem_gb: Optional[float] = help_field(None, "memory per task, GB (default: the partition's)", validator=positive)
        array_parallelism: int = help_field(64, "tasks of the array running at once", validator=positive)
        max_timeouts: int = help_field(3, "requeues after reaching the time limit (pre-emptions always requeue)",
                                       validator=non_negative)
        cluster: str = help_field("slurm", "'slurm', or 'local' to run the jobs as local processes through submitit",
                                  validator=one_of("slurm", "local"))
        wait: bool = help_field(True, "wait for the array and write the report; false: submit and exit")
        poll_s: float = help_field(10.0, "seconds between checks of the jobs while waiting", validator=positive)

    def check(self) -> None:
        require("submitit", "slurm", "executor 'slurm'")
        if self.config.cluster == "slurm" and shutil.which("sbatch") is None:
            raise DiffnasError("executor 'slurm': no `sbatch` on PATH; run the study on a SLURM login node "
                               "(or set executor params cluster: local to try it on this machine)")

    def _executor(self, submitit: Any, folder: Path, name: str) -> Any:
        cfg = self.config
        ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cfg.cluster,
                                   **{f"{cfg.cluster}_max_num_timeout": cfg.max_timeouts})
        params: dict[str, Any] = {"name": f"diffnas-{name}", "timeout_min": cfg.time_min, "nodes": 1,
                                  "tasks_per_node": 1, "gpus_per_node": cfg.gpus_per_task}
        if cfg.cluster == "slurm":
            params.update(cpus_per_task=cfg.cpus_per_task, slurm_array_parallelism=cfg.array_parallelism)
            if cfg.mem_gb is not None:
                params["mem_gb"] = cfg.mem_gb
            for key in ("partition", "account", "qos"):
                if getattr(cfg, key) is not None:
                    params[f"slurm_{key}"] = getattr(cfg, key)
        ex.update_parameters(**params)
        return ex

    def run(self, items: Sequence[WorkItem], context: Context) -> list[Outcome]:
        submitit = require("submitit", "slurm", "executor 'slurm'")
        self.check()
        out = context.out.absolute()
        token = write_token(out)
        ex = self._executor(submitit, out / "slurm", context.name)
        items = list(items)
        jobs = ex.map_array(SlurmTask(str(out), token), [absolute(it) for it in items])
        ids = ", ".join(j.job_id for j in jobs)
        context.log(f"slurm: submitted {len(jobs)} task(s) ({ids}); logs in {out / 'slurm'}")
        if not self.config.wait:
            context.log("slurm: not waiting; when the jobs end, write the report with diffnas study STUDY --out "
                        f"{out} --report-only")
            return [Outcome(s.id, "submitted", f"job {j.job_id}") for j, it in zip(jobs, items) for s in it.specs]
        return self._wait(list(zip(jobs, items)), context)

    def _wait(self, pending: list[tuple[Any, WorkItem]], context: Context) -> list[Outcome]:
        bar = StudyProgress([it for _, it in pending], context.progress, context.log)
        outcomes: list[Outcome] = []
        try:
            while pending:
                still = []
                for job, item in pending:
                    for s in item.specs:  # progress from the run directories (shared storage)
                        bar.epoch(s.id, epochs_recorded(s))
                    if not job.done():
                        still.append((job, item))
                        continue
                    try:
                        outs = outcome_from(job.result(), item, "")
                    except Exception as exc:  # submitit re-raises the job's failure here
                        text = str(exc)
                        reach = [ln.strip() for ln in text.splitlines() if "is not reachable from worker" in ln]
                        msg = reach[-1] if reach else describe(exc)
                        outs = outcome_from(None, item, f"{msg} (job {job.job_id}; log {job.paths.stderr})")
                    for o in outs:
                        bar.finished(o.id)
                        bar.write(summary_line(o))
                    outcomes += outs
                pending = still
                if pending:
                    time.sleep(self.config.poll_s)
        except KeyboardInterrupt:
            context.log("slurm: stopped waiting; the jobs keep running (scancel them to stop); write the report "
                        f"later with --report-only --out {context.out}")
            raise
        finally:
            bar.close()
        return outcomes


@hookimpl
def diffnas_register_executors(register: Any) -> None:
    """Register ``slurm``."""
    register("slurm", SlurmExecutor)
