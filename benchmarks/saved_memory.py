"""Activation memory of one supernet forward: the bytes autograd saves for the backward pass.

A device-independent proxy for the peak-memory part of issue 4's goal ("peak memory no higher than
the reference's"): on a GPU the activations saved for backward dominate a search step's peak. Each
implementation (the xautodl reference, diffnas plain, diffnas with ``trainer.fused_cells``) runs one
forward on a batch of synthetic CIFAR-shaped images in its own subprocess (so one's memory never
counts against another's), under ``torch.autograd.graph.saved_tensors_hooks`` that add up the
distinct storages saved. The same shapes as ``search_speed.py``.

    python benchmarks/saved_memory.py --space nb201
    python benchmarks/saved_memory.py --space darts
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

IMPLS = ("reference", "diffnas", "diffnas-fused")


def saved_mib(fn) -> float:
    """MiB of distinct tensor storages autograd saves while ``fn()`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def measure(space: str, impl: str, a: argparse.Namespace) -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    import search_speed as ss

    ns = argparse.Namespace(C=a.C, N=a.N, darts_C=a.C, darts_layers=a.layers, darts_running_stats=True, batch=a.batch,
                            image_size=32, num_classes=10, channels_last=False, autocast="off")
    dev = torch.device("cpu")
    if impl == "reference":
        net, _ = ss.build_reference(space, "darts", ns, dev)
        x = torch.randn(a.batch, 3, 32, 32)
        return saved_mib(lambda: net(x)[1].sum())
    s, _ = ss.build_diffnas(space, "darts", {"fused_cells": impl == "diffnas-fused"}, ns, dev)
    x, _ = s.train_loader.batch(0, 0)
    return saved_mib(lambda: s.forward(x).sum())


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", choices=("nb201", "darts"), default="nb201")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=5, help="NB201 cells per stage")
    p.add_argument("--layers", type=int, default=8, help="DARTS space: cells, on both sides")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one implementation here and print its figure
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps({a.one: measure(a.space, a.one, a)}))
        return {}
    out: dict[str, float] = {}
    forwarded = ["--space", a.space, "--batch", str(a.batch), "--C", str(a.C), "--N", str(a.N),
                 "--layers", str(a.layers)]
    for impl in [i for i in a.impls.split(",") if i]:
        if impl == "reference":
            try:
                import xautodl  # noqa: F401
            except ImportError:
                print("xautodl is not installed: the reference is skipped", file=sys.stderr)
                continue
        env = {**os.environ, "DIFFNAS_DISABLE_PLUGIN_AUTOLOAD": "1"}
        res = subprocess.run([sys.executable, __file__, *forwarded, "--one", impl], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"{impl}: failed ({res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode})",
                  file=sys.stderr)
            continue
        out.update(json.loads(res.stdout.strip().splitlines()[-1]))
    ref = out.get("reference")
    print(f"activation memory saved for backward, one forward ({a.space}, batch {a.batch}, C={a.C}, fp32)")
    for impl, mib in out.items():
        ratio = f"{mib / ref:.2f}x reference" if ref else ""
        print(f"{impl:15s} {mib:9.1f} MiB  {ratio}")
    return out


if __name__ == "__main__":
    main()
