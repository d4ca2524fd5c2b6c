"""``diffnas score``: NB201 table, NATS-Bench "simple" files (safely unpickled), NB301 surrogate."""

import bz2
import importlib.util
import json
import os
import pickle
import sys

import pytest

from diffnas.benchmarks.nats import NATSTopology, safe_load
from diffnas.cli import main
from diffnas.core.errors import DataError
from diffnas.core.genotype import Genotype

ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ARCH_284 = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|nor_conv_1x1~1|none~2|"
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def run_json(capsys, *argv):
    rc = main(["score", *argv, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def test_nb201_lookup_all_three_datasets(capsys):
    res = run_json(capsys, ALL_SKIP)
    nb = res["scores"]["nb201"]
    assert (round(nb["cifar10_test"], 2), round(nb["cifar100_test"], 2), round(nb["imagenet16_test"], 2)) == (54.30, 15.61, 16.32)
    assert res["space"] == "nb201"
    assert main(["score", ALL_SKIP]) == 0
    assert "cifar100 15.61" in capsys.readouterr().out


def test_run_dir_and_file_targets(capsys, tmp_path):
    g = Genotype.from_nb201_string(ALL_SKIP)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "genotype.json").write_text(g.to_json())
    res = run_json(capsys, str(tmp_path / "run"))
    assert res["run_dir"] == str(tmp_path / "run") and round(res["scores"]["nb201"]["cifar10_test"], 2) == 54.30
    (tmp_path / "g.txt").write_text(ALL_SKIP + "\n")
    assert run_json(capsys, str(tmp_path / "g.txt"))["scores"]["nb201"]["index"] == res["scores"]["nb201"]["index"]
    assert main(["score", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_nats_simple_files(shared_data, capsys):
    fixture = shared_data / "nb201" / "nats_tss_fixture"
    res = run_json(capsys, ARCH_284, "--nats-dir", str(fixture))
    nats = res["scores"]["nats"]
    assert nats["index"] == 284 and nats["epochs"] == 200
    # the test columns agree with the NB201 table (same seeds, same epochs)
    assert nats["cifar10"]["test_acc"] == pytest.approx(88.79, abs=1e-6)
    assert nats["cifar100"]["test_acc"] == pytest.approx(res["scores"]["nb201"]["cifar100_test"], abs=1e-4)
    assert nats["ImageNet16-120"]["test_acc"] == pytest.approx(res["scores"]["nb201"]["imagenet16_test"], abs=1e-4)
    # validation numbers exist where the split does
    assert nats["cifar10-valid"]["valid_acc"] == pytest.approx(86.0467, abs=1e-3)
    assert nats["cifar10"]["valid_acc"] is None
    for ds in ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120"):
        assert 0 < nats[ds]["train_acc"] <= 100 and nats[ds]["seeds"] == [777, 888, 999]
    assert nats["cifar10"]["params_M"] == pytest.approx(0.101306)
    table = main(["score", ARCH_284, "--nats-dir", str(fixture)])
    assert table == 0 and "cifar10-valid" in capsys.readouterr().out
    # the 12-epoch budget and index 0 (all archs are in meta)
    n = NATSTopology(fixture)
    assert len(n.archs) == 15625
    assert n.info(11, hp="12")["cifar10-valid"]["seeds"] == [111, 777]
    assert n.info(0)["cifar10"]["test_acc"] == pytest.approx(85.86333333, abs=1e-6)
    # an arch without a file, and a non-NB201 genotype
    assert main(["score", ALL_SKIP, "--nats-dir", str(fixture)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["score", DARTS_V2, "--nats-dir", str(fixture)]) == 2


class Evil:
    def __reduce__(self):
        return (os.system, ("touch SHOULD_NOT_EXIST",))


def test_unpickling_is_restricted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "meta.pickle.pbz2"
    path.write_bytes(bz2.compress(pickle.dumps({"meta_archs": [Evil()]})))
    with pytest.raises(DataError, match="refuses to load global"):
        safe_load(path)
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()
    with pytest.raises(DataError, match="refuses"):
        NATSTopology(tmp_path)
    (tmp_path / "junk.pickle").write_bytes(b"not a pickle")
    with pytest.raises(DataError):
        safe_load(tmp_path / "junk.pickle")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="onnxruntime is not installed (pip install diffnas[surrogate])")
def test_darts_genotype_uses_the_surrogate(capsys, tmp_path, monkeypatch):
    # offline and without a data root: the surrogate embedded in the package
    monkeypatch.delenv("DIFFNAS_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    res = run_json(capsys, DARTS_V2)
    assert round(res["scores"]["nb301"]["val_acc"], 4) == 0.9291
    assert main(["score", DARTS_V2]) == 0
    assert "nb301 surrogate: predicted CIFAR-10 val accuracy 92.91% (epoch 98)" in capsys.readouterr().out
    # a cell the surrogate cannot encode: the reason, exit 2
    assert main(["score", DARTS_V2.replace("('dil_conv_3x3', 2)", "('none', 2)")]) == 2
    err = capsys.readouterr().err
    assert "no score for this 'darts' genotype: nb301: normal cell: op 'none' on edge 2->5 is not in the NB301 space" in err


def test_missing_onnxruntime_is_named_with_the_install_command(capsys, tmp_path, monkeypatch):
    from diffnas.benchmarks import nb301

    d = tmp_path / "nb301_surrogate"  # a folder of its own so that no cached session is reused
    d.mkdir()
    for f in (nb301.MODEL_FILE, nb301.ENCODING_FILE):
        (d / f).symlink_to(nb301.embedded_path(nb301.SUBDIR) / f)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["score", DARTS_V2, "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime is not installed" in err and "pip install 'diffnas[surrogate]'" in err


def test_search_says_why_a_darts_cell_has_no_surrogate_score(tmp_path, capsys, monkeypatch):
    """Without onnxruntime a DARTS-space search still runs; metrics.jsonl and the printed summary
    carry the reason instead of a score."""
    import yaml

    from diffnas.benchmarks import nb301
    from diffnas.testing import tiny_recipe

    recipe = tmp_path / "darts.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(search_space={"name": "darts", "params": {"C": 4, "layers": 3}},
                                                 discretiser={"name": "top_k_edges"}, trainer={"epochs": 1, "steps_per_epoch": 1})))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    nb301._load.cache_clear()  # no session cached by an earlier test
    try:
        assert main(["search", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    finally:
        nb301._load.cache_clear()
    out = capsys.readouterr().out
    assert "nb301: not scored: onnxruntime is not installed; the NB301 surrogate needs it: pip install 'diffnas[surrogate]'" in out
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "onnxruntime is not installed" in rec["scores"]["nb301"]["unavailable"]
