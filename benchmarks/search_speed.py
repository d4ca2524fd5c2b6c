"""Search-step throughput: the reference (xautodl) and diffnas side by side, same device, same run.

Each configuration builds its supernet, runs ``--warmup`` steps, then times ``--steps`` steps (the
device is synchronised before and after the timed loop only) and reports steps/s, train images/s
(batch size × steps/s) and peak device memory (CUDA only; ``torch.cuda.max_memory_allocated``, reset
per configuration). Ratios are diffnas ÷ reference for the same supernet and method.

Reference (``pip install xautodl``; optional benchmark dependency): AutoDL's
``TinyNetworkDarts`` / ``TinyNetworkGDAS`` (NB201) and ``NASNetworkDARTS`` (DARTS space) with the
AutoDL first-order bi-level step: SGD (lr 0.025, momentum 0.9, nesterov, wd 5e-4) on a train batch
with the gradient norm clipped to 5, then Adam (lr 3e-4, betas (0.5, 0.999), wd 1e-3) on a valid
batch. Batches are pre-made device tensors (no data pipeline on the reference's side).

diffnas: the engine's own step (``Search._one_step``: device-resident data with augmentation done on
the device, the update rule, the finite check and the metric accumulation), so its figure includes
the data work the reference is spared.

Examples::

    python benchmarks/search_speed.py --device cuda --out result.json
    python benchmarks/search_speed.py --device cpu --steps 3 --configs nb201-darts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import torch

CONFIGS = {
    # name: (space, method); darts = first-order bi-level, darts2 = second order, single = single-level
    "nb201-darts": ("nb201", "darts"),
    "nb201-darts2": ("nb201", "darts2"),
    "nb201-single": ("nb201", "single"),
    "nb201-gdas": ("nb201", "gdas"),
    "darts-darts": ("darts", "darts"),
}
# diffnas switches per implementation: fused = trainer.fused_cells, graphs = trainer.cuda_graphs
IMPLS = ("reference", "diffnas", "diffnas-fused", "diffnas-graphs", "diffnas-fused-graphs")


# --------------------------------------------------------------------------- reference (xautodl)


def reference_available() -> bool:
    try:
        import xautodl  # noqa: F401
    except ImportError:
        return False
    return True


def build_reference(space: str, method: str, a: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    """The xautodl supernet and a one-step closure (AutoDL's ``search_func``, without per-step ``.item()``)."""
    if space == "nb201":
        from xautodl.models.cell_operations import SearchSpaceNames
        from xautodl.models.cell_searchs import TinyNetworkDarts, TinyNetworkGDAS

        cls = TinyNetworkGDAS if method == "gdas" else TinyNetworkDarts
        net = cls(a.C, a.N, 4, a.num_classes, SearchSpaceNames["nas-bench-201"], False, False)
        if method == "gdas":
            net.set_tau(10.0)
    else:
        from xautodl.models.cell_operations import SearchSpaceNames
        from xautodl.models.cell_searchs import NASNetworkDARTS

        if method == "gdas":
            raise ValueError("DARTS space: GDAS is benchmarked on NB201 only")
        net = NASNetworkDARTS(a.darts_C, a.darts_N, 4, 4, 3, a.num_classes, SearchSpaceNames["darts"], False, False)
    net = net.to(device)
    if a.channels_last:
        net = net.to(memory_format=torch.channels_last)
    w_opt = torch.optim.SGD(net.get_weights(), lr=0.025, momentum=0.9, weight_decay=5e-4, nesterov=True)
    a_opt = torch.optim.Adam(net.get_alphas(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    crit = torch.nn.CrossEntropyLoss()
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.autocast]

    def fwd(x):
        if dtype is None:
            return net(x)[1]
        with torch.autocast(device.type, dtype=dtype):
            return net(x)[1].float()

    weights, alphas = list(net.get_weights()), list(net.get_alphas())

    def weight_step(bx, by):
        """AutoDL's weight step: SGD on the train batch, gradient norm clipped to 5."""
        w_opt.zero_grad()
        loss = crit(fwd(bx), by)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5)
        w_opt.step()
        return loss.detach()

    def first_order(train, valid):
        (bx, by), (vx, vy) = train, valid
        loss = weight_step(bx, by)
        a_opt.zero_grad()
        aloss = crit(fwd(vx), vy)
        aloss.backward()
        a_opt.step()
        return loss, aloss.detach()

    def second_order(train, valid):
        """AutoDL's DARTS-V2 arithmetic (``backward_step_unrolled``): w' = w − ξ(μ·m + ∇L_tr + λw),
        g_α = ∇_α L_val(w') − ξ·finite-difference Hessian-vector product with R = 0.01/‖v‖; the unrolled
        weights are written in place rather than into a copied network (cheaper for the reference)."""
        (bx, by), (vx, vy) = train, valid
        xi = w_opt.param_groups[0]["lr"]
        backup = [w.detach().clone() for w in weights]
        grads = torch.autograd.grad(crit(fwd(bx), by), weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, grads):
                buf = w_opt.state.get(w, {}).get("momentum_buffer")
                d = (torch.zeros_like(w) if g is None else g) + 5e-4 * w
                w.sub_(xi * (d if buf is None else d + 0.9 * buf))
        aloss = crit(fwd(vx), vy)
        g = torch.autograd.grad(aloss, alphas + weights, allow_unused=True)
        dalpha = g[: len(alphas)]
        v = [torch.zeros_like(w) if x is None else x for x, w in zip(g[len(alphas):], weights)]
        r = 0.01 / torch.cat([x.reshape(-1) for x in v]).norm()
        hv = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, b, x in zip(weights, backup, v):
                    w.copy_(b + sign * r * x)
            hv.append(torch.autograd.grad(crit(fwd(bx), by), alphas))
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        a_opt.zero_grad()
        for a_, da, gp, gm in zip(alphas, dalpha, *hv):
            a_.grad = da - xi * (gp - gm) / (2 * r)
        a_opt.step()
        return weight_step(bx, by), aloss.detach()

    def single_level(train, valid):
        """Single-DARTS: one forward/backward on the train batch, then both optimisers step."""
        bx, by = train
        w_opt.zero_grad()
        a_opt.zero_grad()
        loss = crit(fwd(bx), by)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.get_weights(), 5)
        w_opt.step()
        a_opt.step()
        return loss.detach(), loss.detach()

    return net, {"darts2": second_order, "single": single_level}.get(method, first_order)


def reference_batches(a: argparse.Namespace, device: torch.device, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(a.batch, 3, a.image_size, a.image_size, generator=g).to(device)
        if a.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x, torch.randint(0, a.num_classes, (a.batch,), generator=g).to(device)))
    return out


# --------------------------------------------------------------------------- diffnas


def diffnas_recipe(space: str, method: str, switches: dict[str, bool], a: argparse.Namespace,
                   device: torch.device) -> dict[str, Any]:
    if space == "nb201":
        ss = {"name": "nb201", "params": {"C": a.C, "N": a.N}}
    else:
        ss = {"name": "darts", "params": {"C": a.darts_C, "layers": a.darts_layers}}
    relax = {"name": "gumbel_softmax", "params": {"tau": 10.0}} if method == "gdas" else {"name": "softmax"}
    trainer = {"epochs": 1, "batch_size": a.batch, "seed": 0, "device": str(device), "grad_clip": 5.0,
               "channels_last": a.channels_last, "autocast": a.autocast}
    trainer.update(switches)
    rule = {"darts2": {"name": "bilevel", "params": {"order": 2}}, "single": {"name": "single_level"}}.get(
        method, {"name": "bilevel", "params": {"order": 1}})
    return {
        "version": 1, "search_space": ss, "relaxation": relax, "update_rule": rule,
        "discretiser": {"name": "argmax_per_edge"},
        "data": {"dataset": "synthetic", "params": {"num_train": 4 * a.batch, "num_test": a.batch,
                                                     "image_size": a.image_size, "num_classes": a.num_classes}},
        "trainer": trainer, "output": {"progress": False, "draw_cells": False},
    }


def impl_switches(impl: str) -> dict[str, bool]:
    """The trainer switches an implementation name stands for (``diffnas-fused-graphs`` ...)."""
    parts = impl.split("-")[1:]
    return {"fused_cells": "fused" in parts, "cuda_graphs": "graphs" in parts}


def build_diffnas(space: str, method: str, switches: dict[str, bool], a: argparse.Namespace, device: torch.device):
    from diffnas.testing import build_tiny_search

    s = build_tiny_search(diffnas_recipe(space, method, switches, a, device))
    s.prepare_steps()  # what Search.run does before its first step (the step graph, when switched on)
    state = {"i": 0}

    def step(*_):
        i = state["i"]
        s._one_step(0, i % s.steps_per_epoch)
        state["i"] = i + 1

    return s, step


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable, batches: list, device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    for i in range(warmup):
        step(batches[i % len(batches)], batches[(i + 1) % len(batches)])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)], batches[(i + 1) % len(batches)])
    _sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds": dt, "steps_per_s": steps / dt, "ms_per_step": 1000 * dt / steps, "peak_mem_gib": peak}


def run_one(config: str, impl: str, a: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    space, method = CONFIGS[config]
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if impl == "reference":
        _, step = build_reference(space, method, a, device)
        batches = reference_batches(a, device)
    else:
        _, step = build_diffnas(space, method, impl_switches(impl), a, device)
        batches = [None]
    r = time_steps(step, batches, device, a.warmup, a.steps)
    r["images_per_s"] = r["steps_per_s"] * a.batch
    return {"config": config, "impl": impl, **r}


def environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "platform": platform.platform(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                env["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    try:
        import xautodl  # noqa: F401
        from importlib.metadata import version

        env["xautodl"] = version("xautodl")
    except Exception:  # noqa: BLE001
        env["xautodl"] = None
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cpu")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {', '.join(IMPLS)}")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=5)
    p.add_argument("--darts-C", type=int, default=16)
    p.add_argument("--darts-layers", type=int, default=8, help="diffnas DARTS space: cells")
    p.add_argument("--darts-N", type=int, default=3, help="xautodl NASNetworkDARTS N (3N cells: 3 → 9)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--channels-last", action="store_true", help="trainer.channels_last for both implementations")
    p.add_argument("--autocast", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    configs = [c for c in a.configs.split(",") if c]
    impls = [i for i in a.impls.split(",") if i]
    for c in configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}; known: {', '.join(CONFIGS)}")
    for i in impls:
        if i not in IMPLS:
            p.error(f"unknown impl {i!r}; known: {', '.join(IMPLS)}")
    if "reference" in impls and not reference_available():
        print("xautodl is not installed (pip install xautodl): the reference is skipped", file=sys.stderr)
        impls = [i for i in impls if i != "reference"]
    results, skipped = [], []
    for c in configs:
        for impl in impls:
            sw = impl_switches(impl) if impl != "reference" else {}
            if (sw.get("fused_cells") or sw.get("cuda_graphs")) and CONFIGS[c][1] == "gdas":
                skipped.append({"config": c, "impl": impl, "reason": "fused cells and CUDA graphs refuse GDAS's active mask"})
                continue
            if sw.get("cuda_graphs") and device.type != "cuda":
                skipped.append({"config": c, "impl": impl, "reason": "CUDA graphs need a CUDA device"})
                continue
            try:
                r = run_one(c, impl, a, device)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other configurations
                skipped.append({"config": c, "impl": impl, "reason": f"{type(exc).__name__}: {exc}"})
                print(f"{c:12s} {impl:20s} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            results.append(r)
            mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f} GiB"
            print(f"{c:12s} {impl:20s} {r['steps_per_s']:8.2f} steps/s {r['images_per_s']:9.1f} img/s "
                  f"{r['ms_per_step']:9.1f} ms/step  peak {mem}", flush=True)
    ratios = []
    for c in configs:
        ref = next((r for r in results if r["config"] == c and r["impl"] == "reference"), None)
        for r in results:
            if ref is not None and r["config"] == c and r["impl"] != "reference":
                ratios.append({"config": c, "impl": r["impl"], "speedup": r["steps_per_s"] / ref["steps_per_s"],
                               "memory_ratio": (r["peak_mem_gib"] / ref["peak_mem_gib"]) if ref["peak_mem_gib"] else None})
                print(f"{c:12s} {r['impl']:20s} {ratios[-1]['speedup']:6.2f}x reference")
    out = {"environment": environment(device), "settings": {k: v for k, v in vars(a).items() if k != "out"},
           "results": results, "ratios": ratios, "skipped": skipped}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    os.environ.setdefault("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    main()
