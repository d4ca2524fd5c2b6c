"""Update rules: DARTS second order vs exact autograd, single-level (Single-DARTS), mixed-level (MiLeNAS)."""

import math

import pytest
import torch
from torch.nn import functional as F

from diffnas.testing import build_tiny_search, run_tiny, tiny_recipe


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a shared, loaded CPU (20x here)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

PLAIN_SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant"}


def _double(search):
    search.model.double()
    with torch.no_grad():
        for a in search.alphas.values():
            a.data = a.data.double()


def _batch(loader, step):
    x, y = loader.batch(0, step)
    return x.double(), y


def _ce(search, names, weights, alphas, batch):
    ow = {k: search.relaxation.op_weights(a, search) for k, a in alphas.items()}
    logits = torch.func.functional_call(search.model, dict(zip(names, weights)), (batch[0], ow))
    return F.cross_entropy(logits, batch[1])


def test_bilevel_second_order_matches_exact_unrolled_hypergradient():
    torch.manual_seed(0)
    xi = 0.5
    # ε = epsilon/‖v‖: the paper's 0.01 is a coarse step for a tiny ReLU net (kinks make the central
    # difference differ from the derivative by O(1) there); a small step in float64 must agree tightly
    s = build_tiny_search(tiny_recipe(update_rule={"name": "bilevel", "params": {"order": 2, "xi": xi, "epsilon": 1.0e-5}},
                                      search_space={"name": "nb201", "params": {"C": 2, "N": 1}},
                                      data={"params": {"num_train": 16, "num_test": 4, "image_size": 4}},
                                      trainer={"batch_size": 4}))
    _double(s)
    with torch.no_grad():
        for a in s.alphas.values():
            a.copy_(0.5 * torch.randn_like(a))
    train, valid = _batch(s.train_loader, 0), _batch(s.valid_loader, 0)
    s.weights_step(s.loss(_batch(s.train_loader, 1), ("weights",))["loss"])  # a momentum buffer exists now
    group = s.w_optimizer.param_groups[0]
    mom, wd = group["momentum"], group["weight_decay"]
    assert mom > 0 and wd > 0

    names = [n for n, _ in s.model.named_parameters()]
    params = s.weight_parameters()
    w0 = [p.detach().clone() for p in params]
    bufs = [s.w_optimizer.state[p]["momentum_buffer"] for p in params]
    alphas = {k: a.detach().clone().requires_grad_() for k, a in s.alphas.items()}

    # exact: ∇_α L_val(w − ξ(μm + ∇_w L_tr(w, α) + λw), α) through the inner gradient
    w_in = [w.clone().requires_grad_() for w in w0]
    gw = torch.autograd.grad(_ce(s, names, w_in, alphas, train), w_in, create_graph=True)
    w_prime = [w - xi * (g + wd * w + mom * b) for w, g, b in zip(w_in, gw, bufs)]
    exact = torch.autograd.grad(_ce(s, names, w_prime, alphas, valid), list(alphas.values()))
    # the first-order part alone, to compare the second-order correction on its own
    direct = torch.autograd.grad(_ce(s, names, [w.detach() for w in w_prime], alphas, valid), list(alphas.values()))

    _, got = s.update_rule._unrolled_grads(s, train, valid)
    for g, e, d in zip(got, exact, direct):
        correction, exact_correction = g - d, e - d
        assert exact_correction.norm() > 1e-3 * d.norm()  # the second-order term matters here
        assert torch.allclose(correction, exact_correction, rtol=1e-3, atol=1e-4 * exact_correction.abs().max())
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(p, w) for p, w in zip(params, w0))  # weights restored


def test_single_level_one_forward_backward_on_train_batch():
    recipe = tiny_recipe(update_rule={"name": "single_level", "params": {}},
                         trainer={"weights_optimizer": PLAIN_SGD, "arch_optimizer": PLAIN_SGD, "grad_clip": None})
    s = build_tiny_search(recipe)
    assert s.valid_loader is None  # no validation half is drawn
    train = s.train_loader.batch(0, 0)
    params, alphas = s.weight_parameters(), s.arch_parameters()
    with torch.no_grad():
        for a in alphas:
            a.copy_(0.3 * torch.randn_like(a))
    out = s.loss(train, ("weights", "arch"))
    grads = torch.autograd.grad(out["loss"], params + alphas, allow_unused=True)
    expected = [p.detach() - 0.1 * (torch.zeros_like(p) if g is None else g) for p, g in zip(params + alphas, grads)]

    forwards = []
    handle = s.model.register_forward_hook(lambda *_: forwards.append(1))
    metrics = s.update_rule.step(s, train, None)
    handle.remove()
    assert len(forwards) == 1
    assert set(metrics) == {"loss", "correct", "count"}
    assert float(metrics["loss"]) == pytest.approx(float(out["loss"].detach()))
    for p, e in zip(params + alphas, expected):
        assert torch.allclose(p.detach(), e, atol=1e-6)
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas)  # α moved by its own gradient


def test_single_level_clips_weight_gradients():
    recipe = tiny_recipe(update_rule={"name": "single_level", "params": {}},
                         trainer={"weights_optimizer": PLAIN_SGD, "arch_optimizer": PLAIN_SGD, "grad_clip": 1.0e-3})
    s = build_tiny_search(recipe)
    w0 = [p.detach().clone() for p in s.weight_parameters()]
    s.update_rule.step(s, s.train_loader.batch(0, 0), None)
    step = torch.sqrt(sum(((p.detach() - w) ** 2).sum() for p, w in zip(s.weight_parameters(), w0)))
    assert float(step) == pytest.approx(0.1 * 1e-3, rel=1e-3)  # lr · clip norm


def test_mixed_level_alpha_gradient_is_train_plus_lambda_valid():
    lam = 0.5
    recipe = tiny_recipe(update_rule={"name": "mixed_level", "params": {"lam": lam}},
                         trainer={"weights_optimizer": PLAIN_SGD, "arch_optimizer": PLAIN_SGD, "grad_clip": None})
    s = build_tiny_search(recipe)
    train, valid = s.train_loader.batch(0, 0), s.valid_loader.batch(0, 0)
    alphas = s.arch_parameters()
    with torch.no_grad():
        for a in alphas:
            a.copy_(0.3 * torch.randn_like(a))
    g_tr = torch.autograd.grad(s.loss(train, ())["loss"], alphas)
    g_v = torch.autograd.grad(s.loss(valid, ())["loss"], alphas)
    expected = [a.detach() - 0.1 * (gt + lam * gv) for a, gt, gv in zip(alphas, g_tr, g_v)]
    w0 = [p.detach().clone() for p in s.weight_parameters()]
    metrics = s.update_rule.step(s, train, valid)
    for a, e in zip(alphas, expected):
        assert torch.allclose(a.detach(), e, atol=1e-6)
    assert any(not torch.equal(p.detach(), w) for p, w in zip(s.weight_parameters(), w0))
    assert {"loss", "arch_loss", "arch_count"} <= set(metrics)


@pytest.mark.parametrize("rule", ["single_level", "mixed_level"])
def test_tiny_runs(rule):
    s, summary = run_tiny(tiny_recipe(update_rule={"name": rule, "params": {}}, relaxation={"name": "sigmoid"},
                                      trainer={"steps_per_epoch": 1}))
    assert all(math.isfinite(r["train_loss"]) for r in s.state.history)
    # every rule records validation numbers (single-level measures them on held-out batches)
    assert all(math.isfinite(r["valid_loss"]) and 0.0 <= r["valid_acc"] <= 100.0 for r in s.state.history)
    assert summary["epochs_run"] == 2


def test_gaea_exponentiated_step_by_hand():
    from diffnas.plugins.update_rules.gaea import exponentiated_step

    alpha = torch.tensor([[0.5, 0.25, 0.25]])
    grad = torch.tensor([[0.0, math.log(2.0) / 0.1, 200.0]])
    # α⊙exp(−ηg) = [0.5, 0.125, 0.25·e^-20 → floor 1e-5]; normalised by 0.62501
    got = exponentiated_step(alpha, grad, 0.1, 1e-5)
    assert torch.allclose(got, torch.tensor([[0.5, 0.125, 1e-5]]) / 0.62501)


@pytest.mark.parametrize("mode", ["bilevel", "erm"])
def test_gaea_step_keeps_alpha_on_simplex(mode):
    s = build_tiny_search(tiny_recipe(update_rule={"name": "gaea", "params": {"mode": mode}},
                                      relaxation={"name": "simplex"}))
    assert (s.valid_loader is None) == (mode == "erm")
    a0 = s.alphas["normal"].detach().clone()
    assert torch.allclose(a0, torch.full_like(a0, 0.2))
    train = s.train_loader.batch(0, 0)
    valid = s.valid_loader.batch(0, 0) if s.valid_loader is not None else None
    # the expected α: the EG step on the gradient of the loss the variant uses
    out = s.loss(valid if mode == "bilevel" else train, ("arch",) if mode == "bilevel" else ("weights", "arch"))
    (g,) = torch.autograd.grad(out["loss"], [s.alphas["normal"]])
    expected = a0 * torch.exp(-0.1 * g)
    expected = expected / expected.sum(-1, keepdim=True)
    s.update_rule.step(s, train, valid)
    a1 = s.alphas["normal"].detach()
    assert torch.allclose(a1, expected, atol=1e-7) and not torch.equal(a1, a0)
    assert torch.allclose(a1.sum(-1), torch.ones(a1.shape[0])) and (a1 > 0).all()
    _, summary = run_tiny(tiny_recipe(update_rule={"name": "gaea", "params": {"mode": mode}},
                                      relaxation={"name": "simplex"}, trainer={"steps_per_epoch": 1}))
    assert summary["epochs_run"] == 2


def test_single_level_records_validation_loss_and_accuracy():
    """Single-level draws no validation batch; its record still has valid_loss / valid_acc, measured
    at each epoch end on the first ⌈steps/4⌉ unaugmented held-out batches (the same keys as bi-level)."""
    search, _ = run_tiny(tiny_recipe(update_rule={"name": "single_level"}, trainer={"steps_per_epoch": 5},
                                     data={"params": {"num_train": 128, "num_test": 16, "image_size": 8}}))
    assert search.steps_per_epoch == 5
    bilevel, _ = run_tiny(tiny_recipe())
    assert search.valid_loader is None and search.held_out_loader is not None
    keys = {k for k in bilevel.state.history[-1] if k.startswith(("train_", "valid_"))}
    assert keys == {k for k in search.state.history[-1] if k.startswith(("train_", "valid_"))}
    loader = search.held_out_loader
    ce, correct = [], 0
    for b in range(2):  # ⌈5 / 4⌉ = 2 batches of 8 images (batch-norm statistics are per batch)
        x, y = loader.make_batch(torch.arange(b * 8, b * 8 + 8))
        assert torch.equal(loader.y[b * 8: b * 8 + 8], y)
        with torch.no_grad():
            logits = search.forward(x)
        ce.append(float(F.cross_entropy(logits, y)))
        correct += int((logits.argmax(1) == y).sum())
    rec = search.state.history[-1]
    assert rec["valid_loss"] == pytest.approx(sum(ce) / 2, rel=1e-5)
    assert rec["valid_acc"] == pytest.approx(100.0 * correct / 16)


def _logged_steps(search):
    """Wrap the search's two optimiser steps so that each call is logged, in order."""
    calls = []
    for name in ("arch_step", "weights_step"):
        inner = getattr(search, name)

        def logged(*args, _inner=inner, _name=name, **kw):
            calls.append(_name)
            return _inner(*args, **kw)
        setattr(search, name, logged)
    return calls


@pytest.mark.parametrize("order,step_order,expected", [
    (1, "arch_first", ["arch_step", "weights_step"]),      # DARTS paper Algorithm 1, quark0/darts
    (1, "weights_first", ["weights_step", "arch_step"]),   # xautodl NAS-Bench-201 DARTS-V1.py / GDAS.py
    (2, "arch_first", ["arch_step", "weights_step"]),      # xautodl DARTS-V2.py
])
def test_bilevel_step_order_calls(order, step_order, expected):
    s = build_tiny_search(tiny_recipe(update_rule={"name": "bilevel", "params": {"order": order, "step_order": step_order}}))
    calls = _logged_steps(s)
    s.update_rule.step(s, s.train_loader.batch(0, 0), s.valid_loader.batch(0, 0))
    s.update_rule.step(s, s.train_loader.batch(0, 1), s.valid_loader.batch(0, 1))
    assert calls == expected * 2


def test_bilevel_default_step_order_is_the_papers():
    s = build_tiny_search()
    assert s.update_rule.config.step_order == "arch_first"


def test_bilevel_weights_first_takes_alpha_gradient_at_the_new_weights():
    # w first: α's gradient is ∇_α L_val at the weights just stepped on this batch (xautodl DARTS-V1)
    recipe = tiny_recipe(update_rule={"name": "bilevel", "params": {"order": 1, "step_order": "weights_first"}},
                         trainer={"weights_optimizer": PLAIN_SGD, "arch_optimizer": PLAIN_SGD, "grad_clip": None})
    s = build_tiny_search(recipe)
    train, valid = s.train_loader.batch(0, 0), s.valid_loader.batch(0, 0)
    params, alphas = s.weight_parameters(), s.arch_parameters()
    with torch.no_grad():
        for a in alphas:
            a.copy_(0.3 * torch.randn_like(a))
    g_w = torch.autograd.grad(s.loss(train, ("weights",))["loss"], params, allow_unused=True)
    w0 = [p.detach().clone() for p in params]
    with torch.no_grad():  # the weight step by hand, then the validation gradient there
        for p, g in zip(params, g_w):
            if g is not None:
                p.sub_(0.1 * g)
    g_a = torch.autograd.grad(s.loss(valid, ("arch",))["loss"], alphas)
    expected_a = [a.detach() - 0.1 * g for a, g in zip(alphas, g_a)]
    expected_w = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
    s.update_rule.step(s, train, valid)
    for a, e in zip(alphas, expected_a):
        assert torch.allclose(a.detach(), e, atol=1e-6)
    for p, e in zip(params, expected_w):
        assert torch.allclose(p.detach(), e, atol=1e-6)
