"""The Python API: what the ``diffnas`` command line does, for notebooks, scripts and launchers.

Every function takes paths or plain data and returns plain data (dicts, lists) or a small object;
bad input raises :class:`~diffnas.core.errors.DiffnasError` with the same message the CLI prints.

* :func:`search` / :func:`resume`: run a search from a recipe file or dict, or continue one;
* :func:`load_run`: a run directory read back (:class:`Run`: recipe, per-epoch records, result,
  genotype, :meth:`Run.column` and, for step records, :meth:`Run.step_column` for plotting);
* :func:`score`: benchmark numbers for a genotype (NB201 table, NB301 surrogate, other scorers);
* :func:`train`: retrain a genotype's discrete network from scratch;
* :func:`study`: run a study (many searches) and write its tables and plots;
* :func:`prepare` / :func:`catalogue`: validate a recipe, list the installed components.

Example (the README's "Python API" section runs it as a test)::

    from diffnas import api

    summary = api.search("examples/recipes/quickstart.yaml", out="runs/nb",
                         overrides=["trainer.epochs=2"])
    run = api.load_run("runs/nb")
    run.column("valid_acc")            # one value per epoch
    api.score(run.genotype)["scores"]  # NB201 test accuracies of the found cell
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import attrs

from .core.errors import DiffnasError, RecipeError, RunError
from .core.genotype import Genotype
from .registry import Catalogue, get_plugin_manager

__all__ = ["Run", "build_trainer", "catalogue", "load_run", "prepare", "resume", "score", "score_all", "search", "study",
           "train"]

class ArgumentError(DiffnasError, TypeError):
    """An API function was called with an argument of the wrong type (a :class:`DiffnasError`, as
    the module promises, and a ``TypeError``, as Python code expects)."""


def _path(value: Any, name: str) -> Path:
    """``value`` as a path: a ``str`` or ``os.PathLike``, else :class:`ArgumentError` naming ``name``."""
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        return Path(value)
    raise ArgumentError(f"{name}: expected a path (str or os.PathLike), got {type(value).__name__} {_short(value)}")


def _recipe_arg(value: Any, name: str = "recipe") -> Any:
    """A recipe argument: a path or a dict (its contents are checked by the recipe schema)."""
    return value if isinstance(value, dict) else _path(value, name)


def _strings(value: Any, name: str) -> list[str]:
    """A list of strings (``None``: empty); a lone string is refused (it would be read letter by letter)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ArgumentError(f"{name}: expected a list of strings, got {type(value).__name__} {_short(value)}")
    out = list(value)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise ArgumentError(f"{name}[{i}]: expected a string, got {type(v).__name__} {_short(v)}")
    return out


def _list(value: Any, name: str) -> list[Any]:
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise ArgumentError(f"{name}: expected a list, got {type(value).__name__} {_short(value)}")
    return list(value)


def _flag(value: Any, name: str, optional: bool = False) -> Any:
    if (optional and value is None) or isinstance(value, bool):
        return value
    raise ArgumentError(f"{name}: expected true or false{' (or None)' if optional else ''}, got "
                        f"{type(value).__name__} {_short(value)}")


def _short(value: Any) -> str:
    from .core.limits import short

    return short(value)


def catalogue(autoload: bool | None = None) -> Catalogue:
    """A fresh plugin manager and its catalogue (bundled plugins and installed entry points;
    ``autoload=False``: bundled only)."""
    return Catalogue(get_plugin_manager(autoload=autoload))


def prepare(recipe: str | os.PathLike | dict, overrides: Sequence[str] | None = None, cat: Catalogue | None = None,
            loggers: Iterable[str] = ()) -> tuple[Any, Catalogue]:
    """Read and validate a recipe (a file or a dict), with ``key.path=value`` overrides and extra
    loggers by name (``--logger``); return ``(ResolvedRecipe, Catalogue)``.

    :raises RecipeError: every problem of the recipe at once, naming the file and key paths.
    """
    from .core.recipe import apply_overrides, read_yaml, resolve_recipe

    recipe = _recipe_arg(recipe)
    overrides, loggers = _strings(overrides, "overrides"), _strings(loggers, "loggers")
    cat = cat or catalogue()
    source = None if isinstance(recipe, dict) else str(recipe)
    data = recipe if isinstance(recipe, dict) else read_yaml(recipe)
    if not isinstance(data, dict):  # resolve_recipe says what was expected
        return resolve_recipe(data, cat, source=source), cat
    data = apply_overrides(data, overrides, source=source)
    if loggers:
        present = data.get("loggers") or []
        if not isinstance(present, list):
            raise RecipeError([(f"expected a list of loggers, got {type(present).__name__}", "recipe.loggers")], source)
        names = {ref.get("name") for ref in present if isinstance(ref, dict)}
        data["loggers"] = present + [{"name": n} for n in loggers if n not in names]
    return resolve_recipe(data, cat, source=source), cat


def search(recipe: str | os.PathLike | dict, out: str | os.PathLike | None = None, overrides: Sequence[str] | None = None,
           progress: bool | None = None, cat: Catalogue | None = None, data: Any = None,
           loggers: Iterable[str] = (), overwrite: bool = False) -> dict[str, Any]:
    """Run a search from a recipe file (or dict) into the run directory ``out`` (default: the
    recipe's ``output.dir``; ``None`` for both writes nothing).

    :param overrides: ``["trainer.epochs=5", ...]`` as ``--set``.
    :param loggers: logger names to add (``["tensorboard"]``), as ``--logger``.
    :param data: a preloaded :class:`~diffnas.core.protocols.DataBundle` (skips loading ``recipe.data``).
    :param overwrite: replace an earlier run in ``out`` (moved aside until the new run's first
        checkpoint), as ``--overwrite``; without it a directory holding a run is refused (:class:`RunError`).
    :returns: the summary written to ``result.json``: ``genotype`` (string), ``genotype_json``,
        ``scores``, ``epochs_run``, ``stop_reason``, ``search_time_s``, ``wall_time_s``.
    """
    from .core.engine import Search

    out = None if out is None else _path(out, "out")
    _flag(progress, "progress", optional=True), _flag(overwrite, "overwrite")
    resolved, cat = prepare(recipe, overrides, cat, loggers)
    out = out if out is not None else resolved.recipe.output.dir
    return Search(resolved, cat.pm, cat, out, data=data, overwrite=overwrite).run(progress=progress)


def resume(run_dir: str | os.PathLike, progress: bool | None = None, cat: Catalogue | None = None,
           force: bool = False) -> dict[str, Any]:
    """Continue a search from ``RUN_DIR/checkpoint.pt`` with the run's saved recipe; returns the
    summary as :func:`search` does.

    :param force: resume even if ``recipe.yaml`` was edited since the checkpoint was written (the
        checkpoint holds the recipe's fingerprint); the next ``metrics.jsonl`` record notes it."""
    from .core.engine import Search
    from .core.outputs import CHECKPOINT, load_search_checkpoint, recipe_change_note, restore_search
    from .core.recipe import read_yaml, resolve_recipe

    run_dir = _path(run_dir, "run_dir")
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.exists() and not ckpt_path.is_symlink():
        raise RunError(f"nothing to resume in {run_dir}: no {CHECKPOINT}")
    cat = cat or catalogue()
    recipe_path = run_dir / "recipe.yaml"
    resolved = resolve_recipe(read_yaml(recipe_path), cat, source=str(recipe_path))
    ckpt = load_search_checkpoint(ckpt_path)
    note = recipe_change_note(ckpt, resolved, ckpt_path, recipe_path, force)
    s = Search(resolved, cat.pm, cat, run_dir)
    if s.device.type != "cpu":  # as before: tensors straight onto the search's device
        ckpt = load_search_checkpoint(ckpt_path, map_location=s.device)
    restore_search(s, ckpt, ckpt_path, recipe_path, note)
    s.last_checkpoint = {"path": str(ckpt_path), "epoch": s.state.epoch, "step": s.state.step}
    return s.run(progress=progress)


# --------------------------------------------------------------------------- runs


@attrs.frozen
class Run:
    """A search's run directory read back (see :mod:`diffnas.core.outputs` for the files).

    :ivar dir: the run directory.
    :ivar recipe: the resolved recipe (``recipe.yaml``) as a dict.
    :ivar history: one dict per finished epoch (``metrics.jsonl``), ``epoch`` 0-based.
    :ivar result: ``result.json`` (the final summary), or ``None`` while the search is unfinished.
    """

    dir: Path
    recipe: dict[str, Any]
    history: list[dict[str, Any]]
    result: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def genotype(self) -> Genotype | None:
        """The final genotype, else the last epoch's current one, else ``None``."""
        if self.result is not None and "genotype_json" in self.result:
            g = self.result["genotype_json"]
            if not isinstance(g, dict):
                raise RunError(f"{self.dir / 'result.json'}: genotype_json must be a JSON object, got {type(g).__name__}")
            return Genotype.from_dict(g)
        if self.history and "genotype" in self.history[-1]:
            g = self.history[-1]["genotype"]
            if not isinstance(g, str):
                raise RunError(f"{self.dir / 'metrics.jsonl'}: the last record's genotype must be a string, got "
                               f"{type(g).__name__}")
            return Genotype.parse(g)
        return None

    @property
    def scores(self) -> dict[str, Any]:
        """The final scores (``result.json``), else the last epoch's."""
        scores = self.result.get("scores") if self.result is not None else (self.history[-1].get("scores") if self.history else None)
        return dict(scores) if isinstance(scores, dict) else {}

    def columns(self) -> list[str]:
        """Every key :meth:`column` accepts: the fields present in at least one epoch record, nested
        keys joined by dots (``"entropy.normal"``; a dict's own key too, ``"entropy"``), sorted."""
        return _keys(self.history)

    def column(self, key: str) -> list[Any]:
        """One value per epoch of a record field, nested keys joined by dots
        (``"valid_acc"``, ``"entropy.normal"``, ``"scores.nb201.cifar10_test"``); ``None`` where an
        epoch lacks it.

        :raises DiffnasError: no epoch has ``key`` (a typo would otherwise plot a row of ``None``);
            the message lists the known columns (:meth:`columns`). A run with no epoch yet gives ``[]``.
        """
        return _column(self.dir, self.history, key, self.columns(), "epoch record")

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The step records (``diagnostics.every_steps``) of the finished epochs, oldest first:
        each epoch record's ``steps`` list (:mod:`diffnas.core.step_records`); empty when none were recorded."""
        from .core.step_records import step_records

        return step_records(self.history)

    def step_columns(self) -> list[str]:
        """Every key :meth:`step_column` accepts (as :meth:`columns`, over the step records)."""
        return _keys(self.steps)

    def step_column(self, key: str) -> list[Any]:
        """One value per step record, nested keys joined by dots (``"global_step"``,
        ``"parameter_free_share.normal"``, ``"scores.nb201.cifar10_test"``); ``None`` where a
        record lacks it. Plot ``step_column(key)`` against ``step_column("global_step")``.

        :raises DiffnasError: no step record has ``key`` (listing :meth:`step_columns`); ``[]`` when
            nothing was recorded.
        """
        return _column(self.dir, self.steps, key, self.step_columns(), "step record")


def _keys(records: list[dict]) -> list[str]:
    """The dotted keys present in at least one of ``records`` (a dict's own key too), sorted."""
    keys: set[str] = set()

    def walk(rec: dict, prefix: str, depth: int) -> None:
        for k, v in rec.items():
            name = f"{prefix}{k}"
            keys.add(name)
            if isinstance(v, dict) and depth < 8:  # records are shallow; the cap bounds a hostile file
                walk(v, name + ".", depth + 1)
    for rec in records:
        if isinstance(rec, dict):
            walk(rec, "", 0)
    return sorted(keys)


def _column(run_dir: Path, records: list[dict], key: str, known: list[str], what: str) -> list[Any]:
    """``key``'s value in each of ``records`` (``None`` where one lacks it); a key no record has is refused."""
    from .core.step_records import lookup

    if records and key not in known:
        from .core.limits import short

        near = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        listed = ", ".join(known[:200]) + (f" and {len(known) - 200} more" if len(known) > 200 else "")
        raise DiffnasError(f"{run_dir}: no {what} has the column {short(key)}{hint}; known columns: {listed}")
    return [lookup(rec, key) if isinstance(rec, dict) else None for rec in records]


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a search's run directory (finished or not).

    :raises RunError: not a run directory (no ``recipe.yaml``), or an unreadable file.
    """
    d = _path(run_dir, "run_dir")
    if not (d / "recipe.yaml").is_file():
        raise RunError(f"{d}: not a search's run directory (no recipe.yaml)")
    from .core.limits import read_json, read_jsonl
    from .core.recipe import read_yaml

    try:
        recipe = read_yaml(d / "recipe.yaml") or {}
        if not isinstance(recipe, dict):
            raise RunError(f"{d / 'recipe.yaml'}: expected a mapping (a recipe), got {type(recipe).__name__}")
        metrics = d / "metrics.jsonl"
        # a cut-short last line is skipped; a record that is not an object is refused
        history = read_jsonl(metrics, objects=True) if metrics.exists() else []
        res = d / "result.json"
        result = read_json(res, "result file") if res.exists() else None
        if result is not None and not isinstance(result, dict):
            raise RunError(f"result file {res}: expected a JSON object (a search's summary), got {type(result).__name__}")
    except DiffnasError as exc:
        raise RunError(f"{d}: cannot read the run ({exc})") from None
    return Run(d, recipe, history, result)


# --------------------------------------------------------------------------- evaluation


def _genotype(target: Genotype | str | os.PathLike) -> tuple[Genotype, Path | None]:
    if isinstance(target, Genotype):
        return target, None
    _path(target, "target")  # a genotype string is a str too
    from .commands._target import load_genotype

    return load_genotype(str(target))


def score_all(genotype: Genotype, data_root: str | None = None) -> dict[str, Any]:
    """Every installed scorer's answer for ``genotype`` (``{scorer: {...}}``; a scorer that cannot
    score it says why as ``{"unavailable": reason}``; empty when no scorer knows its space)."""
    scores: dict[str, Any] = {}
    for res in get_plugin_manager().hook.diffnas_score_genotype(genotype=genotype, context={"data_root": data_root}):
        if res:
            scores.update(res)
    return scores


def score(target: Genotype | str | os.PathLike, data_root: str | None = None, nats_dir: str | None = None,
          hp: str = "200") -> dict[str, Any]:
    """Benchmark numbers for a genotype, a genotype string or file, or a run directory's result.

    Every installed scorer is asked: the NB201 table for NAS-Bench-201 cells, the NB301 surrogate
    for DARTS-space cells (``{"unavailable": reason}`` when it cannot score, e.g. onnxruntime is
    missing), and, with ``nats_dir``, the official NATS-Bench "simple" files.

    :returns: ``{"genotype", "space", "scores": {scorer: {...}}}`` (and ``run_dir``).
    :raises DiffnasError: no scorer produced a number; the message gives each scorer's reason.
    """
    genotype, run_dir = _genotype(target)
    scores = score_all(genotype, data_root)
    if nats_dir is not None:
        if genotype.space != "nb201":
            raise DiffnasError(f"--nats-dir needs a NAS-Bench-201 genotype, this one is of space {genotype.space!r}")
        from .benchmarks.nats import NATSTopology

        scores["nats"] = NATSTopology(nats_dir).info(genotype.to_nb201_string(), hp=hp)
    if not any(not (isinstance(v, dict) and "unavailable" in v) for v in scores.values()):
        reasons = "; ".join(f"{k}: {v['unavailable']}" for k, v in scores.items())
        raise DiffnasError(f"no score for this {genotype.space!r} genotype: " + (reasons or
                           "no scorer knows its space (NB201 genotypes use the NB201 table, DARTS genotypes the NB301 surrogate)"))
    out = {"genotype": str(genotype), "space": genotype.space, "scores": scores}
    if run_dir is not None:
        out["run_dir"] = str(run_dir)
    return out


def build_trainer(target: Genotype | str | os.PathLike, recipe: str | os.PathLike | dict | None = None,
                  out: str | os.PathLike | None = None, overrides: Sequence[str] | None = None,
                  cat: Catalogue | None = None, overwrite: bool = False) -> Any:
    """A :class:`~diffnas.training.Trainer` for ``target``'s discrete network (``train`` runs it).

    :param recipe: a training recipe file or dict; ``None``: the genotype space's standard protocol
        (``diffnas.commands.train.DEFAULT_PROTOCOLS``).
    :param overwrite: replace an earlier training in ``out`` (as ``--overwrite``) instead of refusing.
    """
    import time

    from .commands.train import DEFAULT_PROTOCOLS
    from .core.recipe import apply_overrides, read_yaml
    from .training import Trainer, resolve_train_recipe

    recipe = None if recipe is None else _recipe_arg(recipe)
    overrides, out = _strings(overrides, "overrides"), (None if out is None else _path(out, "out"))
    cat = cat or catalogue()
    genotype, _ = _genotype(target)
    if isinstance(recipe, dict):
        data, source = recipe, "<recipe dict>"
    elif recipe is not None:
        data, source = read_yaml(recipe), str(recipe)
    else:
        data = json.loads(json.dumps(DEFAULT_PROTOCOLS.get(genotype.space, {})))
        source = f"<default {genotype.space} protocol>"
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, list(overrides), source=source)
    resolved = resolve_train_recipe(data, cat, source)
    out = out or resolved.output.dir or str(Path("runs") / f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        return Trainer(genotype, resolved, cat, out, overwrite=overwrite)
    except RecipeError as exc:  # checks made when the trainer is built (device, speed switches): name the file
        if exc.source is None:
            raise RecipeError(exc.problems, source) from None
        raise


def train(target: Genotype | str | os.PathLike, recipe: str | os.PathLike | dict | None = None,
          out: str | os.PathLike | None = None, overrides: Sequence[str] | None = None,
          progress: bool | None = None, cat: Catalogue | None = None, resume: str | os.PathLike | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Retrain a genotype's discrete network from scratch (``diffnas train``), or continue the
    training saved in ``resume``; returns the summary (``test_acc``, ``params_M``, ``flops_M``,
    ``train_time_s`` ...).

    :param overwrite: replace an earlier training in ``out`` (as ``--overwrite``; re-running a
        notebook cell); without it a directory holding a training is refused (:class:`RunError`)."""
    if resume is not None:
        if overwrite:
            raise DiffnasError("train: resume= continues a training in place; it takes no overwrite=")
        from .training import resume_trainer

        return resume_trainer(resume, cat or catalogue()).run(progress=progress)
    return build_trainer(target, recipe, out, overrides, cat, overwrite=overwrite).run(progress=progress)


def study(path: str | os.PathLike, out: str | os.PathLike | None = None, progress: bool | None = None,
          plots: bool = True, cat: Catalogue | None = None) -> dict[str, Any]:
    """Run a study's unfinished runs with its executor and write ``results.md``/``results.csv``
    and the plots (``diffnas study``).

    :returns: ``{"out": folder, "outcomes": [{"id", "status", "message"}], "report": {...}}``
        where ``report["methods"]`` holds one row per method (mean ± std over seeds).
    """
    from .study import run_study

    path = _path(path, "path")
    out = None if out is None else _path(out, "out")
    ls, outcomes, rep = run_study(path, out, catalogue=cat, progress=progress, report_plots=plots)
    return {"out": str(ls.out), "outcomes": [{"id": o.id, "status": o.status, "message": o.message} for o in outcomes],
            "report": rep}


def search_population(recipes: list[str | os.PathLike | dict], outs: list[str | os.PathLike | None],
                      overrides: Sequence[str] | None = None, cat: Catalogue | None = None, data: Any = None,
                      progress: bool | None = None) -> list[dict[str, Any]]:
    """Run several recipes of one composition as ONE population-fused search
    (:mod:`diffnas.core.population`); each writes its own run directory in ``outs``, as its separate
    ``search`` would. Returns the members' summaries. What cannot be fused raises RecipeError.

    :param progress: one progress bar for the population (``None``: the first recipe's ``output.progress``)."""
    from .core.population import build_population

    recipes, outs = _list(recipes, "recipes"), _list(outs, "outs")
    if len(recipes) != len(outs):
        raise ArgumentError(f"recipes and outs: one run directory (or None) per recipe, got {len(recipes)} recipe(s) "
                            f"and {len(outs)} run directories")
    outs = [None if o is None else _path(o, f"outs[{i}]") for i, o in enumerate(outs)]
    cat = cat or catalogue()
    items = []
    for recipe, out in zip(recipes, outs, strict=True):
        resolved, _ = prepare(recipe, overrides, cat)
        items.append((resolved, out if out is not None else resolved.recipe.output.dir, None))
    return build_population(items, cat.pm, cat, data=data).run(progress=progress)


def resume_population(run_dirs: list[str | os.PathLike], cat: Catalogue | None = None,
                      force: bool = False, progress: bool | None = None) -> list[dict[str, Any]]:
    """Continue a population from its members' run directories (each member's checkpoint and saved
    recipe). Members a kill left one checkpoint apart are brought back into step first
    (:func:`~diffnas.core.outputs.bring_into_step`); each member's recipe is checked against its
    checkpoint as :func:`resume` does (``force``: resume anyway, noted in ``metrics.jsonl``);
    ``progress`` as :func:`search_population`."""
    from .core.outputs import CHECKPOINT, bring_into_step, load_search_checkpoint, recipe_change_note
    from .core.population import build_population
    from .core.recipe import read_yaml, resolve_recipe

    run_dirs = [_path(d, f"run_dirs[{i}]") for i, d in enumerate(_list(run_dirs, "run_dirs"))]
    _flag(force, "force")
    cat = cat or catalogue()
    resolved, ckpts = [], []
    for d in run_dirs:
        if not (d / CHECKPOINT).exists() and not (d / CHECKPOINT).is_symlink():
            raise RunError(f"nothing to resume in {d}: no {CHECKPOINT}")
        resolved.append(resolve_recipe(read_yaml(d / "recipe.yaml"), cat, source=str(d / "recipe.yaml")))
        ckpts.append(load_search_checkpoint(d / CHECKPOINT))
    def notes() -> list[dict | None]:  # refuses an edited recipe (unless force) before anything is changed
        return [recipe_change_note(c, r, d / CHECKPOINT, d / "recipe.yaml", force) for c, r, d in zip(ckpts, resolved, run_dirs)]

    notes()
    ckpts = bring_into_step(run_dirs, ckpts)
    items = list(zip(resolved, run_dirs, ckpts))
    return build_population(items, cat.pm, cat, notes=notes()).run(progress=progress)
