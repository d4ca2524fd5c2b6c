"""A smoke study on Ray (a local two-CPU cluster) and on SLURM through submitit's local executor.

Each distributed run loses one job mid-run to a real process death (SIGKILL of the Ray worker;
SLURM's pre-emption signal to the submitit job), resumes it from its checkpoint, and must end with
the same table as a sequential run of the same study. Skipped, with the reason, when the optional
extras are not installed (CI installs them: ``pip install -e '.[ray,slurm]'``).
"""

from __future__ import annotations

import csv
import json
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from diffnas.cli import main
from diffnas.study import run_study
from diffnas.testing import tiny_recipe

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the ray executor needs Ray: pip install 'diffnas[ray]'")
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="the slurm executor needs submitit: pip install 'diffnas[slurm]'")

EPOCHS = 3
IDS = ["darts-seed0", "darts-seed1"]
#: results.csv columns that hold wall-clock time (a resumed run repeats everything else bit for bit)
TIMING = {"search_time_s_mean", "search_time_s_std"}


def _study(d: Path, executor: dict | None) -> Path:
    recipe = tiny_recipe(data={"dataset": "synthetic", "params": {"num_train": 32, "num_test": 8, "image_size": 8}},
                         trainer={"epochs": EPOCHS, "batch_size": 8, "device": "cpu", "steps_per_epoch": 2})
    study = {"version": 1, "name": "cluster_smoke", "axes": {"trainer.seed": [0, 1]},
             "runs": [{"label": "DARTS tiny", "id": "darts", "recipe": recipe}]}
    if executor is not None:
        study["executor"] = executor
    d.mkdir(parents=True, exist_ok=True)
    path = d / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _history(out: Path, run_id: str) -> list[dict]:
    """A run's per-epoch records without the wall-clock keys."""
    from diffnas.core.outputs import TIMING_KEYS

    lines = (out / "runs" / run_id / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines]


def _table(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]
    with open(out / "runs.csv", newline="") as f:
        runs = [{k: r[k] for k in ("id", "genotype", "c10_test", "c100_test", "imagenet16_test") if k in r}
                for r in csv.DictReader(f)]
    return rows + runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The output folder of a sequential run of the study (in this process)."""
    d = tmp_path_factory.mktemp("sequential")
    path = _study(d, None)
    _, outcomes, _ = run_study(path, d / "out", progress=False, report_plots=False, log=lambda m: None)
    assert [o.status for o in outcomes] == ["done", "done"]
    return d / "out"


def _gone(pid: int) -> bool:
    """The process has exited (or is a zombie its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


class Interrupter:
    """Waits for a run's first checkpoint, then sends ``sig`` to the process that holds the run
    directory's lock (the process running the search: a Ray worker, a submitit job)."""

    def __init__(self, run_dir: Path, sig: int, timeout: float = 300.0):
        self.run_dir, self.sig, self.timeout = run_dir, sig, timeout
        self.pid: int | None = None
        self.epochs_at_kill: int | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            try:  # the checkpoint is written before the epoch's metrics line: one line means one checkpoint
                epochs = (self.run_dir / "metrics.jsonl").read_text().count("\n")
                pid = int((self.run_dir / ".lock").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                epochs = 0
            if epochs >= 1 and not (self.run_dir / "result.json").exists():
                assert pid != os.getpid()
                os.kill(pid, self.sig)
                self.pid, self.epochs_at_kill = pid, epochs
                return
            time.sleep(0.01)

    def join(self) -> None:
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster with two CPUs for the module (starting Ray is slow on two cores)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray executor needs Ray: pip install 'diffnas[ray]'")
    import ray

    # workers inherit the environment: one thread each, as the sequential reference in this process
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


@pytest.mark.slow
@needs_ray
def test_ray_study_survives_a_killed_worker(ray_cluster, reference, tmp_path, capsys):
    path = _study(tmp_path, {"name": "ray", "params": {"num_gpus": 0, "num_cpus": 1, "max_retries": 2}})
    out = tmp_path / "out"
    killer = Interrupter(out / "runs" / IDS[0], signal.SIGKILL)
    # --no-progress: one log line per epoch received (with a bar, the same counts feed the bar)
    assert main(["study", str(path), "--out", str(out), "--no-plots", "--no-progress"]) == 0
    killer.join()
    text = capsys.readouterr().out
    # the worker running darts-seed0 really died after its first checkpoint, before the run ended
    assert killer.pid is not None and 1 <= killer.epochs_at_kill < EPOCHS
    assert _gone(killer.pid)
    # Ray retried the task, which resumed from the checkpoint; the other run started once
    assert f"{IDS[0]}: done (resumed from its checkpoint)" in text
    assert f"{IDS[1]}: done in" in text
    assert "2 run(s) ran, 0 already finished, 0 failed" in text
    # epochs streamed back to the driver from both workers
    assert all(f"  {rid}: epoch {EPOCHS}/{EPOCHS}" in text for rid in IDS)
    # the resumed run repeats the uninterrupted one epoch by epoch; the tables are equal
    assert _history(out, IDS[0]) == _history(reference, IDS[0])
    assert _table(out) == _table(reference)


@needs_ray
def test_ray_refuses_what_the_cluster_cannot_give_and_an_unshared_folder(ray_cluster, tmp_path, capsys, monkeypatch):
    # one GPU per run from a cluster without GPUs: exit 2 before anything is written
    path = _study(tmp_path, {"name": "ray", "params": {"num_gpus": 1}})
    assert main(["study", str(path), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "each run asks for gpus=1 but the Ray cluster has 0 GPU(s)" in err and "num_gpus: 0" in err
    assert not (tmp_path / "o1" / "runs").exists()

    # a worker that does not see the study folder the driver wrote says so (here: another token in it)
    from diffnas.core.rundir import write_text
    from diffnas.plugins.executors import ray_cluster as R
    from diffnas.study.executors import TOKEN_FILE

    def elsewhere(out):
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / TOKEN_FILE, "another\n")
        return "the-drivers-token"

    monkeypatch.setattr(R, "write_token", elsewhere)
    out = tmp_path / "o2"
    path = _study(tmp_path, {"name": "ray"})  # num_gpus: 0 on a cluster without GPUs
    assert main(["study", str(path), "--out", str(out), "--no-plots"]) == 1
    io = capsys.readouterr()
    assert f"the study folder {out} is not reachable from worker" in io.out
    assert "put --out on storage all nodes mount" in io.out
    assert not (out / "runs" / IDS[0] / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- SLURM via submitit


@pytest.mark.slow
@needs_submitit
def test_slurm_study_on_submitits_local_executor_requeues_a_preempted_job(reference, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs inherit it: one thread, as the sequential reference
    path = _study(tmp_path, {"name": "slurm", "params": {"cluster": "local", "gpus_per_task": 0, "time_min": 10,
                                                         "poll_s": 0.2}})
    out = tmp_path / "out"
    # SLURM pre-empts by signalling the job (USR2 with submitit's defaults); submitit checkpoints and requeues
    preempt = Interrupter(out / "runs" / IDS[0], signal.SIGUSR2)
    assert main(["study", str(path), "--out", str(out), "--no-plots"]) == 0
    preempt.join()
    text = capsys.readouterr().out
    assert preempt.pid is not None and 1 <= preempt.epochs_at_kill < EPOCHS
    assert f"{IDS[0]}: done (resumed from its checkpoint)" in text
    assert f"{IDS[1]}: done in" in text
    assert "2 run(s) ran, 0 already finished, 0 failed" in text
    # submitit called the task's checkpoint method and requeued the job, which resumed the run
    logs = "".join(p.read_text() for p in sorted((out / "slurm").rglob("*_log.out")))
    assert "Caught signal SIGUSR2" in logs and "Calling checkpoint method" in logs and "Requeued job" in logs
    assert f"{IDS[0]}: resuming from its checkpoint ({preempt.epochs_at_kill} epoch(s) recorded)" in logs
    # the resumed run repeats the uninterrupted one epoch by epoch; the tables are equal
    assert _history(out, IDS[0]) == _history(reference, IDS[0])
    assert _table(out) == _table(reference)


@needs_submitit
def test_slurm_job_array_script(tmp_path, monkeypatch, capsys):
    """What a SLURM cluster receives: one array over the unfinished runs with the study's partition,
    time, GPUs and CPUs per task, and the pre-emption signal submitit requeues on (a stand-in
    ``sbatch`` records the script; ``wait: false`` submits and returns)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/script.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = _study(tmp_path, {"name": "slurm", "params": {"partition": "gpu", "time_min": 90, "gpus_per_task": 1,
                                                         "cpus_per_task": 6, "mem_gb": 16, "array_parallelism": 8,
                                                         "wait": False}})
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "submitted 2 task(s) (4242_0, 4242_1)" in text and "0 run(s) ran, 0 already finished, 0 failed, 2 submitted" in text
    script = (tmp_path / "script.sh").read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=16GB", "#SBATCH --signal=USR2@",
                 "#SBATCH --job-name=diffnas-cluster_smoke"):
        assert line in script, line
    assert f"{out / 'slurm'}" in script and (out / ".diffnas-study-token").exists()
    assert not (out / "runs").exists()


@needs_ray
def test_ray_worker_output_reaches_the_study_log_plainly(tmp_path):
    """The ray executor imports Ray with colour prefixes and log deduplication off (unless the user
    set them): Ray's own log printer then writes each worker line once, plainly."""
    code = textwrap.dedent("""
        import io, os
        from diffnas.plugins.executors.ray_cluster import RayExecutor
        RayExecutor().check()  # imports ray as a study does
        from ray._private import ray_logging, worker
        print(os.environ["RAY_COLOR_PREFIX"], ray_logging.RAY_DEDUP_LOGS)
        dedup = worker.stdout_deduplicator  # the one the driver's log listener uses
        out = io.StringIO()
        for pid in ("11", "12"):  # the same line from two workers: both printed, no "repeated" notice
            batch = {"ip": "1.2.3.4", "localhost": "1.2.3.4", "pid": pid, "task_name": "run_item_task",
                     "lines": ["smoke-seed0: FAILED: non-finite loss"], "is_err": False}
            for b in dedup.deduplicate(batch) + dedup.flush():
                worker.print_worker_logs(b, out)
        print(repr(out.getvalue()))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_COLOR_PREFIX", "RAY_DEDUP_LOGS")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    first, printed = r.stdout.splitlines()[-2:]
    assert first == "0 False"
    text = eval(printed)  # noqa: S307 - our own repr() above
    assert text.count("FAILED: non-finite loss") == 2 and "\x1b[" not in text and "repeated" not in text
    assert "(run_item_task pid=11) smoke-seed0" in text
