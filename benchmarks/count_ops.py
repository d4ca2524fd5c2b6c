"""Count the ATen ops dispatched by one search step: a device-independent proxy for kernel launches.

For the reference (xautodl ``TinyNetworkDarts``, AutoDL's first-order DARTS step), the plain diffnas
step and the fused diffnas step (``trainer.fused_cells: true``) on the same NB201 supernet, this runs
one warm-up step (optimiser state created), then counts every op that reaches the ATen dispatcher
during one more step (forward, backward and optimiser updates) with a ``TorchDispatchMode``. Views
(``view``, ``transpose``, ``permute``, ...) launch no kernel on a GPU; they are counted separately.

    python benchmarks/count_ops.py              # batch 64, C=16, N=5, 32x32 (the NB201 supernet)
    python benchmarks/count_ops.py --top 15     # and the most frequent ops of each
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_speed  # noqa: E402

VIEW_OPS = {"view", "_unsafe_view", "reshape", "transpose", "permute", "t", "expand", "as_strided", "unsqueeze",
            "squeeze", "select", "slice", "alias", "detach", "unbind", "split", "split_with_sizes", "chunk",
            "flatten", "unflatten", "narrow", "_reshape_alias", "lift_fresh", "numpy_T", "diagonal"}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count(step, batches) -> collections.Counter:
    step(batches[0], batches[1 % len(batches)])  # warm-up: optimiser state exists afterwards
    with OpCounter() as c:
        step(batches[1 % len(batches)], batches[0])
    return c.counts


def split_counts(counts: collections.Counter) -> tuple[int, int]:
    views = sum(v for k, v in counts.items() if k in VIEW_OPS)
    return sum(counts.values()) - views, views


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=5)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--top", type=int, default=0, help="also print the N most frequent ops of each")
    a = p.parse_args(argv)
    ns = argparse.Namespace(batch=a.batch, C=a.C, N=a.N, image_size=a.image_size, num_classes=a.num_classes,
                            channels_last=False, autocast="off", darts_C=16, darts_N=3, darts_layers=8)
    device = torch.device(a.device)
    rows = {}
    if search_speed.reference_available():
        _, step = search_speed.build_reference("nb201", "darts", ns, device)
        rows["reference (xautodl)"] = count(step, search_speed.reference_batches(ns, device, 2))
    else:
        print("xautodl is not installed (pip install xautodl): the reference is skipped", file=sys.stderr)
    for name, fused in (("diffnas plain", False), ("diffnas fused", True)):
        _, step = search_speed.build_diffnas("nb201", "darts", {"fused_cells": fused}, ns, device)
        rows[name] = count(step, [None])
    base = rows.get("reference (xautodl)")
    base_ops = split_counts(base)[0] if base is not None else None
    print(f"ATen ops per NB201 DARTS-V1 search step (batch {a.batch}, C={a.C}, N={a.N}, {a.image_size}x{a.image_size}, "
          f"device {a.device}, torch {torch.__version__})")
    print(f"{'implementation':22s} {'ops':>7s} {'views':>7s} {'vs reference':>13s}")
    out = {}
    for name, c in rows.items():
        ops, views = split_counts(c)
        ratio = f"{base_ops / ops:12.2f}x" if base_ops else "-"
        print(f"{name:22s} {ops:7d} {views:7d} {ratio:>13s}")
        out[name] = {"ops": ops, "views": views, "by_op": dict(c)}
        if a.top:
            print("   " + ", ".join(f"{k} {v}" for k, v in c.most_common(a.top)))
    return out


if __name__ == "__main__":
    os.environ.setdefault("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    main()
