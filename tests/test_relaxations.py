"""Relaxations sigmoid, sparse_noisy_softmax, gumbel_softmax, dirichlet (+ the dirichlet_kl regulariser)."""

import math

import attrs

import pytest
import torch

from diffnas.core.cells import SearchCell
from diffnas.plugins.regularisers.drnas import DirichletKL
from diffnas.plugins.relaxations.dirichlet import Dirichlet
from diffnas.plugins.relaxations.gumbel import GumbelSoftmax
from diffnas.plugins.relaxations.sigmoid import Sigmoid
from diffnas.plugins.relaxations.sparse_noisy import SparseNoisySoftmax, sparse_noisy_softmax
from diffnas.testing import run_tiny, tiny_recipe


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a shared, loaded CPU (20x here)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- sigmoid


def test_sigmoid_values_and_init():
    r = Sigmoid()
    alpha = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])
    assert torch.allclose(r.op_weights(alpha, None).weights, torch.tensor([[0.5, 0.75, 0.25]]))
    assert torch.allclose(r.probabilities(alpha), torch.tensor([[0.5, 0.75, 0.25]]))
    a0 = r.init_alpha(6, 5, torch.Generator().manual_seed(0))
    assert a0.shape == (6, 5) and 0 < a0.abs().max() < 1e-2  # 1e-3·N(0, 1): σ ≈ 0.5
    star = Sigmoid(Sigmoid.Config(init_prob=0.1))
    assert torch.allclose(torch.sigmoid(star.init_alpha(6, 5, torch.Generator())), torch.full((6, 5), 0.1))
    with pytest.raises(ValueError):
        Sigmoid.Config(init_prob=1.0)


# --------------------------------------------------------------------------- sparse-noisy softmax


def test_sparse_noisy_backward_by_hand():
    # α = [0, 0], τ = 0.5, g = [1, 0]: p = [.5, .5]; J_τᵀg = p(g − ⟨g,p⟩)/τ = [.5, −.5]; J_1ᵀg = [.25, −.25]
    g = torch.tensor([[1.0, 0.0]])
    for extra, tau, expected in ((True, 0.5, [0.75, -0.75]), (False, 0.5, [0.5, -0.5]), (True, 1.0, [0.25, -0.25])):
        alpha = torch.zeros(1, 2, requires_grad=True)
        p = sparse_noisy_softmax(alpha, tau, extra)
        assert torch.allclose(p, torch.tensor([[0.5, 0.5]]))
        p.backward(g)
        assert torch.allclose(alpha.grad, torch.tensor([expected])), (extra, tau)


def test_sparse_noisy_backward_matches_two_jacobians():
    torch.manual_seed(0)
    alpha = (1e-2 * torch.randn(3, 5, dtype=torch.float64)).requires_grad_()
    g = torch.randn(3, 5, dtype=torch.float64)
    tau = 4e-3
    r = SparseNoisySoftmax(SparseNoisySoftmax.Config(tau=tau))
    p = r.op_weights(alpha, None).weights
    assert torch.allclose(p, torch.softmax(alpha.detach() / tau, -1))
    (grad,) = torch.autograd.grad(p, alpha, g)
    expected = torch.zeros_like(grad)
    for e in range(3):  # independent: full Jacobians of each edge's two softmaxes
        j_tau = torch.autograd.functional.jacobian(lambda a: torch.softmax(a / tau, -1), alpha.detach()[e])
        j_one = torch.autograd.functional.jacobian(lambda a: torch.softmax(a, -1), alpha.detach()[e])
        expected[e] = j_tau.T @ g[e] + j_one.T @ g[e]
    assert torch.allclose(grad, expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(r.probabilities(alpha.detach()), p.detach())


def test_sparse_noisy_tau_is_schedulable():
    r = SparseNoisySoftmax()
    assert r.hparams["tau"] == 1e-3
    r.hparams["tau"] = 2.0
    alpha = torch.tensor([[0.0, 2.0]])
    assert torch.allclose(r.op_weights(alpha, None).weights, torch.softmax(alpha / 2.0, -1))


def test_sparse_noisy_extra_term_only_on_named_cells():
    # PCDEDD-DARTS/architect_cyc.py adds the τ = 1 term to alphas_normal only: reduce α keeps J_τᵀg alone
    g = torch.tensor([[1.0, 0.0]])
    r = SparseNoisySoftmax(SparseNoisySoftmax.Config(tau=0.5))
    assert r.config.extra_grad_cells == ("normal",)
    for cell, expected in (("normal", [0.75, -0.75]), ("reduce", [0.5, -0.5])):
        alpha = torch.zeros(1, 2, requires_grad=True)
        r.cell_op_weights(cell, alpha, None).weights.backward(g)
        assert torch.allclose(alpha.grad, torch.tensor([expected])), cell
    both = SparseNoisySoftmax(SparseNoisySoftmax.Config(tau=0.5, extra_grad_cells=("normal", "reduce")))
    alpha = torch.zeros(1, 2, requires_grad=True)
    both.cell_op_weights("reduce", alpha, None).weights.backward(g)
    assert torch.allclose(alpha.grad, torch.tensor([[0.75, -0.75]]))


def test_sparse_noisy_darts_space_search_and_unknown_cell(catalogue):
    from diffnas.testing import build_tiny_search
    space = {"name": "darts", "params": {"C": 4, "layers": 3}}
    s = build_tiny_search(tiny_recipe(search_space=space, relaxation={"name": "sparse_noisy_softmax", "params": {"tau": 0.05}}))
    batch = s.valid_loader.batch(0, 0)  # one batch: each call draws fresh augmentations
    out = s.loss(batch, ("arch",))
    g = dict(zip(s.alphas, torch.autograd.grad(out["loss"], [s.alphas[c] for c in s.alphas])))
    s.relaxation.config = attrs.evolve(s.relaxation.config, extra_grad=False)
    out0 = s.loss(batch, ("arch",))
    g0 = dict(zip(s.alphas, torch.autograd.grad(out0["loss"], [s.alphas[c] for c in s.alphas])))
    assert torch.allclose(g["reduce"], g0["reduce"])  # the reduction cell gets no τ = 1 term
    assert not torch.allclose(g["normal"], g0["normal"])
    from diffnas.core.errors import RecipeError
    with pytest.raises(RecipeError, match=r"extra_grad_cells.*'cell'.* @ recipe\.relaxation\.params\.extra_grad_cells"):
        build_tiny_search(tiny_recipe(relaxation={"name": "sparse_noisy_softmax", "params": {"extra_grad_cells": ["cell"]}}))


# --------------------------------------------------------------------------- gumbel softmax (GDAS)


def test_gumbel_hard_forward_and_straight_through_gradient():
    r = GumbelSoftmax(GumbelSoftmax.Config(tau=2.0))
    alpha = torch.tensor([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]], requires_grad=True)
    noise = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    r.gumbel = lambda like: noise.clone()
    ow = r.op_weights(alpha, None)
    one_hot = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(ow.weights.detach(), one_hot)
    assert torch.equal(ow.active, one_hot.bool())
    c = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (ow.weights * c).sum().backward()
    # straight-through: the gradient is that of p = softmax((log_softmax(α) + g)/τ)
    a2 = alpha.detach().clone().requires_grad_()
    p = torch.softmax((torch.log_softmax(a2, -1) + noise) / 2.0, -1)
    (p * c).sum().backward()
    assert torch.allclose(alpha.grad, a2.grad) and alpha.grad.abs().sum() > 0
    assert torch.allclose(r.probabilities(alpha.detach()), torch.softmax(alpha.detach(), -1))


def test_gumbel_resamples_non_finite_noise():
    r = GumbelSoftmax()
    calls = []

    def noisy(like):
        calls.append(1)
        g = torch.zeros_like(like)
        if len(calls) == 1:
            g[0, 0] = float("inf")  # what −log(Exp) gives when the exponential draw is 0
        return g

    r.gumbel = noisy
    ow = r.op_weights(torch.zeros(2, 4), None)
    assert len(calls) == 2 and torch.isfinite(ow.weights).all()
    assert ow.active.sum(-1).tolist() == [1, 1]


def test_gumbel_sampling_frequencies_follow_softmax_alpha():
    torch.manual_seed(0)
    r = GumbelSoftmax(GumbelSoftmax.Config(tau=1.0))
    alpha = torch.log(torch.tensor([0.2, 0.3, 0.5])).expand(20000, 3)
    freq = r.op_weights(alpha, None).active.float().mean(0)
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.015)  # Gumbel-max trick


def test_gumbel_tiny_run_only_sampled_ops_and_annealed_tau():
    s, summary = run_tiny(tiny_recipe(
        relaxation={"name": "gumbel_softmax"}, trainer={"epochs": 3, "steps_per_epoch": 1},
        schedules=[{"name": "linear", "params": {"target": "relaxation.tau", "start": 10.0, "end": 0.1}}]))
    taus = [r["hparams"]["relaxation"]["tau"] for r in s.state.history]
    assert taus == pytest.approx([10.0, 5.05, 0.1])
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_loss"]) for r in s.state.history)
    assert all(torch.isfinite(a).all() for a in s.alphas.values())
    # one forward pass computes at most the sampled op on each edge (none is never computed)
    cell = next(m for m in s.model.modules() if isinstance(m, SearchCell))
    calls = [[0] * len(edge) for edge in cell.mixed]
    for e, edge in enumerate(cell.mixed):
        for o, op in enumerate(edge):
            op.register_forward_hook(lambda *_, e=e, o=o: calls[e].__setitem__(o, calls[e][o] + 1))
    ow = s.op_weights()
    with torch.no_grad():
        s.forward(s.train_loader.batch(0, 0)[0], ow)
    active = ow["normal"].active
    assert sum(map(sum, calls)) > 0
    for e in range(len(calls)):
        for o in range(len(calls[e])):
            assert calls[e][o] == 0 or (calls[e][o] == 1 and active[e, o])


# --------------------------------------------------------------------------- dirichlet (DrNAS)


def test_dirichlet_probabilities_are_the_concentration_mean():
    r = Dirichlet()
    beta = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # c = elu(β) + 1: [1, 2] and [e^-1, 1]
    expected = torch.tensor([[1 / 3, 2 / 3], [math.exp(-1) / (math.exp(-1) + 1), 1 / (math.exp(-1) + 1)]])
    assert torch.allclose(r.probabilities(beta), expected)


def test_dirichlet_rsample_shape_simplex_and_pathwise_gradient():
    torch.manual_seed(0)
    r = Dirichlet()
    beta = torch.tensor([0.5, -0.3, 1.2], requires_grad=True)
    w = r.op_weights(beta.expand(40000, 3), None).weights
    assert w.shape == (40000, 3) and (w > 0).all() and torch.allclose(w.sum(-1), torch.ones(40000))
    # E[p] = c/Σc; the reparameterised gradient of the sample mean estimates ∇β E[p_0]
    assert torch.allclose(w.detach().mean(0), r.probabilities(beta.detach()), atol=0.01)
    w[:, 0].mean().backward()
    b2 = beta.detach().clone().requires_grad_()
    r.probabilities(b2)[0].backward()
    assert torch.allclose(beta.grad, b2.grad, atol=0.01) and beta.grad.abs().max() > 0.05
    # a fresh sample every forward pass
    a = r.op_weights(torch.zeros(6, 5), None).weights
    assert not torch.equal(a, r.op_weights(torch.zeros(6, 5), None).weights)


def test_dirichlet_kl_regulariser_by_formula():
    class S:
        alphas = {"normal": torch.tensor([[0.3, -0.2, 1.0]]), "reduce": torch.zeros(2, 3)}

    reg = DirichletKL()
    c = torch.nn.functional.elu(S.alphas["normal"][0]) + 1
    c0 = c.sum()
    # KL(Dir(c) ‖ Dir(1)) = lnΓ(Σc) − Σ lnΓ(c_i) − lnΓ(K) + Σ (c_i − 1)(ψ(c_i) − ψ(Σc)); zero for β = 0
    kl = torch.lgamma(c0) - torch.lgamma(c).sum() - math.lgamma(3) + ((c - 1) * (torch.digamma(c) - torch.digamma(c0))).sum()
    assert float(reg.loss(S, "arch")) == pytest.approx(1e-3 * float(kl), rel=1e-5)
    assert float(kl) > 0


def test_dirichlet_tiny_run_with_kl():
    s, _ = run_tiny(tiny_recipe(relaxation={"name": "dirichlet"}, regularisers=[{"name": "dirichlet_kl"}],
                                trainer={"steps_per_epoch": 1, "arch_optimizer": {"weight_decay": 0.0}}))
    assert all(math.isfinite(r["valid_loss"]) for r in s.state.history)


def test_dirichlet_kl_refuses_alpha_weight_decay():
    # DrNAS regularises with L2 (α weight decay) or KL (then weight decay 0), never both
    from diffnas.core.errors import RecipeError
    from diffnas.testing import build_tiny_search
    with pytest.raises(RecipeError, match=r"reg_type 'kl'.*@ recipe\.trainer\.arch_optimizer\.weight_decay"):
        build_tiny_search(tiny_recipe(relaxation={"name": "dirichlet"}, regularisers=[{"name": "dirichlet_kl"}]))


def test_sigmoid_and_sparse_noisy_tiny_runs():
    for relax in ({"name": "sigmoid", "params": {"init_prob": 0.1}}, {"name": "sparse_noisy_softmax"}):
        s, _ = run_tiny(tiny_recipe(relaxation=relax, trainer={"epochs": 1, "steps_per_epoch": 2}))
        assert all(math.isfinite(r["train_loss"]) for r in s.state.history)
        assert all(torch.isfinite(a).all() for a in s.alphas.values())
