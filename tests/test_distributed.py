"""One search under torchrun: two CPU processes (gloo) share every batch and stay identical."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

RECIPE = """
version: 1
search_space: {name: nb201, params: {C: 4, N: 1}}
relaxation: {name: softmax}
update_rule: {name: bilevel}
discretiser: {name: argmax_per_edge}
data: {dataset: synthetic, params: {num_train: 64, num_test: 16, image_size: 8}, augment: false}
trainer: {epochs: 2, batch_size: 8, device: cpu, steps_per_epoch: 2, seed: 0}
output: {progress: false, draw_cells: false}
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_ranks(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    torchrun = shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--standalone", "--nproc_per_node", "2", "-m", "diffnas.cli", "search", str(recipe), "--out", str(out)]
    # PYTHONFAULTHANDLER: should a rank abort in C++ (a rare "terminate called without an active
    # exception" at exit was seen under heavy load), its Python stacks are printed for diagnosis
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "DIFFNAS_DISABLE_PLUGIN_AUTOLOAD": "1",
                               "PYTHONFAULTHANDLER": "1"})
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert proc.stdout.count("genotype: ") == 1  # only rank 0 reports
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    # the engine checks at the end that both ranks hold bitwise-equal α (exit 0 means they did)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 2
    # each rank took 4 of every global batch of 8; the record sums both ranks: 2 steps x 8 images
    assert [r["train_images"] for r in lines] == [16, 16]
