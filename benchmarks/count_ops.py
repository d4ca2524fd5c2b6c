"""Count the ATen ops dispatched by one search step: a device-independent proxy for kernel launches.

For the reference (xautodl ``TinyNetworkDarts`` on NB201, ``NASNetworkDARTS`` on the DARTS space,
AutoDL's first-order DARTS step), the plain diffnas step and the fused diffnas step
(``trainer.fused_cells: true``) on the same supernet, this runs one warm-up step (optimiser state
created), then counts every op that reaches the ATen dispatcher during one more step (forward,
backward and optimiser updates) with a ``TorchDispatchMode``. Views (``view``, ``transpose``,
``permute``, ...) launch no kernel on a GPU; they are counted separately. Ops a kernel calls
internally (e.g. a ``contiguous`` copy inside a convolution) do not reach the mode and are not counted.

    python benchmarks/count_ops.py                 # NB201: batch 64, C=16, N=5, 32x32
    python benchmarks/count_ops.py --space darts   # DARTS space: batch 64, C=16, 8 cells, 32x32
    python benchmarks/count_ops.py --top 15        # and the most frequent ops of each

DARTS space: xautodl's ``NASNetworkDARTS`` builds 3N cells (``--darts-N 3``: 9 cells, 7 normal + 2
reduction) where diffnas builds ``--layers`` (8: 6 normal + 2 reduction), so the reference row has one
normal cell more.
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
    """Counts every dispatched op (``counts``) and, separately, those dispatched inside an
    ``Optimizer.step`` (``optimizer_counts``: on the CPU SGD and Adam loop over the parameters, one
    op per update term and parameter; on CUDA they default to multi-tensor ``_foreach`` kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.optimizer_counts: collections.Counter[str] = collections.Counter()
        self._in_optimizer = 0

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        def pre(*_):
            self._in_optimizer += 1

        def post(*_):
            self._in_optimizer -= 1

        self._hooks = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        if self._in_optimizer:
            self.optimizer_counts[name] += 1
        return func(*args, **(kwargs or {}))


def count(step, batches, with_optimizer: bool = False):
    """The op counts of one step after a warm-up step (and, ``with_optimizer``, those inside optimiser steps)."""
    step(batches[0], batches[1 % len(batches)])  # warm-up: optimiser state exists afterwards
    with OpCounter() as c:
        step(batches[1 % len(batches)], batches[0])
    return (c.counts, c.optimizer_counts) if with_optimizer else c.counts


def split_counts(counts: collections.Counter) -> tuple[int, int]:
    views = sum(v for k, v in counts.items() if k in VIEW_OPS)
    return sum(counts.values()) - views, views


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", choices=("nb201", "darts"), default="nb201", help="the supernet (default nb201)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--C", type=int, default=16, help="channels (NB201: C; DARTS: C of the first cells)")
    p.add_argument("--N", type=int, default=5, help="NB201: cells per stage")
    p.add_argument("--layers", type=int, default=8, help="DARTS space: diffnas cells")
    p.add_argument("--darts-N", type=int, default=3, help="DARTS space: xautodl NASNetworkDARTS N (3N cells)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--top", type=int, default=0, help="also print the N most frequent ops of each")
    a = p.parse_args(argv)
    ns = argparse.Namespace(batch=a.batch, C=a.C, N=a.N, image_size=a.image_size, num_classes=a.num_classes,
                            channels_last=False, autocast="off", darts_C=a.C, darts_N=a.darts_N, darts_layers=a.layers)
    device = torch.device(a.device)
    rows = {}
    if search_speed.reference_available():
        _, step = search_speed.build_reference(a.space, "darts", ns, device)
        rows["reference (xautodl)"] = count(step, search_speed.reference_batches(ns, device, 2), with_optimizer=True)
    else:
        print("xautodl is not installed (pip install xautodl): the reference is skipped", file=sys.stderr)
    for name, fused in (("diffnas plain", False), ("diffnas fused", True)):
        _, step = search_speed.build_diffnas(a.space, "darts", {"fused_cells": fused}, ns, device)
        rows[name] = count(step, [None], with_optimizer=True)
    base = rows.get("reference (xautodl)")
    base_ops = split_counts(base[0])[0] if base is not None else None
    if a.space == "nb201":
        shape = f"NB201, C={a.C}, N={a.N}"
    else:
        shape = f"DARTS space, C={a.C}, diffnas {a.layers} cells, xautodl N={a.darts_N} ({3 * a.darts_N} cells)"
    print(f"ATen ops per DARTS-V1 search step ({shape}, batch {a.batch}, {a.image_size}x{a.image_size}, "
          f"device {a.device}, torch {torch.__version__})")
    print(f"{'implementation':22s} {'ops':>7s} {'views':>7s} {'vs reference':>13s} {'in optimiser steps':>19s}")
    out = {}
    for name, (c, oc) in rows.items():
        ops, views = split_counts(c)
        opt_ops = split_counts(oc)[0]
        ratio = f"{base_ops / ops:12.2f}x" if base_ops else "-"
        print(f"{name:22s} {ops:7d} {views:7d} {ratio:>13s} {opt_ops:19d}")
        out[name] = {"ops": ops, "views": views, "optimizer_ops": opt_ops, "by_op": dict(c)}
        if a.top:
            print("   " + ", ".join(f"{k} {v}" for k, v in c.most_common(a.top)))
    return out


if __name__ == "__main__":
    os.environ.setdefault("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    main()
