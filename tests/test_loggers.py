"""Loggers: the bundled TensorBoard logger (events read back with TensorBoard's own reader),
``scalars.csv``, ``--logger`` and the refusal without the optional package."""

import csv
import json
import sys

import pytest

from diffnas.cli import main
from diffnas.core.errors import PluginError
from diffnas.testing import fresh_catalogue, run_tiny, tiny_recipe

tensorboard = pytest.importorskip("tensorboard", reason="the tensorboard logger is optional: pip install diffnas[tensorboard]")


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    search, summary = run_tiny(tiny_recipe(loggers=[{"name": "tensorboard"}], trainer={"epochs": 3}), out_dir=out)
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return search, summary, out, history, _events(out / "tensorboard")


def test_event_file_holds_the_epoch_scalars(tb_run):
    search, summary, out, history, ea = tb_run
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    for tag in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "entropy/normal",
                "scores/nb201/cifar10_test", "ops/parameter_free"):
        events = ea.Scalars(tag)
        key = tag.replace("/", ".")
        want = []
        for r in history:
            v = r
            for part in key.split("."):
                v = v[part]
            want.append(v)
        assert [e.step for e in events] == [0, 1, 2], tag  # the epoch index of metrics.jsonl
        assert [e.value for e in events] == pytest.approx(want, rel=1e-6), tag
    assert history[0]["train_loss"] > 1.0 and 0.0 <= history[-1]["train_acc"] <= 100.0
    final = ea.Scalars("final/scores/nb201/cifar10_test")
    assert [e.step for e in final] == [3] and final[0].value == pytest.approx(summary["scores"]["nb201"]["cifar10_test"])


def test_op_strengths_heatmaps_and_cells(tb_run):
    search, summary, out, history, ea = tb_run
    edges = sorted(((u, v) for u, v, d in search.cells["normal"].edges(data=True)), key=lambda e: search.cells["normal"].edges[e]["index"])
    ops = search.cells["normal"].edges[edges[0]]["ops"]
    for e, (src, dst) in enumerate(edges):
        for o, op in enumerate(ops):
            values = [ev.value for ev in ea.Scalars(f"alpha/normal/{src}-{dst}/{op}")]
            assert values == pytest.approx([r["alphas"]["normal"][e][o] for r in history], abs=1e-6)
    for tag in ("alphas/normal", "cell/normal"):
        images = ea.Images(tag)
        assert [im.step for im in images] == [0, 1, 2]
        png = images[-1].encoded_image_string
        assert png.startswith(b"\x89PNG") and images[-1].width > 200 and images[-1].height > 100


def test_hyperparameters_and_recipe(tb_run):
    search, summary, out, history, ea = tb_run
    hp = ea.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hp and "_hparams_/session_start_info" in hp
    start = hp["_hparams_/session_start_info"]
    for name in (b"relaxation", b"trainer.batch_size", b"trainer.weights_optimizer.lr", b"search_space.C"):
        assert name in start
    assert b"final/scores/nb201/cifar10_test" in hp["_hparams_/experiment"]
    assert "recipe/text_summary" in ea.Tags()["tensors"]
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(ea.Tags()["tensors"])


def test_hparams_dashboard_lists_the_hyperparameters(tb_run):
    """Read the run as TensorBoard's HParams dashboard does: the data provider over an event
    multiplexer, and the plugin's own backend that builds the experiment from the run's metadata."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, metadata

    search, summary, out, history, ea = tb_run
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(out))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(out))
    ctx = context.RequestContext()
    tags = provider.list_tensors(ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME)
    assert list(tags) == ["tensorboard"] and metadata.SESSION_START_INFO_TAG in tags["tensorboard"]
    start = metadata.parse_session_start_info_plugin_data(tags["tensorboard"][metadata.SESSION_START_INFO_TAG].plugin_content)
    assert start.hparams["relaxation"].string_value == "softmax"
    assert start.hparams["trainer.batch_size"].number_value == search.recipe.trainer.batch_size
    assert start.hparams["trainer.weights_optimizer.lr"].number_value == pytest.approx(search.recipe.trainer.weights_optimizer.lr)
    bc = backend_context.Context(base_plugin.TBContext(logdir=str(out), data_provider=provider, multiplexer=mux))
    exp = bc.experiment_from_metadata(ctx, "", include_metrics=True,
                                      hparams_run_to_tag_to_content=bc.hparams_metadata(ctx, ""), data_provider_hparams=None)
    names = {h.name for h in exp.hparam_infos}
    assert {"relaxation", "search_space.C", "trainer.batch_size", "trainer.weights_optimizer.lr"} <= names
    assert "final/scores/nb201/cifar10_test" in {m.name.tag for m in exp.metric_infos}


def test_scalars_csv_is_the_metrics_table(tb_run):
    search, summary, out, history, ea = tb_run
    rows = list(csv.DictReader((out / "scalars.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for r, rec in zip(rows, history):
        assert float(r["train_loss"]) == rec["train_loss"] and float(r["valid_acc"]) == rec["valid_acc"]
        assert float(r["entropy.normal"]) == rec["entropy"]["normal"]
        assert float(r["scores.nb201.cifar10_test"]) == rec["scores"]["nb201"]["cifar10_test"]
        assert not any(k.startswith("alphas") for k in r)


def test_logger_flag_and_unknown_logger(tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(trainer={"epochs": 1})))
    assert main(["search", str(recipe), "--out", str(tmp_path / "run"), "--logger", "tensorboard", "--no-progress"]) == 0
    assert (tmp_path / "run" / "recipe.yaml").read_text().count("name: tensorboard") == 1
    assert _events(tmp_path / "run" / "tensorboard").Scalars("train_loss")[0].step == 0
    assert main(["search", str(recipe), "--out", str(tmp_path / "run2"), "--logger", "tensorbord"]) == 2
    err = capsys.readouterr().err
    assert "unknown logger 'tensorbord'" in err and "did you mean 'tensorboard'" in err and "recipe.loggers[0].name" in err
    assert not (tmp_path / "run2").exists()


def test_log_folder_stays_inside_the_run(tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(loggers=[{"name": "tensorboard", "params": {"subdir": "../elsewhere"}}])))
    assert main(["validate", str(recipe)]) == 2
    assert "'subdir' must be a folder inside the run directory (relative, no '..'), got '../elsewhere' @ recipe.loggers[0].params" \
        in capsys.readouterr().err


def test_missing_tensorboard_names_the_extra(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(PluginError, match=r"pip install diffnas\[tensorboard\]"):
        run_tiny(tiny_recipe(loggers=[{"name": "tensorboard"}]), cat=fresh_catalogue())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    assert main(["search", str(recipe), "--out", str(tmp_path / "run"), "--logger", "tensorboard"]) == 2
    assert "the tensorboard logger needs the tensorboard package: pip install diffnas[tensorboard]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resumed_run_has_no_duplicate_epochs(tmp_path):
    """A search killed after TensorBoard logged epoch 1 but before its checkpoint: the resumed run
    purges those events and logs epoch 1 again, so every curve has one point per epoch."""
    from diffnas import api, hookimpl

    class Crash(Exception):
        pass

    class CrashAfterLogging:
        @hookimpl(trylast=True)  # after the logger's own epoch_end
        def diffnas_epoch_end(self, search, epoch, record):
            if epoch == 1:
                raise Crash

    recipe = tiny_recipe(loggers=[{"name": "tensorboard", "params": {"alpha_images": False, "cell_images": False}}],
                         trainer={"epochs": 3})
    with pytest.raises(Crash):
        run_tiny(recipe, out_dir=tmp_path, cat=fresh_catalogue(CrashAfterLogging()))
    assert [e.step for e in _events(tmp_path / "tensorboard").Scalars("train_loss")] == [0, 1]
    api.resume(tmp_path, progress=False, cat=fresh_catalogue())
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = _events(tmp_path / "tensorboard").Scalars("train_loss")
    assert [e.step for e in events] == [0, 1, 2]
    assert [e.value for e in events] == pytest.approx([r["train_loss"] for r in history], rel=1e-6)


def test_step_records_at_the_global_step_and_no_duplicates_after_a_resume(tmp_path):
    """diagnostics.every_steps: the step records go to <subdir>/steps at their global step; a run
    killed after logging epoch 1 but before its checkpoint logs them once each after the resume."""
    from diffnas import api, hookimpl

    class Crash(Exception):
        pass

    class CrashAfterLogging:
        @hookimpl(trylast=True)
        def diffnas_epoch_end(self, search, epoch, record):
            if epoch == 1:
                raise Crash

    recipe = tiny_recipe(loggers=[{"name": "tensorboard", "params": {"alpha_images": False, "cell_images": False}}],
                         trainer={"epochs": 3}, diagnostics={"every_steps": 1})
    with pytest.raises(Crash):
        run_tiny(recipe, out_dir=tmp_path, cat=fresh_catalogue(CrashAfterLogging()))
    assert [e.step for e in _events(tmp_path / "tensorboard" / "steps").Scalars("parameter_free_share/normal")] == \
        [0, 1, 2, 3, 4]
    api.resume(tmp_path, progress=False, cat=fresh_catalogue())
    steps = api.load_run(tmp_path).steps
    ea = _events(tmp_path / "tensorboard" / "steps")
    for tag in ("parameter_free_share/normal", "skip_weight/normal", "entropy/normal", "scores/nb201/cifar10_test"):
        key = tag.split("/")
        want = [s[key[0]][key[1]] if len(key) == 2 else s[key[0]][key[1]][key[2]] for s in steps]
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [0, 1, 2, 3, 4, 5, 6], tag
        assert [e.value for e in events] == pytest.approx(want, rel=1e-6), tag
    assert "global_step" not in ea.Tags()["scalars"]
    # epoch scalars stay in the top folder, at the epoch index
    assert [e.step for e in _events(tmp_path / "tensorboard").Scalars("train_loss")] == [0, 1, 2]
