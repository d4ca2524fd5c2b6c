"""PC-DARTS: partial channel connections and edge normalisation (Xu, Xie, Zhang, Chen, Qi, Tian &
Xiong, "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020;
``yuhuixu1993/PC-DARTS: model_search.py``, ``train_search.py``; METHODS.md §5).

**Partial channel connections** (regulariser ``pc_darts``, a supernet modifier). On every mixed
edge only 1/K of the input's C channels (K = 4) go through the candidate ops, which are built for
C/K channels; the other channels bypass them (2×2 max-pooled on a stride-2 edge), and the two parts
are concatenated and channel-shuffled with K groups (``MixedOp.forward``, ``channel_shuffle``)::

    f(x) = shuffle_K(concat(Σ_o p_o·o(x[S]), x[S̄]))

Which channels form S (``sampling``): ``random`` (the default) follows the paper's Eq. 2, where S is
a sampled channel mask: each forward pass draws, for every edge, a random subset of C/K channels
from the component's own generator (seeded with ``seed``, default ``trainer.seed``; its state is
in :meth:`PCDarts.state_dict`, so a resumed run draws the same subsets); the op outputs take S's
channel positions and the bypassed channels keep theirs, then the shuffle follows. ``first`` is
the authors' code: S is always the first C/K channels (the shuffle moves different channels there
in the next cell), so ``concat(Σ_o p_o·o(x[:, :C/K]), x[:, C/K:])`` is shuffled. With ``first`` the
two coincide with the code exactly; the paper text and the code disagree, and METHODS.md §9 says to
follow the paper's formula, hence the default.

**Edge normalisation** (``edge_normalisation``, on by default): node j sums its incoming edges
weighted by a softmax over them, x_j = Σ_{i<j} softmax(β_j)_i · f_ij(x_i). β is one extra
architecture parameter per edge and cell type, ``search.alphas["pc_darts_beta_<cell>"]``, started at
1e-3·N(0, 1) (``Network._initialize_alphas``) and trained by the α optimiser with α (a parameter
group of ``search.a_optimizer``; the record's ``extra_alphas`` logs it, checkpoints keep it). Like
any extra architecture parameter it travels in the ``op_weights`` the supernet is called with (the
cells read it from there), so a forward on a copy of α, as the Hessian diagnostic makes, uses the
copy's β. In the
DARTS space the genotype ranks each node's edges by max_{o≠none} p_o·softmax(β_j)_i
(``Network.genotype``): the ``pc_darts`` discretiser below. In NAS-Bench-201 every edge is kept and
β does not change an edge's argmax: use ``argmax_per_edge``. DrNAS's NB201 reimplementation
(``xiangning-chen/DrNAS: 201-space/search_cells.py NAS201SearchCell_PartialChannel``), whose number
the README's table gives, has no edge normalisation: ``edge_normalisation: false`` matches it.

**No α updates for the first 15 epochs** (``if epoch>=15: architect.step(...)``) is the trainer's
``warmup_epochs: 15``, not part of this component.

What it means elsewhere:

* **populations**: refused. A population fuses its members' supernets into one module under
  ``torch.func.vmap``, and this component replaces the supernet's cells (it implements ``attach``),
  draws channel subsets from one generator per search and reads β from its own search, so the
  population refuses it with "regulariser 'pc_darts' may change the supernet (it implements
  attach); members of a population share one fused supernet". Run the members one by one.
* **fused cells** (``trainer.fused_cells``): refused by the search and ``diffnas validate``
  (:meth:`PCDarts.fast_path_refusal`): the fused cells compute every op on all channels.
* **CUDA graphs**: refused with ``sampling: random`` (a captured step would replay the channel
  subsets of its capture); ``sampling: first`` draws nothing and is not refused.
* **search spaces**: the space's cells must build ops for a fraction of the channels
  (``make_op(..., channel_divisor=K)``, docs/plugins.md §4; ``nb201`` and ``darts`` do), and K must
  divide every cell's channel count.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from ...core.cells import SearchCell
from ...core.config import help_field, one_of, positive
from ...core.errors import PluginError
from ...core.hookspecs import hookimpl
from ...core.protocols import Discretiser, OpWeights, Regulariser
from ..discretisers.top_k import excluded_ops, incoming, intermediate_nodes, top_k_genotype

#: the prefix of β's names in ``search.alphas`` (``pc_darts_beta_normal``, ``pc_darts_beta_reduce``)
BETA_PREFIX = "pc_darts_beta_"


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, as ``yuhuixu1993/PC-DARTS: model_search.py channel_shuffle``:
    view the C channels as ``[groups, C/groups]``, transpose, flatten (channel g·(C/groups)+i moves to
    i·groups+g)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelSampler:
    """The channel subsets of ``sampling: random``: a generator on the search's device (a plain
    object, not a module, so it is neither a parameter nor part of the model's state dict)."""

    def __init__(self, device: torch.device, seed: int):
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.device = device

    def permutations(self, edges: int, channels: int) -> torch.Tensor:
        """``[edges, channels]``: a random permutation of the channels per edge (its first C/K form S)."""
        return torch.rand(edges, channels, generator=self.gen, device=self.device).argsort(dim=1)


class PartialChannelCell(SearchCell):
    """A :class:`SearchCell` whose mixed ops see 1/K of the channels (the rest bypass them), followed
    by a channel shuffle, and whose nodes weight their inputs by ``edge_weights()`` (edge normalisation).

    Built from the plain cell it replaces: the same graph, ops rebuilt by the cell's ``make_op`` with
    ``channel_divisor=k``, its ``edge_terms`` and ``fixed`` edges kept (an auxiliary term such as
    DARTS-'s skip acts on the whole input, built at full width by ``make_op``).
    """

    def __init__(self, cell: SearchCell, k: int, sampler: ChannelSampler | None,
                 edge_weights: Callable[[], torch.Tensor] | None):
        full = cell.make_op
        super().__init__(cell.graph, lambda op, u, v: full(op, u, v, channel_divisor=k))
        self.make_op = full
        self.edge_terms = cell.edge_terms
        self.fixed = dict(cell.fixed)
        self.k = k
        self.sampler = sampler  # plain attributes: the generator and β belong to the regulariser
        self.edge_weights = edge_weights
        self._perm: torch.Tensor | None = None  # this forward pass's channel permutations [E, C]
        self._inv: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None  # this forward pass's edge weights [E]

    def forward(self, inputs: Sequence[torch.Tensor], op_weights: OpWeights) -> torch.Tensor:
        if self.sampler is not None:  # one draw per cell and forward pass: every edge gets its own subset
            self._perm = self.sampler.permutations(len(self.edges), inputs[0].shape[1])
            self._inv = self._perm.argsort(dim=1)
        self._scale = self.edge_weights() if self.edge_weights is not None else None
        try:
            return super().forward(inputs, op_weights)
        finally:
            self._perm = self._inv = self._scale = None

    def edge_forward(self, e: int, x: torch.Tensor, w: Sequence[torch.Tensor], active: Sequence[bool] | None) -> torch.Tensor:
        out = super().edge_forward(e, x, w, active)
        return out if self._scale is None else out * self._scale[e]

    def mixed_forward(self, e: int, x: torch.Tensor, w: Sequence[torch.Tensor], active: Sequence[bool] | None) -> torch.Tensor:
        q = x.shape[1] // self.k
        if self._perm is None:  # the authors' fixed slice
            xa, xb = x[:, :q], x[:, q:]
        else:
            xa, xb = x.index_select(1, self._perm[e, :q]), x.index_select(1, self._perm[e, q:])
        y = super().mixed_forward(e, xa, w, active)
        if y.shape[2] != x.shape[2]:  # a stride-2 edge: the bypassed channels are pooled (MixedOp's self.mp)
            xb = F.max_pool2d(xb, 2, 2)
        out = torch.cat([y, xb], dim=1)
        if self._inv is not None:  # back to the channels' own positions
            out = out.index_select(1, self._inv[e])
        return channel_shuffle(out, self.k)


def node_softmax_weights(beta: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[E]`` edge weights: a softmax of β over each node's incoming edges (``groups``: the α rows
    entering each node). Nodes with one input get weight 1, as the code's softmax of one value."""
    out = torch.empty_like(beta)
    for rows in groups:
        out = out.index_copy(0, rows, torch.softmax(beta.index_select(0, rows), dim=0))
    return out


def _takes_channel_divisor(make_op: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(make_op).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "channel_divisor" or p.kind is p.VAR_KEYWORD for p in params)


class PCDarts(Regulariser):
    """PC-DARTS: mixed ops on a sampled 1/K of the channels, channel shuffle, edge normalisation β (ICLR 2020).

    A supernet modifier: refused in populations and with ``trainer.fused_cells`` (and with
    ``trainer.cuda_graphs`` under ``sampling: random``); pair it with ``trainer.warmup_epochs: 15``
    (no α updates for the first 15 epochs) and, in the DARTS space, the ``pc_darts`` discretiser.
    """

    @attrs.frozen
    class Config:
        k: int = help_field(4, "channel proportion: the ops see 1/K of the channels (the code's k = 4)", validator=positive)
        sampling: str = help_field("random", "random: a fresh channel subset per edge and forward pass (the paper's "
                                             "mask S, seeded and checkpointed); first: the first C/K channels (the "
                                             "authors' code)", validator=one_of("random", "first"))
        edge_normalisation: bool = help_field(True, "weight each node's inputs by softmax(β) over its incoming edges "
                                                    "(β: extra architecture parameters)")
        seed: Optional[int] = help_field(None, "seed of β's initial value and of the channel sampling (default: "
                                               "trainer.seed); β from a CPU generator seeded with it, the subsets "
                                               "from a device generator seeded with seed + 1")

    phases = ()

    def __init__(self, config=None):
        super().__init__(config)
        self.sampler: ChannelSampler | None = None
        self._pending_gen: torch.Tensor | None = None
        self._groups: dict[str, list[torch.Tensor]] = {}
        self._betas: dict[str, nn.Parameter] = {}
        self._forward_betas: dict | None = None  # the op weights of the supernet call in progress

    # ------------------------------------------------------------------ the supernet

    def fast_path_refusal(self, switch: str) -> str | None:
        if switch == "trainer.fused_cells":
            return ("replaces the search cells by partial-channel cells (ops on 1/K of the channels, a channel "
                    "shuffle, edge normalisation); the fused cells compute every op on all channels")
        if switch == "trainer.cuda_graphs" and self.config.sampling == "random":
            return ("draws new channel subsets at every forward pass from its own generator, which a captured step "
                    "would replay with the subsets of its capture (sampling: first draws none)")
        return None

    def attach(self, search: Any) -> None:
        c = self.config
        seed = search.recipe.trainer.seed if c.seed is None else c.seed
        found = [(parent, key, m) for parent in search.model.modules() for key, m in parent._modules.items()
                 if isinstance(m, SearchCell)]
        if not found:
            raise PluginError("pc_darts: the supernet has no SearchCell to give partial channel connections")
        if any(isinstance(m, PartialChannelCell) for _, _, m in found):
            raise PluginError("pc_darts: the supernet's cells already have partial channel connections (is pc_darts "
                              "listed twice?)")
        if c.sampling == "random":
            self.sampler = ChannelSampler(search.device, seed + 1)
            if self._pending_gen is not None:
                self.sampler.gen.set_state(self._pending_gen)
        if c.edge_normalisation:
            self._add_betas(search, seed)
        removed: set[int] = set()
        added: list[nn.Parameter] = []
        for parent, key, cell in found:
            name = cell.graph.graph.get("name")
            if not _takes_channel_divisor(cell.make_op):
                raise PluginError(f"pc_darts: search space {search.search_space.name!r} builds its ops without a "
                                  f"channel_divisor keyword (SearchCell.make_op, docs/plugins.md §4); partial channel "
                                  f"connections need ops built for 1/K of the channels")
            weights = (lambda _n=name: self.edge_weights(_n, self._forward_betas)) if c.edge_normalisation else None
            try:
                new = PartialChannelCell(cell, c.k, self.sampler, weights)
            except ValueError as exc:
                raise PluginError(f"pc_darts: k = {c.k} does not divide the channels of a {name!r} cell ({exc})") from None
            old, kept = {id(p) for p in cell.parameters()}, {id(p) for p in new.parameters()}
            removed |= old - kept
            added += [p for p in new.parameters() if id(p) not in old]
            parent._modules[key] = new
        if c.edge_normalisation:  # the cells read β from the op weights the supernet is called with
            search.model.register_forward_pre_hook(self._capture_betas, with_kwargs=True)
            search.model.register_forward_hook(self._release_betas)
        search.model.to(search.device)
        if search.recipe.trainer.channels_last:
            search.model.to(memory_format=torch.channels_last)
        # the weight optimiser (still without state) trains the rebuilt ops instead of the full-width ones
        groups = search.w_optimizer.param_groups
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in removed]
        groups[0]["params"].extend(added)

    def _add_betas(self, search: Any, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for name, graph in search.cells.items():
            key = BETA_PREFIX + name
            if key in search.alphas:
                raise PluginError(f"pc_darts: search.alphas already holds {key!r}")
            rows = search.alphas[name].shape[0]
            beta = nn.Parameter((1e-3 * torch.randn(rows, generator=gen)).to(search.device))
            search.alphas[key] = beta
            search.a_optimizer.add_param_group({"params": [beta]})
            self._betas[name] = beta
            self._groups[name] = [torch.tensor([r for _, r in incoming(graph, node)], dtype=torch.long,
                                               device=search.device) for node in intermediate_nodes(graph)]

    def _capture_betas(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Keep the ``op_weights`` dict of this supernet call: β travels in it like any extra
        architecture parameter, so a forward on a copy of α (the Hessian diagnostic, a perturbed or
        projected α) uses that copy's β."""
        ow = args[1] if len(args) > 1 else kwargs.get("op_weights")
        self._forward_betas = ow if isinstance(ow, dict) else None

    def _release_betas(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._forward_betas = None

    def edge_weights(self, cell: str, op_weights: dict | None = None) -> torch.Tensor:
        """``[E]``: softmax(β_j)_i for every edge i → j of cell type ``cell`` (differentiable in β);
        β from ``op_weights`` when it holds it, else the search's own."""
        beta = op_weights.get(BETA_PREFIX + cell) if op_weights else None
        return node_softmax_weights(self._betas[cell] if beta is None else beta, self._groups[cell])

    # ------------------------------------------------------------------ record and checkpoint

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        if self._betas:
            with torch.no_grad():
                record["pc_darts"] = {"edge_weights": {n: [round(v, 6) for v in self.edge_weights(n).tolist()]
                                                       for n in self._betas}}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.sampler is not None:
            state["sampler"] = self.sampler.gen.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "sampler" in state:
            if self.sampler is not None:
                self.sampler.gen.set_state(state["sampler"])
            else:  # not attached yet: restored when it is
                self._pending_gen = state["sampler"]


def find_pc_darts(search: Any, owner: str) -> PCDarts:
    """The search's ``pc_darts`` regulariser, or a :class:`PluginError` naming ``owner``."""
    for reg in search.regularisers:
        if isinstance(reg, PCDarts):
            return reg
    raise PluginError(f"{owner}: the recipe has no pc_darts regulariser (its β decides the edges); add "
                      f"{{name: pc_darts}} to regularisers, or use top_k_edges")


class PCDartsTopK(Discretiser):
    """PC-DARTS's DARTS-space genotype: per node the k = 2 edges with the largest max_{o≠none} p_o·softmax(β)_i."""

    @attrs.frozen
    class Config:
        k: int = help_field(2, "incoming edges kept per intermediate node", validator=positive)
        exclude: Optional[tuple[str, ...]] = help_field(None, "ops never chosen (default: the search space's zero_ops(), "
                                                              "e.g. none)", converter=attrs.converters.optional(tuple))

    def discretise(self, search):
        pc = find_pc_darts(search, "discretiser pc_darts")
        probs = search.probabilities()
        if pc.config.edge_normalisation:  # Network.genotype(): W[j, :] = W[j, :] * W2[j]
            with torch.no_grad():
                probs = {n: p * pc.edge_weights(n).to(p.device).unsqueeze(1) for n, p in probs.items()}
        return top_k_genotype(probs, search.cells, search.search_space.name, self.config.k,
                              excluded_ops(self.config.exclude, search))


@hookimpl
def diffnas_register_regularisers(register):
    register("pc_darts", PCDarts)


@hookimpl
def diffnas_register_discretisers(register):
    register("pc_darts", PCDartsTopK)
