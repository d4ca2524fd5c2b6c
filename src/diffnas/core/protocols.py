"""Component base classes: what a plugin's search space, relaxation, update rule, regulariser,
discretiser, schedule, dataset, logger or study executor must provide.

A component class is registered under a name through a ``diffnas_register_*`` hook and chosen by
that name in a recipe. Each class carries a nested frozen attrs ``Config`` (its recipe ``params``,
with the paper's defaults) and is built as ``cls(config)``. Components are also registered as
pluggy plugins while a search runs, so any of them may implement lifecycle hooks
(``@hookimpl def diffnas_epoch_start(self, search, epoch)``).

Runtime values that schedules change (a temperature τ, a coefficient β) live in ``self.hparams``,
a plain dict that the base class fills from the config's ``float`` fields (see
:meth:`Component.schedulable_fields`); a schedule with ``target: relaxation.tau`` writes
``search.relaxation.hparams["tau"]``, so a component reads such values from ``self.hparams``, not
from ``self.config``. ``state_dict``/``load_state_dict`` must hold plain data (tensors, numbers,
strings, lists, dicts) so that checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Sequence

import attrs
import networkx as nx
import torch
from torch import nn

from .errors import RecipeError
from .hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Search
    from .genotype import Genotype
    from .population import Population


@attrs.frozen
class EmptyConfig:
    """A component without parameters."""


class Component:
    """Base of every component kind. Subclasses set ``Config`` and document themselves.

    ``name`` is the name the component was registered under (what a recipe names it by) and
    ``key_path`` where the recipe chose it (``recipe.relaxation``, ``recipe.regularisers[0]``;
    ``recipe.regularisers[0].params.cells`` then names one of its values in a message); the
    catalogue sets both when it builds the component (``""`` for one built directly as ``cls(config)``).
    """

    Config: ClassVar[type] = EmptyConfig
    kind: ClassVar[str] = "component"
    #: whether ``hparams`` starts with the config's float fields (:meth:`schedulable_fields`); off for
    #: kinds whose values are fixed once the search is built (search spaces, schedules, datasets)
    hparams_from_config: ClassVar[bool] = True
    name: str = ""
    key_path: str = ""

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()
        #: runtime hyperparameters: what schedules write (``search.set_hparam``) and the record logs
        self.hparams: dict[str, Any] = {f: getattr(self.config, f) for f in self.schedulable_fields()}

    @classmethod
    def schedulable_fields(cls) -> tuple[str, ...]:
        """The ``Config`` fields copied into ``hparams`` at construction: every field typed ``float``
        (or ``float | None``) unless its metadata says ``schedulable=False``, plus any field marked
        ``schedulable=True`` (:func:`~diffnas.core.config.help_field`); none when
        ``hparams_from_config`` is off. A schedule may target exactly these (and whatever the
        component adds to ``hparams`` itself), and its planned values are checked with the field's
        validators before the run starts."""
        if not cls.hparams_from_config or not attrs.has(cls.Config):
            return ()
        hints = _field_types(cls.Config)
        out = []
        for f in attrs.fields(cls.Config):
            flag = f.metadata.get("schedulable")
            if flag is True or (flag is None and hints.get(f.name) in _FLOAT_TYPES):
                out.append(f.name)
        return tuple(out)

    def check_composition(self, composition: "Composition") -> list[tuple[str, str]]:
        """Problems of this component *together with the others* in one recipe, as ``(message, key
        path)`` pairs (empty: none); for checks that no single ``Config`` can make (a regulariser
        that needs ``bilevel``'s ``step_order: arch_first``, cell types or ops the search space must
        have, a trainer setting this component cannot run with).

        Called with every component built but nothing else (no data, supernet or α) by both
        ``diffnas validate`` and the search before it starts (also for each member of a population),
        so that ``validate`` refuses what ``search`` would. Use :attr:`key_path` for this
        component's own values (``f"{self.key_path}.params.cells"``). Default: no problems."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state to checkpoint (default: the scheduled hyperparameters)."""
        return {"hparams": dict(self.hparams)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.hparams.update(state.get("hparams", {}))


_FLOAT_TYPES = (float, Optional[float])


@attrs.frozen
class Composition:
    """What :meth:`Component.check_composition` sees: one recipe's components, built.

    :ivar recipe: the validated :class:`~diffnas.core.recipe.Recipe` (``trainer``, ``data`` ...).
    :ivar components: every component by key: ``search_space``, ``relaxation``, ``update_rule``,
        ``discretiser``, ``regularisers.0`` ..., ``schedules.0`` ..., ``loggers.0`` ...
    :ivar catalogue: the catalogue (``catalogue.entries[kind]``, ``catalogue.unknown_message``).
    :ivar source: the recipe file, for messages (``None`` for a recipe given as data).
    """

    recipe: Any
    components: Mapping[str, Component]
    catalogue: Any
    source: Optional[str] = None

    def cells(self) -> dict[str, nx.DiGraph]:
        """The search space's cell graphs (``search_space.cells()``: what ``search.cells`` will be)."""
        return self.components["search_space"].cells()

    def unknown_cells(self, names: Sequence[str], what: str, key_path: str) -> list[tuple[str, str]]:
        """``[(message, key_path)]`` if ``names`` (a component's cell-type param, described by ``what``)
        name cell types this search space lacks, else ``[]``: the check every component that takes
        cell names makes in :meth:`Component.check_composition`."""
        known = self.cells()
        unknown = [c for c in names if c not in known]
        if not unknown:
            return []
        return [(f"{what} unknown cell type(s) {unknown}; this search space has {sorted(known)}", key_path)]


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type (``from __future__ import annotations`` leaves strings)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to what attrs holds
        return {f.name: f.type for f in attrs.fields(cls)}


# --------------------------------------------------------------------------- search space


class SearchSpace(Component):
    """Defines the candidate cells and builds the supernet and discrete networks.

    ``cells()`` returns one ``networkx.DiGraph`` per cell type (see :mod:`diffnas.core.cells`):
    nodes are feature maps with a ``role`` (``input``/``intermediate``/``output``), searched edges
    carry ``ops`` (the candidate op names) and ``index`` (the edge's row in α), and the graph
    attribute ``concat`` lists the nodes that form the cell output.
    """

    kind = "search_space"
    hparams_from_config = False

    def cells(self) -> dict[str, nx.DiGraph]:
        raise NotImplementedError

    def build_supernet(self, num_classes: int) -> "Supernet":
        """The weight-sharing supernet for ``num_classes`` outputs."""
        raise NotImplementedError

    def build_network(self, genotype: "Genotype", num_classes: int, **overrides: Any) -> nn.Module:
        """A discrete network for ``genotype`` (for retraining); optional."""
        raise NotImplementedError(f"{type(self).__name__} cannot build a discrete network")

    # What discretisers, regularisers and diagnostics read about the space's ops and cells: they
    # never assume op or cell-type names of their own. The defaults are the DARTS family's names;
    # a space with other names overrides them.

    def parameter_free_ops(self) -> frozenset[str]:
        """Ops without learnable weights (collapse diagnostics, degeneracy rules, DARTS+ ranking)."""
        return frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "noise"})

    def zero_ops(self) -> frozenset[str]:
        """Ops that mean "no connection" (their output is zero): discretisers never choose them
        unless a recipe's ``exclude`` says otherwise, and depth rules treat them as absent edges."""
        return frozenset({"none"})

    def skip_op(self) -> str | None:
        """The identity op (the one collapse fills cells with): what DARTS+ counts and DARTS- adds to
        every edge; ``None`` if the space has none."""
        return "skip_connect"

    def primary_cell(self) -> str:
        """The cell type single-cell rules look at unless told otherwise (DARTS+'s skip count,
        selective stop, the parameter-free limit): default the first of :meth:`cells`."""
        return next(iter(self.cells()))

    def extra_arch_parameters(self) -> dict[str, tuple[int, ...]]:
        """Architecture parameters outside the per-edge layout, ``{name: shape}`` (default: none).

        The engine adds each to ``search.alphas`` after the cell types' α (so the α optimiser trains
        them and checkpoints hold them), initialised as 1e-3·N(0, 1), and passes it to the supernet
        unchanged in the ``op_weights`` dict under its name (the supernet applies its own transform,
        e.g. LHD's output-path softmax/sigmoid). Names must differ from the cell types'. Relaxations,
        discretisers and regularisers act on the cell types' α only (``search.cells``).
        """
        return {}

    def population_supernet(self, supernets: "list[nn.Module]", context: "FastPathContext") -> "nn.Module | None":
        """K members' supernets as one module for a population-fused search
        (:mod:`diffnas.core.population`), or ``None`` if this space offers none (the population is
        then refused).

        ``supernets`` are the members' own supernets (as :meth:`build_supernet` built them, after the
        relaxation and regularisers attached), all of one structure; ``context`` is the
        :class:`FastPathContext` of the ``population`` switch (device, the first member's recipe file,
        ``refuse(reason)``). The result follows
        :class:`~diffnas.core.population.PopulationSupernet`'s contract: ``forward(x [K, B, ...],
        op_weights with a leading member axis) -> [K, B, classes]``, ``parameters()`` stacked in the
        members' parameter order, ``store_to_members(supernets)``. The default,
        :class:`~diffnas.core.population.VmapPopulationSupernet`, stacks the members' parameters and
        runs one member's module under ``torch.func.vmap`` (grouped convolutions, batched matmuls);
        it serves any supernet whose forward is free of host-side decisions and random ops. A space
        overrides this to offer a faster hand-fused population.

        With ``context.channels_last`` the members' supernets are already channels-last and the
        population's batches come laid out ``[B, H, W, K, C]`` (member axis next to the channels,
        each member's batch channels-last); the engine does not convert the returned module (its
        stacked parameters are not 4-D), so a module of the space's own lays out its weights itself.
        With ``trainer.cuda_graphs`` the module's forward is captured with the step: it follows
        ``docs/graph_safety.md``.
        """
        from .population import VmapPopulationSupernet

        return VmapPopulationSupernet(supernets)

    def fused_supernet(self, supernet: "Supernet", context: "FastPathContext") -> "FusedSupernet | None":
        """A faster supernet with the same mathematics as ``supernet`` (``trainer.fused_cells: true``),
        or ``None`` (the default): this space offers no fused path, and the engine refuses the switch
        with a :class:`RecipeError` naming the space.

        When called: once, after the relaxation and every regulariser attached (so ``supernet`` is the
        plain supernet as they left it, on the search's device), and only after the engine's own
        checks passed (see :class:`FastPathContext`). The engine then checks the returned module's
        :class:`FusedSupernet` contract, moves it to ``context.device`` (and to channels_last when
        ``context.channels_last``), searches with it and keeps ``supernet`` as ``search.plain_model``.

        :param supernet: the plain supernet this space built (possibly modified by a regulariser's
            ``attach``: refuse what the fused module does not reproduce).
        :param context: device, memory format, the recipe file; ``context.refuse(reason)`` makes the
            error to raise for a composition this space cannot fuse.
        :returns: a :class:`FusedSupernet` starting from exactly ``supernet``'s weights (so a fused
            search starts where the plain search with the same seed starts), or ``None``.
        """
        return None


@attrs.frozen
class FastPathContext:
    """What the engine hands a search space's fast-path builders (:meth:`SearchSpace.fused_supernet`;
    a builder for another switch takes the same object with its own ``switch``).

    What the engine refuses for any space (:mod:`diffnas.core.fast_paths`): relaxations that return
    an ``active`` mask (``Relaxation.sets_active``: one sampled op per edge, chosen on the host; the
    builder is then never called) and regularisers that changed the weight optimiser's parameters
    (extra supernet modules; checked after the builder, so its more specific refusal comes first).
    What is specific to the space's modules (op kinds, strides, BN settings, per-edge additions) the
    builder refuses itself with :meth:`refuse`.
    """

    #: the recipe switch that asked for the path, e.g. ``"trainer.fused_cells"``
    switch: str
    #: the device the search runs on (the plain supernet is already there)
    device: torch.device
    #: ``trainer.channels_last``: the engine converts the returned module; a builder may use it to pick kernels
    channels_last: bool = False
    #: the recipe file, for error messages (``None`` for a recipe given as data)
    source: str | None = None

    def refuse(self, reason: str) -> RecipeError:
        """The :class:`RecipeError` to raise for a composition the fast path cannot serve: it names the
        recipe file, the switch's key path and how to turn the switch off."""
        return RecipeError([(f"{self.switch}: {reason}; set {self.switch}: false to use the plain supernet",
                             f"recipe.{self.switch}")], self.source)


class Supernet(nn.Module):
    """A supernet: ``forward(x, op_weights)`` where ``op_weights`` maps each cell type to an
    :class:`OpWeights` of shape ``[num_edges, num_ops]`` in the order of the cell graph's edges,
    and each of the space's :meth:`SearchSpace.extra_arch_parameters` (if any) to its raw tensor."""

    def forward(self, x: torch.Tensor, op_weights: dict[str, "OpWeights"]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class FusedSupernet(Supernet):
    """A supernet that computes what a plain supernet computes, in fewer or larger kernels; what
    :meth:`SearchSpace.fused_supernet` returns.

    Contract (checked by the engine when it installs one, see :mod:`diffnas.core.fast_paths`):

    * ``forward(x, op_weights)`` as :class:`Supernet`, with the same outputs and gradients as the
      plain supernet up to float rounding (test it in float64);
    * :meth:`param_mapping` relates every parameter of the plain supernet to a part of exactly one
      fused parameter, and covers every fused parameter; at construction the mapped parts hold the
      plain supernet's values;
    * :meth:`plain_state_dict` gives the fused weights back as the plain supernet's state dict
      (checkpoint comparisons, retraining from search weights, analysis tools that expect the
      plain layout).
    """

    def param_mapping(self, plain: nn.Module) -> list[tuple[str, str, slice | None]]:
        """``(plain parameter name, fused parameter name, part)`` for every plain parameter: the plain
        tensor is ``fused_tensor[part]`` (``part`` indexes the first dimension; ``None`` = the whole
        tensor). Several plain parameters may share one fused tensor; none may appear twice."""
        raise NotImplementedError

    def plain_state_dict(self, plain: nn.Module) -> dict[str, torch.Tensor]:
        """The fused weights as a state dict of ``plain`` (default: parameters through
        :meth:`param_mapping`, ``plain``'s own buffers; override to carry buffers such as BN
        running statistics)."""
        fused = dict(self.named_parameters())
        state = dict(plain.state_dict())
        for pname, fname, part in self.param_mapping(plain):
            t = fused[fname].detach()
            state[pname] = (t if part is None else t[part]).clone()
        return state


@attrs.define
class OpWeights:
    """Per-edge op weights handed to the supernet.

    ``weights[e, o]`` multiplies op ``o`` on edge ``e``. ``active`` (bool, same shape, optional)
    marks the ops to compute; an inactive op contributes its weight alone (a zero-valued term that
    still carries the gradient, as GDAS does), so a hard one-hot relaxation runs one op per edge.
    ``node_weights`` (optional, per cell node) scales edge groups; unused by the bundled spaces.
    """

    weights: torch.Tensor
    active: torch.Tensor | None = None


# --------------------------------------------------------------------------- relaxation


class Relaxation(Component):
    """Turns architecture parameters α (``[num_edges, num_ops]`` per cell type) into op weights."""

    kind = "relaxation"
    #: True if :meth:`op_weights` returns an ``active`` mask (one sampled op per edge, as GDAS): the
    #: supernet then picks the ops to run on the host, which the fused cells and CUDA graphs refuse
    sets_active: ClassVar[bool] = False

    def init_alpha(self, num_edges: int, num_ops: int, generator: torch.Generator) -> torch.Tensor:
        """Initial α on the CPU (default: DARTS's 1e-3·N(0, 1))."""
        return 1e-3 * torch.randn(num_edges, num_ops, generator=generator)

    def op_weights(self, alpha: torch.Tensor, search: "Search") -> OpWeights:
        """Differentiable op weights for one forward pass (may sample)."""
        raise NotImplementedError

    def probabilities(self, alpha: torch.Tensor) -> torch.Tensor:
        """Deterministic op strengths used to discretise, log and plot (no sampling)."""
        raise NotImplementedError

    def attach(self, search: "Search") -> None:
        """Called once after the supernet and α are built, before the search runs (check that the
        space's cells suit this relaxation, cache what :meth:`cell_op_weights` needs). Default: nothing."""

    def cell_op_weights(self, cell: str, alpha: torch.Tensor, search: "Search") -> OpWeights:
        """Op weights of cell type ``cell`` (a key of ``search.cells``); what the engine calls.
        Default: :meth:`op_weights`, for relaxations that treat every edge alike."""
        return self.op_weights(alpha, search)

    def cell_probabilities(self, cell: str, alpha: torch.Tensor) -> torch.Tensor:
        """Deterministic op strengths of cell type ``cell``; what the engine calls.
        Default: :meth:`probabilities`."""
        return self.probabilities(alpha)


# --------------------------------------------------------------------------- update rule


class UpdateRule(Component):
    """Owns the order of weight and architecture steps for one batch.

    ``uses_valid_batch`` tells the engine whether ``step`` needs a batch from the validation half.
    ``step`` returns the step's metrics as device tensors (``loss``, ``correct``, ``count`` and, for
    an α step on other data, ``arch_loss``); it must not synchronise with the host.

    One ``step`` serves a single search and a population (K searches fused along a leading member
    axis): written with the :class:`~diffnas.core.engine.Search` building blocks (``loss``,
    ``weight_parameters``, ``arch_parameters``, ``weights_step``, ``arch_step``, the optimisers, and
    for per-member arithmetic ``member_searches``, ``member_values``, ``member_view``,
    ``member_sum``, ``weight_hparams``), it runs in both unchanged. In a population ``loss``'s
    ``"loss"`` is the members' summed loss (each member's gradient is its own), and a reported
    ``loss.detach()`` is recorded per member.
    """

    kind = "update_rule"
    uses_valid_batch: ClassVar[bool] = True
    #: True if the rule's weight step runs on :meth:`Search.weight_step_op_weights` (``bilevel``): only
    #: then can regularisers that perturb the weight step's op weights (SDARTS) act, and recipes that
    #: name such a regulariser with another rule are refused
    perturbable_weight_step: ClassVar[bool] = False
    #: True if :meth:`step` reads its hyperparameters per member (``m.update_rule.hparams`` for each
    #: ``m`` in ``search.member_searches()``), so a population's members may differ in them; False
    #: (the default): ``self.hparams`` is used for every member, and a population whose members
    #: differ in ``update_rule.params`` or in schedules of ``update_rule.*`` is refused
    member_hparams: ClassVar[bool] = False

    def step(self, search: "Search", train: tuple[torch.Tensor, torch.Tensor],
             valid: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def warmup_step(self, search: "Search", train: tuple[torch.Tensor, torch.Tensor],
                    valid: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The step of a warm-up batch (``trainer.warmup_epochs`` / ``warmup_steps``): the weights
        only, α frozen. The default is one weight step on the training batch's ``"weights"`` loss,
        as PC-DARTS trains before its first α step; a rule whose weight step differs (a perturbed
        forward, say) overrides it. Must not synchronise with the host."""
        out = search.loss(train, ("weights",))
        search.weights_step(out["loss"])
        return {"loss": out["loss"].detach(), "correct": out["correct"], "count": out["count"]}

    def population_refusal(self, members: list["Search"]) -> str | None:
        """Why these members' configs of this rule cannot be stepped together by one :meth:`step`
        on a :class:`~diffnas.core.population.Population` (a structural setting differs, or the
        rule reads something a population keeps per member), or ``None``. Checked before a
        population starts. Default: ``None``."""
        return None


# --------------------------------------------------------------------------- regulariser


class Regulariser(Component):
    """Adds loss terms, acts on α after its step, or modifies the supernet.

    ``phases`` says which losses :meth:`loss` is added to: ``"arch"`` (the α step's loss) and/or
    ``"weights"`` (the weight step's loss); single-level rules add both kinds to their one loss.
    Stopping rules are regularisers that call ``search.request_stop(reason)`` in ``diffnas_epoch_end``.
    """

    kind = "regulariser"
    phases: ClassVar[tuple[str, ...]] = ("arch",)
    #: whether :meth:`attach` changes what the supernet computes (adds modules or parameters, wraps
    #: ops, as DARTS-'s auxiliary skip). Set ``False`` when ``attach`` only reads the search and
    #: builds the regulariser's own masks, buffers or checks: a population-fused search
    #: (:mod:`diffnas.core.population`) then allows it (each member attaches its own), while a
    #: regulariser that implements ``attach`` and leaves this ``True`` is refused there
    modifies_supernet: ClassVar[bool] = True

    def attach(self, search: "Search") -> None:
        """Called once after the supernet is built, before the search runs: modify the supernet
        here (and leave :attr:`modifies_supernet` ``True``), or build masks and buffers from
        ``search.cells`` / ``search.search_space`` (and set it ``False``)."""

    def loss(self, search: "Search", phase: str) -> torch.Tensor | None:
        """Extra loss term for ``phase`` (``"arch"`` or ``"weights"``), or ``None``."""
        return None

    def after_arch_step(self, search: "Search") -> None:
        """Called after every α optimiser step (projections, clamps)."""

    def fast_path_refusal(self, switch: str) -> str | None:
        """Why the speed switch ``switch`` (``"trainer.fused_cells"`` or ``"trainer.cuda_graphs"``)
        cannot serve the supernet this regulariser changes, known from its config alone; ``None``
        (the default): nothing known. Both the search and ``diffnas validate`` refuse the switch with
        this reason (:func:`diffnas.core.fast_paths.fused_cells_reasons`,
        :func:`diffnas.core.engine.cuda_graph_reasons`)."""
        return None

    @property
    def perturbs_op_weights(self) -> bool:
        """Whether this regulariser's class implements :meth:`perturb_op_weights` (SDARTS): what the
        engine, recipe validation and populations ask."""
        return type(self).perturb_op_weights is not Regulariser.perturb_op_weights

    def perturb_op_weights(self, search: "Search", op_weights: dict[str, OpWeights],
                           batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, OpWeights] | None:
        """The op weights the weight step runs on, perturbed (SDARTS: softmax(α) + δ), or ``None``
        (the default: this regulariser perturbs nothing). Called by
        :meth:`Search.weight_step_op_weights` for every weight step of an update rule with
        ``perturbable_weight_step``, with the op weights so far (the relaxation's, detached, then each
        earlier perturbing regulariser's) and the step's training batch; α itself is never changed,
        so the α step runs on the unperturbed weights. A regulariser that implements it is refused
        with update rules that do not declare ``perturbable_weight_step`` and in populations. Runs
        inside the step: no host synchronisation (docs/graph_safety.md)."""
        return None


# --------------------------------------------------------------------------- discretiser


class Discretiser(Component):
    """Turns the current architecture into a genotype.

    :meth:`discretise` is called at the end of every epoch (the "current genotype" in
    ``metrics.jsonl``) and on the recording steps of ``diagnostics.every_steps``, so it must not
    change the search or its own state; :meth:`final` once at the end, where policies that keep a history (selective
    stop) or need the supernet (perturbation-based selection) do their work.
    """

    kind = "discretiser"

    def discretise(self, search: "Search") -> "Genotype":
        raise NotImplementedError

    def final(self, search: "Search") -> "Genotype":
        return self.discretise(search)


# --------------------------------------------------------------------------- schedule


class Schedule(Component):
    """Sets one runtime hyperparameter (``Config.target``, e.g. ``relaxation.tau``) over time.

    The engine calls :meth:`value` at every epoch start (``per_step = False``) or step start
    (``per_step = True``) and writes the result to the target.
    """

    kind = "schedule"
    hparams_from_config = False
    per_step: ClassVar[bool] = False

    def value(self, search: "Search", epoch: int, step: int) -> float | None:
        """The target's value now, or ``None`` to leave it unchanged."""
        raise NotImplementedError

    def planned_values(self, epochs: int) -> list[float] | None:
        """The values this schedule will write over a run of ``epochs`` epochs, where they are known
        before the run (a ramp's value at each epoch); ``None`` (the default) when they depend on the
        run itself. When a recipe is validated each is checked with the validators of the target's
        ``Config`` field (``relaxation.tau`` → the relaxation's ``tau``), so a ramp to an invalid
        value is refused before the run instead of failing at the epoch that reaches it."""
        return None

    @property
    def cuda_graph_safe(self) -> bool:
        """Graph-safe (``docs/graph_safety.md``) unless ``per_step``: the step hook then does nothing,
        while a per-step value would be frozen in a captured step (so ``trainer.cuda_graphs`` refuses it)."""
        return not self.per_step

    @hookimpl(tryfirst=True)
    def diffnas_epoch_start(self, search: "Search", epoch: int) -> None:
        if not self.per_step:
            self._apply(search, epoch, 0)

    @hookimpl(tryfirst=True)
    def diffnas_step_start(self, search: "Search", epoch: int, step: int) -> None:
        if self.per_step:
            self._apply(search, epoch, step)

    def _apply(self, search: "Search", epoch: int, step: int) -> None:
        v = self.value(search, epoch, step)
        if v is not None:
            search.set_hparam(self.config.target, v)


# --------------------------------------------------------------------------- dataset


@attrs.define
class Split:
    """Images as uint8 ``[N, H, W, C]`` and int64 labels ``[N]`` (on the CPU until the engine moves them)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@attrs.define
class DataBundle:
    """What a dataset loads: the search's two halves, the test split and normalisation constants."""

    train: Split
    valid: Split
    test: Split | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    #: zero padding of the random crop when ``data.augment`` (4 for 32×32 CIFAR; NB201 pads ImageNet16 by 2)
    pad: int = 4


class Dataset(Component):
    """Loads a dataset into memory (see :class:`DataBundle`).

    ``Params`` (an attrs class, optional) declares what ``data.params`` may hold: recipes are then
    checked against it when they are validated, before any data is read. A dataset without ``Params``
    reads ``data.params`` itself in :meth:`load`.
    """

    kind = "dataset"
    hparams_from_config = False
    Params: ClassVar[type | None] = None
    #: False if :meth:`load` ignores its ``seed`` (the data depend on ``data_config`` alone): the
    #: members of a population with equal data settings then share one loaded bundle
    depends_on_seed: ClassVar[bool] = True

    def load(self, data_config: Any, seed: int) -> DataBundle:
        raise NotImplementedError


# --------------------------------------------------------------------------- executor


class Executor(Component):
    """Runs a study's work items somewhere: in this process, one subprocess per GPU, on a Ray
    cluster, as a SLURM job array (see :mod:`diffnas.study.executors`).

    A study names its executor by registered name (``executor: {name, params}``; ``params`` are
    structured into ``Config`` like any component's). The study hands :meth:`run` the work items of
    its unfinished runs; each :class:`~diffnas.study.executors.WorkItem` runs one or more run specs
    (``item.specs``), either in a process that has diffnas installed (``item.run(out, ...)``) or as
    ``item.commands(out)``, the ``diffnas search ...`` lines that do the same.
    An executor re-checks each run when it starts it (a run finished or checkpointed meanwhile is
    skipped or resumed), and returns one :class:`~diffnas.study.executors.Outcome` per run spec.
    """

    kind = "executor"

    def check(self) -> None:
        """Raise :class:`~diffnas.core.errors.DiffnasError` if this executor cannot run here (a
        missing optional dependency, no GPU); called before the study writes anything."""

    def run(self, items: Any, context: Any) -> list[Any]:
        """Run ``items`` (a sequence of ``WorkItem``); return one ``Outcome`` per run spec."""
        raise NotImplementedError


# --------------------------------------------------------------------------- logger


class Logger(Component):
    """Writes a running search's record somewhere (TensorBoard, an experiment tracker ...).

    A recipe lists loggers under ``loggers:`` (``diffnas search --logger NAME`` adds one). A logger
    is registered as a plugin while its search runs, so it implements the lifecycle hooks it needs
    (``diffnas_search_start``, ``diffnas_epoch_end`` with the epoch's ``record``,
    ``diffnas_search_end`` ...) as ``@hookimpl`` methods. It writes only inside ``search.run_dir``
    (nothing when that is ``None``), only on the main process (``search.world.is_main``) and
    atomically (:func:`diffnas.core.rundir.write_text`); what it must remember across a resume goes
    in :meth:`state_dict` (loggers are checkpointed with the search's other components).
    Optional third-party libraries are imported in ``__init__`` and a missing one raised as
    :class:`~diffnas.core.errors.PluginError` naming the install command. The engine calls
    :meth:`close` once when the search ends, also when it fails.
    """

    kind = "logger"

    def close(self, search: "Search") -> None:
        """Flush and release what the logger holds (called once, also after an error)."""

    def outputs(self) -> tuple[str, ...]:
        """The files and folders (relative to the run directory) this logger writes: they are run
        outputs, so a new run refuses a directory that holds them and ``--overwrite`` moves them
        aside with the rest. Make folders with :func:`diffnas.core.rundir.output_folder` (it refuses
        symbolic links that would lead outside the run directory). Default: none."""
        return ()


KINDS: dict[str, type[Component]] = {
    "executor": Executor,
    "search_space": SearchSpace,
    "relaxation": Relaxation,
    "update_rule": UpdateRule,
    "regulariser": Regulariser,
    "discretiser": Discretiser,
    "schedule": Schedule,
    "dataset": Dataset,
    "logger": Logger,
}
