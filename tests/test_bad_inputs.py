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
import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from diffnas.cli import main
from diffnas.core import outputs, rundir
from diffnas.core.genotype import Genotype
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
    deep_run = tmp / "deep_run"  # a 200,000-deep result.json: show refuses it without recursing
    deep_run.mkdir()
    (deep_run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe()))
    (deep_run / "genotype.json").write_text(Genotype.parse(CELL).to_json())
    (deep_run / "result.json").write_text("[" * 200_000 + "]" * 200_000)
    hostile = {}
    for kind in ("dev_zero", "fifo"):  # an NB301 encoding that once filled the memory / hung
        hostile[kind] = _nb301_root(tmp, kind)
    cases = [
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
        {"id": "show_json_deep", "argv": ["show", str(deep_run)], "expect": "nested more than 64 levels deep"},
        {"id": "long_genotype_argument", "argv": ["score", "y" * 5000], "expect": "(5002 characters): no such file"},
        {"id": "bz2_bomb", "argv": ["score", CELL, "--nats-dir", str(nats)], "limits": {"MAX_DECOMPRESSED_BYTES": 16 << 20},
         "expect": "decompresses to more than 16777216 bytes"},
    ]
    if importlib.util.find_spec("onnxruntime") is not None:  # the surrogate's files are read only when it can run
        cases += [{"id": f"nb301_{kind}", "argv": ["score", DARTS, "--data-root", str(hostile[kind])],
                   "expect": "is not a regular file (a FIFO, socket or device)"} for kind in ("dev_zero", "fifo")]
    return cases


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


# --------------------------------------------------------------------------- held-out hostile inputs (issue 22)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished search (checkpoint every step), made once; tests copy it."""
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    assert main(["search", str(_recipe(root)), "--out", str(run), "--no-progress"]) == 0
    return run


def _copy_run(src: Path, dst: Path, mutate_ckpt=None) -> Path:
    import shutil

    import torch

    shutil.copytree(src, dst)
    if mutate_ckpt is not None:
        ckpt = load_checkpoint(dst / CHECKPOINT)
        ckpt["state"]["finished"] = False
        mutate_ckpt(ckpt)
        torch.save(ckpt, dst / CHECKPOINT)
    return dst


def _refused(argv, capsys, *expects, root=None):
    before = snapshot(root) if root is not None else None
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffnas: ") and "Traceback" not in err and len(err) < 4000, err[:4000]
    assert all(len(line) <= 1000 for line in err.splitlines()), max(map(len, err.splitlines()))
    for fragment in expects:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    if root is not None:
        assert snapshot(root) == before
    return err


DAMAGED = {  # (what the checkpoint gets, what the message says)
    "history_str": (lambda c: c["state"].update(history="abc"),
                    "state.history: expected a list of epoch records (mappings), got str 'abc'"),
    "history_entry": (lambda c: c["state"]["history"].append("abc"),
                      "state.history[2]: expected an epoch record (a mapping of plain values): not a mapping"),
    "pending_notes": (lambda c: c.update(pending_notes="garbage"),
                      "pending_notes: expected a list of notes (mappings of plain values), got str 'garbage'"),
    "state": (lambda c: c.update(state="x"), "state: expected a mapping, got str 'x'"),
    "components": (lambda c: c.update(components=None), "components: expected a mapping, got NoneType None"),
}


@pytest.mark.parametrize("command", ["resume", "rank", "population"])
@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_checkpoint_is_refused_by_every_loader(finished_run, tmp_path, capsys, case, command):
    """One shape check (outputs.checkpoint_problems) guards every loader of a search checkpoint:
    ``search --resume``, ``rank`` and ``population --resume`` name the file and key path."""
    mutate, expect = DAMAGED[case]
    run = _copy_run(finished_run, tmp_path / "run", mutate)
    argv = {"resume": ["search", "--resume", str(run), "--no-progress"], "rank": ["rank", str(run), "--samples", "2"],
            "population": ["population", "--resume", str(run)]}[command]
    _refused(argv, capsys, f"checkpoint {run / CHECKPOINT} is damaged or not a search's checkpoint: {expect}", root=tmp_path)


def test_rank_checkpoint_of_another_recipe(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["search_space"]["params"]["C"] = 8
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    _refused(["rank", str(run), "--samples", "2"], capsys,
             f"checkpoint {run / CHECKPOINT} does not fit the run's recipe {run / 'recipe.yaml'} (RuntimeError: Error(s) "
             "in loading state_dict", "size mismatch", root=tmp_path)


RUN_FILES = {  # file, content, message
    "result_list": ("result.json", "[1, 2]\n", "expected a JSON object (a search's summary), got list"),
    "metrics_list": ("metrics.jsonl", "[1, 2]\n", "line 1: expected a JSON object (one record), got list [1, 2]"),
    "metrics_str": ("metrics.jsonl", '"abc"\n', "line 1: expected a JSON object (one record), got str 'abc'"),
    "recipe_list": ("recipe.yaml", "- 1\n", "recipe.yaml: expected a mapping (a recipe), got list"),
    "show_json_deep": ("result.json", '{"a": ' * 900 + "1" + "}" * 900 + "\n", "nested more than 64 levels deep"),
}


@pytest.mark.parametrize("case", sorted(RUN_FILES))
def test_run_files_of_the_wrong_shape(finished_run, tmp_path, capsys, case):
    """``show`` and ``api.load_run`` refuse a run file of the wrong JSON/YAML shape by name."""
    from diffnas import api
    from diffnas.core.errors import RunError

    name, text, expect = RUN_FILES[case]
    run = _copy_run(finished_run, tmp_path / "run")
    (run / name).write_text(text)
    if name == "metrics.jsonl":
        (run / "genotype.json").unlink()  # show reads the genotype from the last record
    _refused(["show", str(run)], capsys, expect, root=tmp_path)
    with pytest.raises(RunError, match=re.escape(expect)):
        api.load_run(run)


def test_show_tolerates_values_of_the_wrong_type(finished_run, tmp_path, capsys):
    """An edited result.json or record with values of the wrong type is shown, not a traceback."""
    import json

    run = _copy_run(finished_run, tmp_path / "run")
    res = json.loads((run / "result.json").read_text())
    res.update(stop_reason=["x"], search_time_s="abc", pictures=[1, {}], scores=[1])
    (run / "result.json").write_text(json.dumps(res))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec.update(entropy=[1], scores=[2], train_loss="x", epoch=1.5)
    (run / "metrics.jsonl").write_text(json.dumps(rec) + "\n" + lines[1] + "\n")
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "search time: 'abc' s" in out and "stopped early: ['x']" in out


def test_tensorboard_stays_inside_the_run_directory(finished_run, tmp_path, capsys):
    """A resumed run refuses a symlinked ``RUN_DIR/tensorboard`` (nothing written outside); a custom
    subdir is a run output: refused in a folder holding only it, moved aside by ``--overwrite``."""
    pytest.importorskip("tensorboard")
    outside = tmp_path / "outside"
    outside.mkdir()
    run = _copy_run(finished_run, tmp_path / "run",
                    lambda c: c["state"].update(epoch=1, history=c["state"]["history"][:1]))
    rec = yaml.safe_load((run / "recipe.yaml").read_text())
    rec["loggers"] = [{"name": "tensorboard", "params": {}}]
    (run / "recipe.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))
    (run / "tensorboard").symlink_to(outside, target_is_directory=True)
    _refused(["search", "--resume", str(run), "--no-progress", "--force"], capsys,
             f"TensorBoard folder {run / 'tensorboard'} is a symbolic link; refusing to write through it")
    assert not list(outside.iterdir())
    recipe = tmp_path / "tb.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(trainer={"epochs": 1}, loggers=[{"name": "tensorboard", "params": {"subdir": "tb/x"}}])))
    held = tmp_path / "held"
    (held / "tb" / "x").mkdir(parents=True)
    (held / "tb" / "x" / "events.old").write_text("old")
    _refused(["search", str(recipe), "--out", str(held), "--no-progress"], capsys,
             f"run directory {held} already holds a run (tb/x)")
    assert (held / "tb" / "x" / "events.old").read_text() == "old"
    assert main(["search", str(recipe), "--out", str(held), "--no-progress", "--overwrite"]) == 0
    assert [p.name.startswith("events.out.tfevents.") for p in (held / "tb" / "x").iterdir()] == [True]


LONG = "x" * 5000


@pytest.mark.parametrize("command", ["show", "score", "train"])
def test_long_text_that_is_no_genotype(tmp_path, capsys, command):
    """5,000 characters are no path (ENAMETOOLONG) and no genotype: one short message."""
    argv = [command, LONG] + (["--out", str(tmp_path / "t")] if command == "train" else [])
    _refused(argv, capsys, "'xxxxxxxxxx", "(5002 characters): no such file or run directory, and not a genotype string",
             root=tmp_path)


def test_genotype_limits():
    from diffnas.core.errors import DiffnasError
    from diffnas.core.genotype import Genotype

    with pytest.raises(DiffnasError, match=r"bad edge 'nor_conv_3x3~9999.*expected op~input with an input node in 0..0"):
        Genotype.parse("|nor_conv_3x3~" + "9" * 5000 + "|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")

    def darts(n):
        e = [("sep_conv_3x3", 0)] * n
        return f"Genotype(normal={e!r}, normal_concat=[2], reduce={e!r}, reduce_concat=[2])"

    assert len(Genotype.parse(darts(1000)).cells["normal"].edges) == 1000  # the documented limit, exactly
    with pytest.raises(DiffnasError, match=r"a cell lists more than 1000 edges \(the limit\)"):
        Genotype.parse(darts(1001))
    with pytest.raises(DiffnasError, match="a node number must be in 0..10000"):
        Genotype.from_dict({"space": "x", "cells": {"normal": {"edges": [[0, 10**4000, "op"]], "concat": [1]}}})


DARTS = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
         "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
         "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
         "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


@pytest.mark.parametrize("cell,expect", [
    (DARTS.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[]"),
     "normal cell: its output concatenates []; the NB301 space's cells concatenate nodes [2, 3, 4, 5]"),
    (DARTS.replace("('dil_conv_3x3', 2)]", "('dil_conv_3x3', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]"),
     "normal cell: node(s) [6] have inputs; the NB301 space has intermediate nodes 2..5 only"),
])
def test_nb301_refuses_cells_outside_its_space(tmp_path, capsys, cell, expect):
    pytest.importorskip("onnxruntime")
    from diffnas.benchmarks.nb301 import encode_cell
    from diffnas.core.errors import DiffnasError
    from diffnas.core.genotype import Genotype

    with pytest.raises(DiffnasError, match=re.escape(expect)):
        encode_cell(Genotype.parse(cell), "normal")
    _refused(["score", cell], capsys, f"nb301: {expect}", root=tmp_path)


def _nb301_root(tmp: Path, encoding: str) -> Path:
    """A data root whose nb301_surrogate/encoding_v2.json is hostile (the model is the embedded one)."""
    import json

    from diffnas.benchmarks.nb301 import ENCODING_FILE, MODEL_FILE, SUBDIR
    from diffnas.data.root import embedded_path

    d = tmp / f"root_{encoding}" / SUBDIR
    d.mkdir(parents=True)
    (d / MODEL_FILE).symlink_to(embedded_path(SUBDIR) / MODEL_FILE)
    enc = d / ENCODING_FILE
    if encoding == "dev_zero":
        enc.symlink_to("/dev/zero")
    elif encoding == "fifo":
        os.mkfifo(enc)
    else:
        codes = json.loads((embedded_path(SUBDIR) / ENCODING_FILE).read_text())
        first = next(iter(codes))
        codes[first] = {k: "x" for k in codes[first]}
        enc.write_text(json.dumps(codes))
    return d.parent


@pytest.mark.parametrize("encoding,expect", [("dev_zero", "is not a regular file (a FIFO, socket or device)"),
                                             ("fifo", "is not a regular file (a FIFO, socket or device)"),
                                             ("wrong_types", "must map value names to integer codes (0..2^31-1)")])
def test_nb301_hostile_encoding_file(tmp_path, capsys, encoding, expect):
    pytest.importorskip("onnxruntime")
    root = _nb301_root(tmp_path, encoding)
    _refused(["score", DARTS, "--data-root", str(root)], capsys, "no score for this 'darts' genotype: nb301:", expect,
             root=tmp_path)


def test_message_lines_are_capped(tmp_path, capsys):
    """A 5,000-character unknown name is quoted in 60 characters; no line passes 1,000 (errors.problem_line)."""
    from diffnas.core.errors import problem_line

    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump(tiny_recipe(regularisers=[{"name": LONG}])))
    err = _refused(["validate", str(r)], capsys, "unknown regulariser 'xxxx", "(5002 characters)")
    assert "x" * 61 not in err
    assert len(problem_line("y" * 5000, "recipe." + "k" * 5000)) <= 1000


def test_study_on_a_read_only_folder(tmp_path, capsys, monkeypatch):
    """``--out`` on a read-only folder: exit 2 naming the folder (simulated: the tests may run as root)."""
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"version": 1, "name": "ro", "runs": [{"id": "a", "label": "A", "recipe": tiny_recipe()}]}))
    out = tmp_path / "ro" / "out"
    real = Path.mkdir

    def mkdir(self, *a, **kw):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    _refused(["study", str(study), "--out", str(out), "--no-progress"], capsys,
             f"cannot make the study folder {out}: Read-only file system", root=tmp_path)


def test_ray_address_that_refuses(tmp_path, capsys):
    """A Ray address that refuses connections fails at once, before the study writes anything."""
    pytest.importorskip("ray")
    import time

    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"version": 1, "name": "ray", "runs": [{"id": "a", "label": "A", "recipe": tiny_recipe()}],
                                     "executor": {"name": "ray", "params": {"address": "127.0.0.1:1"}}}))
    t0 = time.perf_counter()
    _refused(["study", str(study), "--out", str(tmp_path / "out"), "--no-progress"], capsys,
             "executor 'ray': cannot reach the Ray cluster at '127.0.0.1:1': Connection refused", root=tmp_path)
    assert time.perf_counter() - t0 < 30


def test_api_arguments_of_the_wrong_type(tmp_path):
    """``diffnas.api`` raises DiffnasError (also a TypeError) naming the argument, as its docstring promises."""
    from diffnas import api
    from diffnas.core.errors import DiffnasError

    r = _recipe(tmp_path)
    cases = [(lambda: api.search(5), "recipe: expected a path (str or os.PathLike), got int 5"),
             (lambda: api.prepare(r, [None]), "overrides[0]: expected a string, got NoneType None"),
             (lambda: api.prepare(r, "trainer.epochs=1"), "overrides: expected a list of strings, got str"),
             (lambda: api.search(r, out=5), "out: expected a path"),
             (lambda: api.search_population([r], [tmp_path / "a", tmp_path / "b"]),
              "one run directory (or None) per recipe, got 1 recipe(s) and 2 run directories"),
             (lambda: api.search_population(r, [None]), "recipes: expected a list, got PosixPath"),
             (lambda: api.load_run(5), "run_dir: expected a path"),
             (lambda: api.resume(None), "run_dir: expected a path"),
             (lambda: api.score(3.5), "target: expected a path"),
             (lambda: api.resume_population([tmp_path, 7]), "run_dirs[1]: expected a path")]
    for call, expect in cases:
        with pytest.raises(DiffnasError, match=re.escape(expect)) as info:
            call()
        assert isinstance(info.value, TypeError)
    assert not (tmp_path / "a").exists()
