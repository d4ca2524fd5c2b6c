"""Search-step throughput: the reference (xautodl) and diffnas side by side, same device, same run.

Every implementation of a configuration is built first; then they are timed **interleaved**: round
after round, each runs ``--steps`` steps in turn (A, B, C, A, B, C, ...; the device is synchronised
before and after each block), after ``--warmup`` untimed steps each. Each round gives steps/s per
implementation and, for each, the ratio to the reference *in that round* (drift of a shared machine
hits both sides of a ratio alike). Reported: the median over ``--rounds`` rounds with the min–max
spread, train images/s (batch × steps/s) and, on CUDA, peak device memory during the implementation's
blocks (``torch.cuda.max_memory_allocated``; it includes the other implementations' resident weights,
a few MiB at these sizes).

Reference (``pip install --no-deps xautodl``; optional benchmark dependency): AutoDL's
``TinyNetworkDarts`` / ``TinyNetworkGDAS`` (NB201) and ``NASNetworkDARTS`` cells (DARTS space, laid
out as diffnas's ``--darts-layers`` cells: the same cell count and reduction positions) with the
AutoDL first-order bi-level step: SGD (lr 0.025, momentum 0.9, nesterov, wd 5e-4) on a train batch
with the gradient norm clipped to 5, then Adam (lr 3e-4, betas (0.5, 0.999), wd 1e-3) on a valid
batch. Batches are pre-made device tensors (no data pipeline on the reference's side).

``reference-lean`` is the same reference without the work that has no effect on its result
(first-order step only): conv biases directly followed by a batch norm without affine parameters
(xautodl builds cell convs with ``bias=not affine``; the BN subtracts them again), the ``none`` op
computed as ``x·0`` and multiplied by its weight, and the full backward (``loss.backward()``
fills the α gradients in the weight step and the weight gradients in the α step; the lean step asks
autograd for the gradients it uses only). One effect goes with the last: AutoDL clips the norm of
``net.parameters()``, α included, so the weight step's α gradients enter its clipping norm; the
lean step (like DARTS and diffnas) clips the weights' gradients alone. reference ÷ reference-lean is the part of a diffnas ratio
that comes from skipping that work; reference-lean ÷ diffnas the rest.

diffnas: the engine's own step (``Search._one_step``: device-resident data with augmentation done on
the device, the update rule, the finite check and the metric accumulation), so its figure includes
the data work the reference is spared.

Examples::

    python benchmarks/search_speed.py --device cuda --out result.json
    python benchmarks/search_speed.py --device cpu --rounds 5 --steps 1 --configs nb201-darts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
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
IMPLS = ("reference", "reference-lean", "diffnas", "diffnas-fused", "diffnas-graphs", "diffnas-fused-graphs")
#: the reference's work without effect that reference-lean leaves out (count_ops.py measures each alone)
WASTE = ("bias", "none", "backward")


# --------------------------------------------------------------------------- reference (xautodl)


def reference_available() -> bool:
    try:
        import xautodl  # noqa: F401
    except ImportError:
        return False
    return True


def reference_darts_network(C: int, layers: int, num_classes: int, track: bool) -> torch.nn.Module:
    """xautodl's ``NASNetworkDARTS`` with its cells laid out as diffnas's ``layers``-cell DARTS supernet
    (reductions at ``layers//3`` and ``2·layers//3``; ``NASNetworkDARTS`` itself builds 3N cells with
    reductions at N and 2N): the same cell count, widths and reduction positions on both sides."""
    from xautodl.models.cell_operations import SearchSpaceNames
    from xautodl.models.cell_searchs import NASNetworkDARTS
    from xautodl.models.cell_searchs.search_cells import NASNetSearchCell

    space = SearchSpaceNames["darts"]
    net = NASNetworkDARTS(C, 1, 4, 4, 3, num_classes, space, False, track)
    reductions = {layers // 3, 2 * layers // 3}
    cells = torch.nn.ModuleList()
    c_pp, c_p, c, red_prev = 3 * C, 3 * C, C, False
    for i in range(layers):
        red = i in reductions
        c = c * 2 if red else c
        cells.append(NASNetSearchCell(space, 4, 4, c_pp, c_p, c, red, red_prev, False, track))
        c_pp, c_p, red_prev = c_p, 4 * c, red
    net.cells, net._Layer = cells, layers
    net.lastact = torch.nn.Sequential(torch.nn.BatchNorm2d(c_p), torch.nn.ReLU(inplace=True))
    net.classifier = torch.nn.Linear(c_p, num_classes)
    return net


def strip_waste(net: torch.nn.Module, waste: set[str]) -> None:
    """Remove from the reference supernet the work in ``waste`` that has no effect on its result:
    ``bias``: the cells' conv biases (each is followed, through linear ops only, by a batch norm
    without affine parameters, which subtracts it again); ``none``: the ``none`` op's ``x·0·w`` terms
    (exactly zero, with zero gradients for the weights and α)."""
    from xautodl.models.cell_searchs.search_cells import MixedOp, NAS201SearchCell

    if "bias" in waste:
        cells = net.cells if hasattr(net, "cells") else [m for m in net.modules() if isinstance(m, NAS201SearchCell)]
        for cell in cells:
            for m in cell.modules():
                if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                    m.bias = None
    if "none" in waste:
        def live(ops):
            return [(i, op) for i, op in enumerate(ops) if not getattr(op, "is_zero", False)]

        def nb201_forward(self, inputs, weightss):  # NAS201SearchCell.forward without the none terms
            nodes = [inputs]
            for i in range(1, self.max_nodes):
                inter = []
                for j in range(i):
                    node_str = f"{i}<-{j}"
                    w = weightss[self.edge2index[node_str]].unbind(0)  # as zip(weights, ...) does
                    inter.append(sum(op(nodes[j]) * w[k] for k, op in live(self.edges[node_str])))
                nodes.append(sum(inter))
            return nodes[-1]

        def darts_mixed(self, x, weights):  # MixedOp.forward_darts without the none term
            w = weights.unbind(0)
            return sum(w[k] * op(x) for k, op in live(self._ops))

        for m in net.modules():
            if isinstance(m, NAS201SearchCell):
                m.forward = types.MethodType(nb201_forward, m)
            elif isinstance(m, MixedOp):
                m.forward_darts = types.MethodType(darts_mixed, m)


def build_reference(space: str, method: str, a: argparse.Namespace, device: torch.device,
                    waste_removed: set[str] = frozenset()) -> tuple[torch.nn.Module, Callable]:
    """The xautodl supernet and a one-step closure (AutoDL's ``search_func``, without per-step
    ``.item()``); ``waste_removed`` (a subset of :data:`WASTE`, first-order step only) leaves out work
    without effect (see :func:`strip_waste`; ``backward``: gradients only for the parameters each
    optimiser steps)."""
    if waste_removed and method != "darts":
        raise ValueError("the lean reference is the first-order step only")
    if space == "nb201":
        from xautodl.models.cell_operations import SearchSpaceNames
        from xautodl.models.cell_searchs import TinyNetworkDarts, TinyNetworkGDAS

        cls = TinyNetworkGDAS if method == "gdas" else TinyNetworkDarts
        net = cls(a.C, a.N, 4, a.num_classes, SearchSpaceNames["nas-bench-201"], False, False)
        if method == "gdas":
            net.set_tau(10.0)
    else:
        if method == "gdas":
            raise ValueError("DARTS space: GDAS is benchmarked on NB201 only")
        net = reference_darts_network(a.darts_C, a.darts_layers, a.num_classes, a.darts_running_stats)
    strip_waste(net, set(waste_removed))
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

    lean_backward = "backward" in waste_removed

    def backward(loss, params):
        """``loss.backward()`` (every gradient), or with ``backward`` removed only ``params``' gradients."""
        if not lean_backward:
            loss.backward()
            return
        for p_, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
            p_.grad = g

    def weight_step(bx, by):
        """AutoDL's weight step: SGD on the train batch, gradient norm clipped to 5."""
        w_opt.zero_grad()
        loss = crit(fwd(bx), by)
        backward(loss, weights)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5)
        w_opt.step()
        return loss.detach()

    def first_order(train, valid):
        (bx, by), (vx, vy) = train, valid
        loss = weight_step(bx, by)
        a_opt.zero_grad()
        aloss = crit(fwd(vx), vy)
        backward(aloss, alphas)
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
        ss = {"name": "darts", "params": {"C": a.darts_C, "layers": a.darts_layers,
                                          "track_running_stats": a.darts_running_stats}}
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


class Timed:
    """One implementation of one configuration, built once, timed block by block."""

    def __init__(self, config: str, impl: str, a: argparse.Namespace, device: torch.device):
        space, method = CONFIGS[config]
        self.config, self.impl, self.device = config, impl, device
        torch.manual_seed(0)
        if impl.startswith("reference"):
            waste = set(WASTE) if impl == "reference-lean" else set()
            _, self.step = build_reference(space, method, a, device, waste)
            self.batches = reference_batches(a, device)
        else:
            _, self.step = build_diffnas(space, method, impl_switches(impl), a, device)
            self.batches = [None]
        self.i = 0
        self.rates: list[float] = []
        self.peak: float | None = None

    def run(self, n: int) -> None:
        b = self.batches
        for _ in range(n):
            self.step(b[self.i % len(b)], b[(self.i + 1) % len(b)])
            self.i += 1

    def block(self, steps: int) -> None:
        """Time ``steps`` steps (device synchronised before and after) and record steps/s."""
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        self.run(steps)
        _sync(self.device)
        self.rates.append(steps / (time.perf_counter() - t0))
        if self.device.type == "cuda":
            self.peak = max(self.peak or 0.0, torch.cuda.max_memory_allocated(self.device) / 2**30)


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max, and (max − min) / median in %) of per-round figures."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread_pct": 100.0 * (max(values) - min(values)) / med if med else 0.0}


def interleaved(timed: list[Timed], rounds: int, steps: int, warmup: int) -> None:
    """Warm every implementation up, then time them round-robin: A, B, C, A, B, C, ..."""
    for t in timed:
        t.run(warmup)
    for _ in range(rounds):
        for t in timed:
            t.block(steps)


def environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "platform": platform.platform(), "threads": torch.get_num_threads(),
           # the 1/5/15-minute load average at the start: a figure measured beside other work says so
           "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
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
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation and round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median and spread over them)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per implementation before the first round")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=5)
    p.add_argument("--darts-C", type=int, default=16)
    p.add_argument("--darts-layers", type=int, default=8, help="DARTS space: cells, on both sides")
    p.add_argument("--no-darts-running-stats", dest="darts_running_stats", action="store_false",
                   help="DARTS space: cells' BNs without running statistics (default: with, on both sides)")
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
    if any(i.startswith("reference") for i in impls) and not reference_available():
        print("xautodl is not installed (pip install --no-deps xautodl): the reference is skipped", file=sys.stderr)
        impls = [i for i in impls if not i.startswith("reference")]
    results, skipped, ratios = [], [], []
    for c in configs:
        timed = []
        for impl in impls:
            sw = impl_switches(impl) if not impl.startswith("reference") else {}
            if (sw.get("fused_cells") or sw.get("cuda_graphs")) and CONFIGS[c][1] == "gdas":
                skipped.append({"config": c, "impl": impl, "reason": "fused cells and CUDA graphs refuse GDAS's active mask"})
                continue
            if sw.get("cuda_graphs") and device.type != "cuda":
                skipped.append({"config": c, "impl": impl, "reason": "CUDA graphs need a CUDA device"})
                continue
            if impl == "reference-lean" and CONFIGS[c][1] != "darts":
                skipped.append({"config": c, "impl": impl, "reason": "the lean reference is the first-order step only"})
                continue
            try:
                timed.append(Timed(c, impl, a, device))
            except Exception as exc:  # noqa: BLE001 - report and go on with the other implementations
                skipped.append({"config": c, "impl": impl, "reason": f"{type(exc).__name__}: {exc}"})
                print(f"{c:12s} {impl:20s} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        interleaved(timed, a.rounds, a.steps, a.warmup)
        ref = next((t for t in timed if t.impl == "reference"), None)
        for t in timed:
            rate = summary(t.rates)
            r = {"config": c, "impl": t.impl, "steps_per_s": rate["median"], "steps_per_s_min": rate["min"],
                 "steps_per_s_max": rate["max"], "spread_pct": rate["spread_pct"], "rounds": t.rates,
                 "images_per_s": rate["median"] * a.batch, "ms_per_step": 1000.0 / rate["median"],
                 "peak_mem_gib": t.peak}
            results.append(r)
            mem = "-" if t.peak is None else f"{t.peak:.2f} GiB"
            print(f"{c:12s} {t.impl:20s} {r['steps_per_s']:8.3f} steps/s (min {rate['min']:.3f}, max {rate['max']:.3f}, "
                  f"spread {rate['spread_pct']:.0f}%) {r['images_per_s']:9.1f} img/s  peak {mem}", flush=True)
        for t in timed:
            if ref is None or t is ref:
                continue
            per_round = [x / y for x, y in zip(t.rates, ref.rates)]  # paired: the same round of both
            q = summary(per_round)
            ratios.append({"config": c, "impl": t.impl, "speedup": q["median"], "speedup_min": q["min"],
                           "speedup_max": q["max"],
                           "memory_ratio": (t.peak / ref.peak) if (ref.peak and t.peak) else None})
            print(f"{c:12s} {t.impl:20s} {q['median']:6.2f}x reference (per round {q['min']:.2f}-{q['max']:.2f}x)")
    out = {"environment": environment(device), "settings": {k: v for k, v in vars(a).items() if k != "out"},
           "results": results, "ratios": ratios, "skipped": skipped}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    os.environ.setdefault("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    main()
