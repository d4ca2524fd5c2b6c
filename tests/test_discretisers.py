"""DARTS top-k, Fair-DARTS threshold and DARTS-PT discretisation (METHODS.md §1, §5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffnas.core.cells import edge_ops
from diffnas.core.genotype import Genotype
from diffnas.plugins.discretisers.darts_pt import DartsPT, Projection
from diffnas.plugins.discretisers.threshold import Threshold, threshold_cell
from diffnas.plugins.discretisers.top_k import TopKEdges, top_k_genotype
from diffnas.plugins.relaxations.softmax import Softmax
from diffnas.plugins.search_spaces.darts import DARTS_OP_NAMES, DartsSpace
from diffnas.testing import build_tiny_search, fresh_catalogue, tiny_recipe

OPS = list(DARTS_OP_NAMES)
CELLS = DartsSpace().cells()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Single-threaded: tiny nets on 2 busy cores are 20-30x slower with 2 OpenMP threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def row(u: int, v: int) -> int:
    """α row of edge (u, v) in a 4-step DARTS cell."""
    return [(a, b) for b in range(2, 6) for a in range(b)].index((u, v))


def quark0_genotype(p: torch.Tensor, primitives=OPS, steps: int = 4) -> list[tuple[str, int]]:
    """``quark0/darts: cnn/model_search.py Network.genotype()._parse``, transcribed as the oracle."""
    weights = p.numpy()
    gene, n, start = [], 2, 0
    for i in range(steps):
        end = start + n
        W = weights[start:end].copy()
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != primitives.index("none")))[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != primitives.index("none"):
                    if k_best is None or W[j][k] > W[j][k_best]:
                        k_best = k
            gene.append((primitives[k_best], j))
        start = end
        n += 1
    return gene


def probs_for(gene: list[tuple[str, int]]) -> torch.Tensor:
    """Strengths under which DARTS picks ``gene`` (per node: first pair strongest)."""
    p = torch.full((14, 8), 0.01)
    for i, (op, src) in enumerate(gene):
        node, rank = 2 + i // 2, i % 2
        p[row(src, node), OPS.index(op)] = 0.9 - 0.1 * rank
    return p


DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
            "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
            "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def hand_normal() -> torch.Tensor:
    p = torch.full((14, 8), 0.05)
    p[row(0, 2), OPS.index("none")] = 0.9  # none is ignored: edge strength 0.3 from sep_conv_3x3
    p[row(0, 2), OPS.index("sep_conv_3x3")] = 0.3
    p[row(1, 2), OPS.index("skip_connect")] = 0.5
    p[row(0, 3), OPS.index("dil_conv_3x3")] = 0.4
    p[row(1, 3), OPS.index("max_pool_3x3")] = 0.2
    p[row(2, 3), OPS.index("sep_conv_5x5")] = 0.6
    p[row(0, 4), OPS.index("avg_pool_3x3")] = 0.7
    p[row(1, 4), OPS.index("none")] = 0.95  # strongest entry of node 4, but only via none
    p[row(2, 4), OPS.index("dil_conv_5x5")] = 0.35
    p[row(3, 4), OPS.index("sep_conv_3x3")] = 0.36
    p[row(1, 5), OPS.index("skip_connect")] = 0.8
    p[row(4, 5), OPS.index("max_pool_3x3")] = 0.8  # tie with (1, 5): the lower source comes first
    return p


def test_top_k_on_hand_made_alpha():
    normal = hand_normal()
    reduce = probs_for([("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)])
    g = top_k_genotype({"normal": normal, "reduce": reduce}, CELLS, "darts")
    # derived by hand: node 2 keeps (0: sep3) and (1: skip); node 3 (2: sep5, 0.6) and (0: dil3, 0.4);
    # node 4 (0: avg, 0.7) and (3: sep3, 0.36); node 5 (1: skip) and (4: max_pool), tied at 0.8
    assert g.to_darts_string() == (
        "Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_3x3', 0), ('sep_conv_5x5', 2), "
        "('avg_pool_3x3', 0), ('sep_conv_3x3', 3), ('skip_connect', 1), ('max_pool_3x3', 4)], normal_concat=[2, 3, 4, 5], "
        "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 0), ('skip_connect', 2), ('max_pool_3x3', 1), ('skip_connect', 2)], reduce_concat=[2, 3, 4, 5])")
    # the code lists each node's inputs by strength; the same architecture
    assert quark0_genotype(normal) == [("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2), ("dil_conv_3x3", 0),
                                       ("avg_pool_3x3", 0), ("sep_conv_3x3", 3), ("skip_connect", 1), ("max_pool_3x3", 4)]
    ref = f"Genotype(normal={quark0_genotype(normal)!r}, normal_concat=[2, 3, 4, 5], " \
          f"reduce={quark0_genotype(reduce)!r}, reduce_concat=[2, 3, 4, 5])"
    assert Genotype.from_darts_string(ref) == g
    assert str(g) == g.to_darts_string()


def test_top_k_recovers_darts_v2_and_matches_code_on_random_alpha():
    v2 = Genotype.from_darts_string(DARTS_V2)
    gene = {"normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                       ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
            "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                       ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]}
    probs = {k: probs_for(v) for k, v in gene.items()}
    assert top_k_genotype(probs, CELLS, "darts") == v2
    assert quark0_genotype(probs["normal"]) == gene["normal"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        probs = {k: torch.softmax(torch.randn(14, 8, generator=gen), -1) for k in CELLS}
        ref = f"Genotype(normal={quark0_genotype(probs['normal'])!r}, normal_concat=[2, 3, 4, 5], " \
              f"reduce={quark0_genotype(probs['reduce'])!r}, reduce_concat=[2, 3, 4, 5])"
        assert top_k_genotype(probs, CELLS, "darts") == Genotype.from_darts_string(ref)


def test_top_k_discretiser_reads_the_search():
    p = {"normal": hand_normal(), "reduce": hand_normal()}
    fake = SimpleNamespace(probabilities=lambda: p, cells=CELLS, search_space=SimpleNamespace(name="darts", zero_ops=lambda: frozenset({"none"})))
    g = TopKEdges().discretise(fake)
    assert g.cells["normal"].inputs_of(4) == [("avg_pool_3x3", 0), ("sep_conv_3x3", 3)]
    g3 = TopKEdges(TopKEdges.Config(k=3)).discretise(fake)
    assert len(g3.cells["normal"].inputs_of(5)) == 3 and len(g3.cells["normal"].inputs_of(2)) == 2
    # with none allowed, node 4's (1, 4) edge wins through none
    gn = TopKEdges(TopKEdges.Config(exclude=())).discretise(fake)
    assert ("none", 1) in gn.cells["normal"].inputs_of(4)


def hand_sigma() -> torch.Tensor:
    s = torch.full((14, 8), 0.1)
    s[row(0, 2), OPS.index("sep_conv_3x3")] = 0.95
    s[row(0, 2), OPS.index("dil_conv_3x3")] = 0.90  # second op above T on the same edge (edge mode only)
    s[row(1, 2), OPS.index("skip_connect")] = 0.86
    s[row(0, 3), OPS.index("sep_conv_5x5")] = 0.60  # node 3: nothing reaches 0.85
    s[row(2, 3), OPS.index("max_pool_3x3")] = 0.70
    s[row(0, 4), OPS.index("none")] = 0.99  # excluded
    s[row(3, 4), OPS.index("avg_pool_3x3")] = 0.85  # exactly T: kept (the code compares with >=)
    s[row(1, 5), OPS.index("dil_conv_5x5")] = 0.97
    s[row(2, 5), OPS.index("sep_conv_3x3")] = 0.91
    s[row(4, 5), OPS.index("skip_connect")] = 0.93  # third edge above T: sparse mode keeps the top 2 only
    return s


def test_threshold_sparse_with_fallback():
    c = threshold_cell(hand_sigma(), CELLS["normal"])
    assert c.inputs_of(2) == [("sep_conv_3x3", 0), ("skip_connect", 1)]
    assert c.inputs_of(3) == [("max_pool_3x3", 2)]  # fallback: the strongest pair, below T
    assert c.inputs_of(4) == [("avg_pool_3x3", 3)]
    assert c.inputs_of(5) == [("dil_conv_5x5", 1), ("skip_connect", 4)]
    bare = threshold_cell(hand_sigma(), CELLS["normal"], min_inputs=0)
    assert bare.inputs_of(3) == []
    two = threshold_cell(hand_sigma(), CELLS["normal"], min_inputs=2)
    assert two.inputs_of(3) == [("sep_conv_5x5", 0), ("max_pool_3x3", 2)]  # the two strongest pairs
    assert [len(two.inputs_of(v)) for v in (2, 3, 4, 5)] == [2, 2, 2, 2]


def test_threshold_edge_mode_keeps_several_ops_per_edge():
    c = threshold_cell(hand_sigma(), CELLS["normal"], mode="edge")
    assert sorted(c.inputs_of(2)) == [("dil_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1)]
    assert sorted(c.inputs_of(5)) == [("dil_conv_5x5", 1), ("sep_conv_3x3", 2), ("skip_connect", 4)]
    assert c.inputs_of(3) == [("max_pool_3x3", 2)]
    high = threshold_cell(hand_sigma(), CELLS["normal"], mode="edge", threshold=0.92)
    assert sorted(high.inputs_of(5)) == [("dil_conv_5x5", 1), ("skip_connect", 4)]
    fake = SimpleNamespace(probabilities=lambda: {"normal": hand_sigma(), "reduce": hand_sigma()}, cells=CELLS,
                           search_space=SimpleNamespace(name="darts", zero_ops=lambda: frozenset({"none"})))
    g = Threshold(Threshold.Config(mode="edge")).discretise(fake)
    assert g.cells["normal"] == c


# --------------------------------------------------------------------------- DARTS-PT

def pt_recipe(subspace: str, **pt):
    return tiny_recipe(search_space={"name": "darts", "params": {"C": 4, "layers": 3, "steps": 2, "subspace": subspace}},
                       discretiser={"name": "darts_pt", "params": {"proj_intv": 1, "eval_batches": 1, "tune_steps": 1, **pt}},
                       trainer={"epochs": 1, "steps_per_epoch": 1})


def test_projection_fixes_rows_and_keeps_gradients():
    proj = Projection({"normal": (3, 2)})
    a = torch.zeros(3, 2, requires_grad=True)
    w = torch.softmax(a, -1)
    proj.fix_op("normal", 0, 1)
    proj.drop_edge("normal", 2)
    out = proj.apply("normal", w)
    assert out.tolist() == [[0.0, 1.0], [0.5, 0.5], [0.0, 0.0]]
    out[:, 0].sum().backward()
    assert a.grad[0].abs().sum() == 0 and a.grad[2].abs().sum() == 0 and a.grad[1].abs().sum() > 0


class OracleDartsPT(DartsPT):
    """DARTS-PT whose 'validation accuracy' is Σ_rows w[row, sep_conv_3x3]·(1 + src(row)) over both cells:
    removing sep_conv_3x3 always hurts most, and removing an edge hurts less the lower its source."""

    def evaluate(self, search, op_weights, batches):
        score = 0.0
        for cell, ow in op_weights.items():
            g = search.cells[cell]
            sep = edge_ops(g)[0].index("sep_conv_3x3")
            for u, v, d in g.edges(data=True):
                score += float(ow.weights[d["index"], sep]) * (1 + u)
        return score, -score


def test_darts_pt_decisions_follow_the_supernet_score():
    cat = fresh_catalogue()
    cat.entries["discretiser"]["darts_pt"] = type(cat.entries["discretiser"]["darts_pt"])(
        "discretiser", "darts_pt", OracleDartsPT, "test")
    search = build_tiny_search(pt_recipe("s3"), cat=cat)
    relaxation, w_opt = search.relaxation, search.w_optimizer
    summary = search.run(progress=False)
    g = search.final_genotype
    for cell in ("normal", "reduce"):
        assert g.cells[cell].inputs_of(2) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
        assert g.cells[cell].inputs_of(3) == [("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]  # the edge from 0 is dropped
    pt = search.discretiser
    # 5 edges x 3 ops x 2 cells, then node 3 of each cell: 3 candidate removals
    assert pt.evaluations == 5 * 3 * 2 + 3 * 2
    assert [d["op"] for d in pt.decisions if "op" in d] == ["sep_conv_3x3"] * 10
    assert [(d["cell"], d["node"], d["dropped"]) for d in pt.decisions if "node" in d] == \
        [("normal", 3, 2), ("reduce", 3, 2)]  # α row 2 is edge (0, 3)
    assert search.relaxation is relaxation and isinstance(search.relaxation, Softmax)
    assert search.w_optimizer is w_opt
    assert summary["genotype"] == str(g)


def test_darts_pt_on_a_tiny_supernet():
    search = build_tiny_search(pt_recipe("s2", seed=3))
    before = {k: v.detach().clone() for k, v in search.model.state_dict().items()}
    search.run(progress=False)
    g, pt = search.final_genotype, search.discretiser
    assert pt.evaluations == 5 * 2 * 2 + 3 * 2
    ops = {(d["cell"], d["edge"]): d["op"] for d in pt.decisions if "op" in d}
    assert len(ops) == 10 and set(ops.values()) <= {"skip_connect", "sep_conv_3x3"}
    for d in pt.decisions:
        if "op" in d:  # the chosen op is the one whose removal gave the lowest accuracy
            assert d["scores"][["skip_connect", "sep_conv_3x3"].index(d["op"])] == min(d["scores"])
    rows = {(u, v): i for i, (u, v) in enumerate((u, v) for v in (2, 3) for u in range(v))}
    for cell in ("normal", "reduce"):
        cg = g.cells[cell]
        assert [len(cg.inputs_of(v)) for v in (2, 3)] == [2, 2]
        for src, dst, op in cg.edges:  # every kept edge carries its projected op
            assert op == ops[(cell, rows[(src, dst)])]
    # 6 decisions: proj_intv (1) tuning epoch after each of the first 5, one after the last, at lr/10
    assert pt.tune_lrs == pytest.approx([0.025 * 0.1] * 6)
    # the supernet was fine-tuned between decisions
    after = search.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())


def test_darts_pt_loss_criterion_and_ties():
    """crit: loss reads the second value (−loss): under the oracle, removing sep_conv_3x3 *lowers* the
    'loss', so every edge keeps the first op whose removal changes nothing (none, first on ties);
    then all edge removals tie and the code's rule drops the last candidate."""
    cat = fresh_catalogue()
    cat.entries["discretiser"]["darts_pt"] = type(cat.entries["discretiser"]["darts_pt"])(
        "discretiser", "darts_pt", OracleDartsPT, "test")
    search = build_tiny_search(pt_recipe("s3", crit="loss"), cat=cat)
    search.run(progress=False)
    pt = search.discretiser
    assert [d["op"] for d in pt.decisions if "op" in d] == ["none"] * 10
    assert [d["dropped"] for d in pt.decisions if "node" in d] == [4, 4]  # row 4 = edge (2, 3), the last
    # the final parse never picks none: a row projected onto none falls back to the first other op
    assert search.final_genotype.cells["normal"].inputs_of(3) == [("skip_connect", 0), ("skip_connect", 1)]
