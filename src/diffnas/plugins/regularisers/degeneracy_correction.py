"""Degeneracy correction during search: an approximation of Lacharme et al.

Lacharme, Cardot, Lenté & Monmarché, "DARTS with Degeneracy Correction" (IbPRIA 2023, LNCS 14062,
doi 10.1007/978-3-031-36616-1_4) and Pattern Anal. Appl. 27(2), 2024 (doi 10.1007/s10044-024-01260-5)
correct DARTS's drift to shallow, skip-dominated cells with (i) a convex depth regularisation and
(ii) a heuristic that controls the number of parameter-free ("unweighted") operations. Only the
abstracts were available (METHODS.md §4, §8): the formulas below are the decisions of METHODS.md §9,
**an approximation of Lacharme et al., not the paper**. Two regularisers live here; the third part,
the limit on parameter-free ops at discretisation, is the ``degeneracy_argmax`` discretiser
(:mod:`diffnas.plugins.discretisers.degeneracy_argmax`).

* ``degeneracy_cap`` (``after_arch_step``). ASSUMPTION (approximation of Lacharme et al.): after every
  α step each edge's op weights p = softmax(α/τ) are projected, in the Euclidean sense, onto
  {x ∈ simplex : Σ_{o parameter-free} x_o ≤ cap}. When the cap binds, that set splits into two scaled
  simplices, so the projection is two capped-simplex projections (Ang et al. 2021, the building block
  of METHODS.md §4): the parameter-free ops onto Σ = cap, the parametric ops onto Σ = 1 − cap. The
  result is floored at ``floor`` (so that log p stays finite) and written back as α = τ·log x, with the
  row's mean of α kept (softmax is shift invariant).
* ``degeneracy_depth`` (loss, phase ``arch``). ASSUMPTION (approximation of Lacharme et al.): the cell's
  expected depth D(α): an edge contributes ℓ_e = Σ_o p_o·[o has parameters] layers, node j's depth is
  the weight-averaged d_j = Σ_i β_ij(d_i + ℓ_ij) / Σ_i β_ij (inputs have depth 0; β = 1 on every edge
  by default, as in NB201), and D is the mean depth of the cell's output nodes (``concat``; one node in
  NB201). The loss is λ·max(0, D* − D(α))², convex in D; defaults λ = 1 and
  D* = ``depth_fraction``·D_max with ``depth_fraction`` = 0.9, where D_max is the expected depth of
  the cell whose every edge is parametric, computed from the cell graph (11/6 ≈ 1.833 in NB201,
  1.425 in the DARTS normal cell). D* is reachable, so the term switches off once the cell is deep
  enough; the number of intermediate nodes (an earlier default) can never be reached in these cells.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import networkx as nx
import torch

from ...core.cells import edge_ops
from ...core.config import help_field, in_range, non_negative, one_of, positive
from ...core.errors import PluginError
from ...core.hookspecs import hookimpl
from ...core.protocols import Regulariser

# --------------------------------------------------------------------------- capped simplex


def project_capped_simplex(y: torch.Tensor, k: float, upper: float = 1.0, iters: int = 100,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of every row of ``y`` onto the capped simplex {x : 0 ≤ x ≤ upper, Σx = k}.

    The solution is x_i = clip(y_i − γ, 0, upper) where γ solves Σ_i clip(y_i − γ, 0, upper) = k
    (Ang et al. 2021, METHODS.md §4). The left side is non-increasing in γ, equal to n·upper at
    γ = min y − upper and to 0 at γ = max y, so γ is found by bisection in float64 on that bracket
    (a fixed number of steps and no data-dependent branch: no host synchronisation).

    :param y: ``[..., n]`` points (projected along the last dimension).
    :param k: the required sum, 0 ≤ k ≤ n·upper.
    :param upper: the per-coordinate upper bound (> 0); the classic capped simplex has 1.
    :param mask: optional bool ``[..., n]``: project only the coordinates it marks (the others are 0
        in the result); a row with no marked coordinate is all 0.
    :returns: the projections, same shape and dtype as ``y``.
    """
    n = y.shape[-1]
    if upper <= 0:
        raise ValueError(f"'upper' must be > 0, got {upper!r}")
    if not (0.0 <= k <= n * upper + 1e-12):
        raise ValueError(f"'k' must be in [0, {n * upper}] for {n} coordinates with upper bound {upper}, got {k!r}")
    z = y.detach().to(torch.float64)
    m = torch.ones_like(z, dtype=torch.bool) if mask is None else mask.expand_as(z)
    inf = z.new_full((), float("inf"))  # made on the device (no host copy)
    lo = torch.where(m, z, inf).amin(dim=-1, keepdim=True) - upper  # sum = n·upper ≥ k
    hi = torch.where(m, z, -inf).amax(dim=-1, keepdim=True)  # sum = 0 ≤ k
    for _ in range(iters):
        mid = (lo + hi) / 2
        s = torch.where(m, (z - mid).clamp(0.0, upper), 0.0).sum(dim=-1, keepdim=True)
        too_big = s > k  # γ must grow
        lo = torch.where(too_big, mid, lo)
        hi = torch.where(too_big, hi, mid)
    gamma = (lo + hi) / 2
    return torch.where(m, (z - gamma).clamp(0.0, upper), 0.0).to(y.dtype)


def cap_parameter_free(p: torch.Tensor, free: torch.Tensor, cap: float) -> torch.Tensor:
    """Project each edge's op weights (rows of ``p``, on the simplex) onto
    {x ∈ simplex : Σ_free x ≤ cap}.

    A row where the cap holds (or whose ops are all free or all parametric) is returned unchanged.
    Otherwise the constraint is active at the projection (the projection onto the simplex alone
    would be the row itself), so the set is the product of {Σ_free x = cap, x ≥ 0} and
    {Σ_param x = 1 − cap, x ≥ 0}, and the projection is one capped-simplex projection per group.
    All rows are computed at once, without a host synchronisation.

    :param p: ``[..., n]`` op weights, rows summing to 1.
    :param free: ``[..., n]`` (or ``[n]``) bool, True for parameter-free ops.
    :param cap: the largest allowed total weight of the parameter-free ops, in [0, 1].
    """
    return _capped_rows(p, free, cap)[0]


def _capped_rows(p: torch.Tensor, free: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(projected rows, over)``: :func:`cap_parameter_free`'s result and the bool ``[...]`` of the
    rows it changed (parameter-free weight above ``cap``, ops of both kinds)."""
    free = free.expand_as(p)
    over = (torch.where(free, p, 0.0).sum(-1) > cap) & free.any(-1) & ~free.all(-1)
    x = project_capped_simplex(p, cap, mask=free) + project_capped_simplex(p, 1.0 - cap, mask=~free)
    return torch.where(over.unsqueeze(-1), x, p), over


def _free_mask(graph: nx.DiGraph, free_ops: frozenset[str]) -> torch.Tensor:
    return torch.tensor([[op in free_ops for op in ops] for ops in edge_ops(graph)], dtype=torch.bool)


def _cell_names(search: Any, cells: Sequence[str], who: str) -> list[str]:
    names = list(cells) if cells else list(search.cells)
    unknown = [c for c in names if c not in search.cells]
    if unknown:  # check_composition reports this before the search; a search built otherwise still refuses
        raise PluginError(f"{who}: unknown cell type(s) {unknown}; this search space has {sorted(search.cells)}")
    return names


def _cell_problems(comp: Any, composition: Any) -> list[tuple[str, str]]:
    """``cells`` naming cell types the search space lacks (validate-time, :meth:`check_composition`)."""
    return composition.unknown_cells(comp.config.cells, f"{comp.name or type(comp).__name__}:",
                                     f"{comp.key_path}.params.cells")


class DegeneracyCap(Regulariser):
    """Cap each edge's total parameter-free weight by a capped-simplex projection after every α step
    (approximation of Lacharme et al., IbPRIA 2023 / PAA 2024; METHODS.md §9)."""

    @attrs.frozen
    class Config:
        cap: float = help_field(0.5, "largest total weight of the parameter-free ops on one edge, schedulable as "
                                     "regularisers.degeneracy_cap.cap (ASSUMPTION, approximation of Lacharme et al.)",
                                validator=in_range(0.0, 1.0, lo_open=True, hi_open=True))
        floor: float = help_field(1e-6, "smallest op weight kept after the projection (α = τ·log p must stay finite)",
                                  validator=in_range(0.0, 0.1, lo_open=True))
        cells: tuple[str, ...] = help_field((), "cell types to project (empty: all)", converter=tuple)

    phases = ()
    modifies_supernet = False  # attach builds masks and checks the relaxation only

    def check_composition(self, composition):
        return _cell_problems(self, composition)

    def attach(self, search):
        self._cells = _cell_names(search, self.config.cells, "degeneracy_cap")
        free = search.search_space.parameter_free_ops()
        self._masks = {c: _free_mask(search.cells[c], free).to(search.device) for c in self._cells}
        # the write-back α = τ·log p needs p = softmax(α/τ)
        a = search.alphas[self._cells[0]].detach()
        tau = float(search.relaxation.hparams.get("tau", 1.0))
        if not torch.allclose(search.relaxation.probabilities(a), torch.softmax(a / tau, dim=-1), atol=1e-6):
            raise PluginError("degeneracy_cap needs a relaxation whose probabilities are softmax(α/τ) "
                              f"(softmax, gdas ...); {type(search.relaxation).__name__} is not")

    @torch.no_grad()
    def after_arch_step(self, search):
        # every edge at once, rows within the cap left untouched: no host synchronisation (CUDA graphs)
        tau = float(search.relaxation.hparams.get("tau", 1.0))
        cap, floor = min(max(float(self.hparams["cap"]), 0.0), 1.0), self.hparams["floor"]
        for c in self._cells:
            alpha = search.alphas[c]
            p = torch.softmax(alpha.detach().double() / tau, dim=-1)
            mask = self._masks[c]
            x, over = _capped_rows(p, mask, cap)
            for group, total in ((mask, cap), (~mask, 1.0 - cap)):
                g = torch.where(group, x.clamp_min(floor), 0.0)
                x = torch.where(group, g * (total / g.sum(-1, keepdim=True)), x)
            row = tau * x.log()
            new = row - row.mean(-1, keepdim=True) + alpha.double().mean(-1, keepdim=True)
            alpha.copy_(torch.where(over.unsqueeze(-1), new, alpha.double()).to(alpha.dtype))


# --------------------------------------------------------------------------- depth


def expected_depth(graph: nx.DiGraph, probs: torch.Tensor, parametric: torch.Tensor,
                   edge_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Expected depth D(α) of a cell (METHODS.md §9; approximation of Lacharme et al.).

    :param graph: the cell graph (searched edges carry ``index``).
    :param probs: ``[num_edges, num_ops]`` op weights (rows are normalised here).
    :param parametric: ``[num_edges, num_ops]`` 1.0 where the op has parameters.
    :param edge_weights: ``[num_edges]`` β (default all 1).
    :returns: the mean, over the cell's ``concat`` nodes, of d_j = Σ_i β_ij(d_i + ℓ_ij) / Σ_i β_ij with
        ℓ_e = Σ_o p_o·parametric_o and d = 0 on input nodes (a 0-dim tensor, differentiable in ``probs``).
    """
    q = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
    length = (q * parametric.to(q)).sum(-1)
    beta = torch.ones_like(length) if edge_weights is None else edge_weights.to(length)
    depth: dict[int, torch.Tensor] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        if graph.nodes[node].get("role") == "input" or not preds:
            depth[node] = length.new_zeros(())
            continue
        num = den = length.new_zeros(())
        for u in preds:
            data = graph.edges[(u, node)]
            if "index" in data:
                i = data["index"]
                num = num + beta[i] * (depth[u] + length[i])
                den = den + beta[i]
            else:  # a fixed edge: no searched layer on it
                num, den = num + depth[u], den + 1.0
        depth[node] = num / den.clamp_min(1e-12)
    concat = list(graph.graph["concat"])
    return torch.stack([depth[n] for n in concat]).mean()


def max_expected_depth(graph: nx.DiGraph) -> float:
    """D_max: the expected depth :func:`expected_depth` of the cell whose every searched edge carries a
    parametric op with weight 1 (β = 1), the largest value D(α) can take on this graph."""
    n = len(edge_ops(graph))
    width = max((len(ops) for ops in edge_ops(graph)), default=1)
    ones = torch.ones(n, width, dtype=torch.float64)
    return float(expected_depth(graph, ones, ones))


class DegeneracyDepth(Regulariser):
    """Convex depth regulariser λ·max(0, D* − D(α))² on the cell's expected depth
    (approximation of Lacharme et al., IbPRIA 2023 / PAA 2024; METHODS.md §9)."""

    @attrs.frozen
    class Config:
        weight: float = help_field(1.0, "λ (schedulable as regularisers.degeneracy_depth.weight; ASSUMPTION)",
                                   validator=non_negative)
        target_depth: float | None = help_field(None, "D* (default: depth_fraction·D_max; ASSUMPTION)",
                                                validator=positive, schedulable=False)
        depth_fraction: float = help_field(0.9, "D* = depth_fraction·D_max when target_depth is not given, D_max the "
                                                "depth of the all-parametric cell (ASSUMPTION)",
                                           validator=in_range(0.0, 1.0, lo_open=True), schedulable=False)
        edge_weights: str = help_field("uniform", "β_ij: 'uniform' (all 1, NB201) or 'strength' (1 − p_none; ASSUMPTION)",
                                       validator=one_of("uniform", "strength"))
        cells: tuple[str, ...] = help_field((), "cell types regularised (empty: all); losses are summed",
                                            converter=tuple)

    phases = ("arch",)
    modifies_supernet = False  # attach builds masks and targets only

    def check_composition(self, composition):
        return _cell_problems(self, composition)

    def attach(self, search):
        self._cells = _cell_names(search, self.config.cells, "degeneracy_depth")
        free = search.search_space.parameter_free_ops()
        self._param = {c: (~_free_mask(search.cells[c], free)).float().to(search.device) for c in self._cells}
        zero = search.search_space.zero_ops()
        self._none = {c: torch.tensor([[op in zero for op in ops] for ops in edge_ops(search.cells[c])],
                                      device=search.device) for c in self._cells}
        self._target = {c: float(self.config.target_depth) if self.config.target_depth is not None
                        else self.config.depth_fraction * max_expected_depth(search.cells[c]) for c in self._cells}

    def depths(self, search) -> dict[str, torch.Tensor]:
        """D(α) of every regularised cell type (differentiable)."""
        out = {}
        for c in self._cells:
            p = search.relaxation.cell_probabilities(c, search.alphas[c])
            beta = None
            if self.config.edge_weights == "strength":
                q = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
                beta = (q * (~self._none[c]).to(q)).sum(-1)
            out[c] = expected_depth(search.cells[c], p, self._param[c], beta)
        return out

    def loss(self, search, phase):
        lam = float(self.hparams["weight"])
        if lam == 0.0:
            return None
        total = None
        for c, d in self.depths(search).items():
            term = torch.relu(self._target[c] - d) ** 2
            total = term if total is None else total + term
        return lam * total

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        with torch.no_grad():
            record["expected_depth"] = {c: round(float(d), 6) for c, d in self.depths(search).items()}


@hookimpl
def diffnas_register_regularisers(register):
    register("degeneracy_cap", DegeneracyCap)
    register("degeneracy_depth", DegeneracyDepth)


__all__ = ["project_capped_simplex", "cap_parameter_free", "expected_depth", "max_expected_depth",
           "DegeneracyCap", "DegeneracyDepth"]
