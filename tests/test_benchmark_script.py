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


TINY = ["--device", "cpu", "--batch", "4", "--C", "4", "--N", "1", "--image-size", "8", "--steps", "1", "--warmup", "1"]


def test_search_speed_runs_on_cpu_and_writes_json(bench_modules, tmp_path):
    search_speed, _ = bench_modules
    out = tmp_path / "result.json"
    res = search_speed.main(TINY + ["--configs", "nb201-darts", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    impls = {r["impl"] for r in data["results"]}
    assert {"diffnas", "diffnas-fused"} <= impls
    for r in data["results"]:
        assert r["steps_per_s"] > 0 and r["images_per_s"] == pytest.approx(4 * r["steps_per_s"])
    if search_speed.reference_available():
        assert "reference" in impls and len(data["ratios"]) == 2
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


DARTS_TINY = ["--C", "4", "--layers", "3", "--darts-N", "1", "--batch", "2", "--image-size", "8"]


def test_count_ops_darts_space_fused_dispatches_fewer_ops(bench_modules):
    _, count_ops = bench_modules
    out = count_ops.main(["--space", "darts", *DARTS_TINY])
    assert out["diffnas fused"]["ops"] < out["diffnas plain"]["ops"]
    assert 0 < out["diffnas fused"]["optimizer_ops"] < out["diffnas fused"]["ops"]


def test_search_speed_darts_space_runs_fused(bench_modules):
    search_speed, _ = bench_modules
    res = search_speed.main(["--device", "cpu", "--batch", "2", "--image-size", "8", "--steps", "1", "--warmup", "1",
                             "--configs", "darts-darts", "--impls", "diffnas,diffnas-fused,diffnas-fused-graphs",
                             "--darts-C", "4", "--darts-layers", "3", "--darts-N", "1"])
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
