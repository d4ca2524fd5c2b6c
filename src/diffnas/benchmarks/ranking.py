"""Supernet ranking quality: does the trained supernet order architectures like the ground truth?

:func:`rank_run` loads a finished search (its ``recipe.yaml`` and ``checkpoint.pt``, rebuilt the way
:func:`diffnas.api.resume` does), draws ``samples`` distinct architectures from the search space with a
seeded generator, and scores each twice:

* **supernet**: a discretised forward of the trained supernet, i.e. one-hot op weights (weight 1 and
  the only active op on each kept edge, nothing on dropped edges), on the same first ``batches``
  unaugmented batches of the validation half. BatchNorm uses batch statistics (the NB201 supernet
  tracks none; for other supernets the running buffers are restored afterwards);
* **ground truth**: the NAS-Bench-201 table (``nb201:<metric>``, default CIFAR-10 test accuracy) for
  NB201 cells, the NB301 surrogate's predicted validation accuracy (``nb301``) for DARTS cells.

It reports Kendall's tau-b and Spearman's rho (both tie-aware, implemented here without scipy) of
supernet accuracy against the ground truth, plus Kendall's tau of the negated supernet loss.

Sampling: for a cell whose output is a single node (NB201) every edge gets one op drawn uniformly from
its candidates (``none`` included, as in the benchmark's 15,625 cells); for a DARTS-style cell (several
concatenated nodes) every intermediate node keeps two distinct predecessors drawn uniformly, each with
an op drawn uniformly from its candidates other than ``none``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import networkx as nx
import torch

from ..core.cells import searched_edges
from ..core.errors import DiffnasError, RunError
from ..core.genotype import CellGenotype, Genotype
from ..core.protocols import OpWeights

# --------------------------------------------------------------------------- rank correlations


def _pairs_sign(x: Sequence[float]) -> torch.Tensor:
    t = torch.as_tensor(list(x), dtype=torch.float64)
    return torch.sign(t.view(-1, 1) - t.view(1, -1))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled as in ``scipy.stats.kendalltau``); NaN if undefined."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: lengths differ ({len(x)} vs {len(y)})")
    n = len(x)
    if n < 2:
        return float("nan")
    sx, sy = _pairs_sign(x), _pairs_sign(y)
    iu = torch.triu_indices(n, n, 1)
    sx, sy = sx[iu[0], iu[1]], sy[iu[0], iu[1]]
    s = float((sx * sy).sum())
    n0 = n * (n - 1) / 2
    n1 = float((sx == 0).sum())
    n2 = float((sy == 0).sum())
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return s / denom if denom > 0 else float("nan")


def average_ranks(x: Sequence[float]) -> torch.Tensor:
    """1-based ranks with ties given their mean rank (``scipy.stats.rankdata(method="average")``)."""
    t = torch.as_tensor(list(x), dtype=torch.float64)
    less = (t.view(1, -1) < t.view(-1, 1)).sum(1).to(torch.float64)
    equal = (t.view(1, -1) == t.view(-1, 1)).sum(1).to(torch.float64)
    return less + (equal + 1) / 2


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of average ranks; NaN if a ranking is constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman_rho: lengths differ ({len(x)} vs {len(y)})")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum()) / denom if denom > 0 else float("nan")


# --------------------------------------------------------------------------- sampling and weights


def _is_single_output(graph: nx.DiGraph) -> bool:
    return len(graph.graph.get("concat", [])) == 1


def sample_genotype(space: str, cells: dict[str, nx.DiGraph], gen: torch.Generator) -> Genotype:
    """One architecture drawn uniformly (see the module docstring for the two cell styles)."""
    out: dict[str, CellGenotype] = {}
    for name, graph in sorted(cells.items()):
        edges: list[tuple[int, int, str]] = []
        if _is_single_output(graph):
            for u, v in searched_edges(graph):
                ops = graph.edges[(u, v)]["ops"]
                edges.append((u, v, ops[int(torch.randint(len(ops), (1,), generator=gen))]))
        else:
            inputs = {n for n, d in graph.nodes(data=True) if d.get("role") == "input"}
            for node in nx.topological_sort(graph):
                if node in inputs:
                    continue
                preds = sorted(p for p in graph.predecessors(node) if "ops" in graph.edges[(p, node)])
                k = min(2, len(preds))
                chosen = sorted(preds[int(i)] for i in torch.randperm(len(preds), generator=gen)[:k])
                for src in chosen:
                    ops = [o for o in graph.edges[(src, node)]["ops"] if o != "none"]
                    if not ops:
                        raise DiffnasError(f"cell {name!r}: edge {src}->{node} has no op other than 'none' to sample")
                    edges.append((src, node, ops[int(torch.randint(len(ops), (1,), generator=gen))]))
        out[name] = CellGenotype(edges=edges, concat=graph.graph["concat"])
    return Genotype(space=space, cells=out)


def sample_genotypes(space: str, cells: dict[str, nx.DiGraph], n: int, seed: int, max_tries: int = 100) -> list[Genotype]:
    """``n`` distinct architectures (fewer if the space is smaller), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    seen: dict[str, Genotype] = {}
    tries = 0
    while len(seen) < n and tries < n * max_tries:
        g = sample_genotype(space, cells, gen)
        seen.setdefault(g.to_json(), g)
        tries += 1
    return list(seen.values())


def genotype_op_weights(genotype: Genotype, cells: dict[str, nx.DiGraph], device: Any = "cpu") -> dict[str, OpWeights]:
    """One-hot op weights of ``genotype`` for the supernet: weight 1 on each kept edge's op, which is
    the edge's only active op; all-zero, inactive rows for edges the genotype drops."""
    out = {}
    for name, graph in cells.items():
        if name not in genotype.cells:
            raise DiffnasError(f"genotype has no {name!r} cell (has {sorted(genotype.cells)})")
        edges = searched_edges(graph)
        n_ops = len(graph.edges[edges[0]]["ops"])
        w = torch.zeros(len(edges), n_ops)
        for src, dst, op in genotype.cells[name].edges:
            if not graph.has_edge(src, dst) or "index" not in graph.edges[(src, dst)]:
                raise DiffnasError(f"{name} cell: edge {src}->{dst} is not a searched edge of this space")
            ops = list(graph.edges[(src, dst)]["ops"])
            if op not in ops:
                raise DiffnasError(f"{name} cell: op {op!r} is not a candidate of edge {src}->{dst} ({ops})")
            w[graph.edges[(src, dst)]["index"], ops.index(op)] = 1.0
        out[name] = OpWeights(weights=w.to(device), active=(w > 0).to(device))
    return out


# --------------------------------------------------------------------------- the run


def load_finished_search(run_dir: str | Path, cat: Any = None, data: Any = None) -> Any:
    """The :class:`~diffnas.core.engine.Search` of ``RUN_DIR`` with its checkpoint loaded (nothing is written)."""
    from ..api import catalogue
    from ..core.engine import Search
    from ..core.outputs import CHECKPOINT, load_search_checkpoint, restore_search
    from ..core.recipe import read_yaml, resolve_recipe

    run_dir = Path(run_dir)
    for name in ("recipe.yaml", CHECKPOINT):
        if not (run_dir / name).exists():
            raise RunError(f"{run_dir}: no {name} (is it a search's run directory?)")
    cat = cat or catalogue()
    resolved = resolve_recipe(read_yaml(run_dir / "recipe.yaml"), cat, source=str(run_dir / "recipe.yaml"))
    s = Search(resolved, cat.pm, cat, None, data=data)
    # the same checks as a resume: a damaged checkpoint, or one of another recipe, is refused by name
    restore_search(s, load_search_checkpoint(run_dir / CHECKPOINT, map_location=s.device), run_dir / CHECKPOINT,
                   run_dir / "recipe.yaml")
    return s


@torch.no_grad()
def supernet_scores(search: Any, genotypes: Sequence[Genotype], batches: int = 10, batch_size: int | None = None,
                    on_arch: Callable[[], None] | None = None) -> list[dict[str, float]]:
    """``[{"acc": %, "loss": mean CE}]`` of each genotype's discretised supernet forward on the first
    ``batches`` unaugmented batches of the validation half; ``on_arch()`` after each (progress)."""
    from ..data.loader import DeviceLoader

    t = search.recipe.trainer
    data = search.data
    loader = DeviceLoader(data.valid, batch_size or t.batch_size, search.device, data.mean, data.std, False, t.seed, 7,
                          channels_last=t.channels_last)
    nb = min(batches, math.ceil(loader.n / loader.batch_size))
    xs = [loader.make_batch(torch.arange(i * loader.batch_size, min((i + 1) * loader.batch_size, loader.n), device=search.device))
          for i in range(nb)]
    model = search.model
    buffers = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k})
    was_training = model.training
    model.train()  # batch statistics
    out = []
    try:
        for g in genotypes:
            ow = genotype_op_weights(g, search.cells, search.device)
            tot = cor = n = 0.0
            for x, y in xs:
                logits = search.forward(x, ow).float()
                tot += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                cor += float((logits.argmax(1) == y).sum())
                n += y.numel()
            out.append({"acc": 100.0 * cor / n, "loss": tot / n})
            if on_arch is not None:
                on_arch()
    finally:
        model.load_state_dict(buffers, strict=False)
        model.train(was_training)
    return out


def ground_truth(genotypes: Sequence[Genotype], metric: str = "cifar10_test", data_root: str | None = None) -> tuple[str, list[float]]:
    """``(name, values)``: the NB201 table's ``metric`` for NB201 cells, the NB301 surrogate for DARTS cells."""
    if not genotypes:
        return "", []
    space = genotypes[0].space
    if space == "nb201":
        from .nb201 import COLUMNS, load_table

        if metric not in COLUMNS:
            raise DiffnasError(f"unknown NB201 metric {metric!r}; known: {', '.join(COLUMNS)}")
        table = load_table(data_root)
        vals = []
        for g in genotypes:
            e = table.lookup(g.to_nb201_string())
            if e is None:
                raise DiffnasError(f"{g} is not in the NB201 table")
            vals.append(float(getattr(e, metric)))
        return f"nb201:{metric}", vals
    if space == "darts":
        from .nb301 import load_surrogate

        return "nb301:val_acc", [float(v) for v in load_surrogate(data_root).predict(list(genotypes))]
    raise DiffnasError(f"no ground truth for space {space!r} (NB201 table or NB301 surrogate only)")


def rank_run(run_dir: str | Path, samples: int = 100, seed: int = 0, batches: int = 10, batch_size: int | None = None,
             metric: str = "cifar10_test", data_root: str | None = None, cat: Any = None, data: Any = None,
             progress: bool = True) -> dict[str, Any]:
    """Rank correlation between a trained supernet and the ground truth (see the module docstring);
    ``progress``: a progress bar over the sampled architectures (:mod:`diffnas.core.progress`)."""
    from ..core.progress import progress_bar

    if samples < 2:
        raise DiffnasError(f"--samples must be at least 2, got {samples}")
    search = load_finished_search(run_dir, cat, data)
    space = search.search_space.name
    genotypes = sample_genotypes(space, search.cells, samples, seed)
    root = data_root if data_root is not None else search.recipe.data.root
    truth_name, truth = ground_truth(genotypes, metric, root)
    bar = progress_bar(len(genotypes), progress, unit="arch", desc="rank")
    try:
        scores = supernet_scores(search, genotypes, batches, batch_size, None if bar is None else lambda: bar.update(1))
    finally:
        if bar is not None:
            bar.close()
    acc = [s["acc"] for s in scores]
    neg_loss = [-s["loss"] for s in scores]
    return {
        "run_dir": str(run_dir),
        "space": space,
        "samples": len(genotypes),
        "seed": seed,
        "batches": batches,
        "ground_truth": truth_name,
        "kendall_tau": kendall_tau(acc, truth),
        "spearman_rho": spearman_rho(acc, truth),
        "kendall_tau_loss": kendall_tau(neg_loss, truth),
        "epochs_trained": search.state.epoch,
        "archs": [{"genotype": str(g), "supernet_acc": s["acc"], "supernet_loss": s["loss"], "truth": t}
                  for g, s, t in zip(genotypes, scores, truth)],
    }
