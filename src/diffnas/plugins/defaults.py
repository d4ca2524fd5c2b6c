"""Default decisions (``trylast`` so installed plugins can override them)."""

from __future__ import annotations

import torch

from ..core.hookspecs import hookimpl


@hookimpl(trylast=True)
def diffnas_resolve_device(requested: str):
    """``auto`` → ``cuda`` when a GPU is present, else ``cpu``; anything else → ``torch.device(requested)``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        return None
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None
    return dev
