"""Fast paths belong to the search space: a third-party space offers its own fused supernet through
SearchSpace.fused_supernet, the engine installs it and checks the FusedSupernet contract, and the
core imports nothing from plugins/ or fast/."""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import networkx as nx
import pytest
import torch
from torch import nn

import diffnas
from diffnas.core.cells import SearchCell, make_cell_graph
from diffnas.core.config import help_field, positive
from diffnas.core.errors import PluginError, RecipeError
from diffnas.core.hookspecs import hookimpl
from diffnas.core.protocols import FastPathContext, FusedSupernet, OpWeights, SearchSpace, Supernet
from diffnas.registry import Catalogue
from diffnas.testing import build_tiny_search, registered, tiny_recipe

# --------------------------------------------------------------------------- a third-party space

OPS = ("none", "skip_connect", "conv_1x1", "tanh")


def _make_op(op: str, C: int) -> nn.Module:
    if op == "none":
        m = nn.Identity()
        m.is_zero = True  # SearchCell skips it (its term is exactly zero)
        return m
    return {"skip_connect": nn.Identity, "tanh": nn.Tanh}.get(op, lambda: nn.Conv2d(C, C, 1, bias=False))()


class ChainSupernet(Supernet):
    """stem conv -> one 3-node search cell (ops: none, skip, 1x1 conv, tanh) -> mean pool -> linear."""

    def __init__(self, graph: nx.DiGraph, C: int, num_classes: int):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.cell = SearchCell(graph, lambda op, u, v: _make_op(op, C))
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x, op_weights):
        return self.classifier(self.cell([self.stem(x)], op_weights["normal"]).mean((2, 3)))


class FusedChain(FusedSupernet):
    """The same function per source node: skip and tanh once, the 1x1 convs of all edges leaving the
    node as ONE wide convolution, and the weighted sum over ops and edges as one einsum."""

    def __init__(self, plain: ChainSupernet):
        super().__init__()
        self.stem, self.classifier, self.C = plain.stem, plain.classifier, plain.classifier.in_features
        g = plain.cell.graph
        self.sources = {s: sorted(v for (u, v) in plain.cell.edges if u == s) for s in (0, 1)}
        self.rows = {(u, v): g.edges[(u, v)]["index"] for (u, v) in plain.cell.edges}
        conv = OPS.index("conv_1x1")
        self.convs = nn.ParameterList(
            nn.Parameter(torch.cat([plain.cell.mixed[self.rows[(s, d)]][conv].weight.detach() for d in dsts]).clone())
            for s, dsts in self.sources.items())

    def param_mapping(self, plain):
        conv, C = OPS.index("conv_1x1"), self.C
        out = [(f"cell.mixed.{self.rows[(s, d)]}.{conv}.weight", f"convs.{i}", slice(j * C, (j + 1) * C))
               for i, (s, dsts) in enumerate(self.sources.items()) for j, d in enumerate(dsts)]
        return out + [(n, n, None) for n, _ in plain.named_parameters() if not n.startswith("cell.")]

    def forward(self, x, op_weights):
        w = op_weights["normal"].weights
        nodes = {0: self.stem(x)}
        acc: dict[int, torch.Tensor] = {}
        for i, (s, dsts) in enumerate(self.sources.items()):
            xs = nodes[s] if s == 0 else acc.pop(s)
            nodes[s] = xs
            k = len(dsts)
            conv = nn.functional.conv2d(xs, self.convs[i]).unflatten(1, (k, self.C)).transpose(0, 1)  # [k, B, C, H, W]
            rows = [self.rows[(s, d)] for d in dsts]
            mix = w[rows]  # [k, ops]
            shared = torch.stack([xs, torch.tanh(xs)])  # skip, tanh: the same for every edge
            out = torch.einsum("kg,gbchw->kbchw", mix[:, [OPS.index("skip_connect"), OPS.index("tanh")]], shared)
            out = out + mix[:, OPS.index("conv_1x1")].view(k, 1, 1, 1, 1) * conv
            for j, d in enumerate(dsts):
                acc[d] = out[j] if d not in acc else acc[d] + out[j]
        return self.classifier(acc[2].mean((2, 3)))


class ChainSpace(SearchSpace):
    """A third-party test space: one input node, two more nodes, four ops; with a fused supernet."""

    @attrs.frozen
    class Config:
        C: int = help_field(4, "channels", validator=positive)

    fused_calls: list[FastPathContext] = []

    def cells(self):
        return {"normal": make_cell_graph("normal", 1, 2, OPS, concat=[2])}

    def build_supernet(self, num_classes):
        return ChainSupernet(self.cells()["normal"], self.config.C, num_classes)

    def fused_supernet(self, supernet, context):
        ChainSpace.fused_calls.append(context)
        if not isinstance(supernet, ChainSupernet) or len(supernet.cell.edge_terms):
            raise context.refuse("the chain supernet was modified")
        return FusedChain(supernet)


class ChainPlugin:
    @hookimpl
    def diffnas_register_search_spaces(self, register):
        register("chain_test", ChainSpace)


@pytest.fixture
def chain_catalogue(plugin_manager):
    with registered(plugin_manager, ChainPlugin(), name="chain-test-plugin"):
        yield Catalogue(plugin_manager)


def _chain_recipe(**trainer):
    return tiny_recipe(search_space={"name": "chain_test", "params": {"C": 4}},
                       trainer={**tiny_recipe()["trainer"], **trainer})


def _grads(net, x, alpha):
    alpha.grad = None
    net.zero_grad(set_to_none=True)
    y = net(x, {"normal": OpWeights(torch.softmax(alpha, -1))})
    nn.functional.cross_entropy(y, torch.arange(x.shape[0]) % 10).backward()
    return y.detach(), alpha.grad.clone(), {n: p.grad for n, p in net.named_parameters()}


def test_third_party_fused_supernet_equals_its_plain_supernet_in_float64():
    sp = ChainSpace()
    torch.manual_seed(0)
    plain = sp.build_supernet(10).double()
    fused = sp.fused_supernet(plain, FastPathContext("trainer.fused_cells", torch.device("cpu")))
    gen = torch.Generator().manual_seed(1)
    alpha = torch.randn(3, len(OPS), dtype=torch.float64, generator=gen).requires_grad_()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64, generator=gen)
    y0, a0, g0 = _grads(plain, x, alpha)
    y1, a1, g1 = _grads(fused, x, alpha)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a1, a0, rtol=1e-10, atol=1e-12)
    for pname, fname, part in fused.param_mapping(plain):
        gf = g1[fname] if part is None else g1[fname][part]
        torch.testing.assert_close(gf, g0[pname], rtol=1e-10, atol=1e-12)


def test_third_party_space_search_runs_through_its_fused_supernet(chain_catalogue):
    """The engine asks the space (with its context), installs the result, and a float64 search with
    fused_cells steps exactly as the plain search with the same seed."""
    ChainSpace.fused_calls.clear()
    plain = build_tiny_search(_chain_recipe(deterministic=True), cat=chain_catalogue)
    fused = build_tiny_search(_chain_recipe(deterministic=True, fused_cells=True), cat=chain_catalogue)
    assert isinstance(fused.model, FusedChain) and fused.plain_model is not None and plain.plain_model is None
    ctx = ChainSpace.fused_calls[-1]
    assert (ctx.switch, ctx.device.type, ctx.channels_last) == ("trainer.fused_cells", "cpu", False)
    for s in (plain, fused):
        s.model.double()
        for k in s.alphas:
            s.alphas[k].data = s.alphas[k].data.double()
        s.w_optimizer = torch.optim.SGD(s.model.parameters(), lr=0.05, momentum=0.9)
        s.a_optimizer = torch.optim.Adam(s.alphas.parameters(), lr=3e-3, betas=(0.5, 0.999))
        for loader in (s.train_loader, s.valid_loader):
            loader.mean, loader.std = loader.mean.double(), loader.std.double()
    start = plain.alphas["normal"].detach().clone()
    for step in range(3):
        plain._one_step(0, step)
        fused._one_step(0, step)
    assert (plain.alphas["normal"] - start).abs().max() > 1e-4  # the steps moved α
    torch.testing.assert_close(fused.alphas["normal"], plain.alphas["normal"], rtol=1e-9, atol=1e-12)
    state = fused.model.plain_state_dict(fused.plain_model)  # the FusedSupernet default, via param_mapping
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")
    summary = fused.run(progress=False)  # and the whole loop runs through it
    assert summary["epochs_run"] == 2 and summary["genotype"]


def test_the_space_refuses_through_its_context(chain_catalogue):
    with pytest.raises(RecipeError) as err:
        build_tiny_search(_chain_recipe(fused_cells=True) | {"regularisers": [{"name": "darts_minus_skip"}]},
                          cat=chain_catalogue)
    msg = str(err.value)
    assert "the chain supernet was modified" in msg and "@ recipe.trainer.fused_cells" in msg
    assert "set trainer.fused_cells: false" in msg


def test_engine_refuses_a_broken_fused_supernet_contract(chain_catalogue, monkeypatch):
    full = FusedChain.param_mapping

    def missing_rows(self, plain):
        return full(self, plain)[1:]

    monkeypatch.setattr(FusedChain, "param_mapping", missing_rows)
    with pytest.raises(PluginError, match="chain_test.*param_mapping leaves out plain parameter"):
        build_tiny_search(_chain_recipe(fused_cells=True), cat=chain_catalogue)
    monkeypatch.undo()

    init = FusedChain.__init__

    def perturbed(self, plain):
        init(self, plain)
        with torch.no_grad():
            self.convs[0].add_(1.0)

    monkeypatch.setattr(FusedChain, "__init__", perturbed)
    with pytest.raises(PluginError, match="does not start from the plain supernet's cell.mixed"):
        build_tiny_search(_chain_recipe(fused_cells=True), cat=chain_catalogue)
    monkeypatch.undo()
    monkeypatch.setattr(ChainSpace, "fused_supernet", lambda self, s, c: nn.Linear(1, 1))
    with pytest.raises(PluginError, match="not a diffnas.core.protocols.FusedSupernet"):
        build_tiny_search(_chain_recipe(fused_cells=True), cat=chain_catalogue)


def test_a_space_without_a_fused_supernet_is_refused_naming_it_and_those_that_have_one(chain_catalogue):
    r = tiny_recipe(search_space={"name": "lhd", "params": {"C": 4, "layers": 3, "steps": 2}},
                    relaxation={"name": "node_softmax"}, discretiser={"name": "lhd_base"},
                    trainer={**tiny_recipe()["trainer"], "fused_cells": True})
    with pytest.raises(RecipeError) as err:
        build_tiny_search(r, cat=chain_catalogue)
    msg = str(err.value)
    assert "search space 'lhd' offers no fused supernet" in msg
    assert "spaces that implement one: chain_test, darts, nb201" in msg


# --------------------------------------------------------------------------- dependency direction


def _imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (a module of ``package``), relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from . import x`` imports the module ``package.x``; ``from .m import x`` imports from ``package.m``
            out += [(node.lineno, f"{mod}.{a.name}" if node.module is None else mod) for a in node.names]
    return out


def test_core_imports_nothing_from_plugins_or_fast():
    core = Path(diffnas.__file__).parent / "core"
    bad = []
    for path in sorted(core.rglob("*.py")):
        for line, mod in _imported_modules(path, "diffnas.core"):
            if mod.startswith(("diffnas.plugins", "diffnas.fast")):
                bad.append(f"{path.name}:{line} imports {mod}")
    assert bad == []
    # and the resolver itself sees such an import (the check cannot pass vacuously)
    probe = core.parent / "plugins" / "search_spaces" / "nb201.py"
    assert any(m.startswith("diffnas.fast") for _, m in _imported_modules(probe, "diffnas.plugins.search_spaces"))
