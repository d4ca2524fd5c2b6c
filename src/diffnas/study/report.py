"""A study's results: tables (CSV and Markdown) and plots (PNG), read back from its run directories.

Everything here reads only what the runs wrote (``result.json``, ``metrics.jsonl``, ``recipe.yaml``),
so ``diffnas study STUDY.yaml --report-only`` regenerates the same files at any time. Written under
the study's output folder::

    results.csv / results.md       one row per method (label, plus any non-seed axis values)
    runs.csv                       one row per run
    plots/nb201_test_per_epoch.png NB201 CIFAR-10 test accuracy of the current genotype, mean ± std band
    plots/nb301_per_epoch.png      the same for the NB301 surrogate (DARTS-space runs)
    plots/collapse.png             parameter-free ops, α entropy (+ Hessian eigenvalue, gradient
                                   correlation when recorded) per epoch, mean ± std band
    plots/collapse_per_step.png    with diagnostics.every_steps: parameter-free share, skip weight and
                                   α entropy per cell type, the current cell's NB201 score (+ Hessian
                                   eigenvalue) over global steps, mean ± std band over seeds
    steps.csv                      the same curves as numbers: one row per method and recorded step
    plots/alphas_<run>_<cell>.png  op strengths per edge over epochs (one subplot per edge)
    plots/alpha_grads_<run>_<cell>.png  the α step's gradient per op over epochs (Single-DARTS Fig. 3;
                                   when ``diagnostics.alpha_gradients`` recorded it)
    plots/cells/<run>_<cell>.png   the final cells
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs

from ..core.errors import DiffnasError
from ..core.limits import InputError, read_json, read_jsonl
from ..core.recipe import read_yaml
from ..core.rundir import atomic_write, write_text
from .schema import RunSpec

#: (key, column prefix, markdown title): the accuracies a table reports, in %
METRICS = (("cifar10_test", "c10_test", "C10 test"), ("cifar100_test", "c100_test", "C100 test"),
           ("imagenet16_test", "in16_test", "IN16 test"), ("nb301", "nb301", "NB301 surrogate"))


@attrs.define
class RunResult:
    spec: RunSpec
    status: str
    result: dict[str, Any] | None
    history: list[dict[str, Any]]
    recipe: dict[str, Any]
    #: why a file of the run could not be read (the run then counts as ``unreadable``), else ""
    problem: str = ""

    @property
    def scores(self) -> dict[str, float]:
        """Final accuracies in % (NB201 table test columns; the NB301 surrogate's prediction × 100)."""
        return _scores((self.result or {}).get("scores", {}))


def _scores(scores: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    nb = scores.get("nb201") or {}
    for k in ("cifar10_test", "cifar100_test", "imagenet16_test"):
        if isinstance(nb.get(k), (int, float)):
            out[k] = float(nb[k])
    s = scores.get("nb301")
    if isinstance(s, (int, float)):
        out["nb301"] = float(s)
    elif isinstance(s, dict):
        for k in ("val_acc", "test_acc", "accuracy", "score"):
            if isinstance(s.get(k), (int, float)):
                v = float(s[k])
                out["nb301"] = v * 100.0 if v <= 1.0 else v
                break
    return out


def read_run(spec: RunSpec) -> RunResult:
    """What one run wrote. A file that cannot be read (corrupt, truncated, too large) does not stop
    the report: the run is marked ``unreadable`` and the problem is noted."""
    d = spec.out_dir
    status, result, history, recipe, problem = spec.status, None, [], spec.recipe, ""
    try:
        if (d / "result.json").exists():
            result = read_json(d / "result.json", "result file")
            if not isinstance(result, dict):
                raise InputError(f"result file {d / 'result.json'} does not hold a JSON object")
        if (d / "metrics.jsonl").exists():
            history = [r for r in read_jsonl(d / "metrics.jsonl") if isinstance(r, dict)]
        if (d / "recipe.yaml").exists():
            saved = read_yaml(d / "recipe.yaml")
            recipe = saved if isinstance(saved, dict) else spec.recipe
    except DiffnasError as exc:
        status, result, problem = "unreadable", None, str(exc).replace("\n", " ")
    return RunResult(spec, status, result, history, recipe, problem)


# --------------------------------------------------------------------------- search-space facts


@attrs.frozen
class SpaceInfo:
    free: frozenset[str]
    edges: dict[str, list[tuple[str, list[str]]]]  # cell -> [(edge label, candidate ops)] in α row order


def space_info(recipe: dict[str, Any], catalogue: Any) -> SpaceInfo:
    """Parameter-free op names and the candidate ops per edge of the run's search space (defaults
    when the space's plugin is not installed)."""
    from ..core.protocols import SearchSpace

    try:
        from ..core.recipe import resolve_recipe

        resolved = resolve_recipe(recipe, catalogue)
        space = catalogue.build("search_space", resolved.recipe.search_space.name, resolved.configs["search_space"])
        edges = {}
        for name, g in space.cells().items():
            rows = sorted((d["index"], f"{u}→{v}", list(d["ops"])) for u, v, d in g.edges(data=True) if "ops" in d)
            edges[name] = [(lab, ops) for _, lab, ops in rows]
        return SpaceInfo(frozenset(space.parameter_free_ops()), edges)
    except Exception:
        return SpaceInfo(frozenset(SearchSpace().parameter_free_ops()), {})


def parameter_free(result: dict[str, Any], free: frozenset[str]) -> int | None:
    """How many parameter-free ops the final genotype uses (all cell types)."""
    from ..core.genotype import Genotype

    gj = result.get("genotype_json")
    if not gj:
        return None
    g = Genotype.from_dict(gj)
    return sum(1 for cell in g.cells.values() for op in cell.ops() if op in free)


# --------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation (ddof = 0, as NAS-Bench-201 reports); ``None`` if empty."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def _r(x: float | None, nd: int = 3) -> Any:
    return "" if x is None else round(x, nd)


def build_tables(runs: list[RunResult], infos: dict[str, SpaceInfo]) -> tuple[list[dict], list[dict]]:
    """``(method rows, run rows)`` as plain dicts (the CSV rows)."""
    run_rows = []
    groups: dict[str, list[dict]] = {}
    order: list[str] = []
    for r in runs:
        sc = r.scores
        pf = parameter_free(r.result, infos[r.spec.id].free) if r.result else None
        row = {"id": r.spec.id, "method": r.spec.group, "label": r.spec.label, "seed": r.spec.seed, "status": r.status,
               **{f"{col}": _r(sc.get(k)) for k, col, _ in METRICS},
               "param_free": "" if pf is None else pf,
               "epochs_run": (r.result or {}).get("epochs_run", len(r.history)),
               "search_time_s": _r((r.result or {}).get("search_time_s"), 1),
               "wall_time_s": _r((r.result or {}).get("wall_time_s"), 1),
               "stop_reason": (r.result or {}).get("stop_reason") or "",
               "genotype": (r.result or {}).get("genotype", "")}
        run_rows.append(row)
        if r.spec.group not in groups:
            order.append(r.spec.group)
        groups.setdefault(r.spec.group, []).append({"row": row, "run": r})
    method_rows = []
    for g in order:
        items = groups[g]
        done = [it for it in items if it["run"].status == "done"]
        spec = items[0]["run"].spec
        row: dict[str, Any] = {"method": g, "runs_done": len(done), "runs_total": len(items),
                               "seeds": " ".join(str(it["run"].spec.seed) for it in done)}
        for k, col, _ in METRICS:
            m, s = mean_std([it["run"].scores.get(k) for it in done])
            row[f"{col}_mean"], row[f"{col}_std"] = _r(m), _r(s)
            row[f"{col}_published"] = spec.published.get(k, "")
        m, s = mean_std([it["row"]["param_free"] for it in done if it["row"]["param_free"] != ""])
        row["param_free_mean"], row["param_free_std"] = _r(m, 2), _r(s, 2)
        m, s = mean_std([it["run"].result.get("search_time_s") for it in done])
        row["search_time_s_mean"], row["search_time_s_std"] = _r(m, 1), _r(s, 1)
        row["published_source"] = spec.published_source
        method_rows.append(row)
    return method_rows, run_rows


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _pm(m: Any, s: Any, nd: int = 2) -> str:
    if m == "":
        return "–"
    return f"{m:.{nd}f} ± {s:.{nd}f}"


def _time(s: Any) -> str:
    if s == "":
        return "–"
    s = float(s)
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h")


#: the x axis of per-epoch plots: the record's own epoch index, as in metrics.jsonl
EPOCH_LABEL = "epoch (0-based, as in metrics.jsonl)"


def _md(text: Any) -> str:
    """A markdown table cell: ``|`` escaped (NB201 genotypes are full of them; a bare one splits the cell)."""
    return str(text).replace("|", "\\|")


def markdown(name: str, method_rows: list[dict], run_rows: list[dict], notes: Sequence[str] = ()) -> str:
    shown = [(k, col, title) for k, col, title in METRICS
             if any(r[f"{col}_mean"] != "" or r[f"{col}_published"] != "" for r in method_rows)]
    head = ["method", "runs"]
    for _, _, title in shown:
        head += [title, "published"]
    head += ["param-free ops", "search time"]
    lines = [f"# Study {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in method_rows:
        cells = [_md(r["method"]), f"{r['runs_done']}/{r['runs_total']}"]
        for _, col, _ in shown:
            cells += [_pm(r[f"{col}_mean"], r[f"{col}_std"]), "–" if r[f"{col}_published"] == "" else f"{r[f'{col}_published']:.2f}"]
        cells += [_pm(r["param_free_mean"], r["param_free_std"], 1), _time(r["search_time_s_mean"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Accuracies in %: mean ± population std (ddof = 0, as NAS-Bench-201 reports) over the finished "
              "seeds, of the final genotype (NB201: the benchmark table's test accuracy after 200 epochs; NB301: "
              "the surrogate's predicted CIFAR-10 validation accuracy). Param-free ops: operations without "
              "weights in the final genotype, all cell types. Search time: the sum of the epochs' times "
              "(scoring included, start-up excluded)."]
    sources = [f"{r['method']}: {r['published_source']}" for r in method_rows if r["published_source"]]
    if sources:
        lines += ["", "Published numbers: " + "; ".join(sources) + "."]
    lines += [*(f"\n{n}" for n in notes)]
    lines += ["", "## Runs", "", "| run | seed | status | C10 / C100 / IN16 test | NB301 | param-free | epochs | search time | genotype |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in run_rows:
        acc = " / ".join("–" if r[c] == "" else f"{r[c]:.2f}" for c in ("c10_test", "c100_test", "in16_test"))
        nb301 = "–" if r["nb301"] == "" else f"{r['nb301']:.2f}"
        lines.append(f"| {_md(r['id'])} | {r['seed']} | {r['status']} | {acc} | {nb301} | "
                     f"{r['param_free']} | {r['epochs_run']} | {_time(r['search_time_s'])} | `{_md(r['genotype'])}` |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _int_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _plain_values(ax: Any) -> None:
    """Value ticks as the numbers themselves: matplotlib would otherwise print a nearly constant curve
    (α entropy 1.60943 ± 1e-6) as ``1e-6 + 1.60943`` offsets nobody can read."""
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _save(fig: Any, path: Path) -> None:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_alphas(history: list[dict], cell: str, edges: list[tuple[str, list[str]]], title: str, path: Path) -> bool:
    """Op strengths per edge over epochs: one subplot per edge, one line per op."""
    recs = [r for r in history if cell in r.get("alphas", {})]
    if not recs:
        return False
    plt = _plt()
    n_edges = len(recs[0]["alphas"][cell])
    n_ops = len(recs[0]["alphas"][cell][0])
    if len(edges) != n_edges:
        edges = [(f"edge {e}", [f"op {o}" for o in range(n_ops)]) for e in range(n_edges)]
    ncols = min(n_edges, 3 if n_edges <= 6 else 4)
    nrows = math.ceil(n_edges / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.5 * nrows + 0.8), dpi=100, squeeze=False, sharex=True)
    epochs = [r["epoch"] for r in recs]  # 0-based, as metrics.jsonl, diffnas show and TensorBoard number them
    cmap = plt.get_cmap("tab10")
    ops_all = edges[0][1]
    for e in range(nrows * ncols):
        ax = axes[e // ncols][e % ncols]
        if e >= n_edges:
            ax.axis("off")
            continue
        for o in range(n_ops):
            name = edges[e][1][o] if o < len(edges[e][1]) else f"op {o}"
            ax.plot(epochs, [r["alphas"][cell][e][o] for r in recs], label=name,
                    color=cmap(ops_all.index(name) % 10 if name in ops_all else o % 10), lw=1.4)
        ax.set_title(edges[e][0], fontsize=9)
        ax.xaxis.set_major_locator(_int_ticks())
        _plain_values(ax)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(EPOCH_LABEL, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    _save(fig, path)
    return True


def plot_alpha_gradients(history: list[dict], cell: str, title: str, path: Path) -> bool:
    """The α step's gradient per op over epochs (``record["alpha_gradients"][cell]``, Single-DARTS
    Fig. 3): one line per op; below zero the α step raises the op."""
    recs = [r for r in history if isinstance((r.get("alpha_gradients") or {}).get(cell), dict)]
    if not recs:
        return False
    plt = _plt()
    ops = list(dict.fromkeys(op for r in recs for op in r["alpha_gradients"][cell]))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    cmap = plt.get_cmap("tab10")
    for i, op in enumerate(ops):
        pts = [(r["epoch"], r["alpha_gradients"][cell][op]) for r in recs
               if isinstance(r["alpha_gradients"][cell].get(op), (int, float))]
        if pts:
            ax.plot([e for e, _ in pts], [v for _, v in pts], label=op, color=cmap(i % 10), lw=1.5,
                    marker="o" if len(pts) < 12 else None, ms=3)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel(EPOCH_LABEL)
    ax.xaxis.set_major_locator(_int_ticks())
    ax.set_ylabel("∂L/∂α (mean over edges)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return True


#: the x axis of per-step plots: the step records' global step (diagnostics.every_steps)
STEP_LABEL = "global step (steps done; 0: the initial α)"


def plot_per_epoch(groups: dict[str, list[list[dict]]], value: Callable[[dict], float | None], ylabel: str,
                   title: str, path: Path, ax: Any = None, x: str = "epoch") -> bool:
    """One line per group: the mean over its runs at each epoch (each record's ``x``: ``"global_step"``
    for step records), with a ± std band."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    drawn = False
    for label, histories in groups.items():
        per_epoch: dict[int, list[float]] = {}
        for h in histories:
            for r in h:
                v = value(r)
                if v is not None and math.isfinite(v) and isinstance(r.get(x), int):
                    per_epoch.setdefault(r[x], []).append(v)
        if not per_epoch:
            continue
        xs = sorted(per_epoch)
        ms = [mean_std(per_epoch[x]) for x in xs]
        mean = [m for m, _ in ms]
        std = [s for _, s in ms]
        line, = ax.plot(xs, mean, label=f"{label} (n={len(histories)})", lw=1.6, marker="o" if len(xs) < 12 else None, ms=3)
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.18, lw=0)
        drawn = True
    if not drawn:
        if own:
            plt.close(fig)
        return False
    ax.set_xlabel(EPOCH_LABEL if x == "epoch" else STEP_LABEL)
    ax.xaxis.set_major_locator(_int_ticks())
    _plain_values(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if own:
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        _save(fig, path)
    return True


def _nb201(key: str) -> Callable[[dict], float | None]:
    return lambda r: (r.get("scores", {}).get("nb201") or {}).get(key)


def _mean_entropy(r: dict) -> float | None:
    e = r.get("entropy")
    return sum(e.values()) / len(e) if isinstance(e, dict) and e else None


def _pf(r: dict) -> float | None:
    return (r.get("ops") or {}).get("parameter_free")


def _gc(r: dict) -> float | None:
    g = r.get("gradient_correlation")
    return g.get("inner") if isinstance(g, dict) else None


def plot_all(runs: list[RunResult], infos: dict[str, SpaceInfo], plots: Path, name: str, draw_cells: bool = True) -> list[str]:
    """Every plot of a study; returns the files written (relative to ``plots``)."""
    plots.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    groups: dict[str, list[list[dict]]] = {}
    for r in runs:
        if r.history:
            groups.setdefault(r.spec.group, []).append(r.history)
    if plot_per_epoch(groups, _nb201("cifar10_test"), "NB201 CIFAR-10 test accuracy (%)",
                      f"{name}: test accuracy of the current genotype (mean ± std over seeds)", plots / "nb201_test_per_epoch.png"):
        written.append("nb201_test_per_epoch.png")
    if plot_per_epoch(groups, lambda r: _scores(r.get("scores", {})).get("nb301"), "NB301 surrogate accuracy (%)",
                      f"{name}: surrogate score of the current genotype (mean ± std over seeds)", plots / "nb301_per_epoch.png"):
        written.append("nb301_per_epoch.png")
    panels = [(_pf, "parameter-free ops in genotype"), (_mean_entropy, "α entropy (mean over cells)"),
              (lambda r: r.get("hessian_eigenvalue"), "dominant Hessian eigenvalue (α)"),
              (_gc, "gradient correlation ⟨g_α, g_w⟩")]
    panels = [p for p in panels if any(p[0](rec) is not None for h in groups.values() for hist in h for rec in hist)]
    if panels:
        plt = _plt()
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), dpi=100, squeeze=False)
        for ax, (fn, lab) in zip(axes[0], panels):
            plot_per_epoch(groups, fn, lab, lab, plots / "collapse.png", ax=ax)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
        fig.suptitle(f"{name}: collapse diagnostics per epoch (mean ± std over seeds)", fontsize=10)
        fig.tight_layout(rect=(0, 0.1, 1, 0.95))
        _save(fig, plots / "collapse.png")
        written.append("collapse.png")
    if plot_steps(runs, plots / "collapse_per_step.png", name):
        written.append("collapse_per_step.png")
    for r in runs:
        cells = sorted({c for rec in r.history for c in rec.get("alphas", {})})
        for cell in cells:
            f = f"alphas_{r.spec.id}_{cell}.png"
            if plot_alphas(r.history, cell, infos[r.spec.id].edges.get(cell, []),
                           f"{r.spec.id}: {cell} cell op strengths per edge", plots / f):
                written.append(f)
            f = f"alpha_grads_{r.spec.id}_{cell}.png"
            if plot_alpha_gradients(r.history, cell, f"{r.spec.id}: {cell} cell, the α step's gradient per op", plots / f):
                written.append(f)
        if draw_cells and r.result and r.result.get("genotype_json"):
            from ..core.draw import draw_genotype
            from ..core.genotype import Genotype

            (plots / "cells").mkdir(exist_ok=True)
            written += [f"cells/{f}" for f in draw_genotype(Genotype.from_dict(r.result["genotype_json"]), plots / "cells", prefix=r.spec.id)]
    return written


def _step_groups(runs: list[RunResult]) -> dict[str, list[list[dict]]]:
    from ..core.step_records import step_records

    groups: dict[str, list[list[dict]]] = {}
    for r in runs:
        recs = step_records(r.history)
        if recs:
            groups.setdefault(r.spec.group, []).append(recs)
    return groups


def _cell_value(key: str, cell: str) -> Callable[[dict], float | None]:
    return lambda r: (r.get(key) or {}).get(cell)


def step_panels(groups: dict[str, list[list[dict]]]) -> list[tuple[Callable[[dict], float | None], str]]:
    """``(value, label)`` of every per-step curve some run recorded: parameter-free share, skip
    weight and α entropy per cell type, the NB201 score, the Hessian eigenvalue."""
    recs = [rec for runs in groups.values() for h in runs for rec in h]
    cells = list(dict.fromkeys(c for rec in recs for c in (rec.get("parameter_free_share") or {})))
    panels = []
    for key, lab in (("parameter_free_share", "parameter-free share of op weights"), ("skip_weight", "skip weight"),
                     ("entropy", "α entropy")):
        panels += [(_cell_value(key, c), f"{lab} ({c})") for c in cells]
    panels += [(_nb201("cifar10_test"), "NB201 C10 test of the current cell (%)"),
               (lambda r: r.get("hessian_eigenvalue"), "dominant Hessian eigenvalue (α)")]
    return [p for p in panels if any(p[0](rec) is not None for rec in recs)]


def plot_steps(runs: list[RunResult], path: Path, name: str) -> bool:
    """The step records' curves over global steps, one panel per quantity (:func:`step_panels`),
    one line per method with a mean ± std band over its seeds; False when no run recorded steps."""
    groups = _step_groups(runs)
    panels = step_panels(groups)
    if not panels:
        return False
    plt = _plt()
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 0.6), dpi=100, squeeze=False)
    for i, (fn, lab) in enumerate(panels):
        plot_per_epoch(groups, fn, lab, lab, path, ax=axes[i // ncols][i % ncols], x="global_step")
    for j in range(len(panels), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"{name}: collapse diagnostics per step (mean ± std over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    _save(fig, path)
    return True


def step_rows(runs: list[RunResult]) -> list[dict]:
    """``steps.csv`` of a study: per method and recorded global step, the number of runs and the mean
    and population std over them of every number of the step records (NB201 indices left out)."""
    from ..core.outputs import scalars

    rows = []
    for group, histories in _step_groups(runs).items():
        per_step: dict[int, list[dict[str, float]]] = {}
        for h in histories:
            for rec in h:
                if isinstance(rec.get("global_step"), int):
                    per_step.setdefault(rec["global_step"], []).append(scalars(rec))
        keys = list(dict.fromkeys(k for flat in (f for fs in per_step.values() for f in fs) for k in flat
                                  if k not in ("global_step", "epoch") and not k.endswith(".index")))
        for g in sorted(per_step):
            row: dict[str, Any] = {"method": group, "global_step": g, "runs": len(per_step[g])}
            for k in keys:
                m, sd = mean_std([f.get(k) for f in per_step[g]])
                row[f"{k}_mean"], row[f"{k}_std"] = _r(m, 6), _r(sd, 6)
            rows.append(row)
    return rows


def _csv_union(rows: list[dict]) -> str:
    """CSV of rows whose columns may differ (methods recording different keys): the union, in order."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- all of it


def population_decisions(out: Path) -> list[str]:
    """A line per calibrated population (``population: auto``): which runs, the decision, the figures."""
    from .populations import DECISIONS_DIR, decision_line

    lines = []
    for path in sorted((out / DECISIONS_DIR).glob("*.json")) if (out / DECISIONS_DIR).is_dir() else []:
        try:
            fig = read_json(path)
            lines.append(f"{path.stem} ({', '.join(fig['runs'])}): {decision_line(fig)}")
        except (InputError, KeyError, TypeError, ValueError) as exc:
            lines.append(f"{path.stem}: unreadable calibration record {path} ({exc})")
    return lines


def write_report(specs: Sequence[RunSpec], out: Path, name: str, catalogue: Any = None, plots: bool = True,
                 notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write the tables and plots of a study under ``out``; return ``{"methods": rows, "runs": rows, "plots": files}``."""
    out.mkdir(parents=True, exist_ok=True)
    if catalogue is None:
        from .. import api

        catalogue = api.catalogue()
    runs = [read_run(s) for s in specs]
    notes = [*notes, *(f"run {r.spec.id} is left out: {r.problem}" for r in runs if r.problem),
             *population_decisions(out)]
    infos: dict[str, SpaceInfo] = {}
    cache: dict[str, SpaceInfo] = {}
    for r in runs:
        key = json.dumps(r.recipe.get("search_space"), sort_keys=True)
        if key not in cache:
            cache[key] = space_info(r.recipe, catalogue)
        infos[r.spec.id] = cache[key]
    method_rows, run_rows = build_tables(runs, infos)
    write_text(out / "results.csv", _csv(method_rows))
    write_text(out / "runs.csv", _csv(run_rows))
    write_text(out / "results.md", markdown(name, method_rows, run_rows, notes))
    per_step = step_rows(runs)
    if per_step:
        write_text(out / "steps.csv", _csv_union(per_step))
    files = plot_all(runs, infos, out / "plots", name) if plots else []
    return {"methods": method_rows, "runs": run_rows, "plots": files,
            "problems": [f"{r.spec.id}: {r.problem}" for r in runs if r.problem]}
