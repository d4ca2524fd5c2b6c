"""Regularisers: degeneracy correction (capped simplex, depth, parameter-free limit), Fair-DARTS
zero-one loss, β-DARTS and the DARTS- auxiliary skip. Hand-computed values on tiny inputs, then one
tiny end-to-end search each."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from diffnas.core.cells import SearchCell, make_cell_graph
from diffnas.core.errors import RecipeError
from diffnas.core.protocols import OpWeights
from diffnas.core.genotype import CellGenotype, Genotype
from diffnas.plugins.discretisers.degeneracy_argmax import limit_parameter_free
from diffnas.plugins.regularisers.beta_darts import BetaDarts, beta_loss
from diffnas.plugins.regularisers.darts_minus_skip import DartsMinusSkip, add_auxiliary_skips
from diffnas.plugins.regularisers.degeneracy_correction import (
    cap_parameter_free,
    expected_depth,
    max_expected_depth,
    project_capped_simplex,
)
from diffnas.plugins.regularisers.fair_darts_zero_one import zero_one_loss
from diffnas.plugins.search_spaces.nb201 import NB201_OP_NAMES
from diffnas.plugins.search_spaces.ops import DARTS_OPS, NB201_OPS, FactorizedReduce
from diffnas.testing import build_tiny_search, fresh_catalogue, run_tiny, tiny_recipe

SCIPY_REASON = ("cross-checks the projection against scipy's solver, which is not installed (optional: pip install "
                "scipy); the hand-computed projection tests here do not need it")

FREE = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "noise"})
NB201_FREE = torch.tensor([op in FREE for op in NB201_OP_NAMES])


@pytest.fixture(scope="module")
def cat():
    return fresh_catalogue()


def _nb201_graph():
    return make_cell_graph("normal", 1, 3, NB201_OP_NAMES, concat=[3])


def _fast(**kw):
    """The tiny recipe with one step per epoch (the CPU is shared)."""
    trainer = {"epochs": 2, "steps_per_epoch": 1}
    trainer.update(kw.pop("trainer", {}))
    return tiny_recipe(trainer=trainer, **kw)


# --------------------------------------------------------------------------- capped simplex


def test_capped_simplex_hand_value():
    # γ = 0.45: clip([0.05, -0.25, 0.95, -0.75], 0, 1) sums to 1
    x = project_capped_simplex(torch.tensor([0.5, 0.2, 1.4, -0.3], dtype=torch.float64), 1.0)
    assert torch.allclose(x, torch.tensor([0.05, 0.0, 0.95, 0.0], dtype=torch.float64), atol=1e-12)
    # the upper bound binds: y far above, k = 2 of 3
    x = project_capped_simplex(torch.tensor([5.0, 4.0, 0.0], dtype=torch.float64), 2.0)
    assert torch.allclose(x, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 2.5, 6.0])
def test_capped_simplex_feasible_and_kkt(k):
    g = torch.Generator().manual_seed(0)
    y = 2 * torch.randn(20, 6, generator=g, dtype=torch.float64)
    x = project_capped_simplex(y, k)
    assert torch.allclose(x.sum(-1), torch.full((20,), k, dtype=torch.float64), atol=1e-9)
    assert (x >= 0).all() and (x <= 1).all()
    # KKT: one γ with y − x = γ on free coordinates, ≤ γ at 0 and ≥ γ at 1
    for yi, xi in zip(y, x):
        r = yi - xi
        mid = (xi > 1e-9) & (xi < 1 - 1e-9)
        if mid.any():
            gamma = r[mid].mean()
            assert torch.allclose(r[mid], gamma.expand(int(mid.sum())), atol=1e-8)
            assert (r[xi <= 1e-9] <= gamma + 1e-8).all()
            assert (r[xi >= 1 - 1e-9] >= gamma - 1e-8).all()


def test_capped_simplex_is_the_closest_point():
    scipy_opt = pytest.importorskip("scipy.optimize", reason=SCIPY_REASON)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        y = torch.randn(5, generator=g, dtype=torch.float64)
        k = 1.7
        x = project_capped_simplex(y, k).numpy()
        res = scipy_opt.minimize(lambda z: ((z - y.numpy()) ** 2).sum(), x0=[k / 5] * 5, method="SLSQP",
                                 bounds=[(0, 1)] * 5, constraints=[{"type": "eq", "fun": lambda z: z.sum() - k}],
                                 options={"ftol": 1e-14, "maxiter": 500})
        assert abs(((x - y.numpy()) ** 2).sum() - res.fun) < 1e-8
        assert abs(x - res.x).max() < 1e-4


def test_capped_simplex_rejects_infeasible_k():
    with pytest.raises(ValueError, match="'k' must be in"):
        project_capped_simplex(torch.zeros(3), 3.5)


def test_cap_parameter_free_hand_value():
    # ops: none, skip, conv1x1, conv3x3, avg_pool; parameter-free total 0.8 > 0.5
    p = torch.tensor([0.35, 0.35, 0.1, 0.1, 0.1], dtype=torch.float64)
    x = cap_parameter_free(p, NB201_FREE, 0.5)
    # free group [0.35, 0.35, 0.1] → Σ = 0.5 (γ = 0.1); parametric [0.1, 0.1] → Σ = 0.5 (γ = −0.15)
    assert torch.allclose(x, torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], dtype=torch.float64), atol=1e-12)
    # under the cap: unchanged
    q = torch.tensor([0.1, 0.1, 0.4, 0.3, 0.1], dtype=torch.float64)
    assert torch.equal(cap_parameter_free(q, NB201_FREE, 0.5), q)


def test_cap_parameter_free_is_the_projection_onto_the_capped_set():
    scipy_opt = pytest.importorskip("scipy.optimize", reason=SCIPY_REASON)
    free = NB201_FREE.numpy()
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        p = torch.softmax(2 * torch.randn(5, generator=g, dtype=torch.float64), 0)
        p[free] = p[free] * 4
        p = p / p.sum()
        x = cap_parameter_free(p, NB201_FREE, 0.3).numpy()
        res = scipy_opt.minimize(lambda z: ((z - p.numpy()) ** 2).sum(), x0=[0.2] * 5, method="SLSQP", bounds=[(0, 1)] * 5,
                                 constraints=[{"type": "eq", "fun": lambda z: z.sum() - 1},
                                              {"type": "ineq", "fun": lambda z: 0.3 - z[free].sum()}],
                                 options={"ftol": 1e-14, "maxiter": 500})
        assert abs(((x - p.numpy()) ** 2).sum() - res.fun) < 1e-8


# --------------------------------------------------------------------------- depth


def _hand_probs():
    # NB201 edges in α order: (0,1) (0,2) (1,2) (0,3) (1,3) (2,3); ops none, skip, conv1, conv3, pool
    return torch.tensor([
        [0, 0, 0, 1, 0],  # ℓ = 1
        [0, 1, 0, 0, 0],  # ℓ = 0
        [0, 0.5, 0.5, 0, 0],  # ℓ = 0.5
        [1, 0, 0, 0, 0],  # ℓ = 0
        [0, 0, 1, 0, 0],  # ℓ = 1
        [0, 0, 0, 1, 0],  # ℓ = 1
    ], dtype=torch.float64)


def test_expected_depth_hand_value():
    graph = _nb201_graph()
    parametric = (~NB201_FREE).double().expand(6, 5)
    # d1 = 1; d2 = ((0 + 0) + (1 + 0.5)) / 2 = 0.75; d3 = ((0 + 0) + (1 + 1) + (0.75 + 1)) / 3 = 1.25
    assert float(expected_depth(graph, _hand_probs(), parametric)) == pytest.approx(1.25, abs=1e-12)
    # edge weights: β = 0 on (0,3) leaves d3 = (2 + 1.75) / 2
    beta = torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.float64)
    assert float(expected_depth(graph, _hand_probs(), parametric, beta)) == pytest.approx(1.875, abs=1e-12)
    darts = make_cell_graph("normal", 2, 4, ("none", "sep_conv_3x3"))
    # DARTS-style cell: all-parametric depth d2 = 1, d3 = 4/3, d4 = 17/9 ..., output = mean of the 4 nodes
    d = [0.0, 0.0]
    for j in range(2, 6):
        d.append(sum(x + 1 for x in d[:j]) / j)
    probs = torch.tensor([[0.0, 1.0]] * 14)
    assert float(expected_depth(darts, probs, torch.tensor([[0.0, 1.0]] * 14))) == pytest.approx(sum(d[2:]) / 4, abs=1e-6)


def test_max_expected_depth_of_the_bundled_cells(cat):
    # METHODS.md §9: D_max = 11/6 ≈ 1.833 in NB201 (d1 = 1, d2 = 3/2, d3 = (1 + 2 + 5/2)/3) and
    # 1.425 in the DARTS normal cell (mean of d2..d5 = 1, 4/3, 19/12, 107/60), from the spaces' own graphs
    nb201 = cat.build("search_space", "nb201").cells()["normal"]
    darts = cat.build("search_space", "darts").cells()
    assert max_expected_depth(nb201) == pytest.approx(11 / 6, abs=1e-12)
    assert max_expected_depth(darts["normal"]) == pytest.approx(1.425, abs=1e-12)
    assert max_expected_depth(darts["reduce"]) == pytest.approx(1.425, abs=1e-12)
    # the depth of any op mix stays below D_max, so the default D* = 0.9·D_max is reachable
    # (the earlier default, 2 = NB201's intermediate nodes, was not: the term never switched off)
    torch.manual_seed(0)
    parametric = (~NB201_FREE).double().expand(6, 5)
    for _ in range(20):
        p = torch.softmax(3 * torch.randn(6, 5, dtype=torch.float64), -1)
        assert float(expected_depth(nb201, p, parametric)) <= 11 / 6 + 1e-12


def test_depth_regulariser_switches_off_once_the_target_is_reached(cat):
    # Adam (the α optimiser of every recipe) on the depth term alone drives D up to D* = 0.9·11/6 = 1.65;
    # one step deeper, the term is exactly 0 and gives α no gradient at all
    s = build_tiny_search(_fast(regularisers=[{"name": "degeneracy_depth"}]), cat=cat)
    reg, alpha = s.regularisers[0], s.alphas["normal"]
    assert reg._target["normal"] == pytest.approx(0.9 * 11 / 6)
    opt = torch.optim.Adam([alpha], lr=0.05, betas=(0.5, 0.999))
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = reg.loss(s, "arch")
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    assert losses[0] > 0.8 and losses[-1] < 1e-8
    with torch.no_grad():
        alpha[:, 3] += 0.5  # a little more weight on nor_conv_3x3
    assert float(reg.depths(s)["normal"].detach()) > 1.65
    loss = reg.loss(s, "arch")
    assert float(loss.detach()) == 0.0
    g, = torch.autograd.grad(loss, [alpha])
    assert torch.count_nonzero(g) == 0
    # the earlier default D* = 2 (NB201's intermediate nodes) stays out of reach: even the
    # all-conv cell pays (2 − 11/6)²
    old = build_tiny_search(_fast(regularisers=[{"name": "degeneracy_depth", "params": {"target_depth": 2.0}}]), cat=cat)
    with torch.no_grad():
        old.alphas["normal"].copy_(torch.tensor([[-30.0, -30.0, 0.0, 0.0, -30.0]]).expand(6, 5))
    assert float(old.regularisers[0].loss(old, "arch").detach()) == pytest.approx((2 - 11 / 6) ** 2, rel=1e-4)
    # a target set by hand still wins over the fraction
    s2 = build_tiny_search(_fast(regularisers=[{"name": "degeneracy_depth", "params": {"target_depth": 1.0,
                                                                                         "depth_fraction": 0.5}}]), cat=cat)
    assert s2.regularisers[0]._target["normal"] == 1.0


def test_depth_regulariser_loss_on_a_search(cat):
    s = build_tiny_search(_fast(regularisers=[{"name": "degeneracy_depth"}]), cat=cat)
    with torch.no_grad():
        s.alphas["normal"].copy_(_hand_probs().float().log())  # softmax(log p) = p (log 0 = −inf gives 0)
    reg = s.regularisers[0]
    assert float(reg.depths(s)["normal"].detach()) == pytest.approx(1.25, abs=1e-6)
    # D* = 0.9·D_max = 0.9·11/6 = 1.65
    assert float(reg.loss(s, "arch").detach()) == pytest.approx((1.65 - 1.25) ** 2, abs=1e-6)
    reg.hparams["weight"] = 3.0
    assert float(reg.loss(s, "arch").detach()) == pytest.approx(3 * 0.16, abs=1e-5)
    # the gradient pushes towards parametric ops: d loss / d α(conv3x3) < 0 on a uniform α
    with torch.no_grad():
        s.alphas["normal"].zero_()
    g, = torch.autograd.grad(reg.loss(s, "arch"), [s.alphas["normal"]])
    assert (g[:, 3] < 0).all() and (g[:, 1] > 0).all()


def test_degeneracy_limit_nb201_hand_case():
    graph = _nb201_graph()
    cell = Genotype.from_nb201_string(
        "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|").cells["normal"]
    probs = torch.tensor([
        [0.0, 0.30, 0.25, 0.25, 0.20],  # skip, margin 0.05
        [0.40, 0.10, 0.10, 0.30, 0.10],  # none, margin 0.10 (best parametric: conv3x3)
        [0.1, 0.1, 0.1, 0.6, 0.1],
        [0.1, 0.50, 0.1, 0.1, 0.2],  # skip, margin 0.40
        [0.1, 0.1, 0.28, 0.2, 0.32],  # pool, margin 0.04 (best parametric: conv1x1)
        [0.1, 0.1, 0.5, 0.2, 0.1],
    ])
    new, switched = limit_parameter_free(cell, graph, probs, FREE, 1)
    assert [(s, d, old, op) for s, d, old, op in switched] == [
        (1, 3, "avg_pool_3x3", "nor_conv_1x1"), (0, 1, "skip_connect", "nor_conv_1x1"), (0, 2, "none", "nor_conv_3x3")]
    g = Genotype(space="nb201", cells={"normal": new})
    assert str(g) == "|nor_conv_1x1~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_1x1~2|"
    same, none_switched = limit_parameter_free(cell, graph, probs, FREE, 4)
    assert same == cell and none_switched == []


def test_degeneracy_limit_darts_top_k_cell():
    ops = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
    graph = make_cell_graph("normal", 2, 2, ops)  # edges (0,2) (1,2) (0,3) (1,3) (2,3)
    cell = CellGenotype(edges=[(0, 2, "skip_connect"), (1, 2, "max_pool_3x3"), (0, 3, "skip_connect"),
                               (2, 3, "sep_conv_3x3")], concat=[2, 3])
    probs = torch.tensor([[0.1, 0.1, 0.5, 0.3],   # margin 0.2
                          [0.1, 0.6, 0.1, 0.2],   # margin 0.4
                          [0.1, 0.1, 0.45, 0.35],  # margin 0.1
                          [0.2, 0.3, 0.3, 0.2],
                          [0.1, 0.1, 0.1, 0.7]])
    new, switched = limit_parameter_free(cell, graph, probs, FREE, 2)
    assert switched == [(0, 3, "skip_connect", "sep_conv_3x3")]
    assert new.ops() == ["skip_connect", "max_pool_3x3", "sep_conv_3x3", "sep_conv_3x3"]


def test_degeneracy_family_end_to_end(cat):
    recipe = _fast(regularisers=[{"name": "degeneracy_cap", "params": {"cap": 0.3}},
                                 {"name": "degeneracy_depth", "params": {"weight": 2.0}}],
                   discretiser={"name": "degeneracy_argmax"})
    s, summary = run_tiny(recipe, cat=cat)
    p = s.probabilities()["normal"]
    assert ((p * NB201_FREE).sum(-1) <= 0.3 + 1e-5).all()  # projected after the last α step
    g = Genotype.parse(summary["genotype"])
    assert sum(op in FREE for op in g.cells["normal"].ops()) <= 1
    assert 0 < s.state.history[-1]["expected_depth"]["normal"] <= 11 / 6


def test_degeneracy_argmax_bad_base_params(cat):
    with pytest.raises(RecipeError, match=r"unknown key.* @ recipe\.discretiser\.params\.base_params"):
        build_tiny_search(_fast(discretiser={"name": "degeneracy_argmax", "params": {"base_params": {"exclud": []}}}),
                          cat=cat)  # refused before the search starts (check_composition)


# --------------------------------------------------------------------------- Fair-DARTS, β-DARTS


def test_zero_one_loss_hand_value(cat):
    a = torch.zeros(6, 5)
    a[0, 0], a[2, 3] = math.log(3), -math.log(3)  # σ = 0.75 and 0.25: (±0.25)² each
    assert float(zero_one_loss([a])) == pytest.approx(-2 * 0.0625 / 30, abs=1e-8)
    s = build_tiny_search(_fast(regularisers=[{"name": "fair_darts_zero_one"}]), cat=cat)
    with torch.no_grad():
        s.alphas["normal"].copy_(a)
    assert float(s.regularisers[0].loss(s, "arch").detach()) == pytest.approx(-10 * 2 * 0.0625 / 30, abs=1e-7)
    assert s.regularisers[0].phases == ("arch",)


def test_beta_darts_term_and_lambda(cat):
    a = torch.zeros(6, 5)
    a[0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0]).log()
    expected = (math.log(20) + 5 * math.log(5)) / 6
    assert float(beta_loss([a])) == pytest.approx(expected, abs=1e-6)
    # mean over the edges of every cell type together (the code stacks normal and reduce)
    assert float(beta_loss([a, torch.zeros(2, 5)])) == pytest.approx((6 * expected + 2 * math.log(5)) / 8, abs=1e-6)
    reg = BetaDarts()
    assert [reg.coefficient(e) for e in (0, 1, 4, 99)] == [0.0, 0.5, 2.0, 49.5]
    s = build_tiny_search(_fast(regularisers=[{"name": "beta_darts"}]), cat=cat)
    reg = s.regularisers[0]
    reg.diffnas_epoch_start(search=s, epoch=4)
    with torch.no_grad():
        s.alphas["normal"].copy_(a)
    assert float(reg.loss(s, "arch").detach()) == pytest.approx(2.0 * expected, abs=1e-5)


def test_fair_darts_and_beta_darts_end_to_end(cat):
    s, _ = run_tiny(_fast(trainer={"epochs": 3}, regularisers=[{"name": "beta_darts"}, {"name": "fair_darts_zero_one"}]),
                    cat=cat)
    assert s.state.history[-1]["hparams"]["regularisers.0"] == {"weight": 1.0}  # λ_2 = 0.5·2
    assert s.state.history[-1]["hparams"]["regularisers.1"] == {"weight": 10.0}


# --------------------------------------------------------------------------- DARTS-


def test_darts_minus_adds_exactly_beta_x():
    torch.manual_seed(0)
    graph = make_cell_graph("normal", 1, 1, NB201_OP_NAMES, concat=[1])  # one edge 0 → 1
    cell = SearchCell(graph, lambda op, u, v: NB201_OPS[op](4, 4, 1, False, False))
    hp = {"beta": 0.0}
    assert add_auxiliary_skips(cell, hp) == []  # identity skips: no parameters
    x = torch.randn(2, 4, 5, 5)
    w = torch.softmax(torch.randn(1, 5), -1)
    out0 = cell([x], OpWeights(w))
    hp["beta"] = 1.0
    assert torch.equal(cell([x], OpWeights(w)), out0 + x)
    hp["beta"] = 0.25
    assert torch.equal(cell([x], OpWeights(w)), out0 + 0.25 * x)


def test_darts_minus_stride_two_uses_factorized_reduce():
    torch.manual_seed(0)
    graph = make_cell_graph("reduce", 1, 1, ("none", "sep_conv_3x3", "skip_connect"), concat=[1], reduction=True)
    cell = SearchCell(graph, lambda op, u, v: DARTS_OPS[op](4, 8, 2, False, False))
    opt = torch.optim.SGD(cell.parameters(), lr=0.1)
    search = SimpleNamespace(model=cell, device=torch.device("cpu"), w_optimizer=opt,
                             recipe=SimpleNamespace(trainer=SimpleNamespace(channels_last=False)),
                             search_space=SimpleNamespace(name="darts", skip_op=lambda: "skip_connect"))
    reg = DartsMinusSkip()
    reg.attach(search)
    aux = cell.edge_terms[0]
    assert isinstance(aux.skips[0], FactorizedReduce)
    new = {id(p) for p in aux.parameters()}
    assert new and new <= {id(p) for p in opt.param_groups[-1]["params"]}
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(1, 3), -1)
    reg.hparams["beta"] = 0.0
    out0 = cell([x], OpWeights(w))
    reg.hparams["beta"] = 1.0
    assert torch.allclose(cell([x], OpWeights(w)) - out0, aux.skips[0](x), atol=1e-6)


def test_darts_minus_end_to_end(cat):
    s, _ = run_tiny(_fast(trainer={"epochs": 4}, regularisers=[{"name": "darts_minus_skip"}]), cat=cat)
    cells = [m for m in s.model.modules() if isinstance(m, SearchCell)]
    assert cells and all(len(c.edge_terms) == 1 for c in cells)
    # Meituan-AutoML/DARTS- DecayScheduler: linear over decay_max_epoch = 50 whatever the run's length
    assert [r["hparams"]["regularisers.0"]["beta"] for r in s.state.history] == pytest.approx([1.0, 0.98, 0.96, 0.94])
    reg = s.regularisers[0]
    assert [reg.beta_at(e) for e in (25, 50, 60)] == [0.5, 0.0, 0.0]  # past the stop epoch it stays at 0
    s1, _ = run_tiny(_fast(trainer={"epochs": 4}, regularisers=[{"name": "darts_minus_skip", "params": {"decay_epochs": 4}}]),
                     cat=cat)
    assert [r["hparams"]["regularisers.0"]["beta"] for r in s1.state.history] == [1.0, 0.75, 0.5, 0.25]
    # decay_epochs = the run's epochs matches the generic linear schedule with end_at: after_last
    s2 = build_tiny_search(_fast(trainer={"epochs": 4}, regularisers=[{"name": "darts_minus_skip", "params": {"decay": "none"}}],
                                 schedules=[{"name": "linear", "params": {"target": "regularisers.darts_minus_skip.beta",
                                                                          "start": 1.0, "end": 0.0, "end_at": "after_last"}}]),
                           cat=cat)
    assert [s2.schedules[0].value(s2, e, 0) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_degeneracy_cap_refuses_a_non_softmax_relaxation(cat):
    from diffnas.core.errors import PluginError

    with pytest.raises(PluginError, match="softmax"):
        build_tiny_search(_fast(relaxation={"name": "sigmoid"}, regularisers=[{"name": "degeneracy_cap"}]), cat=cat)


def test_darts_space_auxiliary_skip_and_top_k_limit(cat):
    recipe = _fast(search_space={"name": "darts", "params": {"C": 4, "layers": 3}},
                   regularisers=[{"name": "darts_minus_skip"}],
                   discretiser={"name": "degeneracy_argmax", "params": {"base": "top_k_edges"}})
    s = build_tiny_search(recipe, cat=cat)
    reduce_cells = [m.cell for m in s.model.cells if m.reduction]
    assert reduce_cells
    for cell in reduce_cells:  # stride-2 edges from the two inputs get FactorizedReduce skips
        kinds = [type(m).__name__ for m in cell.edge_terms[0].skips]
        assert [k for (u, _), k in zip(cell.edges, kinds) if u < 2] == ["FactorizedReduce"] * 8
        assert {k for (u, _), k in zip(cell.edges, kinds) if u >= 2} == {"Identity"}
    in_opt = {id(p) for g in s.w_optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for c in reduce_cells for p in c.edge_terms[0].parameters())
    # skip-heavy α: top-k would keep 8 parameter-free ops in the normal cell; the limit keeps 2
    with torch.no_grad():
        ops = s.cells["normal"].edges[(0, 2)]["ops"]
        s.alphas["normal"][:, ops.index("skip_connect")] = 3.0
    g = s.discretiser.discretise(s)
    assert sum(op in FREE for op in g.cells["normal"].ops()) == 2
    assert len(g.cells["normal"].edges) == 8
