"""Where data files are looked for: the recipe's ``data.root``, else ``DIFFNAS_DATA_ROOT``, else
``~/.cache/diffnas/data`` (torchvision downloads go there too)."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "DIFFNAS_DATA_ROOT"


def data_root(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "diffnas" / "data"


def embedded_path(name: str) -> Path:
    """A file shipped inside the package (the CIFAR-10 sample, the NB201 table)."""
    return Path(__file__).parent / "embedded" / name
