"""``data.train_portion: 1.0``: the whole training set in the weights' half, for update rules that draw no
validation batch (single-level, as Single-DARTS App. D); refused, naming the key, for rules that need one."""

import pytest

from diffnas.core.errors import DataError, RecipeError
from diffnas.core.protocols import Split
from diffnas.core.recipe import resolve_recipe
from diffnas.data.datasets import split_train_valid
from diffnas.testing import run_tiny, tiny_recipe

import torch


@pytest.mark.parametrize("rule", [{"name": "bilevel"}, {"name": "mixed_level"}])
def test_refused_for_rules_that_draw_validation_batches(rule, catalogue):
    with pytest.raises(RecipeError) as exc:
        resolve_recipe(tiny_recipe(update_rule=rule, data={"train_portion": 1.0}), catalogue)
    msg = str(exc.value)
    assert "recipe.data.train_portion" in msg and "leaves no validation half" in msg and rule["name"] in msg


def test_single_level_trains_on_every_image_and_records_no_held_out_metrics(catalogue):
    search, summary = run_tiny(tiny_recipe(update_rule={"name": "single_level"}, data={"train_portion": 1.0},
                                           trainer={"steps_per_epoch": None}), cat=catalogue)
    assert len(search.data.train) == 64 and len(search.data.valid) == 0
    assert search.valid_loader is None and search.held_out_loader is None
    assert search.steps_per_epoch == 8  # 64 images, batch 8: twice the steps of the 0.5 split
    rec = search.history[-1]
    assert rec["train_images"] == 64
    # no held-out half: no valid metrics (the test split is never measured during a search)
    assert "valid_loss" not in rec and "valid_acc" not in rec
    assert summary["genotype"]


def test_a_portion_below_one_that_rounds_to_an_empty_half_is_still_refused():
    train = Split(torch.zeros(10, 2, 2, 3, dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
    assert [len(s) for s in split_train_valid(train, 1.0, 0, None)] == [10, 0]
    with pytest.raises(DataError, match="leaves an empty split"):
        split_train_valid(train, 0.99, 0, None)
