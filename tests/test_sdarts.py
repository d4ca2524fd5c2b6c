"""SDARTS-RS and SDARTS-ADV (Chen & Hsieh, ICML 2020) against the authors' code
(``Sunshine-Ye/Beta-DARTS: attacker/perturb.py``, ``nasbench201/train_search.py``, from SmoothDARTS):
the clip, the ε ramp, the bounds of the random perturbation, the PGD attack raising the loss, α untouched
by the perturbed weight step, the refusals and an exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from diffnas import api
from diffnas.core.errors import RecipeError
from diffnas.core.outputs import CHECKPOINT, load_checkpoint
from diffnas.core.population import population_refusals
from diffnas.core.protocols import OpWeights
from diffnas.core.recipe import resolve_recipe
from diffnas.plugins.regularisers.sdarts import epsilon_at, simplex_clip
from diffnas.testing import build_tiny_search, fresh_catalogue, tiny_recipe


def _search(name, **params):
    recipe = tiny_recipe(regularisers=[{"name": name, "params": params}],
                         data={"dataset": "synthetic", "params": {"num_train": 64, "num_test": 16, "image_size": 8,
                                                                  "num_classes": 4}})
    return build_tiny_search(recipe)


def _ce(search, batch, weights):
    """The loss the attack maximises: cross-entropy with the supernet in eval mode, as Linf_PGD_alpha."""
    ow = {k: OpWeights(v) for k, v in weights.items()}
    search.model.eval()
    try:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(search.forward(batch[0], ow), batch[1]))
    finally:
        search.model.train()


def test_clip_is_the_authors_model_clip():
    w = torch.tensor([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.2], [1.5, 0.5, 0.0]])
    out = simplex_clip(w)
    expected = torch.tensor([[0.5 / 1.4, 0.0, 0.9 / 1.4], [1.0, 0.0, 0.0], [1.0 / 1.5, 0.5 / 1.5, 0.0]])
    assert torch.allclose(out, expected)


def test_epsilon_rises_linearly_over_the_epochs_as_the_code():
    # 0.03 + (0.3 - 0.03) * epoch / epochs: never reaches 0.3
    assert [round(epsilon_at(e, 50, 0.03, 0.3), 6) for e in (0, 1, 25, 49)] == [0.03, 0.0354, 0.165, 0.2946]
    recipe = tiny_recipe(regularisers=[{"name": "sdarts_rs"}], trainer={"epochs": 4, "steps_per_epoch": 1})
    search = build_tiny_search(recipe)
    search.run(progress=False)
    assert [r["sdarts_rs"]["epsilon"] for r in search.history] == pytest.approx([0.03, 0.0975, 0.165, 0.2325])


def test_random_perturbation_is_uniform_in_the_epsilon_ball_then_clipped():
    s = _search("sdarts_rs")
    s.state.epoch = 1  # ε = 0.03 + 0.27 / 2 = 0.165
    reg = s.regularisers[0]
    eps = reg.epsilon(s)
    assert eps == pytest.approx(0.165)
    batch = s.train_loader.batch(0, 0)
    torch.manual_seed(7)
    ow = s.weight_step_op_weights(batch)
    p = torch.softmax(s.alphas["normal"].detach(), -1)
    torch.manual_seed(7)
    delta = torch.empty_like(p).uniform_(-eps, eps)
    assert delta.abs().max() <= eps and delta.abs().max() > 0.8 * eps  # it spans the ball
    assert torch.equal(ow["normal"].weights, simplex_clip(p + delta))
    rows = ow["normal"].weights
    assert torch.allclose(rows.sum(-1), torch.ones(rows.shape[0])) and (rows >= 0).all()
    assert not ow["normal"].weights.requires_grad


def test_pgd_raises_the_training_loss_more_than_a_random_draw():
    s = _search("sdarts_adv")
    s.state.epoch = 1  # ε = 0.165
    batch = s.train_loader.batch(0, 0)
    p = {"normal": torch.softmax(s.alphas["normal"].detach(), -1)}
    clean = _ce(s, batch, p)
    torch.manual_seed(3)
    adv = s.weight_step_op_weights(batch)["normal"].weights
    assert s.model.training  # the attack ran in eval mode and gave the mode back
    rs = _search("sdarts_rs")
    rs.state.epoch = 1
    torch.manual_seed(3)
    rand = rs.weight_step_op_weights(batch)["normal"].weights
    l_adv, l_rand = _ce(s, batch, {"normal": adv}), _ce(s, batch, {"normal": rand})
    assert l_adv > clean + 1e-3 and l_adv > l_rand
    assert torch.allclose(adv.sum(-1), torch.ones(adv.shape[0])) and (adv >= 0).all()
    # each PGD iterate stays within ε of softmax(α) before the clip renormalises it
    assert (adv - p["normal"]).abs().max() <= 2 * 0.165 + 1e-6


def test_alpha_step_runs_on_the_unperturbed_weights_and_the_weight_step_leaves_alpha_alone():
    # arch_first (the authors' order): after one batch α equals a plain DARTS run's, the weights do not
    sd = _search("sdarts_adv")
    plain_sd = build_tiny_search(tiny_recipe(data={"dataset": "synthetic", "params": {
        "num_train": 64, "num_test": 16, "image_size": 8, "num_classes": 4}}))
    train, valid = sd.train_loader.batch(0, 0), sd.valid_loader.batch(0, 0)
    for s in (sd, plain_sd):
        s.update_rule.step(s, train, valid)
    assert torch.equal(sd.alphas["normal"], plain_sd.alphas["normal"])
    w_sd = torch.cat([p.detach().reshape(-1) for p in sd.model.parameters()])
    w_plain = torch.cat([p.detach().reshape(-1) for p in plain_sd.model.parameters()])
    assert not torch.allclose(w_sd, w_plain)
    # the weight step alone: α bitwise unchanged, weights moved
    before = sd.alphas["normal"].detach().clone()
    w0 = w_sd.clone()
    sd.update_rule._weights_step(sd, train)
    assert torch.equal(sd.alphas["normal"], before)
    assert not torch.equal(torch.cat([p.detach().reshape(-1) for p in sd.model.parameters()]), w0)


@pytest.mark.parametrize("over, message", [
    ({"update_rule": {"name": "single_level"}}, "has no separate weight step"),
    ({"relaxation": {"name": "gumbel_softmax"}}, "samples one op per edge"),
])
def test_refused_where_the_perturbation_cannot_act(over, message, catalogue):
    with pytest.raises(RecipeError) as exc:
        resolve_recipe(tiny_recipe(regularisers=[{"name": "sdarts_rs"}], **over), catalogue)
    assert message in str(exc.value) and "recipe.regularisers[0].name" in str(exc.value)


def test_refused_in_a_population():
    members = [_search("sdarts_rs"), _search("sdarts_rs")]
    assert any("perturbs the weight step's op weights" in m for m, _ in population_refusals(members))


def test_resume_mid_epoch_draws_the_same_perturbations(tmp_path):
    recipe = tiny_recipe(regularisers=[{"name": "sdarts_adv", "params": {"steps": 2}}],
                         trainer={"epochs": 2, "steps_per_epoch": 2, "deterministic": True},
                         output={"checkpoint_every_steps": 1})
    api.search(recipe, out=tmp_path / "ref", cat=fresh_catalogue(), progress=False)
    from diffnas.core import outputs

    calls = {"n": 0}
    orig = outputs.RunWriter.checkpoint

    def die_after_third(self):  # a kill right after the mid-epoch checkpoint of epoch 1
        orig(self)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    outputs.RunWriter.checkpoint = die_after_third
    try:
        with pytest.raises(KeyboardInterrupt):
            api.search(recipe, out=tmp_path / "run", cat=fresh_catalogue(), progress=False)
    finally:
        outputs.RunWriter.checkpoint = orig
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["state"]["step"] == 1
    api.resume(tmp_path / "run", cat=fresh_catalogue(), progress=False)
    ref, got = (load_checkpoint(tmp_path / d / CHECKPOINT) for d in ("ref", "run"))
    assert torch.equal(ref["alphas"]["normal"], got["alphas"]["normal"])
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    assert math.isfinite(ref["state"]["history"][-1]["train_loss"])


def test_warm_up_batches_train_the_weights_on_perturbed_op_weights():
    # an α warm-up step is bilevel's weight step alone, so it is perturbed too; α does not move
    recipe = tiny_recipe(regularisers=[{"name": "sdarts_rs"}], trainer={"warmup_steps": 1})
    sd, plain = build_tiny_search(recipe), build_tiny_search(tiny_recipe(trainer={"warmup_steps": 1}))
    train = sd.train_loader.batch(0, 0)
    a0 = sd.alphas["normal"].detach().clone()
    for s in (sd, plain):
        s.update_rule.warmup_step(s, train, None)
    assert torch.equal(sd.alphas["normal"], a0)
    w = [torch.cat([p.detach().reshape(-1) for p in s.model.parameters()]) for s in (sd, plain)]
    assert not torch.allclose(w[0], w[1])
