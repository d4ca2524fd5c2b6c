"""The study file: recipes and override axes, expanded into runs with deterministic ids.

A study YAML holds::

    version: 1
    name: nb201_collapse              # default: the file's stem
    description: ...
    out: runs/studies/nb201_collapse  # default output folder (``--out`` wins; default runs/studies/<name>)
    set: {trainer.epochs: 50}         # overrides applied to every run (key path -> value)
    axes: {trainer.seed: [0, 1, 2]}   # cartesian product, applied to every run
    seed_key: trainer.seed            # the axis the table averages over (mean ± std)
    executor: {name: sequential}      # or {name: gpus, params: {per_gpu: 2}}, {name: ray, params: {...}}, slurm
    runs:
      - label: DARTS (1st order)      # the table's method label
        recipe: ../recipes/nb201_darts_v1.yaml   # path relative to the study file, or a mapping
        id: darts_v1                  # optional; default: the label, slugged
        set: {trainer.weights_optimizer.lr: 0.005}
        axes: {}                      # more axes for this entry only
        published: {cifar10_test: 54.30, cifar100_test: 15.61}   # or one number (CIFAR-10 test)
        published_source: NB201 paper via Single-DARTS Table 1

Loading is strict (unknown keys, wrong types), and every problem is reported at once as
``message @ path`` lines under the study file's name (:class:`StudyError`, exit status 2).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import attrs

from ..core.config import structure
from ..core.errors import RecipeError
from ..core.recipe import read_yaml, resolve_recipe

#: keys a ``published`` mapping may use (test accuracies in %, the NB301 surrogate in %)
PUBLISHED_KEYS = ("cifar10_test", "cifar100_test", "imagenet16_test", "cifar10_val", "cifar100_val",
                  "imagenet16_val", "nb301")


class StudyError(RecipeError):
    """A study file (or a recipe it expands to) is invalid: one ``message @ path`` line per problem."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        super().__init__(problems, source)
        head = f"invalid study {source}" if source else "invalid study"
        lines = [f"{head}: {len(self.problems)} problem(s)"] + [f"  {m} @ {p}" for m, p in self.problems]
        self.args = ("\n".join(lines),)

    def __str__(self) -> str:
        return self.args[0]


def _non_empty(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not value:
        raise ValueError(f"{attribute.name!r} must not be empty")


@attrs.frozen
class ExecutorConfig:
    """How the runs are executed: a registered executor (``diffnas plugins`` lists them: ``sequential``,
    ``gpus``, ``ray``, ``slurm``, and those of installed plugins) and its ``params``, checked against
    the executor's ``Config`` like any component's. Executors come only from installed plugins: a
    name is never imported."""

    name: str = "sequential"
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class RunEntry:
    """One method of the study: a recipe, its overrides and its published numbers."""

    label: str
    recipe: Any
    id: Optional[str] = None
    set: dict[str, Any] = attrs.field(factory=dict)
    axes: dict[str, list[Any]] = attrs.field(factory=dict)
    published: dict[str, float] = attrs.field(factory=dict)
    published_source: str = ""


@attrs.frozen
class Study:
    runs: list[RunEntry] = attrs.field(validator=_non_empty)
    version: int = 1
    name: Optional[str] = None
    description: str = ""
    out: Optional[str] = None
    set: dict[str, Any] = attrs.field(factory=dict)
    axes: dict[str, list[Any]] = attrs.field(factory=dict)
    seed_key: str = "trainer.seed"
    executor: ExecutorConfig = attrs.field(factory=ExecutorConfig)


@attrs.frozen
class RunSpec:
    """One run of a study: what an executor receives.

    :ivar index: position in the study's run list (``--run-index``; stable while the file is unchanged).
    :ivar id: deterministic run id (the run directory's name).
    :ivar recipe: the recipe dict with every override applied (validated: every default filled in).
    :ivar out_dir: the run directory.
    """

    index: int
    id: str
    label: str
    group: str
    axes: dict[str, Any]
    recipe: dict[str, Any]
    out_dir: Path
    entry: int
    published: dict[str, float] = attrs.field(factory=dict)
    published_source: str = ""

    @property
    def status(self) -> str:
        """``done`` (result.json), ``partial`` (a checkpoint to resume from) or ``pending``."""
        if (self.out_dir / "result.json").exists():
            return "done"
        if (self.out_dir / "checkpoint.pt").exists():
            return "partial"
        return "pending"

    @property
    def seed(self) -> Any:
        return self.recipe.get("trainer", {}).get("seed")


@attrs.frozen
class LoadedStudy:
    study: Study
    source: Path
    name: str
    specs: list[RunSpec]
    out: Path


# --------------------------------------------------------------------------- helpers


def slug(value: Any) -> str:
    """A file-name-safe token for a label or an axis value."""
    if isinstance(value, dict):
        name = value.get("name")
        base = slug(name) if isinstance(name, str) else "v"
        import hashlib

        return f"{base}_{hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]}"
    if isinstance(value, float):
        value = repr(value)
    s = re.sub(r"[^A-Za-z0-9.\-]+", "_", str(value)).strip("_").lower()
    return s or "x"


def set_path(data: dict, key: str, value: Any) -> None:
    """Set ``key.path`` (list items by index) to ``value``; intermediate mappings are created."""
    parts = key.split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        node = nxt
    if isinstance(node, list):
        node[int(parts[-1])] = copy.deepcopy(value)
    elif isinstance(node, dict):
        node[parts[-1]] = copy.deepcopy(value)
    else:
        raise TypeError(f"{key!r}: not a mapping or list at {parts[-2] if len(parts) > 1 else '(top)'}")


def _preprocess(data: Any, problems: list) -> Any:
    """Accept ``published: 94.36`` as ``{cifar10_test: 94.36}``; validate axes and published keys."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    runs = data.get("runs")
    for i, entry in enumerate(runs if isinstance(runs, list) else []):
        if not isinstance(entry, dict):
            continue
        pub = entry.get("published")
        if isinstance(pub, (int, float)) and not isinstance(pub, bool):
            entry["published"] = {"cifar10_test": float(pub)}
        elif isinstance(pub, dict):
            for k in pub:
                if k not in PUBLISHED_KEYS:
                    problems.append((f"unknown published key {k!r}; known: {', '.join(PUBLISHED_KEYS)}",
                                     f"study.runs[{i}].published"))
        rec = entry.get("recipe")
        if "recipe" in entry and not isinstance(rec, (str, dict)):
            problems.append((f"expected a recipe path or mapping, got {type(rec).__name__}", f"study.runs[{i}].recipe"))
    for where, axes in [("study.axes", data.get("axes"))] + [
            (f"study.runs[{i}].axes", e.get("axes")) for i, e in enumerate(runs if isinstance(runs, list) else [])
            if isinstance(e, dict)]:
        if isinstance(axes, dict):
            for k, v in axes.items():
                if not isinstance(v, list) or not v:
                    problems.append(("an axis needs a non-empty list of values", f"{where}.{k}"))
    return data


def load_study(path: str | os.PathLike, out: str | os.PathLike | None = None, catalogue: Any = None) -> LoadedStudy:
    """Read, validate and expand a study file.

    :param out: the study's output folder (default: the file's ``out``, else ``runs/studies/<name>``).
    :param catalogue: validate every expanded recipe against it (``None``: no validation, as for
        ``--report-only``, where the plugins of the runs may be absent).
    """
    path = Path(path)
    src = str(path)
    try:
        data = read_yaml(path)
    except RecipeError as exc:
        raise StudyError([(m, p.replace("recipe", "study", 1)) for m, p in exc.problems], src) from None
    if not isinstance(data, dict):
        raise StudyError([(f"expected a mapping at the top level, got {type(data).__name__}", "study")], src)
    problems: list[tuple[str, str]] = []
    data = _preprocess(data, problems)
    study, probs = structure(data, Study, "study")
    problems += probs
    if problems or study is None:
        raise StudyError(problems, src)
    if study.version != 1:
        raise StudyError([(f"'version' must be 1, got {study.version}", "study.version")], src)
    # the executor's problems and the runs' are reported together
    problems = executor_config(catalogue, study.executor)[1] if catalogue is not None else []
    name = study.name or path.stem
    out_dir = Path(out) if out is not None else Path(study.out) if study.out else Path("runs") / "studies" / name
    try:
        specs = expand(study, path, out_dir, catalogue)
    except StudyError as exc:
        raise StudyError(problems + exc.problems, src) from None
    if problems:
        raise StudyError(problems, src)
    return LoadedStudy(study, path, name, specs, out_dir)


def executor_config(catalogue: Any, ref: ExecutorConfig, path: str = "study.executor") -> tuple[Any, list]:
    """Structure ``ref.params`` into the registered executor's ``Config``: ``(config, [])`` or
    ``(None, [(message, path), ...])``. An unregistered name is only ever an error."""
    entry = catalogue.entries["executor"].get(ref.name)
    if entry is None:
        return None, [(catalogue.unknown_message("executor", ref.name), f"{path}.name")]
    return structure(ref.params or {}, entry.cls.Config, f"{path}.params")


def _short_keys(keys: list[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.replace(".", "_")) for k, s in zip(keys, last)}


def expand(study: Study, source: Path, out_dir: Path, catalogue: Any = None) -> list[RunSpec]:
    """Every run of ``study`` in a deterministic order: entries in file order, then the cartesian
    product of the axes (study axes first, then the entry's) in the order written."""
    src = str(source)
    problems: list[tuple[str, str]] = []
    specs: list[RunSpec] = []
    seen: dict[str, str] = {}
    base_dir = source.parent
    for i, entry in enumerate(study.runs):
        where = f"study.runs[{i}]"
        if isinstance(entry.recipe, str):
            rpath = (base_dir / entry.recipe)
            try:
                base = read_yaml(rpath)
            except RecipeError as exc:
                problems += [(f"recipe {entry.recipe}: {m}", f"{where}.recipe") for m, _ in exc.problems]
                continue
            if not isinstance(base, dict):
                problems.append((f"recipe {entry.recipe}: expected a mapping", f"{where}.recipe"))
                continue
            rsrc = str(rpath)
        else:
            base, rsrc = copy.deepcopy(entry.recipe), f"{where}.recipe"
        axes = {**study.axes, **entry.axes}
        short = _short_keys(list(axes))
        base_id = entry.id or slug(entry.label)
        for combo in itertools.product(*axes.values()):
            assign = dict(zip(axes, combo))
            data = copy.deepcopy(base)
            bad = False
            for key, value in [*study.set.items(), *entry.set.items(), *assign.items()]:
                try:
                    set_path(data, key, value)
                except (TypeError, ValueError, IndexError, KeyError, AttributeError):
                    problems.append((f"cannot set {key!r}: no such place in the recipe", f"{where}.set"))
                    bad = True
            if bad:
                continue
            run_id = base_id + "".join(f"-{short[k]}{slug(v)}" for k, v in assign.items())
            if run_id in seen:
                problems.append((f"run id {run_id!r} is used twice (also by {seen[run_id]}); give the entries distinct "
                                 f"labels or ids", f"{where}.id"))
                continue
            seen[run_id] = where
            rdir = out_dir / "runs" / run_id
            set_path(data, "output.dir", str(rdir))
            if catalogue is not None:
                try:
                    data = resolve_recipe(data, catalogue, source=rsrc).to_dict()
                except RecipeError as exc:
                    problems += [(f"{m} (in recipe {rsrc})", f"{where}:{p}") for m, p in exc.problems]
                    continue
            group_axes = {k: v for k, v in assign.items() if k != study.seed_key}
            group = entry.label + "".join(f", {short[k]}={_show(v)}" for k, v in group_axes.items())
            specs.append(RunSpec(len(specs), run_id, entry.label, group, assign, data, rdir, i,
                                 dict(entry.published), entry.published_source))
    if problems:
        # the same recipe problem repeats for every seed: report it once
        raise StudyError(list(dict.fromkeys(problems)), src)
    return specs


def _show(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("name", json.dumps(v, sort_keys=True)))
    return str(v)
