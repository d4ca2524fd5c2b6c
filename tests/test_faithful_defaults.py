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
# GDAS.py and the chaoji90 scripts derived from them); DARTS-V2 and the DARTS-space code step α first.
# β-DARTS and SDARTS on NB201 come from Sunshine-Ye/Beta-DARTS nasbench201/train_search.py, whose train()
# calls architect.step(...) before the (perturbed) weight step: α first.
STEP_ORDER = {
    "nb201_darts_v1": "weights_first", "nb201_sparse_noisy": "weights_first", "nb201_sparse_noisy_edd": "weights_first",
    "nb201_mixed_sparsity": "weights_first", "nb201_lr_swap": "weights_first", "nb201_selective_stop": "weights_first",
    "nb201_darts_minus": "weights_first", "nb201_beta_darts": "arch_first", "nb201_darts_plus": "weights_first",
    "nb201_degeneracy": "weights_first", "nb201_gdas": "weights_first", "quickstart": "weights_first",
    "nb201_darts_v2": "arch_first", "nb201_drnas": "arch_first",
    "nb201_sdarts_rs": "arch_first", "nb201_sdarts_adv": "arch_first",
    "darts_sdarts_rs": "arch_first", "darts_sdarts_adv": "arch_first",
    "nb201_cifar100_darts_v1": "weights_first", "nb201_imagenet16_120_darts_v1": "weights_first",
    "darts_darts_v1": "arch_first", "darts_darts_v2": "arch_first", "darts_fair_darts": "arch_first",
    "darts_pt": "arch_first", "lhd_darts": "arch_first",
    # yuhuixu1993/PC-DARTS and lightaime/sgas train_search.py: architect.step(...) before the weight step
    "nb201_pc_darts": "arch_first", "darts_pc_darts": "arch_first", "darts_sgas": "arch_first",
}


@pytest.mark.parametrize("stem", sorted(STEP_ORDER))
def test_bilevel_step_order_of_each_recipe(stem, catalogue):
    rule = resolved(stem, catalogue)["update_rule"]
    assert rule["name"] == "bilevel"
    assert rule["params"]["step_order"] == STEP_ORDER[stem]


def test_every_bilevel_recipe_is_in_the_step_order_table(catalogue):
    bilevel = {p.stem for p in RECIPES.glob("*.yaml") if "name: bilevel" in p.read_text()}
    assert bilevel == set(STEP_ORDER)


def test_edd_warms_up_ten_epochs_on_nb201(catalogue):
    # AutoDL-Projects_edd/exps/algos/DARTS-V1-10.py and -100.py: warmup=10 (PCD's CIFAR-10 script uses 5)
    r = resolved("nb201_sparse_noisy_edd", catalogue)
    assert [(s["name"], s["params"]["warmup"]) for s in r["schedules"]] == [("edd_tau", 10)]
    assert r["relaxation"]["params"]["extra_grad"] is False  # the NB201 EDD script adds no τ = 1 term


def test_drnas_regularises_with_l2_only_and_plain_sgd(catalogue):
    # xiangning-chen/DrNAS 201-space/train_search.py: reg_type l2 (α weight decay 1e-3) by default, or kl
    # with weight decay 0, never both; SGD without Nesterov
    r = resolved("nb201_drnas", catalogue)
    assert r["regularisers"] == []
    assert r["trainer"]["arch_optimizer"]["weight_decay"] == 1e-3
    w = r["trainer"]["weights_optimizer"]
    assert (w["nesterov"], w["weight_decay"], w["lr"], w["lr_min"]) == (False, 3e-4, 0.025, 0.001)


def test_beta_darts_weights_optimizer(catalogue):
    # Sunshine-Ye/Beta-DARTS: weight decay 3e-4, no Nesterov
    w = resolved("nb201_beta_darts", catalogue)["trainer"]["weights_optimizer"]
    assert (w["nesterov"], w["weight_decay"]) == (False, 3e-4)


def test_fair_darts_searches_seven_ops_without_none(catalogue):
    # xiaomi-automl/FairDARTS PRIMITIVES: the DARTS set without `none`
    ops = resolved("darts_fair_darts", catalogue)["search_space"]["params"]["ops"]
    assert list(ops) == ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                         "dil_conv_3x3", "dil_conv_5x5"]


def test_selective_stop_uses_the_authors_nb201_learning_rates(catalogue):
    # chaoji90/Selective-Stop AutoDL-Projects_ss/exps/algos/DARTS-V1.py: weights at a constant 0.015, α 1e-3
    t = resolved("nb201_selective_stop", catalogue)["trainer"]
    assert (t["weights_optimizer"]["lr"], t["weights_optimizer"]["schedule"]) == (0.015, "constant")
    assert t["arch_optimizer"]["lr"] == 1e-3


def test_degeneracy_recipe_uses_the_reachable_depth_target(catalogue):
    depth = next(r for r in resolved("nb201_degeneracy", catalogue)["regularisers"] if r["name"] == "degeneracy_depth")
    assert depth["params"]["target_depth"] is None and depth["params"]["depth_fraction"] == 0.9


@pytest.mark.parametrize("stem", ["nb201_single_darts_sigmoid", "nb201_single_darts_softmax", "darts_single_darts",
                                  "nb201_cifar100_single_darts", "nb201_imagenet16_120_single_darts"])
def test_single_darts_searches_the_full_training_set(stem, catalogue):
    # Single-DARTS App. D: single-level optimisation needs no validation half, so it trains on all of it
    r = resolved(stem, catalogue)
    assert r["update_rule"]["name"] == "single_level" and r["data"]["train_portion"] == 1.0


def test_darts_minus_decays_beta_over_fifty_epochs(catalogue):
    # Meituan-AutoML/DARTS- src/utils.py DecayScheduler: linear, decay_max_epoch = 50, whatever the run's length
    regs = resolved("nb201_darts_minus", catalogue)["regularisers"]
    assert [(g["name"], g["params"]["decay"], g["params"]["decay_epochs"]) for g in regs] == [("darts_minus_skip", "linear", 50)]
