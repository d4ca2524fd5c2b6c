"""The example recipes carry the authors' settings where a code audit found the defaults had drifted
(METHODS.md, "Corrections found by comparing the implementation with the authors' code"). Each
expected value names the file of the authors' code it comes from, so that it cannot drift back.
"""

from pathlib import Path

import pytest
import yaml

from diffnas.core.recipe import resolve_recipe

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"


def resolved(stem, catalogue):
    path = RECIPES / f"{stem}.yaml"
    return resolve_recipe(yaml.safe_load(path.read_text()), catalogue, source=str(path)).to_dict()


# first-order NB201 searches built on xautodl step w, then α (exps/NAS-Bench-201-algos/DARTS-V1.py,
# GDAS.py and the chaoji90 scripts derived from them); DARTS-V2 and the DARTS-space code step α first
STEP_ORDER = {
    "nb201_darts_v1": "weights_first", "nb201_sparse_noisy": "weights_first", "nb201_sparse_noisy_edd": "weights_first",
    "nb201_mixed_sparsity": "weights_first", "nb201_lr_swap": "weights_first", "nb201_selective_stop": "weights_first",
    "nb201_darts_minus": "weights_first", "nb201_beta_darts": "weights_first", "nb201_darts_plus": "weights_first",
    "nb201_degeneracy": "weights_first", "nb201_gdas": "weights_first", "quickstart": "weights_first",
    "nb201_darts_v2": "arch_first", "nb201_drnas": "arch_first",
    "darts_darts_v1": "arch_first", "darts_darts_v2": "arch_first", "darts_fair_darts": "arch_first",
    "darts_pt": "arch_first", "lhd_darts": "arch_first",
}


@pytest.mark.parametrize("stem", sorted(STEP_ORDER))
def test_bilevel_step_order_of_each_recipe(stem, catalogue):
    rule = resolved(stem, catalogue)["update_rule"]
    assert rule["name"] == "bilevel"
    assert rule["params"]["step_order"] == STEP_ORDER[stem]


def test_every_bilevel_recipe_is_in_the_step_order_table(catalogue):
    bilevel = {p.stem for p in RECIPES.glob("*.yaml") if "name: bilevel" in p.read_text()}
    assert bilevel == set(STEP_ORDER)
