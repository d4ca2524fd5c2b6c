"""The DARTS search space and RobustDARTS S1–S4 (METHODS.md §1, §9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffnas.core.cells import alpha_shape, edge_ops, searched_edges
from diffnas.core.errors import RecipeError
from diffnas.core.genotype import Genotype
from diffnas.core.protocols import OpWeights
from diffnas.core.recipe import resolve_recipe
from diffnas.plugins.search_spaces.darts import DARTS_OP_NAMES, DartsSpace, reduction_layers
from diffnas.plugins.search_spaces.ops import FactorizedReduce, Noise, ReLUConvBN
from diffnas.testing import build_tiny_search, fresh_catalogue, tiny_recipe


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets are dominated by per-op overhead; with 2 threads on 2 busy cores OpenMP spinning
    made forward passes 20-30x slower, so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def space(**kw) -> DartsSpace:
    return DartsSpace(DartsSpace.Config(**kw))


def uniform_weights(sp: DartsSpace) -> dict[str, OpWeights]:
    return {k: OpWeights(torch.full(alpha_shape(g), 1.0 / alpha_shape(g)[1])) for k, g in sp.cells().items()}


def test_cell_graphs():
    cells = space().cells()
    assert set(cells) == {"normal", "reduce"}
    expected_edges = [(u, v) for v in range(2, 6) for u in range(v)]
    for name, g in cells.items():
        assert g.graph["reduction"] is (name == "reduce")
        assert g.graph["concat"] == [2, 3, 4, 5]
        assert {n: d["role"] for n, d in g.nodes(data=True)} == {
            0: "input", 1: "input", 2: "intermediate", 3: "intermediate", 4: "intermediate", 5: "intermediate"}
        assert searched_edges(g) == expected_edges  # α rows: into node 2, then 3, 4, 5; sources ascending
        assert len(expected_edges) == 14
        assert alpha_shape(g) == (14, 8)
        assert edge_ops(g)[0] == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                  "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def test_default_supernet_matches_darts_parameter_count():
    # quark0/darts train_search.py logs "param size = 1.930618MB" for the CIFAR-10 search network
    net = space().build_supernet(10)
    assert sum(p.numel() for p in net.parameters()) == 1_930_618
    assert net.reduction_layers == (2, 5)
    assert [c.reduction for c in net.cells] == [False, False, True, False, False, True, False, False]
    # BN in the cells is affine=False: no cell BN contributes weights
    assert all(not m.affine for c in net.cells for m in c.modules() if isinstance(m, nn.BatchNorm2d))


def expected_tiny_params(C: int, layers: int, stem_mult: int, classes: int) -> int:
    """Hand count of the DARTS supernet (affine-free cell BNs; 8 ops per edge)."""
    def edge(c: int, stride: int) -> int:
        sep3, sep5 = 2 * (9 * c + c * c), 2 * (25 * c + c * c)
        dil3, dil5 = 9 * c + c * c, 25 * c + c * c
        skip = c * c if stride == 2 else 0  # FactorizedReduce: two 1x1 convs c -> c/2
        return sep3 + sep5 + dil3 + dil5 + skip

    c_stem = stem_mult * C
    total = 3 * 9 * c_stem + 2 * c_stem  # stem conv + affine BN
    c_pp, c_p, c = c_stem, c_stem, C
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c = 2 * c if red else c
        total += c_pp * c + c_p * c  # preprocess0 (ReLUConvBN or FactorizedReduce: same count) and preprocess1
        total += sum(edge(c, 2 if red and u < 2 else 1) for v in range(2, 6) for u in range(v))
        c_pp, c_p = c_p, 4 * c
    return total + c_p * classes + classes


def test_tiny_supernet_shape_and_parameters():
    sp = space(C=4, layers=3)
    net = sp.build_supernet(10)
    assert net.reduction_layers == (1, 2)
    n = sum(p.numel() for p in net.parameters())
    assert n == expected_tiny_params(4, 3, 3, 10) == 72_854
    out = net(torch.randn(2, 3, 8, 8), uniform_weights(sp))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_reduction_cells_use_stride_two_on_input_edges():
    net = space(C=4, layers=3).build_supernet(10)
    normal, red1, red2 = net.cells
    assert isinstance(normal.preprocess0, ReLUConvBN)
    assert isinstance(red1.preprocess0, ReLUConvBN)  # the cell before it did not reduce
    assert isinstance(red2.preprocess0, FactorizedReduce)  # c_{k-2} comes from a reduction cell
    skip = DARTS_OP_NAMES.index("skip_connect")
    for e, (u, v) in enumerate(red1.cell.edges):
        assert isinstance(red1.cell.mixed[e][skip], FactorizedReduce) is (u < 2)
        conv = red1.cell.mixed[e][DARTS_OP_NAMES.index("sep_conv_3x3")][0][1]
        assert conv.stride == ((2, 2) if u < 2 else (1, 1))
    assert all(isinstance(normal.cell.mixed[e][skip], nn.Identity) for e in range(14))
    x = torch.randn(2, 3, 8, 8)
    assert net.stem(x).shape == (2, 12, 8, 8)
    # channels: 4 -> 8 (reduce, 4x4) -> 16 (reduce, 2x2); cell outputs concat 4 nodes
    w = uniform_weights(space(C=4, layers=3))
    s0 = s1 = net.stem(x)
    shapes = []
    for cell in net.cells:
        s0, s1 = s1, cell(s0, s1, w["reduce" if cell.reduction else "normal"])
        shapes.append(tuple(s1.shape))
    assert shapes == [(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]


@pytest.mark.parametrize("subspace, ops, free", [
    ("darts", DARTS_OP_NAMES, {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}),
    ("s2", ("skip_connect", "sep_conv_3x3"), {"skip_connect"}),
    ("s3", ("none", "skip_connect", "sep_conv_3x3"), {"none", "skip_connect"}),
    ("s4", ("none", "noise", "sep_conv_3x3"), {"none", "noise"}),
])
def test_robust_darts_uniform_spaces(subspace, ops, free):
    sp = space(subspace=subspace)
    for g in sp.cells().values():
        assert set(edge_ops(g)) == {ops}
        assert alpha_shape(g) == (14, len(ops))
    assert sp.parameter_free_ops() == frozenset(free)


def test_s1_per_edge_ops_from_robust_darts_code():
    sp = space(subspace="s1")
    cells = sp.cells()
    normal, reduce = edge_ops(cells["normal"]), edge_ops(cells["reduce"])
    assert alpha_shape(cells["normal"]) == alpha_shape(cells["reduce"]) == (14, 2)
    # first, sixth and last rows of RobustDARTS spaces.py primitives_1
    assert normal[0] == ("skip_connect", "dil_conv_3x3")
    assert normal[5] == ("max_pool_3x3", "skip_connect")
    assert normal[13] == ("dil_conv_3x3", "dil_conv_5x5")
    assert reduce[1] == ("max_pool_3x3", "dil_conv_3x3")
    assert reduce[6] == ("max_pool_3x3", "sep_conv_3x3")
    assert sp.parameter_free_ops() == frozenset({"skip_connect", "max_pool_3x3", "avg_pool_3x3"})
    # a recipe's edge_ops replace a cell's lists
    custom = [["skip_connect", "sep_conv_3x3"]] * 13 + [["avg_pool_3x3", "dil_conv_5x5"]]
    sp2 = space(subspace="s1", edge_ops={"normal": custom})
    assert edge_ops(sp2.cells()["normal"])[13] == ("avg_pool_3x3", "dil_conv_5x5")
    assert edge_ops(sp2.cells()["reduce"]) == reduce


def test_s4_noise_supernet_runs():
    sp = space(C=4, layers=3, subspace="s4")
    net = sp.build_supernet(10)
    assert any(isinstance(m, Noise) for m in net.modules())
    assert net(torch.randn(2, 3, 8, 8), uniform_weights(sp)).shape == (2, 10)


def _resolve(params):
    cat = fresh_catalogue()
    return resolve_recipe(tiny_recipe(search_space={"name": "darts", "params": params}), cat)


def test_config_errors_name_the_problem():
    with pytest.raises(RecipeError, match="same number of candidate ops"):
        _resolve({"edge_ops": {"normal": [["skip_connect", "sep_conv_3x3"]] * 13 + [["skip_connect"]]}})
    with pytest.raises(RecipeError, match="all 14 edges"):
        _resolve({"edge_ops": {"normal": [["skip_connect"]] * 3}})
    with pytest.raises(RecipeError, match="unknown op"):
        _resolve({"ops": ["skip_connect", "conv_7x7"]})
    with pytest.raises(RecipeError, match="give only one"):
        _resolve({"subspace": "s2", "ops": ["skip_connect"]})
    with pytest.raises(RecipeError, match="give only one"):
        _resolve({"subspace": "s1", "ops": ["skip_connect"]})
    with pytest.raises(RecipeError, match="cannot be combined"):
        _resolve({"subspace": "s3", "edge_ops": {"normal": [["skip_connect"]] * 14}})
    r = _resolve({"C": 4, "ops": ["skip_connect", "sep_conv_3x3"]})
    assert r.configs["search_space"].ops == ("skip_connect", "sep_conv_3x3")


def test_tiny_end_to_end_search_with_top_k():
    recipe = tiny_recipe(search_space={"name": "darts", "params": {"C": 4, "layers": 3}},
                         discretiser={"name": "top_k_edges"},
                         trainer={"epochs": 2, "steps_per_epoch": 1})
    search = build_tiny_search(recipe)
    alpha0 = {k: a.detach().clone() for k, a in search.alphas.items()}
    summary = search.run(progress=False)
    g = search.final_genotype
    assert g.space == "darts"
    assert summary["epochs_run"] == 2
    for cell in ("normal", "reduce"):
        cg = g.cells[cell]
        assert cg.concat == (2, 3, 4, 5)
        assert [len(cg.inputs_of(v)) for v in (2, 3, 4, 5)] == [2, 2, 2, 2]
        assert "none" not in cg.ops()
        assert all(src < dst for src, dst, _ in cg.edges)
    assert summary["genotype"].startswith("Genotype(normal=[")
    assert Genotype.parse(summary["genotype"]) == g
    assert len(search.state.history) == 2 and all(r["genotype"] for r in search.state.history)
    # two Adam α steps (lr 3e-4) moved every α row, each entry by about lr per step
    for k, a in search.alphas.items():
        delta = (a.detach() - alpha0[k]).abs()
        assert 3e-4 < float(delta.max()) <= 2 * 3e-4 * 1.5
        assert bool((delta.sum(1) > 0).all())


def test_build_network_gives_the_discrete_evaluation_network():
    v2 = Genotype.from_darts_string(
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
        "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
    net = space().build_network(v2, 10, C=4, layers=3)
    assert type(net).__name__ == "DartsEvalNetwork"
    assert len(net.cells) == 3
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
