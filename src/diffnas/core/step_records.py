"""Collapse diagnostics at step resolution (recipe setting ``diagnostics.every_steps``).

Every ``every_steps`` global steps, and before the run's first step (so that curves start at the
initial α), the engine records between two steps (:meth:`Search._step_diagnostics`)::

    {"global_step": 40,               # steps done when recorded (0: the initial α)
     "epoch": 1,                      # the epoch the step belongs to (0-based)
     "parameter_free_share": {"normal": 0.61},  # per cell type: mean over edges of the op-weight mass
                                                # on the space's parameter_free_ops() (NB201 uniform: 0.6)
     "skip_weight": {"normal": 0.21}, # per cell type: mean over edges of the skip_op()'s weight
     "entropy": {"normal": 1.60},     # per cell type: the engine's α entropy (as in the epoch record)
     "genotype": "|nor_conv_3x3~0|+...",       # the discretiser's current genotype
     "scores": {"nb201": {...}},      # the scorers' answers for it (NB201: a table look-up)
     "hessian_eigenvalue": 0.12}      # with diagnostics.step_hessian (the diagnostics plugin)

Op weights are the relaxation's deterministic strengths (``Search.probabilities``) normalised per
edge, as the entropy normalises them (a sigmoid relaxation's gates become shares of the edge's total).
Plugins add keys through the ``diffnas_step_diagnostics`` hook. The records of an epoch are kept in
``SearchState.step_records`` (so a checkpoint carries them) and moved into that epoch's
``metrics.jsonl`` record under ``"steps"`` at its end; :func:`step_records` reads them back
for ``steps.csv`` and :meth:`diffnas.api.Run.step_column`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import torch

from .cells import edge_ops

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Search

#: the per-run CSV of the step records, beside ``scalars.csv``
STEPS_CSV = "steps.csv"


def op_shares(probs: dict[str, torch.Tensor], cells: dict[str, Any], free: Iterable[str],
              skip: str | None) -> dict[str, dict[str, float]]:
    """``{"parameter_free_share": {cell: ...}, "skip_weight": {cell: ...}}``: per cell type, the mean
    over edges of the normalised op-weight mass on the ``free`` ops and on the ``skip`` op (an edge
    without that op counts 0; no ``skip_weight`` when ``skip`` is ``None``)."""
    free = frozenset(free)
    out: dict[str, dict[str, float]] = {"parameter_free_share": {}}
    if skip is not None:
        out["skip_weight"] = {}
    for cell, p in probs.items():
        q = (p / p.sum(-1, keepdim=True).clamp_min(1e-12)).double()
        ops = edge_ops(cells[cell])
        mask = torch.tensor([[op in free for op in row] for row in ops], dtype=q.dtype, device=q.device)
        out["parameter_free_share"][cell] = float((q * mask).sum(-1).mean())
        if skip is not None:
            mask = torch.tensor([[op == skip for op in row] for row in ops], dtype=q.dtype, device=q.device)
            out["skip_weight"][cell] = float((q * mask).sum(-1).mean())
    return out


def step_record(search: "Search") -> dict[str, Any]:
    """The step record of ``search`` as it is now (see the module docstring); the caller forks the
    random state around it. Host synchronisations here are expected: it runs on recording steps only."""
    from .engine import entropy

    st = search.state
    probs = search.probabilities()
    space = search.search_space
    record: dict[str, Any] = {"global_step": st.global_step, "epoch": st.epoch}
    record.update(op_shares(probs, search.cells, space.parameter_free_ops(), space.skip_op()))
    record["entropy"] = {k: float(entropy(p)) for k, p in probs.items()}
    genotype = search.discretiser.discretise(search)
    record["genotype"] = str(genotype)
    record["scores"] = search.score(genotype, {"epoch": st.epoch, "global_step": st.global_step})
    search._fire("diffnas_step_diagnostics", search=search, record=record)
    return record


def step_records(history: Iterable[dict]) -> list[dict]:
    """Every step record of a run's epoch records (``metrics.jsonl``), oldest first."""
    return [s for rec in history for s in (rec.get("steps") or []) if isinstance(s, dict)]


def lookup(record: dict, key: str) -> Any:
    """``record``'s value at a dotted ``key`` (``"parameter_free_share.normal"``), else ``None``."""
    v: Any = record
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v
