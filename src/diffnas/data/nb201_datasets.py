"""CIFAR-100 and ImageNet16-120: the other two NAS-Bench-201 datasets, read from the data root.

* ``cifar100``: torchvision's files ``<root>/cifar-100-python/{train,test}`` (the python version of
  CIFAR-100, Krizhevsky 2009: 100 fine classes of 32×32 RGB images, 50,000 train / 10,000 test). With
  ``data.download: true`` missing files are downloaded and checked through torchvision's own download
  helper (``torchvision.datasets.CIFAR100``'s URL and MD5), then read like any other copy.
* ``imagenet16_120``: the downsampled ImageNet of NATS-Bench / AutoDL (Chrabaszcz et al. 2017, 16×16),
  the folder ``<root>/ImageNet16`` with ``train_data_batch_1`` … ``train_data_batch_10`` and ``val_data``
  (pickled ``{"data": uint8 [N, 768] in CHW order, "labels": 1-based classes}``). As AutoDL's
  ``ImageNet16(..., use_num_of_class_only=120)`` (``xautodl/datasets/DownsampledImageNet.py``), only the
  images with label 1 … 120 are kept, as classes 0 … 119; ``val_data`` is the test split.

**Safety.** The files are pickles: they are read only through
:class:`~diffnas.benchmarks.nats.SafeUnpickler`, which resolves nothing but plain data and numpy arrays
(no code from a file ever runs); each file is read with a size cap.

**Split and constants.** The training images are split for search by ``data.train_portion`` and
``data.split_seed``, as CIFAR-10 (the DARTS-family codes split CIFAR-100's training set the same way, e.g.
``Sunshine-Ye/Beta-DARTS: nasbench201/train_search.py``; NAS-Bench-201's own scripts instead pair the
whole training set with half of the test set, from split files not shipped here). Normalisation is
NAS-Bench-201's (``xautodl/datasets/get_dataset_with_transform.py``); ImageNet16 is cropped with 2-pixel
padding, as there.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from ..benchmarks.nats import SafeUnpickler, numpy_array_globals
from ..core import limits
from ..core.errors import DataError
from ..core.hookspecs import hookimpl
from ..core.protocols import DataBundle, Dataset, Split
from .datasets import split_train_valid
from .root import data_root

log = logging.getLogger(__name__)

CIFAR100_MEAN = tuple(x / 255 for x in (129.3, 124.1, 112.4))
CIFAR100_STD = tuple(x / 255 for x in (68.2, 65.4, 70.4))
IMAGENET16_MEAN = tuple(x / 255 for x in (122.68, 116.66, 104.01))
IMAGENET16_STD = tuple(x / 255 for x in (63.22, 61.26, 65.09))
CIFAR100_DIR = "cifar-100-python"
IMAGENET16_DIR = "ImageNet16"
IMAGENET16_TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))
IMAGENET16_VALID = "val_data"
#: the largest file read (the biggest real one, CIFAR-100's train, is about 155 MB)
MAX_PICKLE_BYTES = 1 << 30


def load_pickle(path: Path, what: str) -> Any:
    """One dataset pickle through the restricted unpickler (latin-1 strings, as torchvision and AutoDL)."""
    try:
        raw = limits.read_bytes(path, MAX_PICKLE_BYTES, what)
    except limits.InputError as exc:
        raise DataError(str(exc)) from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return SafeUnpickler(io.BytesIO(raw), str(path), extra=numpy_array_globals(), what=what,
                             encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # truncated, or not a pickle at all
        raise DataError(f"{path}: not a {what} pickle ({type(exc).__name__}: {limits.clip(str(exc))})") from None


def _images(entry: Any, path: Path, labels_key: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 [N, size, size, 3], int64 [N])`` from one unpickled batch ``{"data", labels_key}``."""
    if not isinstance(entry, dict) or "data" not in entry or labels_key not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise DataError(f"{path}: expected a dict with 'data' and '{labels_key}', got {keys}")
    data, labels = entry["data"], np.asarray(entry[labels_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * size * size:
        raise DataError(f"{path}: 'data' must be uint8 [N, {3 * size * size}] ({size}×{size} RGB images), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: '{labels_key}' must hold one integer label per image ({data.shape[0]}), "
                        f"got {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, size, size).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


def _download_cifar100(root: Path) -> None:
    """torchvision's download-and-check of the CIFAR-100 archive (its URL and MD5); nothing is unpickled."""
    from torchvision.datasets import CIFAR100 as TV
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(TV.url, str(root), filename=TV.filename, md5=TV.tgz_md5)
    except OSError as exc:  # no network, a full disk ...
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(f"cannot download CIFAR-100 into {root}: {reason}; without a network, put "
                        f"{CIFAR100_DIR}/ there yourself and set data.download: false") from None


class CIFAR100(Dataset):
    """CIFAR-100 (Krizhevsky 2009), 100 classes of 32×32 RGB images, from torchvision's files under the data root."""

    depends_on_seed = False

    @attrs.frozen
    class Params:
        """CIFAR-100 takes no ``data.params`` (its settings are ``data.root``, ``download`` ...)."""

    def load(self, data_config: Any, seed: int) -> DataBundle:
        root = data_root(data_config.root)
        folder = root / CIFAR100_DIR
        if not (folder / "train").exists() and data_config.download:
            _download_cifar100(root)
        if not (folder / "train").exists():
            raise DataError(f"CIFAR-100 not found: no {folder / 'train'}. Set data.root or DIFFNAS_DATA_ROOT to the "
                            f"folder holding {CIFAR100_DIR}/ (torchvision's format), or set data.download: true")
        splits = [_split(*_images(load_pickle(folder / name, "CIFAR-100 file"), folder / name, "fine_labels", 32))
                  for name in ("train", "test")]
        for s, name in zip(splits, ("train", "test")):
            if len(s) and (int(s.y.min()) < 0 or int(s.y.max()) >= 100):
                raise DataError(f"{folder / name}: fine labels must lie in 0 … 99")
        log.info("CIFAR-100 from %s: %d train, %d test images", folder, len(splits[0]), len(splits[1]))
        tr, va = split_train_valid(splits[0], data_config.train_portion, data_config.split_seed, data_config.limit)
        return DataBundle(tr, va, splits[1], 100, CIFAR100_MEAN, CIFAR100_STD, source=f"cifar100:{folder}")


class ImageNet16_120(Dataset):
    """ImageNet16-120 (NATS-Bench's 16×16 ImageNet, classes 1–120 as 0–119), from ``ImageNet16/`` under the data root."""

    depends_on_seed = False

    @attrs.frozen
    class Params:
        """ImageNet16-120 takes no ``data.params``."""

    def load(self, data_config: Any, seed: int) -> DataBundle:
        folder = data_root(data_config.root) / IMAGENET16_DIR
        missing = [n for n in (*IMAGENET16_TRAIN, IMAGENET16_VALID) if not (folder / n).exists()]
        if missing:
            raise DataError(f"ImageNet16-120 not found: {folder} lacks {', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''}. Set data.root or DIFFNAS_DATA_ROOT to the folder "
                            f"holding {IMAGENET16_DIR}/ (the NATS-Bench downsampled format); it cannot be downloaded")

        def read(names: tuple[str, ...]) -> Split:
            xs, ys = [], []
            for name in names:  # filtered file by file: never all of ImageNet16 in memory at once
                x, y = _images(load_pickle(folder / name, "ImageNet16 file"), folder / name, "labels", 16)
                keep = (y >= 1) & (y <= 120)  # AutoDL's use_num_of_class_only=120: labels 1 … 120, as 0 … 119
                xs.append(x[keep])
                ys.append(y[keep] - 1)
            return _split(np.concatenate(xs), np.concatenate(ys))

        train, test = read(IMAGENET16_TRAIN), read((IMAGENET16_VALID,))
        if len(train) == 0:
            raise DataError(f"{folder}: no training image has a label in 1 … 120")
        log.info("ImageNet16-120 from %s: %d train, %d test images", folder, len(train), len(test))
        tr, va = split_train_valid(train, data_config.train_portion, data_config.split_seed, data_config.limit)
        return DataBundle(tr, va, test, 120, IMAGENET16_MEAN, IMAGENET16_STD, source=f"imagenet16_120:{folder}", pad=2)


@hookimpl
def diffnas_register_datasets(register):
    register("cifar100", CIFAR100)
    register("imagenet16_120", ImageNet16_120)
