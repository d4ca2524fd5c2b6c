"""Tests of the guide's plugin package, written with diffnas.testing (docs/plugins.md, "Testing")."""

import json
import math
import sys

import pytest
import torch
import yaml

import diffnas_guide.plugin as guide
from diffnas import api
from diffnas.core.errors import RecipeError
from diffnas.core.outputs import CHECKPOINT, load_checkpoint
from diffnas.core.protocols import FastPathContext, OpWeights
from diffnas.core.recipe import resolve_recipe
from diffnas.study import run_study
from diffnas.study.executors import Context, WorkItem
from diffnas.study.schema import RunSpec
from diffnas.testing import build_tiny_search, check_graph_safe, registered, run_tiny, tiny_recipe
from diffnas_guide.executor import Isolated
from diffnas_guide.fast import ChainPopulation, FusedChain
from diffnas_guide.relaxation import softplus_simplex
from diffnas_guide.space import ChainSpace


CHAIN = {"name": "chain", "params": {"C": 4, "cells": 1, "nodes": 2}}


def guide_recipe(**over):
    """The tiny CPU recipe with the guide's space, relaxation and discretiser."""
    return tiny_recipe(search_space=CHAIN, relaxation={"name": "softplus_simplex"},
                       discretiser={"name": "strongest_op"}, **over)


def test_registered_components_are_in_the_catalogue(catalogue, plugin_manager):
    assert "chain" not in catalogue.names("search_space")
    with registered(plugin_manager, guide):
        assert "chain" in catalogue.names("search_space")
        assert catalogue.get("regulariser", "entropy_stop").plugin == plugin_manager.get_name(guide)
    assert "chain" not in catalogue.names("search_space")


def test_softplus_simplex_values_by_hand():
    p = softplus_simplex(torch.tensor([[0.0, math.log(math.e - 1)]]), tau=1.0)
    # softplus(0) = ln 2, softplus(ln(e − 1)) = 1
    assert torch.allclose(p, torch.tensor([[math.log(2), 1.0]]) / (math.log(2) + 1.0))


def test_softplus_simplex_is_twice_differentiable():
    a = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    h = torch.autograd.functional.hessian(lambda x: (softplus_simplex(x, 0.5) * c).sum(), a)
    assert torch.isfinite(h).all() and h.abs().max() > 1e-3
    assert torch.allclose(h, h.T)


def test_search_with_every_guide_component(catalogue, plugin_manager, tmp_path):
    recipe = guide_recipe(update_rule={"name": "weights_first"},
                          regularisers=[{"name": "entropy_penalty"}, {"name": "entropy_stop", "params": {"threshold": 2.0}}],
                          loggers=[{"name": "csv_log"}],
                          schedules=[{"name": "step_decay", "params": {"target": "relaxation.tau", "start": 1.0}}],
                          data={"dataset": "stripes", "params": {"num_train": 32, "num_test": 8}},
                          trainer={"epochs": 4})
    with registered(plugin_manager, guide):
        search, summary = run_tiny(recipe, tmp_path / "run", cat=catalogue)
    # entropy of 4 ops is at most ln 4 = 1.386 < 2.0: below the threshold from epoch 0, stop after 2
    assert summary["epochs_run"] == 2 and "mean α entropy" in summary["stop_reason"]
    assert [r["hparams"]["relaxation"]["tau"] for r in search.history] == [1.0, 0.5]
    assert summary["scores"]["chain"]["conv_edges"] + summary["scores"]["chain"]["parameter_free_edges"] == 3
    lines = (tmp_path / "run" / "guide_log.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,valid_loss,entropy" and [x.split(",")[0] for x in lines[1:]] == ["0", "1"]
    assert "none" not in summary["genotype"]  # the space declares none a zero op


def test_second_order_and_hessian_diagnostic(catalogue, plugin_manager):
    recipe = guide_recipe(update_rule={"name": "bilevel", "params": {"order": 2}},
                          diagnostics={"hessian_eigenvalue": True, "iterations": 3})
    with registered(plugin_manager, guide):
        search, _ = run_tiny(recipe, cat=catalogue)
    eig = search.history[-1]["hessian_eigenvalue"]
    assert eig is not None and math.isfinite(eig) and eig != 0.0


def test_discrete_network_from_the_found_genotype(catalogue, plugin_manager):
    with registered(plugin_manager, guide):
        search, _ = run_tiny(guide_recipe(), cat=catalogue)
    net = search.search_space.build_network(search.discretiser.final(search), num_classes=10)
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


def test_schedule_values_are_checked_before_the_run(catalogue, plugin_manager):
    recipe = guide_recipe(regularisers=[{"name": "entropy_penalty"}],
                          schedules=[{"name": "step_decay",
                                      "params": {"target": "regularisers.entropy_penalty.weight", "start": -1.0}}])
    with registered(plugin_manager, guide), pytest.raises(RecipeError) as err:
        resolve_recipe(recipe, catalogue)
    assert "'weight' must be >= 0, got -1.0" in str(err.value)
    assert err.value.problems[0][1] == "recipe.schedules[0].params"


def test_every_bad_data_param_is_reported(catalogue, plugin_manager):
    recipe = guide_recipe(data={"dataset": "stripes", "params": {"num_train": 0, "noise": -1.0}})
    with registered(plugin_manager, guide), pytest.raises(RecipeError) as err:
        resolve_recipe(recipe, catalogue)
    assert [where for _, where in err.value.problems] == ["recipe.data.params.num_train", "recipe.data.params.noise"]


def test_the_logger_writes_only_inside_the_run_directory(catalogue, plugin_manager):
    recipe = guide_recipe(loggers=[{"name": "csv_log", "params": {"filename": "../outside.csv"}}])
    with registered(plugin_manager, guide), pytest.raises(RecipeError) as err:
        resolve_recipe(recipe, catalogue)
    assert "'filename' must be a file name inside the run directory" in str(err.value)
    assert err.value.problems[0][1].startswith("recipe.loggers[0]")


def test_the_guide_step_is_graph_safe(catalogue, plugin_manager):
    recipe = guide_recipe(update_rule={"name": "weights_first"}, regularisers=[{"name": "entropy_penalty"}])
    with registered(plugin_manager, guide):
        search = build_tiny_search(recipe, cat=catalogue)
        assert check_graph_safe(search) == []


# --------------------------------------------------------------------------- the space's fast paths


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def grads(net, x, alpha):
    """Logits, α's gradient and the parameters' gradients of one forward and backward pass."""
    alpha.grad = None
    net.zero_grad(set_to_none=True)
    y = net(x, {"normal": OpWeights(softplus_simplex(alpha, 0.7))})
    (y * torch.linspace(-1, 1, y.shape[-1])).square().sum().backward()
    return y.detach(), alpha.grad.clone(), {n: p.grad for n, p in net.named_parameters()}


def test_fused_supernet_equals_the_plain_one_in_float64(float64):
    space = ChainSpace(ChainSpace.Config(C=4, cells=2, nodes=3))
    plain = space.build_supernet(num_classes=3)
    fused = space.fused_supernet(plain, FastPathContext("trainer.fused_cells", torch.device("cpu")))
    gen = torch.Generator().manual_seed(0)
    alpha = torch.randn(6, 4, generator=gen).requires_grad_()  # 3 + 2 + 1 edges
    x = torch.randn(5, 3, 6, 6, generator=gen)
    y0, a0, g0 = grads(plain, x, alpha)
    y1, a1, g1 = grads(fused, x, alpha)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a1, a0, rtol=1e-10, atol=1e-12)
    assert a0.abs().max() > 1e-3
    for pname, fname, part in fused.param_mapping(plain):
        torch.testing.assert_close(g1[fname] if part is None else g1[fname][part], g0[pname], rtol=1e-10, atol=1e-12)
    # both forwards ran in training mode: the running statistics moved alike
    state = fused.plain_state_dict(plain)
    assert state.keys() == plain.state_dict().keys()
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    assert plain.state_dict()["cells.0.mixed.0.2.2.num_batches_tracked"] == 1


def test_a_search_through_the_fused_supernet_steps_as_the_plain_one(catalogue, plugin_manager, float64):
    recipe = guide_recipe(update_rule={"name": "weights_first"}, trainer={"deterministic": True})
    fused_recipe = guide_recipe(update_rule={"name": "weights_first"}, trainer={"deterministic": True, "fused_cells": True})
    with registered(plugin_manager, guide):
        plain, _ = run_tiny(recipe, cat=catalogue)
        fused, summary = run_tiny(fused_recipe, cat=catalogue)
        start = build_tiny_search(recipe, cat=catalogue).alphas["normal"]
    assert isinstance(fused.model, FusedChain) and summary["epochs_run"] == 2
    assert (plain.alphas["normal"] - start).abs().max() > 1e-4  # the steps moved α
    torch.testing.assert_close(fused.alphas["normal"], plain.alphas["normal"], rtol=1e-9, atol=1e-12)
    state = fused.model.plain_state_dict(fused.plain_model)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")


def test_the_fast_paths_refuse_a_supernet_a_regulariser_changed(catalogue, plugin_manager):
    recipe = guide_recipe(regularisers=[{"name": "darts_minus_skip"}], trainer={"fused_cells": True})
    with registered(plugin_manager, guide), pytest.raises(RecipeError) as err:
        build_tiny_search(recipe, cat=catalogue)
    assert "a regulariser changed the chain supernet" in str(err.value)
    assert err.value.problems[0][1] == "recipe.trainer.fused_cells"


def test_population_supernet_equals_its_members_in_float64(float64):
    space = ChainSpace(ChainSpace.Config(C=4, cells=2, nodes=3))
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(space.build_supernet(num_classes=3))
    separate = [space.build_supernet(num_classes=3) for _ in members]
    for s, m in zip(separate, members):
        s.load_state_dict(m.state_dict())
    pop = space.population_supernet(members, FastPathContext("population", torch.device("cpu")))
    assert isinstance(pop, ChainPopulation)
    gen = torch.Generator().manual_seed(0)
    alpha = torch.randn(3, 6, 4, generator=gen).requires_grad_()
    x = torch.randn(3, 5, 3, 6, 6, generator=gen)
    y, a, g = grads(pop, x, alpha)
    assert y.shape == (3, 5, 3)
    for m, net in enumerate(separate):
        ym, am, gm = grads(net, x[m], alpha[m].detach().clone().requires_grad_())
        torch.testing.assert_close(y[m], ym, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a[m], am, rtol=1e-10, atol=1e-12)
        for name, _ in net.named_parameters():  # pop.parameters() are in this order (the contract)
            torch.testing.assert_close(g[f"stacked.{pop.names.index(name)}"][m], gm[name], rtol=1e-10, atol=1e-12)
    pop.store_to_members(members)  # weights and running statistics back into the members
    for m, net in zip(members, separate):
        for k, v in net.state_dict().items():
            torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-10, atol=1e-12, msg=lambda msg: f"{k}: {msg}")


def test_a_population_of_the_guide_space_matches_its_separate_runs(catalogue, plugin_manager, tmp_path, float64):
    # the guide's own update rule (§6): its one step runs the population too
    recipes = [guide_recipe(update_rule={"name": "weights_first"}, trainer={"seed": seed}) for seed in (0, 1)]
    with registered(plugin_manager, guide):
        summaries = api.search_population(recipes, [tmp_path / f"pop{i}" for i in (0, 1)], cat=catalogue)
        alone = [run_tiny(r, tmp_path / f"sep{i}", cat=catalogue)[1] for i, r in enumerate(recipes)]
    for i in (0, 1):
        assert summaries[i]["genotype"] == alone[i]["genotype"]
        pop, sep = (load_checkpoint(tmp_path / f"{kind}{i}" / CHECKPOINT) for kind in ("pop", "sep"))
        for part in ("alphas", "model"):
            for k, v in sep[part].items():
                torch.testing.assert_close(pop[part][k], v, rtol=1e-9, atol=1e-12, msg=lambda m: f"{part}.{k}: {m}")
    assert not torch.equal(load_checkpoint(tmp_path / "pop0" / CHECKPOINT)["alphas"]["normal"],
                           load_checkpoint(tmp_path / "pop1" / CHECKPOINT)["alphas"]["normal"])


# --------------------------------------------------------------------------- the executor


def test_the_executor_runs_a_tiny_study(catalogue, plugin_manager, tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", raising=False)  # the runs' processes find the guide installed
    recipe = guide_recipe(data={"dataset": "stripes", "params": {"num_train": 32, "num_test": 8}}, trainer={"epochs": 1})
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"version": 1, "name": "tiny", "executor": {"name": "isolated"},
                                     "runs": [{"label": "guide", "id": "guide", "recipe": recipe}]}))
    logs = []
    with registered(plugin_manager, guide):
        _, outcomes, _ = run_study(study, tmp_path / "out", catalogue=catalogue, report_plots=False, log=logs.append)
        assert [(o.id, o.status) for o in outcomes] == [("guide", "done")]
        assert json.loads((tmp_path / "out" / "runs" / "guide" / "result.json").read_text())["epochs_run"] == 1
        assert any("guide: " in line and "search" in line for line in logs)
        _, again, _ = run_study(study, tmp_path / "out", catalogue=catalogue, report_plots=False, log=logs.append)
    assert [(o.id, o.status) for o in again] == [("guide", "skipped")]


def test_the_executor_reports_failures_and_timeouts(tmp_path):
    script = "\n".join([
        "import pathlib, sys, time",
        "d = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])",
        "time.sleep(30) if d.name == 'slow' else None",
        "sys.exit(3) if d.name == 'bad' else (d.mkdir(parents=True), (d / 'result.json').write_text('{}'))",
    ])
    specs = [RunSpec(i, rid, rid, rid, {}, {}, tmp_path / "runs" / rid, 0) for i, rid in enumerate(["ok", "bad", "slow"])]
    executor = Isolated(Isolated.Config(timeout_s=1))
    executor.program = (sys.executable, "-c", script)
    logs = []
    outcomes = executor.run([WorkItem(s.id, (s,)) for s in specs], Context(tmp_path, log=logs.append))
    assert [(o.id, o.status) for o in outcomes] == [("ok", "done"), ("bad", "failed"), ("slow", "failed")]
    assert outcomes[1].message.startswith("exit status 3; see ") and "timed out after 1 s" in outcomes[2].message
    assert (tmp_path / "logs" / "bad.log").exists() and sum("FAILED" in line for line in logs) == 2
