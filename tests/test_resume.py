"""Crash safety: kill-and-resume is exact, the run directory is locked, non-finite values stop the
run (keeping the last good checkpoint) or are skipped on request.

The kill-and-resume test runs ``python -m diffnas.cli search`` in a subprocess, SIGKILLs it at
random points (after a random number of checkpoint writes plus a random delay, or a random time
after start), resumes with ``--resume`` until the search completes, and compares everything with an
uninterrupted run: the genotype, the α tensors and model weights bitwise, and every line of
``metrics.jsonl`` and ``result.json`` except the wall-clock keys :data:`TIMING_KEYS`.
Set ``DIFFNAS_RESUME_SEED`` to replay a failing sequence of kill points.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import pytest
import torch
import yaml

from diffnas import api
from diffnas.cli import main
from diffnas.core.errors import NonFiniteError
from diffnas.core.hookspecs import hookimpl
from diffnas.core.outputs import CHECKPOINT, TIMING_KEYS, load_checkpoint
from diffnas.core.protocols import Regulariser
from diffnas.testing import fresh_catalogue, tiny_recipe

# --------------------------------------------------------------------------- kill and resume

#: A test plugin installed for the subprocess as a real entry point (a ``.dist-info`` on
#: PYTHONPATH): a regulariser whose loss draws from torch's and Python's global RNGs and whose
#: state (a call counter) goes into every record, so RNG and component-state restoration are tested.
NOISE_PLUGIN = '''
import random

import attrs
import torch

from diffnas.core.hookspecs import hookimpl
from diffnas.core.protocols import Regulariser


class ResumeNoise(Regulariser):
    """Test regulariser: a random alpha term from the global RNGs; counts its calls."""

    @attrs.frozen
    class Config:
        weight: float = 0.05

    phases = ("arch",)

    def __init__(self, config=None):
        super().__init__(config)
        self.calls = 0

    def loss(self, search, phase):
        self.calls += 1
        scale = self.config.weight * (1.0 + random.random())
        return scale * sum((torch.randn_like(a) * a).sum() for a in search.alphas.values())

    def state_dict(self):
        return {**super().state_dict(), "calls": self.calls}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.calls = state["calls"]

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        record["noise_calls"] = self.calls


@hookimpl
def diffnas_register_regularisers(register):
    register("resume_noise", ResumeNoise)
'''

EPOCHS, STEPS = 3, 4


def _kill_recipe() -> dict:
    return tiny_recipe(
        regularisers=[{"name": "resume_noise"}],
        schedules=[{"name": "linear", "params": {"target": "relaxation.tau", "start": 1.0, "end": 0.5}}],
        trainer={"epochs": EPOCHS, "steps_per_epoch": STEPS, "deterministic": True, "eval_batches": 1},
        output={"checkpoint_every_steps": 1, "progress": False, "draw_cells": False},
        diagnostics={"every_steps": 3},  # step records pending across checkpoints: repeated exactly too
    )


def _plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "resume_noise-0.0.dist-info").mkdir(parents=True)
    (site / "resume_noise-0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: resume-noise\nVersion: 0.0\n")
    (site / "resume_noise-0.0.dist-info" / "entry_points.txt").write_text("[diffnas.plugins]\nresume_noise = resume_noise_plugin\n")
    (site / "resume_noise_plugin.py").write_text(textwrap.dedent(NOISE_PLUGIN))
    env = dict(os.environ)
    env.pop("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", None)
    env["DIFFNAS_LOAD_PLUGINS"] = "resume_noise"  # this entry point only
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # same thread count for every run (and no oversubscription on shared CI cores)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffnas.cli", *args]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _outputs(run: Path) -> dict:
    """What must match between runs: timing keys removed, tensors kept whole."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for rec in metrics:
        for k in TIMING_KEYS:
            rec.pop(k, None)
    result = json.loads((run / "result.json").read_text())
    for k in TIMING_KEYS:
        result.pop(k, None)
    ckpt = load_checkpoint(run / CHECKPOINT)
    state = dict(ckpt["state"])
    state["history"] = [{k: v for k, v in rec.items() if k not in TIMING_KEYS} for rec in state["history"]]
    assert state["history"] == metrics
    return {"metrics": metrics, "result": result, "genotype": json.loads((run / "genotype.json").read_text()),
            "alphas": ckpt["alphas"], "model": ckpt["model"], "state": state,
            "optimizers": (ckpt["w_optimizer"]["state"], ckpt["a_optimizer"]["state"])}


def test_kill_and_resume_is_exact(tmp_path):
    env = _plugin_env(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_kill_recipe(), sort_keys=False))

    ref = tmp_path / "ref"
    done = subprocess.run(_cli("search", str(recipe), "--out", str(ref), "--no-progress"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    want = _outputs(ref)
    assert len(want["metrics"]) == EPOCHS
    assert [r["noise_calls"] for r in want["metrics"]] == [STEPS, 2 * STEPS, 3 * STEPS]  # the plugin ran
    assert want["metrics"][0]["hparams"]["relaxation"]["tau"] == 1.0
    assert want["metrics"][-1]["hparams"]["relaxation"]["tau"] == 0.5
    assert set(want["metrics"][0]) & TIMING_KEYS == set()  # removed; the raw line has "time_s"
    assert [[s["global_step"] for s in r["steps"]] for r in want["metrics"]] == [[0, 3], [6], [9, 12]]

    seed = int(os.environ.get("DIFFNAS_RESUME_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    run = tmp_path / "run"
    ckpt = run / CHECKPOINT
    kills, log = 0, []
    args = ("search", str(recipe), "--out", str(run), "--no-progress")
    max_kills = 4  # each restart costs an interpreter start; 4 random kills cover the cases
    for attempt in range(max_kills + 1):
        before = _stamp(ckpt)
        proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # where to kill: after 1-5 checkpoint writes plus 0-40 ms (lands anywhere: mid-step,
        # mid-write, between the checkpoint and metrics.jsonl), or a random time after start
        by_time = before is not None and rng.random() < 0.25
        writes, delay = rng.randint(1, 5), rng.uniform(0.0, 0.04)
        if attempt == max_kills:
            by_time, deadline = False, time.monotonic() + 240.0  # let the last one finish
            writes = 10 ** 6
        else:
            deadline = time.monotonic() + (rng.uniform(0.5, 3.0) if by_time else 240.0)
        seen, last = 0, before
        while proc.poll() is None and time.monotonic() < deadline and (by_time or seen < writes):
            time.sleep(0.002)
            now = _stamp(ckpt)
            if now != last:
                seen, last = seen + 1, now
        if not by_time:
            time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            kills += 1
            state = load_checkpoint(ckpt)["state"] if ckpt.exists() else None
            log.append((attempt, "time" if by_time else f"{writes} writes+{delay * 1000:.0f}ms",
                        state and (state["epoch"], state["step"])))
            assert ckpt.exists(), f"killed before the first checkpoint (seed {seed})"
            args = ("search", "--resume", str(run), "--no-progress")
            continue
        out, err = proc.communicate()
        assert proc.returncode == 0, f"seed {seed}, kills {log}: {err}"
        break
    else:
        pytest.fail(f"the search never finished (seed {seed}, kills {log})")
    assert kills >= 2, f"too few kills to test anything (seed {seed}): {log}"
    assert not list(run.glob(".*.tmp")), "a killed run's temporary files were left behind"

    got = _outputs(run)
    msg = f"diverged after kills {log} (replay with DIFFNAS_RESUME_SEED={seed})"
    assert got["genotype"] == want["genotype"], msg
    assert got["alphas"].keys() == want["alphas"].keys()
    for k in want["alphas"]:
        assert torch.equal(got["alphas"][k], want["alphas"][k]), f"alpha {k} {msg}"
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), f"weight {k} {msg}"
    assert len(got["metrics"]) == EPOCHS, msg
    for i, (a, b) in enumerate(zip(got["metrics"], want["metrics"])):
        assert a == b, f"metrics line {i} {msg}: " + str({k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)})
    assert got["result"] == want["result"], msg
    assert got["state"] == want["state"], msg
    for g, w in zip(got["optimizers"], want["optimizers"]):
        assert g.keys() == w.keys()
        for i in w:
            for k in w[i]:
                assert torch.equal(torch.as_tensor(g[i][k]), torch.as_tensor(w[i][k])), f"optimiser state {k} {msg}"


def test_resume_rewrites_metrics_from_checkpoint(tmp_path):
    """A kill between the epoch-end checkpoint and metrics.jsonl (or a stale longer file) is
    repaired on resume: metrics.jsonl is rewritten from the checkpoint's history first."""
    r = tiny_recipe(trainer={"epochs": 2, "steps_per_epoch": 2, "deterministic": True}, output={"checkpoint_every_steps": 1})
    ref = tmp_path / "ref"
    api.search(r, out=ref, cat=fresh_catalogue())
    run = tmp_path / "run"
    from diffnas.core import outputs

    stop_after = {"n": 0}
    orig = outputs.RunWriter.write_metrics

    def die_after_first_epoch(self):  # simulate a kill right after epoch 0's checkpoint
        stop_after["n"] += 1
        raise KeyboardInterrupt

    outputs.RunWriter.write_metrics = die_after_first_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            api.search(r, out=run, cat=fresh_catalogue())
    finally:
        outputs.RunWriter.write_metrics = orig
    assert not (run / "metrics.jsonl").exists()
    assert load_checkpoint(run / CHECKPOINT)["state"]["epoch"] == 1
    (run / "metrics.jsonl").write_text('{"epoch": 0, "stale": true}\n{"epoch": 1, "stale": true}\n{"epoch": 2}\n')

    seen = {}
    orig_step = outputs.RunWriter.checkpoint

    def spy(self):  # what metrics.jsonl holds when the resumed search first checkpoints
        seen.setdefault("lines", (run / "metrics.jsonl").read_text().splitlines())
        orig_step(self)

    outputs.RunWriter.checkpoint = spy
    try:
        api.resume(run, cat=fresh_catalogue())
    finally:
        outputs.RunWriter.checkpoint = orig_step
    assert len(seen["lines"]) == 1 and "stale" not in seen["lines"][0]
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS}  # noqa: E731
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(run) == strip(ref)


def test_resume_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "nowhere" in err and "Traceback" not in err


# --------------------------------------------------------------------------- lock

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(120)
"""


def test_locked_run_dir_is_refused(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(trainer={"epochs": 1, "steps_per_epoch": 1})))
    run = tmp_path / "run"
    assert main(["search", str(recipe), "--out", str(run), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["search", str(recipe), "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"run directory {run} is in use by another search (locked)" in err, err
        assert "Traceback" not in err
        assert main(["search", "--resume", str(run), "--no-progress"]) == 2
        assert "in use by another search" in capsys.readouterr().err
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == before  # the refused searches wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder (even by SIGKILL): the directory is usable again
    assert main(["search", "--resume", str(run), "--no-progress"]) == 0


# --------------------------------------------------------------------------- non-finite values


class NanAt(Regulariser):
    """Test regulariser: a NaN arch loss at one global step."""

    @attrs.frozen
    class Config:
        step: int = 0

    phases = ("arch",)

    def loss(self, search, phase):
        if search.state.global_step == self.config.step:
            return torch.tensor(float("nan"))
        return None


class NanPlugin:
    @hookimpl
    def diffnas_register_regularisers(self, register):
        register("nan_at", NanAt)


def _nan_recipe(step: int, **trainer) -> dict:
    return tiny_recipe(regularisers=[{"name": "nan_at", "params": {"step": step}}],
                       trainer={"epochs": 3, "steps_per_epoch": 3, **trainer},
                       output={"checkpoint_every_steps": 1, "progress": False, "draw_cells": False})


def _all_finite(ckpt: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ckpt["alphas"].values()) and all(
        torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError) as info:
        api.search(_nan_recipe(4), out=run, cat=fresh_catalogue(NanPlugin()))  # global step 4 = epoch 1, step 1
    msg = str(info.value)
    assert "at epoch 1, step 1 (global step 4)" in msg, msg
    assert f"{run / CHECKPOINT} (saved before epoch 1, step 1) is kept" in msg, msg
    assert f"diffnas search --resume {run}" in msg and "on_nonfinite: skip" in msg
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert (ckpt["state"]["epoch"], ckpt["state"]["step"], ckpt["state"]["global_step"]) == (1, 1, 4)
    assert _all_finite(ckpt)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]


def test_nonfinite_with_epoch_checkpoints_only(tmp_path, monkeypatch, capsys):
    """Without step checkpoints the check runs at the epoch end: the epoch-0 checkpoint is kept
    byte for byte; through the CLI the message goes to stderr with exit status 2."""
    from diffnas.core import outputs

    run = tmp_path / "run"
    cat = fresh_catalogue(NanPlugin())
    monkeypatch.setattr(api, "catalogue", lambda autoload=None: cat)
    saved = []
    orig = outputs.RunWriter.checkpoint
    monkeypatch.setattr(outputs.RunWriter, "checkpoint",
                        lambda self: (orig(self), saved.append((run / CHECKPOINT).read_bytes())))
    recipe = tmp_path / "nan.yaml"
    r = _nan_recipe(4)
    r["output"]["checkpoint_every_steps"] = 0
    recipe.write_text(yaml.safe_dump(r))
    assert main(["search", str(recipe), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss or architecture parameters at epoch 1, step 1 (global step 4)" in err, err
    assert "(saved before epoch 1, step 0) is kept" in err and "Traceback" not in err
    assert len(saved) == 1 and (run / CHECKPOINT).read_bytes() == saved[0]
    assert _all_finite(load_checkpoint(run / CHECKPOINT))


def test_nonfinite_skip_skips_the_batch(tmp_path):
    run = tmp_path / "run"
    summary = api.search(_nan_recipe(4, on_nonfinite="skip"), out=run, cat=fresh_catalogue(NanPlugin()))
    assert summary["epochs_run"] == 3
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_batches", 0) for r in records] == [0, 1, 0]
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert _all_finite(ckpt)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_loss"]) for r in records)


def test_nonfinite_skip_leaves_state_as_before_the_batch(tmp_path):
    """A skipped batch restores weights, α and optimiser states: with the NaN at the last step of
    the run the final α equals that of a run one step shorter."""
    a = api.search(_nan_recipe(8, on_nonfinite="skip"), out=tmp_path / "a", cat=fresh_catalogue(NanPlugin()))
    short = _nan_recipe(99)  # the NaN never fires
    ca = load_checkpoint(tmp_path / "a" / CHECKPOINT)
    # reference: the same run stopped right before step 8 (epoch 2, step 2) via a mid-epoch checkpoint
    from diffnas.core import outputs

    snaps = []
    orig = outputs.RunWriter.checkpoint

    def keep(self):
        orig(self)
        if self.search.state.global_step == 8:
            snaps.append(load_checkpoint(tmp_path / "b" / CHECKPOINT))

    outputs.RunWriter.checkpoint = keep
    try:
        api.search(short, out=tmp_path / "b", cat=fresh_catalogue(NanPlugin()))
    finally:
        outputs.RunWriter.checkpoint = orig
    assert a["epochs_run"] == 3 and len(snaps) == 1
    for k in ca["alphas"]:
        assert torch.equal(ca["alphas"][k], snaps[0]["alphas"][k])
