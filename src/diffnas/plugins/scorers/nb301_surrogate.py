"""Scores DARTS-space genotypes with the NAS-Bench-301 surrogate (see :mod:`diffnas.benchmarks.nb301`).

Silent (``None``) for other spaces, for genotypes the surrogate cannot encode (a ``none`` or ``noise``
op, a node without two distinct inputs) and when the surrogate files or onnxruntime are missing, so
that a search never fails for want of an optional scorer. ``diffnas score`` reports why instead.
"""

from __future__ import annotations

import logging

from ...benchmarks.nb301 import MAX_EPOCH, load_surrogate
from ...core.errors import DiffnasError
from ...core.hookspecs import hookimpl

log = logging.getLogger(__name__)


@hookimpl
def diffnas_score_genotype(genotype, context):
    """``{"nb301": {"val_acc": predicted CIFAR-10 validation accuracy (0-1), "epoch": 98}}`` for DARTS cells."""
    if genotype.space != "darts" or set(genotype.cells) != {"normal", "reduce"}:
        return None
    try:
        surrogate = load_surrogate(context.get("data_root"))
        acc = surrogate.predict(genotype, MAX_EPOCH)
    except DiffnasError as exc:
        log.debug("nb301 surrogate skipped: %s", exc)
        return None
    return {"nb301": {"val_acc": round(float(acc), 6), "epoch": MAX_EPOCH}}
