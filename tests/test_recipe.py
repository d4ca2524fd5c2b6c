import pytest

from diffnas.core.errors import RecipeError
from diffnas.core.recipe import apply_overrides, load_recipe, resolve_recipe
from diffnas.testing import tiny_recipe


def problems(data, catalogue):
    with pytest.raises(RecipeError) as info:
        resolve_recipe(data, catalogue, source="r.yaml")
    return info.value


def test_tiny_recipe_resolves_with_defaults(catalogue):
    r = resolve_recipe(tiny_recipe(), catalogue)
    assert r.recipe.trainer.weights_optimizer.nesterov is True  # NB201 default filled in
    assert r.configs["search_space"].C == 4
    d = r.to_dict()
    assert d["search_space"]["params"] == {"C": 4, "N": 1, "ops": ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]}
    assert d["relaxation"]["params"] == {"tau": 1.0, "init_std": 0.001}
    assert d["trainer"]["arch_optimizer"]["betas"] == [0.5, 0.999]
    # the resolved recipe resolves again to the same thing
    assert resolve_recipe(d, catalogue).to_dict() == d


def test_all_problems_reported_at_once(catalogue):
    data = tiny_recipe(trainer={"epochs": -1, "batch_size": "64", "bogus": 1}, relaxation={"name": "sofmax"},
                       search_space={"name": "nb201", "params": {"C": "16"}})
    err = problems(data, catalogue)
    text = str(err)
    assert text.startswith("invalid recipe r.yaml:")
    paths = {p for _, p in err.problems}
    assert "recipe.trainer" in paths  # the unknown key
    assert "recipe.trainer.batch_size" in paths
    assert "recipe.relaxation.name" in paths
    assert "recipe.search_space.params.C" in paths
    assert "did you mean 'softmax'?" in text
    assert "unknown key(s): 'bogus'" in text
    assert "expected an integer, got str '64'" in text


def test_validator_messages_name_the_field(catalogue):
    err = problems(tiny_recipe(trainer={"epochs": 0}), catalogue)
    assert ("'epochs' must be > 0, got 0", "recipe.trainer.epochs") in err.problems


def test_booleans_and_strings_are_not_coerced(catalogue):
    err = problems(tiny_recipe(trainer={"deterministic": "false", "device": 3}), catalogue)
    msgs = dict((p, m) for m, p in err.problems)
    assert msgs["recipe.trainer.deterministic"].startswith("expected a boolean")
    assert msgs["recipe.trainer.device"].startswith("expected a string")


def test_yaml_scientific_notation_hint(catalogue):
    err = problems(tiny_recipe(trainer={"arch_optimizer": {"lr": "1e-3"}}), catalogue)
    assert "YAML reads 1e-3 as a string" in str(err)


def test_plugin_params_are_strict(catalogue):
    err = problems(tiny_recipe(update_rule={"name": "bilevel", "params": {"order": 3, "xi2": 1}}), catalogue)
    text = str(err)
    assert "@ recipe.update_rule.params" in text
    assert "'xi2'" in text


def test_unknown_list_plugin_and_dataset(catalogue):
    err = problems(tiny_recipe(schedules=[{"name": "lineer", "params": {}}], data={"dataset": "cifar11"}), catalogue)
    paths = {p for _, p in err.problems}
    assert "recipe.schedules[0].name" in paths and "recipe.data.dataset" in paths


def test_yaml_syntax_error_names_line(tmp_path, catalogue):
    p = tmp_path / "bad.yaml"
    p.write_text("trainer:\n  epochs: [1, 2\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(p, catalogue)
    assert str(p) in str(info.value) and "line" in str(info.value)


def test_overrides():
    d = apply_overrides({"trainer": {"epochs": 1}, "regularisers": [{"name": "x"}]},
                        ["trainer.epochs=5", "search_space.params.C=8", "regularisers.0.name=y", "trainer.arch_optimizer.lr=1.0e-3"])
    assert d["trainer"]["epochs"] == 5 and d["search_space"]["params"]["C"] == 8
    assert d["regularisers"][0]["name"] == "y" and d["trainer"]["arch_optimizer"]["lr"] == 1e-3
    with pytest.raises(RecipeError):
        apply_overrides({}, ["no-equals-sign"])


def test_schedule_target_checked(catalogue):
    from diffnas.testing import build_tiny_search

    r = tiny_recipe(schedules=[{"name": "linear", "params": {"target": "relaxation.temp", "start": 1.0, "end": 0.5}}])
    with pytest.raises(RecipeError) as info:
        build_tiny_search(r, cat=catalogue)
    assert "relaxation.tau" in str(info.value) and "recipe.schedules[0].params.target" in str(info.value)
