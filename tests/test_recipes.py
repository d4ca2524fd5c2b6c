"""Every example recipe validates and its CPU smoke version runs (tiny supernet, two steps an epoch).

The smoke version of a recipe keeps all of its components and their parameters and shrinks only
what costs time: the supernet's width and depth, the data (synthetic 8×8 images), the epochs and
the steps per epoch.
"""

import math
from pathlib import Path

import pytest
import yaml

from diffnas.core.recipe import apply_overrides, resolve_recipe
from diffnas.testing import run_tiny

RECIPES = sorted((Path(__file__).resolve().parents[1] / "examples" / "recipes").glob("*.yaml"))

SMOKE_SPACE = {"nb201": ["search_space.params.C=4", "search_space.params.N=1"],
               "darts": ["search_space.params.C=4", "search_space.params.layers=3"],
               "lhd": ["search_space.params.C=4", "search_space.params.layers=3", "search_space.params.steps=3"]}
SMOKE_COMMON = ["data.dataset=synthetic", "data.params={num_train: 64, num_test: 16, image_size: 8}", "data.limit=null",
                "trainer.epochs=2", "trainer.batch_size=8", "trainer.steps_per_epoch=2", "trainer.device=cpu",
                "output={progress: false, draw_cells: false}"]
SMOKE_DISCRETISER = {"darts_pt": ["discretiser.params.eval_batches=1", "discretiser.params.tune_steps=1"]}


def smoke(recipe: dict) -> dict:
    over = SMOKE_SPACE[recipe["search_space"]["name"]] + SMOKE_COMMON + SMOKE_DISCRETISER.get(recipe["discretiser"]["name"], [])
    return apply_overrides(recipe, over)


def test_there_is_a_recipe_per_published_method():
    names = {p.stem for p in RECIPES}
    for needed in ("nb201_darts_v1", "nb201_darts_v2", "darts_darts_v1", "darts_darts_v2", "nb201_single_darts_softmax",
                   "nb201_single_darts_sigmoid", "nb201_gdas", "nb201_sparse_noisy", "nb201_mixed_sparsity",
                   "nb201_degeneracy", "nb201_lr_swap", "nb201_darts_minus", "nb201_beta_darts", "darts_fair_darts"):
        assert needed in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_states_its_paper_and_number(path):
    head = path.read_text().split("version:")[0]
    assert "Paper:" in head or path.stem == "quickstart"
    assert "Published" in head or path.stem == "quickstart"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_smoke_version_runs(path, catalogue):
    recipe = yaml.safe_load(path.read_text())
    full = resolve_recipe(recipe, catalogue, source=str(path))
    search, summary = run_tiny(smoke(recipe), cat=catalogue)
    small = search.resolved
    # the smoke version keeps every component and its parameters
    for slot in ("relaxation", "update_rule", "regularisers", "schedules"):
        assert small.to_dict()[slot] == full.to_dict()[slot], slot
    assert small.recipe.discretiser.name == full.recipe.discretiser.name
    assert summary["epochs_run"] >= 1
    for record in search.state.history:
        assert math.isfinite(record["train_loss"])
    assert summary["genotype"]
    if recipe["search_space"]["name"] == "nb201":
        assert "nb201" in summary["scores"]
