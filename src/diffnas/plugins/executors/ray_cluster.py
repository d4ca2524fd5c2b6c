"""The ``ray`` executor: every unfinished run is a Ray task, on a local Ray cluster (started for the
study) or on an existing cluster (``address`` / ``--address`` / ``RAY_ADDRESS``).

Ray (https://docs.ray.io) is an optional extra (``pip install 'diffnas[ray]'``), imported only when
this executor runs. Each task runs its work item in the Ray worker process with the plugins
installed on that node; a task whose worker or node dies (a kill, a pre-empted spot node, an
out-of-memory kill) is retried up to ``max_retries`` times and the retry resumes the run from its
checkpoint, as ``diffnas search --resume``. Each finished epoch is streamed to the driver (one
progress bar for the study) and each run's outcome as soon as it ends. The study folder must be on
storage every node mounts: every task checks a token file the driver wrote before it starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import attrs

from ...core.config import help_field, non_negative
from ...core.errors import DiffnasError
from ...core.hookspecs import hookimpl
from ...core.protocols import Executor
from ...study.executors import (Context, Outcome, StudyFolderUnreachable, StudyProgress, WorkItem, absolute,
                                check_token, describe, outcome_from, require, summary_line, write_token)


#: how Ray prints its workers' output in a study's log, unless the user set these: no ANSI colour
#: codes around the ``(task pid=...)`` prefixes, and every line as printed (Ray's deduplication
#: holds lines back and adds ``[repeated 3x across cluster]`` notices). Nothing is hidden: the
#: workers' output, errors included, still reaches the driver (``log_to_driver=True``).
RAY_LOG_ENV = {"RAY_COLOR_PREFIX": "0", "RAY_DEDUP_LOGS": "0"}


def import_ray() -> Any:
    """Ray, imported with :data:`RAY_LOG_ENV` set first (Ray reads ``RAY_DEDUP_LOGS`` when it is
    imported, ``RAY_COLOR_PREFIX`` as it prints; the local cluster's workers inherit both)."""
    for key, value in RAY_LOG_ENV.items():
        os.environ.setdefault(key, value)
    return require("ray", "ray", "executor 'ray'")


class _ProgressSink:
    """A Ray actor that collects epoch events from the tasks until the driver drains them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def epoch(self, run_id: str, done: int, total: int) -> None:
        self.events.append((run_id, done, total))

    def drain(self) -> list[tuple[str, int, int]]:
        events, self.events = self.events, []
        return events


def run_item_task(item: WorkItem, out: str, token: str, sink: Any) -> list[dict[str, Any]]:
    """The body of one Ray task (runs in a Ray worker): check the study folder, then run the item,
    reporting each epoch to ``sink`` without waiting for it."""
    check_token(Path(out), token)
    outcomes = item.run(Path(out), None, progress=False, log=lambda msg: print(msg, flush=True),
                        on_epoch=lambda run_id, done, total: sink.epoch.remote(run_id, done, total))
    return [o.to_dict() for o in outcomes]


#: seconds to wait for a Ray cluster's address to accept a connection
CONNECT_TIMEOUT_S = 10.0


def probe_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse at once (:class:`DiffnasError`) a Ray address that refuses connections, and within
    ``timeout`` seconds one that does not answer: one TCP connection to its host and port
    (``host:port``, ``ray://host:port``; ``auto`` and other forms are left to Ray)."""
    import socket
    from urllib.parse import urlsplit

    from ...core.limits import short

    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    try:
        parts = urlsplit(address if "://" in address else f"//{address}")
        host, port = parts.hostname, parts.port or (10001 if address.startswith("ray://") else 6379)
    except ValueError as exc:
        raise DiffnasError(f"executor 'ray': address {short(address)} is not host:port ({exc})") from None
    if not host:
        raise DiffnasError(f"executor 'ray': address {short(address)} is not host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        raise DiffnasError(f"executor 'ray': the Ray cluster at {short(address)} does not answer (no connection "
                           f"within {timeout:g} s); is the cluster up and the address right?") from None
    except OSError as exc:
        raise DiffnasError(f"executor 'ray': cannot reach the Ray cluster at {short(address)}: "
                           f"{exc.strerror or exc}; is the cluster up and the address right?") from None


class RayExecutor(Executor):
    """Each unfinished run is a Ray task with its own resources; a local Ray cluster is started when
    no address is given, else the study joins the cluster at ``address`` (or ``RAY_ADDRESS``).
    Dead workers are retried (``max_retries``) and resume from the run's checkpoint."""

    @attrs.frozen
    class Config:
        address: Optional[str] = help_field(
            None, "Ray cluster to join ('auto', 'host:6379', 'ray://host:10001'); default: RAY_ADDRESS, else a "
                  "local cluster started for the study")
        num_gpus: Optional[float] = help_field(None, "GPUs per run (a fraction shares a GPU); default: 1 when the "
                                                     "cluster has GPUs, else 0", validator=non_negative)
        num_cpus: float = help_field(1.0, "CPUs per run", validator=non_negative)
        max_retries: int = help_field(3, "retries of a run whose worker or node died (each resumes from the "
                                         "run's checkpoint)", validator=non_negative)

    def check(self) -> None:
        ray = import_ray()
        address = self.config.address or os.environ.get("RAY_ADDRESS") or None
        if address is not None and not ray.is_initialized():  # before the study writes anything
            probe_address(address)
            self._probed = address

    def run(self, items: Sequence[WorkItem], context: Context) -> list[Outcome]:
        ray = import_ray()
        out = context.out.absolute()
        cfg = self.config
        started = False
        if not ray.is_initialized():
            address = cfg.address or os.environ.get("RAY_ADDRESS") or None
            if address is not None and getattr(self, "_probed", None) != address:
                probe_address(address)  # ray.init retries a dead address for many minutes, printing nothing
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise DiffnasError(f"executor 'ray': cannot join the Ray cluster at {address}: {describe(exc)}") from None
            started = True
            context.log(f"ray: {'joined the cluster at ' + address if address else 'started a local cluster'}")
        try:
            return self._run(ray, items, context, out)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, items: Sequence[WorkItem], context: Context, out: Path) -> list[Outcome]:
        cfg = self.config
        res = ray.cluster_resources()
        num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if res.get("GPU", 0.0) >= 1 else 0.0)
        for key, need in (("GPU", num_gpus), ("CPU", cfg.num_cpus)):
            if need > res.get(key, 0.0):
                fix = "set executor params num_gpus: 0 to run on CPUs" if key == "GPU" else "lower executor params num_cpus"
                raise DiffnasError(f"executor 'ray': each run asks for {key.lower()}s={need:g} but the Ray cluster has "
                                   f"{res.get(key, 0.0):g} {key}(s) in all; {fix}")
        token = write_token(out)
        sink = ray.remote(num_cpus=0)(_ProgressSink).remote()
        task = ray.remote(run_item_task).options(num_cpus=cfg.num_cpus, num_gpus=num_gpus,
                                                 max_retries=cfg.max_retries, retry_exceptions=False)
        pending = {task.remote(absolute(item), str(out), token, sink): item for item in items}
        context.log(f"ray: {len(pending)} task(s), {cfg.num_cpus:g} CPU(s) and {num_gpus:g} GPU(s) each, "
                    f"cluster {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s)")
        bar = StudyProgress(items, context.progress, context.log)
        outcomes: list[Outcome] = []
        unreachable: list[str] = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for event in ray.get(sink.drain.remote()):
                    bar.epoch(*event)
                for ref in ready:
                    item = pending.pop(ref)
                    outs = self._collect(ray, ref, item, unreachable)
                    for o in outs:
                        bar.finished(o.id)
                        bar.write(summary_line(o))
                    outcomes += outs
        except KeyboardInterrupt:
            for ref in pending:  # the runs keep their checkpoints: re-running the study resumes them
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        if unreachable:
            context.log(unreachable[0])
        return outcomes

    def _collect(self, ray: Any, ref: Any, item: WorkItem, unreachable: list[str]) -> list[Outcome]:
        try:
            return outcome_from(ray.get(ref), item, "")
        except ray.exceptions.RayTaskError as exc:  # the task raised (not retried: it would raise again)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StudyFolderUnreachable):
                unreachable.append(str(cause))
                return outcome_from(None, item, str(cause))
            return outcome_from(None, item, f"{type(cause or exc).__name__}: {describe(cause or exc)}")
        except ray.exceptions.RayError as exc:  # the worker or node died more than max_retries times
            return outcome_from(None, item, f"{type(exc).__name__} after {self.config.max_retries} retries "
                                            f"({describe(exc)}); the run keeps its checkpoint: run the study again to resume")


@hookimpl
def diffnas_register_executors(register: Any) -> None:
    """Register ``ray``."""
    register("ray", RayExecutor)
