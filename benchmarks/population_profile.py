"""Where a population step's time goes on the CPU, against K separate runs: the wall time of every
ATen op (timed at the dispatcher) in ``--steps`` population steps of K members and in K times as
many steps of one single run (the same composition and fast paths), and the minor page faults of
each (memory the kernel maps and zeroes afresh).

The table lists the ops with the largest difference (population minus K single steps), in ms per
population step. Where both sides spend alike, the step is compute-bound (the grouped convolutions
do the members' work, no less); where the population spends more, that op is overhead: layout copies
from vmap's batching rules (``aten::clone``), batch norm over the K·C merged channels, and, with
glibc's default allocator, page faults: tensors K times larger than a single run's cross malloc's
mmap threshold (at most 32 MiB), so every such allocation is mapped and zeroed afresh
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` in the environment keeps them in the heap).
On a GPU the same step reads kernel launches rather than arithmetic: see ``population_speed.py``'s
ops per member.

    python benchmarks/population_profile.py --threads 1               # NB201 C=16 N=1, batch 64, K=4, fused
    python benchmarks/population_profile.py --N 5 --K 8 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sys
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpTimer(TorchDispatchMode):
    """Wall time and calls per ATen op, timed where the op reaches the dispatcher (ops an op runs
    inside its kernel are part of its time): a partition of the step's op time. torch.profiler's
    self-CPU attribution was tried first and misled here (it gave bmm 4x its measured time)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        e = self.ops["aten::" + func.overloadpacket.__name__]
        e[0] += time.perf_counter() - t0
        e[1] += 1
        return out


def profile_steps(step: Any, steps: int) -> dict[str, tuple[float, int]]:
    """``{op: (seconds, calls)}`` over ``steps`` calls of ``step()``."""
    with OpTimer() as t:
        for _ in range(steps):
            step()
    return {k: (v[0], int(v[1])) for k, v in t.ops.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="nb201", choices=("nb201", "darts"))
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=1)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--order", type=int, default=1, choices=(1, 2))
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="profiled population steps (and K times as many single steps)")
    p.add_argument("--switches", default="fused_cells", help="trainer switches on both sides (comma list; '' for none)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from population_speed import Runner

    a.device = "cpu"
    switches = {k: True for k in a.switches.split(",") if k}
    single, pop = Runner(a, None, switches), Runner(a, a.K, switches)
    for r in (single, pop):  # optimiser state, allocator
        r.step()
        r.step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    prof_single = profile_steps(single.step, a.K * a.steps)
    wall_single = (time.perf_counter() - t0) / a.steps
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    prof_pop = profile_steps(pop.step, a.steps)
    wall_pop = (time.perf_counter() - t0) / a.steps - wall_single
    faults = {"single": (f1 - f0) / a.steps, "population": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f1) / a.steps}
    pop.pop.close()
    tot_s = sum(t for t, _ in prof_single.values()) / a.steps
    tot_p = sum(t for t, _ in prof_pop.values()) / a.steps
    rows = []
    for k in set(prof_single) | set(prof_pop):
        ts, cs = prof_single.get(k, (0.0, 0))
        tp, cp = prof_pop.get(k, (0.0, 0))
        rows.append({"op": k, "single_ms": 1e3 * ts / a.steps, "single_calls": cs / a.steps,
                     "pop_ms": 1e3 * tp / a.steps, "pop_calls": cp / a.steps})
    rows.sort(key=lambda r: -abs(r["pop_ms"] - r["single_ms"]))
    shape = f"NB201 C={a.C} N={a.N}" if a.space == "nb201" else f"DARTS C={a.C} layers={a.layers}"
    print(f"population_profile: CPU, torch {torch.__version__}, threads {torch.get_num_threads()}; {shape}, batch {a.batch}, "
          f"{a.image_size}x{a.image_size}, DARTS-V{a.order}, switches {sorted(switches) or 'none'}; K={a.K}; "
          f"ms per population step against {a.K} single steps ({a.steps} population steps timed)")
    print(f"{'op':<36} {'K single steps':>15} {'calls':>7} {'population':>11} {'calls':>7} {'pop - single':>13}")
    for r in rows[: a.top]:
        print(f"{r['op']:<36} {r['single_ms']:>15.1f} {r['single_calls']:>7.0f} {r['pop_ms']:>11.1f} {r['pop_calls']:>7.0f} "
              f"{r['pop_ms'] - r['single_ms']:>+13.1f}")
    print(f"{'all ATen ops':<36} {1e3 * tot_s:>15.1f} {'':>7} {1e3 * tot_p:>11.1f} {'':>7} {1e3 * (tot_p - tot_s):>+13.1f}")
    print(f"{'wall (ops + Python)':<36} {1e3 * wall_single:>15.1f} {'':>7} {1e3 * wall_pop:>11.1f} {'':>7} "
          f"{1e3 * (wall_pop - wall_single):>+13.1f}")
    print(f"minor page faults per population step: population {faults['population']:.0f} "
          f"({faults['population'] * 4096 / 2**20:.0f} MiB mapped afresh), {a.K} single steps {faults['single']:.0f}")
    out = {"settings": vars(a), "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
           "single_ops_ms": 1e3 * tot_s, "pop_ops_ms": 1e3 * tot_p, "single_wall_ms": 1e3 * wall_single,
           "pop_wall_ms": 1e3 * wall_pop, "minor_faults_per_step": faults}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
