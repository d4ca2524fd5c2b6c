"""NAS-Bench-301 surrogate: input encoding, published sanity values, the scorer plugin."""

import sys

import numpy as np
import pytest

from diffnas.benchmarks import nb301
from diffnas.core.errors import DiffnasError
from diffnas.core.genotype import Genotype
from diffnas.registry import get_plugin_manager

try:
    import onnxruntime  # noqa: F401
except ImportError:
    onnxruntime = None
needs_onnxruntime = pytest.mark.skipif(onnxruntime is None, reason="onnxruntime is not installed (pip install diffnas[surrogate])")

DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def all_skip_normal() -> Genotype:
    """Every intermediate node reads both cell inputs through skip_connect (reduce cell of DARTS-V2)."""
    g = Genotype.parse(DARTS_V2)
    normal = [(src, dst, "skip_connect") for dst in (2, 3, 4, 5) for src in (0, 1)]
    return Genotype.from_dict({"space": "darts", "cells": {
        "normal": {"edges": normal, "concat": [2, 3, 4, 5]}, "reduce": g.cells["reduce"].to_dict()}})


def test_encoding_order_follows_the_readme():
    g = Genotype.parse(DARTS_V2)
    edges, pairs = nb301.encode_cell(g, "normal")
    # node 2: edges 0-1, node 3: 2-4, node 4: 5-8, node 5: 9-13; index = start + input node
    assert edges == ["sep_conv_3x3", "sep_conv_3x3", "sep_conv_3x3", "sep_conv_3x3", "#na#",
                     "skip_connect", "sep_conv_3x3", "#na#", "#na#",
                     "skip_connect", "#na#", "dil_conv_3x3", "#na#", "#na#"]
    assert pairs == ["0_1", "0_1", "0_2"]
    _, rpairs = nb301.encode_cell(g, "reduce")
    assert rpairs == ["1_2", "0_2", "1_2"]
    assert len(nb301.INPUT_KEYS) == 34 and nb301.INPUT_KEYS[14] == "edge_reduce_0" and nb301.INPUT_KEYS[28] == "inputs_node_normal_3"


@needs_onnxruntime
def test_darts_v2_and_all_skip(tmp_path):
    s = nb301.load_surrogate(str(tmp_path))  # an empty data root: the surrogate embedded in the package
    assert s.directory == nb301.embedded_path(nb301.SUBDIR)
    v2 = Genotype.parse(DARTS_V2)
    x = s.encode([v2])
    assert x.dtype == np.int32 and x.shape == (1, 34)
    acc = s.predict(v2)
    assert abs(acc - 0.929) < 0.01
    skip = s.predict(all_skip_normal())
    assert abs(skip - 0.837) < 0.01
    assert skip < acc


@needs_onnxruntime
def test_embedded_surrogate_is_the_data_root_one(shared_data, tmp_path):
    """The embedded files are byte copies of ../shared/data/nb301_surrogate and predict the same."""
    emb = nb301.embedded_path(nb301.SUBDIR)
    for f in (nb301.MODEL_FILE, nb301.ENCODING_FILE, "LICENSE-2.0.txt"):
        assert (emb / f).read_bytes() == (shared_data / nb301.SUBDIR / f).read_bytes(), f
    root, embedded = nb301.load_surrogate(str(shared_data)), nb301.load_surrogate(str(tmp_path))
    assert root.directory == shared_data / nb301.SUBDIR and embedded.directory == emb
    gs = [Genotype.parse(DARTS_V2), all_skip_normal()]
    assert root.predict(gs).tolist() == embedded.predict(gs).tolist()
    assert round(float(embedded.predict(gs[0])), 4) == 0.9291


@needs_onnxruntime
def test_batch_matches_single(tmp_path):
    s = nb301.load_surrogate(str(tmp_path))
    gs = [Genotype.parse(DARTS_V2), all_skip_normal(), Genotype.parse(DARTS_V2.replace("max_pool", "avg_pool"))]
    batch = s.predict(gs)
    single = [s.predict(g) for g in gs]
    assert batch.shape == (3,)
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert s.predict_raw(gs, epoch=10).shape == (3, 4)
    with pytest.raises(DiffnasError):
        s.predict_raw(gs, epoch=99)


def test_unencodable_genotypes_are_refused():
    g = Genotype.parse(DARTS_V2.replace("('dil_conv_3x3', 2)", "('none', 2)"))
    with pytest.raises(DiffnasError, match="not in the NB301 space"):
        nb301.encode_cell(g, "normal")
    g = Genotype.parse(DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 0)"))
    with pytest.raises(DiffnasError, match="two distinct inputs"):
        nb301.encode_cell(g, "normal")
    with pytest.raises(DiffnasError):
        nb301.encode_cell(Genotype.from_nb201_string("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"), "reduce")


@needs_onnxruntime
def test_scorer_plugin(tmp_path, monkeypatch):
    pm = get_plugin_manager(autoload=False)
    v2 = Genotype.parse(DARTS_V2)
    res = [r for r in pm.hook.diffnas_score_genotype(genotype=v2, context={"data_root": str(tmp_path)}) if r]
    assert len(res) == 1 and res[0]["nb301"]["epoch"] == 98 and abs(res[0]["nb301"]["val_acc"] - 0.929) < 0.01
    # a cell the surrogate cannot encode: the reason instead of a score
    bad = Genotype.parse(DARTS_V2.replace("('dil_conv_3x3', 2)", "('none', 2)"))
    (res,) = [r for r in pm.hook.diffnas_score_genotype(genotype=bad, context={}) if r]
    assert "not in the NB301 space" in res["nb301"]["unavailable"]
    # onnxruntime missing (a fresh folder so the cached session is not reused): the reason, with the install command
    d = tmp_path / "root" / "nb301_surrogate"
    d.mkdir(parents=True)
    for f in ("model_v2.onnx", "encoding_v2.json"):
        (d / f).symlink_to(nb301.embedded_path(nb301.SUBDIR) / f)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (res,) = [r for r in pm.hook.diffnas_score_genotype(genotype=v2, context={"data_root": str(tmp_path / "root")}) if r]
    assert "onnxruntime is not installed" in res["nb301"]["unavailable"] and "diffnas[surrogate]" in res["nb301"]["unavailable"]
    with pytest.raises(nb301.SurrogateUnavailable, match="onnxruntime"):
        nb301.load_surrogate(str(tmp_path / "root"))
    # other spaces: silent
    nb = Genotype.from_nb201_string("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|")
    assert all("nb301" not in (r or {}) for r in pm.hook.diffnas_score_genotype(genotype=nb, context={}))
