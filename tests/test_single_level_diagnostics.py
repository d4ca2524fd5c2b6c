"""The Single-DARTS diagnostics: the gradient correlation of a single-level run against a held-out batch
(not trivially 1), and the per-op α-gradients of Single-DARTS Fig. 3 (recorded, plotted)."""

import pytest
import torch

from diffnas.plugins import diagnostics as D
from diffnas.study.report import plot_alpha_gradients
from diffnas.testing import build_tiny_search, run_tiny, tiny_recipe

SINGLE = {"name": "single_level"}
DIAG = {"gradient_correlation": True, "alpha_gradients": True}


@pytest.mark.parametrize("portion, against", [(0.5, "held_out"), (1.0, "train")])
def test_single_level_gradient_correlation_is_taken_against_another_batch(portion, against, catalogue):
    s, _ = run_tiny(tiny_recipe(update_rule=SINGLE, data={"train_portion": portion}, diagnostics=DIAG), cat=catalogue)
    gc = s.history[-1]["gradient_correlation"]
    assert gc["against"] == against
    assert -1.0 <= gc["cosine"] < 1.0 - 1e-6  # the same batch would give exactly 1
    # the held-out batch is what the diagnostic compares with
    b_w = D.fixed_batches(s.train_loader, 1)[0]
    other = D.fixed_batches(s.held_out_loader, 1)[0] if against == "held_out" else D.fixed_batches(s.train_loader, 2)[1]
    assert D.gradient_correlation(s, pairs=[(b_w, other)])["cosine"] == pytest.approx(gc["cosine"], rel=1e-9)


def test_bilevel_gradient_correlation_uses_the_validation_half(catalogue):
    s, _ = run_tiny(tiny_recipe(diagnostics={"gradient_correlation": True}), cat=catalogue)
    assert s.history[-1]["gradient_correlation"]["against"] == "valid"


@pytest.mark.parametrize("rule, split", [({"name": "bilevel"}, "valid"), (SINGLE, "train")])
def test_alpha_gradients_are_the_alpha_steps_gradient_per_op(rule, split, catalogue):
    s = build_tiny_search(tiny_recipe(update_rule=rule, diagnostics=DIAG), cat=catalogue)
    got = D.alpha_gradients(s, batches=2)
    loader = s.valid_loader if split == "valid" else s.train_loader
    a = s.alphas["normal"].detach().clone().requires_grad_(True)
    total = torch.zeros_like(a)
    for x, y in D.fixed_batches(loader, 2):
        ce = torch.nn.functional.cross_entropy(s.forward(x, {"normal": s.relaxation.op_weights(a, s)}), y)
        total += torch.autograd.grad(ce, a)[0] / 2
    ops = list(s.cells["normal"].edges(data=True))[0][2]["ops"]
    assert list(got["normal"]) == list(ops)
    assert [got["normal"][op] for op in ops] == pytest.approx(total.mean(0).tolist(), rel=1e-5, abs=1e-9)
    assert any(abs(v) > 0 for v in got["normal"].values())


def test_alpha_gradients_are_recorded_per_epoch_and_plotted(tmp_path, catalogue):
    s, _ = run_tiny(tiny_recipe(update_rule=SINGLE, diagnostics=DIAG, trainer={"epochs": 3}), cat=catalogue)
    recs = [r["alpha_gradients"]["normal"] for r in s.history]
    assert len(recs) == 3 and all(set(r) == {"none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"}
                                  for r in recs)
    assert recs[0] != recs[-1]  # they follow the search
    path = tmp_path / "g.png"
    assert plot_alpha_gradients(s.history, "normal", "t", path) and path.read_bytes()[:4] == b"\x89PNG"
    assert not plot_alpha_gradients([{"epoch": 0}], "normal", "t", tmp_path / "none.png")
