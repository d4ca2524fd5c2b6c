"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections, channel shuffle and edge
normalisation against hand computations and ``yuhuixu1993/PC-DARTS: model_search.py``; the authors'
settings in the recipes; seeded, resumable channel sampling; what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from diffnas import api
from diffnas.core.engine import preflight_problems
from diffnas.core.errors import PluginError, RecipeError
from diffnas.core.hookspecs import hookimpl
from diffnas.core.protocols import OpWeights
from diffnas.core.recipe import resolve_recipe
from diffnas.plugins.regularisers.pc_darts import (PartialChannelCell, channel_shuffle, node_softmax_weights)
from diffnas.testing import build_tiny_search, fresh_catalogue, run_tiny, tiny_recipe
from test_resume import _outputs

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
PARAM_FREE = {"name": "nb201", "params": {"C": 8, "N": 1, "ops": ["skip_connect", "avg_pool_3x3"]}}


def authors_channel_shuffle(x, groups):
    """``yuhuixu1993/PC-DARTS: model_search.py channel_shuffle``, line for line."""
    batchsize, num_channels, height, width = x.data.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


def pc(**params):
    return [{"name": "pc_darts", "params": params}]


def test_channel_shuffle_matches_the_authors_and_a_hand_order():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    y = torch.randn(2, 12, 3, 3)
    for g in (1, 2, 3, 4):
        assert torch.equal(channel_shuffle(y, g), authors_channel_shuffle(y, g))


def test_node_softmax_weights_are_the_codes_per_node_softmax():
    beta = torch.tensor([0.3, -0.2, 0.5, 1.0, 0.0, -1.0])
    groups = [torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([3, 4, 5])]
    want = torch.cat([torch.ones(1), torch.softmax(beta[1:3], 0), torch.softmax(beta[3:], 0)])
    assert torch.allclose(node_softmax_weights(beta, groups), want)


def _cells(search):
    return [m for m in search.model.modules() if isinstance(m, PartialChannelCell)]


def test_first_slice_edge_is_the_authors_mixed_op_by_hand():
    """sampling: first: shuffle_4(concat(w0·x[:, :2] + w1·avgpool(x[:, :2]), x[:, 2:])), the code's MixedOp."""
    s = build_tiny_search(tiny_recipe(search_space=PARAM_FREE, regularisers=pc(sampling="first", edge_normalisation=False)))
    cell = _cells(s)[0]
    assert all(op[1].__class__.__name__ == "Pooling" for op in cell.mixed)
    torch.manual_seed(1)
    x = torch.randn(2, 8, 5, 5)
    w = torch.tensor([0.3, 0.7])
    got = cell.edge_forward(0, x, w.unbind(0), None)
    xa = x[:, :2]
    mixed = w[0] * xa + w[1] * F.avg_pool2d(xa, 3, 1, 1, count_include_pad=False)
    want = authors_channel_shuffle(torch.cat([mixed, x[:, 2:]], 1), 4)
    assert torch.allclose(got, want, atol=1e-6)


def test_random_sampling_and_edge_normalisation_by_hand():
    """A whole NB201 cell with sampled channels and β: every edge's sample and node sum recomputed by hand."""
    s = build_tiny_search(tiny_recipe(search_space=PARAM_FREE, regularisers=pc(seed=5)))
    cell = _cells(s)[0]
    reg = s.regularisers[0]
    with torch.no_grad():
        s.alphas["pc_darts_beta_normal"].copy_(torch.tensor([0.1, 0.4, -0.3, 0.2, 0.9, -0.5]))
    torch.manual_seed(2)
    x = torch.randn(2, 8, 4, 4)
    w = torch.softmax(torch.randn(6, 2), 1)
    state = reg.sampler.gen.get_state()
    got = cell([x], OpWeights(w))
    g = torch.Generator().manual_seed(0)
    g.set_state(state)
    perm = torch.rand(6, 8, generator=g).argsort(1)  # the cell's one draw for this forward pass
    b = s.alphas["pc_darts_beta_normal"].detach()
    scale = torch.cat([torch.ones(1), torch.softmax(b[1:3], 0), torch.softmax(b[3:], 0)])

    def edge(e, h):
        sel, rest = perm[e, :2], perm[e, 2:]
        out = torch.empty_like(h)
        hs = h[:, sel]
        out[:, sel] = w[e, 0] * hs + w[e, 1] * F.avg_pool2d(hs, 3, 1, 1, count_include_pad=False)
        out[:, rest] = h[:, rest]
        return scale[e] * authors_channel_shuffle(out, 4)

    n1 = edge(0, x)  # edges by destination: 0→1 | 0→2, 1→2 | 0→3, 1→3, 2→3
    n2 = edge(1, x) + edge(2, n1)
    n3 = edge(3, x) + edge(4, n1) + edge(5, n2)
    assert torch.allclose(got, n3, atol=1e-5)
    got2 = cell([x], OpWeights(w))
    assert not torch.allclose(got, got2)  # a fresh sample on every forward pass


def test_stride_two_edge_pools_the_bypassed_channels():
    """Reduction-cell edges from the inputs (stride 2): the bypass is MaxPool2d(2, 2), as MixedOp.mp."""
    space = {"name": "darts", "params": {"C": 8, "layers": 3, "ops": ["none", "skip_connect"]}}
    s = build_tiny_search(tiny_recipe(search_space=space, regularisers=pc(sampling="first", edge_normalisation=False),
                                      discretiser={"name": "top_k_edges"}))
    red = [c for c in _cells(s) if c.graph.graph["reduction"]][0]
    x = torch.randn(2, 16, 6, 6)
    got = red.edge_forward(0, x, torch.tensor([1.0, 0.0]).unbind(0), None)  # all weight on none: zeros
    want = authors_channel_shuffle(torch.cat([torch.zeros(2, 4, 3, 3), F.max_pool2d(x[:, 4:], 2, 2)], 1), 4)
    assert torch.equal(got, want)


def test_ops_are_built_for_a_quarter_of_the_channels():
    s = build_tiny_search(tiny_recipe(search_space={"name": "nb201", "params": {"C": 8, "N": 1}}, regularisers=pc()))
    plain = build_tiny_search(tiny_recipe(search_space={"name": "nb201", "params": {"C": 8, "N": 1}}))
    conv = _cells(s)[0].mixed[0][3][1]  # nor_conv_3x3 of the first stage: 8 → 2 channels
    assert (conv.in_channels, conv.out_channels) == (2, 2)
    opt = {id(p) for g in s.w_optimizer.param_groups for p in g["params"]}
    assert opt == {id(p) for p in s.model.parameters()}  # the weight optimiser trains the rebuilt ops
    assert sum(p.numel() for p in s.model.parameters()) < sum(p.numel() for p in plain.model.parameters())


def test_beta_is_an_architecture_parameter_frozen_during_the_warmup():
    r = tiny_recipe(regularisers=pc(), trainer={"epochs": 2, "warmup_epochs": 1})
    cat = fresh_catalogue()
    s = build_tiny_search(r, cat=cat)
    beta0 = s.alphas["pc_darts_beta_normal"].detach().clone()
    assert any(p is s.alphas["pc_darts_beta_normal"] for g in s.a_optimizer.param_groups for p in g["params"])
    s.run(progress=False)
    h = s.history
    assert h[0]["extra_alphas"]["pc_darts_beta_normal"] == [[round(v, 6)] for v in beta0.tolist()]  # warm-up: unchanged
    assert h[1]["extra_alphas"]["pc_darts_beta_normal"] != h[0]["extra_alphas"]["pc_darts_beta_normal"]
    ew = h[1]["pc_darts"]["edge_weights"]["normal"]
    assert ew[0] == 1.0 and abs(sum(ew[1:3]) - 1) < 1e-5 and abs(sum(ew[3:]) - 1) < 1e-5


def test_beta_travels_in_the_op_weights():
    """Like an extra architecture parameter, β is read from the op weights the supernet is called
    with: a forward on a copy of α (the Hessian diagnostic) differentiates through the copy's β."""
    s = build_tiny_search(tiny_recipe(regularisers=pc(sampling="first"), diagnostics={"hessian_eigenvalue": True,
                                                                                       "iterations": 2}))
    x, _ = s.train_loader.batch(0, 0)
    ow = s.op_weights()
    s.model.eval()  # batch statistics aside, the same input gives the same logits ...
    with torch.no_grad():
        same = s.forward(x, ow)
        assert torch.equal(s.forward(x, ow), same)
        other = dict(ow, pc_darts_beta_normal=torch.tensor([0.0, 3.0, -3.0, 2.0, 0.0, -2.0]))
        assert not torch.allclose(s.forward(x, other), same)  # ... and another β, other logits
    s.model.train()
    s.run(progress=False)
    eig = s.history[-1]["hessian_eigenvalue"]
    assert eig is not None and eig != 0.0


def test_pc_darts_discretiser_ranks_edges_by_beta():
    """Network.genotype(): W = p·softmax(β) decides a node's two inputs; the op is argmax_{o≠none} p."""
    space = {"name": "darts", "params": {"C": 4, "layers": 3, "steps": 2}}
    s = build_tiny_search(tiny_recipe(search_space=space, regularisers=pc(), discretiser={"name": "pc_darts"}))
    ops = s.cells["normal"].edges[(0, 3)]["ops"]
    with torch.no_grad():
        for a in ("normal", "reduce"):
            s.alphas[a].zero_()
            s.alphas[a][:, ops.index("sep_conv_3x3")] = 1.0
            s.alphas[a][2, ops.index("sep_conv_3x3")] = 2.0  # edge 0→3 has the strongest op ...
            s.alphas["pc_darts_beta_" + a].copy_(torch.tensor([0.0, 0.0, -5.0, 0.0, 0.0]))  # ... and a tiny β
    got = s.discretiser.discretise(s).cells["normal"].edges
    assert sorted((u, v) for u, v, _ in got if v == 3) == [(1, 3), (2, 3)]
    plain = build_tiny_search(tiny_recipe(search_space=space, discretiser={"name": "top_k_edges"}))
    with torch.no_grad():
        for a in ("normal", "reduce"):
            plain.alphas[a].copy_(s.alphas[a])
    assert (0, 3) in {(u, v) for u, v, _ in plain.discretiser.discretise(plain).cells["normal"].edges}


class Interrupt:
    """Stops a run (as a kill would) at the start of global step ``at``."""

    def __init__(self, at):
        self.at = at

    @hookimpl
    def diffnas_step_start(self, search, epoch, step):
        if search.state.global_step == self.at:
            raise KeyboardInterrupt


def resume_matches(recipe, tmp_path, at):
    """A run interrupted at global step ``at`` and resumed ends exactly as an uninterrupted one."""
    api.search(recipe, out=tmp_path / "ref", cat=fresh_catalogue())
    cat = fresh_catalogue()
    cat.pm.register(Interrupt(at))
    with pytest.raises(KeyboardInterrupt):
        api.search(recipe, out=tmp_path / "run", cat=cat)
    api.resume(tmp_path / "run", cat=fresh_catalogue())
    want, got = _outputs(tmp_path / "ref"), _outputs(tmp_path / "run")
    for key in ("metrics", "result", "genotype", "state"):
        assert got[key] == want[key], key
    for part in ("alphas", "model"):
        for k in want[part]:
            assert torch.equal(got[part][k], want[part][k]), f"{part} {k}"
    return want


def test_channel_sampling_resumes_bit_identically(tmp_path):
    r = tiny_recipe(regularisers=pc(), trainer={"epochs": 2, "steps_per_epoch": 3, "deterministic": True},
                    output={"checkpoint_every_steps": 1})
    want = resume_matches(r, tmp_path, at=4)
    assert "pc_darts_beta_normal" in want["alphas"]


def test_sampling_is_seeded():
    def alphas(seed):
        s, _ = run_tiny(tiny_recipe(regularisers=pc(seed=seed), trainer={"epochs": 1}), cat=fresh_catalogue())
        return s.alphas["normal"].detach()
    assert torch.equal(alphas(3), alphas(3)) and not torch.equal(alphas(3), alphas(4))


def test_fused_cells_cuda_graphs_and_populations_are_refused():
    cat = fresh_catalogue()
    r = resolve_recipe(tiny_recipe(regularisers=pc(), trainer={"fused_cells": True}), cat)
    msgs = [m for m, _ in preflight_problems(r, cat, cat.pm)]
    assert any("regulariser 'pc_darts' replaces the search cells" in m for m in msgs)
    with pytest.raises(RecipeError, match="pc_darts"):
        build_tiny_search(tiny_recipe(regularisers=pc(), trainer={"fused_cells": True}), cat=cat)
    graphs = resolve_recipe(tiny_recipe(regularisers=pc(), trainer={"cuda_graphs": True}), cat)
    assert any("draws new channel subsets" in m for m, _ in preflight_problems(graphs, cat, cat.pm))
    first = resolve_recipe(tiny_recipe(regularisers=pc(sampling="first"), trainer={"cuda_graphs": True}), cat)
    assert not any("pc_darts" in m for m, _ in preflight_problems(first, cat, cat.pm))
    pop = [tiny_recipe(regularisers=pc(), trainer={"seed": k}) for k in range(2)]
    with pytest.raises(RecipeError, match="regulariser 'pc_darts' may change the supernet"):
        api.search_population(pop, [None, None], cat=cat)


def test_spaces_without_partial_ops_and_indivisible_channels_are_refused():
    cat = fresh_catalogue()
    s = build_tiny_search(tiny_recipe(), cat=cat)
    for m in s.model.modules():
        if hasattr(m, "make_op"):
            m.make_op = (lambda f: lambda op, u, v: f(op, u, v))(m.make_op)
    with pytest.raises(PluginError, match="channel_divisor"):
        cat.build("regulariser", "pc_darts").attach(s)
    with pytest.raises(PluginError, match="k = 3 does not divide"):
        build_tiny_search(tiny_recipe(regularisers=pc(k=3)), cat=cat)


def test_recipes_pin_the_authors_settings():
    """train_search.py: batch 256, lr 0.1 → 0.001, momentum 0.9, wd 3e-4, 50 epochs, clip 5; α Adam 6e-4,
    wd 1e-3; no α step before epoch 15; k = 4."""
    cat = fresh_catalogue()
    for name in ("nb201_pc_darts", "darts_pc_darts"):
        r = resolve_recipe(yaml.safe_load((RECIPES / f"{name}.yaml").read_text()), cat).recipe
        t = r.trainer
        assert (t.epochs, t.batch_size, t.warmup_epochs, t.grad_clip) == (50, 256, 15, 5.0)
        w, a = t.weights_optimizer, t.arch_optimizer
        assert (w.name, w.lr, w.lr_min, w.momentum, w.nesterov, w.weight_decay, w.schedule) == \
            ("sgd", 0.1, 0.001, 0.9, False, 3.0e-4, "cosine")
        assert (a.name, a.lr, tuple(a.betas), a.weight_decay) == ("adam", 6.0e-4, (0.5, 0.999), 1.0e-3)
        assert [g.name for g in r.regularisers] == ["pc_darts"]
    defaults = cat.build("regulariser", "pc_darts").config
    assert (defaults.k, defaults.sampling, defaults.edge_normalisation) == (4, "random", True)
