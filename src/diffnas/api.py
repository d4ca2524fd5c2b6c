"""The programmatic entry points behind the CLI (usable from notebooks and launchers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .core.engine import Search
from .core.errors import RunError
from .core.outputs import CHECKPOINT, load_checkpoint
from .core.recipe import ResolvedRecipe, load_recipe, read_yaml, resolve_recipe
from .registry import Catalogue, get_plugin_manager


def catalogue(autoload: bool | None = None) -> Catalogue:
    """A fresh plugin manager and its catalogue."""
    return Catalogue(get_plugin_manager(autoload=autoload))


def prepare(recipe: str | os.PathLike | dict, overrides: list[str] | None = None, cat: Catalogue | None = None) -> tuple[ResolvedRecipe, Catalogue]:
    cat = cat or catalogue()
    if isinstance(recipe, dict):
        from .core.recipe import apply_overrides

        return resolve_recipe(apply_overrides(recipe, overrides or []), cat), cat
    return load_recipe(recipe, cat, overrides), cat


def search(recipe: str | os.PathLike | dict, out: str | os.PathLike | None = None, overrides: list[str] | None = None,
           progress: bool | None = None, cat: Catalogue | None = None, data: Any = None) -> dict[str, Any]:
    """Run a search from a recipe file (or dict); return its summary."""
    resolved, cat = prepare(recipe, overrides, cat)
    out = out if out is not None else resolved.recipe.output.dir
    s = Search(resolved, cat.pm, cat, out, data=data)
    return s.run(progress=progress)


def resume(run_dir: str | os.PathLike, progress: bool | None = None, cat: Catalogue | None = None) -> dict[str, Any]:
    """Continue a search from ``RUN_DIR/checkpoint.pt`` with the run's saved recipe."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.exists():
        raise RunError(f"nothing to resume in {run_dir}: no {CHECKPOINT}")
    cat = cat or catalogue()
    resolved = resolve_recipe(read_yaml(run_dir / "recipe.yaml"), cat, source=str(run_dir / "recipe.yaml"))
    s = Search(resolved, cat.pm, cat, run_dir)
    ckpt = load_checkpoint(ckpt_path, map_location=s.device)
    try:
        s.load_state_dict(ckpt)
    except RunError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # incomplete, or another recipe's checkpoint
        raise RunError(f"checkpoint {ckpt_path} does not fit the run's recipe {run_dir / 'recipe.yaml'} "
                       f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    s.last_checkpoint = {"path": str(ckpt_path), "epoch": s.state.epoch, "step": s.state.step}
    return s.run(progress=progress)
