"""Shared argument handling of the evaluation commands: a genotype given as a string, a file or a run
directory (``genotype.json``, else the last ``metrics.jsonl`` line)."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import DiffnasError
from ..core.genotype import Genotype
from ..core.limits import MAX_JSON_BYTES, read_jsonl, read_text, short


def load_genotype(target: str) -> tuple[Genotype, Path | None]:
    """``(genotype, run_dir or None)`` for ``target``: a run directory, a genotype file or a genotype string
    (JSON, an NB201 ``|op~0|+...`` string or a DARTS ``Genotype(...)`` string)."""
    if target.strip().startswith(("{", "|", "Genotype(")):  # a string (may be longer than a path may be)
        return Genotype.parse(target), None
    p = Path(target)
    kind = _kind(p)
    if kind == "dir":
        gpath = p / "genotype.json"
        if gpath.exists():
            return _parse_file(gpath), p
        metrics = p / "metrics.jsonl"
        if metrics.exists():
            records = read_jsonl(metrics, objects=True)
            if records and isinstance(records[-1], dict) and isinstance(records[-1].get("genotype"), str):
                try:
                    return Genotype.parse(records[-1]["genotype"]), p
                except DiffnasError as exc:
                    raise DiffnasError(f"{metrics}, last record: {exc}") from None
        raise DiffnasError(f"{p}: no genotype.json or metrics.jsonl with a genotype (is it a search's run directory?)")
    if kind == "file":
        return _parse_file(p), None
    raise DiffnasError(f"{short(target)}: no such file or run directory, and not a genotype string "
                       f"(expected JSON, |op~0|+... or Genotype(...))")


def _kind(p: Path) -> str | None:
    """``"dir"``, ``"file"`` (anything else that exists) or ``None``: also for a text that cannot be a
    path at all (too long a name, a NUL byte), which then is no file and no genotype either."""
    import os
    import stat

    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def _parse_file(path: Path) -> Genotype:
    """The genotype in a file (bounded read: a regular, UTF-8 file of at most MAX_JSON_BYTES)."""
    try:
        text = read_text(path, MAX_JSON_BYTES, "genotype file")
    except OSError as exc:
        raise DiffnasError(f"cannot read genotype file {path}: {exc.strerror or exc}") from None
    try:
        return Genotype.parse(text)
    except DiffnasError as exc:
        raise DiffnasError(f"{path}: {exc}") from None
