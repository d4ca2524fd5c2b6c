"""Every hook spec is documented and exercised here (a test_hook_<name> per spec)."""

import inspect

import attrs
import pytest
import torch

import diffnas.core.hookspecs as hs
from diffnas import hookimpl
from diffnas.core.errors import PluginError
from diffnas.core.protocols import OpWeights, Relaxation
from diffnas.registry import Catalogue, get_plugin_manager
from diffnas.testing import fresh_catalogue, run_tiny, tiny_recipe

SPECS = sorted(n for n, f in vars(hs).items() if n.startswith("diffnas_") and callable(f))


def test_every_spec_is_documented_and_tested():
    this = inspect.getsource(inspect.getmodule(test_every_spec_is_documented_and_tested))
    for name in SPECS:
        doc = getattr(hs, name).__doc__ or ""
        assert "Called" in doc, f"{name}: docstring must say when it is called"
        assert ":param" in doc, f"{name}: docstring must document its parameters"
        assert f"def test_hook_{name}" in this, f"no test_hook_{name}"


class Recorder:
    """Records lifecycle calls in order."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def diffnas_search_start(self, search):
        self.calls.append(("search_start", search.state.epoch))

    @hookimpl
    def diffnas_epoch_start(self, search, epoch):
        self.calls.append(("epoch_start", epoch))

    @hookimpl
    def diffnas_step_start(self, search, epoch, step):
        self.calls.append(("step_start", epoch, step))

    @hookimpl
    def diffnas_step_end(self, search, epoch, step, metrics):
        assert isinstance(metrics["loss"], torch.Tensor)
        self.calls.append(("step_end", epoch, step))

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        record["recorded"] = True
        self.calls.append(("epoch_end", epoch, record["genotype"]))

    @hookimpl
    def diffnas_search_end(self, search, genotype, record):
        self.calls.append(("search_end", str(genotype)))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    rec = Recorder()
    cat = fresh_catalogue(rec)
    out = tmp_path_factory.mktemp("run")
    search, summary = run_tiny(tiny_recipe(), out_dir=out, cat=cat)
    return rec, search, summary, out


def test_hook_diffnas_search_start(recorded):
    rec, *_ = recorded
    assert rec.calls[0] == ("search_start", 0)


def test_hook_diffnas_epoch_start(recorded):
    rec, *_ = recorded
    assert [c for c in rec.calls if c[0] == "epoch_start"] == [("epoch_start", 0), ("epoch_start", 1)]


def test_hook_diffnas_step_start(recorded):
    rec, *_ = recorded
    steps = [c for c in rec.calls if c[0] == "step_start"]
    assert steps == [("step_start", e, s) for e in range(2) for s in range(2)]


def test_hook_diffnas_step_end(recorded):
    rec, *_ = recorded
    order = [c[0] for c in rec.calls]
    # step_start, step_end pairs in order inside each epoch, before epoch_end
    assert order[:7] == ["search_start", "epoch_start", "step_start", "step_end", "step_start", "step_end", "epoch_end"]


def test_hook_diffnas_epoch_end(recorded):
    rec, search, summary, out = recorded
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all('"recorded": true' in ln for ln in lines)


def test_hook_diffnas_step_diagnostics(tmp_path):
    """A third-party plugin adds a key to every step record (it reaches metrics.jsonl and
    steps.csv); what it draws from the global RNGs does not change the search."""
    import csv
    import random

    class StepProbe:
        def __init__(self):
            self.seen = []

        @hookimpl
        def diffnas_step_diagnostics(self, search, record):
            self.seen.append((search.state.global_step, record["global_step"], sorted(record)))
            record["probe"] = {"alpha_norm": float(search.alphas["normal"].detach().norm()), "noise": random.random()}
            torch.rand(3)  # the engine forks the random state around the hook

    probe = StepProbe()
    recipe = tiny_recipe(diagnostics={"every_steps": 2})
    search, _ = run_tiny(recipe, out_dir=tmp_path / "on", cat=fresh_catalogue(probe))
    assert [(g, r) for g, r, _ in probe.seen] == [(0, 0), (2, 2), (4, 4)]
    assert probe.seen[0][2] == ["entropy", "epoch", "genotype", "global_step", "parameter_free_share", "scores",
                                "skip_weight"]
    steps = [s for h in search.history for s in h["steps"]]
    assert [s["probe"]["alpha_norm"] for s in steps][-1] == pytest.approx(float(search.alphas["normal"].detach().norm()))
    rows = list(csv.DictReader((tmp_path / "on" / "steps.csv").open()))
    assert [float(r["probe.alpha_norm"]) for r in rows] == [s["probe"]["alpha_norm"] for s in steps]
    plain, _ = run_tiny(tiny_recipe(), cat=fresh_catalogue())
    assert torch.equal(plain.alphas["normal"], search.alphas["normal"])


def test_hook_diffnas_search_end(recorded):
    rec, search, summary, out = recorded
    assert rec.calls[-1] == ("search_end", summary["genotype"])


def test_hook_diffnas_score_genotype(recorded):
    rec, search, summary, out = recorded
    nb = summary["scores"]["nb201"]
    assert nb["arch"] == summary["genotype"]
    assert 10.0 <= nb["cifar10_test"] <= 94.37


def test_hook_diffnas_resolve_device():
    class Picker:
        @hookimpl
        def diffnas_resolve_device(self, requested):
            return torch.device("cpu") if requested == "my-accelerator" else None

    cat = fresh_catalogue(Picker())
    search, _ = run_tiny(tiny_recipe(trainer={"device": "my-accelerator", "epochs": 1, "steps_per_epoch": 1}), cat=cat)
    assert search.device == torch.device("cpu")


class Half(Relaxation):
    """Uniform weights of 1/2 (a test relaxation)."""

    @attrs.frozen
    class Config:
        scale: float = 0.5

    def op_weights(self, alpha, search):
        return OpWeights(torch.full_like(alpha, self.config.scale) + 0 * alpha)

    def probabilities(self, alpha):
        return torch.softmax(alpha, -1)


class HalfPlugin:
    @hookimpl
    def diffnas_register_relaxations(self, register):
        register("half", Half)


def test_hook_diffnas_register_relaxations():
    cat = fresh_catalogue(HalfPlugin())
    assert cat.get("relaxation", "half").cls is Half
    search, summary = run_tiny(tiny_recipe(relaxation={"name": "half", "params": {"scale": 0.25}},
                                           trainer={"epochs": 1, "steps_per_epoch": 1}), cat=cat)
    w = search.op_weights()["normal"].weights
    assert torch.allclose(w, torch.full_like(w, 0.25))


def test_hook_diffnas_register_search_spaces(catalogue):
    assert catalogue.get("search_space", "nb201").plugin == "nb201"


def test_hook_diffnas_register_update_rules(catalogue):
    assert "bilevel" in catalogue.names("update_rule")


def test_hook_diffnas_register_regularisers(catalogue):
    # bundled regularisers are registered by their own modules; the hook works for any plugin
    from diffnas.core.protocols import Regulariser

    class R(Regulariser):
        """A constant loss (test)."""

    class P:
        @hookimpl
        def diffnas_register_regularisers(self, register):
            register("const_test", R)

    assert fresh_catalogue(P()).get("regulariser", "const_test").cls is R


def test_hook_diffnas_register_discretisers(catalogue):
    assert "argmax_per_edge" in catalogue.names("discretiser")


def test_hook_diffnas_register_schedules(catalogue):
    assert {"linear", "cosine", "exponential", "piecewise"} <= set(catalogue.names("schedule"))


def test_hook_diffnas_register_datasets(catalogue):
    assert {"cifar10", "synthetic"} <= set(catalogue.names("dataset"))


def test_hook_diffnas_register_executors(tmp_path):
    """A third-party executor is registered, listed, chosen by a study by name, its params checked
    strictly, and runs the study's work items through the same API as the bundled ones."""
    import yaml

    from diffnas.core.protocols import Executor
    from diffnas.study import StudyError, run_study

    seen = []

    class InOrder(Executor):
        """Runs the work items in this process, in reverse order (test)."""

        @attrs.frozen
        class Config:
            reverse: bool = True

        def run(self, items, context):
            order = list(reversed(items)) if self.config.reverse else list(items)
            seen.extend(it.key for it in order)
            return [o for it in order for o in it.run(context.out, context.catalogue, False, context.log)]

    class P:
        @hookimpl
        def diffnas_register_executors(self, register):
            register("in_order", InOrder)

    cat = fresh_catalogue(P())
    assert set(cat.names("executor")) == {"sequential", "gpus", "ray", "slurm", "in_order"}
    tiny = tiny_recipe(trainer={"epochs": 1, "steps_per_epoch": 1})
    study = {"runs": [{"label": "t", "recipe": tiny}], "axes": {"trainer.seed": [0, 1]},
             "executor": {"name": "in_order", "params": {"reverse": True}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    _, outcomes, _ = run_study(path, tmp_path / "o", catalogue=cat, report_plots=False, log=lambda m: None)
    assert seen == ["t-seed1", "t-seed0"] and [o.status for o in outcomes] == ["done", "done"]
    assert (tmp_path / "o" / "runs" / "t-seed0" / "result.json").exists()

    study["executor"] = {"name": "in_order", "params": {"reverse": "yes", "colour": 1}}
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(StudyError) as info:
        run_study(path, tmp_path / "o2", catalogue=cat, report_plots=False, log=lambda m: None)
    text = str(info.value)
    assert "unknown key(s): 'colour' @ study.executor.params" in text
    assert "expected a boolean" in text and "@ study.executor.params.reverse" in text
    assert not (tmp_path / "o2").exists()


def test_hook_diffnas_register_loggers(tmp_path):
    """A third-party logger: registered by the hook, chosen in the recipe's ``loggers`` list, called
    through the lifecycle hooks as a plugin while the search runs, and closed at its end."""
    from diffnas.core.protocols import Logger

    class EpochLogger(Logger):
        """Records each epoch's validation accuracy (test)."""

        @attrs.frozen
        class Config:
            prefix: str = "acc"

        def __init__(self, config=None):
            super().__init__(config)
            self.seen, self.closed = [], False

        @hookimpl
        def diffnas_epoch_end(self, search, epoch, record):
            self.seen.append((epoch, record["valid_acc"]))

        def close(self, search):
            self.closed = True

    class P:
        @hookimpl
        def diffnas_register_loggers(self, register):
            register("epoch_logger", EpochLogger)

    cat = fresh_catalogue(P())
    assert cat.get("logger", "epoch_logger").cls is EpochLogger
    assert "tensorboard" in cat.names("logger")
    search, _ = run_tiny(tiny_recipe(loggers=[{"name": "epoch_logger", "params": {"prefix": "x"}}]), out_dir=tmp_path, cat=cat)
    (lg,) = search.loggers
    assert lg.config.prefix == "x" and lg.closed
    assert lg.seen == [(r["epoch"], r["valid_acc"]) for r in search.state.history] and len(lg.seen) == 2
    assert cat.pm.get_plugins() == set(cat.pm.get_plugins()) and lg not in cat.pm.get_plugins()  # unregistered after the run


def test_duplicate_name_names_both_plugins():
    class Other:
        @hookimpl
        def diffnas_register_relaxations(self, register):
            register("softmax", Half)

    pm = get_plugin_manager(autoload=False, extra_plugins=[Other()])
    with pytest.raises(PluginError, match=r"relaxation 'softmax' registered by both '.*' and '.*'"):
        Catalogue(pm)


def test_registering_a_non_component_is_refused():
    class Bad:
        @hookimpl
        def diffnas_register_relaxations(self, register):
            register("bad", dict)

    with pytest.raises(PluginError, match="not a subclass of diffnas.core.protocols.Relaxation"):
        fresh_catalogue(Bad())


def test_unknown_hook_is_refused():
    import pluggy

    class Typo:
        @hookimpl
        def diffnas_epoch_strat(self, search, epoch):
            pass

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook"):
        get_plugin_manager(autoload=False, extra_plugins=[Typo()])


def test_schedule_drives_relaxation_tau(catalogue):
    r = tiny_recipe(schedules=[{"name": "linear", "params": {"target": "relaxation.tau", "start": 2.0, "end": 0.5}}],
                    trainer={"epochs": 4, "steps_per_epoch": 1})
    search, _ = run_tiny(r, cat=catalogue)
    taus = [h["hparams"]["relaxation"]["tau"] for h in search.state.history]
    assert taus == pytest.approx([2.0, 1.5, 1.0, 0.5])
