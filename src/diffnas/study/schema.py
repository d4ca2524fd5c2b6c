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
    population: {enabled: false, max_size: 16}   # fuse runs of one composition (diffnas.study.populations);
                                      # enabled: auto (or population: auto) fuses only where measured faster
    warmup:                           # optional: one weights-only run that every run starts from
      recipe: ../recipes/nb201_darts_v1.yaml   # default: the first entry's recipe
      set: {trainer.epochs: 10, trainer.warmup_epochs: 10}   # after the study's set (axes not applied)
      alphas: false                   # whether the runs also take its α (trainer.init_from.alphas)
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

from ..core import limits
from ..core.config import positive, structure
from ..core.errors import RecipeError, problem_report
from ..core.recipe import read_yaml, resolve_recipe, set_path

#: keys a ``published`` mapping may use (test accuracies in %, the NB301 surrogate in %)
PUBLISHED_KEYS = ("cifar10_test", "cifar100_test", "imagenet16_test", "cifar10_val", "cifar100_val",
                  "imagenet16_val", "nb301")


#: a run id or study name: a plain file name (no path separator, no ``..``, not hidden)
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")


def plain_name(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: ``value`` (if set) is a plain file name, so that it cannot name a path outside
    the study's folder."""
    if value is not None and not PLAIN_NAME.fullmatch(value):
        raise ValueError(f"{attribute.name!r} must be a plain name (letters, digits, '.', '_', '-'; starting with a "
                         f"letter or digit; at most 128 characters), got {limits.short(value)}")


def inside(root: Path, path: Path, what: str) -> Path:
    """``path`` if it lies inside ``root`` (both resolved, symlinks followed); else a StudyError-ready
    ``ValueError``."""
    r, p = root.resolve(), path.resolve()
    if p != r and r not in p.parents:
        raise ValueError(f"{what} {path} would lie outside the study folder {root}")
    return path


class StudyError(RecipeError):
    """A study file (or a recipe it expands to) is invalid: one ``message @ path`` line per problem."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        super().__init__(problems, source)
        head = f"invalid study {source}" if source else "invalid study"
        self.args = (problem_report(head, self.problems),)

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


def _population_mode(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not True and value is not False and value != "auto":
        raise ValueError(f"'enabled' must be true, false or auto, got {value!r}")


@attrs.frozen
class PopulationConfig:
    """Group runs that share a composition into population-fused searches (:mod:`diffnas.study.populations`)."""

    #: true: fuse every group; "auto": fuse a group only where a short calibration in the process
    #: that runs it measures the population faster than its runs one by one
    #: (:func:`diffnas.core.population.calibrate_population`; decision and figures in OUT/populations/)
    enabled: Any = attrs.field(default=False, validator=_population_mode)
    max_size: int = attrs.field(default=16, validator=positive)
    #: with enabled: auto, the timed rounds (one step of the population and one of a plain run each)
    calibration_rounds: int = attrs.field(default=3, validator=positive)


@attrs.frozen
class WarmupConfig:
    """A study's warm-up stage: one run (``OUT/warmup``) made before every other, which each run of
    the study starts from (``trainer.init_from``), so that every arm forks from one trained supernet."""

    recipe: Any = None
    set: dict[str, Any] = attrs.field(factory=dict)
    alphas: bool = False


@attrs.frozen
class RunEntry:
    """One method of the study: a recipe, its overrides and its published numbers."""

    label: str
    recipe: Any
    id: Optional[str] = attrs.field(default=None, validator=plain_name)
    set: dict[str, Any] = attrs.field(factory=dict)
    axes: dict[str, list[Any]] = attrs.field(factory=dict)
    published: dict[str, float] = attrs.field(factory=dict)
    published_source: str = ""


@attrs.frozen
class Study:
    runs: list[RunEntry] = attrs.field(validator=_non_empty)
    version: int = 1
    name: Optional[str] = attrs.field(default=None, validator=plain_name)
    description: str = ""
    out: Optional[str] = None
    set: dict[str, Any] = attrs.field(factory=dict)
    axes: dict[str, list[Any]] = attrs.field(factory=dict)
    seed_key: str = "trainer.seed"
    executor: ExecutorConfig = attrs.field(factory=ExecutorConfig)
    population: PopulationConfig = attrs.field(factory=PopulationConfig)
    warmup: Optional[WarmupConfig] = None


#: the warm-up stage's id and run directory name (``OUT/warmup``)
WARMUP_ID = "warmup"


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
    #: the warm-up stage every spec starts from (``study.warmup``), else ``None``
    warmup: Optional[RunSpec] = None


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
    s = re.sub(r"[^A-Za-z0-9.\-]+", "_", str(value)).strip("_.").lower()[:80]
    return s or "x"



def _preprocess(data: Any, problems: list) -> Any:
    """Accept ``published: 94.36`` as ``{cifar10_test: 94.36}`` and ``population: auto`` as
    ``{enabled: auto}``; validate axes and published keys."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    if isinstance(data.get("population"), (bool, str)):  # population: auto / true / false
        data["population"] = {"enabled": data["population"]}
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
    name = study.name or (path.stem if PLAIN_NAME.fullmatch(path.stem) else slug(path.stem))
    out_dir = Path(out) if out is not None else Path(study.out) if study.out else Path("runs") / "studies" / name
    for sub in ("recipes", "logs", "plots", "runs", WARMUP_ID):  # the folders a study writes into: no link out of it
        try:
            inside(out_dir, out_dir / sub, "folder")
        except ValueError as exc:
            problems.append((str(exc), "study"))
    try:
        warm = expand_warmup(study, path, out_dir, catalogue)
        specs = expand(study, path, out_dir, catalogue, warm)
    except StudyError as exc:
        raise StudyError(problems + exc.problems, src) from None
    if problems:
        raise StudyError(problems, src)
    return LoadedStudy(study, path, name, specs, out_dir, warm)


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


def _base_recipe(recipe: Any, base_dir: Path, where: str, problems: list) -> tuple[dict | None, str]:
    """A run entry's (or the warm-up's) recipe as data, and the source its messages name."""
    if isinstance(recipe, str):
        rpath = base_dir / recipe
        try:
            base = read_yaml(rpath)
        except RecipeError as exc:
            problems += [(f"recipe {recipe}: {m}", f"{where}.recipe") for m, _ in exc.problems]
            return None, str(rpath)
        if not isinstance(base, dict):
            problems.append((f"recipe {recipe}: expected a mapping", f"{where}.recipe"))
            return None, str(rpath)
        return base, str(rpath)
    return copy.deepcopy(recipe), f"{where}.recipe"


def expand_warmup(study: Study, source: Path, out_dir: Path, catalogue: Any = None) -> RunSpec | None:
    """The warm-up stage of ``study`` (``OUT/warmup``), or ``None``: its recipe (default: the first
    entry's) with the study's ``set`` and then the warm-up's own applied."""
    w = study.warmup
    if w is None:
        return None
    problems: list[tuple[str, str]] = []
    base, rsrc = _base_recipe(w.recipe if w.recipe is not None else study.runs[0].recipe, source.parent,
                              "study.warmup", problems)
    rdir = out_dir / WARMUP_ID
    if base is not None:
        base = _run_recipe(base, [*study.set.items(), *w.set.items()], rdir, catalogue, rsrc, "study.warmup", problems)
    if problems:
        raise StudyError(problems, str(source))
    return RunSpec(-1, WARMUP_ID, "warm-up", "warm-up", {}, base, rdir, -1)


def _run_recipe(data: dict, sets: list[tuple[str, Any]], rdir: Path, catalogue: Any, rsrc: str, where: str,
                problems: list) -> dict | None:
    """``data`` with the overrides ``sets`` applied and ``output.dir`` set to ``rdir``, validated
    against ``catalogue`` when given (every default filled in); ``None`` with ``problems`` extended
    (each override's problem, then the recipe's) when it cannot be."""
    bad = False
    for key, value in sets:
        try:
            set_path(data, key, value)
        except ValueError as exc:
            problems.append((f"cannot set {limits.short(key)}: {exc}", f"{where}.set"))
            bad = True
    if bad:
        return None
    set_path(data, "output.dir", str(rdir))
    if catalogue is None:
        return data
    try:
        return resolve_recipe(data, catalogue, source=rsrc).to_dict()
    except RecipeError as exc:
        problems += [(f"{m} (in recipe {rsrc})", f"{where}:{p}") for m, p in exc.problems]
        return None


def expand(study: Study, source: Path, out_dir: Path, catalogue: Any = None,
           warmup: RunSpec | None = None) -> list[RunSpec]:
    """Every run of ``study`` in a deterministic order: entries in file order, then the cartesian
    product of the axes (study axes first, then the entry's) in the order written. With a warm-up
    stage, each run starts from it (``trainer.init_from``: its run directory, as an absolute path so
    that a worker in another directory finds it)."""
    src = str(source)
    problems: list[tuple[str, str]] = []
    specs: list[RunSpec] = []
    seen: dict[str, str] = {}
    base_dir = source.parent
    total = 0
    for i, entry in enumerate(study.runs):  # count before enumerating: a product can be astronomically large
        n = 1
        for values in {**study.axes, **entry.axes}.values():
            n *= len(values)
        total += n
        if total > limits.MAX_STUDY_RUNS:
            raise StudyError([(f"the study expands to more than {limits.MAX_STUDY_RUNS} runs (entries up to this one: "
                               f"{total}); split it into several studies", f"study.runs[{i}].axes")], src)
    for i, entry in enumerate(study.runs):
        where = f"study.runs[{i}]"
        base, rsrc = _base_recipe(entry.recipe, base_dir, where, problems)
        if base is None:
            continue
        if warmup is not None:
            set_path(base, "trainer.init_from", {"path": str(warmup.out_dir.absolute()),
                                                 "alphas": study.warmup.alphas})
        axes = {**study.axes, **entry.axes}
        short = _short_keys(list(axes))
        base_id = entry.id or slug(entry.label)
        for combo in itertools.product(*axes.values()):
            assign = dict(zip(axes, combo))
            run_id = base_id + "".join(f"-{short[k]}{slug(v)}" for k, v in assign.items())
            if run_id in seen:
                problems.append((f"run id {run_id!r} is used twice (also by {seen[run_id]}); give the entries distinct "
                                 f"labels or ids", f"{where}.id"))
                continue
            seen[run_id] = where
            rdir = out_dir / "runs" / run_id
            try:  # ids are plain names, so this holds; checked again because a run directory is written to
                inside(out_dir, rdir, "run directory")
            except ValueError as exc:
                problems.append((str(exc), f"{where}.id"))
                continue
            data = _run_recipe(copy.deepcopy(base), [*study.set.items(), *entry.set.items(), *assign.items()], rdir,
                               catalogue, rsrc, where, problems)
            if data is None:
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
