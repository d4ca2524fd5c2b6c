"""``trainer.dtype``: a search computed in float64 (or float32) whatever torch's default is, and the
default left as it was; float64 is what makes a CPU search's result independent of the thread count
(tests/test_quickstart.py)."""

from __future__ import annotations

import json

import pytest
import torch

from diffnas import api
from diffnas.core.errors import RecipeError
from diffnas.core.outputs import CHECKPOINT, load_checkpoint
from diffnas.core.hookspecs import hookimpl
from diffnas.testing import build_tiny_search, fresh_catalogue, registered, run_tiny, tiny_recipe


def _records(d):
    return [{k: v for k, v in json.loads(x).items() if k not in ("time_s", "epoch_elapsed", "elapsed_s")}
            for x in (d / "metrics.jsonl").read_text().splitlines()]


def test_float64_search_is_the_search_under_a_float64_default_and_leaves_the_default_alone(tmp_path, float64):
    """dtype float64 under a float32 default computes what dtype null computes under a float64
    default (the setting the float64 exactness tests use), number for number."""
    recipe = tiny_recipe(trainer={"epochs": 2, "dtype": "float64"})
    ref, _ = run_tiny(tiny_recipe(trainer={"epochs": 2}), tmp_path / "default64")  # dtype null: the default, float64
    torch.set_default_dtype(torch.float32)
    s = build_tiny_search(recipe, tmp_path / "run")
    assert torch.get_default_dtype() == torch.float32  # building set it back
    assert {p.dtype for p in s.model.parameters()} == {a.dtype for a in s.alphas.values()} == {torch.float64}
    assert s.train_loader.mean.dtype == torch.float64  # the batches are normalised in it
    s.run(progress=False)
    assert torch.get_default_dtype() == torch.float32  # and so did running
    ra, rb = _records(tmp_path / "default64"), _records(tmp_path / "run")
    assert [r["alphas"] for r in ra] == [r["alphas"] for r in rb] and [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]
    assert str(ref.final_genotype) == str(s.final_genotype)
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert {a.dtype for a in ckpt["alphas"].values()} == {torch.float64}


def test_float32_search_under_a_float64_default(float64):
    s = build_tiny_search(tiny_recipe(trainer={"epochs": 1, "dtype": "float32"}))
    assert {p.dtype for p in s.model.parameters()} == {a.dtype for a in s.alphas.values()} == {torch.float32}
    s.run(progress=False)
    assert torch.get_default_dtype() == torch.float64
    assert all(a.dtype == torch.float32 for a in s.alphas.values())


class _Kill(Exception):
    pass


def test_float64_run_resumes_in_float64(tmp_path):
    """A resumed run is rebuilt from its own recipe, so it continues in float64 and ends as the
    uninterrupted run."""
    recipe = tiny_recipe(trainer={"epochs": 2, "dtype": "float64", "deterministic": True})
    run_tiny(recipe, tmp_path / "full")

    class Killer:
        @hookimpl
        def diffnas_epoch_start(self, search, epoch: int):
            if epoch == 1:
                raise _Kill

    s = build_tiny_search(recipe, tmp_path / "part")
    with registered(s.pm, Killer()), pytest.raises(_Kill):
        s.run(progress=False)
    api.resume(tmp_path / "part", progress=False)
    part = api.load_run(tmp_path / "part")
    assert [r["alphas"] for r in part.history] == [r["alphas"] for r in _records(tmp_path / "full")]
    assert {a.dtype for a in load_checkpoint(tmp_path / "part" / CHECKPOINT)["alphas"].values()} == {torch.float64}


def test_dtype_is_validated_and_refused_with_autocast():
    cat = fresh_catalogue()
    with pytest.raises(RecipeError, match=r"'dtype' must be one of None, 'float32', 'float64', got 'float16' "
                                          r"@ recipe.trainer.dtype"):
        build_tiny_search(tiny_recipe(trainer={"dtype": "float16"}), cat=cat)
    with pytest.raises(RecipeError, match=r"autocast 'bf16' computes the forward pass in half precision, which undoes "
                                          r"dtype float64.* @ recipe.trainer.autocast"):
        build_tiny_search(tiny_recipe(trainer={"dtype": "float64", "autocast": "bf16"}), cat=cat)


def test_population_members_must_share_the_dtype(tmp_path):
    members = [tiny_recipe(trainer={"dtype": "float64"}), tiny_recipe(trainer={"dtype": "float32", "seed": 1})]
    with pytest.raises(RecipeError, match=r"differs from population\[0\] in trainer.dtype.* @ population\[1\].trainer.dtype"):
        api.search_population(members, [None, None], cat=fresh_catalogue())
