"""Scores DARTS-space genotypes with the NAS-Bench-301 surrogate (see :mod:`diffnas.benchmarks.nb301`).

Silent (``None``) for other spaces. For a DARTS-space genotype it cannot score (onnxruntime missing,
a ``none`` op, a node without two distinct inputs) it answers ``{"nb301": {"unavailable": reason}}``
instead of failing, so a search goes on and ``metrics.jsonl``, ``diffnas search``, ``show`` and
``score`` say why the score is missing.
"""

from __future__ import annotations

from ...benchmarks.nb301 import MAX_EPOCH, load_surrogate
from ...core.errors import DiffnasError
from ...core.hookspecs import hookimpl


@hookimpl
def diffnas_score_genotype(genotype, context):
    """``{"nb301": {"val_acc": predicted CIFAR-10 validation accuracy (0-1), "epoch": 98}}`` for DARTS
    cells, or ``{"nb301": {"unavailable": reason}}``."""
    if genotype.space != "darts" or set(genotype.cells) != {"normal", "reduce"}:
        return None
    try:
        surrogate = load_surrogate(context.get("data_root"))
        acc = surrogate.predict(genotype, MAX_EPOCH)
    except DiffnasError as exc:
        return {"nb301": {"unavailable": str(exc)}}
    return {"nb301": {"val_acc": round(float(acc), 6), "epoch": MAX_EPOCH}}
