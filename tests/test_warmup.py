"""α warm-up (``trainer.warmup_epochs`` / ``warmup_steps``) and a shared start (``trainer.init_from``)."""

from __future__ import annotations

import json

import pytest
import torch

from diffnas import api
from diffnas.core.errors import RecipeError
from diffnas.core.hookspecs import hookimpl
from diffnas.testing import build_tiny_search, run_tiny, tiny_recipe


def _alphas(s):
    return {k: v.detach().clone() for k, v in s.alphas.items()}


def test_warmup_epochs_freeze_alpha_then_release_it():
    recipe = tiny_recipe(trainer={"epochs": 3, "warmup_epochs": 2})
    s = build_tiny_search(recipe)
    a0 = _alphas(s)
    w0 = [p.detach().clone() for p in s.model.parameters()]
    hist = []

    class Spy:
        @hookimpl
        def diffnas_epoch_end(self, search, epoch, record):
            hist.append((_alphas(search), [p.detach().clone() for p in search.model.parameters()]))

    s.pm.register(Spy(), name="spy")
    try:
        s.run(progress=False)
    finally:
        s.pm.unregister(name="spy")
    for epoch in (0, 1):  # warm-up: α exactly as initialised, weights trained
        assert all(torch.equal(hist[epoch][0][k], a0[k]) for k in a0)
        assert any(not torch.equal(p, q) for p, q in zip(hist[epoch][1], w0))
    assert any(not torch.equal(hist[2][0][k], a0[k]) for k in a0)  # the first α steps come in epoch 2
    # warm-up epochs still record a held-out valid loss; the first α epoch records the α batches'
    assert all("valid_loss" in r for r in s.history)


def test_warmup_steps_end_inside_an_epoch():
    spe = build_tiny_search().steps_per_epoch
    s = build_tiny_search(tiny_recipe(trainer={"epochs": 1, "warmup_steps": spe - 1}))
    a0 = _alphas(s)
    assert s.warmup_end_step == spe - 1 and s.in_warmup
    s.run(progress=False)
    assert not s.in_warmup
    # exactly one α step (the last step of the epoch): Adam moves each α by about lr at its first step
    moved = max(float((s.alphas[k].detach() - a0[k]).abs().max()) for k in a0)
    lr = s.recipe.trainer.arch_optimizer.lr
    assert 0.5 * lr < moved <= 1.01 * lr


class _Kill(Exception):
    pass


def _run_killed_at(recipe, out, epoch):
    """Run ``recipe`` into ``out`` and stop it at the start of ``epoch`` (after the previous epoch's checkpoint)."""
    s = build_tiny_search(recipe, out)

    class Killer:
        @hookimpl
        def diffnas_epoch_start(self, search, epoch: int):
            if epoch == at:
                raise _Kill

    at = epoch
    s.pm.register(Killer(), name="kill")
    try:
        with pytest.raises(_Kill):
            s.run(progress=False)
    finally:
        s.pm.unregister(name="kill")


def test_warmup_is_resumed_exactly(tmp_path):
    """A run killed after its warm-up epoch and resumed ends bit for bit as an uninterrupted one."""
    recipe = tiny_recipe(trainer={"epochs": 3, "warmup_epochs": 1, "deterministic": True})
    full, _ = run_tiny(recipe, tmp_path / "full")
    _run_killed_at(recipe, tmp_path / "part", 1)
    api.resume(tmp_path / "part", progress=False)
    resumed = api.load_run(tmp_path / "part")
    assert resumed.result["genotype"] == str(full.final_genotype)
    ref = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["alphas"] for r in resumed.history] == [r["alphas"] for r in ref]
    assert [r["valid_loss"] for r in resumed.history] == [r["valid_loss"] for r in ref]


def test_init_from_loads_weights_and_optionally_alpha(tmp_path):
    src, _ = run_tiny(tiny_recipe(trainer={"epochs": 2, "warmup_epochs": 2}), tmp_path / "warm")
    fork = build_tiny_search(tiny_recipe(trainer={"epochs": 1, "seed": 5, "init_from": {"path": str(tmp_path / "warm")}}),
                             tmp_path / "fork")
    fresh_alpha = _alphas(fork)
    fork.apply_init_from()
    for (k, p), (k2, q) in zip(fork.model.state_dict().items(), src.model.state_dict().items()):
        assert k == k2 and torch.equal(p, q)
    assert all(torch.equal(fork.alphas[k], fresh_alpha[k]) for k in fresh_alpha)  # α not asked for: its own
    info = fork.init_source
    assert info["epoch"] == 2 and info["finished"] is True and len(info["checkpoint_sha256"]) == 64
    fork.run(progress=False)
    prov = json.loads((tmp_path / "fork" / "provenance.json").read_text())
    assert prov["init_from"]["path"] == str((tmp_path / "warm" / "checkpoint.pt").resolve())
    assert prov["init_from"]["recipe_sha256"] == torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=True)["recipe_sha256"]

    with_alpha = build_tiny_search(tiny_recipe(trainer={"epochs": 1, "seed": 5, "init_from": {
        "path": str(tmp_path / "fork" / "checkpoint.pt"), "alphas": True}}))
    with_alpha.apply_init_from()
    assert all(torch.equal(with_alpha.alphas[k], fork.alphas[k]) for k in fresh_alpha)


def test_init_from_refuses_another_structure(tmp_path):
    run_tiny(tiny_recipe(trainer={"epochs": 1}), tmp_path / "src")
    bigger = tiny_recipe(search_space={"name": "nb201", "params": {"C": 8, "N": 1}},
                         trainer={"epochs": 1, "init_from": {"path": str(tmp_path / "src")}})
    s = build_tiny_search(bigger)
    with pytest.raises(RecipeError) as info:
        s.apply_init_from()
    text = str(info.value)
    assert "@ recipe.trainer.init_from.path" in text and "has shape" in text
    missing = build_tiny_search(tiny_recipe(trainer={"epochs": 1, "init_from": {"path": str(tmp_path / "nowhere")}}))
    with pytest.raises(RecipeError, match=r"nowhere.* not found .*@ recipe.trainer.init_from.path"):
        missing.run(progress=False)


def test_resume_does_not_need_the_source_again(tmp_path):
    """A forked run resumes from its own checkpoint, even once the source is gone."""
    import shutil

    run_tiny(tiny_recipe(trainer={"epochs": 1}), tmp_path / "src")
    _run_killed_at(tiny_recipe(trainer={"epochs": 2, "init_from": {"path": str(tmp_path / "src")}}), tmp_path / "fork", 1)
    shutil.rmtree(tmp_path / "src")
    summary = api.resume(tmp_path / "fork", progress=False)
    assert summary["epochs_run"] == 2
