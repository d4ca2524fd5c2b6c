"""``trainer.cuda_graphs``: the host-sync detector, the refusals, the step orchestration (on the CPU
without capture), the graph-safety of every bundled recipe's step, and, on a GPU, that a captured
search computes what the eager one does."""

import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._python_dispatch import _disable_current_modes

from diffnas.core.errors import RecipeError
from diffnas.core.graphs import StepGraph, find_host_syncs
from diffnas.core.hookspecs import hookimpl
from diffnas.testing import build_tiny_search, check_graph_safe, registered, tiny_recipe

sys.path.insert(0, str(Path(__file__).parent))
from test_recipes import RECIPES, smoke  # noqa: E402

SGD_ARCH = {"arch_optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0}}


def test_detector_names_the_line_that_synchronises():
    x = torch.randn(5, requires_grad=True)

    def step():
        y = (x * 2).sum()
        if bool(y > 0):  # a host branch on a device value
            y = y + 1
        z = x[x > 0].sum()  # boolean-mask indexing: a data-dependent size
        (y + z).backward()
        return float(y.detach())

    _, found = find_host_syncs(step)
    assert any(f.startswith("_local_scalar_dense") and "test_cuda_graphs.py" in f and "bool(y > 0)" in f for f in found)
    assert any(f.startswith("boolean-mask indexing") and "x[x > 0]" in f for f in found)
    _, clean = find_host_syncs(lambda: torch.softmax(x, 0).sum().backward())
    assert clean == []


def test_graphs_refused_on_the_cpu_with_every_reason():
    recipe = tiny_recipe(trainer={"cuda_graphs": True, "on_nonfinite": "skip"},
                         relaxation={"name": "gumbel_softmax"},
                         schedules=[{"name": "mixed_sparsity_tau", "params": {"target": "relaxation.tau"}}])
    with pytest.raises(RecipeError) as err:
        build_tiny_search(recipe)
    msg = str(err.value)
    assert "recipe.trainer.cuda_graphs" in msg
    for reason in ("needs a CUDA device", "on_nonfinite: skip", "samples one op per edge",
                   "per-step schedules change values between replays: schedules[0] (mixed_sparsity_tau)"):
        assert reason in msg, reason


def _alphas_after(search):
    search.run(progress=False)
    return {k: v.detach().clone() for k, v in search.alphas.items()}, search.state.history


def test_step_graph_orchestration_matches_the_plain_loop():
    """The engine's graph path (warm-up, per-epoch reset, in-place sums) without a capture: the same
    α, losses and accuracies as the plain loop, and the detector runs on the first step."""
    recipe = tiny_recipe(trainer={"epochs": 3, "steps_per_epoch": 3, **SGD_ARCH})
    plain_alphas, plain_hist = _alphas_after(build_tiny_search(recipe))
    s = build_tiny_search(recipe)
    s._step_graph = graph = StepGraph(s._step, warmup=2, capture=False)
    alphas, hist = _alphas_after(s)
    assert graph.checked and graph.warmup_left < 0
    for k in plain_alphas:
        assert torch.equal(alphas[k], plain_alphas[k])
    for a, b in zip(hist, plain_hist):
        for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "genotype"):
            assert a[key] == b[key], key
        assert "skipped_batches" not in a


def test_step_graph_refuses_a_step_that_reads_the_device(catalogue):
    s = build_tiny_search(tiny_recipe(relaxation={"name": "gumbel_softmax"}, trainer=SGD_ARCH), cat=catalogue)
    s._step_graph = StepGraph(s._step, capture=False)
    with pytest.raises(RecipeError) as err:
        s.run(progress=False)
    msg = str(err.value)
    assert "recipe.trainer.cuda_graphs" in msg and "gumbel.py" in msg and "set trainer.cuda_graphs: false" in msg


GRAPH_UNSAFE = {"nb201_gdas"}  # one op per edge, chosen on the host (refused up front)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_bundled_recipe_steps_do_not_read_the_device(path, catalogue):
    """Every bundled recipe's step (update rule, relaxation, regularisers, both optimiser steps
    excepted: on CUDA the engine makes Adam capturable) makes no host synchronisation, so it can be
    captured; GDAS is the one refused."""
    s = build_tiny_search(smoke(yaml.safe_load(path.read_text())), cat=catalogue)
    for opt in (s.w_optimizer, s.a_optimizer):
        step = opt.step

        def unwatched(*a, _step=step, **k):
            with _disable_current_modes():
                return _step(*a, **k)

        opt.step = unwatched
    train = s.train_loader.batch(0, 0)
    valid = s.valid_loader.batch(0, 0) if s.valid_loader is not None else None
    _, found = find_host_syncs(lambda: s._step(train, valid))
    if path.stem in GRAPH_UNSAFE:
        assert found and s.relaxation.sets_active
    else:
        assert found == [], found


# --------------------------------------------------------------------------- on a GPU

GPU_CASES = {
    "darts_v1": {},
    "darts_v2": {"update_rule": {"name": "bilevel", "params": {"order": 2}}},
    # the warm-up ends inside epoch 0: the first α step runs eagerly, so its new metric sums are
    # made outside the graph (StepGraph.reset(eager_steps=1)), then the α phase is captured
    "warmup_mid_epoch": {"trainer": {"warmup_steps": 4}},
    "single_level": {"update_rule": {"name": "single_level"}},
    "fused_v1": {"trainer": {"fused_cells": True}},
    "degeneracy": {"regularisers": [{"name": "degeneracy_cap"}]},
    "drnas": {"relaxation": {"name": "dirichlet"}, "regularisers": [{"name": "dirichlet_kl"}],
              "trainer": {"arch_optimizer": {"name": "adam", "lr": 3.0e-4, "betas": [0.5, 0.999], "weight_decay": 0.0}}},
    "darts_space": {"search_space": {"name": "darts", "params": {"C": 4, "layers": 3}}},
    "darts_fused": {"search_space": {"name": "darts", "params": {"C": 4, "layers": 3}}, "trainer": {"fused_cells": True}},
    "pc_darts_first": {"regularisers": [{"name": "pc_darts", "params": {"sampling": "first"}}]},
    # decisions, masks and a new batch size at every epoch end: re-captured at every epoch start
    "sgas": {"search_space": {"name": "darts", "params": {"C": 4, "layers": 3, "steps": 2}},
             "regularisers": [{"name": "sgas", "params": {"warmup_dec_epoch": 0, "decision_freq": 1}}],
             "discretiser": {"name": "sgas"}},
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_captured_search_matches_eager_on_cuda(case):
    over = GPU_CASES[case]
    base = tiny_recipe(**over)
    base["trainer"] = {**base["trainer"], "device": "cuda", "epochs": 3, "steps_per_epoch": 6,
                       **over.get("trainer", {})}
    torch.backends.cudnn.deterministic = True
    eager_alphas, eager_hist = _alphas_after(build_tiny_search(base))
    graphed = tiny_recipe(**over)
    graphed["trainer"] = {**base["trainer"], "cuda_graphs": True}
    s = build_tiny_search(graphed)
    alphas, hist = _alphas_after(s)
    # one capture per epoch, replayed within it (and one more where the warm-up ends mid-epoch)
    assert s._step_graph.captures == (4 if case == "warmup_mid_epoch" else 3)
    for k in eager_alphas:
        torch.testing.assert_close(alphas[k], eager_alphas[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(hist, eager_hist, strict=True):
        for key in (k for k, v in b.items() if isinstance(v, float) and k not in ("epoch_elapsed", "time_s")):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("switches", [{"fused_cells": True}, {"fused_cells": True, "channels_last": True, "autocast": "bf16"},
                                      {"channels_last": True}], ids=["fused", "fused-cl-bf16", "channels-last"])
@pytest.mark.parametrize("rule", [{"name": "bilevel", "params": {"order": 1}}, {"name": "bilevel", "params": {"order": 2}},
                                  {"name": "single_level"}], ids=["v1", "v2", "single"])
def test_speed_switch_steps_do_not_read_the_device(switches, rule):
    s = build_tiny_search(tiny_recipe(trainer={**switches, **SGD_ARCH}, update_rule=rule))
    train = s.train_loader.batch(0, 0)
    valid = s.valid_loader.batch(0, 0) if s.valid_loader is not None else None
    assert find_host_syncs(lambda: s._step(train, valid))[1] == []


# --------------------------------------------------------------------------- step hooks around a replayed step


class StepLogger:
    """A plugin with both step hooks; graph-safe only when it says so."""

    def __init__(self, safe: bool | None = None, sync: bool = False):
        if safe is not None:
            self.cuda_graph_safe = safe
        self.sync, self.seen = sync, []

    @hookimpl
    def diffnas_step_start(self, search, epoch, step):
        self.seen.append(("start", epoch, step))

    @hookimpl
    def diffnas_step_end(self, search, epoch, step, metrics):
        if self.sync:
            self.seen.append(float(metrics["loss"]))  # a host read at every replay
        else:
            self.seen.append(metrics)


def test_graphs_refuse_step_hooks_not_declared_graph_safe(catalogue):
    with registered(catalogue.pm, StepLogger(), name="step-logger"), pytest.raises(RecipeError) as err:
        build_tiny_search(tiny_recipe(trainer={"cuda_graphs": True}), cat=catalogue)
    msg = str(err.value)
    assert "docs/graph_safety.md" in msg and "cuda_graph_safe = True" in msg
    assert "step-logger (diffnas_step_start), step-logger (diffnas_step_end)" in msg
    with registered(catalogue.pm, StepLogger(safe=True), name="step-logger"), pytest.raises(RecipeError) as err:
        build_tiny_search(tiny_recipe(trainer={"cuda_graphs": True}), cat=catalogue)
    assert "step-logger" not in str(err.value) and "needs a CUDA device" in str(err.value)  # only the CPU is left


def test_a_step_hook_registered_after_the_build_is_refused_when_the_graph_is_made(catalogue):
    s = build_tiny_search(tiny_recipe(trainer=SGD_ARCH), cat=catalogue)
    s._step_graph = StepGraph(s._step, capture=False)
    with registered(catalogue.pm, StepLogger(), name="late-logger"), pytest.raises(RecipeError, match="late-logger"):
        s.run(progress=False)


def test_a_graph_safe_step_hook_that_reads_the_device_is_refused_at_the_first_step(catalogue):
    s = build_tiny_search(tiny_recipe(trainer=SGD_ARCH), cat=catalogue)
    s._step_graph = StepGraph(s._step, capture=False)
    with registered(catalogue.pm, StepLogger(safe=True, sync=True)), pytest.raises(RecipeError) as err:
        s.run(progress=False)
    msg = str(err.value)
    assert "a step hook synchronises the host" in msg and "float(metrics[\"loss\"])" in msg


def test_step_end_hooks_get_copies_of_the_replay_buffers(catalogue):
    """A replay returns the same output tensors every step; the hooks get copies they may keep."""
    s = build_tiny_search(tiny_recipe(trainer=SGD_ARCH), cat=catalogue)
    graph = StepGraph(s._step, capture=False)
    static: dict = {}

    def replay(train, valid):  # what a captured graph does: write into the same buffers every step
        out = graph(train, valid)
        for k, v in out.items():
            static.setdefault(k, torch.empty_like(v)).copy_(v)
        return static

    s._step_graph = replay
    s._step_hooks_checked = False
    with registered(catalogue.pm, StepLogger(safe=True)) as logger:
        for step in range(3):
            s._one_step(0, step)
    got = [m for m in logger.seen if isinstance(m, dict)]
    assert len(got) == 3 and all(m["loss"] is not static["loss"] for m in got)
    assert len({float(m["loss"]) for m in got}) == 3  # each step's own value, not the last replay's
    assert float(got[-1]["loss"]) == float(static["loss"])


def test_check_graph_safe_finds_undeclared_step_hooks_and_host_syncs():
    """diffnas.testing.check_graph_safe: a plugin author's CPU check of what trainer.cuda_graphs would refuse."""

    class Reads:  # a step hook that reads the device, without declaring itself graph-safe
        @hookimpl
        def diffnas_step_end(self, search, metrics):
            self.last = float(metrics["loss"])

    class Declared:
        cuda_graph_safe = True

        @hookimpl
        def diffnas_step_start(self, search):
            search.alphas["normal"].sum().item()

    s = build_tiny_search()
    assert check_graph_safe(s) == []
    before = s.alphas["normal"].detach().clone()
    with registered(s.pm, Reads()), registered(s.pm, Declared()):
        found = check_graph_safe(s)
    assert not torch.equal(before, s.alphas["normal"])  # it ran a real step
    assert found[0].endswith("(diffnas_step_end) does not declare cuda_graph_safe = True") and len(found) == 3
    assert found[1].startswith("diffnas_step_start: _local_scalar_dense") and "test_cuda_graphs.py" in found[1]
    assert found[2].startswith("diffnas_step_end: _local_scalar_dense") and "float(metrics" in found[2]
    assert "step" not in s.w_optimizer.__dict__  # the optimisers' step is theirs again
