"""The LHD search space, the node-level joint softmax and the LHD discretisation policies
(Zhang & Ding, ICML 2023; METHODS.md §6), plus the core seams they use (extra architecture
parameters, cell-aware relaxations, the genotype's sum path)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from diffnas.core.cells import alpha_shape, searched_edges
from diffnas.core.errors import RecipeError
from diffnas.core.genotype import CellGenotype, Genotype
from diffnas.core.outputs import load_checkpoint
from diffnas.core.protocols import OpWeights
from diffnas.plugins.discretisers.lhd_policies import Lhd3op, Lhd4out, LhdBase, lhd_cell, prune_unreachable
from diffnas.plugins.relaxations.node_softmax import NodeSoftmax, node_softmax
from diffnas.plugins.search_spaces.darts import DartsSpace
from diffnas.plugins.search_spaces.lhd_space import LHD_OP_NAMES, LhdCell, LhdSpace, lhd_cell_graph
from diffnas.testing import build_tiny_search, run_tiny, tiny_recipe

TINY_LHD = {"name": "lhd", "params": {"C": 4, "layers": 3, "steps": 3}}


def lhd_recipe(discretiser="lhd_base", **over):
    return tiny_recipe(search_space=TINY_LHD, relaxation={"name": "node_softmax"}, discretiser={"name": discretiser}, **over)


# --------------------------------------------------------------------------- space and layouts


def test_cells_and_alpha_layout():
    space = LhdSpace()
    cells = space.cells()
    assert set(cells) == {"normal", "reduce"}
    for g in cells.values():
        assert alpha_shape(g) == (20, 7)  # 2+3+4+5+6 edges, 7 ops
        for node in range(2, 7):  # node i (0-based k = i-2) reads the k+2 earlier nodes
            assert sorted(g.predecessors(node)) == list(range(node))
        assert g.graph["concat"] == [2, 3, 4, 5, 6] and g.graph["sum"] == [2, 3, 4, 5, 6]
        assert all(g.edges[e]["ops"] == LHD_OP_NAMES for e in searched_edges(g))
    assert "none" not in LHD_OP_NAMES and len(LHD_OP_NAMES) == 7
    assert space.extra_arch_parameters() == {"gamma_normal": (2, 5), "gamma_reduce": (2, 5)}
    assert space.parameter_free_ops() == {"skip_connect", "max_pool_3x3", "avg_pool_3x3"}


def test_search_alphas_hold_edges_and_output_paths():
    s = build_tiny_search(lhd_recipe())
    assert {k: tuple(v.shape) for k, v in s.alphas.items()} == {
        "normal": (9, 7), "reduce": (9, 7), "gamma_normal": (2, 3), "gamma_reduce": (2, 3)}
    # 1e-3·N(0, 1) init for γ too; the α optimiser holds all four tensors
    for k in ("gamma_normal", "gamma_reduce"):
        assert 0 < float(s.alphas[k].detach().abs().max()) < 1e-2
    assert len(s.a_optimizer.param_groups[0]["params"]) == 4
    ow = s.op_weights()
    assert isinstance(ow["normal"], OpWeights) and ow["gamma_normal"] is s.alphas["gamma_normal"]
    assert set(s.probabilities()) == {"normal", "reduce"}


def test_ops_are_single_depthwise_blocks_without_pointwise():
    cell = LhdCell(lhd_cell_graph("normal", 2, LHD_OP_NAMES, False), 8, 24, 8, track=True)
    mixed = cell.cell.mixed[0]
    for name, op in zip(LHD_OP_NAMES, mixed):
        convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
        if name.startswith(("sep", "dil")):
            assert len(convs) == 1 and convs[0].groups == 8 and convs[0].kernel_size[0] in (3, 5)
            assert convs[0].dilation[0] == (2 if name.startswith("dil") else 1)
            assert isinstance(list(op.modules())[-1], nn.BatchNorm2d)
        elif "pool" in name:
            assert not convs and isinstance(op.post, nn.BatchNorm2d) and not op.post.affine
        else:
            assert isinstance(op, nn.Identity)
    assert isinstance(cell.preprocess0, nn.Identity)
    red = LhdCell(lhd_cell_graph("reduce", 2, LHD_OP_NAMES, True), 8, 40, 16, track=True)
    assert not isinstance(red.preprocess0, nn.Identity) and red.preprocess0[1].out_channels == 16


# --------------------------------------------------------------------------- node softmax


def test_joint_softmax_by_hand():
    g = lhd_cell_graph("normal", 2, ("max_pool_3x3", "skip_connect"), False)  # rows: 0->2, 1->2, 0->3, 1->3, 2->3
    alpha = torch.tensor([[0.0, math.log(2)], [math.log(3), math.log(4)],
                          [0.0, 0.0], [0.0, 0.0], [0.0, math.log(4)]])
    rel = NodeSoftmax()
    rel.groups = NodeSoftmax.groups_of({"normal": g})
    assert rel.groups["normal"] == [[0, 1], [2, 3, 4]]
    p = rel.cell_probabilities("normal", alpha)
    expected = torch.tensor([[0.1, 0.2], [0.3, 0.4],  # exp: 1, 2, 3, 4 over 10
                             [1 / 9, 1 / 9], [1 / 9, 1 / 9], [1 / 9, 4 / 9]])  # exp: 1,1,1,1,1,4 over 9
    assert torch.allclose(p, expected, atol=1e-6)
    assert torch.allclose(p[:2].sum(), torch.tensor(1.0)) and torch.allclose(p[2:].sum(), torch.tensor(1.0))
    # τ divides α; non-contiguous groups give the same numbers
    rel.hparams["tau"] = 2.0
    p2 = rel.cell_op_weights("normal", alpha, None).weights
    assert torch.allclose(p2[:2], torch.tensor([[1, math.sqrt(2)], [math.sqrt(3), 2]]) / (3 + math.sqrt(2) + math.sqrt(3)), atol=1e-6)
    assert torch.allclose(node_softmax(alpha, [[2, 3, 4], [0, 1]], 2.0), p2, atol=1e-7)


def test_node_softmax_sums_to_one_per_node_on_lhd_and_darts():
    for space in (LhdSpace(), DartsSpace()):
        cells = space.cells()
        rel = NodeSoftmax()
        rel.groups = NodeSoftmax.groups_of(cells)
        alpha = torch.randn(*alpha_shape(cells["normal"]), generator=torch.Generator().manual_seed(0), requires_grad=True)
        p = rel.cell_probabilities("normal", alpha)
        for rows in rel.groups["normal"]:
            assert torch.allclose(p[rows].sum(), torch.tensor(1.0), atol=1e-6)
        p[0, 0].backward()
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_node_softmax_refuses_a_cell_it_cannot_group():
    g = lhd_cell_graph("normal", 2, LHD_OP_NAMES, False)
    del g.edges[(1, 3)]["index"]  # a fixed (unsearched) edge into node 3
    with pytest.raises(RecipeError, match="node_softmax cannot be used") as info:
        NodeSoftmax().attach(SimpleNamespace(cells={"normal": g}, resolved=SimpleNamespace(source="r.yaml")))
    assert "recipe.relaxation.name" in str(info.value) and "node 3" in str(info.value)
    with pytest.raises(Exception, match="cell of an α"):
        NodeSoftmax().probabilities(torch.zeros(2, 7))


# --------------------------------------------------------------------------- output paths


def test_cell_output_paths_by_hand():
    torch.manual_seed(0)
    g = lhd_cell_graph("normal", 2, ("skip_connect",), False)  # rows: 0->2, 1->2, 0->3, 1->3, 2->3
    cell = LhdCell(g, 4, 12, 4, track=True).eval()
    s0, s1 = torch.randn(2, 4, 5, 5), torch.randn(2, 12, 5, 5)
    w = torch.tensor([[0.7], [-0.4], [1.3], [0.2], [0.9]])
    gamma = torch.tensor([[0.3, -1.0], [1.5, -0.5]])
    out_sum, out_cat = cell(s0, s1, OpWeights(w), gamma)
    a, b = s0, cell.preprocess1(s1)  # preprocess0 is the identity in a normal cell
    sig = torch.sigmoid(gamma[1])
    soft = torch.softmax(gamma[0], 0)
    n2 = 0.7 * a - 0.4 * b
    x2 = sig[0] * n2  # the σ-scaled node feeds node 3
    n3 = 1.3 * a + 0.2 * b + 0.9 * x2
    x3 = sig[1] * n3
    assert torch.allclose(out_sum, soft[0] * n2 + soft[1] * n3, atol=1e-6)
    assert torch.allclose(out_cat, torch.cat([x2, x3], 1), atol=1e-6)


def test_supernet_wiring():
    space = LhdSpace(LhdSpace.Config(C=4, layers=3, steps=2))
    net = space.build_supernet(10)
    assert net.stem_0[0].out_channels == 4 and net.stem_1[0].out_channels == 12
    assert [c.reduction for c in net.cells] == [False, True, True]
    assert net.classifier.in_features == 16 * 2 + 16  # concat (steps·C) + sum (C) of the last cell
    seen = {}
    for i, c in enumerate(net.cells):
        c.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, (inp, out)))
    ow = {k: OpWeights(torch.full((5, 7), 1 / 7)) for k in ("normal", "reduce")}
    ow.update({k: torch.zeros(2, 2) for k in ("gamma_normal", "gamma_reduce")})
    assert net(torch.randn(2, 3, 8, 8), ow).shape == (2, 10)
    for i in (1, 2):  # the next cell gets (sum, concat) as (s0, s1)
        (s0, s1, _, _), (prev_sum, prev_cat) = seen[i][0], seen[i - 1][1]
        assert s0 is prev_sum and s1 is prev_cat


# --------------------------------------------------------------------------- discretisation policies

OPS = {o: i for i, o in enumerate(LHD_OP_NAMES)}
HAND = {  # (src, dst, op): weight; every other entry 0.001
    (0, 2, "sep_conv_3x3"): .30, (1, 2, "sep_conv_5x5"): .25, (1, 2, "sep_conv_3x3"): .20,
    (2, 3, "dil_conv_3x3"): .40, (2, 3, "skip_connect"): .30, (0, 3, "max_pool_3x3"): .10,
    (1, 4, "dil_conv_5x5"): .50, (2, 4, "sep_conv_3x3"): .30, (3, 4, "avg_pool_3x3"): .20,
    (4, 5, "sep_conv_3x3"): .60, (0, 5, "skip_connect"): .30, (3, 5, "dil_conv_5x5"): .05,
    (5, 6, "dil_conv_3x3"): .50, (1, 6, "max_pool_3x3"): .40, (2, 6, "avg_pool_3x3"): .05,
}
W_SUM = [0.40, 0.05, 0.30, 0.15, 0.10]  # > 0.2: nodes 2, 4; top-4: 2, 4, 5, 6
G_CAT = [2.0, -1.0, 0.5, -2.0, 0.0]  # σ = .881 .269 .622 .119 .5, mean .478: nodes 2, 4, 6; top-4: 2, 3, 4, 6
TOP2 = [(0, 2, "sep_conv_3x3"), (1, 2, "sep_conv_5x5"), (2, 3, "dil_conv_3x3"), (2, 3, "skip_connect"),
        (1, 4, "dil_conv_5x5"), (2, 4, "sep_conv_3x3"), (4, 5, "sep_conv_3x3"), (0, 5, "skip_connect"),
        (5, 6, "dil_conv_3x3"), (1, 6, "max_pool_3x3")]


def hand_p(graph):
    p = torch.full(alpha_shape(graph), 0.001)
    for (u, v, op), val in HAND.items():
        p[graph.edges[(u, v)]["index"], OPS[op]] = val
    return p


def hand_search():
    space = LhdSpace()
    cells = space.cells()
    gamma = torch.tensor([[math.log(x) for x in W_SUM], G_CAT])
    probs = {k: hand_p(g) for k, g in cells.items()}
    return SimpleNamespace(search_space=space, cells=cells, probabilities=lambda: probs,
                           alphas={"normal": None, "reduce": None, "gamma_normal": gamma, "gamma_reduce": gamma.clone()})


def test_base_policy_by_hand():
    geno = LhdBase().discretise(hand_search())
    assert geno.space == "lhd"
    for cell in geno.cells.values():
        # node 3 reaches no output (no kept pair leaves it): its two ops, both from node 2, are pruned
        assert set(cell.edges) == set(TOP2) - {(2, 3, "dil_conv_3x3"), (2, 3, "skip_connect")}
        assert cell.sum_nodes == (2, 4) and cell.concat == (2, 4, 6)


def test_3op_policy_by_hand():
    cell = Lhd3op().discretise(hand_search()).cells["normal"]
    extra = {(1, 2, "sep_conv_3x3"), (0, 3, "max_pool_3x3"), (3, 4, "avg_pool_3x3"), (3, 5, "dil_conv_5x5"),
             (2, 6, "avg_pool_3x3")}
    assert set(cell.edges) == set(TOP2) | extra  # 3 -> 4 now keeps node 3
    assert len(cell.edges) == 15 and cell.inputs_of(2) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_5x5", 1)]
    assert cell.sum_nodes == (2, 4) and cell.concat == (2, 4, 6)


def test_4out_policy_by_hand():
    cell = Lhd4out().discretise(hand_search()).cells["reduce"]
    assert set(cell.edges) == set(TOP2)  # every node is an output now: nothing pruned
    assert cell.sum_nodes == (2, 4, 5, 6) and cell.concat == (2, 3, 4, 6)


def _gen_trans(W, out, ops_k, sum_wise, sum_cum, cat_wise, cat_cum, steps):
    """An independent transcription of chaoji90/LHD eval/gen_trans.py genotype_unbind for one cell."""
    def quantile(dist, threshold, element_wise=0):
        idx = np.argsort(-dist, kind="stable")
        val = np.sort(dist)[::-1]
        if element_wise > 0:
            q = int((val > element_wise).sum())
        elif threshold > 1:
            q = math.ceil(threshold)
        else:
            q = int(np.argmax(val.cumsum() > threshold) + 1)
        return idx, q
    gene, n, start = [], 2, 0
    for i in range(steps):
        flat = W[start:start + n].ravel()
        idx, q = quantile(flat, ops_k)
        gene += [(LHD_OP_NAMES[idx[a] % 7], idx[a] // 7, i) for a in range(q)]
        start += n
        n += 1
    idx, q = quantile(out[0], sum_cum, sum_wise)
    sums = idx[:q].tolist()
    thr = cat_wise if cat_wise else out[1].mean()
    idx, q = quantile(out[1], cat_cum, thr if not cat_cum else 0)
    cats = idx[:q].tolist()
    kept = []
    for k, (op, src, node) in enumerate(gene):
        if node in cats + sums:
            kept.append((op, src, node))
            continue
        reach = [node]
        for a in range(k + 1, len(gene)):
            if gene[a][1] - 2 in reach:
                reach.append(gene[a][2])
                if reach[-1] in cats + sums:
                    kept.append((op, src, node))
                    break
    return ({(int(s), n + 2, op) for op, s, n in kept}, tuple(sorted(x + 2 for x in sums)), tuple(sorted(x + 2 for x in cats)))


@pytest.mark.parametrize("policy, args", [(LhdBase, (2, 0.2, 0.9, 0, 0)), (Lhd3op, (3, 0.2, 0.9, 0, 0)),
                                          (Lhd4out, (2, 0, 4, 0, 4))])
def test_policies_match_the_authors_parser_on_random_architectures(policy, args):
    space = LhdSpace()
    g = space.cells()["normal"]
    rng = np.random.default_rng(1)
    for trial in range(20):
        alpha = torch.tensor(rng.normal(size=(20, 7)) * 2, dtype=torch.float32)
        gamma = torch.tensor(rng.normal(size=(2, 5)) * 2, dtype=torch.float32)
        rel = NodeSoftmax()
        rel.groups = NodeSoftmax.groups_of({"normal": g})
        p = rel.cell_probabilities("normal", alpha)
        w_sum, w_cat = torch.softmax(gamma[0], 0), torch.sigmoid(gamma[1])
        c = policy().config
        mine = lhd_cell(p, g, w_sum.tolist(), w_cat.tolist(), c.ops_per_node, c.sum_top, c.sum_threshold, c.concat_top,
                        c.concat_threshold)
        k, sum_wise, sum_cum, cat_wise, cat_cum = args
        edges, sums, cats = _gen_trans(p.numpy(), torch.stack([w_sum, w_cat]).numpy(), k, sum_wise, sum_cum, cat_wise,
                                       cat_cum, 5)
        assert (set(mine.edges), mine.sum_nodes, mine.concat) == (edges, sums, cats), trial


def test_prune_keeps_chains_into_outputs():
    edges = [(0, 2, "a"), (2, 3, "b"), (3, 4, "c"), (1, 5, "d")]
    assert prune_unreachable(edges, {4}) == edges[:3]
    assert prune_unreachable(edges, {5}) == [edges[3]]


def test_lhd_discretiser_refuses_a_space_without_output_paths():
    recipe = tiny_recipe(discretiser={"name": "lhd_base"})  # NB201
    with pytest.raises(RecipeError, match=r"output paths.* @ recipe\.discretiser\.name"):
        build_tiny_search(recipe)  # refused before the search starts (check_composition), as `diffnas validate` does


# --------------------------------------------------------------------------- genotype


def test_genotype_sum_path_json_and_graph():
    cell = CellGenotype(edges=[(0, 2, "sep_conv_3x3"), (0, 2, "max_pool_3x3"), (2, 3, "skip_connect")], concat=[3],
                        sum_nodes=[3, 2])
    geno = Genotype(space="lhd", cells={"normal": cell})
    assert cell.sum_nodes == (2, 3)
    assert Genotype.from_json(geno.to_json()) == geno
    assert geno.to_dict()["cells"]["normal"]["sum_nodes"] == [2, 3]
    plain = CellGenotype(edges=[(0, 2, "skip_connect")], concat=[2])
    assert "sum_nodes" not in plain.to_dict() and plain.sum_nodes == ()
    g = cell.to_graph("normal")
    assert g.graph["sum"] == [2, 3] and g.edges[(0, 2)]["ops"] == ("max_pool_3x3", "sep_conv_3x3")
    assert g.edges[(0, 2)]["op"] == "max_pool_3x3+sep_conv_3x3"
    from diffnas.core.draw import draw_cell
    assert draw_cell(g).startswith(b"\x89PNG")


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("disc", ["lhd_base", "lhd_3op", "lhd_4out"])
def test_tiny_search_end_to_end(disc):
    s, summary = run_tiny(lhd_recipe(disc))
    geno = Genotype.from_dict(summary["genotype_json"])
    assert geno.space == "lhd" and set(geno.cells) == {"normal", "reduce"}
    for cell in geno.cells.values():
        assert cell.sum_nodes and set(cell.concat) <= {2, 3, 4}
    rec = s.state.history[-1]
    assert set(rec["alphas"]) == {"normal", "reduce"} and set(rec["entropy"]) == {"normal", "reduce"}
    assert set(rec["extra_alphas"]) == {"gamma_normal", "gamma_reduce"}
    assert len(rec["extra_alphas"]["gamma_normal"]) == 2 and len(rec["extra_alphas"]["gamma_normal"][0]) == 3
    # the α optimiser moved γ away from its 1e-3 init (Adam steps of ~lr = 3e-4)
    init = build_tiny_search(lhd_recipe(disc)).alphas["gamma_normal"].detach()
    assert not torch.equal(init, s.alphas["gamma_normal"].detach())


def test_checkpoint_round_trip_of_output_paths(tmp_path):
    s, _ = run_tiny(lhd_recipe(), out_dir=tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for k in ("gamma_normal", "gamma_reduce", "normal", "reduce"):
        assert torch.equal(ckpt["alphas"][k], s.alphas[k].detach().cpu())
    fresh = build_tiny_search(lhd_recipe())
    assert not torch.equal(fresh.alphas["gamma_normal"].detach(), s.alphas["gamma_normal"].detach())
    fresh.load_state_dict(ckpt)
    for k in ("gamma_normal", "gamma_reduce"):
        assert torch.equal(fresh.alphas[k].detach(), s.alphas[k].detach())
    # Adam's moments for γ come back too
    state = fresh.a_optimizer.state[fresh.alphas["gamma_normal"]]
    assert torch.equal(state["exp_avg"], s.a_optimizer.state[s.alphas["gamma_normal"]]["exp_avg"])


# --------------------------------------------------------------------------- discrete network


def _lhd_genotype():
    normal = CellGenotype(edges=[(0, 2, "sep_conv_3x3"), (1, 2, "skip_connect"), (0, 3, "dil_conv_5x5"),
                                 (2, 3, "max_pool_3x3"), (2, 3, "avg_pool_3x3"), (1, 4, "sep_conv_5x5")],
                          concat=[3, 4], sum_nodes=[2, 3])
    reduce = CellGenotype(edges=[(0, 2, "max_pool_3x3"), (1, 2, "dil_conv_3x3"), (2, 3, "skip_connect")],
                          concat=[2, 3], sum_nodes=[3])
    return Genotype(space="lhd", cells={"normal": normal, "reduce": reduce})


def test_eval_cell_by_hand():
    """sum = n2 + n3 and concat = (n3, n4) with n2 = sep3(s0) + s1, n3 = dil5(s0) + max(n2) + avg(n2),
    n4 = sep5(s1); preprocess0 is the identity in a normal cell, no path weights."""
    from diffnas.training.networks import LhdEvalCell

    torch.manual_seed(0)
    cell = LhdEvalCell(_lhd_genotype().cells["normal"], 4, 12, 4, reduction=False).eval()
    s0, s1 = torch.randn(2, 4, 8, 8), torch.randn(2, 12, 8, 8)
    total, cat = cell(s0, s1)
    ops = cell.ops
    x0, x1 = s0, cell.preprocess1(s1)
    n2 = ops[0](x0) + x1
    n3 = ops[2](x0) + ops[3](n2) + ops[4](n2)
    n4 = ops[5](x1)
    assert isinstance(cell.preprocess0, nn.Identity) and cell.multiplier == 2
    torch.testing.assert_close(total, n2 + n3)
    torch.testing.assert_close(cat, torch.cat([n3, n4], 1))
    assert isinstance(ops[0], nn.Sequential) and ops[0][1].groups == 4 and ops[0][2].affine  # single block, affine BN


def test_eval_network_shapes_widths_and_drop_path_scale():
    from diffnas.training.networks import LhdEvalNetwork

    net = LhdSpace().build_network(_lhd_genotype(), 10, C=4, layers=3, auxiliary=True, drop_path_prob=0.01)
    assert isinstance(net, LhdEvalNetwork) and net.drop_path_scale == 2.0
    # widths: stems 4 and 12; cell 0 normal (C=4), cells 1 and 2 reductions (C=8, C=16; 2 concat nodes each)
    assert [c.reduction for c in net.cells] == [False, True, True]
    assert [c.preprocess1[1].in_channels for c in net.cells] == [12, 4 * 2, 8 * 2]
    assert net.classifier.in_features == 16 + 2 * 16 and net.auxiliary_head.classifier.out_features == 10
    net.train()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and net.aux_logits.shape == (2, 10)
    with pytest.raises(ValueError, match="not \\['N'\\]"):
        LhdSpace().build_network(_lhd_genotype(), 10, N=5)


def test_eval_cell_refuses_a_path_without_nodes():
    from diffnas.core.errors import DiffnasError
    from diffnas.training.networks import LhdEvalCell

    bad = CellGenotype(edges=[(0, 2, "skip_connect")], concat=[2], sum_nodes=[3])
    with pytest.raises(DiffnasError, match="sum output path \\[3\\] has no computed node"):
        LhdEvalCell(bad, 4, 4, 4, reduction=False)


def test_search_then_train_end_to_end(tmp_path, capsys):
    """A tiny LHD search, then `diffnas train` of its genotype with the CPU smoke protocol."""
    from pathlib import Path

    from diffnas.cli import main

    run_tiny(lhd_recipe("lhd_base"), out_dir=tmp_path / "search")
    smoke = Path(__file__).resolve().parents[1] / "examples/train/smoke_cpu.yaml"
    base = ["train", str(tmp_path / "search"), "--recipe", str(smoke), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "bad")]) == 2  # the smoke recipe's NB201 key N
    assert "lhd network" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "train"), "--set", "network.N=null", "--set", "network.layers=3"]) == 0
    assert "LhdEvalNetwork" in capsys.readouterr().out
    assert (tmp_path / "train" / "metrics.jsonl").exists()


def test_gaea_on_lhd_starts_uniform_and_keeps_every_parameter_on_its_simplex():
    """LHD's GAEA: α and γ start at normalise(ones) and stay normalised along the last dimension."""
    recipe = lhd_recipe(update_rule={"name": "gaea", "params": {"mode": "bilevel", "eta": 0.1, "uniform_init": True}})
    s = build_tiny_search(recipe)
    s.update_rule.diffnas_search_start(s)
    assert torch.equal(s.alphas["gamma_normal"], torch.full((2, 3), 1 / 3))
    assert torch.equal(s.alphas["normal"], torch.full_like(s.alphas["normal"], 1 / 7))
    s, _ = run_tiny(recipe)
    for k, a in s.alphas.items():
        torch.testing.assert_close(a.detach().sum(-1), torch.ones(a.shape[:-1]))
    assert not torch.equal(s.alphas["gamma_reduce"].detach(), torch.full((2, 3), 1 / 3))  # it moved
