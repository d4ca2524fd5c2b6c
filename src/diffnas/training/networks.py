"""Discrete networks for retraining a found cell from scratch.

:class:`DartsEvalNetwork` is the DARTS evaluation network for CIFAR (``NetworkCIFAR`` of
``quark0/darts: cnn/model.py``; METHODS.md §1): a 3×3 conv stem with 3C channels and BN, ``layers``
cells of which those at ``layers // 3`` and ``2 * layers // 3`` are reduction cells (stride 2, channels
doubled), drop-path on every non-identity edge during training, an optional auxiliary classifier
after cell ``2 * layers // 3``, then global average pooling and a linear classifier.

Each cell is built from its genotype's ``networkx`` graph (:meth:`CellGenotype.to_graph`): nodes 0
and 1 are the cell inputs c_{k-2} and c_{k-1} (preprocessed by ReLU-Conv1×1-BN, or a
FactorizedReduce for c_{k-2} after a reduction cell), every other node is the sum of its incoming
edges computed in topological order, and the output concatenates the graph's ``concat`` nodes. Ops
come from :data:`diffnas.plugins.search_spaces.ops.DARTS_OPS` with affine BN (no BN after pooling,
as in the DARTS evaluation network); edges leaving an input node of a reduction cell have stride 2.
"""

from __future__ import annotations

import networkx as nx
import torch
from torch import nn

from ..core.errors import DiffnasError
from ..core.genotype import CellGenotype, Genotype
from ..plugins.search_spaces.ops import DARTS_OPS, FactorizedReduce, ReLUConvBN

CELL_INPUTS = (0, 1)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (DARTS's ``drop_path``)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def forward_nodes(cell: nn.Module, states: dict[int, torch.Tensor], drop_prob: float) -> dict[int, torch.Tensor]:
    """Compute ``cell``'s intermediate nodes into ``states`` (which holds its inputs): each node of
    ``cell.order`` is the sum of ``cell.ops[i](states[src])`` over ``cell.incoming[node]``, with
    drop-path on every non-identity op in training (``cell.identity[i]``)."""
    for node in cell.order:
        acc = None
        for i, src in cell.incoming[node]:
            h = cell.ops[i](states[src])
            if cell.training and drop_prob > 0.0 and not cell.identity[i]:
                h = drop_path(h, drop_prob)
            acc = h if acc is None else acc + h
        states[node] = acc
    return states


class EvalCell(nn.Module):
    """One discrete DARTS cell built from a cell genotype's graph (see the module docstring)."""

    def __init__(self, cell: CellGenotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        graph = cell.to_graph("reduce" if reduction else "normal")
        bad = [(s, d) for s, d in graph.edges if d in CELL_INPUTS or s == d]
        if bad:
            raise DiffnasError(f"DARTS cell: edges {bad} enter a cell input node (0 or 1)")
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        self.order = [n for n in nx.topological_sort(graph) if n not in CELL_INPUTS]
        self.concat = [int(n) for n in graph.graph["concat"]]
        missing = [n for n in self.concat if n not in CELL_INPUTS and n not in self.order]
        if missing or not self.concat:
            raise DiffnasError(f"DARTS cell: concat nodes {missing or self.concat} have no incoming edges")
        self.incoming: dict[int, list[tuple[int, int]]] = {}
        ops = []
        for node in self.order:
            self.incoming[node] = []
            for src in sorted(graph.predecessors(node)):
                op = graph.edges[(src, node)]["op"]
                if op not in DARTS_OPS:
                    raise DiffnasError(f"DARTS cell: unknown op {op!r} on edge {src}->{node}; known: {', '.join(DARTS_OPS)}")
                stride = 2 if reduction and src in CELL_INPUTS else 1
                self.incoming[node].append((len(ops), src))
                ops.append(DARTS_OPS[op](c, c, stride, True, True))
        self.ops = nn.ModuleList(ops)
        self.identity = [isinstance(m, nn.Identity) for m in ops]
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = forward_nodes(self, {0: self.preprocess0(s0), 1: self.preprocess1(s1)}, drop_prob)
        return torch.cat([states[n] for n in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier (expects 8×8 maps, i.e. 32×32 images): → 2×2 → 128 → 768 → classes."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class DartsEvalNetwork(nn.Module):
    """The DARTS CIFAR evaluation network for a DARTS-space genotype.

    :param genotype: a genotype with ``normal`` and ``reduce`` cells (nodes 0, 1 inputs, 2.. intermediate).
    :param C: initial channels (36 in the DARTS protocol).
    :param layers: number of cells (20).
    :param num_classes: classifier outputs.
    :param auxiliary: build the auxiliary head after cell ``2 * layers // 3``.
    :param drop_path_prob: drop-path probability; the training loop raises ``self.drop_path_prob``
        linearly from 0 (DARTS: ``drop_path_prob * epoch / epochs``).

    ``forward(x)`` returns the logits. In training mode with ``auxiliary`` the auxiliary logits of
    the same pass are left in ``self.aux_logits`` (``None`` otherwise), so the module's output is
    always one tensor.
    """

    def __init__(self, genotype: Genotype, C: int, layers: int, num_classes: int, auxiliary: bool = False,
                 drop_path_prob: float = 0.0):
        super().__init__()
        if not {"normal", "reduce"} <= set(genotype.cells):
            raise DiffnasError(f"DartsEvalNetwork needs 'normal' and 'reduce' cells, the genotype has {sorted(genotype.cells)}")
        if layers < 3:
            raise DiffnasError(f"DartsEvalNetwork needs at least 3 layers (two are reduction cells), got {layers}")
        self.layers_n, self.auxiliary, self.drop_path_prob = layers, auxiliary, drop_path_prob
        self.aux_logits: torch.Tensor | None = None
        c_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.reductions = (layers // 3, 2 * layers // 3)
        self.aux_at = 2 * layers // 3
        cells = []
        reduction_prev = False
        c_aux = c_p
        for i in range(layers):
            reduction = i in self.reductions
            if reduction:
                c_curr *= 2
            cell = EvalCell(genotype.cells["reduce" if reduction else "normal"], c_pp, c_p, c_curr, reduction, reduction_prev)
            cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
            if i == self.aux_at:
                c_aux = c_p
        self.cells = nn.ModuleList(cells)
        self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.aux_logits = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_at and self.auxiliary_head is not None and self.training:
                self.aux_logits = self.auxiliary_head(s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Learnable parameters; DARTS excludes the auxiliary head (``auxiliary`` in the name)."""
    return sum(p.numel() for n, p in model.named_parameters() if not (exclude_auxiliary and "auxiliary" in n))


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_shape`` (C, H, W), in eval mode.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
    multiply-accumulate of convolutions, linear layers and matrix products (not BN, activations or
    pooling); the total is halved, so the number is in the multiply-add convention of the DARTS and
    NAS-Bench-201 papers ("FLOPs (M)"). The auxiliary head is not counted (it only runs in training).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        x = torch.zeros(1, *input_shape, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops()) // 2
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- LHD


class LhdEvalCell(nn.Module):
    """One discrete LHD cell (``chaoji90/LHD: eval/multi_path_concat_sum.py Cell``): returns ``(sum, concat)``.

    preprocess0 is the identity in a normal cell and a 1×1 ReLU-Conv-BN in a reduction cell (as in
    the search network); preprocess1 is a 1×1 ReLU-Conv-BN. Each intermediate node is the plain sum
    of its kept edges (two edges may join the same nodes with different ops); a node without kept
    edges is absent. The cell outputs the sum of the genotype's ``sum_nodes`` and the concatenation
    of its ``concat`` nodes, unweighted (the learned path weights only chose the nodes). Ops are the
    LHD single-block ops with affine BN; edges leaving an input of a reduction cell have stride 2.
    """

    def __init__(self, cell: CellGenotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool):
        super().__init__()
        from ..plugins.search_spaces.lhd_space import LHD_OPS

        self.reduction = reduction
        self.preprocess0: nn.Module = ReLUConvBN(c_prev_prev, c, 1, 1, 0) if reduction else nn.Identity()
        if not reduction and c_prev_prev != c:
            raise DiffnasError(f"LHD normal cell: s0 has {c_prev_prev} channels, the cell {c} (preprocess0 is the identity)")
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        bad = [(s, d) for s, d, _ in cell.edges if d in CELL_INPUTS or s >= d]
        if bad:
            raise DiffnasError(f"LHD cell: edges {bad} do not run forward from an earlier node")
        ops, self.incoming = [], {}
        for src, dst, op in cell.edges:
            if op not in LHD_OPS:
                raise DiffnasError(f"LHD cell: unknown op {op!r} on edge {src}->{dst}; known: {', '.join(LHD_OPS)}")
            self.incoming.setdefault(dst, []).append((len(ops), src))
            ops.append(LHD_OPS[op](c, c, 2 if reduction and src in CELL_INPUTS else 1, True, True))
        self.ops = nn.ModuleList(ops)
        self.identity = [isinstance(m, nn.Identity) for m in ops]
        self.order = sorted(self.incoming)
        self.concat, self.sum_nodes = [int(n) for n in cell.concat], [int(n) for n in cell.sum_nodes]
        known = set(CELL_INPUTS) | set(self.order)
        for what, nodes in (("concat", self.concat), ("sum", self.sum_nodes)):
            missing = [n for n in nodes if n not in known]
            if not nodes or missing:
                raise DiffnasError(f"LHD cell: the {what} output path {missing or '(empty)'} has no computed node")
        for node, edges in self.incoming.items():
            missing = sorted({s for _, s in edges if s not in known})
            if missing:
                raise DiffnasError(f"LHD cell: node {node} reads nodes {missing}, which have no kept edges")
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        states = forward_nodes(self, {0: self.preprocess0(s0), 1: self.preprocess1(s1)}, drop_prob)
        total = states[self.sum_nodes[0]]
        for n in self.sum_nodes[1:]:
            total = total + states[n]
        return total, torch.cat([states[n] for n in self.concat], dim=1)


class LhdEvalNetwork(nn.Module):
    """The LHD CIFAR evaluation network (``chaoji90/LHD: eval/multi_path_concat_sum.py NetworkCIFAR``).

    Two stems (3×3 conv + BN: 3→C and 3→3C); ``layers`` cells, reductions at ``layers // 3`` and
    ``2 * layers // 3`` (channels doubled); each cell passes ``(sum, concat)`` on as the next cell's
    ``(s0, s1)``; the classifier reads global-average-pooled ``concat(s0, s1)`` of the last cell, and
    the optional auxiliary head the same concatenation after cell ``2 * layers // 3``.

    Drop-path: the authors' training script uses ``drop_path_prob`` times the number of concat nodes
    of the normal cell (``eval/cifar10/train.py``: 0.01 per node); this network applies that factor
    (``drop_path_scale``) to the ``drop_path_prob`` the training loop sets, so a recipe gives the
    per-node rate.
    """

    def __init__(self, genotype: Genotype, C: int, layers: int, num_classes: int, auxiliary: bool = False,
                 drop_path_prob: float = 0.0, stem_multiplier: int = 3):
        super().__init__()
        if not {"normal", "reduce"} <= set(genotype.cells):
            raise DiffnasError(f"LhdEvalNetwork needs 'normal' and 'reduce' cells, the genotype has {sorted(genotype.cells)}")
        if layers < 3:
            raise DiffnasError(f"LhdEvalNetwork needs at least 3 layers (two are reduction cells), got {layers}")
        self.layers_n, self.auxiliary, self.drop_path_prob = layers, auxiliary, drop_path_prob
        self.drop_path_scale = float(len(genotype.cells["normal"].concat))
        self.aux_logits: torch.Tensor | None = None
        self.stem_0 = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem_1 = nn.Sequential(nn.Conv2d(3, stem_multiplier * C, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(stem_multiplier * C))
        c_pp, c_p, c_curr = C, stem_multiplier * C, C
        self.reductions = (layers // 3, 2 * layers // 3)
        self.aux_at = 2 * layers // 3
        cells, c_aux = [], c_pp + c_p
        for i in range(layers):
            reduction = i in self.reductions
            if reduction:
                c_curr *= 2
            cell = LhdEvalCell(genotype.cells["reduce" if reduction else "normal"], c_pp, c_p, c_curr, reduction)
            cells.append(cell)
            c_pp, c_p = c_curr, cell.multiplier * c_curr
            if i == self.aux_at:
                c_aux = c_pp + c_p
        self.cells = nn.ModuleList(cells)
        self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_pp + c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.aux_logits = None
        s0, s1 = self.stem_0(x), self.stem_1(x)
        drop = self.drop_path_prob * self.drop_path_scale
        for i, cell in enumerate(self.cells):
            s0, s1 = cell(s0, s1, drop)
            if i == self.aux_at and self.auxiliary_head is not None and self.training:
                self.aux_logits = self.auxiliary_head(torch.cat([s0, s1], dim=1))
        return self.classifier(self.global_pooling(torch.cat([s0, s1], dim=1)).flatten(1))
