"""``trainer.init_from``: start a search from another run's trained supernet.

The literature ties DARTS's collapse to a *trained* supernet (DARTS-PT; Zhang & Ding, CIKM 2021),
so a study's arms can all fork from one warm-up run (``warmup:`` in a study, see
:mod:`diffnas.study.schema`): each arm loads that run's supernet weights (BatchNorm statistics
included) and, when ``alphas: true``, its α; optimiser states, data order and RNG streams are the
arm's own, and its learning-rate schedule starts afresh.

The source is read like any checkpoint (:func:`diffnas.core.outputs.load_checkpoint`: tensors and
plain data only), its tensors must match this search's supernet name for name and shape for shape
(every mismatch is reported at ``recipe.trainer.init_from``), and what was loaded is returned for
``provenance.json``: the checkpoint's path, SHA-256, recipe fingerprint and position.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from . import limits
from .errors import RecipeError

WHERE = "recipe.trainer.init_from"


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint ``path`` names: a file, or a run directory's ``checkpoint.pt``."""
    from .outputs import CHECKPOINT

    p = Path(path).expanduser()
    return p / CHECKPOINT if p.is_dir() else p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mismatches(want: dict[str, torch.Tensor], have: Any, what: str) -> list[str]:
    """How the source's tensors ``have`` differ from this search's ``want`` (names, shapes, dtypes)."""
    if not isinstance(have, dict):
        return [f"its {what} is {type(have).__name__}, not a mapping of tensors"]
    out = []
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    if missing:
        out.append(f"{what} lacks {len(missing)} tensor(s) this search has: {', '.join(map(limits.short, missing[:4]))}"
                   + (" ..." if len(missing) > 4 else ""))
    if extra:
        out.append(f"{what} has {len(extra)} tensor(s) this search lacks: {', '.join(map(limits.short, extra[:4]))}"
                   + (" ..." if len(extra) > 4 else ""))
    for k, w in want.items():
        h = have.get(k)
        if h is None or k in missing:
            continue
        if not isinstance(h, torch.Tensor):
            out.append(f"{what} {limits.short(k)} is {type(h).__name__}, not a tensor")
        elif tuple(h.shape) != tuple(w.shape):
            out.append(f"{what} {limits.short(k)} has shape {list(h.shape)}, this search {list(w.shape)}")
        elif h.dtype != w.dtype and (h.is_floating_point() != w.is_floating_point()):
            out.append(f"{what} {limits.short(k)} is {h.dtype}, this search {w.dtype}")
    return out


def load_init_source(search: Any) -> dict[str, Any]:
    """Load ``search.recipe.trainer.init_from`` into ``search`` (a fresh :class:`~.engine.Search`)
    and return what was loaded (for ``provenance.json``). Every problem is a :class:`RecipeError`
    at ``recipe.trainer.init_from``, raised before anything is changed."""
    from .outputs import load_checkpoint

    cfg = search.recipe.trainer.init_from
    src = search.resolved.source
    path = checkpoint_path(cfg.path)
    if not path.exists() and not path.is_symlink():
        raise RecipeError([(f"{path} not found (init_from names a run directory holding checkpoint.pt, or a "
                            f"checkpoint file)", f"{WHERE}.path")], src)
    if search.out_dir is not None and path.resolve().parent == Path(search.out_dir).resolve():
        raise RecipeError([(f"{path} is this run's own checkpoint; init_from names another run", f"{WHERE}.path")], src)
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - load_checkpoint's own errors name the file already
        raise RecipeError([(f"cannot start from {path}: {exc}", f"{WHERE}.path")], src) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise RecipeError([(f"{path} is not a diffnas search checkpoint (no supernet weights)", f"{WHERE}.path")], src)
    problems = [(f"{path} does not fit this search's supernet: {m} (the source must be a search of the same "
                 f"search space and params, fused_cells and regularisers that change the supernet)", f"{WHERE}.path")
                for m in _mismatches(search.model.state_dict(), ckpt["model"], "the supernet")]
    if cfg.alphas:
        alphas = {k: a.detach() for k, a in search.alphas.items()}
        problems += [(f"{path}: {m}", f"{WHERE}.alphas") for m in _mismatches(alphas, ckpt.get("alphas"), "α")]
    if problems:
        raise RecipeError(problems, src)
    weights = {k: v for k, v in ckpt["model"].items()}
    bad = [k for k, w in weights.items() if w.is_floating_point() and not bool(torch.isfinite(w).all())]
    if cfg.alphas:
        bad += [f"α {k}" for k, a in ckpt["alphas"].items() if not bool(torch.isfinite(a).all())]
    if bad:
        raise RecipeError([(f"{path} holds non-finite values ({', '.join(map(limits.short, bad[:4]))})", f"{WHERE}.path")], src)
    search.model.load_state_dict({k: v.to(search.device) for k, v in weights.items()})
    if cfg.alphas:
        with torch.no_grad():
            for k, a in search.alphas.items():
                a.copy_(ckpt["alphas"][k].to(a.device, a.dtype))
    state = ckpt.get("state") if isinstance(ckpt.get("state"), dict) else {}
    return {"path": str(path.resolve()), "checkpoint_sha256": _sha256(path),
            "recipe_sha256": str(ckpt.get("recipe_sha256")),
            "epoch": state.get("epoch"), "step": state.get("step"), "global_step": state.get("global_step"),
            "finished": state.get("finished"), "alphas": bool(cfg.alphas)}
