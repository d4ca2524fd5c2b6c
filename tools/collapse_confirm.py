"""The analysis of the confirmation study (examples/studies/collapse_confirm), written and committed
before the study ran: what is measured and how each hypothesis is decided (README.md there).

    diffnas study examples/studies/collapse_confirm/collapse_confirm.yaml --out runs/collapse_confirm
    python tools/collapse_confirm.py runs/collapse_confirm      # writes examples/studies/results/collapse_confirm/

Per run, from ``metrics.jsonl`` (one record every 50 steps): the normal cell's parameter-free share
(mean over edges of the op-weight mass on none / skip_connect / avg_pool_3x3, each edge's weights
normalised to sum 1, so that sigmoid weights compare with softmax ones) and skip weight, their change
from the fork's start (uniform op weights: 0.6 and 0.2; α is initialised at 1e-3·N(0, 1), which moves
these by less than 1e-3), the dominant Hessian eigenvalue where recorded, and the final cell's NB201
CIFAR-10 test accuracy.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "examples" / "studies" / "results" / "collapse_confirm"
EVERY = 50
SEEDS = (10, 11, 12)
ARMS = ("darts_v1", "darts_v2", "single_softmax", "single_sigmoid", "sparse_noisy", "beta_darts", "darts_minus",
        "degeneracy")
FREE, SKIP = (0, 1, 4), 1  # NB201 op order: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
START_SHARE, START_SKIP = 0.6, 0.2


def _norm(rows: list[list[float]]) -> list[list[float]]:
    return [[v / max(sum(r), 1e-12) for v in r] for r in rows]


def run_curves(d: Path) -> list[dict]:
    out = []
    for line in (d / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        p = _norm(r["alphas"]["normal"])
        out.append({"step": (r["epoch"] + 1) * EVERY,
                    "share": sum(sum(row[i] for i in FREE) for row in p) / len(p),
                    "skip": sum(row[SKIP] for row in p) / len(p),
                    "hessian": r.get("hessian_eigenvalue"),
                    "nb201": (r.get("scores", {}).get("nb201") or {}).get("cifar10_test")})
    return out


def _hessians(c: list[dict]) -> list[float]:
    return [float(x["hessian"]) for x in c if isinstance(x["hessian"], (int, float))]


def collect(study_out: Path) -> dict:
    runs = {}
    for arm in ARMS:
        for seed in SEEDS:
            d = study_out / "runs" / f"{arm}-seed{seed}"
            if not (d / "result.json").exists():
                continue
            c = run_curves(d)
            res = json.loads((d / "result.json").read_text())
            h = _hessians(c)
            runs[(arm, seed)] = {
                "curves": c, "d_share": c[-1]["share"] - START_SHARE, "d_skip": c[-1]["skip"] - START_SKIP,
                "hessian_first": h[0] if h else None, "hessian_last": h[-1] if h else None,
                "nb201": (res["scores"].get("nb201") or {}).get("cifar10_test"), "genotype": res["genotype"],
                "parameter_free_ops": None, "wall_s": res.get("wall_time_s"), "search_s": res.get("search_time_s")}
            last = json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])
            runs[(arm, seed)]["parameter_free_ops"] = last.get("ops", {}).get("parameter_free")
    return runs


def _verdict(holds: list[bool]) -> str:
    """All three seeds: confirmed; two or more against: refuted; else not shown (also with a run missing)."""
    if len(holds) < len(SEEDS):
        return "not shown (runs missing)"
    fails = holds.count(False)
    return "confirmed" if fails == 0 else "refuted" if fails >= 2 else "not shown"


def hypotheses(runs: dict) -> list[dict]:
    def per_seed(fn) -> list[bool]:
        return [fn(s) for s in SEEDS if all(k in runs for k in fn.__needs__(s))]

    def need(*arms):
        def deco(fn):
            fn.__needs__ = lambda s: [(a, s) for a in arms]
            return fn
        return deco

    H = []

    def add(hid, text, fn, *arms):
        fn = need(*arms)(fn)
        holds = per_seed(fn)
        H.append({"id": hid, "hypothesis": text, "holds_per_seed": holds, "verdict": _verdict(holds)})

    add("H1", "DARTS-V1's parameter-free share rises (Δshare > 0)", lambda s: runs[("darts_v1", s)]["d_share"] > 0, "darts_v1")
    add("H2", "DARTS-V1's skip weight rises (Δskip > 0)", lambda s: runs[("darts_v1", s)]["d_skip"] > 0, "darts_v1")
    add("H3", "DARTS-V2's skip weight rises (Δskip > 0)", lambda s: runs[("darts_v2", s)]["d_skip"] > 0, "darts_v2")
    for hid, arm, name in (("H4", "single_softmax", "single-level softmax"), ("H5", "single_sigmoid", "Single-DARTS (sigmoid)"),
                           ("H6", "beta_darts", "β-DARTS"), ("H7", "darts_minus", "DARTS-"),
                           ("H8", "sparse_noisy", "sparse-noisy softmax (PCD)")):
        add(hid, f"{name}'s skip weight rises less than DARTS-V1's, seed by seed (Δskip < DARTS-V1's Δskip)",
            lambda s, a=arm: runs[(a, s)]["d_skip"] < runs[("darts_v1", s)]["d_skip"], arm, "darts_v1")
    add("H9", "the degeneracy correction's parameter-free share rises less than DARTS-V1's, seed by seed",
        lambda s: runs[("degeneracy", s)]["d_share"] < runs[("darts_v1", s)]["d_share"], "degeneracy", "darts_v1")
    add("H10", "DARTS-V1's dominant Hessian eigenvalue (validation loss w.r.t. α) is larger at the end than at its first record",
        lambda s: (runs[("darts_v1", s)]["hessian_last"] or 0) > (runs[("darts_v1", s)]["hessian_first"] or 0), "darts_v1")
    return H


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def write(runs: dict, H: list[dict], results: Path = RESULTS) -> None:
    RESULTS = results  # noqa: N806 - the folder the tables, CSVs and plots go to
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "d_share", "d_skip", "hessian_first", "hessian_last", "nb201_c10", "parameter_free_ops",
                    "search_time_s", "wall_time_s", "genotype"])
        for (arm, seed), r in sorted(runs.items(), key=lambda kv: (ARMS.index(kv[0][0]), kv[0][1])):
            w.writerow([arm, seed, round(r["d_share"], 5), round(r["d_skip"], 5), r["hessian_first"], r["hessian_last"],
                        r["nb201"], r["parameter_free_ops"], r["search_s"], r["wall_s"], r["genotype"]])
    with open(RESULTS / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "step", "share", "skip", "hessian", "nb201_c10"])
        for (arm, seed), r in runs.items():
            for x in r["curves"]:
                h = x["hessian"]
                w.writerow([arm, seed, x["step"], round(x["share"], 5), round(x["skip"], 5), h, x["nb201"]])
    (RESULTS / "hypotheses.json").write_text(json.dumps(H, indent=1) + "\n")
    lines = ["| arm | Δ parameter-free share | Δ skip weight | NB201 C10 test of the found cell | search time per run (s) |",
             "|---|---|---|---|---|"]
    for arm in ARMS:
        rs = [runs[(arm, s)] for s in SEEDS if (arm, s) in runs]
        if not rs:
            continue
        lines.append(f"| {arm} ({len(rs)} seeds) | {_mean_std([r['d_share'] for r in rs])} | {_mean_std([r['d_skip'] for r in rs])} "
                     f"| {_mean_std([r['nb201'] for r in rs])} | {_mean_std([r['search_s'] for r in rs])} |")
    lines += ["", "| hypothesis | per seed (10, 11, 12) | verdict |", "|---|---|---|"]
    lines += [f"| {h['id']}: {h['hypothesis']} | {', '.join('yes' if x else 'no' for x in h['holds_per_seed'])} | {h['verdict']} |"
              for h in H]
    (RESULTS / "tables.md").write_text("\n".join(lines) + "\n")
    _plot(runs, RESULTS)


def _plot(runs: dict, RESULTS: Path) -> None:  # noqa: N803
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, ylabel, fname in (("share", "parameter-free share (normal cell)", "share_curves.png"),
                               ("skip", "skip weight (normal cell)", "skip_curves.png")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for arm in ARMS:
            cs = [runs[(arm, s)]["curves"] for s in SEEDS if (arm, s) in runs]
            if not cs:
                continue
            n = min(len(c) for c in cs)
            steps = [0] + [cs[0][i]["step"] for i in range(n)]
            start = START_SHARE if key == "share" else START_SKIP
            vals = [[start] + [c[i][key] for i in range(n)] for c in cs]
            mean = [statistics.mean(v[i] for v in vals) for i in range(n + 1)]
            sd = [statistics.stdev(v[i] for v in vals) if len(vals) > 1 else 0.0 for i in range(n + 1)]
            line, = ax.plot(steps, mean, label=arm)
            ax.fill_between(steps, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=line.get_color(), alpha=0.15)
        ax.ticklabel_format(useOffset=False, axis="y")
        ax.set_xlabel("α steps after the shared warm-up"); ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout(); fig.savefig(RESULTS / fname, dpi=110); plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in ARMS:
        for s in SEEDS:
            if (arm, s) not in runs:
                continue
            hs = [(x["step"], x["hessian"]) for x in runs[(arm, s)]["curves"] if isinstance(x["hessian"], (int, float))]
            if hs:
                ax.plot(*zip(*hs), marker=".", label=arm if s == SEEDS[0] else None, color=f"C{ARMS.index(arm)}", alpha=0.8)
    ax.set_xlabel("α steps after the shared warm-up"); ax.set_ylabel("dominant Hessian eigenvalue (valid loss, α)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout(); fig.savefig(RESULTS / "hessian_curves.png", dpi=110); plt.close(fig)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "runs" / "collapse_confirm")
    runs = collect(out)
    H = hypotheses(runs)
    write(runs, H)
    for h in H:
        print(f"{h['id']}: {h['verdict']}  {h['holds_per_seed']}  {h['hypothesis']}")
