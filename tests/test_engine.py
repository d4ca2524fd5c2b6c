import copy
import json

import pytest
import torch
import yaml

from diffnas.core.engine import entropy, lr_at
from diffnas.core.recipe import OptimizerConfig, resolve_recipe
from diffnas.testing import build_tiny_search, run_tiny, tiny_recipe


def test_first_order_step_matches_a_hand_written_darts_v1_step(catalogue):
    """One bi-level first-order step equals quark0/darts's order: Adam on ∇_α L_val, then clipped SGD on L_tr."""
    search = build_tiny_search(tiny_recipe(), cat=catalogue)
    train = search.train_loader.batch(0, 0)
    valid = search.valid_loader.batch(0, 0)
    model = copy.deepcopy(search.model)
    alpha = torch.nn.Parameter(search.alphas["normal"].detach().clone())
    a_opt = torch.optim.Adam([alpha], lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    w_opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)
    from diffnas.core.protocols import OpWeights

    def loss(batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x, {"normal": OpWeights(torch.softmax(alpha, -1))}), y)

    a_opt.zero_grad()
    loss(valid).backward()
    a_opt.step()
    w_opt.zero_grad()
    loss(train).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    w_opt.step()

    search._set_learning_rates(0)
    metrics = search.update_rule.step(search, train, valid)
    assert torch.allclose(search.alphas["normal"], alpha, atol=1e-7)
    for (n, p), q in zip(search.model.named_parameters(), model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    assert set(metrics) >= {"loss", "correct", "count", "arch_loss", "arch_correct", "arch_count"}


def test_same_seed_same_search(catalogue):
    a, sa = run_tiny(tiny_recipe(), cat=catalogue)
    b, sb = run_tiny(tiny_recipe(), cat=catalogue)
    assert torch.equal(a.alphas["normal"], b.alphas["normal"])
    assert sa["genotype"] == sb["genotype"]
    c, _ = run_tiny(tiny_recipe(trainer={"seed": 1}), cat=catalogue)
    assert not torch.equal(a.alphas["normal"], c.alphas["normal"])


def test_alpha_changes_and_records(catalogue):
    search, summary = run_tiny(tiny_recipe(), cat=catalogue)
    hist = search.state.history
    assert [h["epoch"] for h in hist] == [0, 1]
    for h in hist:
        assert 0.0 <= h["train_acc"] <= 100.0 and h["train_loss"] > 0
        assert 0.0 <= h["valid_acc"] <= 100.0
        assert 0 < h["entropy"]["normal"] <= torch.log(torch.tensor(5.0)).item() + 1e-6
        assert len(h["alphas"]["normal"]) == 6 and all(len(r) == 5 for r in h["alphas"]["normal"])
    assert hist[0]["lr"] == pytest.approx(0.025) and hist[1]["lr"] == pytest.approx(0.001 + 0.024 * (1 + 0) / 2)
    assert summary["epochs_run"] == 2


def test_lr_schedules():
    cos = OptimizerConfig(lr=0.025, lr_min=0.001, schedule="cosine")
    assert lr_at(cos, 0, 50) == pytest.approx(0.025)
    assert lr_at(cos, 25, 50) == pytest.approx(0.013)
    assert lr_at(OptimizerConfig(lr=3e-4), 7, 50) == 3e-4


def test_entropy_by_hand():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert float(entropy(p)) == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item())


def test_outputs_written(tmp_path, catalogue):
    r = tiny_recipe(output={"progress": False, "draw_cells": True})
    search, summary = run_tiny(r, out_dir=tmp_path, cat=catalogue)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"recipe.yaml", "metrics.jsonl", "checkpoint.pt", "genotype.json", "result.json", "cell_normal.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    saved = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert resolve_recipe(saved, catalogue).to_dict() == saved
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert lines[-1]["genotype"] == json.loads((tmp_path / "result.json").read_text())["genotype"]
    assert "nb201" in lines[-1]["scores"]


def test_checkpoint_loads_weights_only(tmp_path, catalogue):
    search, _ = run_tiny(tiny_recipe(), out_dir=tmp_path, cat=catalogue)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 2
    assert torch.equal(ckpt["alphas"]["normal"], search.alphas["normal"].detach())
