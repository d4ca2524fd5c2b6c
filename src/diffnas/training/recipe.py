"""Training recipes: the strict YAML schema of ``diffnas train`` (one file per protocol).

Loading follows the search recipes (:mod:`diffnas.core.recipe`): safe YAML, ``--set key=value``
overrides, strict structuring (unknown keys, wrong types and out-of-range values are reported
together as ``message @ path`` lines). The ``data`` section is the search's
:class:`~diffnas.core.recipe.DataConfig`.

Bundled protocols in ``examples/train/``: ``darts_cifar10.yaml`` (METHODS.md §1: 20 cells, C=36,
600 epochs, batch 96, SGD 0.025 cosine, cutout 16, drop-path 0.3, auxiliary 0.4, wd 3e-4, clip 5),
``nb201_cifar10.yaml`` (NAS-Bench-201: 200 epochs, C=16, N=5, SGD 0.1 Nesterov momentum 0.9, wd 5e-4,
cosine, batch 256) and ``smoke_cpu.yaml`` (seconds on a CPU).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import attrs

from ..core.config import cells, channels, in_range, non_negative, one_of, positive, seed_range, structure, unstructure
from ..core.errors import RecipeError
from ..core.recipe import DataConfig, OptimizerConfig, apply_overrides, read_yaml


def _sgd() -> OptimizerConfig:
    # the DARTS evaluation optimiser (METHODS.md §1)
    return OptimizerConfig(name="sgd", lr=0.025, momentum=0.9, nesterov=False, weight_decay=3e-4, schedule="cosine", lr_min=0.0)


@attrs.frozen
class NetworkConfig:
    """The discrete network. ``None`` keeps the search space's default (NB201: C=16, N=5)."""

    C: Optional[int] = attrs.field(default=None, validator=channels)
    layers: Optional[int] = attrs.field(default=None, validator=cells)  # DARTS space: cells
    N: Optional[int] = attrs.field(default=None, validator=cells)  # NB201: cells per stage
    auxiliary: bool = False
    drop_path_prob: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0, hi_open=True))


@attrs.frozen
class TrainLoopConfig:
    """How the network is trained."""

    epochs: int = attrs.field(default=600, validator=positive)
    batch_size: int = attrs.field(default=96, validator=positive)
    seed: int = attrs.field(default=0, validator=seed_range)
    device: str = "auto"
    optimizer: OptimizerConfig = attrs.field(factory=_sgd)
    grad_clip: Optional[float] = attrs.field(default=5.0, validator=positive)
    cutout: int = attrs.field(default=0, validator=non_negative)  # cutout square side in pixels (0: off)
    auxiliary_weight: float = attrs.field(default=0.4, validator=non_negative)
    train_split: str = attrs.field(default="train+valid", validator=one_of("train+valid", "train"))
    steps_per_epoch: Optional[int] = attrs.field(default=None, validator=positive)
    eval_batch_size: Optional[int] = attrs.field(default=None, validator=positive)
    eval_limit: Optional[int] = attrs.field(default=None, validator=positive)  # test images evaluated (None: all)
    deterministic: bool = False
    channels_last: bool = False
    autocast: str = attrs.field(default="off", validator=one_of("off", "bf16", "fp16"))
    cuda_graphs: bool = False  # replay each epoch's training step as one CUDA graph (diffnas.core.graphs)


@attrs.frozen
class TrainOutputConfig:
    dir: Optional[str] = None
    progress: bool = True


@attrs.frozen
class TrainRecipe:
    """A whole retraining protocol."""

    network: NetworkConfig = attrs.field(factory=NetworkConfig)
    data: DataConfig = attrs.field(factory=DataConfig)
    trainer: TrainLoopConfig = attrs.field(factory=TrainLoopConfig)
    output: TrainOutputConfig = attrs.field(factory=TrainOutputConfig)
    version: int = attrs.field(default=1, validator=one_of(1))
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _plain(unstructure(self))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def resolve_train_recipe(data: Any, catalogue: Any = None, source: str | None = None) -> TrainRecipe:
    """Validate a training recipe document; raise one :class:`RecipeError` with every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([(f"expected a mapping at the top level, got {type(data).__name__}", "recipe")], source)
    recipe, problems = structure(data, TrainRecipe, "recipe")
    if recipe is not None and catalogue is not None and recipe.data.dataset not in catalogue.entries["dataset"]:
        problems.append((catalogue.unknown_message("dataset", recipe.data.dataset), "recipe.data.dataset"))
    if problems:
        raise RecipeError(problems, source)
    return recipe


def load_train_recipe(path: str | os.PathLike | None, overrides: list[str] | None = None, catalogue: Any = None) -> TrainRecipe:
    """Read (``None``: all defaults), override and validate a training recipe."""
    data = read_yaml(path) if path is not None else {}
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides, source=str(path) if path else None)
    return resolve_train_recipe(data, catalogue, str(path) if path is not None else None)
