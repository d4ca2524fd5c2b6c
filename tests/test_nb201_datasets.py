"""CIFAR-100 and ImageNet16-120 read from the data root, on small stand-in files made here in the real
formats (no such images exist offline): pixel order, labels (ImageNet16: classes 1–120 kept as 0–119, as
AutoDL's ImageNet16(use_num_of_class_only=120)), the restricted unpickler, the NB201 column that scores a
search's cells, and ``diffnas search`` end to end."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffnas.cli import main
from diffnas.core.errors import DataError
from diffnas.core.recipe import DataConfig
from diffnas.plugins.scorers.nb201_table import diffnas_score_genotype
from diffnas.core.genotype import Genotype


def _batch(n: int, size: int, labels: list[int], key: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (n, 3 * size * size), dtype=np.uint8), key: labels}


def make_cifar100(root: Path, n_train: int = 40, n_test: int = 10) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    files = {"train": _batch(n_train, 32, [i % 100 for i in range(n_train)], "fine_labels", 0),
             "test": _batch(n_test, 32, [(7 * i) % 100 for i in range(n_test)], "fine_labels", 1)}
    for name, entry in files.items():
        entry["coarse_labels"] = [0] * len(entry["fine_labels"])
        entry["filenames"] = [f"img{i}.png" for i in range(len(entry["fine_labels"]))]
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))  # the python-2-era protocol of the real files
    return files


def make_imagenet16(root: Path, per_file: int = 12) -> dict:
    folder = root / "ImageNet16"
    folder.mkdir(parents=True)
    files = {}
    for i in range(1, 11):  # labels 1 … 1000 (1-based), only some ≤ 120
        files[f"train_data_batch_{i}"] = _batch(per_file, 16, [1 + (97 * (i * per_file + j)) % 1000 for j in range(per_file)],
                                                "labels", i)
    files["val_data"] = _batch(per_file, 16, [1 + (13 * j) % 240 for j in range(per_file)], "labels", 99)
    for name, entry in files.items():
        (folder / name).write_bytes(pickle.dumps(entry))
    return files


def _load(catalogue, name, root, **over):
    return catalogue.build("dataset", name).load(DataConfig(dataset=name, root=str(root), **over), 0)


def test_cifar100_from_torchvision_files(tmp_path, catalogue):
    files = make_cifar100(tmp_path)
    b = _load(catalogue, "cifar100", tmp_path, train_portion=1.0)
    assert b.num_classes == 100 and len(b.train) == 40 and len(b.test) == 10 and len(b.valid) == 0
    # rows are CHW: pixel (h, w) of channel c is data[c*1024 + h*32 + w]
    raw = files["test"]["data"][3]
    assert b.test.x.shape == (10, 32, 32, 3)
    assert int(b.test.x[3, 5, 7, 2]) == int(raw[2 * 1024 + 5 * 32 + 7])
    assert b.test.y.tolist() == files["test"]["fine_labels"]
    half = _load(catalogue, "cifar100", tmp_path)
    assert (len(half.train), len(half.valid)) == (20, 20)


def test_imagenet16_keeps_classes_1_to_120_as_0_to_119(tmp_path, catalogue):
    files = make_imagenet16(tmp_path)
    b = _load(catalogue, "imagenet16_120", tmp_path, train_portion=1.0)
    want = [y - 1 for name in (f"train_data_batch_{i}" for i in range(1, 11)) for y in files[name]["labels"] if y <= 120]
    assert sorted(b.train.y.tolist()) == sorted(want) and len(want) > 0
    assert b.test.y.tolist() == [y - 1 for y in files["val_data"]["labels"] if y <= 120]
    assert b.train.x.shape[1:] == (16, 16, 3) and b.num_classes == 120 and b.pad == 2
    first = next(j for j, y in enumerate(files["val_data"]["labels"]) if y <= 120)
    raw = files["val_data"]["data"][first]
    assert int(b.test.x[0, 4, 9, 1]) == int(raw[1 * 256 + 4 * 16 + 9])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_with_code_is_refused(tmp_path, catalogue):
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": _Evil(), "fine_labels": []}))
    with pytest.raises(DataError, match="refuses to load global"):
        _load(catalogue, "cifar100", tmp_path)


def test_missing_files_name_the_folder(tmp_path, catalogue):
    with pytest.raises(DataError, match="ImageNet16-120 not found.*ImageNet16"):
        _load(catalogue, "imagenet16_120", tmp_path)
    with pytest.raises(DataError, match="CIFAR-100 not found"):
        _load(catalogue, "cifar100", tmp_path)


def test_cells_are_scored_by_the_searched_datasets_column():
    g = Genotype.from_nb201_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    for ds, col, value in (("cifar10", "cifar10_test", 94.36), ("cifar100", "cifar100_test", 73.51),
                           ("imagenet16_120", "imagenet16_test", 46.34)):
        nb = diffnas_score_genotype(genotype=g, context={"dataset": ds})["nb201"]
        assert nb["column"] == col and nb["test"] == pytest.approx(value, abs=0.005)
    assert "column" not in diffnas_score_genotype(genotype=g, context={"dataset": "synthetic"})["nb201"]


@pytest.mark.parametrize("dataset, make, column", [("cifar100", make_cifar100, "cifar100_test"),
                                                   ("imagenet16_120", make_imagenet16, "imagenet16_test")])
@pytest.mark.parametrize("stem", ["darts_v1", "single_darts"])
def test_diffnas_search_runs_on_the_stand_ins(dataset, make, column, stem, tmp_path, capsys):
    make(tmp_path / "data")
    recipe = Path(__file__).resolve().parents[1] / "examples" / "recipes" / f"nb201_{dataset}_{stem}.yaml"
    out = tmp_path / "run"
    code = main(["search", str(recipe), "--out", str(out), "--set", f"data.root={tmp_path / 'data'}",
                 "--set", "search_space.params.C=4", "--set", "search_space.params.N=1", "--set", "trainer.epochs=1",
                 "--set", "trainer.batch_size=4", "--set", "trainer.steps_per_epoch=2", "--set", "trainer.device=cpu",
                 "--set", "output.progress=false", "--set", "output.draw_cells=false"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    nb = result["scores"]["nb201"]
    assert nb["column"] == column and nb["test"] == nb[column]
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["data"]["dataset"] == dataset
    assert f"searched on the {column[:-5]} data" in capsys.readouterr().out
