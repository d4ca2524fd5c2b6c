"""Tests of the guide's plugin package, written with diffnas.testing (docs/plugins.md, "Testing")."""

import math

import pytest
import torch

import diffnas_guide.plugin as guide
from diffnas.core.errors import RecipeError
from diffnas.core.recipe import resolve_recipe
from diffnas.testing import registered, run_tiny, tiny_recipe
from diffnas_guide.relaxation import softplus_simplex

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
                          regularisers=[{"name": "entropy_penalty"}, {"name": "entropy_stop", "params": {"threshold": 2.0}},
                                        {"name": "csv_log"}],
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
