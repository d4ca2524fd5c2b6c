"""Bad input is refused with exit status 2 and a message naming the problem, never a traceback.

Each file in ``tests/bad_inputs/`` is a malformed recipe whose first lines say what the message
must contain (``# expect: fragment``, one per line; ``{file}`` stands for the recipe's path and
``{tmp}`` for a scratch directory holding a regular file ``a-file``), what it must not contain
(``# absent: fragment``) and, optionally, extra CLI arguments (``# args: ...``). ``bad_inputs/studies/``
holds malformed studies, checked the same way through ``diffnas study STUDY --list``. Every case
also checks that nothing in the scratch directory was written or changed. Full and read-only disks
are simulated in-process. The inputs that would take unbounded time or memory are run in one
subprocess under a memory limit and a timeout (``test_bounded_work``).
"""

from __future__ import annotations

import bz2
import errno
import hashlib
import os
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


def _absent(text: str) -> list[str]:
    return [line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("# absent:")]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its size, mtime and content hash (to prove that a
    refused command wrote and changed nothing)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


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
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffnas: "), err
    assert "Traceback" not in err and len(err) < 4000, err[:4000]
    for fragment in expects:
        assert sub(fragment).replace("{file}", str(recipe)) in err, f"{case.name}: {fragment!r} not in:\n{err}"
    for fragment in _absent(case.read_text()):
        assert fragment not in err, f"{case.name}: {fragment!r} in:\n{err}"
    assert snapshot(tmp_path) == before


STUDIES = sorted((CORPUS / "studies").glob("*.yaml"))


@pytest.mark.parametrize("case", STUDIES, ids=[c.stem for c in STUDIES])
def test_bad_study_exits_2_with_message(case, tmp_path, capsys):
    sub = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    study = tmp_path / case.name
    study.write_text(sub(case.read_text()))
    expects, args = _header(case.read_text())
    before = snapshot(tmp_path)
    assert main(["study", str(study), "--list", "--out", str(tmp_path / "out"), *map(sub, args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffnas: ") and "Traceback" not in err and len(err) < 4000, err[:4000]
    for fragment in expects:
        assert sub(fragment).replace("{file}", str(study)) in err, f"{case.name}: {fragment!r} not in:\n{err}"
    assert snapshot(tmp_path) == before  # nothing written (no pwned file, no run directory)


def test_validate_reports_every_bad_recipe(capsys):
    """``validate`` finds what ``search`` finds before it reads data (dataset params, schedule
    targets and sizes included), with the same messages."""
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
    assert (f"file not found: {path}" if what == "missing" else f"cannot read file {path}") in err
    assert " @ \n" not in err and not err.rstrip().endswith("@")


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



# --------------------------------------------------------------------------- bounded time and memory

BOUNDED = CORPUS / "bounded"
CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"

#: runs each case through ``diffnas.cli.main`` in one process (torch is imported once), each under
#: an alarm; prints one JSON record per case: exit status, stderr, seconds, peak-memory growth
DRIVER = r"""
import contextlib, io, json, resource, signal, sys, time
from diffnas.cli import main
import diffnas.core.limits as limits

class Alarm(Exception):
    pass

def on_alarm(*_):
    raise Alarm()

signal.signal(signal.SIGALRM, on_alarm)
from diffnas import api
api.catalogue()  # warm up: the plugins are imported once, outside the timed cases
out = []
for case in json.load(open(sys.argv[1])):
    for name, value in case.get("limits", {}).items():
        setattr(limits, name, value)
    err = io.StringIO()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    signal.alarm(case["timeout"])
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(case["argv"])
    except Alarm:
        rc = "timeout"
    except BaseException as exc:
        rc = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.alarm(0)
    out.append({"id": case["id"], "rc": rc, "err": err.getvalue()[:20000], "s": time.perf_counter() - t0,
                "rss_growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0})
print(json.dumps(out))
"""


def _bounded_cases(tmp: Path) -> list[dict]:
    """``(id, argv, expected fragment)`` of each input that once took unbounded time or memory."""
    recipe = tmp / "ok.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    big = tmp / "big.yaml"  # 3.5M keys in 50 MB ran for minutes: refused by size before parsing
    with big.open("w") as f:
        f.write("version: 1\ndescription:\n")
        f.writelines(f"  k{i}: {i}\n" for i in range(40_000))
    many = tmp / "many.yaml"  # under the size limit, over the value limit
    many.write_text("version: 1\ndescription: [" + ",".join("0" * 1 for _ in range(60_000)) + "]\n")
    long_value = tmp / "long_value.yaml"  # a 200 KB string where an integer belongs: the message quotes 60 characters
    long_value.write_text(yaml.safe_dump({**tiny_recipe(), "trainer": {"epochs": "x" * 200_000}}))
    deep_train = tmp / "deep_train.yaml"
    deep_train.write_text("trainer: " + "[" * 5000 + "]" * 5000 + "\n")
    fifo = tmp / "fifo.yaml"
    os.mkfifo(fifo)
    run = tmp / "run_fifo"  # a FIFO in place of checkpoint.pt: --resume must not wait for a writer
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe()))
    os.mkfifo(run / "checkpoint.pt")
    nats = tmp / "nats"  # a few KB of bz2 expanding to 64 MB, against a limit lowered to 16 MB
    nats.mkdir()
    (nats / "meta.pickle.pbz2").write_bytes(bz2.compress(bytes(64 << 20)))
    problems = tmp / "many_problems.yaml"  # 3,000 problems: 50 are listed, the rest counted
    problems.write_text(yaml.safe_dump({**tiny_recipe(), "regularisers": [{"name": f"nope{i}"} for i in range(3000)]}))
    study = tmp / "huge_study.yaml"
    study.write_text((CORPUS / "studies" / "too_many_runs.yaml").read_text())
    return [
        {"id": "alias_bomb", "argv": ["validate", str(BOUNDED / "alias_bomb.yaml")],
         "expect": "the document expands (aliases included) to more than 50000 values"},
        {"id": "huge_recipe", "argv": ["validate", str(big)], "expect": f"file {big} is too large"},
        {"id": "many_values", "argv": ["validate", str(many)], "expect": "expands (aliases included) to more than 50000"},
        {"id": "long_value", "argv": ["validate", str(long_value)], "expect": "... (200002 characters) @ recipe.trainer.epochs"},
        {"id": "deep_override", "argv": ["validate", str(recipe), "--set", "description=" + "[" * 5000 + "]" * 5000],
         "expect": "nested more than 64 levels deep (line 1, column 65) @ --set description"},
        {"id": "deep_train_recipe", "argv": ["train", CELL, "--recipe", str(deep_train), "--out", str(tmp / "t")],
         "expect": "nested more than 64 levels deep"},
        {"id": "fifo_recipe", "argv": ["validate", str(fifo)], "expect": f"file {fifo} is not a regular file"},
        {"id": "fifo_checkpoint", "argv": ["search", "--resume", str(run), "--no-progress"],
         "expect": f"checkpoint {run / 'checkpoint.pt'} is not a regular file"},
        {"id": "many_problems", "argv": ["validate", str(problems)], "expect": "  ... and 2950 more", "max_err": 40_000},
        {"id": "study_product", "argv": ["study", str(study), "--list", "--out", str(tmp / "s")],
         "expect": "the study expands to more than 10000 runs"},
        {"id": "bz2_bomb", "argv": ["score", CELL, "--nats-dir", str(nats)], "limits": {"MAX_DECOMPRESSED_BYTES": 16 << 20},
         "expect": "decompresses to more than 16777216 bytes"},
    ]


def test_bounded_work(tmp_path):
    """Inputs that once hung, ran for minutes or filled the memory now fail at once: each case exits
    2 with one short message within 30 s and 1 GiB of extra memory, in a process limited to 6 GiB of
    address space, and nothing in the scratch folder changes."""
    import json
    import resource
    import subprocess
    import sys

    cases = _bounded_cases(tmp_path)
    for c in cases:
        c["timeout"] = 30
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    before = snapshot(tmp_path)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec)], capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_memory, env={**os.environ, "DIFFNAS_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["id"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    for c in cases:
        r = results[c["id"]]
        assert r["rc"] == 2, (c["id"], r["rc"], r["err"][:2000])
        err = r["err"]
        assert err.startswith("diffnas: ") and "Traceback" not in err, (c["id"], err[:4000])
        assert len(err) < c.get("max_err", 4000), (c["id"], len(err), err[:4000])
        assert c["expect"] in err, (c["id"], err)
        assert r["s"] < 30 and r["rss_growth_kb"] < (1 << 20), (c["id"], r["s"], r["rss_growth_kb"])
    print({k: (round(r["s"], 2), r["rss_growth_kb"] // 1024) for k, r in results.items()})  # seconds, MiB
    assert snapshot(tmp_path) == before
