"""Stopping rules and history-based discretisers: DARTS+ early stopping and SS-DARTS selective stop,
on crafted trajectories, then one tiny end-to-end search each."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from diffnas.core.genotype import Genotype
from diffnas.plugins.discretisers.selective_stop import SelectiveStop, select_epoch, selection_scores
from diffnas.plugins.regularisers.darts_plus_stop import DartsPlusStop, alpha_ranking
from diffnas.plugins.search_spaces.nb201 import NB201Space
from diffnas.testing import fresh_catalogue, run_tiny, tiny_recipe

CONV3 = 3  # NB201 op order: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3


@pytest.fixture(scope="module")
def cat():
    return fresh_catalogue()


def fake_search(alpha=None):
    space = NB201Space()
    stops: list[str] = []
    s = SimpleNamespace(cells=space.cells(), search_space=space, stops=stops,
                        alphas={"normal": torch.zeros(6, 5) if alpha is None else alpha})
    s.request_stop = stops.append
    s.probabilities = lambda: {k: torch.softmax(a, -1) for k, a in s.alphas.items()}
    return s


def nb201(ops):
    a, b, c, d, e, f = ops
    return f"|{a}~0|+|{b}~0|{c}~1|+|{d}~0|{e}~1|{f}~2|"


# --------------------------------------------------------------------------- DARTS+


def test_darts_plus_criterion_one_counts_skips_in_nb201_genotypes():
    rule = DartsPlusStop(DartsPlusStop.Config(patience=None))
    s = fake_search()
    trajectory = [
        nb201(["nor_conv_3x3"] * 6),
        nb201(["skip_connect"] + ["nor_conv_3x3"] * 5),
        nb201(["skip_connect", "nor_conv_1x1", "none", "avg_pool_3x3", "nor_conv_3x3", "nor_conv_3x3"]),
        nb201(["skip_connect", "nor_conv_1x1", "skip_connect", "avg_pool_3x3", "nor_conv_3x3", "nor_conv_3x3"]),
    ]
    for epoch, geno in enumerate(trajectory):
        record = {"genotype": geno}
        rule.diffnas_epoch_end(search=s, epoch=epoch, record=record)
        assert record["darts_plus"]["skips"] == [0, 1, 1, 2][epoch]
        assert bool(s.stops) == (epoch == 3)
    assert "criterion 1" in s.stops[0] and "2 skip_connect" in s.stops[0]


def test_darts_plus_criterion_two_ranking_unchanged():
    g = torch.Generator().manual_seed(0)
    a0 = torch.randn(6, 5, generator=g)
    a1 = torch.randn(6, 5, generator=g)
    assert alpha_ranking({"normal": a0}) != alpha_ranking({"normal": a1})
    # epoch 0: a0; epoch 1: a1 (ranking changes); epochs 2, 3: positive rescalings of a1 (same ranking)
    trajectory = [a0, a1, 1.1 * a1, 1.3 * a1 + 0.2, 1.5 * a1]
    rule = DartsPlusStop(DartsPlusStop.Config(max_skips=None, patience=3))
    s = fake_search()
    retains = []
    for epoch, a in enumerate(trajectory[:3]):
        s.alphas["normal"] = a
        record = {"genotype": nb201(["skip_connect"] * 6)}  # criterion 1 is off
        rule.diffnas_epoch_end(search=s, epoch=epoch, record=record)
        retains.append(record["darts_plus"]["rank_retain"])
    assert retains == [1, 1, 2] and not s.stops
    # checkpoint as plain data, resume in a fresh rule: the counter carries on
    buf = io.BytesIO()
    torch.save(rule.state_dict(), buf)
    buf.seek(0)
    resumed = DartsPlusStop(DartsPlusStop.Config(max_skips=None, patience=3))
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    s.alphas["normal"] = trajectory[3]
    record = {"genotype": nb201(["nor_conv_3x3"] * 6)}
    resumed.diffnas_epoch_end(search=s, epoch=3, record=record)
    assert record["darts_plus"]["rank_retain"] == 3
    assert len(s.stops) == 1 and "criterion 2" in s.stops[0]


def test_darts_plus_parametric_ranking_ignores_parameter_free_ops():
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]] * 6)
    b = a.clone()
    b[:, 1] = 10.0  # only skip_connect moves
    keep = {"normal": torch.tensor([[False, False, True, True, False]] * 6)}
    assert alpha_ranking({"normal": a}, keep) == alpha_ranking({"normal": b}, keep) == {"normal": [[2, 3]] * 6}
    assert alpha_ranking({"normal": a}) != alpha_ranking({"normal": b})


def test_darts_plus_end_to_end_stops_the_search(cat):
    recipe = tiny_recipe(trainer={"epochs": 2, "steps_per_epoch": 1},
                         regularisers=[{"name": "darts_plus_stop", "params": {"patience": 1}}])
    s, summary = run_tiny(recipe, cat=cat)
    assert summary["epochs_run"] == 1
    assert "DARTS+" in summary["stop_reason"]
    assert s.state.history[0]["darts_plus"]["rank_retain"] == 1


# --------------------------------------------------------------------------- selective stop

# m_e over (none, skip, conv1x1, conv3x3, pool); conv3x3 first leads at epoch 1
HISTORY = [
    [1.0, 1.5, 1.2, 1.1, 1.2],  # before the first lead: kept (1.1)
    [1.0, 1.2, 1.2, 1.4, 1.2],  # first lead: kept (1.4)
    [0.8, 1.0, 1.2, 1.9, 1.1],  # leads: kept (1.9) -> the magnitude peak
    [0.5, 2.5, 0.5, 2.0, 0.5],  # skip leads: zeroed although conv3x3 is at its raw maximum
    [0.1, 1.3, 0.1, 1.85, 0.1],  # leads: 1.85; margin 5·1.85 − 3.45 = 5.8 -> the margin peak
]


def test_selective_stop_rule_on_a_crafted_history():
    assert selection_scores(HISTORY, CONV3) == [1.1, 1.4, 1.9, 0.0, 1.85]
    assert select_epoch(HISTORY, CONV3) == 2
    margins = selection_scores(HISTORY, CONV3, "margin")
    assert margins[:3] == pytest.approx([-0.5, 1.0, 3.5]) and margins[3] == float("-inf")
    assert margins[4] == pytest.approx(5.8)
    assert select_epoch(HISTORY, CONV3, "margin") == 4
    # the op never leads: every epoch is kept and the raw maximum wins (first on ties)
    assert select_epoch([[2, 0, 0, 1.0, 0], [2, 0, 0, 1.5, 0], [2, 0, 0, 1.5, 0]], CONV3) == 1


def test_selective_stop_returns_the_genotype_of_the_peak_epoch_after_a_resume():
    genos = [Genotype.from_nb201_string(nb201([op] * 6)) for op in
             ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "none")]
    state = {"hparams": {}, "op": "nor_conv_3x3",
             "history": [{"epoch": e, "magnitude": m, "genotype": g.to_dict()} for e, (m, g) in enumerate(zip(HISTORY, genos))]}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    disc = SelectiveStop()
    disc.load_state_dict(torch.load(buf, weights_only=True))
    assert disc.final(fake_search()) == genos[2]
    assert disc.chosen_epoch == 2
    margin = SelectiveStop(SelectiveStop.Config(score="margin"))
    margin.load_state_dict(state)
    assert margin.final(fake_search()) == genos[4]
    assert disc.state_dict()["history"] == state["history"]


def test_selective_stop_records_magnitudes_each_epoch(cat):
    disc = SelectiveStop()
    disc._base = cat.build("discretiser", "argmax_per_edge")
    s = fake_search()
    # softmax magnitudes over 6 edges sum to 6 (with them the margin score ranks epochs as the magnitude does)
    history = HISTORY[:4] + [[0.4, 1.3, 0.9, 1.8, 1.6]]
    for epoch, m in enumerate(history):
        # α rows whose softmax sums over the 6 edges give m: every edge gets p = m / 6
        s.alphas["normal"] = torch.tensor(m).div(6).log().expand(6, 5).clone()
        record = {}
        disc.diffnas_epoch_end(search=s, epoch=epoch, record=record)
        assert record["selective_stop"]["magnitude"] == pytest.approx(m, abs=1e-5)
    assert record["selective_stop"]["best_epoch"] == 2
    assert disc.final(s) == Genotype.from_dict(disc.history[2]["genotype"])
    assert disc.history[2]["genotype"] == Genotype.from_nb201_string(nb201(["nor_conv_3x3"] * 6)).to_dict()


def test_selective_stop_default_op_outside_nb201(cat):
    disc = SelectiveStop(SelectiveStop.Config(warmup_epochs=2))
    ops = ("none", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
    disc._choose_op(SimpleNamespace(search_space=NB201Space()), ops, 0, [0.0, 3.0, 1.0, 2.0])
    assert disc.op is None  # still in warm-up
    disc._choose_op(SimpleNamespace(search_space=NB201Space()), ops, 1, [0.0, 3.0, 1.0, 2.0])
    assert disc.op == "dil_conv_3x3"  # the largest parametric op at the end of warm-up


def test_selective_stop_end_to_end(cat):
    recipe = tiny_recipe(trainer={"epochs": 2, "steps_per_epoch": 1}, discretiser={"name": "selective_stop"})
    s, summary = run_tiny(recipe, cat=cat)
    disc = s.discretiser
    assert [h["epoch"] for h in disc.history] == [0, 1]
    best = s.state.history[-1]["selective_stop"]["best_epoch"]
    assert summary["selective_stop"]["epoch"] == best
    assert summary["genotype"] == str(Genotype.from_dict(disc.history[best]["genotype"]))
    assert summary["genotype"] == s.state.history[best]["genotype"]
