"""The chain space's optional fast paths, each computing exactly what :class:`ChainSupernet` computes:
a fused supernet (``trainer.fused_cells: true``) and a population supernet (``diffnas population``).

Both know how ``make_op`` builds the ops: ``conv_3x3`` is ReLU (index 0) → conv (index 1) → BN
without affine parameters (index 2), with ``nn.BatchNorm2d``'s defaults; ``none`` is never computed.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffnas.core.population import PopulationSupernet
from diffnas.core.protocols import FusedSupernet, OpWeights

BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # nn.BatchNorm2d's defaults, which make_op uses


def batch_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, training: bool,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.BatchNorm2d`` on flat statistics (views of stacked buffers are updated in place)."""
    if training:
        count.add_(1)  # as nn.BatchNorm2d counts its batches
    return F.batch_norm(x, mean, var, weight, bias, training, BN_MOMENTUM, BN_EPS)


def pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FusedChainCell(nn.Module):
    """One chain cell fused per source node: the 3×3 convs of every edge leaving a node run as ONE wide
    convolution (and their batch norms as one), skip and pool once, and each edge's weighted sum of
    ops is one einsum."""

    def __init__(self, cell: nn.Module, C: int):
        super().__init__()
        self.C = C
        self.ops = list(cell.graph.edges[cell.edges[0]]["ops"])
        self.inputs = list(cell.inputs)
        self.output = cell.concat[-1]
        self.out_edges: dict[int, list[tuple[int, int]]] = {}  # source node -> [(α row, destination)]
        for row, (u, v) in enumerate(cell.edges):  # SearchCell.edges is in α-row order
            self.out_edges.setdefault(u, []).append((row, v))
        self.sources = sorted(self.out_edges)  # dense cell: a node is complete once every smaller one ran
        self.conv = self.ops.index("conv_3x3") if "conv_3x3" in self.ops else None
        self.shared = [o for o, op in enumerate(self.ops) if op in ("skip_connect", "avg_pool_3x3")]
        self.weight = nn.ParameterList()
        if self.conv is None:
            return
        for i, s in enumerate(self.sources):
            ops = [cell.mixed[row][self.conv] for row, _ in self.out_edges[s]]
            self.weight.append(nn.Parameter(torch.cat([op[1].weight.detach() for op in ops]).clone()))
            self.register_buffer(f"mean{i}", torch.cat([op[2].running_mean for op in ops]).clone())
            self.register_buffer(f"var{i}", torch.cat([op[2].running_var for op in ops]).clone())
            self.register_buffer(f"count{i}", ops[0][2].num_batches_tracked.clone())

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        acc: dict[int, torch.Tensor] = {}
        for i, s in enumerate(self.sources):
            xs = x if s in self.inputs else acc.pop(s)
            rows = [row for row, _ in self.out_edges[s]]
            k, mix = len(rows), w[rows]  # mix: [k edges, ops]
            if self.shared:
                maps = torch.stack([xs if self.ops[o] == "skip_connect" else pool(xs) for o in self.shared])
                y = torch.einsum("kg,gbchw->kbchw", mix[:, self.shared], maps)
            else:
                y = xs.new_zeros(k, *xs.shape)
            if self.conv is not None:
                c = F.conv2d(F.relu(xs), self.weight[i], padding=1)
                c = batch_norm(c, getattr(self, f"mean{i}"), getattr(self, f"var{i}"), getattr(self, f"count{i}"),
                               self.training)
                y = y + mix[:, self.conv].view(k, 1, 1, 1, 1) * c.unflatten(1, (k, self.C)).transpose(0, 1)
            for j, (_, dst) in enumerate(self.out_edges[s]):
                acc[dst] = y[j] if dst not in acc else acc[dst] + y[j]
        return acc[self.output]


class FusedChain(FusedSupernet):
    """The chain supernet with fused cells; stem and classifier are copies of the plain ones."""

    def __init__(self, plain: nn.Module):
        super().__init__()
        self.C = plain.classifier.in_features
        self.stem = copy.deepcopy(plain.stem)
        self.cells = nn.ModuleList(FusedChainCell(cell, self.C) for cell in plain.cells)
        self.classifier = copy.deepcopy(plain.classifier)

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights]) -> torch.Tensor:
        w = op_weights["normal"].weights
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, w)
        return self.classifier(x.mean((2, 3)))

    def _mapping(self, plain: nn.Module, parts: dict[str, str]) -> list[tuple[str, str, slice | None]]:
        """(plain name, fused name, part) for the conv ops' tensors: ``parts`` maps a plain suffix
        (``1.weight``) to the fused cell's tensor prefix (``weight.``)."""
        out = []
        for c, cell in enumerate(self.cells):
            for i, s in enumerate(cell.sources if cell.conv is not None else ()):
                for j, (row, _) in enumerate(cell.out_edges[s]):
                    for suffix, fused in parts.items():
                        part = None if fused == "count" else slice(j * self.C, (j + 1) * self.C)
                        out.append((f"cells.{c}.mixed.{row}.{cell.conv}.{suffix}", f"cells.{c}.{fused}{i}", part))
        return out

    def param_mapping(self, plain: nn.Module) -> list[tuple[str, str, slice | None]]:
        same = [(n, n, None) for n, _ in plain.named_parameters() if not n.startswith("cells.")]
        return same + self._mapping(plain, {"1.weight": "weight."})

    def plain_state_dict(self, plain: nn.Module) -> dict[str, torch.Tensor]:
        state = super().plain_state_dict(plain)  # the parameters, through param_mapping
        buffers = dict(self.named_buffers())  # and the batch norms' running statistics
        same = [(n, n, None) for n, _ in plain.named_buffers() if not n.startswith("cells.")]
        for pname, fname, part in same + self._mapping(plain, {"2.running_mean": "mean", "2.running_var": "var",
                                                                "2.num_batches_tracked": "count"}):
            state[pname] = (buffers[fname] if part is None else buffers[fname][part]).clone()
        return state


class ChainPopulation(PopulationSupernet):
    """K chain supernets as one network: member m owns the m-th block of channels of every layer, so
    each conv is one grouped convolution (``groups=K``), each BN one BN over K·C channels, and the
    classifier one batched matmul."""

    def __init__(self, supernets: Sequence[nn.Module]):
        super().__init__()
        first = supernets[0]
        self.K, self.C, self.num_cells = len(supernets), first.classifier.in_features, len(first.cells)
        cell = first.cells[0]
        self.ops = list(cell.graph.edges[cell.edges[0]]["ops"])
        self.inputs, self.order, self.output = list(cell.inputs), list(cell.order), cell.concat[-1]
        self.incoming = {n: list(cell.incoming[n]) for n in self.order}  # node -> [(α row, source)]
        # the contract: parameters() in each member's parameters() order, stacked on a member axis
        self.names = [n for n, _ in first.named_parameters()]
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([dict(s.named_parameters())[n].detach() for s in supernets]).clone())
            for n in self.names)
        self.buffer_names = [n for n, _ in first.named_buffers()]
        for i, n in enumerate(self.buffer_names):
            self.register_buffer(f"buf{i}", torch.stack([dict(s.named_buffers())[n] for s in supernets]).clone())

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights]) -> torch.Tensor:
        K, B = x.shape[:2]
        p = dict(zip(self.names, self.stacked))
        b = {n: getattr(self, f"buf{i}") for i, n in enumerate(self.buffer_names)}

        def bn(h: torch.Tensor, prefix: str, affine: bool) -> torch.Tensor:
            w, bias = (p[f"{prefix}.weight"].flatten(), p[f"{prefix}.bias"].flatten()) if affine else (None, None)
            return batch_norm(h, b[f"{prefix}.running_mean"].view(-1), b[f"{prefix}.running_var"].view(-1),
                              b[f"{prefix}.num_batches_tracked"], self.training, w, bias)

        def per_member(v: torch.Tensor) -> torch.Tensor:  # [K] -> a factor for each of the K·C channels
            return v.repeat_interleave(self.C).view(1, K * self.C, 1, 1)

        w = op_weights["normal"].weights  # [K, edges, ops]
        h = x.transpose(0, 1).flatten(1, 2)  # [B, K·3, H, W]: member m's channels are block m
        h = bn(F.conv2d(h, p["stem.0.weight"].flatten(0, 1), padding=1, groups=K), "stem.1", affine=True)
        for c in range(self.num_cells):
            nodes = {n: h for n in self.inputs}
            for node in self.order:
                acc = None
                for row, src in self.incoming[node]:
                    for o, op in enumerate(self.ops):
                        if op == "none":
                            continue
                        y = nodes[src] if op == "skip_connect" else pool(nodes[src]) if op == "avg_pool_3x3" else None
                        if op == "conv_3x3":
                            name = f"cells.{c}.mixed.{row}.{o}"
                            y = F.conv2d(F.relu(nodes[src]), p[f"{name}.1.weight"].flatten(0, 1), padding=1, groups=K)
                            y = bn(y, f"{name}.2", affine=False)
                        y = y * per_member(w[:, row, o])
                        acc = y if acc is None else acc + y
                nodes[node] = acc if acc is not None else nodes[src] * 0.0
            h = nodes[self.output]
        features = h.mean((2, 3)).view(B, K, self.C).transpose(0, 1)  # [K, B, C]
        return torch.baddbmm(p["classifier.bias"].unsqueeze(1), features, p["classifier.weight"].transpose(1, 2))

    @torch.no_grad()
    def store_to_members(self, supernets: Sequence[nn.Module]) -> None:
        for m, s in enumerate(supernets):
            for param, stacked in zip(s.parameters(), self.stacked):
                param.copy_(stacked[m])
            buffers = dict(s.named_buffers())
            for i, n in enumerate(self.buffer_names):
                buffers[n].copy_(getattr(self, f"buf{i}")[m])
