"""SGAS (Li et al., CVPR 2020): Criterion 1 and 2 against the formula and ``lightaime/sgas``'s code
on hand-made α; the decisions, masks, frozen α and batch growth of a run; the authors' settings;
an exact resume across a decision; the batch-size seam; what is refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributions.categorical as cate
import torch.nn.functional as F
import yaml
from torch.utils._python_dispatch import _disable_current_modes

from diffnas import api
from diffnas.core.engine import preflight_problems
from diffnas.core.errors import PluginError, RecipeError
from diffnas.core.graphs import find_host_syncs
from diffnas.core.protocols import OpWeights
from diffnas.core.recipe import resolve_recipe
from diffnas.plugins.discretisers.sgas import (decisions_per_cell, edge_scores, histogram_average, normalize,
                                               sgas_epochs)
from diffnas.testing import build_tiny_search, fresh_catalogue, run_tiny, tiny_recipe
from test_pc_darts import resume_matches

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
SPACE = {"name": "darts", "params": {"C": 4, "layers": 3, "steps": 2}}  # 5 edges, 4 decisions per cell


def sgas(**params):
    return {"regularisers": [{"name": "sgas", "params": params}], "discretiser": {"name": "sgas"}}


def authors_normalize(v):
    """``cnn/utils.py normalize`` (without .cuda())."""
    min_v = torch.min(v)
    range_v = torch.max(v) - min_v
    return (v - min_v) / range_v if range_v > 0 else torch.zeros(v.size())


def authors_scores(alphas, history, use_history):
    """``cnn/train_search.py edge_decision`` up to the score (op 0 is none)."""
    mat = F.softmax(torch.stack(alphas, dim=0), dim=-1).detach()
    importance = torch.sum(mat[:, 1:], dim=-1)
    probs = mat[:, 1:] / importance[:, None]
    entropy = cate.Categorical(probs=probs).entropy() / math.log(probs.size()[1])
    score = authors_normalize(importance) * authors_normalize(1 - entropy)
    if use_history:
        inter = torch.zeros(probs.shape[0])
        for hist in history:
            inter += torch.from_numpy(np.minimum(hist.numpy(), probs.numpy())).sum(dim=1)
        inter = inter / len(history) if history else inter
        score = score * authors_normalize(inter)
    return score


ALPHA = torch.tensor([[0.0, 1.0, 0.2, -0.5], [1.5, 0.1, 0.1, 0.1], [-2.0, 2.0, -1.0, -1.0], [0.3, 0.3, 0.3, 0.3]])


def test_criterion_one_is_the_formula_on_hand_made_alpha():
    p = torch.softmax(ALPHA, 1)
    q = edge_scores(p, [1, 2, 3], criterion=1)
    rows = p.tolist()
    imp = [sum(r[1:]) for r in rows]
    bar = [[v / sum(r[1:]) for v in r[1:]] for r in rows]
    ent = [-sum(v * math.log(v) for v in b) / math.log(3) for b in bar]
    norm = lambda v: [(x - min(v)) / (max(v) - min(v)) for x in v]  # noqa: E731
    want = [a * b for a, b in zip(norm(imp), norm([1 - e for e in ent]))]
    assert q["importance"].tolist() == pytest.approx(imp, abs=1e-6)
    assert q["entropy"].tolist() == pytest.approx(ent, abs=1e-6)
    assert q["score"].tolist() == pytest.approx(want, abs=1e-6)
    assert q["entropy"][3] == pytest.approx(1.0)  # uniform over the non-none ops: no certainty
    assert torch.allclose(q["score"], authors_scores(list(ALPHA), [], False), atol=1e-6)
    assert normalize(torch.full((3,), 0.7)).tolist() == [0.0, 0.0, 0.0]  # the code's zero vector


def test_criterion_two_multiplies_the_normalised_histogram_intersection():
    p = torch.softmax(ALPHA, 1)
    hist = [torch.softmax(ALPHA * s, 1)[:, 1:] / torch.softmax(ALPHA * s, 1)[:, 1:].sum(1, keepdim=True) for s in (0.5, 2.0)]
    q = edge_scores(p, [1, 2, 3], criterion=2, history=hist)
    bar = q["probs"].tolist()
    stab = [sum(sum(min(a, b) for a, b in zip(h.tolist()[e], bar[e])) for h in hist) / 2 for e in range(4)]
    assert q["stability"].tolist() == pytest.approx(stab, abs=1e-6)
    c1 = edge_scores(p, [1, 2, 3], criterion=1)["score"]
    lo, hi = min(stab), max(stab)
    assert q["score"].tolist() == pytest.approx([s * (v - lo) / (hi - lo) for s, v in zip(c1.tolist(), stab)], abs=1e-6)
    assert torch.allclose(q["score"], authors_scores(list(ALPHA), hist, True), atol=1e-6)
    assert histogram_average([], q["probs"]).tolist() == [0.0] * 4  # no history yet: the code's zeros
    assert edge_scores(p, [1, 2, 3], criterion=2)["score"].tolist() == [0.0] * 4


def test_the_epoch_count_is_the_codes():
    cat = fresh_catalogue()
    r = resolve_recipe(yaml.safe_load((RECIPES / "darts_sgas.yaml").read_text()), cat).recipe
    graph = cat.build("search_space", "darts").cells()["normal"]
    assert decisions_per_cell(graph, 2) == 8 and decisions_per_cell(graph, None) == 14
    assert r.trainer.epochs == sgas_epochs(9, 5, 8) == 9 + 5 * (2 * 4 - 1) + 6 == 50
    t, w, a = r.trainer, r.trainer.weights_optimizer, r.trainer.arch_optimizer
    assert (t.batch_size, t.grad_clip, t.warmup_epochs) == (64, 5.0, 0)
    assert (w.lr, w.lr_min, w.momentum, w.weight_decay, w.schedule) == (0.025, 0.001, 0.9, 3.0e-4, "cosine")
    assert (a.lr, tuple(a.betas), a.weight_decay) == (3.0e-4, (0.5, 0.999), 1.0e-3)
    c = cat.build("regulariser", "sgas").config
    assert (c.criterion, c.warmup_dec_epoch, c.decision_freq, c.history_size, c.batch_increase, c.edges_per_node) == \
        (1, 9, 5, 4, 8, 2)


def test_fixed_and_dropped_edges_compute_only_the_chosen_op():
    """SearchCell.fixed: a decided edge is op(x) alone (MixedOp(x, None, idx)); a dropped one adds nothing."""
    space = {"name": "nb201", "params": {"C": 4, "N": 1, "ops": ["skip_connect", "avg_pool_3x3"]}}
    s = build_tiny_search(tiny_recipe(search_space=space))
    cell = next(m for m in s.model.modules() if hasattr(m, "fixed"))
    cell.fixed = {0: 1, 3: None, 4: 0}
    x = torch.randn(2, 4, 4, 4)
    w = torch.softmax(torch.randn(6, 2), 1)
    pool = lambda h: F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)  # noqa: E731
    mix = lambda e, h: w[e, 0] * h + w[e, 1] * pool(h)  # noqa: E731
    n1 = pool(x)
    n2 = mix(1, x) + mix(2, n1)
    n3 = n1 + mix(5, n2)
    assert torch.allclose(cell([x], OpWeights(w)), n3, atol=1e-6)


def test_a_run_decides_masks_freezes_and_grows_the_batch():
    r = tiny_recipe(search_space=SPACE, **sgas(warmup_dec_epoch=1, decision_freq=1, batch_increase=4),
                    data={"params": {"num_train": 256}}, trainer={"epochs": 6})
    s, summary = run_tiny(r, cat=fresh_catalogue())
    h = s.history
    reg = s.regularisers[0]
    assert [rec["sgas"]["batch_size"] for rec in h] == [8, 12, 16, 20, 24, 24]
    assert [rec["train_images"] for rec in h] == [16, 16, 24, 32, 40, 48]  # 2 steps of the epoch's batch
    assert "decision" not in h[0]["sgas"] and "decision" not in h[5]["sgas"]
    for e in range(1, 5):
        for cell in ("normal", "reduce"):
            d = h[e]["sgas"]["decision"][cell]
            before = h[e - 1]["sgas"]["decided"][cell]
            cand = [i for i, o in enumerate(before) if o is None]
            scores = h[e]["sgas"]["scores"][cell]
            assert d["row"] == max(cand, key=lambda i: (scores[i], -i))  # the best-scored undecided edge
            row = h[e]["alphas"][cell][d["row"]]
            ops = s.cells[cell].edges[tuple(d["edge"])]["ops"]
            assert d["op"] == ops[max(range(1, len(ops)), key=lambda o: (row[o], -o))]  # its strongest non-none op
            # its α stays frozen from the decision on, and the supernet computes that op alone
            assert all(h[k]["alphas"][cell][d["row"]] == row for k in range(e, 6))
            assert torch.equal(s.alphas[cell][d["row"]], reg._frozen[cell][d["row"]])
    for cell, graph in s.cells.items():
        sel = reg.selected[cell]
        kept = {(u, v) for u, v, _ in summary_cells(summary)[cell]}
        for node in (2, 3):  # check_edges: two inputs per node, the rest dropped
            assert sum((u, node) in kept for u in range(node)) == 2
        cells = [m for m in s.model.modules() if hasattr(m, "fixed") and m.graph.graph["name"] == cell]
        assert cells and all(m.fixed == {e: (o if o >= 0 else None) for e, o in enumerate(sel)} for m in cells)
    assert h[5]["genotype"] == summary["genotype"]


def summary_cells(summary):
    return {name: cell["edges"] for name, cell in summary["genotype_json"]["cells"].items()}


def test_criterion_two_history():
    r = tiny_recipe(search_space=SPACE, **sgas(criterion=2, warmup_dec_epoch=3, history_size=2), trainer={"epochs": 4})
    s, _ = run_tiny(r, cat=fresh_catalogue())
    assert s.history[0]["sgas"]["scores"]["normal"] == [0.0] * 5  # no history: stability 0 everywhere
    assert any(v > 0 for v in s.history[1]["sgas"]["scores"]["normal"])
    assert [len(v) for v in s.regularisers[0].history.values()] == [2, 2]
    assert "decision" in s.history[3]["sgas"]


def test_resume_across_a_decision_and_a_batch_change_is_exact(tmp_path):
    r = tiny_recipe(search_space=SPACE, **sgas(warmup_dec_epoch=0, decision_freq=1),
                    trainer={"epochs": 3, "steps_per_epoch": None, "deterministic": True},
                    output={"checkpoint_every_steps": 1})
    want = resume_matches(r, tmp_path, at=5)  # epoch 1, step 1: after the first decision
    assert [m["train_images"] for m in want["metrics"]] == [32, 32, 24]  # batches 8·4, 16·2, 24·1


def test_set_batch_size_between_epochs_only():
    s = build_tiny_search(tiny_recipe(trainer={"steps_per_epoch": None}))
    assert s.steps_per_epoch == 4
    s.set_batch_size(16)
    assert (s.train_loader.batch_size, s.valid_loader.batch_size, s.steps_per_epoch) == (16, 16, 2)
    s.state.step = 1
    with pytest.raises(PluginError, match="between epochs"):
        s.set_batch_size(8)
    s.set_batch_size(16)  # unchanged: accepted anywhere (a resumed epoch start)
    warm = build_tiny_search(tiny_recipe(trainer={"warmup_epochs": 1}))
    with pytest.raises(PluginError, match="warmup"):
        warm.set_batch_size(16)


def test_a_step_after_decisions_does_not_read_the_device():
    """The frozen-α restore runs inside the step (after_arch_step): no host synchronisation, so a
    CUDA graph can capture it (the masks and the batch size change only between epochs)."""
    s, _ = run_tiny(tiny_recipe(search_space=SPACE, **sgas(warmup_dec_epoch=0, decision_freq=1), trainer={"epochs": 1}),
                    cat=fresh_catalogue())
    assert any(o != -1 for o in s.regularisers[0].selected["normal"])
    step = s.a_optimizer.step  # Adam is capturable on CUDA only (as test_cuda_graphs does, not watched here)

    def unwatched(*a, **k):
        with _disable_current_modes():
            return step(*a, **k)

    s.a_optimizer.step = unwatched
    train, valid = s.train_loader.batch(1, 0), s.valid_loader.batch(1, 0)
    assert find_host_syncs(lambda: s._step(train, valid))[1] == []


def test_what_is_refused():
    cat = fresh_catalogue()
    fused = resolve_recipe(tiny_recipe(search_space=SPACE, **sgas(), trainer={"fused_cells": True}), cat)
    assert any("regulariser 'sgas' fixes decided edges" in m for m, _ in preflight_problems(fused, cat, cat.pm))
    with pytest.raises(PluginError, match="read by the sgas discretiser"):
        build_tiny_search(tiny_recipe(regularisers=[{"name": "sgas"}]), cat=cat)
    with pytest.raises(PluginError, match="no sgas regulariser"):
        run_tiny(tiny_recipe(discretiser={"name": "sgas"}), cat=cat)
    with pytest.raises(PluginError, match="no zero op"):
        build_tiny_search(tiny_recipe(search_space={"name": "nb201", "params": {"C": 4, "N": 1, "ops": ["skip_connect", "avg_pool_3x3"]}},
                                      **sgas(edges_per_node=None)), cat=cat)
    pop = [tiny_recipe(**sgas(edges_per_node=None), trainer={"seed": k}) for k in range(2)]
    with pytest.raises(RecipeError, match="regulariser 'sgas' may change the supernet"):
        api.search_population(pop, [None, None], cat=cat)


def test_nb201_decides_every_edge():
    r = tiny_recipe(**sgas(warmup_dec_epoch=0, decision_freq=1, edges_per_node=None), trainer={"epochs": 6})
    s, summary = run_tiny(r, cat=fresh_catalogue())
    assert [o is not None for o in s.history[-1]["sgas"]["decided"]["normal"]] == [True] * 6
    assert "none" not in summary["genotype"] and "nb201" in summary["scores"]
