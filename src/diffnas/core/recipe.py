"""YAML recipes: one ``{name, params}`` block per component slot plus data, trainer and output.

Loading is strict and reports every problem of a file at once (``message @ path`` lines):

1. YAML is read with the safe loader (no object construction); a syntax error names line/column.
2. The document is structured into the frozen attrs classes below (unknown keys, wrong types and
   out-of-range values are errors; bool/str/int/float are never coerced).
3. Each component name is looked up in the catalogue (unknown names get a did-you-mean).
4. Each ``params`` block is structured into that component's own ``Config`` class.

:func:`resolve_recipe` returns a :class:`ResolvedRecipe` holding the recipe and the built configs;
:meth:`ResolvedRecipe.to_dict` is the recipe with every default filled in, saved with each run.
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any, Optional

import attrs
import yaml

from . import limits
from .config import help_field, in_range, non_negative, one_of, positive, seed_range, structure, unstructure
from .errors import RecipeError

# --------------------------------------------------------------------------- schema


@attrs.frozen
class PluginRef:
    """A component chosen by name, with its parameters (structured later into its Config)."""

    name: str
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class OptimizerConfig:
    """A torch optimiser and its learning-rate schedule."""

    name: str = help_field("sgd", "torch optimiser: sgd or adam", validator=one_of("sgd", "adam"))
    lr: float = help_field(0.025, "learning rate (the schedule's start)", validator=positive)
    momentum: float = help_field(0.9, "SGD momentum", validator=in_range(0.0, 1.0, hi_open=True))
    nesterov: bool = help_field(False, "SGD with Nesterov momentum")
    weight_decay: float = help_field(0.0, "L2 weight decay", validator=non_negative)
    betas: tuple[float, float] = help_field((0.9, 0.999), "Adam's betas")
    schedule: str = help_field("constant", "learning rate per epoch: constant, or cosine from lr to lr_min",
                               validator=one_of("constant", "cosine"))
    lr_min: float = help_field(0.0, "the cosine schedule's last learning rate", validator=non_negative)


def _weights_opt() -> OptimizerConfig:
    # NAS-Bench-201 / AutoDL DARTS defaults (METHODS.md §1)
    return OptimizerConfig(name="sgd", lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4,
                           schedule="cosine", lr_min=0.001)


def _arch_opt() -> OptimizerConfig:
    return OptimizerConfig(name="adam", lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, schedule="constant")


@attrs.frozen
class InitFromConfig:
    """A trained supernet to start from (``trainer.init_from``): a shared warm-up every arm of a
    study forks from."""

    path: str = help_field(..., "a run directory (its checkpoint.pt) or a checkpoint file")
    alphas: bool = help_field(False, "also load its architecture parameters α (default: α starts afresh)")


@attrs.frozen
class TrainerConfig:
    """How the search is run. Defaults: the NAS-Bench-201 DARTS protocol (METHODS.md §1)."""

    epochs: int = help_field(50, "search epochs", validator=positive)
    batch_size: int = help_field(64, "images per batch (each of the train and valid halves)", validator=positive)
    seed: int = help_field(0, "seed of weights, α, data order and augmentation (0 to 2**63 - 1)", validator=seed_range)
    device: str = help_field("auto", "auto | cpu | cuda | cuda:N (resolved by the diffnas_resolve_device hook)")
    weights_optimizer: OptimizerConfig = help_field(attrs.Factory(_weights_opt), "optimiser of the supernet weights")
    arch_optimizer: OptimizerConfig = help_field(attrs.Factory(_arch_opt), "optimiser of the architecture parameters α")
    grad_clip: Optional[float] = help_field(5.0, "clip the weight gradients' norm to this (null: no clipping)",
                                            validator=positive)
    steps_per_epoch: Optional[int] = help_field(None, "steps per epoch (null: one pass over the training half)",
                                                validator=positive)
    eval_batches: Optional[int] = help_field(None, "validation batches evaluated at each epoch end (null: none)",
                                             validator=positive)
    deterministic: bool = help_field(False, "deterministic kernels (exact resume on the CPU; slower on a GPU)")
    on_nonfinite: str = help_field("stop", "a non-finite loss or α: stop the search, or skip the batch",
                                   validator=one_of("stop", "skip"))
    warmup_epochs: int = help_field(0, "train only the weights for the first k epochs, α frozen (PC-DARTS: 15); "
                                    "the update rule's warmup_step runs instead of its step", validator=non_negative)
    warmup_steps: int = help_field(0, "as warmup_epochs, in steps (added to warmup_epochs' steps)",
                                   validator=non_negative)
    init_from: Optional[InitFromConfig] = help_field(None, "start from another run's trained supernet: "
                                                     "{path: RUN_DIR or checkpoint, alphas: false}")
    dtype: Optional[str] = help_field(None, "floating-point type of the supernet, α and batches: float32 or float64 "
                                      "(null: torch's default, float32 unless the process changed it); float64 makes "
                                      "a CPU search's result independent of the thread count, at about 2x the time",
                                      validator=one_of(None, "float32", "float64"))
    # speed switches (each safe by default; see the README's performance section)
    channels_last: bool = help_field(False, "run the supernet in channels-last memory format")
    autocast: str = help_field("off", "mixed precision of the forward pass: off, bf16 or fp16",
                               validator=one_of("off", "bf16", "fp16"))
    fused_cells: bool = help_field(False, "run the search space's fused supernet (SearchSpace.fused_supernet); "
                                          "refused where the space offers none")
    cuda_graphs: bool = help_field(False, "replay each epoch's step as one CUDA graph (diffnas.core.graphs); CUDA only")


@attrs.frozen
class DataConfig:
    """Which data to search on and how it is split and augmented."""

    dataset: str = help_field("cifar10", "registered dataset name (cifar10, synthetic, or a plugin's)")
    root: Optional[str] = help_field(None, "data root (null: $DIFFNAS_DATA_ROOT, else ~/.cache/diffnas/data)")
    source: str = help_field("auto", "CIFAR-10 source: auto, jpeg_pack, torchvision, embedded or subset",
                             validator=one_of("auto", "jpeg_pack", "torchvision", "embedded", "subset"))
    download: bool = help_field(False, "let torchvision download CIFAR-10 when it is missing")
    train_portion: float = help_field(0.5, "share of the training images in the weights half (the rest: α's half); "
                                           "1.0 (all of them, no held-out half) only for update rules that draw no "
                                           "validation batch (single_level)",
                                      validator=in_range(0.0, 1.0, lo_open=True))
    split_seed: int = help_field(0, "seed of the shuffle before the split", validator=seed_range)
    limit: Optional[int] = help_field(None, "use at most this many training images (null: all)", validator=positive)
    augment: bool = help_field(True, "random crop with 4-pixel padding and horizontal flip")
    params: dict[str, Any] = help_field(attrs.Factory(dict), "the dataset's own parameters (its Params class)")


@attrs.frozen
class OutputConfig:
    """Where and what a run writes."""

    dir: Optional[str] = help_field(None, "run directory (null: --out, else runs/<recipe>-<time>)")
    checkpoint_every_steps: int = help_field(0, "also checkpoint every this many steps (0: at epoch ends only)",
                                             validator=non_negative)
    draw_cells: bool = help_field(True, "draw the final cells as cell_<type>.png")
    progress: bool = help_field(True, "show a progress bar")


def _needs_every_steps(inst: Any, attribute: attrs.Attribute, value: bool) -> None:
    if value and not inst.every_steps:
        raise ValueError(f"{attribute.name!r} adds the eigenvalue to the step records: set every_steps > 0 too")


@attrs.frozen
class DiagnosticsConfig:
    """Costly collapse diagnostics added to ``metrics.jsonl`` (plugin ``diffnas.plugins.diagnostics``)."""

    hessian_eigenvalue: bool = help_field(False, "dominant eigenvalue of the validation loss's Hessian w.r.t. α")
    gradient_correlation: bool = help_field(False, "Single-DARTS §5.2.1 correlation of weight and α gradients "
                                                   "(a single-level run's against a held-out batch)")
    alpha_gradients: bool = help_field(False, "Single-DARTS Fig. 3: the α step's gradient per op (mean over edges)")
    every: int = help_field(1, "compute the diagnostics every this many epochs", validator=positive)
    batches: int = help_field(1, "validation batches the diagnostics average over", validator=positive)
    iterations: int = help_field(10, "power-iteration steps of the eigenvalue", validator=positive)
    every_steps: int = help_field(0, "record step diagnostics (parameter-free share, skip weight and α entropy per cell "
                                     "type, the current cell and its scores) every this many global steps and before "
                                     "the first; 0: off", validator=non_negative)
    step_hessian: bool = help_field(False, "add the Hessian eigenvalue (α) to every step record (costly; needs "
                                           "every_steps > 0)", validator=_needs_every_steps)


@attrs.frozen
class Recipe:
    """A whole search: components, data, trainer and output."""

    search_space: PluginRef
    relaxation: PluginRef
    update_rule: PluginRef
    discretiser: PluginRef
    regularisers: list[PluginRef] = attrs.field(factory=list)
    schedules: list[PluginRef] = attrs.field(factory=list)
    loggers: list[PluginRef] = attrs.field(factory=list)
    data: DataConfig = attrs.field(factory=DataConfig)
    trainer: TrainerConfig = attrs.field(factory=TrainerConfig)
    output: OutputConfig = attrs.field(factory=OutputConfig)
    diagnostics: DiagnosticsConfig = attrs.field(factory=DiagnosticsConfig)
    version: int = help_field(1, "recipe format version (1)", validator=one_of(1))
    description: str = help_field("", "free text")
    requires: list[str] = help_field(attrs.Factory(list), "distributions the recipe needs, each a name with at most one "
                                                          "version comparison (diffnas-sparsemax>=0.1); checked when "
                                                          "the recipe is loaded")

#: the recipe's sections that are settings, not components: ``diffnas plugins`` lists their keys
SECTIONS: dict[str, type] = {"trainer": TrainerConfig, "data": DataConfig, "output": OutputConfig,
                             "diagnostics": DiagnosticsConfig}


SLOTS = {  # recipe key -> component kind; list slots hold any number of components
    "search_space": "search_space",
    "relaxation": "relaxation",
    "update_rule": "update_rule",
    "discretiser": "discretiser",
    "regularisers": "regulariser",
    "schedules": "schedule",
    "loggers": "logger",
}
LIST_SLOTS = ("regularisers", "schedules", "loggers")


# --------------------------------------------------------------------------- loading


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with the bounded safe loader (:mod:`diffnas.core.limits`); errors name the
    file and the line. Only a regular file of at most ``MAX_YAML_BYTES`` is read."""
    p = Path(path)
    try:
        text = limits.read_text(p, limits.MAX_YAML_BYTES, "file")
    except FileNotFoundError:
        raise RecipeError([(f"file not found: {p}", "")], source=str(p)) from None
    except limits.InputError as exc:
        raise RecipeError([(str(exc), "")], source=str(p)) from None
    except OSError as exc:
        raise RecipeError([(f"cannot read file {p}: {exc.strerror or exc}", "")], source=str(p)) from None
    try:
        return parse_yaml(text)
    except ValueError as exc:
        raise RecipeError([(str(exc), "recipe")], source=str(p)) from None


def parse_yaml(text: str) -> Any:
    """YAML text to plain data (bounded safe loader); every problem is a ``ValueError`` whose message
    names the line and column."""
    try:
        return limits.load_yaml(text)
    except limits.LimitError as exc:
        raise ValueError(f"YAML refused: {exc}") from None
    except yaml.constructor.ConstructorError as exc:  # e.g. !!python/object/apply: refused, never run
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"YAML tag not allowed{where}: {limits.cap_message(str(exc.problem), 200)}; recipes are "
                         f"plain data and are read with a safe loader that constructs no Python objects") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ValueError(f"YAML syntax error: {limits.cap_message(str(exc.problem), 200)} ({where})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"YAML error: {limits.cap_message(str(exc), 200)}") from None
    except RecursionError:  # belt and braces: the loader caps the depth well below the recursion limit
        raise ValueError(f"YAML refused: nested more than {limits.MAX_DEPTH} levels deep") from None


#: a number in e-notation without a dot (``1e-3``): YAML 1.1 reads it as a string, the command line as a number
_E_NUMBER = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


def parse_override_value(raw: str) -> Any:
    """The value of a ``--set key=value``: YAML, except that ``1e-3`` is the number it looks like;
    text that is not YAML is a string. A value beyond the limits raises ``ValueError``."""
    if _E_NUMBER.fullmatch(raw.strip()):
        return float(raw)
    try:
        return limits.load_yaml(raw)
    except limits.LimitError as exc:
        raise ValueError(f"YAML refused: {exc}") from None
    except RecursionError:
        raise ValueError(f"YAML refused: nested more than {limits.MAX_DEPTH} levels deep") from None
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict, overrides: list[str], source: str | None = None) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML; list items by index)."""
    data = copy.deepcopy(data)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append((f"override {limits.short(item)} is not key.path=value", "--set"))
            continue
        where = f"--set {key if len(key) <= limits.MAX_QUOTE else key[:limits.MAX_QUOTE] + '...'}"
        try:
            value = parse_override_value(raw)
            set_path(data, key, value)
        except ValueError as exc:
            problems.append((f"cannot set {limits.short(key)}: {exc}", where))
    if problems:
        raise RecipeError(problems, source=source)
    return data


def set_path(data: Any, key: str, value: Any) -> None:
    """Set ``key.path`` to ``value`` in nested mappings and lists (list items by index); missing
    mappings on the way are created, a missing list item is not (``ValueError`` saying why)."""
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, list):
            if not part.isdigit():
                raise ValueError(f"{here} is a list: expected an item index, got {limits.short(part)}")
            if int(part) >= len(node):
                raise ValueError(f"{here} has {len(node)} item(s), so there is no item {part}")
            if last:
                node[int(part)] = copy.deepcopy(value)
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = copy.deepcopy(value)
                return
            nxt = node.get(part)
            if nxt is None:
                if parts[depth + 1].isdigit():
                    raise ValueError(f"{'.'.join(parts[:depth + 1])} has no item {parts[depth + 1]} (it is not set)")
                nxt = node[part] = {}
            node = nxt
        else:
            raise ValueError(f"{here} holds a value of type {type(node).__name__}, not a mapping or a list")


@attrs.frozen
class ResolvedRecipe:
    """A validated recipe with each component's structured Config."""

    recipe: Recipe
    configs: dict[str, Any]  # "search_space" -> Config, "regularisers.0" -> Config, ...
    source: Optional[str] = None

    def component_config(self, slot: str, index: int | None = None) -> Any:
        return self.configs[slot if index is None else f"{slot}.{index}"]

    def to_dict(self) -> dict[str, Any]:
        """The recipe with every default filled in (what a run saves as ``recipe.yaml``)."""
        out = unstructure(self.recipe)
        for slot in SLOTS:
            if slot in LIST_SLOTS:
                for i, ref in enumerate(out[slot]):
                    ref["params"] = unstructure(self.configs[f"{slot}.{i}"])
            else:
                out[slot]["params"] = unstructure(self.configs[slot])
        # tuples become lists so the YAML is plain
        return _plain(out)


#: recipe sections that do not change what a search computes (where it writes, whether it draws)
FINGERPRINT_EXCLUDES = ("output", "description")


def recipe_fingerprint(resolved: "ResolvedRecipe") -> str:
    """SHA-256 of the resolved recipe (every default filled in) less :data:`FINGERPRINT_EXCLUDES`:
    saved in each checkpoint, so that a resume under an edited recipe is noticed."""
    return document_fingerprint(resolved.to_dict())


def document_fingerprint(doc: dict[str, Any]) -> str:
    """SHA-256 of a recipe document (search or training) less :data:`FINGERPRINT_EXCLUDES`."""
    import hashlib
    import json

    doc = {k: v for k, v in doc.items() if k not in FINGERPRINT_EXCLUDES}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def resolve_recipe(data: Any, catalogue: Any, source: str | None = None) -> ResolvedRecipe:
    """Validate a recipe document against the schema and the catalogue; raise one RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError([(f"expected a mapping at the top level, got {type(data).__name__}", "recipe")], source)
    recipe, problems = structure(data, Recipe, "recipe")
    if recipe is None:
        # still check component names and params where the slot itself is well-formed
        problems += _check_components_raw(data, catalogue)
        raise RecipeError(problems, source)
    configs: dict[str, Any] = {}
    unbuilt: set[str] = set()  # components whose name or params were refused
    for key, path, kind, ref in component_refs(recipe):
        cfg, probs = _component_config(catalogue, kind, ref.name, ref.params, path)
        problems += probs
        configs[key] = cfg
        if probs:
            unbuilt.add(key)
    dataset = catalogue.entries["dataset"].get(recipe.data.dataset)
    if dataset is None:
        problems.append((catalogue.unknown_message("dataset", recipe.data.dataset), "recipe.data.dataset"))
    elif getattr(dataset.cls, "Params", None) is not None:  # the dataset declares its params: check them now
        problems += structure(dict(recipe.data.params), dataset.cls.Params, "recipe.data.params")[1]
    problems += requirement_problems(recipe.requires)
    # schedule targets name runtime hyperparameters of the components: build the valid ones to look,
    # also when another block has a problem (every problem of a file at once)
    comps = list(build_components(recipe, configs, catalogue, unbuilt).items())
    problems += schedule_target_problems(recipe, comps, unbuilt)
    if not unbuilt:  # what the chosen components cannot do together (their classes decide)
        problems += composition_problems(recipe, comps)
    if problems:
        raise RecipeError(problems, source)
    return ResolvedRecipe(recipe=recipe, configs=configs, source=source)


def component_refs(recipe: Recipe) -> list[tuple[str, str, str, Any]]:
    """``(key, key path, kind, ref)`` of every component slot; keys as :meth:`Search.components`
    names them (``regularisers.0``), key paths as errors name them (``recipe.regularisers[0]``)."""
    out = []
    for slot, kind in SLOTS.items():
        refs = getattr(recipe, slot)
        if slot in LIST_SLOTS:
            out += [(f"{slot}.{i}", f"recipe.{slot}[{i}]", kind, ref) for i, ref in enumerate(refs)]
        else:
            out.append((slot, f"recipe.{slot}", kind, refs))
    return out


def build_components(recipe: Recipe, configs: dict[str, Any], catalogue: Any,
                     skip: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every component of ``recipe`` built from its structured config, by key (``relaxation``,
    ``regularisers.0``; :func:`component_refs`), each with its ``key_path`` set; keys in ``skip``
    are left out."""
    return {key: catalogue.build(kind, ref.name, configs[key], key_path=path)
            for key, path, kind, ref in component_refs(recipe) if key not in skip}


def target_key(target: str, recipe: Recipe) -> str | None:
    """The component key (``relaxation``, ``regularisers.0``) a schedule target names, or ``None``."""
    parts = target.split(".")
    if parts[0] in ("search_space", "relaxation", "update_rule", "discretiser") and len(parts) == 2:
        return parts[0]
    if parts[0] in LIST_SLOTS and len(parts) == 3:
        refs = getattr(recipe, parts[0])
        idx = int(parts[1]) if parts[1].isdigit() else next((i for i, ref in enumerate(refs) if ref.name == parts[1]), None)
        return f"{parts[0]}.{idx}" if idx is not None and idx < len(refs) else None
    return None


def find_target(target: str, components: list[tuple[str, Any]], recipe: Recipe) -> tuple[Any, str]:
    """The component and hyperparameter a schedule target such as ``relaxation.tau`` or
    ``regularisers.beta_decay.weight`` names (a regulariser by its component name or index);
    ``components`` are ``(key, component)`` pairs. Raises KeyError if there is none."""
    comps = dict(components)
    key = target_key(target, recipe)
    if key is None or key not in comps:
        raise KeyError(target)
    comp = comps[key]
    parts = target.split(".")
    if parts[-1] not in comp.hparams:
        raise KeyError(target)
    return comp, parts[-1]


def schedule_target_problems(recipe: Recipe, components: list[tuple[str, Any]],
                             unbuilt: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """A problem for each schedule whose ``target`` names no runtime hyperparameter (listing those
    that can be scheduled), and for each whose planned values (:meth:`Schedule.planned_values`) the
    target's ``Config`` field refuses. Schedules in ``unbuilt`` (refused params), and those whose
    target is a component in ``unbuilt``, are not checked: their own problems are reported."""
    problems, comps = [], dict(components)
    for i in range(len(recipe.schedules)):
        if f"schedules.{i}" in unbuilt:
            continue
        schedule = comps[f"schedules.{i}"]
        target = schedule.config.target
        if target_key(target, recipe) in unbuilt:
            continue
        try:
            comp, key = find_target(target, components, recipe)
            problems += _planned_value_problems(schedule, comp, key, recipe.trainer.epochs, i)
        except KeyError:
            known = [f"{k}.{h}" if k.split(".")[0] not in LIST_SLOTS else
                     f"{k.split('.')[0]}.{getattr(recipe, k.split('.')[0])[int(k.split('.')[1])].name}.{h}"
                     for k, c in components for h in c.hparams]
            problems.append((f"unknown schedule target {target!r}; schedulable: {', '.join(known) or '(none)'}",
                             f"recipe.schedules[{i}].params.target"))
    return problems


def composition_problems(recipe: Recipe, components: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """What the chosen components cannot do together, found from their classes before anything runs:

    * ``data.train_portion: 1.0`` (no validation half) with an update rule that draws validation
      batches (``uses_valid_batch``);
    * a regulariser that perturbs the weight step's op weights (``perturb_op_weights``, SDARTS) with an
      update rule whose weight step does not run on them (``perturbable_weight_step``), or with a
      relaxation that samples one op per edge (``sets_active``);
    * ``trainer.dtype: float64`` with ``trainer.autocast`` (half precision would undo it)."""
    comps = dict(components)
    rule, relaxation = comps["update_rule"], comps["relaxation"]
    problems = []
    if recipe.trainer.dtype == "float64" and recipe.trainer.autocast != "off":
        problems.append((f"autocast {recipe.trainer.autocast!r} computes the forward pass in half precision, which "
                         "undoes dtype float64; set trainer.autocast: off or trainer.dtype: float32",
                         "recipe.trainer.autocast"))
    if recipe.data.train_portion >= 1.0 and rule.uses_valid_batch:
        problems.append((f"train_portion 1.0 leaves no validation half, but update rule {recipe.update_rule.name!r} "
                         f"draws its α batches from one; use a value below 1 (0.5 is the DARTS / NAS-Bench-201 "
                         f"split), or an update rule that takes no validation batch (single_level)",
                         "recipe.data.train_portion"))
    for i, ref in enumerate(recipe.regularisers):
        if not comps[f"regularisers.{i}"].perturbs_op_weights:
            continue
        if not rule.perturbable_weight_step:
            problems.append((f"regulariser {ref.name!r} perturbs the op weights of the weight step, but update rule "
                             f"{recipe.update_rule.name!r} has no separate weight step that runs on them "
                             f"(UpdateRule.perturbable_weight_step); use bilevel", f"recipe.regularisers[{i}].name"))
        if relaxation.sets_active:
            problems.append((f"regulariser {ref.name!r} perturbs dense op weights, but relaxation "
                             f"{recipe.relaxation.name!r} samples one op per edge", f"recipe.regularisers[{i}].name"))
    return problems


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(==|!=|>=|<=|>|<)\s*([0-9][0-9A-Za-z.+-]*))?\s*$")
_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b,
            "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version (``"0.10.2rc1"`` → ``(0, 10, 2)``), for comparisons."""
    out = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        out.append(int(digits.group()))
        if digits.end() < len(part):
            break
    while out and out[-1] == 0:  # 1.0 == 1.0.0
        out.pop()
    return tuple(out)


def requirement_problems(requires: list[str]) -> list[tuple[str, str]]:
    """A problem for each entry of a recipe's ``requires`` that the installed distributions do not
    satisfy. An entry is a distribution name with at most one comparison of release numbers
    (``diffnas-sparsemax``, ``diffnas-sparsemax>=0.1``; ``==``, ``!=``, ``>=``, ``<=``, ``>``, ``<``)."""
    problems = []
    for i, req in enumerate(requires):
        where = f"recipe.requires[{i}]"
        m = _REQUIREMENT.match(req)
        if m is None:
            problems.append((f"{req!r} is not a requirement such as 'diffnas-sparsemax' or 'diffnas-sparsemax>=0.1'",
                             where))
            continue
        name, op, wanted = m.groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append((f"the recipe requires the distribution {name!r}, which is not installed "
                             f"(pip install {name})", where))
            continue
        if op is not None and not _COMPARE[op](_release(installed), _release(wanted)):
            problems.append((f"the recipe requires {name}{op}{wanted}, but {name} {installed} is installed", where))
    return problems


def _planned_value_problems(schedule: Any, comp: Any, key: str, epochs: int, index: int) -> list[tuple[str, str]]:
    """The first of ``schedule``'s planned values that the validators of ``comp``'s Config field
    ``key`` refuse (none when the schedule plans nothing or ``key`` is not a Config field)."""
    planned = schedule.planned_values(epochs)
    if not planned or not attrs.has(type(comp.config)) or key not in attrs.fields_dict(type(comp.config)):
        return []
    for epoch_or_step, value in enumerate(planned):
        try:
            attrs.evolve(comp.config, **{key: value})
        except (TypeError, ValueError) as exc:
            reason = str(exc.args[0]) if exc.args else type(exc).__name__
            return [(f"schedule {schedule.config.target!r} plans the value {value!r}, which the target refuses "
                     f"({reason}); change the schedule's values", f"recipe.schedules[{index}].params")]
    return []


def _component_config(catalogue: Any, kind: str, name: str, params: Any, path: str) -> tuple[Any, list]:
    entry = catalogue.entries[kind].get(name)
    if entry is None:
        return None, [(catalogue.unknown_message(kind, name), f"{path}.name")]
    cfg, probs = structure(params or {}, entry.cls.Config, f"{path}.params")
    return cfg, probs


def _check_components_raw(data: dict, catalogue: Any) -> list[tuple[str, str]]:
    problems = []
    for slot, kind in SLOTS.items():
        raw = data.get(slot)
        refs = raw if (slot in LIST_SLOTS and isinstance(raw, list)) else [raw]
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
                continue
            path = f"recipe.{slot}" if slot not in LIST_SLOTS else f"recipe.{slot}[{i}]"
            params = ref.get("params", {})
            if not isinstance(params, dict):
                continue
            _, probs = _component_config(catalogue, kind, ref["name"], params, path)
            problems += probs
    return problems


def load_recipe(path: str | os.PathLike, catalogue: Any, overrides: list[str] | None = None) -> ResolvedRecipe:
    """Read, override and validate a recipe file."""
    data = read_yaml(path)
    if overrides:
        if not isinstance(data, dict):
            data = {}
        data = apply_overrides(data, overrides, source=str(path))
    return resolve_recipe(data, catalogue, source=str(path))
