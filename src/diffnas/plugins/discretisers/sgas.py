"""SGAS: sequential greedy architecture search (Li, Qian, Delgadillo, Müller, Thabet & Ghanem, "SGAS:
Sequential Greedy Architecture Search", CVPR 2020; ``lightaime/sgas: cnn/train_search.py``,
``cnn/model_search.py``, ``cnn/utils.py``; METHODS.md §5).

SGAS discretises while it searches. After a warm-up, at the end of every F-th epoch each cell type
fixes its undecided edge with the best score to that edge's strongest op and freezes its α; then
the batch grows by 8. Two components share the work:

* the **regulariser** ``sgas`` makes the decisions (``diffnas_epoch_end``), masks the decided edges
  in the supernet (``SearchCell.fixed``: a decided edge computes its op alone, unweighted, as the
  code's ``MixedOp.forward(x, None, selected_idx)``; a pruned edge adds nothing to its node), keeps
  decided rows of α at their values after every α step (``after_arch_step``: the code sets
  ``requires_grad = False``, so Adam neither steps nor decays them), and grows the batch through
  :meth:`Search.set_batch_size <diffnas.core.engine.Search.set_batch_size>`;
* the **discretiser** ``sgas`` gives the genotype: the decided edges, and while edges remain
  undecided, each node filled up to k edges by edge importance with their strongest op
  (``Network.get_genotype(force=True)``, what the code logs every epoch).

**Scores** (``edge_decision``, on one cell type's p = softmax(α) rows, the relaxation's
probabilities; the ops other than the space's zero op ``none`` are the candidates O'):

* edge importance  I_e = Σ_{o∈O'} p_{e,o};
* selection certainty  1 − H(p̄_e)/log|O'|, with p̄_e = p_{e,O'}/I_e;
* **Criterion 1**: score = N(I)·N(1 − H/log|O'|), with N the min-max normalisation over all edges
  of the cell, decided ones included (zeros when all values are equal; ``utils.normalize``);
* **Criterion 2** also multiplies by N(S), the selection stability S_e = mean over the last K = 4
  epochs' p̄ of the histogram intersection Σ_o min(p̄_e,o, p̄'_e,o) (0 before any history; this
  epoch's p̄ joins the history after its score).

**Decisions.** At the end of epoch e (0-based) with e ≥ ``warmup_dec_epoch`` (9) and
(e − 9) mod F = 0 (F = ``decision_freq`` = 5), each cell type with undecided edges decides the one
with the highest score (the first on ties) and gives it argmax_{o∈O'} p̄_{e,o}; a node with k = 2
decided inputs then drops its other edges (``check_edges``). The batch size becomes
``trainer.batch_size`` + 8·(decision epochs so far), for the training and the validation half. The
search length of the code is ``epochs = 9 + 5·(D − 1) + 5 + 1``, D the decisions per cell (8 in the
DARTS space: 50 epochs; :func:`sgas_epochs`): the recipe sets ``trainer.epochs`` to it, and a
shorter run leaves edges undecided (logged; the discretiser then fills them as above). With
``edges_per_node: null`` (NAS-Bench-201, where every edge stays) no edge is dropped and D is the
number of edges.

The record's ``genotype`` of a decision epoch is computed before that epoch's decision (the engine
discretises before ``diffnas_epoch_end``); ``record["sgas"]`` holds the scores, the decision and the
new batch size, and the next epoch's genotype includes it. Everything is plain data in
:meth:`SGAS.state_dict`, so a resumed run makes the same decisions with the same batches.

Refused with ``trainer.fused_cells`` (the fused cells compute every edge's ops) and in populations
(the regulariser changes the supernet: "regulariser 'sgas' may change the supernet (it implements
attach); members of a population share one fused supernet"), and with an α warm-up
(``set_batch_size``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import attrs
import torch

from ...core.cells import SearchCell, edge_ops
from ...core.config import help_field, non_negative, one_of, positive
from ...core.errors import PluginError
from ...core.genotype import CellGenotype, Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import Discretiser, Regulariser
from .top_k import incoming, intermediate_nodes

log = logging.getLogger(__name__)

UNDECIDED, DROPPED = -1, -2  # entries of SGAS.selected besides an op index


def normalize(v: torch.Tensor) -> torch.Tensor:
    """(v − min v)/(max v − min v); zeros when every entry is equal (``lightaime/sgas: cnn/utils.py normalize``)."""
    lo, span = v.min(), v.max() - v.min()
    return (v - lo) / span if float(span) > 0 else torch.zeros_like(v)


def histogram_average(history: Sequence[torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
    """Per edge, the mean over ``history`` of Σ_o min(h_o, p̄_o) (zeros without history; ``histogram_average``)."""
    out = torch.zeros(probs.shape[0], dtype=probs.dtype)
    for h in history:
        out = out + torch.minimum(h.to(probs.dtype), probs).sum(dim=1)
    return out / len(history) if history else out


def edge_scores(p: torch.Tensor, candidates: Sequence[int], criterion: int = 1,
                history: Sequence[torch.Tensor] = ()) -> dict[str, torch.Tensor]:
    """SGAS's per-edge quantities for one cell (``edge_decision``).

    :param p: ``[E, O]`` op probabilities (softmax(α)).
    :param candidates: the op indices that may be chosen (every op but the zero op).
    :param criterion: 1 (importance × certainty) or 2 (× stability over ``history``).
    :param history: earlier epochs' ``probs`` (``[E, |O'|]`` each), oldest first.
    :returns: ``importance`` I, ``probs`` p̄, ``entropy`` H(p̄)/log|O'|, ``stability`` (Criterion 2)
        and ``score``.
    """
    p = p.detach().cpu()
    importance = p[:, list(candidates)].sum(dim=1)
    probs = p[:, list(candidates)] / importance.unsqueeze(1)
    n = len(candidates)
    entropy = -torch.special.xlogy(probs, probs).sum(dim=1) / math.log(n) if n > 1 else torch.zeros_like(importance)
    score = normalize(importance) * normalize(1 - entropy)
    out = {"importance": importance, "probs": probs, "entropy": entropy}
    if criterion == 2:
        stability = histogram_average(history, probs)
        score = score * normalize(stability)
        out["stability"] = stability
    out["score"] = score
    return out


def sgas_epochs(warmup_dec_epoch: int, decision_freq: int, decisions: int, post_train: int = 5) -> int:
    """The code's search length: ``warmup_dec_epoch + decision_freq·(decisions − 1) + post_train + 1``
    (``train_search.py``: 9 + 5·7 + 5 + 1 = 50 in the DARTS space, 8 decisions per cell)."""
    return warmup_dec_epoch + decision_freq * (decisions - 1) + post_train + 1


def decisions_per_cell(graph: Any, edges_per_node: int | None) -> int:
    """How many decisions fix every edge of ``graph``: Σ_nodes min(k, in-degree), or every edge."""
    if edges_per_node is None:
        return sum(len(incoming(graph, n)) for n in intermediate_nodes(graph))
    return sum(min(edges_per_node, len(incoming(graph, n))) for n in intermediate_nodes(graph))


class SGAS(Regulariser):
    """SGAS: after a warm-up, every F epochs fix each cell's best-scored edge (Criterion 1 or 2), batch +8 (CVPR 2020).

    The decisions, the supernet mask, the frozen α and the batch growth; pair it with the ``sgas``
    discretiser. Refused with ``trainer.fused_cells``, in populations and with an α warm-up.
    """

    @attrs.frozen
    class Config:
        criterion: int = help_field(1, "1: importance × certainty; 2: × stability over the last history_size epochs "
                                       "(the code's --use_history)", validator=one_of(1, 2))
        warmup_dec_epoch: int = help_field(9, "0-based epoch at whose end the first decision is made",
                                           validator=non_negative)
        decision_freq: int = help_field(5, "epochs between two decisions (F)", validator=positive)
        history_size: int = help_field(4, "epochs of p̄ Criterion 2's stability averages over (K)", validator=positive)
        batch_increase: int = help_field(8, "batch size added after each decision epoch", validator=non_negative)
        edges_per_node: Optional[int] = help_field(2, "inputs each node keeps (its other edges are dropped once it has "
                                                      "them); null: every edge is decided, none dropped (NB201)",
                                                   validator=positive)

    phases = ()

    def __init__(self, config=None):
        super().__init__(config)
        self.selected: dict[str, list[int]] = {}  # per cell type and edge: UNDECIDED, DROPPED or the op index
        self.history: dict[str, list[list[list[float]]]] = {}
        self.decision_epochs = 0
        self.decisions: list[dict[str, Any]] = []
        self._cells: dict[str, list[SearchCell]] = {}
        self._candidates: dict[str, list[int]] = {}
        self._frozen: dict[str, torch.Tensor] = {}  # α's decided rows' values ([E, O], device)
        self._mask: dict[str, torch.Tensor] = {}  # which rows are decided ([E, 1] bool, device)

    # ------------------------------------------------------------------ set-up

    def fast_path_refusal(self, switch: str) -> str | None:
        if switch == "trainer.fused_cells":
            return ("fixes decided edges to one op and drops pruned ones between epochs (SearchCell.fixed); the fused "
                    "cells compute every edge's ops")
        return None

    def attach(self, search: Any) -> None:
        if not isinstance(search.discretiser, SGASDiscretiser):
            raise PluginError(f"sgas: the recipe's discretiser is {search.recipe.discretiser.name!r}; the sgas "
                              f"regulariser's decisions are read by the sgas discretiser (discretiser: {{name: sgas}})")
        zero = search.search_space.zero_ops()
        for name, graph in search.cells.items():
            per_edge = set(edge_ops(graph))
            if len(per_edge) != 1:
                raise PluginError(f"sgas: the edges of cell {name!r} have different op lists; SGAS scores every edge "
                                  f"over the same ops")
            ops = per_edge.pop()
            cand = [i for i, op in enumerate(ops) if op not in zero]
            if len(cand) == len(ops):
                raise PluginError(f"sgas: cell {name!r} has no zero op (search space zero_ops(): {sorted(zero)}); "
                                  f"SGAS's edge importance is the weight of the ops other than 'none'")
            self._candidates[name] = cand
            self._cells[name] = [m for m in search.model.modules()
                                 if isinstance(m, SearchCell) and m.graph.graph.get("name") == name]
            if not self._cells[name]:
                raise PluginError(f"sgas: the supernet has no SearchCell of cell type {name!r} to mask")
            rows, width = search.alphas[name].shape
            self.selected.setdefault(name, [UNDECIDED] * rows)
            self.history.setdefault(name, [])
            self._frozen[name] = torch.zeros(rows, width, device=search.device, dtype=search.alphas[name].dtype)
            self._mask[name] = torch.zeros(rows, 1, dtype=torch.bool, device=search.device)
        self._device = search.device
        self._apply_masks()
        need = max(decisions_per_cell(g, self.config.edges_per_node) for g in search.cells.values())
        last = self.config.warmup_dec_epoch + self.config.decision_freq * (need - 1) + 1
        if search.epochs < last:
            log.warning("sgas: %d epochs leave edges undecided (the last of %d decisions per cell ends epoch %d; the "
                        "code runs %d epochs); the genotype fills them by edge importance", search.epochs, need,
                        last - 1, sgas_epochs(self.config.warmup_dec_epoch, self.config.decision_freq, need))

    def _apply_masks(self) -> None:
        for name, sel in self.selected.items():
            for cell in self._cells.get(name, []):
                cell.fixed = {e: (o if o >= 0 else None) for e, o in enumerate(sel) if o != UNDECIDED}

    # ------------------------------------------------------------------ during the search

    def after_arch_step(self, search: Any) -> None:
        """Put the decided rows of α back (the code freezes them: no step, no weight decay)."""
        with torch.no_grad():
            for name, mask in self._mask.items():
                a = search.alphas[name]
                a.copy_(torch.where(mask, self._frozen[name], a))

    def _decide(self, search: Any, name: str, epoch: int, probs: torch.Tensor, score: torch.Tensor) -> dict | None:
        sel = self.selected[name]
        cand = [e for e, o in enumerate(sel) if o == UNDECIDED]
        c = self.config
        if not cand or epoch < c.warmup_dec_epoch or (epoch - c.warmup_dec_epoch) % c.decision_freq:
            return None
        best = max(cand, key=lambda e: (float(score[e]), -e))  # the first maximum, as torch.argmax
        op = self._candidates[name][int(probs[best].argmax())]
        sel[best] = op
        graph = search.cells[name]
        dropped = []
        if c.edges_per_node is not None:  # model_search.py check_edges
            for node in intermediate_nodes(graph):
                rows = [r for _, r in incoming(graph, node)]
                if sum(sel[r] != UNDECIDED for r in rows) >= c.edges_per_node:
                    for r in rows:
                        if sel[r] == UNDECIDED:
                            sel[r] = DROPPED
                            dropped.append(r)
        alpha = search.alphas[name].detach()
        for r in [best] + dropped:
            self._frozen[name][r].copy_(alpha[r])
            self._mask[name][r] = True
        edges = {graph.edges[e]["index"]: e for e in graph.edges if "index" in graph.edges[e]}
        ops = edge_ops(graph)[best]
        return {"edge": list(edges[best]), "row": best, "op": ops[op],
                "dropped": [list(edges[r]) for r in dropped]}

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        info: dict[str, Any] = {"scores": {}, "decided": {}}
        probs_now = search.probabilities()
        made: dict[str, Any] = {}
        for name in self.selected:
            hist = [torch.tensor(h) for h in self.history[name]]
            q = edge_scores(probs_now[name], self._candidates[name], self.config.criterion, hist)
            if self.config.criterion == 2:
                self.history[name] = (self.history[name] + [q["probs"].tolist()])[-self.config.history_size:]
            d = self._decide(search, name, epoch, q["probs"], q["score"])
            if d is not None:
                made[name] = d
            info["scores"][name] = [round(float(v), 6) for v in q["score"]]
        if made:
            self.decision_epochs += 1
            self.decisions.append({"epoch": int(epoch), **made})
            self._apply_masks()
            search.set_batch_size(search.recipe.trainer.batch_size + self.config.batch_increase * self.decision_epochs)
            info["decision"] = made
        for name, sel in self.selected.items():
            ops = edge_ops(search.cells[name])
            info["decided"][name] = [None if o == UNDECIDED else ("dropped" if o == DROPPED else ops[e][o])
                                     for e, o in enumerate(sel)]
        info["batch_size"] = search.train_loader.batch_size
        record["sgas"] = info

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "selected": {k: list(v) for k, v in self.selected.items()},
                "history": {k: [list(map(list, h)) for h in v] for k, v in self.history.items()},
                "decision_epochs": self.decision_epochs, "decisions": list(self.decisions),
                "frozen": {k: v.detach().cpu() for k, v in self._frozen.items()},
                "mask": {k: v.detach().cpu() for k, v in self._mask.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.selected = {k: [int(o) for o in v] for k, v in state.get("selected", self.selected).items()}
        self.history = {k: [list(map(list, h)) for h in v] for k, v in state.get("history", self.history).items()}
        self.decision_epochs = int(state.get("decision_epochs", 0))
        self.decisions = list(state.get("decisions", []))
        for key, store in (("frozen", self._frozen), ("mask", self._mask)):
            for k, v in state.get(key, {}).items():
                if k in store:
                    store[k].copy_(v.to(store[k].device))
                else:
                    store[k] = v.clone()
        self._apply_masks()


def find_sgas(search: Any) -> SGAS:
    for reg in search.regularisers:
        if isinstance(reg, SGAS):
            return reg
    raise PluginError("discretiser sgas: the recipe has no sgas regulariser (it makes the decisions); add "
                      "{name: sgas} to regularisers")


class SGASDiscretiser(Discretiser):
    """SGAS's genotype: the decided edges, undecided nodes filled by edge importance (``get_genotype(force=True)``)."""

    def discretise(self, search):
        sgas = find_sgas(search)
        k = sgas.config.edges_per_node
        probs = search.probabilities()
        cells = {}
        for name, graph in search.cells.items():
            p = probs[name].detach().cpu()
            cand = sgas._candidates[name]
            sel = sgas.selected[name]
            importance = p[:, cand].sum(dim=1).tolist()
            ops = edge_ops(graph)
            strongest = lambda r: cand[int(p[r, cand].argmax())]  # noqa: E731 - argmax(alphas[j][1:]) + 1
            edges = []
            for node in intermediate_nodes(graph):
                preds = incoming(graph, node)
                decided = [(u, r, sel[r]) for u, r in preds if sel[r] >= 0]
                open_ = [(u, r) for u, r in preds if sel[r] == UNDECIDED]
                room = len(open_) if k is None else max(0, min(k, len(preds)) - sum(sel[r] != UNDECIDED for _, r in preds))
                fill = sorted(open_, key=lambda t: -importance[t[1]])[:room]  # stable: ties keep the lower source
                edges += [(u, node, ops[r][o]) for u, r, o in decided]
                edges += [(u, node, ops[r][strongest(r)]) for u, r in fill]
            cells[name] = CellGenotype(edges=edges, concat=graph.graph["concat"])
        return Genotype(space=search.search_space.name, cells=cells)


@hookimpl
def diffnas_register_regularisers(register):
    register("sgas", SGAS)


@hookimpl
def diffnas_register_discretisers(register):
    register("sgas", SGASDiscretiser)
