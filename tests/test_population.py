"""Population-fused search (diffnas.core.population): each member of a K=3 population matches its
separate run step for step in float64 (α, weights, optimiser state, every metrics.jsonl field except
wall-clock time, the genotype), for DARTS-V1, DARTS-V2, single-level, a scheduled τ and a
regulariser; the member-wise optimisers match torch.optim; a population resumes; what cannot be
fused is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from diffnas.core.errors import RecipeError
from diffnas.core.outputs import CHECKPOINT, TIMING_KEYS, load_checkpoint
from diffnas.core.population import (MemberwiseAdam, MemberwiseSGD, build_population, clip_grad_norm_members)
from diffnas.core.recipe import OptimizerConfig, resolve_recipe
from diffnas.testing import build_tiny_search, fresh_catalogue, tiny_recipe


def _members(**over):
    """Three recipes of one composition that differ in seed and numeric hyperparameters."""
    base = tiny_recipe(**over)
    out = []
    for k, (seed, lr, alr) in enumerate([(0, 0.025, 3.0e-4), (1, 0.05, 1.0e-3), (2, 0.01, 6.0e-4)]):
        r = json.loads(json.dumps(base))
        r["trainer"].update(seed=seed, epochs=2, steps_per_epoch=2)
        r["trainer"]["weights_optimizer"] = {"name": "sgd", "lr": lr, "momentum": [0.9, 0.9, 0.8][k], "nesterov": True,
                                             "weight_decay": 5.0e-4 * (k + 1), "schedule": "cosine", "lr_min": 0.001}
        r["trainer"]["arch_optimizer"] = {"name": "adam", "lr": alr, "betas": [[0.5, 0.999], [0.5, 0.999], [0.6, 0.99]][k],
                                           "weight_decay": 1.0e-3 * k}
        r["trainer"]["grad_clip"] = [5.0, 0.05, 1.0][k]  # member 1 clips on every step
        out.append(r)
    return out


def _records(d: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (d / "metrics.jsonl").read_text().splitlines()]


def _assert_close_tree(a, b, path="", tol=1e-9):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k in TIMING_KEYS or k == "epoch_elapsed":
                continue
            _assert_close_tree(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_tree(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=tol, abs=tol), path
    else:
        assert a == b, path


def _compare(recipes, tmp_path, tol=1e-9, cat=None, step_graph=None):
    cat = cat or fresh_catalogue()
    sep = []
    for i, r in enumerate(recipes):
        s = build_tiny_search(r, tmp_path / f"sep{i}", cat)
        s.run(progress=False)
        sep.append(s)
    items = [(resolve_recipe(r, cat), tmp_path / f"pop{i}", None) for i, r in enumerate(recipes)]
    pop = build_population(items, cat.pm, cat, step_graph=step_graph)
    summaries = pop.run()
    for i, s in enumerate(sep):
        a, b = tmp_path / f"sep{i}", tmp_path / f"pop{i}"
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        ra, rb = _records(a), _records(b)
        _assert_close_tree(ra, rb, f"member {i} metrics", tol)
        assert [r["genotype"] for r in ra] == [r["genotype"] for r in rb]
        ca, cb = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
        for key in ("model", "alphas", "w_optimizer", "a_optimizer", "state", "components", "loaders", "rng",
                    "epoch_sums", "nonfinite_step", "pending_stop"):
            _assert_close_tree(ca[key], cb[key], f"member {i} checkpoint {key}", tol)
        assert summaries[i]["genotype"] == s.final_genotype.__str__()
    return sep, pop


def test_population_darts_v1_matches_separate_runs(tmp_path, float64):
    """Also with the epoch-end evaluation of the relaxed supernet (the member's own, synced)."""
    rs = _vary(_members(), lambda k, r: r["trainer"].update(eval_batches=1))
    _compare(rs, tmp_path)
    assert "eval_loss" in _records(tmp_path / "pop0")[0]


def test_population_single_level_matches_separate_runs(tmp_path, float64):
    _compare(_members(update_rule={"name": "single_level"}), tmp_path)


def _vary(recipes, fn):
    for k, r in enumerate(recipes):
        fn(k, r)
    return recipes


def test_population_weights_first_matches_separate_runs(tmp_path, float64):
    """bilevel's step_order weights_first (the NB201 first-order recipes' order)."""
    rs = _vary(_members()[:2], lambda k, r: r.update(update_rule={"name": "bilevel", "params": {"order": 1, "step_order": "weights_first"}}))
    _compare(rs, tmp_path)


def _guide_rule_plugin():
    """The update rule of docs/plugins.md's package (tests/guide_plugin), registered as a plugin
    would: it has one ``step`` and not a line for populations."""
    import importlib.util

    from diffnas.core.hookspecs import hookimpl

    path = Path(__file__).parent / "guide_plugin" / "src" / "diffnas_guide" / "update_rule.py"
    spec = importlib.util.spec_from_file_location("guide_update_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Plugin:
        @hookimpl
        def diffnas_register_update_rules(self, register):
            register("guide_weights_first", module.WeightsFirst)

    return Plugin()


def test_population_runs_the_guide_packages_update_rule(tmp_path, float64):
    """A third-party rule written against Search's building blocks steps a population unchanged,
    each member ending as its separate run (float64, 1e-9); members differ in seed and α lr."""
    rs = _vary(_members(), lambda k, r: r.update(update_rule={"name": "guide_weights_first"}))
    _compare(rs, tmp_path, cat=fresh_catalogue(_guide_rule_plugin()))


def test_population_darts_v2_matches_separate_runs(tmp_path, float64):
    rs = _vary(_members(), lambda k, r: r.update(update_rule={"name": "bilevel", "params": {"order": 2, "epsilon": 0.01 * (k + 1)}}))
    _compare(rs, tmp_path)


def test_population_darts_v2_follows_each_members_scheduled_epsilon(tmp_path, float64):
    """ξ and ε are read from the update rule's runtime hparams, as a separate run reads them, so a
    schedule on ``update_rule.epsilon`` reaches every member's finite difference."""
    rs = _vary(_members(), lambda k, r: (
        r.update(update_rule={"name": "bilevel", "params": {"order": 2}}),
        r.update(schedules=[{"name": "linear", "params": {"target": "update_rule.epsilon", "start": 0.01,
                                                          "end": 0.5 * (k + 1)}}])))
    sep, _ = _compare(rs, tmp_path)
    assert [s.update_rule.hparams["epsilon"] for s in sep] != [0.01] * 3  # the schedule moved it


def _noise_plugin(python_random: bool = True):
    """A test regulariser drawing from torch's and Python's global RNGs (per-member RNG streams);
    ``python_random=False``: from torch's only, so that it is graph-safe (registered as ``pop_cuda_noise``)."""
    import random

    import attrs

    from diffnas.core.hookspecs import hookimpl
    from diffnas.core.protocols import Regulariser

    class Noise(Regulariser):
        """Test regulariser: a random α term from the global RNGs."""

        @attrs.frozen
        class Config:
            weight: float = 0.05

        def loss(self, search, phase):
            scale = self.config.weight * ((1.0 + random.random()) if python_random else 1.0)
            return scale * sum((torch.randn_like(a) * a).sum() for a in search.alphas.values())

    class Plugin:
        @hookimpl
        def diffnas_register_regularisers(self, register):
            register("pop_noise" if python_random else "pop_cuda_noise", Noise)

    return Plugin()


def test_population_schedule_regularisers_and_early_stop_match(tmp_path, float64):
    """Per-member τ schedules with different endpoints, β-DARTS with different slopes, an RNG-drawing
    regulariser, the degeneracy cap (acts after each α step) and a stop rule that ends member 0 early
    (it leaves, the others go on)."""
    def vary(k, r):
        r["trainer"]["epochs"] = 3
        r["schedules"] = [{"name": "linear", "params": {"target": "relaxation.tau", "start": 1.0, "end": 0.3 + 0.2 * k}}]
        r["regularisers"] = [{"name": "beta_darts", "params": {"slope": 0.5 * (k + 1)}},
                             {"name": "pop_noise", "params": {"weight": 0.01 * (k + 1)}}]
        if k == 0:
            r["regularisers"].append({"name": "darts_plus_stop", "params": {"max_skips": None, "patience": 1}})
    rs = _vary(_members(), vary)
    _compare(rs, tmp_path, cat=fresh_catalogue(_noise_plugin()))
    epochs = [len(_records(tmp_path / f"pop{i}")) for i in range(3)]
    assert epochs[0] < 3 and epochs[1:] == [3, 3]


# --------------------------------------------------------------------------- optimisers and clipping


def _torch_vs_memberwise(kind, cfgs, steps=4, capturable=False):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,)]
    K = len(cfgs)
    init = [torch.randn(K, *s, dtype=torch.float64, generator=gen) for s in shapes]
    grads = [[torch.randn(K, *s, dtype=torch.float64, generator=gen) for s in shapes] for _ in range(steps)]
    stacked = [x.clone().requires_grad_() for x in init]
    opt = (MemberwiseSGD if kind == "sgd" else MemberwiseAdam)(stacked, cfgs, capturable=capturable)
    refs = []
    for m, c in enumerate(cfgs):
        ps = [x[m].clone().requires_grad_() for x in init]
        o = (torch.optim.SGD(ps, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)
             if kind == "sgd" else torch.optim.Adam(ps, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay,
                                                    capturable=capturable))
        refs.append((ps, o))
    for t in range(steps):
        for p, g in zip(stacked, grads[t]):
            p.grad = g.clone()
        opt.step()
        for m, (ps, o) in enumerate(refs):
            for p, g in zip(ps, grads[t]):
                p.grad = g[m].clone()
            o.step()
    for m, (ps, o) in enumerate(refs):
        for i, p in enumerate(ps):
            assert torch.equal(stacked[i][m].detach(), p.detach())  # bit for bit
            for k, v in o.state[p].items():
                assert torch.equal(opt.member_state(i, m)[k], v), k


def test_memberwise_sgd_is_torch_sgd_bit_for_bit():
    _torch_vs_memberwise("sgd", [OptimizerConfig("sgd", lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4),
                                 OptimizerConfig("sgd", lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.0),
                                 OptimizerConfig("sgd", lr=0.003, momentum=0.99, nesterov=True, weight_decay=3e-3)])
    _torch_vs_memberwise("sgd", [OptimizerConfig("sgd", lr=0.025, momentum=0.9, weight_decay=5e-4),
                                 OptimizerConfig("sgd", lr=0.1, momentum=0.5)])


def test_memberwise_adam_is_torch_adam_bit_for_bit():
    _torch_vs_memberwise("adam", [OptimizerConfig("adam", lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3),
                                  OptimizerConfig("adam", lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0),
                                  OptimizerConfig("adam", lr=6e-4, betas=(0.0, 0.9), weight_decay=1e-2)])


def test_capturable_memberwise_adam_is_torch_capturable_adam_bit_for_bit(monkeypatch):
    """The CUDA-graph path's Adam (step counts and bias corrections on the device) against
    ``torch.optim.Adam(capturable=True)``, whose device check is widened to the CPU for the test."""
    import torch.optim.adam as torch_adam

    widened = torch_adam._get_capturable_supported_devices
    monkeypatch.setattr(torch_adam, "_get_capturable_supported_devices", lambda *a, **k: [*widened(*a, **k), "cpu"])
    _torch_vs_memberwise("adam", [OptimizerConfig("adam", lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3),
                                  OptimizerConfig("adam", lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0),
                                  OptimizerConfig("adam", lr=6e-4, betas=(0.0, 0.9), weight_decay=1e-2)], capturable=True)
    _torch_vs_memberwise("sgd", [OptimizerConfig("sgd", lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4),
                                 OptimizerConfig("sgd", lr=0.1, momentum=0.5, nesterov=True)], capturable=True)


def test_clip_grad_norm_members_is_torch_clip_per_member():
    gen = torch.Generator().manual_seed(1)
    ps = [torch.zeros(3, 4, 5, dtype=torch.float64, requires_grad=True), torch.zeros(3, 7, dtype=torch.float64, requires_grad=True)]
    for p in ps:
        p.grad = torch.randn(p.shape, dtype=torch.float64, generator=gen)
    refs = [[p.grad[m].clone() for p in ps] for m in range(3)]
    max_norms = torch.tensor([100.0, 1.0, 0.01], dtype=torch.float64)
    totals = clip_grad_norm_members(ps, max_norms)
    for m in range(3):
        qs = [torch.zeros_like(g, requires_grad=True) for g in refs[m]]
        for q, g in zip(qs, refs[m]):
            q.grad = g
        total = torch.nn.utils.clip_grad_norm_(qs, float(max_norms[m]))
        assert torch.equal(totals[m], total)
        for p, q in zip(ps, qs):
            assert torch.equal(p.grad[m], q.grad)
    assert float(totals[0]) < 100  # member 0 unclipped, members 1 and 2 clipped to their own norm
    assert float(torch.linalg.vector_norm(torch.cat([p.grad[2].flatten() for p in ps]))) == pytest.approx(0.01, rel=1e-5)


# --------------------------------------------------------------------------- resume and refusals


class _Interrupt:
    """Kills the population before a given step (as a crash would), once."""

    def __init__(self, at):
        self.at, self.armed = at, True

    from diffnas.core.hookspecs import hookimpl

    @hookimpl
    def diffnas_step_start(self, search, epoch, step):
        if self.armed and (epoch, step) == self.at:
            self.armed = False
            raise KeyboardInterrupt("killed")


def test_population_resumes_exactly(tmp_path):
    from diffnas import api

    recipes = _vary(_members()[:2], lambda k, r: r["output"].update(checkpoint_every_steps=1))
    cat = fresh_catalogue()
    api.search_population(recipes, [tmp_path / f"a{i}" for i in range(2)], cat=cat)
    stop = _Interrupt((1, 1))
    cat2 = fresh_catalogue(stop)
    with pytest.raises(KeyboardInterrupt):
        api.search_population(recipes, [tmp_path / f"b{i}" for i in range(2)], cat=cat2)
    assert not stop.armed and all(len(_records(tmp_path / f"b{i}")) == 1 for i in range(2))
    api.resume_population([tmp_path / f"b{i}" for i in range(2)], cat=cat2)
    for i in range(2):
        a, b = tmp_path / f"a{i}", tmp_path / f"b{i}"
        assert _records(a) == _records(b)
        ca, cb = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
        for key in ("model", "alphas", "w_optimizer", "a_optimizer", "state", "rng", "epoch_sums", "nonfinite_step"):
            _assert_close_tree(ca[key], cb[key], f"member {i} {key}", 0.0)


class _KillBetweenMembers:
    """Raises KeyboardInterrupt (as a SIGKILL would stop the process) right after member 0 wrote its
    checkpoint at ``global_step`` and before member 1 writes its own, once."""

    def __init__(self, monkeypatch, first_dir, global_step):
        from diffnas.core import outputs

        real = outputs.RunWriter.checkpoint
        self.fired = False

        def checkpoint(writer):
            real(writer)
            if (not self.fired and writer.dir.path == first_dir
                    and writer.search.state.global_step == global_step and not writer.search.state.finished):
                self.fired = True
                raise KeyboardInterrupt("killed between two members' checkpoints")

        monkeypatch.setattr(outputs.RunWriter, "checkpoint", checkpoint)
        self.undo = lambda: monkeypatch.setattr(outputs.RunWriter, "checkpoint", real)


@pytest.mark.parametrize("at,every", [(2, (1, 1)), (4, (1, 3)), (6, (1, 1))],
                         ids=["mid_epoch", "different_intervals", "last_epoch_end"])
def test_population_killed_between_members_resumes_in_step(tmp_path, monkeypatch, at, every):
    """A kill between two members' checkpoint writes (mid-epoch; members checkpointing every 1 and
    every 3 steps; at the last epoch's end) leaves member 0 one checkpoint ahead: ``--resume``
    brings it back into step from its previous checkpoint and every member ends exactly as an
    uninterrupted population (records and checkpoints bit for bit), with no previous checkpoint left."""
    from diffnas import api
    from diffnas.core.outputs import PREVIOUS_CHECKPOINT

    recipes = _members()[:2]
    for r, e in zip(recipes, every):
        r["output"]["checkpoint_every_steps"] = e
        r["trainer"]["steps_per_epoch"] = 3
    api.search_population(recipes, [tmp_path / f"a{i}" for i in range(2)], cat=fresh_catalogue())
    kill = _KillBetweenMembers(monkeypatch, tmp_path / "b0", at)
    with pytest.raises(KeyboardInterrupt):
        api.search_population(recipes, [tmp_path / f"b{i}" for i in range(2)], cat=fresh_catalogue())
    kill.undo()
    assert kill.fired
    steps = [load_checkpoint(tmp_path / f"b{i}" / CHECKPOINT)["state"]["global_step"] for i in range(2)]
    assert steps[0] == at and steps[1] < at  # out of step, as the kill left them
    assert (tmp_path / "b0" / PREVIOUS_CHECKPOINT).exists()
    api.resume_population([tmp_path / f"b{i}" for i in range(2)], cat=fresh_catalogue())
    for i in range(2):
        a, b = tmp_path / f"a{i}", tmp_path / f"b{i}"
        assert _records(a) == _records(b)
        assert sorted(x.name for x in a.iterdir()) == sorted(x.name for x in b.iterdir())
        ca, cb = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
        for key in ("model", "alphas", "w_optimizer", "a_optimizer", "state", "rng", "epoch_sums", "nonfinite_step"):
            _assert_close_tree(ca[key], cb[key], f"member {i} {key}", 0.0)


def test_population_resume_checks_recipes_and_checkpoints(tmp_path, capsys):
    """``population --resume`` refuses an edited member recipe as ``search --resume`` does (``--force``
    resumes and notes it) and a damaged member checkpoint with the same message as a resume."""
    import yaml

    from diffnas import api
    from diffnas.cli import main

    recipes = _vary(_members()[:2], lambda k, r: r["trainer"].update(epochs=1))
    dirs = [tmp_path / f"m{i}" for i in range(2)]
    api.search_population(recipes, dirs, cat=fresh_catalogue())
    for d in dirs:  # as if killed before the end: resumable
        ck = load_checkpoint(d / CHECKPOINT)
        ck["state"].update(finished=False, epoch=0, step=1, global_step=1, history=[])
        torch.save(ck, d / CHECKPOINT)
    edited = yaml.safe_load((dirs[1] / "recipe.yaml").read_text())
    edited["trainer"]["arch_optimizer"]["lr"] = 0.5
    (dirs[1] / "recipe.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    before = {d: (d / CHECKPOINT).read_bytes() for d in dirs}
    assert main(["population", "--resume", *map(str, dirs)]) == 2
    err = capsys.readouterr().err
    assert f"{dirs[1] / 'recipe.yaml'} differs from the recipe {dirs[1] / CHECKPOINT} was made with" in err
    assert "--force" in err and all((d / CHECKPOINT).read_bytes() == before[d] for d in dirs)
    good = load_checkpoint(dirs[0] / CHECKPOINT)
    for bad, expect in ((lambda c: c.update(state="x"), "state: expected a mapping, got str 'x'"),
                        (lambda c: c.update(components=None), "components: expected a mapping, got NoneType None")):
        ck = {**good, "state": dict(good["state"])}
        bad(ck)
        torch.save(ck, dirs[0] / CHECKPOINT)
        assert main(["population", "--resume", *map(str, dirs), "--force"]) == 2
        err = capsys.readouterr().err
        assert f"checkpoint {dirs[0] / CHECKPOINT} is damaged or not a search's checkpoint: {expect}" in err, err
        assert "Traceback" not in err
    torch.save(good, dirs[0] / CHECKPOINT)
    assert main(["population", "--resume", *map(str, dirs), "--force"]) == 0
    notes = [r.get("notes") for r in _records(dirs[1])]
    assert notes[0][0]["event"] == "resumed with a changed recipe (--force)"
    assert "notes" not in _records(dirs[0])[0]


def test_population_allows_regularisers_whose_attach_only_builds_masks(tmp_path, float64):
    """degeneracy_cap / degeneracy_depth implement attach to build their masks (modifies_supernet =
    False): each member attaches its own, and every member still matches its separate run."""
    rs = _vary(_members()[:2], lambda k, r: r.update(regularisers=[
        {"name": "degeneracy_cap", "params": {"cap": [0.3, 0.4][k]}},
        {"name": "degeneracy_depth", "params": {"weight": [1.0, 2.0][k]}}]))
    sep, pop = _compare(rs, tmp_path)
    assert all(type(reg).modifies_supernet is False for s in sep for reg in s.regularisers)


def test_population_refuses_what_cannot_fuse(tmp_path):
    from diffnas import api

    cat = fresh_catalogue()
    gdas = [tiny_recipe(relaxation={"name": "gumbel_softmax"}, trainer={"seed": k}) for k in range(2)]
    with pytest.raises(RecipeError, match="samples one op per edge"):
        api.search_population(gdas, [None, None], cat=cat)
    mixed = [tiny_recipe(), tiny_recipe(search_space={"name": "nb201", "params": {"C": 8, "N": 1}})]
    with pytest.raises(RecipeError, match=r"differs from population\[0\] in search_space"):
        api.search_population(mixed, [None, None], cat=cat)
    half_fused = [tiny_recipe(trainer={"fused_cells": True}), tiny_recipe(trainer={"seed": 1})]
    with pytest.raises(RecipeError, match=r"differs from population\[0\] in trainer.fused_cells"):
        api.search_population(half_fused, [None, None], cat=cat)
    minus = [tiny_recipe(regularisers=[{"name": "darts_minus_skip"}]), tiny_recipe()]
    with pytest.raises(RecipeError, match=r"regulariser 'darts_minus_skip' changes the supernet in attach "
                                          r"\(Regulariser.modifies_supernet is True for DartsMinusSkip\)"):
        api.search_population(minus, [None, None], cat=cat)
    gaea = [tiny_recipe(update_rule={"name": "gaea"}, relaxation={"name": "simplex"})] * 2
    with pytest.raises(RecipeError, match="'gaea' steps α itself and calls search.regularisers"):
        api.search_population(gaea, [None, None], cat=cat)
    milenas = [tiny_recipe(update_rule={"name": "mixed_level", "params": {"lam": lam}}) for lam in (1.0, 0.5)]
    with pytest.raises(RecipeError, match=r"differs from population\[0\] in update_rule.params \(this rule reads "
                                          "one set of hyperparameters"):
        api.search_population(milenas, [None, None], cat=cat)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- studies


def test_study_groups_runs_into_populations(tmp_path):
    """Two seeds × two learning rates of DARTS fuse into one population (max_size 8); GDAS's two
    seeds cannot fuse and run one by one; every run directory is complete and its records match the
    same study run without populations (float32: to rounding)."""
    import yaml

    from diffnas.study import run_study
    from diffnas.study.populations import composition_key

    def study(out, enabled):
        return {"version": 1, "name": "pop", "out": str(out), "axes": {"trainer.seed": [0, 1]},
                "population": {"enabled": enabled, "max_size": 8},
                "runs": [{"label": "DARTS", "id": "darts", "recipe": tiny_recipe(),
                          "axes": {"trainer.arch_optimizer.lr": [3.0e-4, 1.0e-3]}},
                         {"label": "GDAS", "id": "gdas", "recipe": tiny_recipe(relaxation={"name": "gumbel_softmax"})}]}

    logs: dict[str, list[str]] = {"on": [], "off": []}
    for name, enabled in (("on", True), ("off", False)):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(study(tmp_path / name, enabled), sort_keys=False))
        if enabled:  # a population is one command line for schedulers (--print-commands)
            from diffnas.study import print_commands

            lines = print_commands(p, catalogue=fresh_catalogue())
            assert len(lines) == 2 and all(" population " in x and x.endswith("--fallback") for x in lines)
            assert lines[0].count("darts-seed") == 8 and lines[1].count("gdas-seed") == 4  # recipes and run dirs
        ls, outcomes, _ = run_study(p, catalogue=fresh_catalogue(), report_plots=False, log=logs[name].append)
        assert [o.status for o in outcomes] == ["done"] * 6
    assert composition_key(ls.specs[0].recipe) == composition_key(ls.specs[3].recipe) != composition_key(ls.specs[4].recipe)
    assert any("population of 4 run(s)" in line for line in logs["on"])
    assert any("cannot be fused" in line and "samples one op per edge" in line for line in logs["on"])
    for spec in ls.specs:
        a, b = tmp_path / "on" / "runs" / spec.id, tmp_path / "off" / "runs" / spec.id
        assert sorted(x.name for x in a.iterdir()) == sorted(x.name for x in b.iterdir())
        _assert_close_tree(_records(b), _records(a), spec.id, tol=1e-4)


@pytest.mark.parametrize("faster", [True, False])
def test_study_population_auto_calibrates_and_records_the_decision(tmp_path, monkeypatch, faster):
    """``population: auto`` times the population against one plain run in the same process, writes
    the figures to OUT/populations/<item>.json and the results, and fuses only where it measured the
    population faster (the measured decision is overridden here, both ways, so that each branch runs
    whatever this machine measures; the figures are the real ones)."""
    import yaml

    import diffnas.core.population as population
    from diffnas.study import print_commands, run_study

    real, seen = population.calibrate_population, []

    def forced(*args, **kwargs):
        fig = real(*args, **kwargs)
        seen.append(dict(fig))
        return {**fig, "fused": faster}

    monkeypatch.setattr(population, "calibrate_population", forced)
    p = tmp_path / "auto.yaml"
    p.write_text(yaml.safe_dump({"version": 1, "name": "auto", "out": str(tmp_path / "out"), "population": "auto",
                                 "axes": {"trainer.seed": [0, 1]},
                                 "runs": [{"label": "DARTS", "id": "darts", "recipe": tiny_recipe()}]}, sort_keys=False))
    lines = print_commands(p, catalogue=fresh_catalogue())
    record = tmp_path / "out" / "populations" / "population-darts-seed0.json"
    assert len(lines) == 1 and lines[0].endswith(f"--fallback --auto {record} --calibration-rounds 3")
    log: list[str] = []
    ls, outcomes, _ = run_study(p, catalogue=fresh_catalogue(), report_plots=False, log=log.append)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert [o.message == "in a population" for o in outcomes] == [faster, faster]
    fig = seen[0]
    assert fig["K"] == 2 and fig["rounds"] == 3 and fig["population_step_s"] > 0 and fig["separate_step_s"] > 0
    assert fig["separate_estimate_s"] == pytest.approx(2 * fig["separate_step_s"])
    assert fig["ratio"] == pytest.approx(fig["population_step_s"] / fig["separate_estimate_s"])
    saved = json.loads(record.read_text())
    assert saved["decision"] == ("population" if faster else "separate") and saved["runs"] == ["darts-seed0", "darts-seed1"]
    assert saved["population_step_s"] == fig["population_step_s"]
    assert any(line.startswith("[1/1] population of darts-seed0, darts-seed1: " + saved["decision"] + ": one population step")
               for line in log)
    assert any("population of 2 run(s)" in line for line in log) == faster
    assert f"population-darts-seed0 (darts-seed0, darts-seed1): {saved['decision']}:" in (tmp_path / "out" / "results.md").read_text()
    for spec in ls.specs:  # calibration wrote nothing of its own into the runs
        assert len(_records(spec.out_dir)) == spec.recipe["trainer"]["epochs"]


def test_cli_population_auto_writes_its_calibration(tmp_path, capsys):
    import yaml

    from diffnas.cli import main

    paths = []
    for k in range(2):
        paths.append(tmp_path / f"r{k}.yaml")
        paths[-1].write_text(yaml.safe_dump(tiny_recipe(trainer={"seed": k, "epochs": 1}), sort_keys=False))
    rec = tmp_path / "calib.json"
    assert main(["population", *map(str, paths), "--out", str(tmp_path / "runs"), "--auto", str(rec),
                 "--calibration-rounds", "2", "--no-progress"]) == 0
    fig = json.loads(rec.read_text())
    assert fig["K"] == 2 and fig["rounds"] == 2 and fig["decision"] in ("population", "separate")
    assert fig["decision"] + ": one population step of 2 runs" in capsys.readouterr().err
    assert all((tmp_path / "runs" / f"{k}-r{k}" / "genotype.json").exists() for k in range(2))
    assert main(["population", *map(str, paths), "--out", str(tmp_path / "x"), "--auto", str(rec),
                 "--calibration-rounds", "0"]) == 2


def test_population_collapse_study_forms_four_populations(tmp_path):
    """The GPU session's population study expands to 20 runs in 4 populations (8 + 4 + 4 + 4)."""
    from diffnas.study import load_study
    from diffnas.study.populations import group_work_items

    root = Path(__file__).resolve().parents[1]
    ls = load_study(root / "examples" / "studies" / "nb201_collapse_population.yaml", tmp_path, fresh_catalogue())
    assert ls.study.population.enabled and len(ls.specs) == 20
    items = group_work_items(ls.specs, ls.study.population.max_size)
    assert sorted(len(i) for i in items) == [4, 4, 4, 8]
    assert {s.label for s in items[0]} == {"DARTS-V1 (1st order)"}
    assert sorted(len(i) for i in group_work_items(ls.specs, 3)) == [2, 2, 2, 2, 2, 2, 2, 3, 3]


def test_third_party_space_without_population_supernet_is_refused(tmp_path):
    """A space opts out through the documented API (``population_supernet`` returning None); the
    population is refused before anything is written."""
    from diffnas import api
    from diffnas.core.hookspecs import hookimpl
    from diffnas.plugins.search_spaces.nb201 import NB201Space

    class NoPopulation(NB201Space):
        """NB201 without a population supernet (test)."""

        def population_supernet(self, supernets, context):
            return None

    class Plugin:
        @hookimpl
        def diffnas_register_search_spaces(self, register):
            register("nb201_nopop", NoPopulation)

    cat = fresh_catalogue(Plugin())
    rs = [tiny_recipe(search_space={"name": "nb201_nopop", "params": {"C": 4, "N": 1}}, trainer={"seed": k}) for k in range(2)]
    with pytest.raises(RecipeError, match="offers no population supernet"):
        api.search_population(rs, [tmp_path / "a", tmp_path / "b"], cat=cat)
    assert not list(tmp_path.iterdir())


def test_cli_population_runs_and_refuses(tmp_path, capsys):
    import yaml

    from diffnas.cli import main

    paths = []
    for k in range(2):
        p = tmp_path / f"m{k}.yaml"
        p.write_text(yaml.safe_dump(tiny_recipe(trainer={"seed": k, "epochs": 1}, output={"progress": True})))
        paths.append(str(p))
    capsys.readouterr()
    assert main(["population", *paths, "--out", str(tmp_path / "out")]) == 0
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["0-m0", "1-m1"]
    assert len(_records(tmp_path / "out" / "1-m1")) == 1
    cap = capsys.readouterr()
    # per member, the lines `diffnas search` prints (no raw JSON), and one progress bar (plain lines off a terminal)
    for k in range(2):
        summary = json.loads((tmp_path / "out" / f"{k}-m{k}" / "result.json").read_text())
        nb = summary["scores"]["nb201"]
        assert (f"run directory: {tmp_path / 'out' / f'{k}-m{k}'}\nnb201 #{nb['index']} test accuracy (200 epochs, mean of "
                f"3 seeds): cifar10 {nb['cifar10_test']:.2f}") in cap.out
        assert f"genotype: {summary['genotype']}" in cap.out
    assert "{" not in cap.out
    assert re.search(r"^population of 2: 2/2 step \(100%\)", cap.err, re.M) and "\r" not in cap.err
    assert main(["population", *paths, "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert "population of 2" not in capsys.readouterr().err
    g = tmp_path / "gdas.yaml"
    g.write_text(yaml.safe_dump(tiny_recipe(relaxation={"name": "gumbel_softmax"})))
    capsys.readouterr()
    assert main(["population", str(g), str(g), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "samples one op per edge" in err and "population[0].relaxation" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    # --fallback (what a study's population item runs): refused members run one by one instead
    runs = [str(tmp_path / "g0"), str(tmp_path / "g1")]
    assert main(["population", str(g), str(g), "--run-dirs", *runs, "--fallback"]) == 0
    assert "cannot be fused" in capsys.readouterr().err
    assert all((Path(d) / "result.json").exists() for d in runs)


def test_population_darts_space_with_tracked_batch_norm(tmp_path, float64):
    """The default vmapped population serves the DARTS space too (two cell types, BatchNorm running
    statistics tracked: stacked buffers updated per member)."""
    rs = _vary(_members()[:2], lambda k, r: (r.update(search_space={"name": "darts", "params": {"C": 4, "layers": 3}},
                                                      discretiser={"name": "top_k_edges"}),
                                             r["trainer"].update(epochs=1, steps_per_epoch=1, batch_size=4)))
    sep, pop = _compare(rs, tmp_path)
    assert any("running_mean" in k for k in sep[0].model.state_dict())


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_population_of_fused_cells_matches_separate_fused_and_plain_runs(tmp_path, float64, space):
    """``trainer.fused_cells`` in a population: the members' fused supernets (the space's
    ``fused_supernet``) run under vmap, the fused kernels with a member axis. Each member ends as its
    separate fused run (every record and checkpoint, 1e-9) and as its separate plain run (records,
    α and the weights in the plain layout, 1e-9)."""
    def members(fused):
        def edit(k, r):
            r["trainer"].update(fused_cells=fused)
            if space == "darts":
                r.update(search_space={"name": "darts", "params": {"C": 4, "layers": 3}}, discretiser={"name": "top_k_edges"})
                r["trainer"].update(epochs=1, steps_per_epoch=1, batch_size=4)
        return _vary(_members(), edit)

    sep, pop = _compare(members(True), tmp_path / "fused")
    assert all(type(s.model).__name__.startswith("Fused") for s in sep)
    assert all(type(s.model).__name__.startswith("Fused") for s in pop.members)
    cat = fresh_catalogue()
    for i, r in enumerate(members(False)):
        plain = build_tiny_search(r, tmp_path / f"plain{i}", cat)
        plain.run(progress=False)
        fused_dir = tmp_path / "fused" / f"pop{i}"
        _assert_close_tree(_records(tmp_path / f"plain{i}"), _records(fused_dir), f"member {i} vs plain", 1e-9)
        ca, cb = load_checkpoint(tmp_path / f"plain{i}" / CHECKPOINT), load_checkpoint(fused_dir / CHECKPOINT)
        _assert_close_tree(ca["alphas"], cb["alphas"], f"member {i} vs plain: α", 1e-9)
        m = pop.members[i]  # its weights in the plain layout
        _assert_close_tree(dict(plain.model.state_dict()), m.model.plain_state_dict(m.plain_model), f"member {i} vs plain: weights", 1e-9)


# --------------------------------------------------------------------------- channels_last


@pytest.mark.parametrize("space", ["nb201", "nb201-fused", "darts-fused"])
def test_population_channels_last_matches_separate_runs(tmp_path, float64, space):
    """``trainer.channels_last`` in a population: each member ends as its separate channels-last run
    (every record and checkpoint, 1e-9), plain and fused cells."""
    def edit(k, r):
        r["trainer"].update(channels_last=True, fused_cells=space.endswith("fused"))
        if space.startswith("darts"):
            r.update(search_space={"name": "darts", "params": {"C": 4, "layers": 3}}, discretiser={"name": "top_k_edges"})
            r["trainer"].update(epochs=1, steps_per_epoch=1, batch_size=4)
    sep, pop = _compare(_vary(_members(), edit), tmp_path)
    assert all(p.dim() < 4 or p[0].is_contiguous(memory_format=torch.channels_last) for p in pop.model.parameters())


class _Clones(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts ``aten::clone`` (a layout copy: what vmap makes where a reshape cannot be a view)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func._schema.name == "aten::clone"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_population_channels_last_adds_no_layout_copies(fused):
    """The member-stacked batch is laid out ``[B, H, W, K, C]`` (``[B, K, C, H, W]`` without
    channels_last), which vmap's grouped convolution reads as a view: a channels-last population step
    makes the clones of the contiguous one plus only the loaders' own channels-last conversions (one
    per member and batch, as in a separate run), none inside the supernet, forward or backward."""
    from diffnas.core.population import _stack_batches

    cat = fresh_catalogue()
    clones = {}
    for cl in (False, True):
        rs = _vary(_members(), lambda k, r: r["trainer"].update(channels_last=cl, fused_cells=fused))
        pop = build_population([(resolve_recipe(r, cat), None, None) for r in rs], cat.pm, cat)
        pop.open(write=False)
        try:
            pop.start_epoch(0)
            pop.one_step(0, 0)
            with _Clones() as c:
                pop.one_step(0, 1)
            clones[cl] = c.n
        finally:
            pop.close()
    assert clones[True] == clones[False] + 2 * 3  # 3 members, a training and a validation batch each
    xs = [(torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last), torch.zeros(2)) for _ in range(3)]
    x, _ = _stack_batches(xs, channels_last=True)
    assert x.shape == (3, 2, 3, 4, 5) and x.permute(1, 3, 4, 0, 2).is_contiguous()
    assert all(torch.equal(x[m], xs[m][0]) for m in range(3))
    x, _ = _stack_batches([(b.contiguous(), y) for b, y in xs])
    assert x.transpose(0, 1).is_contiguous() and all(torch.equal(x[m], xs[m][0]) for m in range(3))


def test_population_refuses_autocast_on_the_vmapped_supernet(tmp_path):
    """autocast is not applied under torch.func.vmap (what the default population supernet runs on):
    checked here, then the population is refused with that reason, before anything is written."""
    import torch.nn.functional as F
    from torch.func import vmap

    from diffnas import api

    x, w = torch.randn(3, 2, 4, 8, 8), torch.randn(3, 5, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.conv2d(x[0], w[0]).dtype == torch.bfloat16
        assert vmap(F.conv2d)(x, w).dtype == torch.float32  # the reason; if torch fixes it, revisit the refusal
    rs = [tiny_recipe(trainer={"seed": k, "autocast": "bf16", "fused_cells": fused}) for k, fused in ((0, False), (1, False))]
    with pytest.raises(RecipeError, match=r"trainer.autocast 'bf16' is not applied under torch.func.vmap.*"
                                          r"@ population.trainer.autocast"):
        api.search_population(rs, [tmp_path / "a", tmp_path / "b"], cat=fresh_catalogue())
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- CUDA graphs


RULES = {"v1": {"name": "bilevel", "params": {"order": 1}}, "v2": {"name": "bilevel", "params": {"order": 2}},
         "single": {"name": "single_level"}}


@pytest.mark.parametrize("rule", ["v1", "v2"])
def test_graphed_population_matches_separate_runs(tmp_path, float64, rule):
    """The graphed population's orchestration on the CPU (``step_graph=True``: the step through a
    StepGraph that runs it eagerly, the capturable member-wise Adam, a step graph forgotten at each
    epoch start): each member still ends as its separate run (1e-9)."""
    rs = _vary(_members(), lambda k, r: r.update(update_rule=RULES[rule]))
    sep, pop = _compare(rs, tmp_path, step_graph=True)
    assert pop._step_graph is not None and pop.a_optimizer.capturable


class _HostValues(torch.utils._python_dispatch.TorchDispatchMode):
    """Records tensors made from host data (``torch.tensor``: ``aten::lift_fresh``), which a CUDA
    graph would bake in (on a GPU, a host-to-device copy that a capture refuses)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name == "aten::lift_fresh":  # where: the innermost frame of diffnas
            import traceback

            self.found.append(next(f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack())
                                   if "/diffnas/" in f.filename and not f.filename.endswith("graphs.py")))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_graphed_population_step_is_capturable(rule, fused):
    """What a capture needs, checked on the CPU: after the run's first step (optimiser state made)
    the population step makes no host synchronisation and no tensor from host values (per-member
    learning rates and clip norms are device tensors made when set; ξ, ε, momentum by fills)."""
    from diffnas.core.graphs import find_host_syncs

    cat = fresh_catalogue()
    rs = _vary(_members(update_rule=RULES[rule]), lambda k, r: r["trainer"].update(fused_cells=fused))
    pop = build_population([(resolve_recipe(r, cat), None, None) for r in rs], cat.pm, cat, step_graph=True)
    pop.open(write=False)
    try:
        pop.start_epoch(0)
        pop.one_step(0, 0)
        def stacked(loaders):
            bs = [ld.batch(0, 1) for ld in loaders]
            return None if loaders[0] is None else (torch.stack([b[0] for b in bs]), torch.stack([b[1] for b in bs]))

        train = stacked([s.train_loader for s in pop.active])
        valid = stacked([s.valid_loader for s in pop.active]) if pop.active[0].valid_loader is not None else None
        with _HostValues() as made:
            metrics, syncs = find_host_syncs(lambda: pop._step(train, valid))
        assert syncs == [] and made.found == []
        assert pop.a_optimizer.capturable and all(v.shape == (3,) for v in metrics.values())
        assert torch.equal(pop._global_step_t, torch.full((3,), 2))
    finally:
        pop.close()


def test_graphed_population_swaps_each_members_cuda_generator_by_reference(monkeypatch):
    """The swap a graphed population makes around each member's components (``member(m)``), with
    stand-in generators (CPU generators have no graph-safe state): inside, the default CUDA
    generator's state is the member's own generator; after, the outer state is back; the CPU and
    Python streams are still swapped by value and the CUDA state is never copied."""
    cat = fresh_catalogue()
    pop = build_population([(resolve_recipe(r, cat), None, None) for r in _members()], cat.pm, cat)

    class Default:
        def __init__(self):
            self.state = "outer"

        def graphsafe_get_state(self):
            return self.state

        def graphsafe_set_state(self, gen):
            self.state = gen

    default = Default()
    monkeypatch.setattr(torch.cuda, "default_generators", [default])
    monkeypatch.setattr(pop, "_cuda_index", lambda: 0)
    pop._cuda_gens = {id(s): f"gen{m}" for m, s in enumerate(pop.active)}
    before = torch.get_rng_state()
    entered = []
    for m in range(3):
        with pop.member(m):
            assert default.state == f"gen{m}"
            entered.append(torch.get_rng_state())
            torch.rand(3)  # advances the member's CPU stream only
        assert default.state == "outer" and "cuda" not in pop.rng[m]
    assert torch.equal(torch.get_rng_state(), before)
    g = torch.Generator()
    g.set_state(entered[0])
    torch.rand(3, generator=g)
    with pop.member(0):
        assert torch.equal(torch.get_rng_state(), g.get_state())  # member 0's own stream, advanced once


@pytest.mark.gpu
@pytest.mark.parametrize("rule", ["v1", "v2"])
def test_graphed_population_matches_eager_population_on_cuda(tmp_path, rule):
    """``trainer.cuda_graphs`` in a population on a GPU: one capture per epoch, replayed within
    it; every member's records and α as in the eager population, including
    a regulariser that draws from each member's own CUDA stream (the generators swapped by
    reference); and a population of graphed and eager members is refused."""
    torch.backends.cudnn.deterministic = True

    def recipes(graphs):
        def edit(k, r):
            r.update(update_rule=RULES[rule], regularisers=[{"name": "pop_cuda_noise", "params": {"weight": 0.01 * (k + 1)}}])
            r["trainer"].update(device="cuda", epochs=3, steps_per_epoch=6, cuda_graphs=graphs)
        return _vary(_members(), edit)

    runs = {}
    for graphs in (False, True):
        cat = fresh_catalogue(_noise_plugin(python_random=False))
        items = [(resolve_recipe(r, cat), tmp_path / f"{graphs}{i}", None) for i, r in enumerate(recipes(graphs))]
        pop = build_population(items, cat.pm, cat)
        pop.run(progress=False)
        runs[graphs] = pop
    assert runs[True]._step_graph.captures == 3 and runs[False]._step_graph is None
    for i in range(3):
        ra, rb = _records(tmp_path / f"False{i}"), _records(tmp_path / f"True{i}")
        for a, b in zip(ra, rb, strict=True):
            for key in (k for k, v in a.items() if isinstance(v, float) and k not in ("epoch_elapsed", "time_s")):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
        ca, cb = load_checkpoint(tmp_path / f"False{i}" / CHECKPOINT), load_checkpoint(tmp_path / f"True{i}" / CHECKPOINT)
        for k in ca["alphas"]:
            torch.testing.assert_close(cb["alphas"][k], ca["alphas"][k], rtol=1e-4, atol=1e-5)
    cat = fresh_catalogue(_noise_plugin(python_random=False))
    mixed = [recipes(True)[0], recipes(False)[1]]
    with pytest.raises(RecipeError, match=r"differs from population\[0\] in trainer.cuda_graphs"):
        build_population([(resolve_recipe(r, cat), None, None) for r in mixed], cat.pm, cat)


def test_population_speed_benchmark_runs_on_cpu(monkeypatch, tmp_path):
    """benchmarks/population_speed.py at tiny sizes: it runs, writes its JSON, and a population of 4
    dispatches fewer ops per member step than a single run (the launch-count proxy)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import population_speed

    out = tmp_path / "pop.json"
    res = population_speed.main(["--device", "cpu", "--sizes", "1,4", "--C", "4", "--N", "1", "--batch", "4",
                                 "--image-size", "8", "--rounds", "1", "--steps", "1", "--warmup", "0", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"single", "K=1", "K=4"} == set(res["rows"])
    assert rows["K=4"]["ops_per_member"] < rows["single"]["ops_per_member"] / 2
    assert all(r["steps_per_s_median"] > 0 for r in rows.values())


def test_population_speed_benchmark_graphs_rows_skip_on_cpu_and_never_sink_the_rest(monkeypatch):
    """``--graphs``: skipped on the CPU (named); where the graphed runners fail (here: forced on the
    CPU, where ``trainer.cuda_graphs`` is refused), the failure is recorded and the other rows stay."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import population_speed

    args = ["--device", "cpu", "--sizes", "1,2", "--C", "4", "--N", "1", "--batch", "4", "--image-size", "8",
            "--rounds", "1", "--steps", "1", "--warmup", "0", "--fused", "--graphs"]
    res = population_speed.main(args)
    assert res["graphs_skipped"] == "a CUDA graph needs a CUDA device" and res["graphs_failed"] == {}
    monkeypatch.setattr(population_speed, "graphs_unavailable", lambda device: None)
    res = population_speed.main(args)
    assert set(res["graphs_failed"]) == {"single-fused-graphs", "K=2+graphs"}
    assert "cuda_graphs" in res["graphs_failed"]["K=2+graphs"]
    assert set(res["rows"]) == {"single", "single-fused", "K=1", "K=2"}


def test_third_party_space_provides_its_own_population_supernet(tmp_path):
    """A space's own population module (here the default's subclass, counting its forwards) is the
    one the population steps, with channels_last told through its context and the batches laid out
    for it; the members' run directories come out as usual."""
    from diffnas import api
    from diffnas.core.hookspecs import hookimpl
    from diffnas.core.population import VmapPopulationSupernet
    from diffnas.plugins.search_spaces.nb201 import NB201Space

    calls = []

    class CountingPopulation(VmapPopulationSupernet):
        def forward(self, x, op_weights):
            calls.append(x.shape[0])
            assert x.permute(1, 3, 4, 0, 2).is_contiguous()  # [B, H, W, K, C]
            return super().forward(x, op_weights)

    class OwnPopulation(NB201Space):
        """NB201 with its own population module (test)."""

        def population_supernet(self, supernets, context):
            assert context.device.type == "cpu" and context.switch == "population" and len(supernets) == 2
            assert context.channels_last
            return CountingPopulation(supernets)

    class Plugin:
        @hookimpl
        def diffnas_register_search_spaces(self, register):
            register("nb201_own", OwnPopulation)

    rs = [tiny_recipe(search_space={"name": "nb201_own", "params": {"C": 4, "N": 1}},
                      trainer={"seed": k, "epochs": 1, "channels_last": True}) for k in range(2)]
    api.search_population(rs, [tmp_path / "a", tmp_path / "b"], cat=fresh_catalogue(Plugin()))
    assert calls and set(calls) == {2}
    assert len(_records(tmp_path / "b")) == 1


def test_population_with_warmup_and_init_from_matches_separate_runs(tmp_path, float64):
    """Members forked from one warm-up run (trainer.init_from) that warm up 3 more steps (across an
    epoch boundary) end as their separate runs do."""
    warm = tiny_recipe(trainer={"epochs": 1, "warmup_epochs": 1})
    build_tiny_search(warm, tmp_path / "warm").run(progress=False)
    rs = _vary(_members(), lambda k, r: r["trainer"].update(
        warmup_steps=3, init_from={"path": str(tmp_path / "warm"), "alphas": k == 1}))
    sep, _ = _compare(rs, tmp_path)
    assert all(s.init_source is not None for s in sep)
    with pytest.raises(RecipeError, match=r"warm-up's end"):
        rs[1]["trainer"]["warmup_steps"] = 2
        cat = fresh_catalogue()
        build_population([(resolve_recipe(r, cat), tmp_path / f"bad{i}", None) for i, r in enumerate(rs)], cat.pm, cat)


def test_cpu_populations_keep_large_allocations_in_the_heap():
    """heap_allocations (what Population.open applies on the CPU) keeps large allocations in glibc's
    heap: in a step-like loop of 32-64 MiB tensors, most steps map no fresh pages, where glibc's
    default (DIFFNAS_MALLOC=system leaves malloc alone) maps every large tensor afresh at every step;
    each side in a fresh process (the setting lasts for the process)."""
    import os
    import platform
    import statistics
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    probe = """if True:
        import resource, torch
        from diffnas.core.population import heap_allocations
        on = heap_allocations()
        def step():
            a = torch.ones(16 * 2**20); b = torch.ones(8 * 2**20); c = a + 1; del a
            d = c * b.sum(); del b, c
            return d.sum()
        for _ in range(3):
            step()
        faults = []
        for _ in range(10):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        print(on, *faults)"""
    out = {}
    for mode in ("system", ""):
        r = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "DIFFNAS_MALLOC": mode},
                           capture_output=True, text=True, check=True)
        on, *faults = r.stdout.split()
        out[mode] = (on == "True", [int(f) for f in faults])
    assert out["system"][0] is False and out[""][0] is True
    assert min(out["system"][1]) > 10_000, out  # 64 + 32 + 64 MiB mapped afresh each step
    assert statistics.median(out[""][1]) < 1_000, out
