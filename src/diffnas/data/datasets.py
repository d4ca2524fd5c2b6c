"""Bundled datasets: CIFAR-10 (several sources) and synthetic data of any shape.

CIFAR-10 sources, tried in this order by ``data.source: auto``:

1. ``jpeg_pack``: ``<root>/cifar10/cifar10_jpeg_bytes.npz`` (all 60,000 images as the original
   JPEG bytes; decoded once with ``torchvision.io.decode_jpeg``);
2. ``torchvision``: the standard ``<root>/cifar-10-batches-py`` files through
   ``torchvision.datasets.CIFAR10`` (with ``data.download: true`` it downloads them);
3. ``embedded``: the small class-balanced JPEG sample shipped in the package, so the quickstart
   runs on a fresh machine with no network (see ``data/embedded/README.md``).

``subset`` reads the decoded 1000/500 test subset (``cifar10_jpeg_subset_1000_500_uint8.npz``).
The search split follows the NAS-Bench-201 protocol: the training images are shuffled with
``data.split_seed`` and cut into a train part (``train_portion``, 0.5 → 25k) and a valid part.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from ..core.config import help_field, in_range, one_of
from ..core.errors import DataError
from ..core.hookspecs import hookimpl
from ..core.protocols import DataBundle, Dataset, Split
from .root import data_root, embedded_path

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
JPEG_PACK = "cifar10_jpeg_bytes.npz"
SUBSET = "cifar10_jpeg_subset_1000_500_uint8.npz"
EMBEDDED = "cifar10_sample.npz"


def decode_jpegs(buf: np.ndarray, offsets: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Decode concatenated JPEG bytes into uint8 ``[N, H, W, 3]`` (batched; on CUDA if asked)."""
    import warnings

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still
        # give the batched (and CUDA) JPEG decoding this needs, so keep them while they exist.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.from_numpy(np.ascontiguousarray(buf))
    items = [data[int(offsets[i]): int(offsets[i + 1])] for i in range(len(offsets) - 1)]
    out = []
    for start in range(0, len(items), 8192):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            imgs = decode_jpeg(items[start: start + 8192], mode=ImageReadMode.RGB, device=device)
        out.append(torch.stack(imgs).permute(0, 2, 3, 1).to("cpu"))
    return torch.cat(out).contiguous()


def _read_npz(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _need(npz: Any, path: Path, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in npz.files]
    if missing:
        raise DataError(f"{path} lacks array(s) {missing}; is it the right file?")


def load_jpeg_npz(path: Path) -> tuple[Split, Split]:
    """Train and test splits from a JPEG pack (the full one or the embedded sample)."""
    z = _read_npz(path)
    _need(z, path, ("train_jpeg", "train_offsets", "y_train", "test_jpeg", "test_offsets", "y_test"))
    train = Split(decode_jpegs(z["train_jpeg"], z["train_offsets"]), torch.from_numpy(z["y_train"].astype(np.int64)))
    test = Split(decode_jpegs(z["test_jpeg"], z["test_offsets"]), torch.from_numpy(z["y_test"].astype(np.int64)))
    if "test_canonical_perm" in z.files:  # restore the original CIFAR-10 test order
        perm = torch.from_numpy(z["test_canonical_perm"].astype(np.int64))
        test = Split(test.x[perm], test.y[perm])
    return train, test


def load_decoded_npz(path: Path) -> tuple[Split, Split]:
    z = _read_npz(path)
    _need(z, path, ("x_train", "y_train", "x_test", "y_test"))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return (Split(t(z["x_train"]), t(z["y_train"].astype(np.int64))), Split(t(z["x_test"]), t(z["y_test"].astype(np.int64))))


def load_torchvision(root: Path, download: bool) -> tuple[Split, Split]:
    from torchvision.datasets import CIFAR10

    try:
        tr = CIFAR10(str(root), train=True, download=download)
        te = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise DataError(f"torchvision CIFAR-10 not usable under {root}: {exc}") from None
    except OSError as exc:  # urllib's URLError (no network), a full disk while downloading ...
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(f"cannot download CIFAR-10 into {root}: {reason}; without a network, put the files there "
                        f"yourself (see the README's Data section) and set data.download: false") from None
    mk = lambda ds: Split(torch.from_numpy(ds.data), torch.tensor(ds.targets, dtype=torch.int64))  # noqa: E731
    return mk(tr), mk(te)


def find_cifar10(root: Path, source: str, download: bool) -> tuple[str, Path]:
    """Which source and file ``auto`` (or the named source) resolves to."""
    candidates = {
        "jpeg_pack": [root / "cifar10" / JPEG_PACK, root / JPEG_PACK],
        "subset": [root / "cifar10" / SUBSET, root / SUBSET],
        "torchvision": [root / "cifar-10-batches-py"],
        "embedded": [embedded_path(EMBEDDED)],
    }
    order = ["jpeg_pack", "torchvision", "embedded"] if source == "auto" else [source]
    for name in order:
        for p in candidates[name]:
            if p.exists():
                return name, p
        if name == "torchvision" and download and source != "auto":
            return name, root
    tried = ", ".join(str(p) for n in order for p in candidates[n])
    raise DataError(f"CIFAR-10 ({source}) not found; looked for {tried}. Set data.root or DIFFNAS_DATA_ROOT, "
                    f"or use data.source: torchvision with data.download: true")


def split_train_valid(train: Split, portion: float, seed: int, limit: int | None) -> tuple[Split, Split]:
    """The NB201 search split: a seeded permutation cut into train / valid parts. ``portion`` 1.0
    keeps every image in the train part and leaves the valid part empty (single-level searches on the
    full training set, as Single-DARTS); a portion below 1 that rounds to an empty part is refused."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    if limit is not None:
        perm = perm[:limit]
    cut = len(perm) if portion >= 1.0 else int(round(len(perm) * portion))
    if cut == 0 or (cut == len(perm) and portion < 1.0):
        raise DataError(f"data.train_portion={portion} leaves an empty split of {len(perm)} images")
    a, b = perm[:cut], perm[cut:]
    return Split(train.x[a], train.y[a]), Split(train.x[b], train.y[b])


def downsample(split: Split, size: int) -> Split:
    """``split``'s uint8 NHWC images averaged over square pixel blocks down to ``size`` × ``size``
    (area interpolation, rounded to the nearest level), in chunks to bound the float copy."""
    h = split.x.shape[1]
    if h % size:
        raise DataError(f"cannot downsample {h}×{h} images to {size}×{size}")
    k, out = h // size, []
    for chunk in split.x.split(8192):
        x = chunk.permute(0, 3, 1, 2).float()
        out.append(torch.nn.functional.avg_pool2d(x, k).round_().to(torch.uint8).permute(0, 2, 3, 1))
    return Split(torch.cat(out).contiguous(), split.y)


class CIFAR10(Dataset):
    """CIFAR-10 (Krizhevsky 2009), 10 classes of 32×32 RGB images, split for search as in NAS-Bench-201."""

    depends_on_seed = False  # the split is seeded by data.split_seed, not the search's seed

    @attrs.frozen
    class Params:
        """CIFAR-10's ``data.params`` (its other settings are ``data.source``, ``root`` ...)."""

        image_size: int = help_field(32, "height and width: 32 as stored, or 16 / 8 by averaging 2×2 / 4×4 pixel "
                                     "blocks (cheaper searches on a CPU); the crop padding scales with it (4, 2, 1)",
                                     validator=one_of(32, 16, 8))

    def load(self, data_config: Any, seed: int) -> DataBundle:
        root = data_root(data_config.root)
        source, path = find_cifar10(root, data_config.source, data_config.download)
        if source == "torchvision":
            train, test = load_torchvision(path if path.name != "cifar-10-batches-py" else path.parent, data_config.download)
        elif source == "subset":
            train, test = load_decoded_npz(path)
        else:
            train, test = load_jpeg_npz(path)
        log.info("CIFAR-10 from %s (%s): %d train, %d test images", source, path, len(train), len(test))
        from ..core.config import structure

        params, problems = structure(dict(data_config.params), self.Params, "recipe.data.params")
        if problems:
            from ..core.errors import RecipeError
            raise RecipeError(problems)
        size = params.image_size
        if size != 32:
            train, test = downsample(train, size), downsample(test, size)
        tr, va = split_train_valid(train, data_config.train_portion, data_config.split_seed, data_config.limit)
        return DataBundle(tr, va, test, 10, CIFAR10_MEAN, CIFAR10_STD, source=f"{source}:{path}",
                          pad=4 * size // 32)


class Synthetic(Dataset):
    """Random images and labels of any shape, seeded: for tests and benchmarks (no files needed).

    ``data.params``: ``num_train`` (split in halves by ``train_portion``), ``num_test``,
    ``image_size``, ``channels``, ``num_classes``.
    """

    @attrs.frozen
    class Params:
        num_train: int = help_field(256, "training images (before the train/valid split)", validator=in_range(1, 10**7))
        num_test: int = help_field(64, "test images", validator=in_range(1, 10**7))
        image_size: int = help_field(32, "height and width", validator=in_range(1, 1024))
        channels: int = help_field(3, "image channels", validator=in_range(1, 64))
        num_classes: int = help_field(10, "classes", validator=in_range(1, 100_000))

        def __attrs_post_init__(self) -> None:
            size = (self.num_train + self.num_test) * self.image_size ** 2 * self.channels
            if size > self.MAX_BYTES:
                raise ValueError(f"the synthetic images would take {size / 2**30:.1f} GiB (at most "
                                 f"{self.MAX_BYTES / 2**30:.0f} GiB); use fewer or smaller images")

        MAX_BYTES = 4 << 30

    def load(self, data_config: Any, seed: int) -> DataBundle:
        from ..core.config import structure

        p, problems = structure(dict(data_config.params), self.Params, "recipe.data.params")
        if problems:
            from ..core.errors import RecipeError
            raise RecipeError(problems)
        g = torch.Generator().manual_seed(seed + 12345)
        n = p.num_train + p.num_test
        x = torch.randint(0, 256, (n, p.image_size, p.image_size, p.channels), generator=g, dtype=torch.uint8)
        y = torch.randint(0, p.num_classes, (n,), generator=g)
        train, test = Split(x[: p.num_train], y[: p.num_train]), Split(x[p.num_train:], y[p.num_train:])
        tr, va = split_train_valid(train, data_config.train_portion, data_config.split_seed, data_config.limit)
        c = p.channels
        return DataBundle(tr, va, test, p.num_classes, (0.5,) * c, (0.25,) * c, source="synthetic")


@hookimpl
def diffnas_register_datasets(register):
    register("cifar10", CIFAR10)
    register("synthetic", Synthetic)
