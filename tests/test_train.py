"""``diffnas train``: discrete networks, the training loop, its recipes and run directory."""

import json
from pathlib import Path

import pytest
import torch

from diffnas.cli import main
from diffnas.core.errors import RecipeError
from diffnas.core.genotype import Genotype
from diffnas.core.outputs import load_checkpoint
from diffnas.plugins.search_spaces.nb201 import DiscreteNB201Network
from diffnas.testing import fresh_catalogue
from diffnas.training import DartsEvalNetwork, Trainer, count_flops, count_parameters, load_train_recipe, resume_trainer
from diffnas.training.trainer import cutout

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "examples" / "train" / "smoke_cpu.yaml"
CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def test_darts_v2_network_size():
    net = DartsEvalNetwork(Genotype.parse(DARTS_V2), 36, 20, 10, auxiliary=True, drop_path_prob=0.2)
    p = count_parameters(net) / 1e6
    assert 3.25 < p < 3.45  # DARTS reports 3.3 M (auxiliary head excluded)
    assert count_parameters(net, exclude_auxiliary=False) > count_parameters(net)
    assert [c.reduction for c in net.cells].count(True) == 2 and net.cells[6].reduction and net.cells[13].reduction


def test_darts_network_forward_aux_and_drop_path():
    torch.manual_seed(0)
    net = DartsEvalNetwork(Genotype.parse(DARTS_V2), 4, 3, 10, auxiliary=True, drop_path_prob=0.5)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    out = net(x)
    assert out.shape == (2, 10) and net.aux_logits is not None and net.aux_logits.shape == (2, 10)
    (out.sum() + net.aux_logits.sum()).backward()
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 10)
    assert net.aux_logits is None
    assert count_flops(net, (3, 32, 32)) > 0


def test_nb201_network_matches_nats_bench_params_and_flops():
    # NATS-Bench reports 0.129306 M params and 15.64737 M FLOPs for architecture 0 on CIFAR-10
    g = Genotype.from_nb201_string("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")
    net = DiscreteNB201Network(g, 16, 5, 10)
    assert count_parameters(net) == 129306
    assert count_flops(net, (3, 32, 32)) / 1e6 == pytest.approx(15.64737, abs=1e-3)


def test_cutout_zeroes_one_clipped_square():
    x = torch.ones(64, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    y = cutout(x, 8, g)
    zeros = (y[:, 0] == 0).flatten(1).sum(1)
    assert (zeros <= 64).all() and (zeros >= 16).all()  # at least a quarter of the square survives clipping
    assert torch.equal(y[:, 0] == 0, y[:, 2] == 0)


def test_bundled_recipes_validate():
    cat = fresh_catalogue()
    d = load_train_recipe(ROOT / "examples/train/darts_cifar10.yaml", catalogue=cat)
    assert (d.network.C, d.network.layers, d.trainer.epochs, d.trainer.batch_size, d.trainer.cutout) == (36, 20, 600, 96, 16)
    assert (d.network.drop_path_prob, d.trainer.auxiliary_weight, d.trainer.optimizer.weight_decay, d.trainer.grad_clip) == (0.3, 0.4, 3e-4, 5.0)
    n = load_train_recipe(ROOT / "examples/train/nb201_cifar10.yaml", catalogue=cat)
    assert (n.network.C, n.network.N, n.trainer.epochs, n.trainer.batch_size) == (16, 5, 200, 256)
    assert (n.trainer.optimizer.lr, n.trainer.optimizer.nesterov, n.trainer.optimizer.weight_decay) == (0.1, True, 5e-4)
    h = load_train_recipe(ROOT / "examples/train/lhd_cifar10.yaml", catalogue=cat)
    assert (h.network.C, h.network.layers, h.network.auxiliary, h.network.drop_path_prob) == (36, 20, True, 0.01)
    assert (h.trainer.epochs, h.trainer.batch_size, h.trainer.cutout, h.trainer.optimizer.nesterov) == (600, 64, 16, False)
    load_train_recipe(SMOKE, catalogue=cat)


def test_bad_recipe_reports_key_paths(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: {C: 4, widht: 3}\ntrainer: {epochs: 0, optimizer: {lr: 1e-3}}\n")
    with pytest.raises(RecipeError) as exc:
        load_train_recipe(bad)
    msg = str(exc.value)
    assert "widht" in msg and "recipe.network" in msg and "1.0e-3" in msg and "recipe.trainer.optimizer.lr" in msg
    with pytest.raises(RecipeError, match="'epochs' must be > 0"):
        load_train_recipe(None, ["trainer.epochs=0"])
    assert main(["train", CELL, "--recipe", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_cli_smoke_run_writes_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", CELL, "--recipe", str(SMOKE), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "final test accuracy" in text and "M FLOPs" in text
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1] and all("test_acc" in r and "train_loss" in r for r in lines)
    assert lines[1]["lr"] < lines[0]["lr"]
    res = json.loads((out / "result.json").read_text())
    assert res["epochs_run"] == 2 and res["test_acc"] == lines[-1]["test_acc"] and res["params_M"] > 0 and res["flops_M"] > 0
    ckpt = load_checkpoint(out / "checkpoint.pt")  # weights_only
    assert ckpt["epoch"] == 2
    assert Genotype.from_json((out / "genotype.json").read_text()).to_nb201_string() == CELL
    # without --no-progress: one bar in steps (plain lines off a terminal), as a search's
    assert main(["train", CELL, "--recipe", str(SMOKE), "--out", str(tmp_path / "bar"), "--set", "trainer.epochs=1",
                 "--set", "output.progress=true"]) == 0
    err = capsys.readouterr().err
    assert "train: 0/2 step (0%)" in err and "train: 2/2 step (100%)" in err and "\r" not in err  # 2 steps an epoch
    # --resume of a finished run has nothing left to do and keeps the result
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "result.json").read_text())["test_acc"] == res["test_acc"]


def test_resume_continues_exactly(tmp_path):
    cat = fresh_catalogue()
    recipe = load_train_recipe(SMOKE, catalogue=cat)
    g = Genotype.from_nb201_string(CELL)
    full = Trainer(g, recipe, cat, tmp_path / "a").run()
    part = Trainer(g, recipe, cat, tmp_path / "b")
    part.run(max_epochs=1)
    assert part.epoch == 1
    resumed = resume_trainer(tmp_path / "b", cat).run()
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "time_s"}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]
    assert resumed["test_acc"] == full["test_acc"]


def test_resume_refuses_an_edited_recipe_or_genotype(tmp_path):
    """The training checkpoint holds the fingerprint of its recipe and genotype: a resume after
    either was edited is refused (exit 2 through the CLI) instead of mixing two settings in one run."""
    import yaml

    from diffnas.core.errors import RunError

    cat = fresh_catalogue()
    run = tmp_path / "r"
    Trainer(Genotype.from_nb201_string(CELL), load_train_recipe(SMOKE, catalogue=cat), cat, run).run(max_epochs=1)
    recipe_file, genotype_file = run / "train_recipe.yaml", run / "genotype.json"
    recipe_text, genotype_text = recipe_file.read_text(), genotype_file.read_text()
    ckpt_before = (run / "checkpoint.pt").read_bytes()

    doc = yaml.safe_load(recipe_text)
    doc["trainer"]["optimizer"]["lr"] = doc["trainer"]["optimizer"]["lr"] * 2
    recipe_file.write_text(yaml.safe_dump(doc))
    with pytest.raises(RunError, match="differs from what .*checkpoint.pt was made with"):
        resume_trainer(run, cat)
    assert main(["train", "--resume", str(run)]) == 2

    recipe_file.write_text(recipe_text)
    genotype_file.write_text(Genotype.from_nb201_string(CELL.replace("skip_connect", "avg_pool_3x3")).to_json())
    with pytest.raises(RunError, match="differs"):
        resume_trainer(run, cat)

    genotype_file.write_text(genotype_text)  # both restored: the training resumes
    assert resume_trainer(run, cat).epoch == 1
    assert (run / "checkpoint.pt").read_bytes() == ckpt_before  # the refusals changed nothing


def test_darts_genotype_trains_with_aux_and_cutout(tmp_path):
    cat = fresh_catalogue()
    recipe = load_train_recipe(None, ["network.C=4", "network.layers=3", "network.auxiliary=true", "network.drop_path_prob=0.2",
                                      "data.dataset=synthetic", "data.params.num_train=32", "data.params.num_test=8",
                                      "trainer.epochs=1", "trainer.batch_size=4", "trainer.steps_per_epoch=1",
                                      "trainer.device=cpu", "trainer.cutout=8", "output.progress=false"], catalogue=cat)
    res = Trainer(Genotype.parse(DARTS_V2), recipe, cat, None).run()
    assert res["network"] == "DartsEvalNetwork" and res["params_with_auxiliary_M"] > res["params_M"]


# --------------------------------------------------------------------------- trainer.cuda_graphs


def _trainer(tmp_path, overrides=(), name="t"):
    cat = fresh_catalogue()
    recipe = load_train_recipe(SMOKE, list(overrides), catalogue=cat)
    return Trainer(Genotype.parse(CELL), recipe, cat, tmp_path / name)


def test_train_cuda_graphs_refused_on_cpu_and_with_fp16(tmp_path):
    with pytest.raises(RecipeError) as err:
        _trainer(tmp_path, ["trainer.cuda_graphs=true", "trainer.autocast=fp16"])
    msg = str(err.value)
    assert "@ recipe.trainer.cuda_graphs" in msg and "needs a CUDA device" in msg and "use bf16" in msg


def test_train_cli_refusal_names_the_recipe_file(tmp_path, capsys):
    assert main(["train", CELL, "--recipe", str(SMOKE), "--set", "trainer.cuda_graphs=true", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(SMOKE) in err and "@ recipe.trainer.cuda_graphs" in err and "Traceback" not in err


def test_train_step_graph_orchestration_matches_the_plain_loop(tmp_path):
    """The training loop through StepGraph (warm-up, per-epoch reset, in-place sums; no capture on
    the CPU) gives the plain loop's records, and its step makes no host synchronisation."""
    from diffnas.core.graphs import StepGraph, find_host_syncs

    plain = _trainer(tmp_path, name="plain")
    plain_summary = plain.run(progress=False)
    graphed = _trainer(tmp_path, name="graphed")
    graphed._step_graph = StepGraph(graphed._train_step, warmup=1, capture=False)
    summary = graphed.run(progress=False)
    for a, b in zip(graphed.history, plain.history):
        for key in ("train_loss", "train_acc", "test_acc", "lr", "drop_path_prob"):
            assert a[key] == b[key], key
    assert summary["test_acc"] == plain_summary["test_acc"]
    assert graphed._step_graph.checked
    batch = graphed.train_loader.batch(0, 0)
    assert find_host_syncs(lambda: graphed._train_step(batch))[1] == []


@pytest.mark.gpu
def test_train_captured_matches_eager_on_cuda(tmp_path):
    over = ["trainer.device=cuda", "trainer.steps_per_epoch=5", "trainer.epochs=3"]
    torch.backends.cudnn.deterministic = True
    eager = _trainer(tmp_path, over, "eager")
    eager.run(progress=False)
    graphed = _trainer(tmp_path, over + ["trainer.cuda_graphs=true"], "graphed")
    graphed.run(progress=False)
    assert graphed._step_graph.captures == 3
    for a, b in zip(graphed.history, eager.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
