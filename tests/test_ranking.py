"""Supernet ranking quality: rank correlations, sampling, one-hot weights, ``diffnas rank``."""

import json
import math

import pytest
import torch

from diffnas.benchmarks.ranking import (average_ranks, genotype_op_weights, kendall_tau, rank_run, sample_genotypes,
                                        spearman_rho)
from diffnas.cli import main
from diffnas.core.cells import make_cell_graph
from diffnas.testing import run_tiny, tiny_recipe


def test_kendall_and_spearman_by_hand():
    a, b = [1, 2, 3, 4, 5], [3, 1, 2, 5, 4]
    # 7 concordant, 3 discordant pairs -> 4/10; sum d^2 = 8 -> 1 - 6*8/(5*24)
    assert kendall_tau(a, b) == pytest.approx(0.4)
    assert spearman_rho(a, b) == pytest.approx(0.6)
    assert kendall_tau(a, a[::-1]) == pytest.approx(-1.0) and spearman_rho(a, a) == pytest.approx(1.0)
    # ties: P - Q = 4, one tied pair in each ranking -> 4 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(spearman_rho([1, 1], [1, 2]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1])


def test_against_scipy_when_present():
    stats = pytest.importorskip("scipy.stats", reason="cross-checks against scipy, which is not installed (optional: "
                                "pip install scipy); the tests above check the same statistics on hand-computed values")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 6, (30,), generator=g).tolist()
        y = torch.randint(0, 6, (30,), generator=g).tolist()
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_sampling_nb201_and_darts_style_cells():
    nb = {"normal": make_cell_graph("normal", 1, 3, ("none", "skip_connect", "nor_conv_3x3"), concat=[3])}
    gs = sample_genotypes("nb201", nb, 20, seed=1)
    assert len({g.to_json() for g in gs}) == 20 and gs == sample_genotypes("nb201", nb, 20, seed=1)
    assert all(len(g.cells["normal"].edges) == 6 for g in gs)
    ow = genotype_op_weights(gs[0], nb)
    assert torch.equal(ow["normal"].weights.sum(1), torch.ones(6)) and torch.equal(ow["normal"].active, ow["normal"].weights > 0)
    ops = ("none", "max_pool_3x3", "sep_conv_3x3")
    darts = {c: make_cell_graph(c, 2, 4, ops, reduction=(c == "reduce")) for c in ("normal", "reduce")}
    dg = sample_genotypes("darts", darts, 10, seed=0)
    for g in dg:
        for cell in g.cells.values():
            assert [len(cell.inputs_of(n)) for n in (2, 3, 4, 5)] == [2, 2, 2, 2]
            assert "none" not in cell.ops()
        w = genotype_op_weights(g, darts)["normal"].weights
        assert w.shape == (14, 3) and int(w.sum()) == 8


def test_rank_a_tiny_search(tmp_path, capsys):
    run_dir = tmp_path / "search"
    run_tiny(tiny_recipe(), out_dir=run_dir)
    res = rank_run(run_dir, samples=5, seed=3, batches=1)
    assert res["samples"] == 5 and res["ground_truth"] == "nb201:cifar10_test"
    assert -1.0 <= res["kendall_tau"] <= 1.0 or math.isnan(res["kendall_tau"])
    assert len(res["archs"]) == 5 and all(0 <= a["supernet_acc"] <= 100 for a in res["archs"])
    # the CLI with the same seed reproduces the same samples and scores
    capsys.readouterr()
    assert main(["rank", str(run_dir), "--samples", "5", "--seed", "3", "--batches", "1"]) == 0
    cap = capsys.readouterr()
    assert "Kendall tau" in cap.out
    assert "rank: 0/5 arch (0%)" in cap.err and "rank: 5/5 arch (100%)" in cap.err  # progress, as plain lines off a terminal
    assert main(["rank", str(run_dir), "--samples", "5", "--seed", "3", "--batches", "1", "--no-progress"]) == 0
    assert "rank:" not in capsys.readouterr().err
    report = json.loads((run_dir / "ranking.json").read_text())
    assert [a["genotype"] for a in report["archs"]] == [a["genotype"] for a in res["archs"]]
    assert [a["supernet_loss"] for a in report["archs"]] == pytest.approx([a["supernet_loss"] for a in res["archs"]])
    assert main(["rank", str(tmp_path / "nope")]) == 2
    assert main(["rank", str(run_dir), "--samples", "1"]) == 2
