"""Step diagnostics (``diagnostics.every_steps``, diffnas.core.step_records): what a record holds,
checked by hand against the search's α; recording never changes the search; a checkpoint carries
the records, so a killed and resumed run writes the same ones; a population member records what its
separate run does; metrics.jsonl, steps.csv, the API, ``diffnas show`` and the validation."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from diffnas import api
from diffnas.cli import main
from diffnas.core.cells import edge_ops
from diffnas.core.errors import DiffnasError, RecipeError
from diffnas.core.outputs import CHECKPOINT, TIMING_KEYS, load_checkpoint
from diffnas.testing import build_tiny_search, fresh_catalogue, run_tiny, tiny_recipe

FREE = {"none", "skip_connect", "avg_pool_3x3"}  # NB201's parameter-free ops


def _recipe(**diag):
    # a high α lr so that α visibly moves in 4 steps
    return tiny_recipe(diagnostics={"every_steps": 2, **diag},
                       trainer={"arch_optimizer": {"name": "adam", "lr": 0.05, "betas": [0.5, 0.999]}})


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_records_by_hand(catalogue):
    search, summary = run_tiny(_recipe(), cat=catalogue)
    hist = search.state.history
    # 2 epochs x 2 steps: before the first step, then every 2 global steps, each in its epoch's record
    assert [[s["global_step"] for s in h["steps"]] for h in hist] == [[0, 2], [4]]
    assert [[s["epoch"] for s in h["steps"]] for h in hist] == [[0, 0], [1]]
    first, last = hist[0]["steps"][0], hist[1]["steps"][-1]
    assert first["parameter_free_share"]["normal"] == pytest.approx(0.6, abs=2e-3)  # init α ~ 1e-3 randn
    assert first["skip_weight"]["normal"] == pytest.approx(0.2, abs=1e-3)
    assert first["entropy"]["normal"] == pytest.approx(math.log(5), abs=1e-5)
    # the last record is taken after the last step: the final α, by hand
    p = torch.softmax(search.alphas["normal"].detach().double(), -1)
    ops = edge_ops(search.cells["normal"])
    share = sum(sum(p[e, i] for i, op in enumerate(row) if op in FREE) for e, row in enumerate(ops)) / len(ops)
    skip = sum(p[e, row.index("skip_connect")] for e, row in enumerate(ops)) / len(ops)
    assert last["parameter_free_share"]["normal"] == pytest.approx(float(share), abs=1e-6)
    assert last["skip_weight"]["normal"] == pytest.approx(float(skip), abs=1e-6)
    assert abs(last["parameter_free_share"]["normal"] - first["parameter_free_share"]["normal"]) > 1e-3  # it moved
    # entropy, current genotype and its NB201 score as the epoch end records them
    assert last["entropy"] == hist[1]["entropy"]
    assert last["genotype"] == hist[1]["genotype"] and last["scores"] == hist[1]["scores"]
    assert 0.0 < last["scores"]["nb201"]["cifar10_test"] < 100.0
    assert "hessian_eigenvalue" not in last


def test_recording_does_not_change_the_search(catalogue):
    on, s_on = run_tiny(_recipe(every_steps=1, step_hessian=True, iterations=3), cat=catalogue)
    off, s_off = run_tiny(tiny_recipe(trainer={"arch_optimizer": {"name": "adam", "lr": 0.05, "betas": [0.5, 0.999]}}),
                          cat=catalogue)
    assert torch.equal(on.alphas["normal"], off.alphas["normal"])
    for a, b in zip(on.model.state_dict().values(), off.model.state_dict().values()):
        assert torch.equal(a, b)
    assert _strip([{k: v for k, v in r.items() if k != "steps"} for r in on.history]) == _strip(off.history)
    assert s_on["genotype"] == s_off["genotype"]
    steps = [s for h in on.history for s in h["steps"]]
    assert [s["global_step"] for s in steps] == [0, 1, 2, 3, 4]
    assert all(isinstance(s["hessian_eigenvalue"], float) and s["hessian_eigenvalue"] != 0.0 for s in steps)
    assert all("steps" not in r for r in off.history)


def test_files_api_and_show(tmp_path, capsys):
    run_dir = tmp_path / "run"
    api.search(_recipe(), out=run_dir, cat=fresh_catalogue(), progress=False)
    run = api.load_run(run_dir)
    assert run.step_column("global_step") == [0, 2, 4]
    assert run.step_column("parameter_free_share.normal") == [s["parameter_free_share"]["normal"] for s in run.steps]
    with pytest.raises(DiffnasError, match="no step record has the column 'parameter_free_share.nromal'.*did you mean "
                                           "'parameter_free_share.normal'"):
        run.step_column("parameter_free_share.nromal")
    assert "skip_weight.normal" in run.step_columns()
    assert run.column("epoch") == [0, 1]  # the epoch API is unchanged
    rows = list(csv.DictReader((run_dir / "steps.csv").open()))
    assert [int(r["global_step"]) for r in rows] == [0, 2, 4]
    assert list(rows[0])[:2] == ["global_step", "epoch"]
    assert float(rows[2]["parameter_free_share.normal"]) == run.steps[2]["parameter_free_share"]["normal"]
    assert float(rows[1]["scores.nb201.cifar10_test"]) == run.steps[1]["scores"]["nb201"]["cifar10_test"]
    assert "genotype" not in rows[0] and "steps" not in next(csv.DictReader((run_dir / "scalars.csv").open()))
    capsys.readouterr()
    assert main(["show", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "step records: 3 (all in steps.csv)" in out
    header = next(line for line in out.splitlines() if "param-free share normal" in line).split()
    assert header[:4] == ["step", "param-free", "share", "normal"] and "skip" in header and "score" in header
    row = next(line for line in out.splitlines() if line.split()[:1] == ["4"] and len(line.split()) >= 5).split()
    assert float(row[1]) == pytest.approx(run.steps[2]["parameter_free_share"]["normal"], abs=5e-4)
    off = tmp_path / "off"
    api.search(tiny_recipe(), out=off, cat=fresh_catalogue(), progress=False)
    assert not (off / "steps.csv").exists()
    capsys.readouterr()
    assert main(["show", str(off)]) == 0 and "step records" not in capsys.readouterr().out


def _search_killed_after_checkpoint(recipe, out, monkeypatch, when):
    """Run ``recipe`` into ``out`` and stop it (KeyboardInterrupt) right after the first checkpoint
    written where ``when(search)`` holds."""
    from diffnas.core import outputs

    orig = outputs.RunWriter.checkpoint

    def checkpoint_then_die(self):
        orig(self)
        if when(self.search):
            raise KeyboardInterrupt

    monkeypatch.setattr(outputs.RunWriter, "checkpoint", checkpoint_then_die)
    with pytest.raises(KeyboardInterrupt):
        api.search(recipe, out=out, cat=fresh_catalogue(), progress=False)
    monkeypatch.undo()


def test_checkpoint_carries_the_records_and_a_resume_repeats_them(tmp_path, monkeypatch):
    """Killed right after the checkpoint of global step 5 (mid-epoch 1, no record pending: 5 is not
    a multiple of 3), the resumed run writes the same records as an uninterrupted one."""
    r = _recipe(every_steps=3)
    r["trainer"].update(epochs=2, steps_per_epoch=4, deterministic=True)
    r["output"]["checkpoint_every_steps"] = 1
    ref = tmp_path / "ref"
    api.search(r, out=ref, cat=fresh_catalogue(), progress=False)
    run = tmp_path / "run"
    _search_killed_after_checkpoint(r, run, monkeypatch, lambda search: search.state.global_step == 5)
    state = load_checkpoint(run / CHECKPOINT)["state"]
    assert (state["epoch"], state["step"]) == (1, 1)
    assert [s["global_step"] for s in state["step_records"]] == []  # 5 is not a multiple of 3
    assert [s["global_step"] for s in state["history"][0]["steps"]] == [0, 3]
    api.resume(run, cat=fresh_catalogue(), progress=False)
    strip = lambda p: _strip(json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines())  # noqa: E731
    assert strip(run) == strip(ref)
    assert [s["global_step"] for s in api.load_run(run).steps] == [0, 3, 6]
    assert (run / "steps.csv").read_text() == (ref / "steps.csv").read_text()


def test_pending_records_survive_a_mid_epoch_checkpoint(tmp_path, monkeypatch):
    r = _recipe(every_steps=1)
    r["trainer"].update(epochs=1, steps_per_epoch=3, deterministic=True)
    r["output"]["checkpoint_every_steps"] = 2
    ref = tmp_path / "ref"
    api.search(r, out=ref, cat=fresh_catalogue(), progress=False)
    run = tmp_path / "run"
    _search_killed_after_checkpoint(r, run, monkeypatch, lambda search: True)
    state = load_checkpoint(run / CHECKPOINT)["state"]
    assert (state["step"], [s["global_step"] for s in state["step_records"]]) == (2, [0, 1, 2])
    api.resume(run, cat=fresh_catalogue(), progress=False)
    want = json.loads((ref / "metrics.jsonl").read_text())["steps"]
    assert json.loads((run / "metrics.jsonl").read_text())["steps"] == want
    assert [s["global_step"] for s in want] == [0, 1, 2, 3]


def test_population_member_records_what_its_separate_run_does(tmp_path):
    from diffnas.core.population import build_population
    from diffnas.core.recipe import resolve_recipe

    cat = fresh_catalogue()
    recipes = []
    for seed, alr in ((0, 0.05), (1, 0.02)):
        r = _recipe(every_steps=1, step_hessian=True, iterations=2)
        r["trainer"].update(seed=seed)
        r["trainer"]["arch_optimizer"]["lr"] = alr
        recipes.append(r)
    sep = []
    for i, r in enumerate(recipes):
        s = build_tiny_search(r, tmp_path / f"sep{i}", cat)
        s.run(progress=False)
        sep.append(api.load_run(tmp_path / f"sep{i}").steps)
    pop = build_population([(resolve_recipe(r, cat), tmp_path / f"pop{i}", None) for i, r in enumerate(recipes)],
                           cat.pm, cat)
    pop.run()
    for i, want in enumerate(sep):
        got = api.load_run(tmp_path / f"pop{i}").steps
        assert [s["global_step"] for s in got] == [0, 1, 2, 3, 4]
        assert [s["genotype"] for s in got] == [s["genotype"] for s in want]
        for a, b in zip(got, want):
            for key in ("parameter_free_share", "skip_weight", "entropy"):
                assert a[key]["normal"] == pytest.approx(b[key]["normal"], abs=1e-6), (i, key)
            assert a["hessian_eigenvalue"] == pytest.approx(b["hessian_eigenvalue"], rel=1e-3, abs=1e-6)
        assert (tmp_path / f"pop{i}" / "steps.csv").exists()


def test_settings_are_validated_and_listed(catalogue, capsys):
    from diffnas.core.recipe import resolve_recipe

    with pytest.raises(RecipeError) as exc:
        resolve_recipe(tiny_recipe(diagnostics={"step_hessian": True}), catalogue)
    assert "every_steps > 0" in str(exc.value) and "recipe.diagnostics" in str(exc.value)
    with pytest.raises(RecipeError) as exc:
        resolve_recipe(tiny_recipe(diagnostics={"every_steps": -1}), catalogue)
    assert "'every_steps' must be >= 0" in str(exc.value)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics.every_steps" in out and "diagnostics.step_hessian" in out
