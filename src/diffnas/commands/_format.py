"""How the command line prints numbers, scores and a run's per-epoch record (rounded, aligned)."""

from __future__ import annotations

import json
from typing import Any


def rounded(v: Any, digits: int = 4) -> Any:
    """``v`` with every float rounded to ``digits`` significant digits (dicts and lists walked)."""
    if isinstance(v, float):
        return float(f"{v:.{digits}g}")
    if isinstance(v, dict):
        return {k: rounded(x, digits) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [rounded(x, digits) for x in v]
    return v


def score_lines(scores: dict[str, Any], space: str | None = None) -> list[str]:
    """One line per scorer: NB201 test accuracies, the NB301 prediction in %, the reason a score
    is missing (``{"unavailable": reason}``), any other scorer as rounded JSON; with no scorer at
    all, a line that says so for the genotype's ``space``."""
    if not scores:
        return [f"scores: none (no installed scorer knows {space!r} genotypes; NB201 cells use the NB201 table, "
                f"DARTS cells the NB301 surrogate)"] if space else []
    lines = []
    for name, v in scores.items():
        if isinstance(v, dict) and "unavailable" in v:
            lines.append(f"{name}: not scored: {v['unavailable']}")
        elif name == "nb201" and isinstance(v, dict) and "cifar10_test" in v:
            lines.append(f"nb201 #{v['index']} test accuracy (200 epochs, mean of 3 seeds): cifar10 {v['cifar10_test']:.2f}  "
                         f"cifar100 {v['cifar100_test']:.2f}  imagenet16-120 {v['imagenet16_test']:.2f}"
                         + (f"  (searched on the {v['column'][:-5]} data)" if v.get("column") not in (None, "cifar10_test")
                            else ""))
        elif name == "nb301" and isinstance(v, dict) and "val_acc" in v:
            lines.append(f"nb301 surrogate: predicted CIFAR-10 val accuracy {100 * v['val_acc']:.2f}% (epoch {v['epoch']})")
        elif name != "nats":
            lines.append(f"{name}: {json.dumps(rounded(v), sort_keys=True)}")
    return lines


def result_lines(out: Any, summary: dict[str, Any]) -> list[str]:
    """What ``diffnas search`` prints when a search ends (and ``diffnas population`` for each member):
    the run directory, an early stop, the scores (:func:`score_lines`) and the genotype."""
    lines = [f"run directory: {out}"]
    if summary.get("stop_reason"):
        lines.append(f"stopped early: {summary['stop_reason']}")
    space = (summary.get("genotype_json") or {}).get("space")
    lines += score_lines(summary.get("scores", {}), space)
    lines.append(f"genotype: {summary['genotype']}")
    return lines


def _score_of(rec: dict) -> float | None:
    s = rec.get("scores", {})
    if not isinstance(s, dict):
        return None
    if isinstance(s.get("nb201"), dict) and "cifar10_test" in s["nb201"]:
        return s["nb201"].get("test", s["nb201"]["cifar10_test"])  # the searched dataset's column
    if isinstance(s.get("nb301"), dict) and "val_acc" in s["nb301"]:
        return 100 * s["nb301"]["val_acc"]
    return None


#: (header, width, value of a record or None, format)
_COLUMNS = (
    ("epoch", 5, lambda r: r.get("epoch"), "d"),
    ("train loss", 10, lambda r: r.get("train_loss"), ".4f"),
    ("train acc", 9, lambda r: r.get("train_acc"), ".2f"),
    ("valid loss", 10, lambda r: r.get("valid_loss"), ".4f"),
    ("valid acc", 9, lambda r: r.get("valid_acc"), ".2f"),
    ("lr", 8, lambda r: r.get("lr"), ".4g"),
    ("entropy", 7, lambda r: sum(r["entropy"].values()) / len(r["entropy"]) if r.get("entropy") else None, ".3f"),
    ("param-free", 10, lambda r: (r.get("ops") or {}).get("parameter_free"), "d"),
    ("score", 6, _score_of, ".2f"),
    ("time s", 7, lambda r: r.get("time_s"), ".1f"),
)


def epoch_table(history: list[dict]) -> list[str]:
    """The per-epoch record as an aligned table (columns present in some record only); ``epoch``
    is the 0-based index of ``metrics.jsonl``, ``score`` the current genotype's NB201 CIFAR-10 test
    accuracy or NB301 prediction (%), ``entropy`` the mean over cell types."""
    def value(get: Any, fmt: str, r: Any) -> Any:
        """The column's number in record ``r``, or None (absent, or of the wrong type in an edited file)."""
        try:
            v = get(r) if isinstance(r, dict) else None
        except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (fmt == "d" and not isinstance(v, int)):
            return None
        return v

    cols = [c for c in _COLUMNS if any(value(c[2], c[3], r) is not None for r in history)]
    lines = ["  ".join(f"{h:>{w}}" for h, w, _, _ in cols)]
    for r in history:
        cells = []
        for _, w, get, fmt in cols:
            v = value(get, fmt, r)
            cells.append(f"{'-':>{w}}" if v is None else f"{v:>{w}{fmt}}")
        lines.append("  ".join(cells))
    return lines


def _mean_of(d: Any) -> float | None:
    return sum(d.values()) / len(d) if isinstance(d, dict) and d else None


def step_table(history: list[dict], rows: int = 11) -> list[str]:
    """The step records (``diagnostics.every_steps``) as an aligned table: the parameter-free share
    and the skip weight of the op weights per cell type, the α entropy (mean over cell types), the
    current cell's score and, when recorded, the Hessian eigenvalue; at most ``rows`` records,
    evenly spaced, the first and the last among them. Empty when nothing was recorded."""
    from ..core.step_records import step_records

    recs = step_records(history)
    if not recs:
        return []
    cells = list(dict.fromkeys(c for r in recs for c in (r.get("parameter_free_share") or {})))
    cols: list[tuple[str, Any, str]] = [("step", lambda r: r.get("global_step"), "d")]
    for c in cells:
        cols.append((f"param-free share {c}", lambda r, c=c: (r.get("parameter_free_share") or {}).get(c), ".3f"))
    for c in cells:
        cols.append((f"skip {c}", lambda r, c=c: (r.get("skip_weight") or {}).get(c), ".3f"))
    cols += [("entropy", lambda r: _mean_of(r.get("entropy")), ".3f"), ("score", _score_of, ".2f"),
             ("hessian", lambda r: r.get("hessian_eigenvalue"), ".4g")]
    cols = [c for c in cols if any(c[1](r) is not None for r in recs)]
    if len(recs) > rows:
        picks = sorted({round(i * (len(recs) - 1) / (rows - 1)) for i in range(rows)})
        shown = [recs[i] for i in picks]
    else:
        shown = recs
    widths = [max(len(h), 6) for h, _, _ in cols]
    lines = ["  ".join(f"{h:>{w}}" for (h, _, _), w in zip(cols, widths))]
    for r in shown:
        cells_ = []
        for (_, get, fmt), w in zip(cols, widths):
            v = get(r)
            cells_.append(f"{'-':>{w}}" if v is None else f"{v:>{w}{fmt}}")
        lines.append("  ".join(cells_))
    return lines
