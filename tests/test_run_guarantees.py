"""What a run directory guarantees (docs/reliability.md): a finished run is never replaced unasked
(``--overwrite`` keeps the old one until the new one has a checkpoint), a resume checks the recipe's
fingerprint and the checkpoint's contents, the lock is never followed through a link, signals say how
to resume, and the commands that read runs (``show``, study reports) survive damaged files."""

from __future__ import annotations

import errno
import json
import os
import signal
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml

from diffnas.cli import main
from diffnas.core import rundir
from diffnas.core.outputs import CHECKPOINT, RunWriter
from diffnas.testing import tiny_recipe

from test_bad_inputs import snapshot

CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def _recipe(tmp_path: Path, epochs: int = 1, **trainer) -> Path:
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump(tiny_recipe(trainer={"epochs": epochs, "steps_per_epoch": 1, **trainer},
                                            output={"draw_cells": False})))
    return r


def _search(*argv: str) -> int:
    return main(["search", *map(str, argv), "--no-progress"])


def _outputs(run: Path) -> dict:
    """The run's files (the lock aside: it holds the pid of the last search that took the directory)."""
    return {k: v for k, v in snapshot(run).items() if k != ".lock"}


@pytest.fixture
def finished(tmp_path, capsys):
    run = tmp_path / "run"
    assert _search(_recipe(tmp_path), "--out", run) == 0
    capsys.readouterr()
    return run


# --------------------------------------------------------------------------- no run replaced unasked


def test_new_search_into_a_finished_run_is_refused(finished, tmp_path, capsys):
    before = _outputs(finished)
    assert _search(_recipe(tmp_path, seed=1), "--out", finished) == 2
    err = capsys.readouterr().err
    assert f"diffnas: run directory {finished} already holds a run (" in err and f"--resume {finished}" in err, err
    assert "--overwrite" in err
    assert _outputs(finished) == before


def test_overwrite_replaces_the_run_and_drops_the_old_one_after_the_first_checkpoint(finished, tmp_path, capsys):
    old = (finished / "recipe.yaml").read_text()
    assert _search(_recipe(tmp_path, seed=1), "--out", finished, "--overwrite") == 0
    assert yaml.safe_load((finished / "recipe.yaml").read_text())["trainer"]["seed"] == 1 != yaml.safe_load(old)["trainer"]["seed"]
    assert not list(finished.glob(".replaced-*"))
    assert len((finished / "metrics.jsonl").read_text().splitlines()) == 1


def test_overwrite_killed_before_the_first_checkpoint_keeps_the_old_run(finished, tmp_path, monkeypatch, capsys):
    before = _outputs(finished)
    real = rundir._atomic_write

    def no_space_for_checkpoints(path, writer, binary):
        if path.name == CHECKPOINT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, writer, binary)

    monkeypatch.setattr(rundir, "_atomic_write", no_space_for_checkpoints)
    assert _search(_recipe(tmp_path, seed=1), "--out", finished, "--overwrite") == 2
    (backup,) = finished.glob(".replaced-*")
    assert {k: v for k, v in before.items()} == {k: v for k, v in _outputs(backup).items()}


def test_same_recipe_into_a_directory_with_only_its_recipe_runs(tmp_path, capsys):
    """A run killed before its first checkpoint left only recipe.yaml: the same recipe may start again
    (what a study does with a pending run)."""
    run = tmp_path / "run"
    assert _search(_recipe(tmp_path), "--out", run) == 0
    for p in run.iterdir():  # what a run killed before its first checkpoint leaves behind
        if p.name not in ("recipe.yaml", "provenance.json", ".lock"):
            p.unlink()
    assert _search(_recipe(tmp_path), "--out", run) == 0


def _train_recipe(tmp_path: Path) -> Path:
    rec = tmp_path / "t.yaml"
    rec.write_text(yaml.safe_dump({"data": {"dataset": "synthetic", "params": {"num_train": 16, "num_test": 8, "image_size": 8}},
                                   "network": {"C": 4, "N": 1},
                                   "trainer": {"epochs": 1, "batch_size": 8, "steps_per_epoch": 1, "device": "cpu"},
                                   "output": {"progress": False}}))
    return rec


def test_train_into_a_finished_training_is_refused(tmp_path, capsys):
    rec = _train_recipe(tmp_path)
    out = tmp_path / "train"
    argv = ["train", CELL, "--recipe", str(rec), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    before = _outputs(out)
    assert main([*argv[:-1], "--set", "trainer.seed=1", "--no-progress"]) == 2
    assert f"run directory {out} already holds a run" in capsys.readouterr().err
    assert _outputs(out) == before
    assert main([*argv, "--set", "trainer.seed=1", "--overwrite"]) == 0
    assert not list(out.glob(".replaced-*"))
    # a training checkpoint with entries of the wrong types, and a non-UTF-8 genotype.json
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    ckpt["optimizer"] = [1]
    torch.save(ckpt, out / CHECKPOINT)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffnas: checkpoint {out / CHECKPOINT} does not fit the training's recipe"), err
    (out / "genotype.json").write_bytes(b"\xff")
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    assert f"genotype file {out / 'genotype.json'} is not UTF-8 text" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume checks


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_says_how_to_resume_and_the_recipe_is_checked(tmp_path, monkeypatch, capsys, sig, code):
    run = tmp_path / "run"
    real = RunWriter.epoch_done

    def then_signal(self, record):
        real(self, record)
        os.kill(os.getpid(), sig)  # delivered to this (the main) thread before the next step

    monkeypatch.setattr(RunWriter, "epoch_done", then_signal)
    assert _search(_recipe(tmp_path, epochs=2), "--out", run) == code
    err = capsys.readouterr().err
    what = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted"
    assert err == f"diffnas: {what}; continue from the last checkpoint with: diffnas search --resume {run}\n", err
    monkeypatch.undo()
    if sig == signal.SIGINT:
        return
    # the recipe of the unfinished run is edited: the resume is refused, then forced and noted
    data = yaml.safe_load((run / "recipe.yaml").read_text())
    data["trainer"]["weights_optimizer"]["lr"] = 0.5
    (run / "recipe.yaml").write_text(yaml.safe_dump(data))
    before = _outputs(run)
    assert _search("--resume", run) == 2
    err = capsys.readouterr().err
    assert f"diffnas: {run / 'recipe.yaml'} differs from the recipe {run / CHECKPOINT} was made with" in err, err
    assert _outputs(run) == before
    assert _search("--resume", run, "--force") == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "notes" not in records[0] and records[1]["notes"][0]["event"] == "resumed with a changed recipe (--force)"


def _damaged(finished: Path, change) -> None:
    ckpt = torch.load(finished / CHECKPOINT, weights_only=True)
    change(ckpt)
    torch.save(ckpt, finished / CHECKPOINT)


def test_nonfinite_alpha_checkpoint_is_refused(finished, capsys):
    def nan_alpha(c):
        for a in c["alphas"].values():
            a.fill_(float("nan"))
        c["state"]["finished"] = False

    _damaged(finished, nan_alpha)
    before = _outputs(finished)
    assert _search("--resume", finished) == 2
    err = capsys.readouterr().err
    assert "the checkpoint holds non-finite values (normal" in err and "it cannot be resumed" in err, err
    assert _outputs(finished) == before


@pytest.mark.parametrize("change,where", [
    (lambda c: c.update(state=[]), "state: expected a mapping, got list []"),
    (lambda c: c["state"].update(history=5), "state.history: expected a list of epoch records (mappings), got int 5"),
    (lambda c: c.update(alphas=torch.zeros(3)), "alphas: expected a mapping, got Tensor"),
    (lambda c: c.update(model="weights"), "model: expected a mapping, got str 'weights'"),
    (lambda c: c.update(rng=None), "rng: expected a mapping, got NoneType None"),
    (lambda c: c.update(loaders=[1]), "loaders: expected a mapping, got list [1]"),
], ids=["state", "history", "alphas", "model", "rng", "loaders"])
def test_checkpoint_entries_of_wrong_types(finished, capsys, change, where):
    """The shape check every checkpoint loader shares names the entry (outputs.checkpoint_problems)."""
    _damaged(finished, change)
    assert _search("--resume", finished) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffnas: checkpoint {finished / CHECKPOINT} is damaged or not a search's checkpoint: "
                          f"{where}"), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- the lock


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_lock_is_never_followed_or_blocked_on(finished, tmp_path, capsys, kind):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (finished / ".lock").unlink()
    if kind == "symlink":
        (finished / ".lock").symlink_to(victim)
    else:
        os.mkfifo(finished / ".lock")
    assert _search("--resume", finished) == 2
    err = capsys.readouterr().err
    want = "is a symbolic link; refusing to use it" if kind == "symlink" else "is not a regular file; refusing to use it"
    assert f"diffnas: lock file {finished / '.lock'} {want}" in err, err
    assert victim.read_text() == "precious\n"


def test_full_disk_while_writing_the_lock(tmp_path, monkeypatch, capsys):
    def full(fd, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "ftruncate", full)
    run = tmp_path / "run"
    assert _search(_recipe(tmp_path), "--out", run) == 2
    err = capsys.readouterr().err
    assert f"diffnas: cannot write {run / '.lock'}: No space left on device (the disk is full" in err, err


# --------------------------------------------------------------------------- reading runs and genotypes


def _show_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    (tmp / "latin1").mkdir()
    (tmp / "latin1" / "genotype.json").write_bytes(b'{"space": "nb201", "cells": "\xe9"}')
    (tmp / "deep").mkdir()
    (tmp / "deep" / "genotype.json").write_text('{"space": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (tmp / "a-file").write_text("x")
    return [
        ("brace", ["{"], "diffnas: not a genotype: not valid JSON: Expecting property name"),
        ("huge_range", ["Genotype(normal=[('skip_connect', 0)], normal_concat=range(0, 10**11), reduce=[], reduce_concat=[])"],
         "diffnas: not a DARTS genotype string: "),
        ("huge_range_literal", ["Genotype(normal=[('skip_connect', 0)], normal_concat=range(0, 100000000000), reduce=[], "
                                "reduce_concat=[])"], "normal_concat=range(0, 100000000000) has 100000000000 items (at most 1000)"),
        ("non_utf8", [str(tmp / "latin1")], f"diffnas: genotype file {tmp / 'latin1' / 'genotype.json'} is not UTF-8 text"),
        ("deep_json", [str(tmp / "deep")], "not a genotype: nested more than 64 levels deep"),
        ("png_onto_file", [CELL, "--png", str(tmp / "a-file")], f"diffnas: --png {tmp / 'a-file'}: not a directory"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["brace", "huge_range", "huge_range_literal", "non_utf8", "deep_json",
                                                "png_onto_file"])
def test_show_refuses_bad_genotypes(tmp_path, capsys, case):
    name, argv, want = _show_cases(tmp_path)[case]
    before = snapshot(tmp_path)
    assert main(["show", *argv]) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert snapshot(tmp_path) == before


def test_truncated_last_metrics_line_is_tolerated(tmp_path, capsys):
    run = tmp_path / "run"
    assert _search(_recipe(tmp_path, epochs=2), "--out", run) == 0
    (run / "genotype.json").unlink()
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + text.splitlines()[0][:40])  # a writer killed mid-line
    capsys.readouterr()
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epochs recorded: 2" in out and "genotype: |" in out


def test_one_corrupt_result_does_not_break_the_study_report(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"version": 1, "name": "s", "axes": {"trainer.seed": [0, 1]},
                                     "runs": [{"id": "a", "label": "A", "recipe": tiny_recipe()}]}))
    out = tmp_path / "out"
    (out / "runs" / "a-seed0").mkdir(parents=True)
    (out / "runs" / "a-seed0" / "result.json").write_text('{"genotype": "|nor_conv')  # truncated
    assert main(["study", str(study), "--out", str(out), "--report-only", "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert f"diffnas: warning: run a-seed0: result file {out / 'runs' / 'a-seed0' / 'result.json'}: not valid JSON" \
        in captured.err, captured.err
    assert "run a-seed0 is left out" in (out / "results.md").read_text()


@pytest.mark.parametrize("link,want", [
    ("runs/a", "run directory {out}/runs/a would lie outside the study folder {out} @ study.runs[0].id"),
    ("recipes", "folder {out}/recipes would lie outside the study folder {out} @ study"),
])
def test_study_never_writes_through_a_link_out_of_its_folder(tmp_path, capsys, link, want):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"version": 1, "name": "s", "runs": [{"id": "a", "label": "A", "recipe": tiny_recipe()}]}))
    out = tmp_path / "out"
    (out / link).parent.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (out / link).symlink_to(tmp_path / "elsewhere")  # a planted link: the study would write outside --out
    before = snapshot(tmp_path)
    for mode in ("--list", "--print-commands"):
        assert main(["study", str(study), "--out", str(out), mode]) == 2
        err = capsys.readouterr().err
        assert want.format(out=out) in err, err
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- command-line details


def test_download_without_network_is_one_message(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    def offline(*a, **k):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump(tiny_recipe(data={"dataset": "cifar10", "source": "torchvision", "download": True,
                                                  "root": str(tmp_path / "data"), "params": {}})))
    assert _search(r, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffnas: cannot download CIFAR-10 into {tmp_path / 'data'}: ") and "Network is unreachable" in err, err
    assert len(err.splitlines()) == 1


def test_e_notation_on_the_command_line_is_a_number(tmp_path, capsys):
    from diffnas import api

    resolved, _ = api.prepare(str(_recipe(tmp_path)), ["trainer.weights_optimizer.lr=1e-3", "trainer.grad_clip=2E+1"])
    assert resolved.recipe.trainer.weights_optimizer.lr == 1e-3 and resolved.recipe.trainer.grad_clip == 20.0
    assert main(["validate", str(_recipe(tmp_path)), "--set", "trainer.weights_optimizer.lr=1e-3"]) == 0


def test_missing_recipe_argument_has_one_prefix(capsys):
    assert main(["search"]) == 2
    assert capsys.readouterr().err == "diffnas: search: a RECIPE (or --resume RUN_DIR) is required\n"
