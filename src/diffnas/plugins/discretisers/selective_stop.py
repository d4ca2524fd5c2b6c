"""Operation-magnitude selective stop (SS-DARTS; Zhang & Ding, "Delve into the Performance Degradation
of Differentiable Architecture Search", CIKM 2021, doi 10.1145/3459637.3482248; METHODS.md §3.6, §9).

After every epoch e the op magnitude m_e = Σ_edges p_e (a vector over ops, p = the relaxation's op
strengths of the normal cell) and the current genotype are recorded. The NB201 rule of the authors'
code (``chaoji90/Selective-Stop: AutoDL-Projects_ss/exps/algos/DARTS-V1.py``): m_e is kept for every
epoch until the tracked op (``nor_conv_3x3``) first becomes the largest entry of m_e; after that it is
kept only in epochs where that op leads, and zeros otherwise. The search returns the genotype of the
epoch e* = argmax_e m_e[op] (the first such epoch on ties, as ``numpy.argmax``). ``score: margin`` uses
the code's alternative r_e = Σ_o (m_e[op] − m_e[o]) instead (epochs not kept never win); with a
softmax relaxation Σ_o m_e[o] is the number of edges, so r_e = |O|·m_e[op] − |E| ranks epochs as the
magnitude does, and the two differ only for relaxations that do not sum to one (sigmoid).

ASSUMPTION (METHODS.md §9) for spaces without ``nor_conv_3x3``: the tracked op is a parameter; by
default it is the parametric op with the largest summed weight at the end of warm-up
(``warmup_epochs``), and the score is that op's summed weight over the normal cell's edges.

The per-epoch genotype comes from a stateless *base* policy (``argmax_per_edge`` by default). The
history is plain data in :meth:`state_dict`, so a resumed search selects from every epoch.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from ...core.cells import edge_ops
from ...core.config import help_field, non_negative, one_of
from ...core.errors import PluginError
from ...core.genotype import Genotype
from ...core.hookspecs import hookimpl
from .base_policy import WrappingDiscretiser

NB201_TRACKED_OP = "nor_conv_3x3"


def selection_scores(magnitudes: Sequence[Sequence[float]], op_index: int, score: str = "magnitude") -> list[float]:
    """Per-epoch scores of the NB201 selective-stop rule (METHODS.md §3.6).

    :param magnitudes: m_e for each recorded epoch, in order (each a list over ops).
    :param op_index: the tracked op's position in m_e.
    :param score: ``magnitude`` (m_e[op]) or ``margin`` (Σ_o (m_e[op] − m_e[o])).
    :returns: one score per epoch: epochs up to the op's first lead, and later epochs where it leads,
        get their score; other epochs get 0 (``magnitude``, as the code's zero vector) or −inf (``margin``).
    """
    out = []
    led = False
    for m in magnitudes:
        leads = max(range(len(m)), key=lambda i: (m[i], -i)) == op_index  # first maximum, as argmax
        keep = leads or not led
        led = led or leads
        if score == "magnitude":
            out.append(float(m[op_index]) if keep else 0.0)
        else:
            out.append(float(sum(m[op_index] - v for v in m)) if keep else float("-inf"))
    return out


def select_epoch(magnitudes: Sequence[Sequence[float]], op_index: int, score: str = "magnitude") -> int:
    """The position (in ``magnitudes``) of the selected epoch: the first maximum of :func:`selection_scores`."""
    s = selection_scores(magnitudes, op_index, score)
    return max(range(len(s)), key=lambda i: (s[i], -i))


class SelectiveStop(WrappingDiscretiser):
    """The genotype of the epoch where the tracked op's summed weight peaks (SS-DARTS, CIKM 2021)."""

    @attrs.frozen
    class Config:
        op: str | None = help_field(None, "tracked op (default: nor_conv_3x3 if the cell has it, else the parametric op "
                                          "with the largest summed weight at the end of warm-up; ASSUMPTION)")
        score: str = help_field("magnitude", "'magnitude': m_e[op]; 'margin': Σ_o (m_e[op] − m_e[o]) (the code's alternative)",
                                validator=one_of("magnitude", "margin"))
        warmup_epochs: int = help_field(0, "epochs after which the default op is chosen, where no nor_conv_3x3 exists",
                                        validator=non_negative)
        cell: str | None = help_field(None, "cell type whose magnitudes are tracked (default: the search space's "
                                            "primary_cell(), e.g. normal)")
        base: str = help_field("argmax_per_edge", "policy giving each epoch's genotype (argmax_per_edge, top_k_edges ...)")
        base_params: dict[str, Any] = help_field(attrs.Factory(dict), "the base policy's params")

    registered_name = "selective_stop"

    def __init__(self, config=None):
        super().__init__(config)
        self.history: list[dict[str, Any]] = []  # {"epoch", "magnitude", "genotype"}
        self.op: str | None = self.config.op
        self.chosen_epoch: int | None = None

    def check_composition(self, composition):
        """The base policy (as every wrapping policy), the tracked cell type and op (validate-time)."""
        problems = super().check_composition(composition)
        cells = composition.cells()
        cell = self.config.cell if self.config.cell is not None else composition.components["search_space"].primary_cell()
        if cell not in cells:
            return problems + [(f"selective_stop: unknown cell type {cell!r}; this search space has {sorted(cells)}",
                                f"{self.key_path}.params.cell")]
        per_edge = set(edge_ops(cells[cell]))
        if len(per_edge) != 1:
            return problems + [("selective_stop needs the same candidate ops on every edge of the tracked cell",
                                f"{self.key_path}.params.cell")]
        ops = per_edge.pop()
        if self.config.op is not None and self.config.op not in ops:
            problems.append((f"selective_stop: op {self.config.op!r} is not a candidate; candidates: {', '.join(ops)}",
                             f"{self.key_path}.params.op"))
        return problems

    # ------------------------------------------------------------------ helpers

    def _cell(self, search: Any) -> str:
        """The tracked cell type: ``cell``, or the space's primary cell."""
        return self.config.cell if self.config.cell is not None else search.search_space.primary_cell()

    def _ops(self, search: Any) -> tuple[str, ...]:
        cell = self._cell(search)
        if cell not in search.cells:
            raise PluginError(f"selective_stop: unknown cell type {cell!r}; "
                              f"this search space has {sorted(search.cells)}")
        per_edge = set(edge_ops(search.cells[cell]))
        if len(per_edge) != 1:
            raise PluginError("selective_stop needs the same candidate ops on every edge of the tracked cell")
        return per_edge.pop()

    def _choose_op(self, search: Any, ops: tuple[str, ...], epoch: int, magnitude: list[float]) -> None:
        if self.op is not None:
            if self.op not in ops:
                raise PluginError(f"selective_stop: op {self.op!r} is not a candidate; candidates: {', '.join(ops)}")
            return
        if NB201_TRACKED_OP in ops:
            self.op = NB201_TRACKED_OP
        elif epoch + 1 >= self.config.warmup_epochs:
            free = search.search_space.parameter_free_ops()
            param = [i for i, o in enumerate(ops) if o not in free]
            if not param:
                raise PluginError("selective_stop: the tracked cell has no parametric op; set 'op'")
            self.op = ops[max(param, key=lambda i: magnitude[i])]

    # ------------------------------------------------------------------ discretiser

    def discretise(self, search):
        return self.base(search).discretise(search)

    def final(self, search):
        if self.op is None or not self.history:
            return self.base(search).final(search)
        ops = self._ops(search)
        pos = select_epoch([h["magnitude"] for h in self.history], ops.index(self.op), self.config.score)
        self.chosen_epoch = int(self.history[pos]["epoch"])
        return Genotype.from_dict(self.history[pos]["genotype"])

    # ------------------------------------------------------------------ lifecycle

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        ops = self._ops(search)
        magnitude = [float(v) for v in search.probabilities()[self._cell(search)].sum(0).tolist()]
        self.history = [h for h in self.history if h["epoch"] < epoch]  # a re-run epoch replaces its entry
        self.history.append({"epoch": int(epoch), "magnitude": magnitude,
                             "genotype": self.base(search).discretise(search).to_dict()})
        self._choose_op(search, ops, epoch, magnitude)
        info: dict[str, Any] = {"op": self.op, "magnitude": [round(v, 6) for v in magnitude]}
        if self.op is not None:
            pos = select_epoch([h["magnitude"] for h in self.history], ops.index(self.op), self.config.score)
            info["best_epoch"] = int(self.history[pos]["epoch"])
        record["selective_stop"] = info

    @hookimpl
    def diffnas_search_end(self, search, genotype, record):
        if self.chosen_epoch is not None:
            record["selective_stop"] = {"epoch": self.chosen_epoch, "op": self.op, "score": self.config.score}

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self):
        state = super().state_dict()
        state["history"] = [{"epoch": h["epoch"], "magnitude": list(h["magnitude"]), "genotype": h["genotype"]}
                            for h in self.history]
        state["op"] = self.op
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.history = [dict(h) for h in state.get("history", [])]
        self.op = state.get("op", self.config.op)


@hookimpl
def diffnas_register_discretisers(register):
    register("selective_stop", SelectiveStop)
