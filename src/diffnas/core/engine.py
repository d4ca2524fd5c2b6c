"""The search engine: one loop that runs any composition of components.

The engine owns what every method shares: the supernet, the architecture parameters α (one
``[num_edges, num_ops]`` tensor per cell type), the two optimisers and their schedules, the data,
the per-epoch record, checkpoints and lifecycle hooks. The components decide the rest:

* the **update rule** owns the order of weight and α steps on each batch (:meth:`Search.loss`,
  :meth:`Search.weights_step`, :meth:`Search.arch_step` are its building blocks);
* the **relaxation** turns α into op weights on every forward pass;
* **regularisers** add loss terms (:meth:`Search.loss`), act on α after its step, or change the
  supernet (``attach``), and stopping rules among them call :meth:`Search.request_stop`;
* **schedules** set runtime hyperparameters (``relaxation.tau`` ...) at epoch or step starts;
* the **discretiser** returns the current genotype at each epoch end and the final one;
* **loggers** (the recipe's ``loggers`` list) write the record elsewhere through the lifecycle hooks
  and are closed when the run ends, also after an error.

Per epoch, in order: learning rates are set; ``diffnas_epoch_start`` fires (schedules first); each
step fires ``diffnas_step_start``, runs the update rule and fires ``diffnas_step_end``; then the
epoch's metrics are read (the only host synchronisation of the epoch), the genotype is
discretised and scored, ``diffnas_epoch_end`` fires, a checkpoint is saved and then the record written
(so ``metrics.jsonl`` never holds an epoch the checkpoint lacks). With ``diagnostics.every_steps``
the step records (:mod:`diffnas.core.step_records`) are taken between steps and go into the epoch's
record. Non-finite values are checked before
every checkpoint (see :meth:`Search._check_finite`); a resumed run repeats an uninterrupted one bit
for bit except wall-clock fields (``outputs.TIMING_KEYS``).

Distributed seam: :class:`World` describes the process group. With ``WORLD_SIZE > 1`` (``torchrun``)
each rank takes its share of every batch and :meth:`Search.sync_grads` all-reduces gradients
after each backward; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import attrs
import torch
from torch import nn

from ..data.loader import DeviceLoader
from .cells import alpha_shape
from .errors import NonFiniteError, PluginError, RecipeError, RunError
from .fast_paths import fused_cells_reasons, install_fused_supernet
from .genotype import Genotype
from .protocols import DataBundle, OpWeights
from .recipe import OptimizerConfig, ResolvedRecipe, build_components, component_refs, find_target, recipe_fingerprint

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- helpers


@attrs.frozen
class World:
    """The process group a search runs in (a single process unless launched by ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def make_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter], capturable: bool = False) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names; ``capturable`` keeps Adam's step count on the device (CUDA graphs)."""
    params = list(params)
    if cfg.name == "sgd":  # SGD keeps no host-side state: capturable as it is
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            capturable=capturable)


def lr_at(cfg: OptimizerConfig, epoch: int, epochs: int) -> float:
    """Per-epoch learning rate: constant, or cosine from ``lr`` to ``lr_min`` over ``epochs``
    (``CosineAnnealingLR(T_max=epochs, eta_min=lr_min)`` stepped once per epoch, as DARTS does)."""
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean over edges of the entropy of each edge's normalised op strengths."""
    q = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(q * q.clamp_min(1e-12).log()).sum(-1).mean()


@attrs.define
class SearchState:
    """Where a search is: the next epoch and step to run and the records so far."""

    epoch: int = 0
    step: int = 0  # next step inside ``epoch``
    global_step: int = 0
    history: list[dict] = attrs.field(factory=list)
    stop_reason: str | None = None
    finished: bool = False
    #: the current epoch's step records (``diagnostics.every_steps``), moved into its record at the epoch end
    step_records: list[dict] = attrs.field(factory=list)


def cuda_graph_reasons(recipe: Any, relaxation: Any, schedules: list[Any], device: torch.device,
                       world_size: int = 1, regularisers: Iterable[Any] = ()) -> list[str]:
    """Why ``trainer.cuda_graphs`` cannot serve this recipe, known before the first step (the
    search and ``diffnas validate`` both ask); empty if nothing is known to refuse. Regularisers
    state their own reasons (:meth:`~diffnas.core.protocols.Regulariser.fast_path_refusal`)."""
    t, reasons = recipe.trainer, []
    reasons += [f"regulariser {reg.name!r} {why}" for reg in regularisers
                if (why := reg.fast_path_refusal("trainer.cuda_graphs")) is not None]
    if device.type != "cuda":
        reasons.append(f"needs a CUDA device (the search runs on {device.type})")
    if t.on_nonfinite == "skip":
        reasons.append("on_nonfinite: skip decides on the host after every step")
    if world_size > 1:
        reasons.append("more than one process (torchrun) is not supported with graphs yet")
    if relaxation.sets_active:
        reasons.append(f"relaxation {recipe.relaxation.name!r} samples one op per edge and the supernet "
                       "picks the ops to run on the host at every step")
    per_step = [f"schedules[{i}] ({ref.name})" for i, (ref, s) in enumerate(zip(recipe.schedules, schedules))
                if s.per_step]
    if per_step:
        reasons.append(f"per-step schedules change values between replays: {', '.join(per_step)}")
    return reasons


def composition_problems(resolved: ResolvedRecipe, components: dict[str, Any], catalogue: Any) -> list[tuple[str, str]]:
    """Every component's :meth:`~diffnas.core.protocols.Component.check_composition` problems."""
    from .protocols import Composition

    composition = Composition(resolved.recipe, components, catalogue, resolved.source)
    problems: list[tuple[str, str]] = []
    for comp in components.values():
        problems += comp.check_composition(composition) or []
    return problems


def preflight_problems(resolved: ResolvedRecipe, catalogue: Any, pm: Any) -> list[tuple[str, str]]:
    """What a search of ``resolved`` would refuse before its first step, found from the recipe and
    its components without data or a supernet: the components' own checks across each other
    (:func:`composition_problems`), the device, and the speed switches' refusals
    (:func:`cuda_graph_reasons`, :func:`diffnas.core.fast_paths.fused_cells_reasons`). ``diffnas validate``
    reports these; what shows only once the supernet exists (a regulariser that adds modules the
    fused cells cannot hold, a host synchronisation inside a step) is refused by the search."""
    r, problems = resolved.recipe, []
    comps = build_components(r, resolved.configs, catalogue)
    regs = [comps[f"regularisers.{i}"] for i in range(len(r.regularisers))]
    problems += composition_problems(resolved, comps, catalogue)  # the components' checks across each other
    device = pm.hook.diffnas_resolve_device(requested=r.trainer.device)
    if device is None:
        problems.append((f"no plugin could resolve device {r.trainer.device!r}", "recipe.trainer.device"))
    if r.trainer.fused_cells:
        for reason in fused_cells_reasons(comps["search_space"], comps["relaxation"], catalogue, regs):
            problems.append((f"trainer.fused_cells: {reason}; set trainer.fused_cells: false to use the plain "
                             "supernet", "recipe.trainer.fused_cells"))
    if r.trainer.cuda_graphs and device is not None:
        schedules = [comps[f"schedules.{i}"] for i in range(len(r.schedules))]
        reasons = cuda_graph_reasons(r, comps["relaxation"], schedules, device, World.from_env().world_size, regs)
        from .graphs import unsafe_step_hooks

        hooks = unsafe_step_hooks(pm, [(k, c) for k, c in comps.items() if not getattr(c, "per_step", False)])
        if hooks:
            reasons.append(_UNSAFE_HOOKS + ", ".join(hooks))
        if reasons:
            problems.append((f"trainer.cuda_graphs: {'; '.join(reasons)}; set trainer.cuda_graphs: false to run the "
                             "step eagerly", "recipe.trainer.cuda_graphs"))
    return problems


# --------------------------------------------------------------------------- the search


class Search:
    """One architecture search, built from a resolved recipe.

    **The surface a plugin may use** (stable; :data:`Search.PUBLIC_API` lists the names and
    ``docs/plugins.md`` documents each). Everything else (``pm``, ``resolved``, ``out_dir``,
    ``last_checkpoint``, ``run``, ``state_dict`` ... and every ``_name``) belongs to the engine and its
    launchers and may change.

    * to read: ``recipe`` (the validated :class:`~diffnas.core.recipe.Recipe`: ``trainer``,
      ``data`` ...), ``source`` (the recipe file, for error messages), ``run_dir``, ``device``, ``world``,
      ``epochs``, ``steps_per_epoch``, ``state`` (:class:`SearchState`), ``history`` (the finished
      epochs' records), ``data`` (the :class:`~diffnas.core.protocols.DataBundle`), ``catalogue``;
    * the components: ``search_space``, ``relaxation``, ``update_rule``, ``discretiser``,
      ``regularisers``, ``schedules``, ``components()``;
    * the architecture and weights: ``cells`` (cell type → cell graph), ``alphas`` (α per cell type,
      plus the space's extra architecture parameters), ``model`` (the supernet), ``train_loader``,
      ``valid_loader``, ``w_optimizer``, ``a_optimizer``;
    * building blocks of a step (update rules): ``op_weights()``, ``forward()``, ``loss()``,
      ``weight_step_op_weights()``, ``weight_parameters()``, ``arch_parameters()``, ``weights_step()``, ``arch_step()``,
      ``clip_weight_grads()``, ``sync_grads()``;
    * views and actions: ``probabilities()``, ``evaluate()``, ``score()``, ``get_hparam()``,
      ``set_hparam()``, ``request_stop()``, ``set_batch_size()``, ``provenance()``;
    * the α warm-up: ``warmup_end_step`` (the first global step that updates α), ``in_warmup``.

    :param resolved: the validated recipe.
    :param pm: the plugin manager (lifecycle hooks are called through it).
    :param catalogue: the component catalogue.
    :param out_dir: where outputs go (``None``: nothing is written).
    :param data: preloaded data (tests); ``None`` loads ``recipe.data``.
    """

    #: the names a plugin may read or call (see the class docstring and docs/plugins.md)
    PUBLIC_API: tuple[str, ...] = (
        "recipe", "source", "run_dir", "device", "world", "epochs", "steps_per_epoch", "state", "history", "data", "catalogue",
        "search_space", "relaxation", "update_rule", "discretiser", "regularisers", "schedules", "components",
        "cells", "alphas", "model", "train_loader", "valid_loader", "w_optimizer", "a_optimizer",
        "op_weights", "forward", "loss", "weight_step_op_weights", "weight_parameters", "arch_parameters",
        "weights_step", "arch_step",
        "clip_weight_grads", "sync_grads",
        "probabilities", "evaluate", "score", "get_hparam", "set_hparam", "request_stop", "provenance",
        "warmup_end_step", "in_warmup", "set_batch_size",
    )

    def __init__(self, resolved: ResolvedRecipe, pm: Any, catalogue: Any, out_dir: str | os.PathLike | None = None,
                 data: DataBundle | None = None, world: World | None = None, overwrite: bool = False):
        self.resolved = resolved
        self.recipe = r = resolved.recipe
        self.pm, self.catalogue = pm, catalogue
        self.world = world or World.from_env()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        t = r.trainer
        self.device = self._resolve_device(t.device)
        if self.world.world_size > 1:
            self._init_distributed()
        seed_everything(t.seed, t.deterministic)
        if self.device.type == "cuda" and not t.deterministic:
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels
        self.state = SearchState()
        self._stop_reason: str | None = None

        # components
        built = build_components(r, resolved.configs, catalogue)  # each knows its key path
        self.search_space, self.relaxation = built["search_space"], built["relaxation"]
        self.update_rule, self.discretiser = built["update_rule"], built["discretiser"]
        self.regularisers = [built[f"regularisers.{i}"] for i in range(len(r.regularisers))]
        self.schedules = [built[f"schedules.{i}"] for i in range(len(r.schedules))]
        self.loggers = [built[f"loggers.{i}"] for i in range(len(r.loggers))]
        problems = composition_problems(resolved, built, catalogue)  # as `diffnas validate` reports them
        if problems:
            raise RecipeError(problems, resolved.source)

        with default_dtype(t.dtype):  # trainer.dtype: what is built here (supernet, α, batches) takes it
            # data
            try:
                self.data = data if data is not None else catalogue.build("dataset", r.data.dataset).load(r.data, t.seed)
            except RecipeError as exc:  # a dataset's params checked at load time: name the recipe file
                if exc.source is None and resolved.source is not None:
                    raise RecipeError(exc.problems, resolved.source) from None
                raise
            mk = lambda split, stream: DeviceLoader(  # noqa: E731
                split, t.batch_size, self.device, self.data.mean, self.data.std, r.data.augment, t.seed, stream,
                pad=self.data.pad, channels_last=t.channels_last, rank=self.world.rank, world_size=self.world.world_size)
            self.train_loader = mk(self.data.train, 0)
            self.valid_loader = mk(self.data.valid, 1) if self.update_rule.uses_valid_batch else None
            self._steps_from_loader()
            # update rules that draw no validation batch (single-level) still record valid_loss/valid_acc:
            # measured at each epoch end on fixed, unaugmented held-out images (see _held_out_metrics)
            # (and so do a bi-level rule's warm-up epochs, which draw none either)
            needs_held_out = self.valid_loader is None or t.warmup_epochs > 0 or t.warmup_steps > 0
            self.held_out_loader = None if not needs_held_out or len(self.data.valid) == 0 else DeviceLoader(
                self.data.valid, t.batch_size, self.device, self.data.mean, self.data.std, False, t.seed, 3,
                channels_last=t.channels_last)

            # supernet and architecture parameters
            self.cells = self.search_space.cells()
            self.model = self.search_space.build_supernet(self.data.num_classes).to(self.device)
            if t.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
            gen = torch.Generator().manual_seed(t.seed)
            self.alphas = nn.ParameterDict()
            for name, graph in self.cells.items():
                e, o = alpha_shape(graph)
                self.alphas[name] = nn.Parameter(self.relaxation.init_alpha(e, o, gen).to(self.device))
            for name, shape in self.search_space.extra_arch_parameters().items():  # e.g. LHD's output paths
                if name in self.alphas:
                    raise PluginError(f"search space {r.search_space.name!r}: extra architecture parameter {name!r} "
                                      f"clashes with a cell type")
                self.alphas[name] = nn.Parameter((1e-3 * torch.randn(tuple(shape), generator=gen)).to(self.device))
            self.w_optimizer = make_optimizer(t.weights_optimizer, self.model.parameters(), t.cuda_graphs)
            self.a_optimizer = make_optimizer(t.arch_optimizer, self.alphas.parameters(), t.cuda_graphs)

            self.relaxation.attach(self)
            for reg in self.regularisers:
                reg.attach(self)
            #: the plain supernet when ``trainer.fused_cells`` swapped in the space's fused one (its weights
            #: go stale; ``self.model.plain_state_dict(self.plain_model)`` gives the current ones), else None
            self.plain_model: nn.Module | None = None
            if t.fused_cells:  # after attach, so a modified supernet is seen (and refused)
                install_fused_supernet(self)
        self.autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.autocast]
        self._registered: list[str] = []
        # device-side step bookkeeping, updated in place by every step (so a CUDA graph can own it):
        # the first global step with a non-finite loss or α (-1: none), the global step counter, and
        # the epoch's metric sums
        self._nonfinite_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._global_step_t = torch.zeros((), dtype=torch.long, device=self.device)
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._step_graph = None
        self._step_hooks_checked = True  # set False when a step graph is made: its first step watches the hooks
        if t.cuda_graphs:
            self._check_cuda_graphs()
        #: ``{"path", "epoch", "step"}`` of the last checkpoint written (or resumed from), else None
        self.last_checkpoint: dict[str, Any] | None = None
        #: True once :meth:`load_state_dict` restored a checkpoint (the writer then rewrites
        #: ``metrics.jsonl`` from the checkpoint's history instead of starting afresh)
        self.resumed = False
        #: a new search into a directory holding an earlier run moves that run aside (``--overwrite``)
        #: instead of refusing; see :meth:`diffnas.core.rundir.RunDir.claim`
        self.overwrite = overwrite
        #: notes for the next ``metrics.jsonl`` record (e.g. a resume forced past a changed recipe)
        self.pending_notes: list[dict[str, Any]] = []
        #: where ``trainer.init_from`` loaded the supernet from (recorded in provenance.json), once loaded
        self.init_source: dict[str, Any] | None = None
        self._init_done = t.init_from is None
        self._warm_phase: bool | None = None  # the phase the step graph was captured in

    # ------------------------------------------------------------------ set-up helpers

    def _resolve_device(self, requested: str) -> torch.device:
        dev = self.pm.hook.diffnas_resolve_device(requested=requested)
        if dev is None:
            raise RecipeError([(f"no plugin could resolve device {requested!r}", "recipe.trainer.device")],
                              self.resolved.source)
        if self.world.world_size > 1 and dev.type == "cuda":
            dev = torch.device("cuda", self.world.local_rank)
        return dev

    def _init_distributed(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._owns_process_group = True  # destroyed when run() ends (else gloo/NCCL threads outlive it)

    def components(self) -> list[tuple[str, Any]]:
        """``(key, component)`` pairs: the keys schedules and checkpoints use."""
        out = [("search_space", self.search_space), ("relaxation", self.relaxation),
               ("update_rule", self.update_rule), ("discretiser", self.discretiser)]
        out += [(f"regularisers.{i}", c) for i, c in enumerate(self.regularisers)]
        out += [(f"schedules.{i}", c) for i, c in enumerate(self.schedules)]
        out += [(f"loggers.{i}", c) for i, c in enumerate(self.loggers)]
        return out

    def _target(self, target: str) -> tuple[Any, str]:
        """Resolve a schedule target such as ``relaxation.tau`` or ``regularisers.beta_decay.weight``
        (a regulariser is named by its component name or its index)."""
        return find_target(target, self.components(), self.recipe)

    def _check_cuda_graphs(self) -> None:
        """Refuse (one RecipeError listing every reason) what a captured step cannot serve; what only
        shows when the step runs (a host synchronisation inside a component) is refused by
        :class:`~diffnas.core.graphs.StepGraph` at the first step."""
        from .graphs import refuse, unsafe_step_hooks

        reasons = cuda_graph_reasons(self.recipe, self.relaxation, self.schedules, self.device, self.world.world_size,
                                     self.regularisers)
        hooks = unsafe_step_hooks(self.pm, [(k, c) for k, c in self.components() if not getattr(c, "per_step", False)])
        if hooks:
            reasons.append(_UNSAFE_HOOKS + ", ".join(hooks))
        if reasons:
            raise refuse("; ".join(reasons), self.resolved.source)

    def set_hparam(self, target: str, value: Any) -> None:
        """Set a runtime hyperparameter (what schedules do): ``target`` as a schedule names it
        (``relaxation.tau``, ``regularisers.beta_darts.weight``, ``regularisers.0.weight``)."""
        comp, key = self._target(target)
        comp.hparams[key] = value

    def get_hparam(self, target: str) -> Any:
        """The current value of a runtime hyperparameter (``target`` as in :meth:`set_hparam`)."""
        comp, key = self._target(target)
        return comp.hparams[key]

    @property
    def source(self) -> str | None:
        """The recipe file this search was built from (``None`` for a recipe given as data); name it
        in a :class:`~diffnas.core.errors.RecipeError` a component raises."""
        return self.resolved.source

    @property
    def run_dir(self) -> Path | None:
        """The run directory (``None`` when the search writes nothing). Loggers write their files
        here, from rank 0 only (``world.is_main``), with :func:`diffnas.core.rundir.write_text`."""
        return self.out_dir

    @property
    def history(self) -> list[dict]:
        """The records of the finished epochs (what ``metrics.jsonl`` holds), oldest first."""
        return self.state.history

    def provenance(self) -> dict[str, dict[str, Any]]:
        """Which plugin, class, distribution and version supplied each component (and the dataset):
        ``{key: {"kind", "name", "class", "plugin", "distribution", "version"}}``; saved as the run's
        ``provenance.json``."""
        from ..registry import provenance

        refs = [(key, kind, ref.name) for key, _, kind, ref in component_refs(self.recipe)]
        out = provenance(self.catalogue, refs + [("data", "dataset", self.recipe.data.dataset)])
        if self.init_source is not None:
            out["init_from"] = {"kind": "init_from", **self.init_source}
        return out

    # ------------------------------------------------------------------ warm-up and a shared start

    @property
    def warmup_end_step(self) -> int:
        """The first global step that updates α: ``trainer.warmup_epochs`` epochs plus
        ``trainer.warmup_steps`` steps train only the weights before it."""
        t = self.recipe.trainer
        return t.warmup_epochs * self.steps_per_epoch + t.warmup_steps

    @property
    def in_warmup(self) -> bool:
        """The step about to run (or running) is a warm-up step: weights only, α frozen."""
        return self.state.global_step < self.warmup_end_step

    def apply_init_from(self) -> None:
        """Load ``trainer.init_from``'s supernet weights (and α when asked) into this fresh search;
        a no-op without ``init_from``, once done, or after a checkpoint was restored (a resumed run
        continues from its own state and needs the source no more). :meth:`run` calls it before
        anything is written; a population calls it for its members before stacking them."""
        if self._init_done:
            return
        from .init_from import load_init_source

        self.init_source = load_init_source(self)
        self._init_done = True

    # ------------------------------------------------------------------ building blocks for update rules

    def op_weights(self) -> dict[str, OpWeights]:
        """The relaxation's op weights for every cell type (may sample); the search space's extra
        architecture parameters (``extra_arch_parameters``) are passed on as they are."""
        return {name: self.relaxation.cell_op_weights(name, alpha, self) if name in self.cells else alpha
                for name, alpha in self.alphas.items()}

    def forward(self, x: torch.Tensor, op_weights: dict[str, OpWeights] | None = None) -> torch.Tensor:
        ow = self.op_weights() if op_weights is None else op_weights
        if self.autocast_dtype is not None:
            # a captured step must not keep autocast's cache of cast weights (stale after each update)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=not self.recipe.trainer.cuda_graphs):
                return self.model(x, ow).float()
        return self.model(x, ow)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], phases: tuple[str, ...],
             op_weights: dict[str, OpWeights] | None = None) -> dict[str, torch.Tensor]:
        """Cross-entropy of the supernet on ``batch`` plus every regulariser term of ``phases``;
        ``op_weights`` as in :meth:`forward` (default: the relaxation's).

        :returns: ``{"loss": total, "ce": cross-entropy, "correct": #correct, "count": batch size}``.
        """
        x, y = batch
        logits = self.forward(x, op_weights)
        ce = nn.functional.cross_entropy(logits, y)
        total = ce
        for reg in self.regularisers:
            for phase in phases:
                term = reg.loss(self, phase) if phase in reg.phases else None
                if term is not None:
                    total = total + term
        correct = (logits.detach().argmax(1) == y).sum()
        # a fill, not a host-to-device copy (a graph would bake in the copy's source)
        return {"loss": total, "ce": ce.detach(), "correct": correct, "count": y.new_full((), y.numel())}

    def weight_step_op_weights(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, OpWeights] | None:
        """The op weights a weight step on ``batch`` runs on when regularisers perturb them
        (:meth:`~diffnas.core.protocols.Regulariser.perturb_op_weights`, SDARTS): the relaxation's,
        detached (the weight step takes no α gradient), then each perturbing regulariser's in recipe
        order. ``None`` when no regulariser perturbs, so that :meth:`loss` draws the relaxation's
        own as always. Update rules with ``perturbable_weight_step`` pass it to :meth:`loss`."""
        perturbers = [r for r in self.regularisers if r.perturbs_op_weights]
        if not perturbers:
            return None
        with torch.no_grad():
            ow = {k: (OpWeights(v.weights.detach(), v.active) if isinstance(v, OpWeights) else v.detach())
                  for k, v in self.op_weights().items()}
        for reg in perturbers:
            out = reg.perturb_op_weights(self, ow, batch)
            ow = ow if out is None else out
        return ow

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.parameters())

    def sync_grads(self, params: Iterable[torch.Tensor]) -> None:
        """All-reduce (average) gradients across ranks; a no-op in a single process."""
        if self.world.world_size == 1:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)

    def weights_step(self, loss: torch.Tensor) -> None:
        """Backward ``loss`` into the weights only, clip, and step the weight optimiser."""
        params = self.weight_parameters()
        self.w_optimizer.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.sync_grads(params)
        self.clip_weight_grads()
        self.w_optimizer.step()

    def clip_weight_grads(self) -> None:
        if self.recipe.trainer.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.weight_parameters(), self.recipe.trainer.grad_clip)

    def arch_step(self) -> None:
        """Step the α optimiser on the gradients already in ``alpha.grad``, then let regularisers
        act on α (projections)."""
        self.sync_grads(self.arch_parameters())
        self.a_optimizer.step()
        for reg in self.regularisers:
            reg.after_arch_step(self)

    # ------------------------------------------------------------------ the member axis
    # A Population offers the same building blocks over K stacked members; a search is the case
    # K = 1 without a member axis, so an update rule written with these runs in both.

    K = 1

    def member_searches(self) -> list["Search"]:
        """The searches stepped together: this one (a population: its active members, in order)."""
        return [self]

    def member_values(self, values: Sequence[float], like: torch.Tensor) -> float:
        """Per-member host numbers (one per :meth:`member_searches`) as something that broadcasts
        over ``like``: here the single value itself, so a single run's arithmetic is unchanged."""
        return float(values[0])

    def member_view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-member tensor (from :meth:`member_sum`) shaped to broadcast over ``like``."""
        return t

    def member_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` per member: a scalar here, ``[K]`` in a population."""
        return t.sum()

    def weight_hparams(self) -> list[dict[str, float]]:
        """Each member's current weight-optimiser ``lr``, ``momentum`` and ``weight_decay`` (what a
        virtual SGD step, DARTS-V2's, needs)."""
        group = self.w_optimizer.param_groups[0]
        return [{"lr": float(group["lr"]), "momentum": float(group.get("momentum", 0.0)),
                 "weight_decay": float(group.get("weight_decay", 0.0))}]

    # ------------------------------------------------------------------ views of the architecture

    @torch.no_grad()
    def probabilities(self) -> dict[str, torch.Tensor]:
        """Deterministic op strengths per cell type (``relaxation.cell_probabilities``), detached;
        extra architecture parameters (not cell types) are left out."""
        return {name: self.relaxation.cell_probabilities(name, alpha.detach()) for name, alpha in self.alphas.items()
                if name in self.cells}

    def request_stop(self, reason: str) -> None:
        """Ask the engine to stop after the current epoch (stopping rules call this)."""
        self._stop_reason = self._stop_reason or reason

    def set_batch_size(self, batch_size: int) -> None:
        """Draw batches of ``batch_size`` images (training and validation halves) from the next
        epoch on; ``steps_per_epoch`` follows (``min(len(train_loader), trainer.steps_per_epoch)``).
        Call it between epochs (from ``diffnas_epoch_end`` or ``diffnas_epoch_start``): SGAS grows the
        batch by 8 after each decision. Checkpoints keep the size, so a resumed run continues with it.
        Refused with an α warm-up (``trainer.warmup_epochs`` / ``warmup_steps``: its end is counted in
        steps of a fixed ``steps_per_epoch``)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise PluginError(f"set_batch_size: expected a positive integer, got {batch_size!r}")
        loaders = [ld for ld in (self.train_loader, self.valid_loader) if ld is not None]
        if all(min(batch_size, ld.n) == ld.batch_size for ld in loaders):
            return
        st = self.state
        if 0 < st.step < self.steps_per_epoch:
            raise PluginError(f"set_batch_size({batch_size}) inside epoch {st.epoch} (after step {st.step}); "
                              "call it between epochs (diffnas_epoch_end or diffnas_epoch_start)")
        if self.recipe.trainer.warmup_epochs or self.recipe.trainer.warmup_steps:
            raise PluginError("set_batch_size cannot be combined with trainer.warmup_epochs / warmup_steps (the "
                              "warm-up's end and its epochs' valid loss are counted in steps of a fixed steps_per_epoch)")
        for loader in loaders:
            loader.set_batch_size(batch_size)
        self._steps_from_loader()

    def _steps_from_loader(self) -> None:
        t = self.recipe.trainer
        self.steps_per_epoch = min(len(self.train_loader), t.steps_per_epoch or len(self.train_loader))

    @property
    def epochs(self) -> int:
        return self.recipe.trainer.epochs

    # ------------------------------------------------------------------ the loop

    def _fire(self, hook: str, **kwargs: Any) -> Any:
        return getattr(self.pm.hook, hook)(**kwargs)

    def _register_components(self) -> None:
        for key, comp in self.components():
            name = f"search:{id(self)}:{key}"
            self.pm.register(comp, name=name)
            self._registered.append(name)

    def _unregister_components(self) -> None:
        for name in self._registered:
            self.pm.unregister(name=name)
        self._registered.clear()

    def _set_learning_rates(self, epoch: int) -> dict[str, float]:
        t = self.recipe.trainer
        lrs = {"lr": lr_at(t.weights_optimizer, epoch, t.epochs), "arch_lr": lr_at(t.arch_optimizer, epoch, t.epochs)}
        for opt, lr in ((self.w_optimizer, lrs["lr"]), (self.a_optimizer, lrs["arch_lr"])):
            for group in opt.param_groups:
                group["lr"] = lr
        return lrs

    def run(self, progress: bool | None = None) -> dict[str, Any]:
        """Run (or continue) the search to its end; return the final summary."""
        from .outputs import RunWriter

        self.apply_init_from()
        writer = RunWriter(self) if (self.out_dir is not None and self.world.is_main) else None
        if writer is not None:
            writer.open()
        self._register_components()
        ended = False
        try:
            with default_dtype(self.recipe.trainer.dtype):  # scalars made while stepping match the supernet's
                summary = self._run(writer, self.recipe.output.progress if progress is None else progress)
            ended = True
            return summary
        finally:
            self._unregister_components()
            for lg in self.loggers:
                lg.close(self)
            if writer is not None:
                writer.close()
            if getattr(self, "_owns_process_group", False):
                import torch.distributed as dist

                if ended:  # no rank tears its group down while another still talks to it (a failing
                    dist.barrier()  # rank skips this: its peers may never arrive, torchrun stops them)
                dist.destroy_process_group()
                self._owns_process_group = False

    def _run(self, writer: Any, progress: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._fire("diffnas_search_start", search=self)
        st = self.state
        self.prepare_steps()
        bar = _progress(self.epochs * self.steps_per_epoch, st.epoch * self.steps_per_epoch + st.step, progress and self.world.is_main)
        try:
            while st.epoch < self.epochs and not st.finished:
                epoch = st.epoch
                lrs = self._set_learning_rates(epoch)
                if st.step == 0:
                    for v in self._epoch_sums.values():
                        v.zero_()
                    self._epoch_t0 = time.perf_counter()
                self._fire("diffnas_epoch_start", search=self, epoch=epoch)
                self._step_diagnostics(start=True)  # the run's first record: after the schedules set τ ...
                if self._step_graph is not None:  # capture afresh: lr, τ, the supernet may have changed
                    self._step_graph.reset()
                for step in range(st.step, self.steps_per_epoch):
                    self._one_step(epoch, step)
                    st.step = step + 1
                    st.global_step += 1
                    if bar is not None:
                        bar.update(1)
                    self._step_diagnostics()  # before a checkpoint: it carries the records
                    every = self.recipe.output.checkpoint_every_steps
                    if self.out_dir is not None and every and st.global_step % every == 0 and st.step < self.steps_per_epoch:
                        self._check_finite()  # never checkpoint a non-finite state (every rank checks alike)
                        if writer is not None:
                            writer.checkpoint()
                record = self._end_epoch(epoch, lrs)
                st.history.append(record)
                st.epoch, st.step = epoch + 1, 0
                if self._stop_reason is not None:
                    st.stop_reason = self._stop_reason
                    st.finished = True
                if bar is not None:
                    bar.set_postfix_str(_postfix(record), refresh=False)
                if writer is not None:
                    writer.epoch_done(record)
        finally:
            if bar is not None:
                bar.close()
        return self._finish(t0, writer)

    def _finish(self, t0: float, writer: Any) -> dict[str, Any]:
        """End the search: the final genotype, its summary (``result.json``), ``diffnas_search_end``.
        Also how each member of a population ends (:mod:`diffnas.core.population`)."""
        st = self.state
        st.finished = True
        self._check_replicas()
        genotype = self.discretiser.final(self)
        summary = {
            "genotype": str(genotype),
            "genotype_json": genotype.to_dict(),
            "epochs_run": st.epoch,
            "stop_reason": st.stop_reason,
            "scores": self.score(genotype, {"final": True}),
            "search_time_s": round(sum(r.get("time_s", 0.0) for r in st.history), 3),
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }
        self._fire("diffnas_search_end", search=self, genotype=genotype, record=summary)
        if writer is not None:
            writer.finish(genotype, summary)
        self.final_genotype = genotype
        return summary

    def prepare_steps(self) -> None:
        """Set the device-side step counter from the state and, with ``trainer.cuda_graphs``, make
        the step graph; :meth:`run` calls it before its first step (benchmarks that drive
        ``_one_step`` themselves call it too)."""
        self._global_step_t.fill_(self.state.global_step)
        if self.recipe.trainer.cuda_graphs and self._step_graph is None:
            from .graphs import StepGraph

            self._step_graph = StepGraph(self._step, capture=self.device.type == "cuda", source=self.resolved.source)
        if self._step_graph is not None:  # again: plugins registered after the search was built, components
            from .graphs import refuse, unsafe_step_hooks

            hooks = unsafe_step_hooks(self.pm)
            if hooks:
                raise refuse(_UNSAFE_HOOKS + ", ".join(hooks), self.resolved.source)
            self._step_hooks_checked = False

    def _one_step(self, epoch: int, step: int) -> None:
        graph = self._step_graph
        # with a step graph the step hooks run eagerly around each replay: the first step watches them
        # for host synchronisations as StepGraph watches the step
        watch = graph is not None and not self._step_hooks_checked
        syncs = self._fire_step_hook("diffnas_step_start", watch, epoch=epoch, step=step)
        train = self.train_loader.batch(epoch, step)
        valid = self.valid_loader.batch(epoch, step) if self.valid_loader is not None else None
        if graph is not None and self._warm_phase is not None and self._warm_phase != self.in_warmup:
            graph.reset(eager_steps=1)  # the warm-up ended inside an epoch: the captured step is the warm-up's
        self._warm_phase = self.in_warmup
        if self.recipe.trainer.on_nonfinite == "skip":
            metrics = self._skippable_step(epoch, step, train, valid)
        elif graph is not None:
            metrics = graph(train, valid)
            if self.pm.hook.diffnas_step_end.get_hookimpls():  # a replay overwrites its output buffers
                metrics = {k: v.detach().clone() for k, v in metrics.items()}
        else:
            metrics = self._step(train, valid)
        if metrics is not None:
            syncs += self._fire_step_hook("diffnas_step_end", watch, epoch=epoch, step=step, metrics=metrics)
        if watch:
            from .graphs import refuse_step_hook_syncs

            self._step_hooks_checked = True
            refuse_step_hook_syncs(syncs, self.resolved.source)

    def _fire_step_hook(self, hook: str, watch: bool, **kwargs: Any) -> list[str]:
        """Fire ``hook``; with ``watch``, under the host-sync detector: return what it found."""
        from .graphs import fire_step_hooks_watched

        return fire_step_hooks_watched(lambda: self._fire(hook, search=self, **kwargs), watch)

    def _step_diagnostics(self, start: bool = False) -> None:
        """``diagnostics.every_steps``: record the step diagnostics (:mod:`diffnas.core.step_records`)
        into ``state.step_records`` when due: before the run's first step (``start``, after the epoch
        start hooks, unless this run already holds records: a resumed one) and after every ``every_steps``-th global step. Called
        between steps (with CUDA graphs, between replays), so only the recording steps synchronise
        the host; the torch and Python random states are forked, so recording never changes the search."""
        if not self._step_diagnostics_due(start):
            return
        from .step_records import step_record

        saved = random.getstate()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.state.step_records.append(step_record(self))
        random.setstate(saved)

    def _step_diagnostics_due(self, start: bool = False) -> bool:
        n, st = self.recipe.diagnostics.every_steps, self.state
        if start:
            return bool(n) and not st.step_records and not any("steps" in r for r in st.history)
        return bool(n) and st.global_step % n == 0

    def _finite(self, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """A device bool: every loss and every α is finite."""
        return torch.stack([torch.isfinite(m.detach().float()).all() for k, m in metrics.items() if k.endswith("loss")]
                           + [torch.isfinite(a.detach()).all() for a in self.alphas.values()]).all()

    def _step(self, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor] | None
              ) -> dict[str, torch.Tensor]:
        """One update-rule step and its bookkeeping, all on the device and in place (no host
        synchronisation): what ``trainer.cuda_graphs`` captures. Records the first non-finite step."""
        metrics = self._rule_step(train, valid)
        bad = (~self._finite(metrics)) & (self._nonfinite_step < 0)
        self._nonfinite_step.copy_(torch.where(bad, self._global_step_t, self._nonfinite_step))
        self._global_step_t.add_(1)
        self._accumulate(metrics)
        return metrics

    def _rule_step(self, train: Any, valid: Any) -> dict[str, torch.Tensor]:
        """The update rule's step, or its ``warmup_step`` while :attr:`in_warmup` (a host-side
        decision: a step graph is captured afresh when the phase changes, see :meth:`_one_step`)."""
        if self.in_warmup:
            return self.update_rule.warmup_step(self, train, valid)
        return self.update_rule.step(self, train, valid)

    def _skippable_step(self, epoch: int, step: int, train: Any, valid: Any) -> dict[str, torch.Tensor] | None:
        """``on_nonfinite: skip``: undo a step whose loss or α is not finite (one host sync per step)."""
        snapshot = self._snapshot_for_skip()
        metrics = self._rule_step(train, valid)
        self._global_step_t.add_(1)
        if not bool(self._finite(metrics)):
            self._restore_skip(snapshot)
            log.warning("skipped a batch with a non-finite loss or α at epoch %d step %d", epoch, step)
            self._accumulate({"skipped": torch.ones((), device=self.device)})
            return None
        self._accumulate(metrics)
        return metrics

    def _snapshot_for_skip(self) -> dict[str, Any]:
        import copy

        return {"model": copy.deepcopy(self.model.state_dict()), "alphas": {k: v.detach().clone() for k, v in self.alphas.items()},
                "w": copy.deepcopy(self.w_optimizer.state_dict()), "a": copy.deepcopy(self.a_optimizer.state_dict())}

    def _restore_skip(self, snap: dict[str, Any]) -> None:
        self.model.load_state_dict(snap["model"])
        with torch.no_grad():
            for k, v in snap["alphas"].items():
                self.alphas[k].copy_(v)
        self.w_optimizer.load_state_dict(snap["w"])
        self.a_optimizer.load_state_dict(snap["a"])

    def _accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add a step's metrics to the epoch's sums in place (the sums' tensors persist across
        epochs and are zeroed at each epoch start, so a captured step keeps adding into them)."""
        sums = self._epoch_sums
        for k, v in list(metrics.items()) + [("steps", torch.ones((), device=self.device))]:
            v = v.detach().float()
            if k in sums:
                sums[k].add_(v)
            else:
                sums[k] = v.clone()

    def _end_epoch(self, epoch: int, lrs: dict[str, float]) -> dict[str, Any]:
        sums = {k: float(v) for k, v in self._reduce_sums(self._epoch_sums).items()}  # the epoch's one host sync
        self._check_finite()
        steps = max(sums.get("steps", 1.0), 1.0)
        record: dict[str, Any] = {"epoch": epoch}
        if "count" in sums:
            record["train_loss"] = sums.get("loss", 0.0) / steps
            record["train_acc"] = 100.0 * sums.get("correct", 0.0) / max(sums["count"], 1.0)
            record["train_images"] = int(sums["count"])  # over all ranks
        if "arch_count" in sums:
            # steps of this epoch that made an α step: the warm-up's (on every rank) made none
            warm = min(max(self.warmup_end_step - epoch * self.steps_per_epoch, 0), self.steps_per_epoch)
            record["valid_loss"] = sums.get("arch_loss", 0.0) / max(steps - warm * self.world.world_size, 1.0)
            record["valid_acc"] = 100.0 * sums.get("arch_correct", 0.0) / max(sums["arch_count"], 1.0)
        elif self.held_out_loader is not None:
            record.update(self._held_out_metrics())
        if sums.get("skipped"):
            record["skipped_batches"] = int(sums["skipped"])
        if self.recipe.trainer.eval_batches:
            record.update(self.evaluate(self.recipe.trainer.eval_batches))
        record.update(lrs)
        probs = self.probabilities()
        record["entropy"] = {k: float(entropy(p)) for k, p in probs.items()}
        record["alphas"] = {k: [[round(v, 6) for v in row] for row in p.tolist()] for k, p in probs.items()}
        extra = {k: a.detach() for k, a in self.alphas.items() if k not in self.cells}
        if extra:  # raw values of the space's extra architecture parameters (e.g. LHD's output-path γ)
            record["extra_alphas"] = {k: [[round(v, 6) for v in row] for row in a.reshape(a.shape[0] if a.dim() else 1, -1).tolist()]
                                      for k, a in extra.items()}
        if any(c.hparams for _, c in self.components()):
            record["hparams"] = {k: dict(c.hparams) for k, c in self.components() if c.hparams}
        genotype = self.discretiser.discretise(self)
        record["genotype"] = str(genotype)
        free = self.search_space.parameter_free_ops()
        record["ops"] = _op_counts(genotype, free)
        record["scores"] = self.score(genotype, {"epoch": epoch})
        record["time_s"] = round(time.perf_counter() - self._epoch_t0, 3)
        if self.pending_notes:
            record["notes"], self.pending_notes = self.pending_notes, []
        if self.state.step_records:
            record["steps"], self.state.step_records = self.state.step_records, []
        self._fire("diffnas_epoch_end", search=self, epoch=epoch, record=record)
        return record

    def _check_replicas(self) -> None:
        """Under torchrun, check that every rank ended with the same α (gradients are averaged, so
        they must agree bitwise); a disagreement means a component drew rank-local randomness."""
        if self.world.world_size == 1:
            return
        import torch.distributed as dist

        flat = torch.cat([a.detach().reshape(-1) for a in self.alphas.values()])
        lo, hi = flat.clone(), flat.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise RunError(f"ranks disagree on the architecture parameters (max difference "
                           f"{float((hi - lo).abs().max()):.3g}); the search is not replicated consistently")

    def _reduce_sums(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add the epoch's sums over all ranks (losses are then averaged over ranks' steps)."""
        if self.world.world_size == 1 or not sums:
            return sums
        import torch.distributed as dist

        keys = sorted(sums)
        flat = torch.stack([sums[k].reshape(()) for k in keys])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return dict(zip(keys, flat.unbind(0)))

    def _check_finite(self) -> None:
        """Raise :class:`NonFiniteError` if a step of this run produced a non-finite loss or α
        (``on_nonfinite: stop``); called before every checkpoint, so a bad state is never saved."""
        bad = int(self._nonfinite_step)  # host synchronisation (epoch ends and checkpoint steps only)
        if bad < 0:
            return
        spe = self.steps_per_epoch
        where = f"epoch {bad // spe}, step {bad % spe} (global step {bad})"
        ck = self.last_checkpoint
        if self.out_dir is None:
            kept = "no checkpoint is written by this run (no output directory)"
        elif ck is None:
            kept = f"no checkpoint had been written yet in {self.out_dir}"
        else:
            kept = (f"the last good checkpoint {ck['path']} (saved before epoch {ck['epoch']}, step {ck['step']}) "
                    f"is kept; after fixing the cause continue with: diffnas search --resume {self.out_dir}")
        raise NonFiniteError(f"non-finite loss or architecture parameters at {where}; the search stopped. {kept}. "
                             f"Set trainer.on_nonfinite: skip to skip such batches instead")

    @torch.no_grad()
    def _held_out_metrics(self) -> dict[str, float]:
        """``valid_loss`` / ``valid_acc`` of a run whose update rule draws no validation batch: the
        loss as a bi-level α step measures it (cross-entropy plus the regularisers' "arch" terms) on
        the first ⌈steps per epoch / 4⌉ batches of the held-out half, unaugmented and the same
        images every epoch. A forward pass only: about a twelfth of an epoch's compute."""
        loader = self.held_out_loader
        batches = min(len(loader), max(1, math.ceil(self.steps_per_epoch / 4)))
        tot = cor = n = 0.0
        for i in range(batches):
            idx = torch.arange(i * loader.batch_size, min((i + 1) * loader.batch_size, loader.n), device=self.device)
            out = self.loss(loader.make_batch(idx), ("arch",))
            tot += float(out["loss"]) * float(out["count"])
            cor += float(out["correct"])
            n += float(out["count"])
        return {"valid_loss": tot / max(n, 1.0), "valid_acc": 100.0 * cor / max(n, 1.0)}

    @torch.no_grad()
    def evaluate(self, batches: int) -> dict[str, float]:
        """Loss and accuracy of the relaxed supernet on the first ``batches`` valid batches."""
        loader = self.valid_loader or self.train_loader
        tot = cor = n = 0.0
        for i in range(min(batches, len(loader))):
            x, y = loader.make_batch(torch.arange(i * loader.batch_size, (i + 1) * loader.batch_size, device=self.device) % loader.n)
            logits = self.forward(x)
            tot += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            cor += float((logits.argmax(1) == y).sum())
            n += y.numel()
        return {"eval_loss": tot / max(n, 1), "eval_acc": 100.0 * cor / max(n, 1)}

    def score(self, genotype: Genotype, context: dict) -> dict[str, Any]:
        """Every scorer's answer for ``genotype`` (NB201 table, surrogate ...)."""
        context = {"dataset": self.recipe.data.dataset, "data_root": self.recipe.data.root, **context}
        out: dict[str, Any] = {}
        for res in self._fire("diffnas_score_genotype", genotype=genotype, context=context):
            if res:
                out.update(res)
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as plain data (loads with ``weights_only=True``)."""
        st = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "recipe_sha256": recipe_fingerprint(self.resolved),
            "pending_notes": list(self.pending_notes),
            "state": {"epoch": st.epoch, "step": st.step, "global_step": st.global_step, "history": st.history,
                      "stop_reason": st.stop_reason, "finished": st.finished, "step_records": st.step_records},
            "model": self.model.state_dict(),
            "alphas": {k: v.detach().cpu() for k, v in self.alphas.items()},
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "components": {k: c.state_dict() for k, c in self.components()},
            "loaders": {"train": self.train_loader.state_dict(),
                        "valid": self.valid_loader.state_dict() if self.valid_loader is not None else None},
            "epoch_sums": {k: v.detach().cpu() for k, v in getattr(self, "_epoch_sums", {}).items()},
            "epoch_elapsed": time.perf_counter() - getattr(self, "_epoch_t0", time.perf_counter()),
            "nonfinite_step": int(self._nonfinite_step),
            "pending_stop": self._stop_reason,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise RunError(f"checkpoint format {ckpt.get('format')!r} is not {CHECKPOINT_FORMAT}")
        s = ckpt["state"]
        self.state = SearchState(s["epoch"], s["step"], s["global_step"], list(s["history"]), s["stop_reason"], s["finished"],
                                 step_records=list(s.get("step_records", [])))
        self.model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            for k, v in ckpt["alphas"].items():
                self.alphas[k].copy_(v.to(self.device))
        self.w_optimizer.load_state_dict(ckpt["w_optimizer"])
        self.a_optimizer.load_state_dict(ckpt["a_optimizer"])
        for k, c in self.components():
            c.load_state_dict(ckpt["components"].get(k, {}))
        self.train_loader.load_state_dict(ckpt["loaders"]["train"])
        if self.valid_loader is not None and ckpt["loaders"]["valid"] is not None:
            self.valid_loader.load_state_dict(ckpt["loaders"]["valid"])
        self._steps_from_loader()  # the loaders' batch size may have changed (set_batch_size)
        self._epoch_sums = {k: v.to(self.device).clone() for k, v in ckpt.get("epoch_sums", {}).items()}
        self._epoch_t0 = time.perf_counter() - float(ckpt.get("epoch_elapsed", 0.0))
        self._nonfinite_step.fill_(int(ckpt.get("nonfinite_step", -1)))
        self._stop_reason = ckpt.get("pending_stop")
        self.pending_notes = list(ckpt.get("pending_notes", [])) + self.pending_notes
        self._init_done = True  # the checkpoint's state replaces trainer.init_from's start
        bad = [k for k, a in self.alphas.items() if not bool(torch.isfinite(a).all())]
        bad += [f"weight {k}" for k, w in self.model.state_dict().items()
                if w.is_floating_point() and not bool(torch.isfinite(w).all())]
        if bad:  # a search never saves such a state: the file was made or edited elsewhere
            raise RunError(f"the checkpoint holds non-finite values ({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}); "
                           f"it cannot be resumed")
        self.resumed = True
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate((3, tuple(rng["python"]), rng["python_pos"]))


# --------------------------------------------------------------------------- module helpers

_UNSAFE_HOOKS = ("step hooks run between replays and must follow docs/graph_safety.md; these do not declare "
                 "cuda_graph_safe = True: ")



@contextlib.contextmanager
def default_dtype(name: str | None) -> Iterator[None]:
    """torch's default floating-point type set to ``trainer.dtype`` for the ``with`` block (``None``:
    left as it is), so that what a search builds and computes takes it."""
    if name is None:
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, name))
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _op_counts(genotype: Genotype, free: frozenset[str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for cell in genotype.cells.values():
        for op in cell.ops():
            counts[op] = counts.get(op, 0) + 1
    return {"counts": counts, "parameter_free": sum(v for k, v in counts.items() if k in free)}


def _postfix(record: dict) -> str:
    bits = [f"ep {record['epoch']}"]
    for k in ("train_acc", "valid_acc"):
        if k in record:
            bits.append(f"{k.split('_')[0]} {record[k]:.1f}%")
    nb = record.get("scores", {}).get("nb201")
    if nb:
        bits.append(f"nb201 {nb.get('test', nb.get('cifar10_test', float('nan'))):.2f}")  # the searched dataset's column
    return " ".join(bits)


def _progress(total: int, initial: int, enabled: bool, desc: str = "search") -> Any:
    from .progress import progress_bar

    return progress_bar(total, enabled, initial=initial, unit="step", desc=desc)


def build_search(resolved: ResolvedRecipe, pm: Any, catalogue: Any, out_dir: str | os.PathLike | None,
                 data: DataBundle | None = None) -> Search:
    """Build a search (a thin factory kept for launchers that construct searches remotely)."""
    return Search(resolved, pm, catalogue, out_dir, data=data)


Callback = Callable[..., None]
