"""Count the ATen ops dispatched by one search step: a device-independent proxy for kernel launches.

For the reference (xautodl ``TinyNetworkDarts`` on NB201, ``NASNetworkDARTS`` cells on the DARTS
space, laid out as diffnas's ``--layers`` cells; AutoDL's first-order DARTS step), the plain diffnas
step and the fused diffnas step (``trainer.fused_cells: true``) on the same supernet, this runs one
warm-up step (optimiser state created), then counts every op that reaches the ATen dispatcher during
one more step (forward, backward and optimiser updates) with a ``TorchDispatchMode``. Views
(``view``, ``transpose``, ``permute``, ...) launch no kernel on a GPU; they are counted separately.
Ops a kernel calls internally (e.g. a ``contiguous`` copy inside a convolution) do not reach the
mode and are not counted.

The reference is also counted without each piece of work that has no effect on its result
(``search_speed.strip_waste``): ``-bias`` (conv biases cancelled by the following BN), ``-none``
(the ``none`` op's zero terms), ``-backward`` (gradients only for what each optimiser steps), and
``lean`` (all three): the part of each diffnas ratio that comes from skipping that work.

``--data`` also counts the diffnas step's data pipeline alone (the train and valid batches: gather,
crop, flip, normalise), the part that stays outside a CUDA graph, plus the copies into the graph's
static inputs (one per batch tensor).

    python benchmarks/count_ops.py                 # NB201: batch 64, C=16, N=5, 32x32
    python benchmarks/count_ops.py --space darts   # DARTS space: batch 64, C=16, 8 cells, 32x32
    python benchmarks/count_ops.py --top 15 --data # and the most frequent ops of each, and the data share
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


REFERENCE_ROWS = {"reference (xautodl)": set(), "reference -bias": {"bias"}, "reference -none": {"none"},
                  "reference -backward": {"backward"}, "reference lean": set(search_speed.WASTE)}


def count_data(search) -> int:
    """Non-view ops of one step's batches (train and valid) plus one copy per batch tensor (what the
    step graph copies into its static inputs)."""
    with OpCounter() as c:
        batches = [search.train_loader.batch(0, 1)]
        if search.valid_loader is not None:
            batches.append(search.valid_loader.batch(0, 1))
    return split_counts(c.counts)[0] + sum(len(b) for b in batches)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", choices=("nb201", "darts"), default="nb201", help="the supernet (default nb201)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--C", type=int, default=16, help="channels (NB201: C; DARTS: C of the first cells)")
    p.add_argument("--N", type=int, default=5, help="NB201: cells per stage")
    p.add_argument("--layers", type=int, default=8, help="DARTS space: cells, on both sides")
    p.add_argument("--no-running-stats", dest="running_stats", action="store_false",
                   help="DARTS space: cells' BNs without running statistics (default: with, on both sides)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--top", type=int, default=0, help="also print the N most frequent ops of each")
    p.add_argument("--data", action="store_true", help="also count the diffnas step's data pipeline alone")
    a = p.parse_args(argv)
    ns = argparse.Namespace(batch=a.batch, C=a.C, N=a.N, image_size=a.image_size, num_classes=a.num_classes,
                            channels_last=False, autocast="off", darts_C=a.C, darts_layers=a.layers,
                            darts_running_stats=a.running_stats)
    device = torch.device(a.device)
    rows = {}
    if search_speed.reference_available():
        for name, waste in REFERENCE_ROWS.items():
            _, step = search_speed.build_reference(a.space, "darts", ns, device, waste)
            rows[name] = count(step, search_speed.reference_batches(ns, device, 2), with_optimizer=True)
    else:
        print("xautodl is not installed (pip install --no-deps xautodl): the reference is skipped", file=sys.stderr)
    data_ops = {}
    for name, fused in (("diffnas plain", False), ("diffnas fused", True)):
        s, step = search_speed.build_diffnas(a.space, "darts", {"fused_cells": fused}, ns, device)
        rows[name] = count(step, [None], with_optimizer=True)
        if a.data:
            data_ops[name] = count_data(s)
    base = rows.get("reference (xautodl)")
    base_ops = split_counts(base[0])[0] if base is not None else None
    if a.space == "nb201":
        shape = f"NB201, C={a.C}, N={a.N}"
    else:
        shape = f"DARTS space, C={a.C}, {a.layers} cells on both sides, running stats {'on' if a.running_stats else 'off'}"
    print(f"ATen ops per DARTS-V1 search step ({shape}, batch {a.batch}, {a.image_size}x{a.image_size}, "
          f"device {a.device}, torch {torch.__version__})")
    print(f"{'implementation':22s} {'ops':>7s} {'views':>7s} {'reference / this':>17s} {'in optimiser steps':>19s}")
    out = {}
    for name, (c, oc) in rows.items():
        ops, views = split_counts(c)
        opt_ops = split_counts(oc)[0]
        ratio = f"{base_ops / ops:16.2f}x" if base_ops else "-"
        print(f"{name:22s} {ops:7d} {views:7d} {ratio:>17s} {opt_ops:19d}")
        out[name] = {"ops": ops, "views": views, "optimizer_ops": opt_ops, "by_op": dict(c)}
        if name in data_ops:
            out[name]["data_ops"] = data_ops[name]
            print(f"{'':22s} of which data pipeline (outside a CUDA graph): {data_ops[name]} "
                  f"({100.0 * data_ops[name] / ops:.1f}%)")
        if a.top:
            print("   " + ", ".join(f"{k} {v}" for k, v in c.most_common(a.top)))
    return out


if __name__ == "__main__":
    os.environ.setdefault("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    main()
