"""Perturbation-based architecture selection, DARTS-PT (Wang et al., "Rethinking Architecture
Selection in Differentiable NAS", ICLR 2021; METHODS.md §5).

Instead of reading α, DARTS-PT asks the supernet. After the search, starting from the relaxed
weights p = relaxation(α), it makes one decision at a time, following
``ruocwang/darts-pt: sota/cnn/projection.py pt_project`` [C]:

1. **Op decisions** (one per edge, edges in random order, one edge of every cell type per
   decision): for each candidate op o of the edge, zero p_o on that edge (no renormalisation) and
   measure the supernet's validation accuracy; keep the op whose removal hurts most (lowest accuracy,
   or highest loss with ``crit: loss``), i.e. fix the edge's weights to that op's one-hot.
2. **Edge decisions** (one per node with more than k = 2 inputs, nodes in random order): repeatedly
   zero each remaining incoming edge in turn and drop the edge whose removal hurts least, until k
   remain; the dropped edges' weights become zero.
3. Between two decisions the supernet is fine-tuned for ``proj_intv`` epochs (5) with the search's
   own update rule on the projected weights (α keeps training on the edges still undecided), with a
   fresh weight optimiser at lr/10; after the last decision it is tuned one more epoch
   (``tune_epochs = proj_intv·num_projs + 1``). The code builds a cosine scheduler over the tuning
   epochs but never steps it, so its learning rate stays lr/10: ``lr_schedule: constant`` (default)
   follows that, ``cosine`` anneals to the trainer's ``lr_min`` as the scheduler was presumably meant to.

The genotype is then read from the projected weights with the DARTS top-k parse. Evaluation runs the
supernet in training mode (batch statistics), as the code's ``infer(..., _eval=False)`` does.

Budget knobs for tests and small machines (not in the paper): ``eval_batches`` limits each
evaluation to that many validation batches (default: the whole validation split, as the code), and
``tune_steps`` limits each tuning epoch (default: the trainer's steps per epoch). The same
validation batches are used for every candidate of one decision so that candidates are compared on
equal data (the code re-draws augmented batches per candidate).

The fine-tuning fires no lifecycle hooks and runs the update rule with the relaxation wrapped by a
projection for the duration of :meth:`DartsPT.final` (``search.relaxation`` is restored afterwards).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import attrs
import torch
from torch import nn

from ...core.cells import cell_alphas
from ...core.config import help_field, in_range, one_of, positive
from ...core.engine import make_optimizer
from ...core.errors import PluginError
from ...core.genotype import Genotype
from ...core.hookspecs import hookimpl
from ...core.protocols import Discretiser, OpWeights, Relaxation
from .top_k import excluded_ops, incoming, intermediate_nodes, top_k_genotype


class Projection:
    """Which rows of each cell's op weights are fixed, and to what (``proj_weights`` of the code)."""

    def __init__(self, shapes: dict[str, tuple[int, int]]):
        self.fixed = {c: torch.zeros(e, o) for c, (e, o) in shapes.items()}  # the fixed rows' values
        self.op_done = {c: torch.zeros(e, dtype=torch.bool) for c, (e, _) in shapes.items()}
        self.dropped = {c: torch.zeros(e, dtype=torch.bool) for c, (e, _) in shapes.items()}

    def mask(self, cell: str) -> torch.Tensor:
        return self.op_done[cell] | self.dropped[cell]

    def apply(self, cell: str, w: torch.Tensor) -> torch.Tensor:
        """Relaxed weights ``w`` with the decided rows replaced (differentiable in the others)."""
        m = self.mask(cell).to(w.device).unsqueeze(1)
        return torch.where(m, self.fixed[cell].to(w.device, w.dtype), w)

    def fix_op(self, cell: str, e: int, o: int) -> None:
        self.fixed[cell][e].zero_()
        self.fixed[cell][e, o] = 1.0
        self.op_done[cell][e] = True

    def drop_edge(self, cell: str, e: int) -> None:
        self.fixed[cell][e].zero_()
        self.dropped[cell][e] = True


class ProjectedRelaxation(Relaxation):
    """The search's relaxation with DARTS-PT's decided rows fixed (used only inside :meth:`DartsPT.final`)."""

    def __init__(self, inner: Relaxation, projection: Projection):
        super().__init__(inner.config)
        self.inner, self.projection = inner, projection
        self.hparams = inner.hparams  # schedules keep writing the inner relaxation's values

    def init_alpha(self, num_edges, num_ops, generator):
        return self.inner.init_alpha(num_edges, num_ops, generator)

    def op_weights(self, alpha, search):
        return self.cell_op_weights(self._cell_of(alpha, search), alpha, search)

    def cell_op_weights(self, cell, alpha, search):
        ow = self.inner.cell_op_weights(cell, alpha, search)
        w = self.projection.apply(cell, ow.weights)
        active = ow.active
        if active is not None:
            m = self.projection.mask(cell).to(active.device).unsqueeze(1)
            active = torch.where(m, self.projection.fixed[cell].to(active.device) > 0, active)
        return OpWeights(w, active)

    def probabilities(self, alpha):
        return self.inner.probabilities(alpha)

    def cell_probabilities(self, cell, alpha):
        return self.inner.cell_probabilities(cell, alpha)

    @staticmethod
    def _cell_of(alpha, search) -> str:
        """The cell type whose α this is (the engine passes ``search.alphas[name]`` itself, or a view of it)."""
        for name, a in search.alphas.items():
            if a is alpha or (a.shape == alpha.shape and a.data_ptr() == alpha.data_ptr()):
                return name
        raise PluginError("darts_pt: the relaxation was asked for op weights of a tensor that is not one of "
                          "search.alphas (a component that perturbs a copy of α cannot be combined with DARTS-PT's "
                          "projection)")


class DartsPT(Discretiser):
    """DARTS-PT: choose ops and edges by how much removing them hurts supernet accuracy (Wang et al., ICLR 2021)."""

    @attrs.frozen
    class Config:
        proj_intv: int = help_field(5, "tuning epochs between two decisions", validator=positive)
        crit: str = help_field("acc", "acc: the op whose removal lowers accuracy most; loss: raises loss most",
                               validator=one_of("acc", "loss"))
        k: int = help_field(2, "incoming edges kept per node", validator=positive)
        exclude: Optional[tuple[str, ...]] = help_field(None, "ops the final top-k parse never picks (default: the "
                                                              "search space's zero_ops(), e.g. none)",
                                                        converter=attrs.converters.optional(tuple))
        lr_factor: float = help_field(0.1, "tuning weight lr = trainer lr × lr_factor (code: lr/10)",
                                      validator=in_range(0.0, 1.0, lo_open=True), schedulable=False)
        eval_batches: Optional[int] = help_field(None, "validation batches per evaluation (default: the whole split)",
                                                 validator=positive)
        tune_steps: Optional[int] = help_field(None, "steps per tuning epoch (default: the trainer's steps per epoch)",
                                               validator=positive)
        lr_schedule: str = help_field("constant", "tuning lr: constant (the code's effective behaviour) or cosine to lr_min",
                                      validator=one_of("constant", "cosine"))
        seed: Optional[int] = help_field(None, "seed of the random edge and node order (default: trainer seed)")

    def __init__(self, config=None):
        super().__init__(config)
        self.decisions: list[dict[str, Any]] = []
        self.evaluations = 0
        self.tune_lrs: list[float] = []  # the weight lr of each tuning epoch

    # ------------------------------------------------------------------ during the search

    def discretise(self, search):
        """Before projection: the DARTS top-k parse of α (what the code logs during the search)."""
        return top_k_genotype(search.probabilities(), search.cells, search.search_space.name, self.config.k,
                              excluded_ops(self.config.exclude, search))

    # ------------------------------------------------------------------ projection

    def final(self, search) -> Genotype:
        c = self.config
        shapes = {n: tuple(a.shape) for n, a in cell_alphas(search).items()}
        proj = Projection(shapes)
        gen = torch.Generator().manual_seed(search.recipe.trainer.seed if c.seed is None else c.seed)
        plan = self._plan(search, gen)
        tune_epochs = c.proj_intv * (len(plan) - 1) + 1
        inner, w_opt = search.relaxation, search.w_optimizer
        wcfg = search.recipe.trainer.weights_optimizer
        search.relaxation = ProjectedRelaxation(inner, proj)
        search.w_optimizer = make_optimizer(attrs.evolve(wcfg, lr=wcfg.lr * c.lr_factor), search.model.parameters())
        self.decisions, self.evaluations, self.tune_lrs = [], 0, []
        try:
            t = 0
            for d, step in enumerate(plan):
                batches = self._eval_batches(search, d)
                for cell, target in step:
                    if target[0] == "edge":
                        self._decide_op(search, proj, cell, target[1], batches)
                    else:
                        self._decide_node(search, proj, cell, target[1], batches)
                for _ in range(c.proj_intv if d < len(plan) - 1 else 1):
                    self._tune_epoch(search, t, tune_epochs, wcfg)
                    t += 1
            with torch.no_grad():
                probs = {n: proj.apply(n, search.relaxation.inner.cell_probabilities(n, a.detach())).cpu()
                         for n, a in cell_alphas(search).items()}
        finally:
            search.relaxation, search.w_optimizer = inner, w_opt
        return top_k_genotype(probs, search.cells, search.search_space.name, c.k, excluded_ops(c.exclude, search))

    def _plan(self, search, gen: torch.Generator) -> list[list[tuple[str, tuple[str, int]]]]:
        """Decisions in order: each is a list of ``(cell, ("edge", row) | ("node", node))``, one per cell type."""
        edges = {n: [int(i) for i in torch.randperm(a.shape[0], generator=gen)] for n, a in cell_alphas(search).items()}
        nodes = {}
        for n, g in search.cells.items():
            multi = [v for v in intermediate_nodes(g) if len(incoming(g, v)) > self.config.k]
            nodes[n] = [multi[int(i)] for i in torch.randperm(len(multi), generator=gen)]
        plan = []
        for i in range(max(len(v) for v in edges.values())):
            plan.append([(n, ("edge", e[i])) for n, e in edges.items() if i < len(e)])
        for i in range(max((len(v) for v in nodes.values()), default=0)):
            plan.append([(n, ("node", v[i])) for n, v in nodes.items() if i < len(v)])
        return plan

    def _eval_batches(self, search, decision: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = search.valid_loader if search.valid_loader is not None else search.train_loader
        n = len(loader) if self.config.eval_batches is None else min(self.config.eval_batches, len(loader))
        epoch = search.epochs + 10_000 + decision  # permutations no search epoch uses
        return [loader.batch(epoch, i) for i in range(n)]

    def _weights(self, search, proj: Projection) -> dict[str, OpWeights]:
        with torch.no_grad():
            return search.op_weights()

    def _crit(self, search, op_weights: dict[str, OpWeights], batches) -> float:
        """Higher is better for the supernet: accuracy (%) or −loss."""
        self.evaluations += 1
        return self.evaluate(search, op_weights, batches)[0 if self.config.crit == "acc" else 1]

    @torch.no_grad()
    def evaluate(self, search, op_weights: dict[str, OpWeights], batches) -> tuple[float, float]:
        """``(accuracy %, −mean loss)`` of the supernet under ``op_weights`` (training-mode BN)."""
        search.model.train()
        correct = total = 0.0
        loss = 0.0
        for x, y in batches:
            logits = search.forward(x, op_weights)
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            total += y.numel()
        return 100.0 * correct / max(total, 1.0), -loss / max(total, 1.0)

    def _masked(self, base: dict[str, OpWeights], cell: str, row: int, op: int | None) -> dict[str, OpWeights]:
        w = base[cell].weights.clone()
        if op is None:
            w[row] = 0.0
        else:
            w[row, op] = 0.0
        return {**base, cell: OpWeights(w, base[cell].active)}

    def _decide_op(self, search, proj: Projection, cell: str, row: int, batches) -> None:
        base = self._weights(search, proj)
        scores = [self._crit(search, self._masked(base, cell, row, o), batches) for o in range(base[cell].weights.shape[1])]
        best = min(range(len(scores)), key=lambda o: (scores[o], o))  # removal hurts most; first on ties
        proj.fix_op(cell, row, best)
        ops = search.cells[cell]
        op_name = next(d["ops"][best] for _, _, d in ops.edges(data=True) if d.get("index") == row)
        self.decisions.append({"cell": cell, "edge": row, "op": op_name, "scores": scores})

    def _decide_node(self, search, proj: Projection, cell: str, node: int, batches) -> None:
        rows = [e for _, e in incoming(search.cells[cell], node)]
        while len(rows) > self.config.k:
            base = self._weights(search, proj)
            scores = [self._crit(search, self._masked(base, cell, e, None), batches) for e in rows]
            worst = max(range(len(rows)), key=lambda i: (scores[i], i))  # removal hurts least; last on ties
            proj.drop_edge(cell, rows[worst])
            self.decisions.append({"cell": cell, "node": node, "dropped": rows[worst], "scores": scores})
            del rows[worst]

    def _tune_epoch(self, search, t: int, total: int, wcfg) -> None:
        c = self.config
        lr0 = wcfg.lr * c.lr_factor
        lr = lr0 if c.lr_schedule == "constant" else wcfg.lr_min + (lr0 - wcfg.lr_min) * (1 + math.cos(math.pi * t / total)) / 2
        for group in search.w_optimizer.param_groups:
            group["lr"] = lr
        self.tune_lrs.append(lr)
        steps = c.tune_steps or search.steps_per_epoch
        epoch = search.epochs + t
        search.model.train()
        for i in range(steps):
            train = search.train_loader.batch(epoch, i)
            valid = search.valid_loader.batch(epoch, i) if search.valid_loader is not None else None
            search.update_rule.step(search, train, valid)

    def state_dict(self):
        return {**super().state_dict(), "decisions": list(self.decisions)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.decisions = list(state.get("decisions", []))


@hookimpl
def diffnas_register_discretisers(register):
    register("darts_pt", DartsPT)
