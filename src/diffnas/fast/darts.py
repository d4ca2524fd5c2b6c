"""A fused DARTS-space supernet: the same mathematics as :class:`DartsSupernet` in fewer, larger kernels.

Switched on by ``trainer.fused_cells: true`` (default false; the ``darts`` search space returns it
from :meth:`~diffnas.core.protocols.SearchSpace.fused_supernet`). In the plain supernet each of the 14 edges of a cell
runs its candidate ops one by one: per edge two pools and their BNs, two separable convolutions of
eight kernels each (ReLU, depthwise, pointwise, BN, twice), two dilated convolutions of four kernels,
one ``op(x)·w`` product per op and one add per term, roughly 50 ATen ops per edge before the
backward pass. The fused cell works per *source block* instead: the two input nodes 0 and 1 together
(both are known when the cell starts, and in a reduction cell both have the stride-2 edges), then
each intermediate node s, for all k edges leaving the block at once (S = 2 or 1 sources):

* the two preprocessed inputs are concatenated once (``[B, 2C, H, W]``), so every per-channel op
  below (ReLU, pools, depthwise convolutions, batch norms) treats both sources in one kernel;
* ``relu(x)`` once, shared by the conv ops of all edges and by the stride-2 skip (FactorizedReduce);
* the first depthwise convolution of each conv op type (sep 3x3, sep 5x5, dil 3x3 d2, dil 5x5 d2) for
  all k edges as ONE depthwise convolution with channel multiplier k (weight ``[S·C·k, 1, K, K]``,
  ``groups=S·C``: output channel ``(s·C + c)·k + j`` is edge j's channel c; the parameter is stored
  in that order, so no per-step weight shuffling); the four outputs are reordered to edge-op-major
  channels ``(type, s, j, c)`` by the one ``cat`` that joins them (it reads transposed views);
* the pointwise 1x1 convolutions of all these edge-ops as one grouped 1x1 convolution
  (``groups = types·S·k``) and their BNs (affine=False, batch statistics) as one ``batch_norm`` over
  the concatenated channels (per-channel statistics, running statistics included, are unchanged);
  that finishes the dilated convs; the separable convs' second half (ReLU, depthwise, pointwise)
  runs the same way on their slice (one ReLU and one depthwise conv per kernel size, one grouped
  pointwise conv);
* ``max_pool_3x3`` and ``avg_pool_3x3`` (``count_include_pad=False``) once per block instead of once
  per edge: every edge leaving s pools the same input, and with affine=False the k per-edge BNs give
  identical outputs and identical running statistics, so one BN channel block stands for k plain BNs;
* ``skip_connect`` is ``x_s`` itself at stride 1; at stride 2 it is each edge's FactorizedReduce
  (two 1x1 stride-2 convs on offset grids, concat, BN): the k edges' convs run as one conv per grid
  (``groups=S``) on the shared ReLU;
* the BNs that follow the pools, the separable convs' second half and the FactorizedReduce are one
  ``batch_norm`` over one concatenation; ``none`` is never computed (as in the plain cell);
* the weighted sum over ops and over incoming edges as one GEMM per block: with the block's features
  stacked as ``F [G, B·C·H·W]`` (one ``cat``) and the mixing matrix ``M [k, G]`` gathered once per
  forward from the op weights, the contributions to the k destinations are ``M @ F``; ``addmm`` adds
  them onto the later nodes' partial sums, so node d is complete when its last source is done.

Stride-2 edges (reduction cells, block 0) run the same kernels with stride 2. Measured with
``benchmarks/count_ops.py --space darts`` (C=16, 8 cells, batch 64, CPU): a DARTS-V1 search step
dispatches 5,318 non-view ATen ops fused against 31,587 plain (43,414 for xautodl's 9-cell
``NASNetworkDARTS``); 1,435 of the 5,318 are the CPU optimisers' per-parameter loops.

Tried and left out: zero-padding the 3x3 depthwise kernels into the 5x5 ones of the same dilation
(half the depthwise convolutions) saved only about 3.5% of a step's ops, because the padded weights
cost a ``pad`` and a ``cat`` forward and copies backward, for 2.8x the FLOPs of those convolutions.
Costs: ``F`` is a copy of the block's features (as in the NB201 fused cell), so the fused supernet
holds more activation memory than the plain one (not measured on a GPU); the reorder to edge-major
channels is a real copy forward and backward.

Parameters (:func:`param_mapping` gives the correspondence, :meth:`FusedDartsNetwork.from_plain`
copies a plain supernet, so a fused search starts from exactly the weights of a plain search with
the same seed; :func:`plain_state_from_fused` goes back, running statistics included). Per block:
``dw_<op>`` (first depthwise weights, multiplier layout), ``pw`` (stage-1 pointwise weights of all
conv ops, rows ``(type, s, j, c_out)``), ``dw2_<op>`` and ``pw2`` (the separable convs' second half),
``fr1``/``fr2`` (stride-2 skips). Everything outside the searched DAG (stem, ``preprocess0/1``,
classifier) is the plain supernet's own modules. BN running statistics are kept when the plain
supernet tracks them (the DARTS default, ``track_running_stats: true``): one buffer per fused BN,
updated by the same ``batch_norm`` call; ``num_batches_tracked`` is not kept per edge (the plain
cell's BNs all count the cell's forward passes, which its ``preprocess1`` BN counts too).

Compositions the fused cell cannot serve are refused with a :class:`RecipeError` naming
``trainer.fused_cells``: the ``noise`` op (RobustDARTS S4; its output is fresh random numbers, not a
function the fused kernels compute), per-edge op lists (RobustDARTS S1, ``edge_ops``), a supernet
modified by a regulariser (extra per-edge terms or parameters, e.g. ``darts_minus_skip``), BN momentum
``None`` (a cumulative average over ``num_batches_tracked``), and relaxations that return an
``active`` mask (GDAS; refused for every space in :mod:`diffnas.core.fast_paths`).
"""

from __future__ import annotations

from typing import Any, Sequence

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from ..core.cells import SearchCell, searched_edges
from ..core.protocols import FusedSupernet, OpWeights
from .nb201 import BN_EPS, _groups, _is_cl, _layout, _phys, _refuse, _unphys, with_shared_parameters

#: The DARTS ops the fused cell computes (``noise`` is refused), in ``quark0/darts`` PRIMITIVES order.
SUPPORTED_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                 "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
POOL_OPS = ("max_pool_3x3", "avg_pool_3x3")
SEP_OPS = ("sep_conv_3x3", "sep_conv_5x5")
DIL_OPS = ("dil_conv_3x3", "dil_conv_5x5")
CONV_OPS = SEP_OPS + DIL_OPS  # stage-1 order: separable first, then dilated
#: (kernel size, dilation) of each conv op's depthwise convolutions; padding = dilation·(K−1)/2
KERNEL = {"sep_conv_3x3": (3, 1), "sep_conv_5x5": (5, 1), "dil_conv_3x3": (3, 2), "dil_conv_5x5": (5, 2)}
CELL_TYPES = ("normal", "reduce")

Feature = tuple[str, int, "int | None"]  # (op, source position in the block, edge position or None if shared)


# --------------------------------------------------------------------------- the plan


def block_plans(graph: nx.DiGraph, ops: Sequence[str]) -> list[dict[str, Any]]:
    """Per source block (inputs 0 and 1 together, then each intermediate node): sources,
    destinations, stride, the feature groups of ``F`` in row order and the flat index of every
    mixing-matrix entry into ``weights.flatten()`` (the sentinel index ``E·O`` reads a zero)."""
    n = graph.number_of_nodes()
    steps = n - 2
    red = bool(graph.graph.get("reduction"))
    present = set(ops) - {"none"}
    col = {o: j for j, o in enumerate(ops)}
    num_ops = len(ops)
    sentinel = len(searched_edges(graph)) * num_ops
    seps = [t for t in SEP_OPS if t in present]
    dils = [t for t in DIL_OPS if t in present]
    skip = "skip_connect" in present
    plans = []
    for b in range(steps):
        srcs = [0, 1] if b == 0 else [b + 1]
        dsts = list(range(b + 2, n))
        S, k = len(srcs), len(dsts)
        stride = 2 if (red and b == 0) else 1
        feats: list[Feature] = []
        if skip and stride == 1:
            feats += [("skip_connect", s, None) for s in range(S)]
        post: list[Feature] = []
        for p in POOL_OPS:
            if p in present:
                post += [(p, s, None) for s in range(S)]
        for t in seps:
            post += [(t, s, j) for s in range(S) for j in range(k)]
        if skip and stride == 2:
            post += [("skip_connect", s, j) for s in range(S) for j in range(k)]
        feats += post
        for t in dils:
            feats += [(t, s, j) for s in range(S) for j in range(k)]
        rows = {(s, j): graph.edges[(srcs[s], dsts[j])]["index"] for s in range(S) for j in range(k)}
        index = [[rows[(s, i)] * num_ops + col[op] if (j is None or j == i) else sentinel for (op, s, j) in feats]
                 for i in range(k)]
        plans.append({"srcs": srcs, "dsts": dsts, "S": S, "k": k, "stride": stride, "feats": feats,
                      "post": post, "seps": seps, "dils": dils, "convs": seps + dils,
                      "pools": [p for p in POOL_OPS if p in present], "skip": skip, "rows": rows,
                      "index": index})
    return plans


# --------------------------------------------------------------------------- layout helpers


def _multiplier_to_edge_major(d: torch.Tensor, S: int, C: int, k: int, cl: bool) -> torch.Tensor:
    """A strided view of a depthwise-with-multiplier output (channel ``(s·C + c)·k + j``) in the
    order ``(s, j, c)``, shaped for the stage-1 ``cat``: ``[B, S, k, C, H·W]`` or, channels_last,
    ``[B, H, W, S, k, C]``."""
    p = _phys(d, cl)
    if cl:
        b, h, w, _ = p.shape
        return p.reshape(b, h, w, S, C, k).transpose(4, 5)
    b, _, h, w = p.shape
    return p.reshape(b, S, C, k, h * w).transpose(2, 3)


def _cat_edge_major(parts: Sequence[torch.Tensor], cl: bool, hw: tuple[int, int]) -> torch.Tensor:
    """Concatenate :func:`_multiplier_to_edge_major` views into ``[B, Σ·C, H, W]`` (one copy)."""
    h, w = hw
    if cl:
        y = torch.cat(list(parts), 3)
        b = y.shape[0]
        return _unphys(y.view(b, h, w, -1), cl)
    y = torch.cat(list(parts), 1)
    b = y.shape[0]
    return y.view(b, -1, h, w)


def _interleave_halves(c1: torch.Tensor, c2: torch.Tensor, n: int, cl: bool) -> torch.Tensor:
    """FactorizedReduce outputs: ``c1``/``c2`` hold ``n`` edges' halves (``[B, n·C/2, H, W]`` each);
    the result holds each edge's ``[c1 half, c2 half]`` in turn (``[B, n·C, H, W]``)."""
    p1, p2 = _phys(c1, cl), _phys(c2, cl)
    if cl:
        b, h, w, nc = p1.shape
        y = torch.cat([p1.reshape(b, h, w, n, 1, nc // n), p2.reshape(b, h, w, n, 1, nc // n)], 4)
        return _unphys(y.view(b, h, w, 2 * nc), cl)
    b, nc, h, w = p1.shape
    y = torch.cat([p1.reshape(b, n, 1, -1), p2.reshape(b, n, 1, -1)], 2)
    return y.view(b, 2 * nc, h, w)


# --------------------------------------------------------------------------- the fused cell


class FusedDartsBlock(nn.Module):
    """The weights and BN running statistics of one source block (see the module docstring)."""

    def __init__(self, plan: dict[str, Any], C: int, track: bool, momentum: float):
        super().__init__()
        self.plan, self.C, self.track, self.momentum = plan, C, track, momentum
        S, k = plan["S"], plan["k"]
        for t in plan["convs"]:
            K, _ = KERNEL[t]
            self.register_parameter(f"dw_{t}", nn.Parameter(torch.empty(S * C * k, 1, K, K)))
        if plan["convs"]:
            self.pw = nn.Parameter(torch.empty(len(plan["convs"]) * S * k * C, C, 1, 1))
        for t in plan["seps"]:
            K, _ = KERNEL[t]
            self.register_parameter(f"dw2_{t}", nn.Parameter(torch.empty(S * k * C, 1, K, K)))
        if plan["seps"]:
            self.pw2 = nn.Parameter(torch.empty(len(plan["seps"]) * S * k * C, C, 1, 1))
        self.fr = plan["skip"] and plan["stride"] == 2
        if self.fr:
            self.fr1 = nn.Parameter(torch.empty(S * k * C // 2, C, 1, 1))
            self.fr2 = nn.Parameter(torch.empty(S * k * C // 2, C, 1, 1))
        self.n1 = len(plan["convs"]) * S * k  # stage-1 BN groups
        self.npost = len(plan["post"])  # post BN groups (pools, separable stage 2, stride-2 skips)
        for name, groups in (("bn1", self.n1), ("bnp", self.npost)):
            if track and groups:
                self.register_buffer(f"{name}_mean", torch.zeros(groups * C))
                self.register_buffer(f"{name}_var", torch.ones(groups * C))

    def extra_repr(self) -> str:
        p = self.plan
        return f"srcs={p['srcs']}, dsts={p['dsts']}, stride={p['stride']}, C={self.C}, track={self.track}"

    def _bn(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if self.track:
            mean, var = getattr(self, f"{name}_mean"), getattr(self, f"{name}_var")
            return F.batch_norm(x, mean, var, training=self.training, momentum=self.momentum, eps=BN_EPS)
        return F.batch_norm(x, None, None, training=True, momentum=self.momentum, eps=BN_EPS)

    def features(self, x: torch.Tensor, cl: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``(F [G, N], the physical shape of one node)`` of the block's input ``x`` (``[B, S·C, H, W]``)."""
        p, C = self.plan, self.C
        S, k, st = p["S"], p["k"], p["stride"]
        parts: list[tuple[torch.Tensor, int]] = []  # (tensor [B, n·C, H', W'], n) in F row order
        if p["skip"] and st == 1:
            parts.append((x, S))
        post_in: list[torch.Tensor] = []
        if "max_pool_3x3" in p["pools"]:
            post_in.append(F.max_pool2d(x, 3, st, 1))
        if "avg_pool_3x3" in p["pools"]:
            post_in.append(F.avg_pool2d(x, 3, st, 1, count_include_pad=False))
        q = None
        if p["convs"] or self.fr:
            r = torch.relu(x)
        if p["convs"]:
            views = []
            for t in p["convs"]:
                K, dil = KERNEL[t]
                d = F.conv2d(r, getattr(self, f"dw_{t}"), stride=st, padding=dil * (K - 1) // 2, dilation=dil,
                             groups=S * C)
                views.append(_multiplier_to_edge_major(d, S, C, k, cl))
            y = _cat_edge_major(views, cl, tuple(d.shape[-2:]))
            q = self._bn(F.conv2d(y, self.pw, groups=self.n1), "bn1")
            n = S * k * C
            sizes = [n] * len(p["seps"]) + ([len(p["dils"]) * n] if p["dils"] else [])
            # one split, not one slice per use: its backward is one cat, not a zero-filled copy per slice
            qs = q.split(sizes, 1) if len(sizes) > 1 else (q,)
            if p["seps"]:
                outs = []
                for i, t in enumerate(p["seps"]):
                    K, _ = KERNEL[t]
                    outs.append(F.conv2d(torch.relu(qs[i]), getattr(self, f"dw2_{t}"), padding=(K - 1) // 2, groups=n))
                u = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
                post_in.append(F.conv2d(u, self.pw2, groups=len(p["seps"]) * S * k))
        if self.fr:
            c1 = F.conv2d(r, self.fr1, stride=2, groups=S)
            c2 = F.conv2d(F.pad(r[:, :, 1:, 1:], (0, 1, 0, 1)), self.fr2, stride=2, groups=S)
            post_in.append(_interleave_halves(c1, c2, S * k, cl))
        if post_in:
            post = torch.cat(post_in, 1) if len(post_in) > 1 else post_in[0]
            parts.append((self._bn(post, "bnp"), self.npost))
        if p["dils"]:
            parts.append((qs[-1], len(p["dils"]) * S * k))
        groups = [_groups(t, n, cl) for t, n in parts]
        f = torch.cat(groups, 0) if len(groups) > 1 else groups[0].contiguous()
        return f.view(f.shape[0], -1), tuple(f.shape[1:])


class FusedDartsCell(nn.Module):
    """One DARTS search cell (preprocessing + the searched DAG) computed per source block.

    :param graph: the cell graph (two input nodes, dense, output = concat of the intermediate nodes).
    :param ops: the candidate ops of every edge (a subset of the eight DARTS ops, in α-column order).
    :param C: channels of the cell's nodes.
    :param preprocess0, preprocess1: the plain cell's preprocessing modules (shared, not copied).
    :param track: BN running statistics (as the plain cell's BNs); ``momentum`` their momentum.
    """

    def __init__(self, graph: nx.DiGraph, ops: Sequence[str], C: int, preprocess0: nn.Module, preprocess1: nn.Module,
                 track: bool = True, momentum: float = 0.1):
        super().__init__()
        self.graph, self.ops, self.C = graph, tuple(ops), C
        self.reduction = bool(graph.graph["reduction"])
        self.cell_type = "reduce" if self.reduction else "normal"
        self.multiplier = len(graph.graph["concat"])
        self.preprocess0, self.preprocess1 = preprocess0, preprocess1
        self.plans = block_plans(graph, self.ops)
        self.blocks = nn.ModuleList(FusedDartsBlock(p, C, track, momentum) for p in self.plans)

    def extra_repr(self) -> str:
        return f"{self.cell_type}, C={self.C}, ops={self.ops}"

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, mixing: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mixing[b]``: the ``[k_b, G_b]`` mixing matrix of block ``b`` (:meth:`FusedDartsNetwork.mixing`)."""
        x0, x1 = self.preprocess0(s0), self.preprocess1(s1)
        cl = _is_cl(x1)
        x = _layout(torch.cat([x0, x1], 1), cl)
        rest: torch.Tensor | None = None  # rows: partial sums of the nodes after the completed ones
        nodes = []
        for block, m in zip(self.blocks, mixing):
            f, shape = block.features(x, cl)
            m = m.to(f.dtype)
            acc = torch.mm(m, f) if rest is None else torch.addmm(rest, m, f)
            if acc.shape[0] > 1:  # split (not two slices): its backward is one cat
                first, rest = acc.split([1, acc.shape[0] - 1])
            else:
                first = acc
            x = _unphys(first.view(shape), cl)
            nodes.append(x)
        return torch.cat(nodes, 1)


# --------------------------------------------------------------------------- the network


class FusedDartsNetwork(FusedSupernet):
    """The DARTS supernet with :class:`FusedDartsCell` cells; same ``forward(x, op_weights)``."""

    def __init__(self, stem: nn.Module, cells: Sequence[FusedDartsCell], global_pooling: nn.Module,
                 classifier: nn.Module, reduction_layers: Sequence[int]):
        super().__init__()
        self.stem, self.cells = stem, nn.ModuleList(cells)
        self.global_pooling, self.classifier = global_pooling, classifier
        self.reduction_layers = tuple(reduction_layers)
        self.mix_sizes: dict[str, list[tuple[int, int]]] = {}
        for name in CELL_TYPES:
            cell = next((c for c in self.cells if c.cell_type == name), None)
            if cell is None:
                continue
            flat = [i for p in cell.plans for row in p["index"] for i in row]
            self.register_buffer(f"mix_index_{name}", torch.tensor(flat, dtype=torch.long), persistent=False)
            self.mix_sizes[name] = [(p["k"], len(p["feats"])) for p in cell.plans]

    @classmethod
    def from_plain(cls, net: nn.Module) -> "FusedDartsNetwork":
        """A fused copy of a plain :class:`~diffnas.plugins.search_spaces.darts.DartsSupernet` (stem,
        preprocessing and classifier are shared; the searched DAGs' weights and BN running statistics
        are copied)."""
        track, momentum = check_plain_supernet(net)
        cells = []
        for pc in net.cells:
            sc: SearchCell = pc.cell
            ops = sc.graph.edges[sc.edges[0]]["ops"]
            ref = next(pc.parameters())
            fc = FusedDartsCell(sc.graph, ops, _cell_channels(pc), pc.preprocess0, pc.preprocess1, track, momentum)
            fc.to(device=ref.device, dtype=ref.dtype)
            plain_state = pc.state_dict()
            with torch.no_grad():
                for name, t in list(fc.named_parameters()) + list(fc.named_buffers()):
                    srcs = _cell_sources(fc, name)
                    if srcs is None:
                        continue
                    for pname, sl in srcs:
                        t[sl].copy_(plain_state[pname])
                    # a pooled BN channel block stands for k plain BNs: they must agree
                    for pname, sl in srcs:
                        if not torch.equal(t[sl], plain_state[pname].to(t.dtype)):
                            raise _refuse(f"the plain supernet's pooling BNs of one source node hold different running "
                                          f"statistics ({pname}); the fused cell keeps one per source node")
            cells.append(fc)
        return cls(net.stem, cells, net.global_pooling, net.classifier, net.reduction_layers)

    def param_mapping(self, plain: nn.Module) -> list[tuple[str, str, slice | None]]:
        return param_mapping(plain, self)

    def plain_state_dict(self, plain: nn.Module) -> dict[str, torch.Tensor]:
        """Weights and BN running statistics in the plain layout (:func:`plain_state_from_fused`)."""
        return plain_state_from_fused(plain, self)

    def mixing(self, name: str, weights: torch.Tensor) -> list[torch.Tensor]:
        """``[k_b, G_b]`` mixing matrices of every block of cell type ``name`` from op weights ``[E, O]``
        in one gather (cast once to the autocast dtype)."""
        flat = torch.cat([weights.reshape(-1), weights.new_zeros(1)])
        allm = flat[getattr(self, f"mix_index_{name}")]
        dev = weights.device.type
        if torch.is_autocast_enabled(dev):
            allm = allm.to(torch.get_autocast_dtype(dev))
        sizes = self.mix_sizes[name]
        parts = allm.split([k * g for k, g in sizes]) if len(sizes) > 1 else (allm,)  # backward: one cat
        return [t.view(k, g) for t, (k, g) in zip(parts, sizes)]

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights]) -> torch.Tensor:
        mix = {}
        for name in self.mix_sizes:
            ow = op_weights[name]
            if ow.active is not None:
                raise _refuse("the relaxation returned an 'active' mask (hard sampling, e.g. GDAS's gumbel): inactive "
                              "ops add their bare weight, which the fused contraction does not compute")
            if getattr(ow, "node_weights", None) is not None:
                raise _refuse("op weights with node_weights are not supported")
            mix[name] = self.mixing(name, ow.weights)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, mix[cell.cell_type])
        return self.classifier(self.global_pooling(s1).flatten(1))


# --------------------------------------------------------------------------- plain ↔ fused


def _cell_channels(cell: nn.Module) -> int:
    """The channels of a plain DARTS cell's nodes (its preprocess1 conv's output channels)."""
    return int(cell.preprocess1[1].out_channels)


def _op_prefix(plan: dict[str, Any], ops: Sequence[str], op: str, s: int, j: int) -> str:
    return f"cell.mixed.{plan['rows'][(s, j)]}.{ops.index(op)}"


def _cell_sources(fc: FusedDartsCell, name: str) -> list[tuple[str, Any]] | None:
    """The plain cell's state names (relative to the ``DartsCell``) that make up fused tensor ``name``
    (relative to the :class:`FusedDartsCell`), each with the part (a slice, or a strided slice for
    the multiplier layout) of the fused tensor's first dimension it occupies; ``None`` for the
    tensors that are the plain modules themselves (preprocessing)."""
    if not name.startswith("blocks."):
        return None
    _, b, local = name.split(".", 2)
    plan = fc.plans[int(b)]
    C, S, k, ops = fc.C, plan["S"], plan["k"], fc.ops
    edges = [(s, j) for s in range(S) for j in range(k)]
    out: list[tuple[str, Any]] = []
    if local.startswith("dw_"):  # multiplier layout: row (s·C + c)·k + j
        t = local[3:]
        stage = "0.1" if t in SEP_OPS else "1"
        return [(f"{_op_prefix(plan, ops, t, s, j)}.{stage}.weight", slice(s * C * k + j, (s + 1) * C * k, k))
                for s, j in edges]
    if local == "pw":
        for ti, t in enumerate(plan["convs"]):
            stage = "0.2" if t in SEP_OPS else "2"
            out += [(f"{_op_prefix(plan, ops, t, s, j)}.{stage}.weight", _rows(((ti * S + s) * k + j) * C, C))
                    for s, j in edges]
        return out
    if local.startswith("dw2_"):
        t = local[4:]
        return [(f"{_op_prefix(plan, ops, t, s, j)}.1.1.weight", _rows((s * k + j) * C, C)) for s, j in edges]
    if local == "pw2":
        for ti, t in enumerate(plan["seps"]):
            out += [(f"{_op_prefix(plan, ops, t, s, j)}.1.2.weight", _rows(((ti * S + s) * k + j) * C, C))
                    for s, j in edges]
        return out
    if local in ("fr1", "fr2"):
        conv = "conv_1" if local == "fr1" else "conv_2"
        h = C // 2
        return [(f"{_op_prefix(plan, ops, 'skip_connect', s, j)}.{conv}.weight", _rows((s * k + j) * h, h))
                for s, j in edges]
    if local.startswith(("bn1_", "bnp_")):
        stat = "running_mean" if local.endswith("_mean") else "running_var"
        if local.startswith("bn1_"):
            for ti, t in enumerate(plan["convs"]):
                bn = "0.3" if t in SEP_OPS else "3"
                out += [(f"{_op_prefix(plan, ops, t, s, j)}.{bn}.{stat}", _rows(((ti * S + s) * k + j) * C, C))
                        for s, j in edges]
            return out
        for g, (op, s, j) in enumerate(plan["post"]):
            bn = {"max_pool_3x3": "post", "avg_pool_3x3": "post", "skip_connect": "bn"}.get(op, "1.3")
            for jj in (range(k) if j is None else [j]):  # a pooled group stands for all k edges' BNs
                out.append((f"{_op_prefix(plan, ops, op, s, jj)}.{bn}.{stat}", _rows(g * C, C)))
        return out
    raise KeyError(name)  # pragma: no cover - every fused tensor is listed above


def _rows(start: int, n: int) -> slice:
    return slice(start, start + n)


def param_mapping(plain: nn.Module, fused: FusedDartsNetwork) -> list[tuple[str, str, slice | None]]:
    """``(plain name, fused name, part of the fused tensor's first dimension or None for the whole
    tensor)`` for every parameter of the two supernets (``fused_tensor[part]`` has the plain shape)."""
    out: list[tuple[str, str, slice | None]] = []
    for i, fc in enumerate(fused.cells):
        for name, _ in fc.named_parameters():
            for pname, sl in _cell_sources(fc, name) or ():
                out.append((f"cells.{i}.{pname}", f"cells.{i}.{name}", sl))
    return with_shared_parameters(out, plain, fused)


def plain_state_from_fused(plain: nn.Module, fused: FusedDartsNetwork) -> dict[str, torch.Tensor]:
    """The fused supernet's weights and BN statistics as a state dict of the plain supernet (for
    checkpoints, retraining, comparisons)."""
    state = dict(plain.state_dict())
    fstate = dict(fused.state_dict())
    for name, v in fstate.items():  # stem, preprocessing, classifier: the same modules, the same names
        if name in state:
            state[name] = v.clone()
    for i, fc in enumerate(fused.cells):
        for name, t in list(fc.named_parameters()) + list(fc.named_buffers()):
            for pname, sl in _cell_sources(fc, name) or ():
                state[f"cells.{i}.{pname}"] = t.detach()[sl].clone()
        counted = fstate.get(f"cells.{i}.preprocess1.2.num_batches_tracked")
        if counted is not None:  # every BN of the plain cell counts the cell's forward passes
            for key in state:
                if key.startswith(f"cells.{i}.cell.") and key.endswith("num_batches_tracked"):
                    state[key] = counted.clone()
    return state


def check_plain_supernet(net: nn.Module, source: str | None = None) -> tuple[bool, float]:
    """Refuse (RecipeError naming trainer.fused_cells) a DARTS supernet the fused cell cannot
    reproduce; return ``(track_running_stats, momentum)`` of its cells' BNs."""
    from ..plugins.search_spaces.darts import DartsCell, DartsSupernet
    from ..plugins.search_spaces.ops import DilConv, FactorizedReduce, Pooling, SepConv, Zero

    if type(net) is not DartsSupernet:
        raise _refuse(f"the supernet is a {type(net).__name__}, not the darts space's DartsSupernet", source)
    bns: list[nn.BatchNorm2d] = []

    def conv_ok(m: Any, K: int, stride: int, dil: int, groups: int, C: int) -> bool:
        return (type(m) is nn.Conv2d and m.kernel_size == (K, K) and m.stride == (stride, stride)
                and m.padding == (dil * (K - 1) // 2,) * 2 and m.dilation == (dil, dil) and m.groups == groups
                and m.bias is None and m.in_channels == C and m.out_channels == C and m.padding_mode == "zeros")

    def bn_ok(m: Any, C: int) -> bool:
        bns.append(m)
        return type(m) is nn.BatchNorm2d and not m.affine and m.num_features == C and m.eps == BN_EPS

    def dil_conv_ok(m: Any, K: int, stride: int, dil: int, C: int) -> bool:
        return (type(m) is DilConv and len(m) == 4 and type(m[0]) is nn.ReLU and conv_ok(m[1], K, stride, dil, C, C)
                and conv_ok(m[2], 1, 1, 1, 1, C) and bn_ok(m[3], C))

    def op_ok(op: str, m: Any, stride: int, C: int) -> bool:
        if op == "none":
            return isinstance(m, Zero) and m.stride == stride
        if op == "skip_connect":
            if stride == 1:
                return type(m) is nn.Identity
            return type(m) is FactorizedReduce and _fr_ok(m, C) and bn_ok(m.bn, C)
        if op in POOL_OPS:
            pool = m.pool if type(m) is Pooling else None
            kind = nn.MaxPool2d if op == "max_pool_3x3" else nn.AvgPool2d
            if pool is None or m.pre is not None or m.post is None or type(pool) is not kind:
                return False
            geometry = pool.kernel_size in (3, (3, 3)) and pool.stride in (stride, (stride, stride)) \
                and pool.padding in (1, (1, 1)) and not pool.ceil_mode
            extra = (pool.dilation in (1, (1, 1)) and not pool.return_indices) if kind is nn.MaxPool2d else \
                (not pool.count_include_pad and pool.divisor_override is None)
            return geometry and extra and bn_ok(m.post, C)
        K, dil = KERNEL[op]
        if op in SEP_OPS:
            return (type(m) is SepConv and len(m) == 2 and dil_conv_ok(m[0], K, stride, 1, C)
                    and dil_conv_ok(m[1], K, 1, 1, C))
        return dil_conv_ok(m, K, stride, dil, C)

    if not len(net.cells):
        raise _refuse("the supernet has no cell", source)
    for cell in net.cells:
        children = {n for n, _ in cell.named_children()}
        if type(cell) is not DartsCell or children != {"preprocess0", "preprocess1", "cell"}:
            raise _refuse("a plugin changed the supernet's cells; the fused cell reproduces DartsCell only", source)
        sc = cell.cell
        if type(sc) is not SearchCell:
            raise _refuse("the cell's searched DAG is not a SearchCell", source)
        if len(sc.edge_terms) or any(n not in ("mixed", "edge_terms") for n, _ in sc.named_children()):
            raise _refuse("a regulariser or plugin added per-edge modules to the search cells (e.g. DARTS-'s auxiliary "
                          "skip); the fused cell computes the DARTS ops only", source)
        g = sc.graph
        n = g.number_of_nodes()
        inputs = [v for v, d in g.nodes(data=True) if d["role"] == "input"]
        if (inputs != [0, 1] or list(sc.concat) != list(range(2, n)) or sorted(g.nodes) != list(range(n))
                or {(u, v) for (u, v) in sc.edges} != {(u, v) for v in range(2, n) for u in range(v)}):
            raise _refuse("the fused cell needs a dense DARTS cell (inputs 0 and 1, every intermediate node reads "
                          "every earlier node, output = concat of the intermediate nodes)", source)
        ops = tuple(g.edges[sc.edges[0]]["ops"])
        if any(tuple(g.edges[e]["ops"]) != ops for e in sc.edges):
            raise _refuse("edges with different op lists (RobustDARTS S1, edge_ops) are not supported: every edge "
                          "must have the same ops", source)
        if "noise" in ops:
            raise _refuse("op 'noise' (RobustDARTS S4) has no fused implementation (its output is fresh random "
                          "numbers)", source)
        unknown = [o for o in ops if o not in SUPPORTED_OPS]
        if unknown:
            raise _refuse(f"op(s) {unknown} have no fused implementation (supported: {', '.join(SUPPORTED_OPS)})",
                          source)
        if not any(o != "none" for o in ops):
            raise _refuse("the op list has no op other than 'none'", source)
        C = _cell_channels(cell)
        if C % 2:
            raise _refuse(f"odd channel count {C}", source)  # pragma: no cover - FactorizedReduce asserts it too
        red = bool(g.graph.get("reduction"))
        if red != cell.reduction:  # pragma: no cover - DartsCell reads it from the graph
            raise _refuse("cell graph and cell disagree on reduction", source)
        for (u, v), edge in zip(sc.edges, sc.mixed):
            stride = 2 if red and u < 2 else 1
            for op, m in zip(ops, edge):
                if not op_ok(op, m, stride, C):
                    raise _refuse(f"edge op {op!r} was built as {type(m).__name__} in a form the fused cell does not "
                                  f"reproduce (stride, kernel, affine BN)", source)
    tracks = {m.track_running_stats for m in bns}
    moms = {m.momentum for m in bns}
    if len(tracks) > 1 or len(moms) > 1:
        raise _refuse("the cells' batch norms differ in track_running_stats or momentum", source)
    momentum = moms.pop() if moms else 0.1
    if momentum is None:
        raise _refuse("BN momentum None (a cumulative average) is not supported", source)
    return (tracks.pop() if tracks else False), float(momentum)


def _fr_ok(m: Any, C: int) -> bool:
    return all(type(c) is nn.Conv2d and c.kernel_size == (1, 1) and c.stride == (2, 2) and c.padding == (0, 0)
               and c.dilation == (1, 1) and c.groups == 1 and c.bias is None and c.in_channels == C
               and c.out_channels == C // 2 for c in (m.conv_1, m.conv_2))


def fuse_darts_model(model: nn.Module, source: str | None = None) -> FusedDartsNetwork:
    """The fused equivalent of a plain DARTS supernet (refusing what it cannot reproduce)."""
    check_plain_supernet(model, source)
    return FusedDartsNetwork.from_plain(model)
