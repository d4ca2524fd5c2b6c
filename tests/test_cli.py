import json

import pytest

from diffnas.cli import main

RECIPE = """
version: 1
search_space: {name: nb201, params: {C: 4, N: 1}}
relaxation: {name: softmax}
update_rule: {name: bilevel}
discretiser: {name: argmax_per_edge}
data: {dataset: synthetic, params: {num_train: 64, num_test: 16, image_size: 8}}
trainer: {epochs: 1, batch_size: 8, device: cpu, steps_per_epoch: 2}
output: {progress: false, draw_cells: false}
"""


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    return p


def test_search_and_show(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", str(recipe), "--out", str(out), "--set", "trainer.epochs=2"]) == 0
    printed = capsys.readouterr().out
    genotype = json.loads((out / "result.json").read_text())["genotype"]
    result = json.loads((out / "result.json").read_text())
    nb = result["scores"]["nb201"]
    assert f"genotype: {genotype}" in printed
    assert (f"nb201 #{nb['index']} test accuracy (200 epochs, mean of 3 seeds): cifar10 {nb['cifar10_test']:.2f}  "
            f"cifar100 {nb['cifar100_test']:.2f}  imagenet16-120 {nb['imagenet16_test']:.2f}") in printed
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2
    assert main(["show", str(out), "--png", str(tmp_path / "png")]) == 0
    shown = capsys.readouterr().out
    assert f"genotype: {genotype}" in shown and (tmp_path / "png" / "cell_normal.png").exists()
    # the whole record: the per-epoch table (rounded), the final scores, the timings
    lines = shown.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["epoch", "train", "loss"])
    for r, ln in zip(history, lines[head + 1: head + 3]):
        cells = ln.split()
        assert cells[:5] == [str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r['train_acc']:.2f}", f"{r['valid_loss']:.4f}",
                             f"{r['valid_acc']:.2f}"]
        assert f"{r['scores']['nb201']['cifar10_test']:.2f}" in cells and f"{r['time_s']:.1f}" in cells
    assert f"search time: {result['search_time_s']:.1f} s (sum of epochs), wall time: {result['wall_time_s']:.1f} s" in shown
    assert "epochs run: 2" in shown and f"cifar10 {nb['cifar10_test']:.2f}" in shown
    assert not any(len(w.split(".")[-1]) > 4 and w.replace(".", "").isdigit() for w in shown.split())  # no long floats
    assert main(["show", genotype]) == 0


def test_help_has_no_raw_rest(capsys):
    import re

    from diffnas.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"search", "validate", "plugins", "show", "score", "train", "rank", "study"} <= set(sub.choices)
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "``" not in text and not re.search(r":[a-z]+:`", text), name


def test_python_dash_m(tmp_path):
    import os
    import subprocess
    import sys

    from diffnas import __version__

    r = subprocess.run([sys.executable, "-m", "diffnas", "--version"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and r.stdout.strip() == f"diffnas {__version__}"


def test_validate(recipe, capsys):
    assert main(["validate", str(recipe)]) == 0
    assert "ok (nb201 / softmax / bilevel" in capsys.readouterr().out


def test_bad_recipe_exits_2_with_every_problem(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(RECIPE.replace("softmax", "sofmax").replace("epochs: 1", "epochs: -3").replace("C: 4", "C: four"))
    assert main(["search", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "Traceback" not in err
    assert "(did you mean 'softmax'?) @ recipe.relaxation.name" in err
    assert "@ recipe.search_space.params.C" in err and "'epochs' must be > 0, got -3 @ recipe.trainer" in err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    comps = data["components"]
    for kind in ("search_space", "relaxation", "update_rule", "regulariser", "discretiser", "schedule", "dataset",
                 "executor", "logger"):
        assert kind in comps
    assert [c["name"] for c in comps["executor"]] == ["gpus", "ray", "sequential", "slurm"]
    ray = next(c for c in comps["executor"] if c["name"] == "ray")
    assert [p["name"] for p in ray["params"]] == ["address", "num_gpus", "num_cpus", "max_retries"]
    assert [c["name"] for c in comps["logger"]] == ["tensorboard"]
    nb201 = next(c for c in comps["search_space"] if c["name"] == "nb201")
    assert {"name": "C", "type": "int", "default": 16, "required": False, "help": "channels of the first stage"} in nb201["params"]
    assert any(p["name"] == "nb201" and "diffnas_register_search_spaces" in p["hooks"] for p in data["plugins"])


def test_every_example_recipe_validates(capsys):
    from pathlib import Path

    recipes = sorted(Path(__file__).resolve().parents[1].glob("examples/recipes/*.yaml"))
    assert recipes
    assert main(["validate", *map(str, recipes)]) == 0
