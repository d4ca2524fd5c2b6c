"""Population-fused search (``diffnas.core.population``) against single runs: K = 1, 2, 4, 8, 16.

For each population size K (members differ in seed and learning rates, DARTS-V1 on NAS-Bench-201
or, ``--space darts``, the DARTS space; synthetic CIFAR-shaped data) and for a plain single run (``single``, the baseline):

* **ops per step per member**: every op that reaches the ATen dispatcher during one step (after a
  warm-up step), divided by K: the kernel-launch proxy (on a GPU each such op is at least one launch);
  ops that only make views (no kernel; vmap adds many) are counted apart;
* **steps/s**: the implementations are timed interleaved (single, K=1, K=2, ..., single, K=1, ...)
  for ``--rounds`` rounds of ``--steps`` steps, so that load from other processes hits all alike;
  reported as the median over rounds with the spread (min–max); "per member" is population steps/s
  (each advances every member once), "aggregate" is K times that (member steps/s), and the ratio is
  aggregate over the single run's steps/s;
* **saved MiB per member**: activation memory autograd saves in one forward (as
  ``benchmarks/saved_memory.py``), divided by K;
* ``--fused`` adds ``single-fused``, one run with ``trainer.fused_cells`` (the fast single run a
  population must beat), and asks the populations for fused cells too (``--pop-switches``; a
  population path that refuses them is recorded as ``pop_refused`` and the plain population is
  timed instead). ``vs fused`` is aggregate member steps/s over ``single-fused``'s steps/s;
* ``--graphs`` (with ``--fused``, on a CUDA device) adds ``single-fused-graphs`` (``fused_cells`` +
  ``cuda_graphs``, the fastest single run) and ``K=<largest>+graphs``, the largest population with
  its step captured as one CUDA graph; ``vs graphs`` is aggregate member steps/s over
  ``single-fused-graphs``'s. A graphed runner that fails (build, capture) is recorded in
  ``graphs_failed`` and left out, so the other figures still come back; on the CPU the graphed runners
  are skipped (``graphs_skipped``: a CUDA graph needs a GPU).

    python benchmarks/population_speed.py                        # CPU, small settings
    python benchmarks/population_speed.py --device cuda --C 16 --N 5 --batch 64 --sizes 1,2,4,8,16
    python benchmarks/population_speed.py --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


#: ops that only make views (no kernel on a GPU), counted apart as benchmarks/count_ops.py does
VIEW_OPS = {"view", "_unsafe_view", "reshape", "transpose", "permute", "t", "expand", "as_strided", "unsqueeze",
            "squeeze", "select", "slice", "alias", "detach", "unbind", "split", "split_with_sizes", "chunk",
            "flatten", "unflatten", "narrow", "_reshape_alias", "lift_fresh", "numpy_T", "diagonal", "movedim"}


class OpCounter(TorchDispatchMode):
    """Counts every op that reaches the ATen dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def recipe(a: argparse.Namespace, k: int, switches: dict[str, bool] | None = None) -> dict[str, Any]:
    """Member ``k``: seed k, its own weight and α learning rates; ``switches``: trainer speed switches."""
    r = {
        "version": 1,
        "search_space": ({"name": "nb201", "params": {"C": a.C, "N": a.N}} if a.space == "nb201" else
                         {"name": "darts", "params": {"C": a.C, "layers": a.layers}}),
        "relaxation": {"name": "softmax"}, "update_rule": {"name": "bilevel", "params": {"order": a.order}},
        "discretiser": {"name": "argmax_per_edge" if a.space == "nb201" else "top_k_edges"},
        "data": {"dataset": "synthetic", "params": {"num_train": 4 * a.batch, "num_test": a.batch,
                                                     "image_size": a.image_size, "num_classes": 10}},
        "trainer": {"epochs": 1, "batch_size": a.batch, "seed": k, "device": a.device, "grad_clip": 5.0,
                    "weights_optimizer": {"name": "sgd", "lr": 0.025 * (1 + 0.1 * k), "momentum": 0.9, "nesterov": True,
                                          "weight_decay": 5.0e-4, "schedule": "cosine", "lr_min": 0.001},
                    "arch_optimizer": {"name": "adam", "lr": 3.0e-4 * (1 + 0.1 * k), "betas": [0.5, 0.999],
                                       "weight_decay": 1.0e-3}},
        "output": {"progress": False, "draw_cells": False},
    }
    r["trainer"].update(switches or {})
    return r


class Runner:
    """One implementation: ``step()`` advances it by one search step; ``members`` searches per step."""

    def __init__(self, a: argparse.Namespace, K: int | None, switches: dict[str, bool] | None = None,
                 name: str | None = None):
        from diffnas.core.population import build_population
        from diffnas.core.recipe import resolve_recipe
        from diffnas.testing import build_tiny_search, fresh_catalogue

        cat = fresh_catalogue()
        self.i = 0
        if K is None:
            self.name, self.members = name or "single", 1
            self.search = build_tiny_search(recipe(a, 0, switches), None, cat)
            self.search.prepare_steps()
            self.search._set_learning_rates(0)
            self.spe = self.search.steps_per_epoch
            self._step = lambda i: self.search._one_step(0, i)
            self._forward = lambda: self.search.forward(self.search.train_loader.batch(0, 0)[0]).sum()
        else:
            self.name, self.members = f"K={K}", K
            self.pop = build_population([(resolve_recipe(recipe(a, k, switches), cat), None, None) for k in range(K)],
                                        cat.pm, cat)
            self.pop.open(write=False)
            self.pop.start_epoch(0)
            self.spe = self.pop.active[0].steps_per_epoch
            self._step = lambda i: self.pop.one_step(0, i)

            def fwd():
                x = torch.stack([s.train_loader.batch(0, 0)[0] for s in self.pop.active])
                return self.pop.forward(x).sum()
            self._forward = fwd
        self.device = torch.device(a.device)

    def step(self) -> None:
        self._step(self.i % self.spe)
        self.i += 1

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def ops_per_member(self) -> tuple[float, float]:
        """(ops, view ops) dispatched per step, per member."""
        self.step()  # warm-up: optimiser state exists afterwards
        with OpCounter() as c:
            self.step()
        views = sum(v for k, v in c.counts.items() if k in VIEW_OPS)
        return (sum(c.counts.values()) - views) / self.members, views / self.members

    def saved_mib_per_member(self) -> float:
        from saved_memory import saved_mib  # the measure benchmarks/saved_memory.py reports

        return saved_mib(self._forward) / self.members

    def time(self, steps: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return steps / (time.perf_counter() - t0)


def graphs_unavailable(device: str) -> str | None:
    """Why ``--graphs`` is skipped on ``device`` (``None``: it is not)."""
    return None if torch.device(device).type == "cuda" else "a CUDA graph needs a CUDA device"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="1,2,4,8,16", help="population sizes K")
    p.add_argument("--space", default="nb201", choices=("nb201", "darts"))
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--N", type=int, default=1, help="nb201: cells per stage")
    p.add_argument("--layers", type=int, default=8, help="darts: cells (the DARTS search network has 8)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--order", type=int, default=1, choices=(1, 2))
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--fused", action="store_true", help="add single-fused (trainer.fused_cells) and ask populations for it")
    p.add_argument("--pop-switches", default="fused_cells",
                   help="with --fused: trainer switches asked of the populations (comma list; '' for none)")
    p.add_argument("--graphs", action="store_true",
                   help="with --fused on CUDA: add single-fused-graphs and the largest K with cuda_graphs")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    from diffnas.core.graphs import WARMUP_STEPS

    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None  # at the start: was the machine idle?
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    sizes = [int(k) for k in a.sizes.split(",") if k]
    runners = [Runner(a, None)]
    pop_switches: dict[str, bool] = {}
    pop_refused = None
    if a.fused:
        runners.append(Runner(a, None, {"fused_cells": True}, "single-fused"))
        pop_switches = {k: True for k in a.pop_switches.split(",") if k}
    for k in sizes:
        try:
            runners.append(Runner(a, k, pop_switches))
        except Exception as exc:  # noqa: BLE001 - a population path that refuses the switches: plain population
            if not pop_switches:
                raise
            pop_refused = f"{type(exc).__name__}: {str(exc).splitlines()[-1].strip()}"
            print(f"population_speed: K={k} with {sorted(pop_switches)} refused ({pop_refused}); timing the plain "
                  f"population", file=sys.stderr)
            pop_switches = {}
            runners.append(Runner(a, k))
    graphed: list[tuple[Any, Any]] = []  # (name, how to build it), built and warmed up under a guard below
    graphs_failed: dict[str, str] = {}
    graphs_skipped = None
    if a.graphs and a.fused:
        graphs_skipped = graphs_unavailable(a.device)
        if graphs_skipped:
            print(f"population_speed: --graphs skipped ({graphs_skipped})", file=sys.stderr)
        else:
            g = {**pop_switches, "fused_cells": True, "cuda_graphs": True}
            graphed = [("single-fused-graphs", lambda: Runner(a, None, g, "single-fused-graphs")),
                       (f"K={max(sizes)}+graphs", lambda: Runner(a, max(sizes), g, f"K={max(sizes)}+graphs"))]
    rows: dict[str, dict[str, Any]] = {}

    def prepare(r: Runner) -> None:
        per, views = r.ops_per_member()
        rows[r.name] = {"K": r.members, "ops_per_member": per, "view_ops_per_member": views,
                        "saved_mib_per_member": r.saved_mib_per_member(), "rates": []}
        for _ in range(max(a.warmup, WARMUP_STEPS if r.name.endswith("graphs") else 0)):  # then a step graph captures
            r.step()

    for r in runners:
        prepare(r)
    for name, build in graphed:
        try:
            r = build()
            prepare(r)
            runners.append(r)
        except Exception as exc:  # noqa: BLE001 - recorded, and the other figures still come back
            graphs_failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            rows.pop(name, None)
            print(f"population_speed: {name} failed ({graphs_failed[name]}); left out", file=sys.stderr)
    for _ in range(a.rounds):  # interleaved: single, K=1, K=2, ..., single, K=1, ...
        for r in runners:
            rows[r.name]["rates"].append(r.time(a.steps))
    base = statistics.median(rows["single"]["rates"])
    fused = statistics.median(rows["single-fused"]["rates"]) if "single-fused" in rows else None
    fused_graphs = statistics.median(rows["single-fused-graphs"]["rates"]) if "single-fused-graphs" in rows else None
    print(f"population_speed: device {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{f'NB201 C={a.C} N={a.N}' if a.space == 'nb201' else f'DARTS C={a.C} layers={a.layers}'}, batch {a.batch}, "
          f"{a.image_size}x{a.image_size}, DARTS-V{a.order}; {a.rounds} interleaved rounds of {a.steps} steps")
    print(f"{'impl':<12} {'ops/step/member':>16} {'+ view ops':>11} {'saved MiB/member':>17} {'steps/s per member (min-max)':>30} "
          f"{'member steps/s':>15} {'vs single':>10} {'vs fused':>9} {'vs graphs':>10}")
    for name, row in rows.items():
        rates = row["rates"]
        med = statistics.median(rates)
        row.update(steps_per_s_median=med, steps_per_s_min=min(rates), steps_per_s_max=max(rates),
                   aggregate_median=med * row["K"], ratio_vs_single=med * row["K"] / base,
                   ratio_vs_fused=(med * row["K"] / fused) if fused else None,
                   ratio_vs_fused_graphs=(med * row["K"] / fused_graphs) if fused_graphs else None)
        print(f"{name:<12} {row['ops_per_member']:>16.0f} {row['view_ops_per_member']:>11.0f} {row['saved_mib_per_member']:>17.2f} "
              f"{med:>10.2f} ({min(rates):.2f}-{max(rates):.2f}){'':>6} {med * row['K']:>15.2f} {row['ratio_vs_single']:>9.2f}x "
              f"{'-' if fused is None else format(row['ratio_vs_fused'], '.2f') + 'x':>9} "
              f"{'-' if fused_graphs is None else format(row['ratio_vs_fused_graphs'], '.2f') + 'x':>10}")
    for r in runners:
        if hasattr(r, "pop"):
            r.pop.close()
    out = {"device": a.device, "settings": vars(a), "rows": rows, "threads": torch.get_num_threads(),
           "torch": torch.__version__,
           "loadavg": load, "pop_switches": sorted(pop_switches), "pop_refused": pop_refused,
           "graphs_failed": graphs_failed, "graphs_skipped": graphs_skipped}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
