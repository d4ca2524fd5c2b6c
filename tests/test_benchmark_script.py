"""benchmarks/search_speed.py and benchmarks/count_ops.py run on the CPU (tiny shapes) so they cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import count_ops
    import search_speed

    return search_speed, count_ops


TINY = ["--device", "cpu", "--batch", "4", "--C", "4", "--N", "1", "--image-size", "8", "--steps", "1", "--warmup", "1",
        "--rounds", "2"]


def test_search_speed_runs_on_cpu_and_writes_json(bench_modules, tmp_path):
    search_speed, _ = bench_modules
    out = tmp_path / "result.json"
    res = search_speed.main(TINY + ["--configs", "nb201-darts", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    impls = {r["impl"] for r in data["results"]}
    assert {"diffnas", "diffnas-fused"} <= impls
    for r in data["results"]:  # interleaved rounds: the median of two rounds and their spread
        assert len(r["rounds"]) == 2 and r["steps_per_s_min"] <= r["steps_per_s"] <= r["steps_per_s_max"]
        assert r["steps_per_s"] == pytest.approx(sum(r["rounds"]) / 2)
        assert r["images_per_s"] == pytest.approx(4 * r["steps_per_s"])
    if search_speed.reference_available():
        assert {"reference", "reference-lean"} <= impls and len(data["ratios"]) == 3
        for q in data["ratios"]:
            assert q["speedup_min"] <= q["speedup"] <= q["speedup_max"]
    assert data["environment"]["device"] == "cpu"


def test_search_speed_gdas_skips_fused(bench_modules):
    search_speed, _ = bench_modules
    res = search_speed.main(TINY + ["--configs", "nb201-gdas", "--impls", "diffnas,diffnas-fused"])
    assert [r["impl"] for r in res["results"]] == ["diffnas"]
    assert res["skipped"][0]["impl"] == "diffnas-fused"


def test_count_ops_fused_dispatches_fewer_ops(bench_modules):
    _, count_ops = bench_modules
    out = count_ops.main(["--batch", "2", "--C", "4", "--N", "1", "--image-size", "8"])
    assert out["diffnas fused"]["ops"] < out["diffnas plain"]["ops"]


def test_search_speed_second_order_and_single_level(bench_modules):
    """Both sides run the second-order and single-level steps; graph variants are skipped off CUDA."""
    search_speed, _ = bench_modules
    res = search_speed.main(TINY + ["--configs", "nb201-darts2,nb201-single", "--impls", "reference,diffnas,diffnas-graphs"])
    got = {(r["config"], r["impl"]) for r in res["results"]}
    assert {("nb201-darts2", "diffnas"), ("nb201-single", "diffnas")} <= got
    if search_speed.reference_available():
        assert {("nb201-darts2", "reference"), ("nb201-single", "reference")} <= got
    assert {s["impl"] for s in res["skipped"]} == {"diffnas-graphs"}
    assert search_speed.impl_switches("diffnas-fused-graphs") == {"fused_cells": True, "cuda_graphs": True}


DARTS_TINY = ["--C", "4", "--layers", "3", "--batch", "2", "--image-size", "8"]


def test_count_ops_darts_space_fused_dispatches_fewer_ops(bench_modules):
    _, count_ops = bench_modules
    out = count_ops.main(["--space", "darts", *DARTS_TINY])
    assert out["diffnas fused"]["ops"] < out["diffnas plain"]["ops"]
    assert 0 < out["diffnas fused"]["optimizer_ops"] < out["diffnas fused"]["ops"]


def test_search_speed_darts_space_runs_fused(bench_modules):
    search_speed, _ = bench_modules
    res = search_speed.main(["--device", "cpu", "--batch", "2", "--image-size", "8", "--steps", "1", "--warmup", "1",
                             "--configs", "darts-darts", "--impls", "diffnas,diffnas-fused,diffnas-fused-graphs",
                             "--darts-C", "4", "--darts-layers", "3"])
    assert [r["impl"] for r in res["results"]] == ["diffnas", "diffnas-fused"]
    assert [s["impl"] for s in res["skipped"]] == ["diffnas-fused-graphs"]  # CUDA graphs need CUDA


def test_saved_memory_fused_saves_less(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import saved_memory

    out = saved_memory.main(["--space", "nb201", "--batch", "4", "--C", "4", "--N", "1", "--impls", "diffnas,diffnas-fused"])
    assert 0 < out["diffnas-fused"] < out["diffnas"]
    assert "activation memory saved for backward" in capsys.readouterr().out


def test_plot_speed_writes_a_png(bench_modules, tmp_path):
    search_speed, _ = bench_modules
    import plot_speed

    res = search_speed.main(TINY + ["--configs", "nb201-darts", "--impls", "diffnas,diffnas-fused"])
    png = plot_speed.plot(res, tmp_path / "speed.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_lean_reference_computes_what_the_reference_computes(bench_modules):
    """reference-lean leaves out only work without effect: the same logits from the same weights, and
    after one first-order step on the same batches the same α and weights (biases aside) up to the
    clipping norm, which in the reference includes the α gradients of its full backward."""
    search_speed, _ = bench_modules
    if not search_speed.reference_available():
        pytest.skip("xautodl is not installed")
    import argparse

    import torch

    for space in ("nb201", "darts"):
        a = argparse.Namespace(C=4, N=1, darts_C=4, darts_layers=3, darts_running_stats=True, batch=4, image_size=8,
                               num_classes=10, channels_last=False, autocast="off")
        nets = []
        x = search_speed.reference_batches(a, torch.device("cpu"), 1)[0][0]
        for waste in (set(), set(search_speed.WASTE)):
            torch.manual_seed(0)
            net, step = search_speed.build_reference(space, "darts", a, torch.device("cpu"), waste)
            logits = net(x)[1].detach()
            b = search_speed.reference_batches(a, torch.device("cpu"), 2)
            step(b[0], b[1])
            nets.append((net, logits))
        (ref, ref_logits), (lean, lean_logits) = nets
        torch.testing.assert_close(lean_logits, ref_logits, rtol=1e-5, atol=1e-6)
        for x, y in zip(ref.get_alphas(), lean.get_alphas()):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
        lean_w = dict(lean.named_parameters())
        assert len(lean_w) < len(dict(ref.named_parameters()))  # the biases are gone
        for name, w in ref.named_parameters():
            if name in lean_w:
                torch.testing.assert_close(lean_w[name], w, rtol=1e-3, atol=1e-4, msg=lambda m: f"{space} {name}: {m}")
