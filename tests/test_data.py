import numpy as np
import pytest
import torch

from diffnas.benchmarks.nb201 import find_optimum, load_table
from diffnas.core.errors import DataError
from diffnas.core.protocols import Split
from diffnas.core.recipe import DataConfig
from diffnas.data.datasets import CIFAR10, find_cifar10, split_train_valid
from diffnas.data.loader import DeviceLoader


def test_embedded_cifar10_sample_is_real_and_balanced(tmp_path):
    bundle = CIFAR10().load(DataConfig(root=str(tmp_path), source="embedded", train_portion=0.5), seed=0)
    assert bundle.source.startswith("embedded:")
    assert len(bundle.train) == 1500 and len(bundle.valid) == 1500 and len(bundle.test) == 1000
    assert bundle.train.x.shape[1:] == (32, 32, 3) and bundle.train.x.dtype == torch.uint8
    counts = torch.bincount(torch.cat([bundle.train.y, bundle.valid.y]), minlength=10)
    assert counts.tolist() == [300] * 10
    # real photographs: per-channel means near CIFAR-10's
    mean = torch.cat([bundle.train.x, bundle.valid.x]).float().mean((0, 1, 2)) / 255
    assert torch.allclose(mean, torch.tensor([0.49, 0.48, 0.45]), atol=0.04)


def test_auto_falls_back_to_embedded_and_missing_named_source_is_clear(tmp_path):
    assert find_cifar10(tmp_path, "auto", False)[0] == "embedded"
    with pytest.raises(DataError, match="cifar10_jpeg_bytes.npz"):
        find_cifar10(tmp_path, "jpeg_pack", False)


def test_full_jpeg_pack_from_the_data_root(shared_data):
    bundle = CIFAR10().load(DataConfig(root=str(shared_data), limit=2000), seed=0)
    assert bundle.source.startswith("jpeg_pack:")
    assert len(bundle.train) == 1000 and len(bundle.valid) == 1000 and len(bundle.test) == 10000


def test_split_is_seeded_and_disjoint():
    s = Split(torch.arange(100).view(100, 1, 1, 1).to(torch.uint8), torch.arange(100))
    a, b = split_train_valid(s, 0.5, seed=3, limit=None)
    a2, _ = split_train_valid(s, 0.5, seed=3, limit=None)
    assert torch.equal(a.y, a2.y)
    assert set(a.y.tolist()).isdisjoint(b.y.tolist()) and len(a) == len(b) == 50


def test_loader_crop_and_flip_match_torchvision_semantics():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 8, 8, 3), generator=g, dtype=torch.uint8)
    split = Split(x, torch.arange(4))
    dl = DeviceLoader(split, 4, torch.device("cpu"), (0.0,) * 3, (1 / 255,) * 3, augment=True, seed=0)
    gen_state = dl.gen.get_state()
    out, y = dl.make_batch(torch.arange(4))
    # replay the same random draws and crop by hand
    dl.gen.set_state(gen_state)
    r = torch.randint(0, 9, (2, 4), generator=dl.gen)
    flip = torch.rand(4, generator=dl.gen) < 0.5
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (4, 4, 4, 4))
    for i in range(4):
        crop = padded[i, :, r[0, i]: r[0, i] + 8, r[1, i]: r[1, i] + 8]
        if flip[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop.float()), i


def test_loader_epochs_are_permutations_and_reproducible():
    split = Split(torch.zeros(10, 2, 2, 3, dtype=torch.uint8), torch.arange(10))
    dl = DeviceLoader(split, 5, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3, augment=False, seed=1)
    ys = torch.cat([dl.batch(0, i)[1] for i in range(2)])
    assert sorted(ys.tolist()) == list(range(10))
    assert torch.equal(ys, torch.cat([dl.batch(0, i)[1] for i in range(2)]))
    assert not torch.equal(ys, torch.cat([dl.batch(1, i)[1] for i in range(2)]))
    # past the end: a new shuffled pass
    assert sorted(torch.cat([dl.batch(0, i)[1] for i in range(2, 4)]).tolist()) == list(range(10))


def test_nb201_table_known_cells():
    t = load_table()
    assert len(t) == 15625
    skip = t["|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"]
    assert (round(skip.cifar10_test, 2), round(skip.cifar100_test, 2), round(skip.imagenet16_test, 2)) == (54.30, 15.61, 16.32)
    best = t["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"]
    assert (round(best.cifar10_test, 2), round(best.cifar100_test, 2), round(best.imagenet16_test, 2)) == (94.36, 73.51, 46.34)
    assert round(find_optimum(t, "cifar10_test").cifar10_test, 2) == 94.37
    assert round(find_optimum(t, "imagenet16_test").imagenet16_test, 2) == 47.31


def test_embedded_table_equals_the_shared_csv(shared_data):
    load_table.cache_clear()
    full = load_table(str(shared_data))
    emb = load_table("/nonexistent-root")
    assert full.source.endswith("nats_bench.csv") and emb.source.startswith("embedded:")
    assert [r.arch for r in full.rows[:50]] == [r.arch for r in emb.rows[:50]]
    assert np.allclose([r.cifar10_test for r in full.rows], [r.cifar10_test for r in emb.rows])
