"""Studies: expansion, executors, resume, SLURM-style commands, tables, plots, diagnostics."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffnas.cli import main
from diffnas.study import load_study
from diffnas.plugins.executors.local import GpuExecutor
from diffnas.study.executors import Context, WorkItem
from diffnas.study.schema import RunSpec
from diffnas.testing import build_tiny_search, fresh_catalogue, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


def _tiny(**kw):
    base = {"data": {"dataset": "synthetic", "params": {"num_train": 32, "num_test": 8, "image_size": 8}},
            "trainer": {"epochs": 2, "batch_size": 8, "device": "cpu", "steps_per_epoch": 2}}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v}
    return tiny_recipe(**base)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A study of two tiny runs (softmax + bi-level, synthetic data; seeds 0 and 1) with diagnostics on."""
    d = tmp_path_factory.mktemp("study")
    recipe = _tiny(diagnostics={"hessian_eigenvalue": True, "gradient_correlation": True, "alpha_gradients": True,
                                "iterations": 3,
                                "every_steps": 1, "step_hessian": True})
    study = {"version": 1, "name": "smoke", "out": str(d / "out"), "axes": {"trainer.seed": [0, 1]},
             "runs": [{"label": "DARTS tiny", "id": "darts", "recipe": recipe, "published": 54.30,
                       "published_source": "NB201 paper"}]}
    path = d / "smoke.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path, d / "out"


def _result(out: Path, run_id: str) -> dict:
    return json.loads((out / "runs" / run_id / "result.json").read_text())


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.exists(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 4000, path
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.02, f"{path} looks blank"


def test_study_end_to_end(smoke, capsys):
    path, out = smoke
    ids = ["darts-seed0", "darts-seed1"]
    assert [s.id for s in load_study(path).specs] == ids

    # --print-commands: one `diffnas search` line per pending run, nothing runs
    assert main(["study", str(path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("diffnas search ") for line in lines)
    for rid, line in zip(ids, lines):
        assert f"recipes/{rid}.yaml" in line and f"--out {out / 'runs' / rid}" in line
        assert (out / "recipes" / f"{rid}.yaml").exists()
    assert not (out / "runs").exists()

    # --run-index 1: a SLURM array task runs only its run
    assert main(["study", str(path), "--run-index", "1"]) == 0
    assert (out / "runs" / ids[1] / "result.json").exists()
    assert not (out / "runs" / ids[0]).exists()
    stamp = (out / "runs" / ids[1] / "result.json").stat().st_mtime_ns
    capsys.readouterr()

    # the whole study: runs only the missing run, then writes the report
    assert main(["study", str(path)]) == 0
    text = capsys.readouterr().out
    assert "1 run(s) ran, 1 already finished, 0 failed" in text
    assert (out / "runs" / ids[1] / "result.json").stat().st_mtime_ns == stamp

    # table values against the runs' result.json
    res = [_result(out, r) for r in ids]
    (row,) = _rows(out / "results.csv")
    c10 = [r["scores"]["nb201"]["cifar10_test"] for r in res]
    m = sum(c10) / 2
    s = math.sqrt(sum((v - m) ** 2 for v in c10) / 2)
    assert row["method"] == "DARTS tiny" and row["runs_done"] == "2" and row["seeds"] == "0 1"
    assert float(row["c10_test_mean"]) == pytest.approx(m, abs=1e-3)
    assert float(row["c10_test_std"]) == pytest.approx(s, abs=1e-3)
    assert float(row["c100_test_mean"]) == pytest.approx(sum(r["scores"]["nb201"]["cifar100_test"] for r in res) / 2, abs=1e-3)
    assert float(row["c10_test_published"]) == 54.3
    free = {"none", "skip_connect", "avg_pool_3x3", "max_pool_3x3"}
    pf = [sum(op in free for _, _, op in r["genotype_json"]["cells"]["normal"]["edges"]) for r in res]
    assert float(row["param_free_mean"]) == pytest.approx(sum(pf) / 2)
    assert float(row["search_time_s_mean"]) == pytest.approx(sum(r["search_time_s"] for r in res) / 2, abs=0.1)
    runs = _rows(out / "runs.csv")
    assert [r["id"] for r in runs] == ids and [r["genotype"] for r in runs] == [r["genotype"] for r in res]
    md = (out / "results.md").read_text()
    assert "| DARTS tiny | 2/2 |" in md and "54.30" in md and "NB201 paper" in md
    # the genotypes' own | are escaped: every row of the runs table has its 9 cells
    import re
    run_lines = [ln for ln in md.splitlines() if any(ln.startswith(f"| {i} |") for i in ids)]
    assert len(run_lines) == 2 and all(len(re.findall(r"(?<!\\)\|", ln)) == 10 for ln in run_lines)
    assert f"`{res[0]['genotype'].replace('|', chr(92) + '|')}`" in md

    # costly diagnostics were recorded per epoch
    rec = [json.loads(x) for x in (out / "runs" / ids[0] / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["hessian_eigenvalue"]) for r in rec)
    assert all(-1.0 - 1e-6 <= r["gradient_correlation"]["cosine"] <= 1.0 + 1e-6 for r in rec)

    # plots exist and are not blank
    plots = out / "plots"
    assert all(r["gradient_correlation"]["against"] == "valid" and len(r["alpha_gradients"]["normal"]) == 5 for r in rec)
    for f in ["nb201_test_per_epoch.png", "collapse.png", "collapse_per_step.png", *(f"alphas_{r}_normal.png" for r in ids),
              *(f"alpha_grads_{r}_normal.png" for r in ids),
              *(f"cells/{r}_normal.png" for r in ids)]:
        _assert_png(plots / f)

    # step records: the study's steps.csv is the mean ± std over the seeds at each global step
    from diffnas import api

    per_run = [api.load_run(out / "runs" / r) for r in ids]
    steps = _rows(out / "steps.csv")
    assert [int(r["global_step"]) for r in steps] == [0, 1, 2, 3, 4] and {r["runs"] for r in steps} == {"2"}
    for row in steps:
        g = int(row["global_step"])
        for key in ("parameter_free_share.normal", "skip_weight.normal", "scores.nb201.cifar10_test", "hessian_eigenvalue"):
            vals = [run.step_column(key)[run.step_column("global_step").index(g)] for run in per_run]
            m = sum(vals) / 2
            assert float(row[f"{key}_mean"]) == pytest.approx(m, abs=1e-5), (g, key)
            assert float(row[f"{key}_std"]) == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in vals) / 2), abs=1e-5)
    assert "scores.nb201.index_mean" not in steps[0]

    # a second invocation runs nothing; nothing is pending
    assert main(["study", str(path)]) == 0
    assert "0 run(s) ran, 2 already finished" in capsys.readouterr().out
    assert main(["study", str(path), "--print-commands"]) == 0
    assert capsys.readouterr().out.strip() == ""

    # an interrupted run (checkpoint, no result.json) resumes from its checkpoint
    genotype = res[0]["genotype"]
    (out / "runs" / ids[0] / "result.json").unlink()
    assert main(["study", str(path), "--print-commands"]) == 0
    assert capsys.readouterr().out.strip() == f"diffnas search --resume {out / 'runs' / ids[0]} --no-progress"
    assert main(["study", str(path), "--no-plots"]) == 0
    assert "darts-seed0: resuming from its checkpoint" in capsys.readouterr().out
    assert _result(out, ids[0])["genotype"] == genotype

    # --report-only regenerates the tables from the run directories
    (out / "results.md").unlink()
    assert main(["study", str(path), "--report-only", "--no-plots"]) == 0
    assert "| DARTS tiny | 2/2 |" in (out / "results.md").read_text()
    assert main(["study", str(path), "--list"]) == 0
    assert "done" in capsys.readouterr().out


def test_axes_ids_groups_and_overrides(tmp_path):
    study = {"runs": [{"label": "A", "recipe": _tiny(), "set": {"trainer.epochs": 3},
                       "axes": {"trainer.arch_optimizer.lr": [0.001, 1.0e-5]}},
                      {"label": "B/x", "recipe": _tiny()}],
             "axes": {"trainer.seed": [0, 2]}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(study))
    specs = load_study(p, tmp_path / "o", fresh_catalogue()).specs
    assert [s.id for s in specs] == ["a-seed0-lr0.001", "a-seed0-lr1e-05", "a-seed2-lr0.001", "a-seed2-lr1e-05",
                                     "b_x-seed0", "b_x-seed2"]
    assert [s.index for s in specs] == list(range(6))
    assert specs[1].recipe["trainer"]["arch_optimizer"]["lr"] == 1e-5 and specs[1].recipe["trainer"]["epochs"] == 3
    assert specs[1].group == "A, lr=1e-05" and specs[4].group == "B/x"
    assert specs[2].out_dir == tmp_path / "o" / "runs" / "a-seed2-lr0.001"
    assert specs[2].recipe["output"]["dir"] == str(specs[2].out_dir)


def test_invalid_study_exits_2_with_paths(tmp_path, capsys):
    bad = {"runs": [{"label": "x", "recipe": "missing.yaml", "published": {"cifar10": 1.0}},
                    {"label": "y", "recipe": _tiny(trainer={"epochs": -1}), "colour": 3}],
           "axes": {"trainer.seed": []}, "executor": {"name": "slrum"}}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    assert main(["study", str(p), "--print-commands"]) == 2
    err = capsys.readouterr().err
    assert f"invalid study {p}" in err
    assert "unknown published key 'cifar10'" in err and "@ study.runs[0].published" in err
    assert "@ study.axes.trainer.seed" in err
    p.write_text(yaml.safe_dump({"runs": [{"label": "x", "recipe": _tiny(trainer={"epochs": -1})}],
                                 "executor": {"name": "slrum"}}))
    assert main(["study", str(p), "--print-commands"]) == 2
    assert "unknown executor 'slrum'" in (err := capsys.readouterr().err) and "did you mean 'slurm'" in err
    assert "@ study.executor.name" in err and "'epochs' must be > 0" in err  # reported together
    good = {"runs": [{"label": "x", "recipe": "missing.yaml"},
                     {"label": "y", "recipe": _tiny(trainer={"epochs": -1})}]}
    p.write_text(yaml.safe_dump(good))
    assert main(["study", str(p), "--print-commands"]) == 2
    err = capsys.readouterr().err
    assert f"recipe missing.yaml: file not found: {tmp_path / 'missing.yaml'} @ study.runs[0].recipe" in err
    assert "'epochs' must be > 0" in err and "@ study.runs[1]:recipe.trainer" in err


def test_gpu_executor_one_subprocess_per_gpu_slot(tmp_path):
    script = "\n".join([
        "import os, sys, pathlib",
        "d = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])",
        "d.mkdir(parents=True, exist_ok=True)",
        "(d / 'gpu.txt').write_text(os.environ['CUDA_VISIBLE_DEVICES'])",
        "sys.exit(3) if d.name == 'bad' else (d / 'result.json').write_text('{}')",
    ])
    specs = [RunSpec(i, rid, rid, rid, {}, {"trainer": {"seed": 0}}, tmp_path / "runs" / rid, 0)
             for i, rid in enumerate(["r0", "r1", "r2", "bad", "old"])]
    from diffnas.study import materialise

    materialise(specs, tmp_path)
    # "r1" and "r2" form one item of two runs: one slot runs both commands, one after another
    items = [WorkItem("r0", (specs[0],)), WorkItem("pair", (specs[1], specs[2])), WorkItem("bad", (specs[3],)),
             WorkItem("old", (specs[4],))]
    # "old" finished after the items were made (another launcher): the worker skips it when it comes
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "result.json").write_text("{}")
    ex = GpuExecutor(GpuExecutor.Config(gpus=["7", "8"], per_gpu=1))
    ex.program = [sys.executable, "-c", script]
    logs: list[str] = []
    outcomes = {o.id: o.status for o in ex.run(items, Context(tmp_path, log=logs.append))}
    assert outcomes == {"r0": "done", "r1": "done", "r2": "done", "bad": "failed", "old": "skipped"}
    assert {(tmp_path / "runs" / r / "gpu.txt").read_text() for r in ("r0", "r1", "r2", "bad")} <= {"7", "8"}
    assert (tmp_path / "runs" / "r1" / "gpu.txt").read_text() == (tmp_path / "runs" / "r2" / "gpu.txt").read_text()
    assert sum("pair on GPU" in line for line in logs) == 2 and (tmp_path / "logs" / "pair.log").exists()
    assert not (tmp_path / "runs" / "old" / "gpu.txt").exists()
    assert (tmp_path / "recipes" / "r0.yaml").exists()


def test_hessian_eigenvalue_matches_explicit_hessian():
    from diffnas.plugins import diagnostics as D

    torch.manual_seed(0)
    r = _tiny()
    r["trainer"]["batch_size"] = 4
    s = build_tiny_search(r)
    s.model.double()
    for loader in (s.train_loader, s.valid_loader):
        loader.mean, loader.std = loader.mean.double(), loader.std.double()
    with torch.no_grad():
        for a in s.alphas.values():
            a.copy_(0.5 * torch.randn_like(a))
    before = {k: v.detach().clone() for k, v in s.alphas.items()}
    rng = torch.get_rng_state()
    lam = D.hessian_eigenvalue(s, batches=1, iterations=40)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v.detach()) for k, v in s.alphas.items())
    f = D._val_loss_fn(s, D.fixed_batches(s.valid_loader, 1)[0], D.MEASURE_SEED)
    a0 = s.alphas["normal"].detach()
    H = torch.autograd.functional.hessian(lambda a: f([a]), a0).reshape(a0.numel(), a0.numel())
    ev = torch.linalg.eigvalsh(H)
    dominant = float(ev[ev.abs().argmax()])
    assert lam == pytest.approx(dominant, rel=1e-3, abs=1e-6)

    # gradient correlation: the same batch gives cosine 1 and inner = ‖g‖²; bi-level batches differ
    b = D.fixed_batches(s.train_loader, 1)[0]
    same = D.gradient_correlation(s, pairs=[(b, b)])
    assert same["cosine"] == pytest.approx(1.0, abs=1e-9) and same["inner"] > 0
    bi = D.gradient_correlation(s, batches=1)
    assert -1.0 <= bi["cosine"] < 1.0 - 1e-6


def test_bundled_studies_are_valid():
    studies = ROOT / "examples" / "studies"
    smoke = load_study(studies / "smoke.yaml", catalogue=fresh_catalogue())
    assert len(smoke.specs) == 2
    for name, n_runs in (("nb201_collapse.yaml", 21), ("single_darts_lr.yaml", 18), ("nb201_reduced_cpu.yaml", 10)):
        data = yaml.safe_load((studies / name).read_text())
        missing = [e["recipe"] for e in data["runs"] if not (studies / e["recipe"]).exists()]
        if missing:
            pytest.skip(f"recipes not written yet: {missing}")
        assert len(load_study(studies / name).specs) == n_runs


@pytest.mark.parametrize("name, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_missing_extra_exits_2_naming_the_install_command(name, module, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra gives: ImportError
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"runs": [{"label": "x", "recipe": _tiny()}], "executor": {"name": name}}))
    assert main(["study", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"executor '{name}' needs the optional dependency '{module}'" in err
    assert f"pip install 'diffnas[{extra}]'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_executor_flags_and_slurm_without_sbatch(tmp_path, monkeypatch, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"runs": [{"label": "x", "recipe": _tiny()}],
                                 "executor": {"name": "gpus", "params": {"per_gpu": 2}}}))
    assert main(["study", str(p), "--out", str(tmp_path / "o"), "--executor", "sequential", "--address", "auto"]) == 2
    assert "--address is a param of the 'ray' executor, not of 'sequential'" in capsys.readouterr().err
    assert main(["study", str(p), "--out", str(tmp_path / "o"), "--per-gpu", "0"]) == 2
    assert "'per_gpu' must be > 0" in (err := capsys.readouterr().err) and "@ study.executor.params" in err
    if importlib.util.find_spec("submitit") is not None:
        monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
        assert main(["study", str(p), "--out", str(tmp_path / "o"), "--executor", "slurm"]) == 2
        assert "no `sbatch` on PATH" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_study_progress_counts_epochs_over_every_run(tmp_path):
    from diffnas.study.executors import StudyProgress

    specs = [RunSpec(i, rid, rid, rid, {}, {"trainer": {"epochs": 3}}, tmp_path / "runs" / rid, 0)
             for i, rid in enumerate(["a", "b"])]
    (tmp_path / "runs" / "b").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "metrics.jsonl").write_text('{"epoch": 0}\n')  # b resumes after one epoch
    items = [WorkItem(s.id, (s,)) for s in specs]
    bar = StudyProgress(items, True, print)
    assert (bar.bar.total, bar.bar.n) == (6, 1)
    bar.epoch("a", 1)
    bar.epoch("a", 1)  # a repeated event (a retried task reports again) counts once
    bar.epoch("b", 2)
    bar.finished("a")  # ended early (a stopping rule): its remaining epochs count as done
    assert bar.bar.n == 5
    bar.close()
    lines: list[str] = []
    quiet = StudyProgress(items, False, lines.append)
    quiet.epoch("a", 1)
    quiet.epoch("b", 1)  # older than what b's run directory records: ignored
    assert quiet.bar is None and lines == ["  a: epoch 1/3"]


def test_study_bar_without_a_terminal_prints_plain_status_lines(tmp_path, capsys, monkeypatch):
    """``progress=None`` (the CLI's default) shows the study bar off a terminal too (pytest's stderr is not a
    TTY): plain status lines, at most one per LINE_INTERVAL_S and a last one, no carriage returns."""
    from diffnas.core import progress
    from diffnas.study.executors import StudyProgress

    specs = [RunSpec(i, rid, rid, rid, {}, {"trainer": {"epochs": 2}}, tmp_path / "runs" / rid, 0)
             for i, rid in enumerate(["a", "b"])]
    items = [WorkItem(s.id, (s,)) for s in specs]
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 3600.0)  # no line but the first and the last
    bar = StudyProgress(items, None, print)
    for rid in ("a", "b"):
        for done in (1, 2):
            bar.epoch(rid, done)
    bar.close()
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("study: 0/4 epoch (0%)") and err.splitlines()[-1].startswith("study: 4/4 epoch (100%)")
    assert len(err.splitlines()) == 2 and "\r" not in err and "\x1b" not in err


def test_study_plot_value_axis_has_no_offset_notation(tmp_path):
    """A nearly constant α entropy (1.60943 ± 1e-6) is labelled with its values, not as ``1e-6+1.60943``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffnas.study.report import _mean_entropy, plot_per_epoch

    histories = [[{"epoch": e, "entropy": {"normal": 1.60943 + 1e-7 * e * (1 + seed)}} for e in range(5)] for seed in range(2)]
    fig, ax = plt.subplots()
    assert plot_per_epoch({"DARTS": histories}, _mean_entropy, "α entropy", "t", tmp_path / "x.png", ax=ax)
    fig.canvas.draw()
    fmt = ax.yaxis.get_major_formatter()
    labels = [t.get_text().replace("\u2212", "-") for t in ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert fmt.get_offset() == "" and len(labels) >= 3
    assert all(1.6094 <= float(x) <= 1.6095 for x in labels), labels
