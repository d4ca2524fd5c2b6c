"""A fused NAS-Bench-201 supernet: the same mathematics as :class:`NB201Network` in fewer, larger kernels.

Switched on by ``trainer.fused_cells: true`` (default false). In the plain supernet every edge runs
its candidate ops one by one (ReLU, conv, BN per conv op; pool; one ``op(x)·w`` product per op and
one add per term). The fused cell works per *source node* s instead, for all k edges s→d at once:

* ``relu(x_s)`` once;
* the k 1x1 and k 3x3 convolutions as one wide convolution ("embed": each 1x1 kernel is a 3x3 kernel
  with zeros around the centre; the default on CUDA) or as one wide 1x1 plus one wide 3x3
  convolution ("split": no extra FLOPs; the default on the CPU);
* their batch norms (affine=False, batch statistics only, as in the NB201 supernet) as one
  ``batch_norm`` over the concatenated channels: per-channel statistics are unchanged;
* ``avg_pool_3x3(x_s)`` once (not once per edge), ``skip_connect`` is ``x_s`` itself, ``none`` is
  never computed (its term and its gradient are exactly zero, as in the plain cell);
* the weighted sum over ops and the sum over incoming edges as GEMMs: with the features of s stacked
  as ``F_s [G, B·C·H·W]`` (G = skip, pool and the 2k conv outputs) and the mixing matrix
  ``M_s [k, G]`` gathered once per forward from the op weights, the contributions of s to its k
  destinations are ``M_s @ F_s``; ``addmm`` adds them onto the partial sums of the later nodes, so a
  cell costs three GEMMs and no elementwise multiply or add.

Parameters: per source node one ``[k·C, C, 1, 1]`` and one ``[k·C, C, 3, 3]`` weight, the plain
cell's conv weights stacked in destination order (:func:`param_mapping` gives the correspondence;
:meth:`FusedNB201Network.from_plain` copies a plain supernet, so a fused search starts from exactly
the weights a plain search with the same seed starts from). Everything outside the cells (stem,
residual blocks, classifier) is the plain supernet's own modules.

Compositions the fused cell cannot serve are refused with a :class:`RecipeError` naming
``trainer.fused_cells``: another supernet class, ops other than NB201's five, a supernet modified by
a regulariser (extra per-edge terms or parameters), and relaxations that return an ``active`` mask
(GDAS's hard sampling: inactive ops add their bare weight, which the dense contraction cannot express).
"""

from __future__ import annotations

from typing import Any, Sequence

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from ..core.cells import SearchCell, searched_edges
from ..core.errors import RecipeError
from ..core.protocols import FusedSupernet, OpWeights

KEY = "recipe.trainer.fused_cells"
SUPPORTED_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
BN_EPS = 1e-5


def _refuse(msg: str, source: str | None = None) -> RecipeError:
    return RecipeError([(f"trainer.fused_cells: {msg}; set trainer.fused_cells: false to use the plain supernet", KEY)],
                       source)


# --------------------------------------------------------------------------- layout helpers


def _is_cl(x: torch.Tensor) -> bool:
    if x.dim() != 4 or x.is_contiguous():
        return False
    try:
        return x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # under torch.func.vmap (a population) only the default layout can be asked
        return False


def _phys(x: torch.Tensor, cl: bool) -> torch.Tensor:
    """The tensor in its memory order: ``[B, C, H, W]`` or, channels_last, ``[B, H, W, C]`` (no copy
    when the layout already matches)."""
    return x.permute(0, 2, 3, 1) if cl else x


def _unphys(x: torch.Tensor, cl: bool) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if cl else x


def _layout(x: torch.Tensor, cl: bool) -> torch.Tensor:
    """``x`` in the cell's layout (a no-op when it already is)."""
    return x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _groups(x: torch.Tensor, n: int, cl: bool) -> torch.Tensor:
    """``[B, n·C, H, W]`` → ``[n, *phys(B, C, H, W)]`` (a strided view, the concat copies once)."""
    p = _phys(x, cl)
    if cl:
        b, h, w, nc = p.shape
        return p.reshape(b, h, w, n, nc // n).permute(3, 0, 1, 2, 4)
    b, nc, h, w = p.shape
    return p.reshape(b, n, nc // n, h, w).transpose(0, 1)


# --------------------------------------------------------------------------- the fused cell


class FusedNB201Cell(nn.Module):
    """One NB201 search cell computed per source node (see the module docstring).

    :param graph: the NB201 cell graph (dense, one input node, output = the last node).
    :param ops: the candidate ops of every edge (a subset of NB201's five, in α-column order).
    :param C: channels (input = output).
    :param conv_mode: ``"auto"`` (embed on CUDA, split elsewhere), ``"embed"`` or ``"split"``.
    """

    def __init__(self, graph: nx.DiGraph, ops: Sequence[str], C: int, conv_mode: str = "auto"):
        super().__init__()
        self.ops, self.C, self.conv_mode = tuple(ops), C, conv_mode
        self.plan = mixing_plan(graph, self.ops)
        self.has_1x1 = "nor_conv_1x1" in self.ops
        self.has_3x3 = "nor_conv_3x3" in self.ops
        self.w1 = nn.ParameterList()
        self.w3 = nn.ParameterList()
        for src in self.plan["sources"]:
            k = len(src["dsts"])
            if self.has_1x1:
                self.w1.append(nn.Parameter(torch.empty(k * C, C, 1, 1)))
            if self.has_3x3:
                self.w3.append(nn.Parameter(torch.empty(k * C, C, 3, 3)))

    def extra_repr(self) -> str:
        return f"C={self.C}, ops={self.ops}, conv_mode={self.conv_mode!r}"

    def _conv_bn(self, x: torch.Tensor, i: int, k: int, cl: bool) -> list[torch.Tensor]:
        """The BN'd conv outputs of source ``i`` as ``[n, *phys]`` group tensors (1x1 groups first)."""
        r = torch.relu(x)
        embed = self.conv_mode == "embed" or (self.conv_mode == "auto" and x.device.type == "cuda")
        if self.has_1x1 and self.has_3x3 and embed:
            w = torch.cat([F.pad(self.w1[i], (1, 1, 1, 1)), self.w3[i]], 0)
            y = F.batch_norm(F.conv2d(r, w, padding=1), None, None, training=True, eps=BN_EPS)
            return [_groups(y, 2 * k, cl)]
        out = []
        if self.has_1x1:
            y = F.batch_norm(F.conv2d(r, self.w1[i]), None, None, training=True, eps=BN_EPS)
            out.append(_groups(y, k, cl))
        if self.has_3x3:
            y = F.batch_norm(F.conv2d(r, self.w3[i], padding=1), None, None, training=True, eps=BN_EPS)
            out.append(_groups(y, k, cl))
        return out

    def forward(self, x: torch.Tensor, mixing: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mixing[i]``: the ``[k_i, G_i]`` matrix of source ``i`` (:func:`mixing_matrices`)."""
        cl = _is_cl(x)
        if not cl and not x.is_contiguous():
            x = x.contiguous()
        acc: torch.Tensor | None = None  # rows: partial sums of the nodes after the current source
        node = x
        for i, src in enumerate(self.plan["sources"]):
            k = len(src["dsts"])
            feats: list[torch.Tensor] = []
            if src["skip"]:
                feats.append(_phys(node, cl).unsqueeze(0))
            if src["pool"]:
                p = F.avg_pool2d(node, 3, 1, 1, count_include_pad=False)
                feats.append(_phys(p, cl).unsqueeze(0))
            if self.has_1x1 or self.has_3x3:
                feats += self._conv_bn(node, i, k, cl)
            shape = feats[0].shape[1:]
            f = torch.cat(feats, 0) if len(feats) > 1 else feats[0].contiguous()
            f = f.view(f.shape[0], -1)
            m = mixing[i].to(f.dtype)
            acc = torch.mm(m, f) if acc is None else torch.addmm(acc[1:], m, f)
            node = _unphys(acc[0].view(shape), cl)
        return node


def mixing_plan(graph: nx.DiGraph, ops: Sequence[str]) -> dict[str, Any]:
    """Per source node: its destinations and edge rows, and the α column of every feature group."""
    edges = searched_edges(graph)
    inputs = sorted(n for n, d in graph.nodes(data=True) if d["role"] == "input")
    nodes = sorted(graph.nodes)
    col = {o: j for j, o in enumerate(ops)}
    sources = []
    for s in nodes[:-1]:
        dsts = sorted(v for (u, v) in edges if u == s)
        rows = [graph.edges[(s, d)]["index"] for d in dsts]
        k = len(dsts)
        groups: list[tuple[str, int | None]] = []  # (op, edge position or None for shared features)
        if "skip_connect" in col:
            groups.append(("skip_connect", None))
        if "avg_pool_3x3" in col:
            groups.append(("avg_pool_3x3", None))
        for conv in ("nor_conv_1x1", "nor_conv_3x3"):
            if conv in col:
                groups += [(conv, j) for j in range(k)]
        # index into weights.flatten() (+1 sentinel slot holding zero)
        num_cols = len(ops)
        sentinel = len(edges) * num_cols
        index = [[(rows[i] * num_cols + col[op]) if (j is None or j == i) else sentinel for (op, j) in groups]
                 for i in range(k)]
        sources.append({"node": s, "dsts": dsts, "rows": rows, "groups": groups, "index": index,
                        "skip": "skip_connect" in col, "pool": "avg_pool_3x3" in col})
    return {"sources": sources, "inputs": inputs, "num_edges": len(edges), "num_ops": len(ops)}


def mixing_matrices(weights: torch.Tensor, index: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """``[k_i, G_i]`` mixing matrices of every source from op weights ``[E, O]`` in one gather."""
    flat = torch.cat([weights.reshape(-1), weights.new_zeros(1)])
    allm = flat[index]
    out, at = [], 0
    for k, g in sizes:
        out.append(allm[at: at + k * g].view(k, g))
        at += k * g
    return out


# --------------------------------------------------------------------------- the network


class FusedNB201Network(FusedSupernet):
    """The NB201 supernet with :class:`FusedNB201Cell` cells; same ``forward(x, op_weights)``
    (what :meth:`NB201Space.fused_supernet <diffnas.plugins.search_spaces.nb201.NB201Space.fused_supernet>`
    returns)."""

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], lastact: nn.Module, pool: nn.Module,
                 classifier: nn.Module, graph: nx.DiGraph):
        super().__init__()
        self.graph = graph
        self.stem, self.layers, self.lastact, self.pool, self.classifier = stem, nn.ModuleList(layers), lastact, pool, classifier
        cell = next(m for m in self.layers if isinstance(m, FusedNB201Cell))
        plan = cell.plan
        flat = [i for src in plan["sources"] for row in src["index"] for i in row]
        self.register_buffer("mix_index", torch.tensor(flat, dtype=torch.long), persistent=False)
        self.mix_sizes = [(len(src["dsts"]), len(src["groups"])) for src in plan["sources"]]

    @classmethod
    def from_plain(cls, net: nn.Module, conv_mode: str = "auto") -> "FusedNB201Network":
        """A fused copy of a plain :class:`~diffnas.plugins.search_spaces.nb201.NB201Network` (its
        non-cell modules are shared, its cells' conv weights copied)."""
        check_plain_supernet(net)
        layers: list[nn.Module] = []
        for layer in net.layers:
            if isinstance(layer, SearchCell):
                ops = layer.graph.edges[layer.edges[0]]["ops"]
                c = _cell_channels(layer)
                ref = next(layer.parameters())
                fused = FusedNB201Cell(layer.graph, ops, c, conv_mode).to(device=ref.device, dtype=ref.dtype)
                with torch.no_grad():
                    for name, p in fused.named_parameters():
                        p.copy_(torch.cat([layer.get_parameter(q).detach() for q, _ in _sources_of(fused, name)]))
                layers.append(fused)
            else:
                layers.append(layer)
        return cls(net.stem, layers, net.lastact, net.pool, net.classifier, net.graph)

    def param_mapping(self, plain: nn.Module) -> list[tuple[str, str, slice | None]]:
        return param_mapping(plain, self)

    def plain_state_dict(self, plain: nn.Module) -> dict[str, torch.Tensor]:
        return plain_state_from_fused(plain, self)

    def mixing(self, weights: torch.Tensor) -> list[torch.Tensor]:
        m = mixing_matrices(weights, self.mix_index, self.mix_sizes)
        dev = weights.device.type
        if torch.is_autocast_enabled(dev):  # cast once per forward, not once per cell
            dt = torch.get_autocast_dtype(dev)
            m = [t.to(dt) for t in m]
        return m

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights]) -> torch.Tensor:
        ow = op_weights["normal"]
        if ow.active is not None:
            raise _refuse("the relaxation returned an 'active' mask (hard sampling, e.g. GDAS's gumbel): inactive "
                          "ops add their bare weight, which the fused contraction does not compute")
        if getattr(ow, "node_weights", None) is not None:
            raise _refuse("op weights with node_weights are not supported")
        mix = self.mixing(ow.weights)
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x, mix) if isinstance(layer, FusedNB201Cell) else layer(x)
        x = self.pool(self.lastact(x)).flatten(1)
        return self.classifier(x)


# --------------------------------------------------------------------------- plain ↔ fused


def _cell_channels(cell: SearchCell) -> int:
    for edge in cell.mixed:
        for m in edge:
            for p in m.parameters():
                return int(p.shape[0])
    raise ValueError("cell without conv weights")  # pragma: no cover - guarded by check_plain_supernet


def _sources_of(fused: FusedNB201Cell, fused_name: str) -> list[tuple[str, slice]]:
    """The plain parameter names (and the row slice of the fused tensor) that make up ``fused_name``."""
    kind, i = fused_name.split(".")
    op = "nor_conv_1x1" if kind == "w1" else "nor_conv_3x3"
    o = fused.ops.index(op)
    src = fused.plan["sources"][int(i)]
    C = fused.C
    return [(f"mixed.{row}.{o}.1.weight", slice(j * C, (j + 1) * C)) for j, row in enumerate(src["rows"])]


def param_mapping(plain: nn.Module, fused: FusedNB201Network) -> list[tuple[str, str, slice | None]]:
    """``(plain name, fused name, rows of the fused tensor or None for the whole tensor)`` for every
    parameter of the two supernets."""
    out: list[tuple[str, str, slice | None]] = []
    for li, (pl, fl) in enumerate(zip(plain.layers, fused.layers)):
        if isinstance(fl, FusedNB201Cell):
            for name, _ in fl.named_parameters():
                for pname, sl in _sources_of(fl, name):
                    out.append((f"layers.{li}.{pname}", f"layers.{li}.{name}", sl))
    return with_shared_parameters(out, plain, fused)


def with_shared_parameters(cell_mapping: list[tuple[str, str, slice | None]], plain: nn.Module,
                           fused: nn.Module) -> list[tuple[str, str, slice | None]]:
    """``cell_mapping`` plus every plain parameter outside the fused cells (stem, preprocessing,
    classifier: the same module under the same name in both supernets)."""
    fused_names = dict(fused.named_parameters())
    cell_plain = {p for p, _, _ in cell_mapping}
    out = list(cell_mapping)
    for name, _ in plain.named_parameters():
        if name not in cell_plain:
            assert name in fused_names, name
            out.append((name, name, None))
    return out


def plain_state_from_fused(plain: nn.Module, fused: FusedNB201Network) -> dict[str, torch.Tensor]:
    """The fused supernet's weights as a state dict of the plain supernet (for checkpoints, retraining)."""
    fp = dict(fused.named_parameters())
    state = dict(plain.state_dict())
    for pname, fname, sl in param_mapping(plain, fused):
        t = fp[fname].detach()
        state[pname] = (t if sl is None else t[sl]).clone()
    return state


def check_plain_supernet(net: nn.Module, source: str | None = None) -> None:
    """Refuse (RecipeError naming trainer.fused_cells) a supernet the fused cell cannot reproduce."""
    from ..plugins.search_spaces.nb201 import NB201Network
    from ..plugins.search_spaces.ops import Pooling, ReLUConvBN, Zero

    if type(net) is not NB201Network:
        raise _refuse(f"the supernet is a {type(net).__name__}; FusedNB201Network serves the nb201 search space's NB201Network", source)
    cells = [m for m in net.layers if isinstance(m, SearchCell)]
    if not cells:
        raise _refuse("the supernet has no search cell", source)
    for cell in cells:
        if len(getattr(cell, "edge_terms", ())) or any(n not in ("mixed", "edge_terms") for n, _ in cell.named_children()):
            raise _refuse("a regulariser or plugin added per-edge modules to the search cells (e.g. DARTS-'s auxiliary "
                          "skip); the fused cell computes the five NB201 ops only", source)
        g = cell.graph
        inputs = [n for n, d in g.nodes(data=True) if d["role"] == "input"]
        n = g.number_of_nodes()
        if len(inputs) != 1 or list(cell.concat) != [n - 1] or g.number_of_edges() != n * (n - 1) // 2:
            raise _refuse("the fused cell needs a dense NB201-style cell (one input node, output = last node)", source)
        ops = tuple(g.edges[cell.edges[0]]["ops"])
        unknown = [o for o in ops if o not in SUPPORTED_OPS]
        if unknown:
            raise _refuse(f"op(s) {unknown} have no fused implementation (supported: {', '.join(SUPPORTED_OPS)})", source)
        if not any(o != "none" for o in ops):
            raise _refuse("the op list has no op other than 'none'", source)
        if any(tuple(g.edges[e]["ops"]) != ops for e in cell.edges):
            raise _refuse("edges with different op lists are not supported", source)
        for edge in cell.mixed:
            for op, m in zip(ops, edge):
                ok = {"none": lambda m: isinstance(m, Zero) and m.stride == 1,
                      "skip_connect": lambda m: type(m) is nn.Identity,
                      "avg_pool_3x3": lambda m: (type(m) is Pooling and m.pre is None and m.post is None
                                                 and isinstance(m.pool, nn.AvgPool2d) and m.pool.stride in (1, (1, 1))),
                      }.get(op)
                if ok is None:  # the convs: ReLU → Conv (stride 1, no bias) → BN(affine=False, no running stats)
                    k = 1 if op == "nor_conv_1x1" else 3
                    good = (type(m) is ReLUConvBN and m[1].kernel_size == (k, k) and m[1].stride == (1, 1)
                            and m[1].bias is None and m[1].in_channels == m[1].out_channels
                            and not m[2].affine and not m[2].track_running_stats and m[2].eps == BN_EPS)
                else:
                    good = ok(m)
                if not good:
                    raise _refuse(f"edge op {op!r} was built as {type(m).__name__} in a form the fused cell does not "
                                  f"reproduce (stride, affine BN or running statistics)", source)
