"""Bad input is refused with exit status 2 and a message naming the problem, never a traceback.

Each file in ``tests/bad_inputs/`` is a malformed recipe whose first lines say what the message
must contain (``# expect: fragment``, one per line; ``{file}`` stands for the recipe's path and
``{tmp}`` for a scratch directory holding a regular file ``a-file``) and, optionally, extra CLI
arguments (``# args: ...``). ``bad_inputs/studies/`` holds malformed studies, checked the same way
through ``diffnas study STUDY --list``. Full and read-only disks are simulated in-process.
"""

from __future__ import annotations

import errno
import shlex
from pathlib import Path

import pytest
import yaml

from diffnas.cli import main
from diffnas.core import outputs, rundir
from diffnas.core.outputs import CHECKPOINT, load_checkpoint
from diffnas.testing import tiny_recipe

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(CORPUS.glob("*.yaml"))


def _header(text: str) -> tuple[list[str], list[str]]:
    expects, args = [], []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].strip().partition(":")
        if key == "expect":
            expects.append(value.strip())
        elif key == "args":
            args += shlex.split(value)
    return expects, args


def test_corpus_is_there():
    assert len(CASES) >= 20 and len(list((CORPUS / "studies").glob("*.yaml"))) >= 5
    for case in CASES:
        assert _header(case.read_text())[0], f"{case.name} has no '# expect:' line"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_recipe_exits_2_with_message(case, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a directory\n")
    sub = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    recipe = tmp_path / case.name
    recipe.write_text(sub(case.read_text()))
    expects, args = _header(case.read_text())
    out = tmp_path / "out"
    argv = ["search", str(recipe), "--no-progress", *map(sub, args)]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffnas: "), err
    assert "Traceback" not in err
    for fragment in expects:
        assert sub(fragment).replace("{file}", str(recipe)) in err, f"{case.name}: {fragment!r} not in:\n{err}"
    assert not (out / "metrics.jsonl").exists()


STUDIES = sorted((CORPUS / "studies").glob("*.yaml"))


@pytest.mark.parametrize("case", STUDIES, ids=[c.stem for c in STUDIES])
def test_bad_study_exits_2_with_message(case, tmp_path, capsys):
    sub = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    study = tmp_path / case.name
    study.write_text(sub(case.read_text()))
    expects, args = _header(case.read_text())
    assert main(["study", str(study), "--list", *map(sub, args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffnas: ") and "Traceback" not in err, err
    for fragment in expects:
        assert sub(fragment).replace("{file}", str(study)) in err, f"{case.name}: {fragment!r} not in:\n{err}"
    assert not (tmp_path / "pwned").exists()


def test_validate_reports_every_bad_recipe(capsys):
    """``validate`` finds what ``search`` finds before it reads data (dataset params and schedule
    targets included), with the same messages."""
    recipes = [c for c in CASES if "{tmp}" not in c.read_text() and "# args:" not in c.read_text()]
    assert main(["validate", *map(str, recipes)]) == 2
    err = capsys.readouterr().err
    for c in recipes:
        assert str(c) in err, c.name
        for fragment in _header(c.read_text())[0]:
            assert fragment.replace("{file}", str(c)) in err, f"{c.name}: {fragment!r}"


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_recipe_file(tmp_path, capsys, what):
    path = tmp_path / "recipe.yaml"
    if what == "directory":
        path.mkdir()
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"invalid recipe {path}" in err
    assert ("file not found" if what == "missing" else "cannot read file") in err


# --------------------------------------------------------------------------- full / read-only disk


def _recipe(tmp_path: Path) -> Path:
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump(tiny_recipe(trainer={"epochs": 2, "steps_per_epoch": 2},
                                            output={"checkpoint_every_steps": 1, "draw_cells": False})))
    return r


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"),
                                        (errno.EROFS, "Read-only file system")])
def test_disk_error_on_first_write(tmp_path, monkeypatch, capsys, code, words):
    def refuse(path, writer, binary):
        raise OSError(code, words)

    monkeypatch.setattr(rundir, "_atomic_write", refuse)
    run = tmp_path / "run"
    assert main(["search", str(_recipe(tmp_path)), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"diffnas: cannot write {run / 'recipe.yaml'}: {words}" in err, err
    assert "Traceback" not in err


def test_disk_full_mid_checkpoint_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    """The third checkpoint write fails half-way: the CLI exits 2 naming checkpoint.pt, the second
    checkpoint is intact and loads, and no temporary file is left behind."""
    real = rundir._atomic_write
    calls = {"n": 0}
    good = {}

    def flaky(path, writer, binary):
        if path.name == CHECKPOINT:
            calls["n"] += 1
            if calls["n"] == 3:
                good["bytes"] = path.read_bytes()

                def half(f):
                    f.write(b"PK\x03\x04 half a checkpoint")
                    raise OSError(errno.ENOSPC, "No space left on device")

                return real(path, half, binary)
        return real(path, writer, binary)

    monkeypatch.setattr(rundir, "_atomic_write", flaky)
    run = tmp_path / "run"
    assert main(["search", str(_recipe(tmp_path)), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run / CHECKPOINT}: No space left on device (the disk is full" in err, err
    assert "Traceback" not in err
    assert (run / CHECKPOINT).read_bytes() == good["bytes"]
    assert load_checkpoint(run / CHECKPOINT)["state"]["global_step"] == 2
    assert not list(run.glob(".*.tmp"))


def test_oserror_from_a_writer_becomes_run_error(tmp_path, monkeypatch, capsys):
    """Even an OSError raised outside atomic_write (here: the metrics writer) is reported cleanly."""
    def boom(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_text", boom)
    run = tmp_path / "run"
    assert main(["search", str(_recipe(tmp_path)), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run / 'recipe.yaml'}: No space left on device" in err, err

