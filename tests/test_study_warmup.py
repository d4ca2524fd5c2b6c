"""A study's warm-up stage: one weights-only run, made first, that every run forks from
(``trainer.init_from``), with every executor and with populations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from diffnas import study as S
from diffnas.cli import main
from diffnas.core.outputs import load_checkpoint
from diffnas.study.executors import Outcome
from diffnas.testing import fresh_catalogue, tiny_recipe


def _study(tmp_path: Path, **extra) -> Path:
    recipe = tiny_recipe(data={"dataset": "synthetic", "params": {"num_train": 32, "num_test": 8, "image_size": 8}},
                         trainer={"epochs": 2, "batch_size": 8, "steps_per_epoch": 2})
    doc = {"version": 1, "name": "warm", "axes": {"trainer.seed": [0, 1]},
           "warmup": {"set": {"trainer.epochs": 2, "trainer.warmup_epochs": 2}},
           "runs": [{"label": "DARTS", "id": "darts", "recipe": recipe},
                    {"label": "single", "id": "single", "recipe": recipe, "set": {"update_rule": {"name": "single_level"}}}],
           **extra}
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_warmup_runs_first_and_every_run_forks_from_it(tmp_path, capsys):
    path = _study(tmp_path)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--no-plots", "--no-progress"]) == 0
    warm = out / "warmup"
    ck = load_checkpoint(warm / "checkpoint.pt")
    assert ck["state"]["finished"] and ck["state"]["global_step"] == 4
    # the warm-up trained the weights and left α as initialised (seed 0's)
    rec = [json.loads(x) for x in (warm / "metrics.jsonl").read_text().splitlines()]
    assert rec[0]["alphas"] == rec[-1]["alphas"]
    ids = [p.name for p in sorted((out / "runs").iterdir())]
    assert ids == ["darts-seed0", "darts-seed1", "single-seed0", "single-seed1"]
    for rid in ids:
        prov = json.loads((out / "runs" / rid / "provenance.json").read_text())
        assert prov["init_from"]["path"] == str((warm / "checkpoint.pt").resolve())
        assert prov["init_from"]["global_step"] == 4 and prov["init_from"]["alphas"] is False
    text = capsys.readouterr().out
    assert text.index("the warm-up stage first") < text.index("darts-seed0: starting")
    # run again: nothing re-runs, the warm-up included
    assert main(["study", str(path), "--out", str(out), "--no-plots", "--no-progress"]) == 0
    assert "4 already finished" in capsys.readouterr().out


def test_print_commands_and_run_index_respect_the_warmup(tmp_path, capsys):
    path = _study(tmp_path)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# the warm-up stage") and f"--out {out / 'warmup'}" in lines[1]
    assert lines[2].startswith("# the runs")
    assert main(["study", str(path), "--out", str(out), "--run-index", "0"]) == 2
    assert "run it first: diffnas study" in capsys.readouterr().err
    assert main(["study", str(path), "--out", str(out), "--warmup-only", "--no-progress"]) == 0
    assert main(["study", str(path), "--out", str(out), "--run-index", "0", "--no-progress"]) == 0
    assert (out / "runs" / "darts-seed0" / "result.json").exists()


class _Recorder:
    """An executor that runs items in this process and records the order it was handed them in."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def check(self):
        pass

    def run(self, items, context):
        self.calls.append([it.key for it in items])
        return self.inner.run(items, context)


def test_any_executor_gets_the_warmup_alone_before_the_runs(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    real = S.make_executor
    monkeypatch.setattr(S, "make_executor", lambda *a, **k: _Recorder(real(*a, **k), calls))
    S.run_study(_study(tmp_path), tmp_path / "out", progress=False, report_plots=False, log=lambda m: None)
    assert calls[0] == ["warmup"] and "warmup" not in calls[1] and len(calls) == 2


def test_a_submitted_warmup_holds_the_runs_back(tmp_path, monkeypatch):
    """An executor that submits and returns (slurm with wait: false) gets no run before the warm-up ends."""
    calls: list[list[str]] = []

    class Submitter:
        def check(self):
            pass

        def run(self, items, context):
            calls.append([it.key for it in items])
            return [Outcome(s.id, "submitted", "job 1") for it in items for s in it.specs]

    monkeypatch.setattr(S, "make_executor", lambda *a, **k: Submitter())
    _, outcomes, _ = S.run_study(_study(tmp_path), tmp_path / "out", progress=False, report_plots=False,
                                 log=lambda m: None)
    assert calls == [["warmup"]] and [o.id for o in outcomes] == ["warmup"]


def test_population_members_fork_from_the_warmup(tmp_path):
    path = _study(tmp_path, population={"enabled": True, "max_size": 4})
    out = tmp_path / "out"
    S.run_study(path, out, progress=False, report_plots=False, log=lambda m: None)
    warm = load_checkpoint(out / "warmup" / "checkpoint.pt")
    for rid in ("darts-seed0", "darts-seed1"):
        prov = json.loads((out / "runs" / rid / "provenance.json").read_text())
        assert prov["init_from"]["checkpoint_sha256"] == json.loads(
            (out / "runs" / "darts-seed1" / "provenance.json").read_text())["init_from"]["checkpoint_sha256"]
    assert all(torch.isfinite(v).all() for v in warm["model"].values() if v.is_floating_point())


def test_warmup_block_is_checked(tmp_path, capsys):
    path = _study(tmp_path, warmup={"set": {"trainer.warmup_epochs": -1}, "bogus": 1})
    assert main(["study", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "@ study.warmup" in err
