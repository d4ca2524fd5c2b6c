"""The authoring contract of issue 14: schedulable hyperparameters by default, schedules checked
against their target, every refused param reported, requirements checked, provenance recorded,
validate refusing what search refuses, declared op and cell names, the catalogue following
registered plugins, and the recipe's settings listed by ``diffnas plugins``."""

from __future__ import annotations

import json
from typing import Any
from pathlib import Path

import attrs
import pytest
import yaml

from diffnas.cli import main
from diffnas.core.config import help_field, positive
from diffnas.core.errors import PluginError, RecipeError
from diffnas.core.hookspecs import hookimpl
from diffnas.core.protocols import Regulariser, Relaxation
from diffnas.core.recipe import requirement_problems, resolve_recipe
from diffnas.registry import Entry
from diffnas.testing import build_tiny_search, registered, run_tiny, tiny_recipe
from diffnas.plugins.regularisers.darts_plus_stop import DartsPlusStop
from diffnas.plugins.search_spaces.nb201 import NB201Space


def _write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# --------------------------------------------------------------------------- hparams


class Scaled(Relaxation):
    """A relaxation whose author never touches ``hparams``."""

    @attrs.frozen
    class Config:
        tau: float = help_field(2.0, "temperature", validator=positive)
        init: float = help_field(0.1, "one-off scale", schedulable=False)
        k: int = help_field(3, "an integer: structural, not scheduled")
        offset: float | None = help_field(None, "optional float")


def test_hparams_start_from_the_float_fields():
    assert Scaled().hparams == {"tau": 2.0, "offset": None}
    assert Scaled.schedulable_fields() == ("tau", "offset")
    assert NB201Space().hparams == {}  # search spaces: fixed once built


def test_schedule_values_are_checked_against_the_target_field(tmp_path, capsys):
    recipe = tiny_recipe(relaxation={"name": "gumbel_softmax", "params": {"tau": 10.0}},
                         schedules=[{"name": "linear", "params": {"target": "relaxation.tau", "start": 10.0, "end": 0.0}}])
    assert main(["validate", str(_write(tmp_path, recipe))]) == 2
    err = capsys.readouterr().err
    assert ("schedule 'relaxation.tau' plans the value 0.0, which the target refuses ('tau' must be > 0, got 0.0)"
            in err and err.rstrip().endswith("@ recipe.schedules[0].params"))
    # reached one epoch after the last: never written, so accepted
    recipe["schedules"][0]["params"]["end_at"] = "after_last"
    assert main(["validate", str(_write(tmp_path, recipe))]) == 0


# --------------------------------------------------------------------------- params


class _Opsy(Regulariser):
    """A third-party regulariser with its own converters (test)."""

    @attrs.frozen
    class Config:
        ops: Any = help_field(("skip_connect",), "ops (any iterable; the converter makes a tuple)", converter=tuple)
        cells: tuple[str, ...] = help_field((), "cell types")
        lam: float = help_field(1.0, "weight", validator=positive)


def test_a_plugins_converter_and_a_non_list_are_refused_clearly(catalogue):
    plugin = type("P", (), {"diffnas_register_regularisers": hookimpl(lambda self, register: register("opsy", _Opsy))})()
    with registered(catalogue.pm, plugin):
        from diffnas.registry import Catalogue

        cat = Catalogue(catalogue.pm)
        recipe = tiny_recipe(regularisers=[{"name": "opsy", "params": {"ops": 3, "cells": "normal"}}])
        with pytest.raises(RecipeError) as err:
            resolve_recipe(recipe, cat)
        assert err.value.problems == [("expected a list, got int 3", "recipe.regularisers[0].params.ops"),
                                      ("expected a list, got str 'normal'", "recipe.regularisers[0].params.cells")]
        assert "not iterable" not in str(err.value)
        ok = resolve_recipe(tiny_recipe(regularisers=[{"name": "opsy", "params": {"ops": ["none"], "cells": ["normal"]}}]), cat)
        assert ok.configs["regularisers.0"].ops == ("none",) and ok.configs["regularisers.0"].cells == ("normal",)


def test_an_unknown_key_hides_no_other_problem(catalogue):
    """One block with an unknown key, a wrong type and a refused value, and a schedule with a wrong
    target elsewhere: all four at once."""
    recipe = tiny_recipe(regularisers=[{"name": "beta_darts", "params": {"slope": -1.0, "sloep": 1.0, "ramp": "yes"}}],
                         schedules=[{"name": "linear", "params": {"target": "relaxation.tauu", "start": 1.0, "end": 0.5}}])
    with pytest.raises(RecipeError) as err:
        resolve_recipe(recipe, catalogue)
    problems = err.value.problems
    assert problems[:3] == [
        ("unknown key(s): 'sloep' (did you mean 'slope'?)", "recipe.regularisers[0].params"),
        ("'slope' must be >= 0, got -1.0", "recipe.regularisers[0].params.slope"),
        ("expected a boolean (true/false), got str 'yes'", "recipe.regularisers[0].params.ramp"),
    ]
    assert len(problems) == 4 and problems[3][1] == "recipe.schedules[0].params.target"
    assert problems[3][0].startswith("unknown schedule target 'relaxation.tauu'; schedulable: relaxation.tau")
    # a schedule aimed at the refused regulariser is not second-guessed
    recipe["schedules"][0]["params"]["target"] = "regularisers.beta_darts.weight"
    with pytest.raises(RecipeError) as err:
        resolve_recipe(recipe, catalogue)
    assert len(err.value.problems) == 3


def test_every_refused_param_of_a_block_is_reported(catalogue):
    recipe = tiny_recipe(relaxation={"name": "softmax", "params": {"tau": -1.0, "init_std": 0.0}},
                         trainer={"epochs": 0, "weights_optimizer": {"lr": -1.0}})
    with pytest.raises(RecipeError) as err:
        resolve_recipe(recipe, catalogue)
    assert err.value.problems == [
        ("'epochs' must be > 0, got 0", "recipe.trainer.epochs"),
        ("'lr' must be > 0, got -1.0", "recipe.trainer.weights_optimizer.lr"),
        ("'tau' must be > 0, got -1.0", "recipe.relaxation.params.tau"),
        ("'init_std' must be > 0, got 0.0", "recipe.relaxation.params.init_std"),
    ]


def test_requirements_are_checked_against_installed_distributions():
    assert requirement_problems(["pyyaml", "attrs>=1.0", "torch!=0.1"]) == []
    problems = requirement_problems(["no-such-dist-diffnas", "attrs<1", "not a requirement"])
    assert [where for _, where in problems] == ["recipe.requires[0]", "recipe.requires[1]", "recipe.requires[2]"]
    assert "not installed (pip install no-such-dist-diffnas)" in problems[0][0]
    assert problems[1][0].startswith("the recipe requires attrs<1, but attrs ")


# --------------------------------------------------------------------------- validate = what search refuses


@pytest.mark.parametrize("space,trainer,words", [
    ({"name": "lhd", "params": {"C": 4, "layers": 3, "steps": 2}}, {"fused_cells": True}, "offers no fused supernet"),
    ({"name": "nb201", "params": {"C": 4, "N": 1}}, {"cuda_graphs": True}, "needs a CUDA device"),
])
def test_validate_refuses_what_search_refuses(tmp_path, capsys, space, trainer, words):
    recipe = tiny_recipe(search_space=space, trainer=trainer)
    if space["name"] == "lhd":
        recipe.update(relaxation={"name": "node_softmax"}, discretiser={"name": "lhd_base"})
    path = _write(tmp_path, recipe)
    assert main(["validate", str(path)]) == 2
    validated = capsys.readouterr().err
    assert words in validated and "@ recipe.trainer." in validated
    assert main(["search", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert words in capsys.readouterr().err


class _NeedsArchFirst(Regulariser):
    """A third-party regulariser that only makes sense when α is stepped first (test)."""

    @attrs.frozen
    class Config:
        weight: float = help_field(1.0, "weight", validator=positive)

    def check_composition(self, composition):
        rule = composition.components["update_rule"]
        if getattr(rule.config, "step_order", "arch_first") != "arch_first":
            return [(f"needs_arch_first at {self.key_path} needs update_rule step_order: arch_first",
                     "recipe.update_rule.params.step_order")]
        return []


def test_checks_across_components_run_at_validate_and_before_the_search(catalogue, tmp_path, capsys):
    """Component.check_composition: one hook for checks across components, called by `diffnas validate`
    and by the search before it starts; the component knows its own key path."""
    plugin = type("P", (), {"diffnas_register_regularisers":
                            hookimpl(lambda self, register: register("needs_arch_first", _NeedsArchFirst))})()
    weights_first = {"name": "bilevel", "params": {"order": 1, "step_order": "weights_first"}}
    with registered(catalogue.pm, plugin):
        from diffnas.core.engine import preflight_problems
        from diffnas.registry import Catalogue

        cat = Catalogue(catalogue.pm)
        recipe = tiny_recipe(update_rule=weights_first, regularisers=[{"name": "beta_darts"}, {"name": "needs_arch_first"}])
        resolved = resolve_recipe(recipe, cat)
        assert preflight_problems(resolved, cat, cat.pm) == [
            ("needs_arch_first at recipe.regularisers[1] needs update_rule step_order: arch_first",
             "recipe.update_rule.params.step_order")]
        with pytest.raises(RecipeError, match=r"at recipe\.regularisers\[1\] needs update_rule step_order"):
            build_tiny_search(recipe, tmp_path / "run", cat)
        assert not (tmp_path / "run").exists()
        recipe["update_rule"] = {"name": "bilevel", "params": {"order": 1}}
        s = build_tiny_search(recipe, None, cat)
        assert [r.key_path for r in s.regularisers] == ["recipe.regularisers[0]", "recipe.regularisers[1]"]
        assert (s.relaxation.key_path, s.search_space.key_path) == ("recipe.relaxation", "recipe.search_space")


@pytest.mark.parametrize("over, words, where", [
    ({"relaxation": {"name": "dirichlet"}, "regularisers": [{"name": "dirichlet_kl"}]},
     "dirichlet_kl is DrNAS's reg_type 'kl'", "recipe.trainer.arch_optimizer.weight_decay"),
    ({"discretiser": {"name": "selective_stop", "params": {"op": "sep_conv_3x3"}}},
     "selective_stop: op 'sep_conv_3x3' is not a candidate", "recipe.discretiser.params.op"),
    ({"discretiser": {"name": "degeneracy_argmax", "params": {"base": "argmax_per_edg"}}},
     "unknown discretiser 'argmax_per_edg'", "recipe.discretiser.params.base"),
    ({"discretiser": {"name": "lhd_base"}}, "the LHD discretisers need a search space with learned output paths",
     "recipe.discretiser.name"),
    ({"regularisers": [{"name": "degeneracy_cap", "params": {"cells": ["reduce"]}}]},
     "degeneracy_cap: unknown cell type(s) ['reduce']", "recipe.regularisers[0].params.cells"),
    ({"relaxation": {"name": "sparse_noisy_softmax", "params": {"extra_grad_cells": ["reduce"]}}},
     "extra_grad_cells names unknown cell type(s) ['reduce']", "recipe.relaxation.params.extra_grad_cells"),
])
def test_bundled_checks_across_components_are_refused_by_validate(tmp_path, capsys, over, words, where):
    """What the bundled components used to refuse only once the search started: validate says it too."""
    path = _write(tmp_path, tiny_recipe(**over))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and f"@ {where}" in err, err
    assert main(["search", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- provenance, catalogue, listing


def test_run_records_provenance(tmp_path):
    run_tiny(out_dir=tmp_path / "run")
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["relaxation"]["class"] == "diffnas.plugins.relaxations.softmax.Softmax"
    assert prov["relaxation"]["plugin"] == "softmax" and prov["relaxation"]["distribution"] == "diffnas"
    assert prov["data"]["name"] == "synthetic" and set(prov) >= {"search_space", "update_rule", "discretiser"}


class Sharpen(Regulariser):
    """Registered for one test only."""


class SharpenPlugin:
    @hookimpl
    def diffnas_register_regularisers(self, register):
        register("sharpen_for_test", Sharpen)


def test_catalogue_fixture_sees_registered_plugins(catalogue, plugin_manager):
    assert "sharpen_for_test" not in catalogue.names("regulariser")
    with registered(plugin_manager, SharpenPlugin()):
        assert catalogue.get("regulariser", "sharpen_for_test").cls is Sharpen
    assert "sharpen_for_test" not in catalogue.names("regulariser")


def test_help_is_dedented():
    class Doc(Regulariser):
        """First line
           continued, indented.

        Second paragraph."""

    assert Entry("regulariser", "doc", Doc, "p").help == "First line continued, indented."


def test_plugins_lists_the_recipe_settings(capsys):
    assert main(["plugins", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    lr = next(k for k in settings["trainer"] if k["name"] == "trainer.weights_optimizer.lr")
    assert (lr["type"], lr["default"], lr["help"]) == ("float", 0.025, "learning rate (the schedule's start)")
    assert {k["name"] for k in settings["recipe"]} == {"version", "description", "requires"}
    assert [k["name"] for k in settings["diagnostics"]][0] == "diagnostics.hessian_eigenvalue"
    assert main(["plugins"]) == 0
    assert "  data.train_portion" in capsys.readouterr().out


# --------------------------------------------------------------------------- declared names


def test_spaces_declare_zero_and_skip_ops():
    space = NB201Space(NB201Space.Config(ops=("skip_connect", "nor_conv_3x3")))
    assert (space.zero_ops(), space.skip_op(), space.primary_cell()) == (frozenset(), "skip_connect", "normal")
    assert NB201Space(NB201Space.Config(ops=("none", "nor_conv_3x3"))).skip_op() is None


def test_discretisers_and_rules_read_the_declarations(catalogue):
    # no zero op declared: top_k_edges may keep `none` (the space says it is an ordinary op)
    class NoneIsAnOp(NB201Space):
        def zero_ops(self):
            return frozenset()

    search = build_tiny_search(tiny_recipe(discretiser={"name": "top_k_edges", "params": {"k": 1}}), cat=catalogue)
    probs = {"normal": search.probabilities()["normal"] * 0 + 0.1}
    probs["normal"][:, 0] = 1.0  # `none` strongest everywhere
    search.probabilities = lambda: probs
    def kept_ops(genotype):
        return set(genotype.cells["normal"].ops())

    assert kept_ops(search.discretiser.discretise(search)) == {"skip_connect"}  # the runner-up, not `none`
    search.search_space = NoneIsAnOp(search.search_space.config)
    assert kept_ops(search.discretiser.discretise(search)) == {"none"}
    # DARTS+ counts the declared skip op of the declared primary cell
    rule = DartsPlusStop()
    rule._resolve(search)
    assert (rule.cell, rule.skip_op) == ("normal", "skip_connect")


def test_darts_minus_refuses_a_space_without_skip_op(catalogue):
    recipe = tiny_recipe(search_space={"name": "nb201", "params": {"C": 4, "N": 1, "ops": ["none", "nor_conv_3x3"]}},
                         regularisers=[{"name": "darts_minus_skip"}])
    with pytest.raises(PluginError, match="declares no skip_op"):
        build_tiny_search(recipe, cat=catalogue)
