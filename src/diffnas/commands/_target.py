"""Shared argument handling of the evaluation commands: a genotype given as a string, a file or a run
directory (``genotype.json``, else the last ``metrics.jsonl`` line)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import DiffnasError
from ..core.genotype import Genotype


def load_genotype(target: str) -> tuple[Genotype, Path | None]:
    """``(genotype, run_dir or None)`` for ``target``: a run directory, a genotype file or a genotype string
    (JSON, an NB201 ``|op~0|+...`` string or a DARTS ``Genotype(...)`` string)."""
    if target.strip().startswith(("{", "|", "Genotype(")):  # a string (may be longer than a path may be)
        return Genotype.parse(target), None
    p = Path(target)
    if p.is_dir():
        gpath = p / "genotype.json"
        if gpath.exists():
            return Genotype.from_json(gpath.read_text(encoding="utf-8")), p
        metrics = p / "metrics.jsonl"
        if metrics.exists():
            lines = [ln for ln in metrics.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if lines:
                rec = json.loads(lines[-1])
                if "genotype" in rec:
                    return Genotype.parse(rec["genotype"]), p
        raise DiffnasError(f"{p}: no genotype.json or metrics.jsonl with a genotype (is it a search's run directory?)")
    if p.is_file():
        try:
            return Genotype.parse(p.read_text(encoding="utf-8")), None
        except DiffnasError as exc:
            raise DiffnasError(f"{p}: {exc}") from None
    raise DiffnasError(f"{target}: no such file or run directory, and not a genotype string "
                       f"(expected JSON, |op~0|+... or Genotype(...))")
