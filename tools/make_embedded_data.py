"""Rebuild the two small data files embedded in the package from the full offline data.

    python tools/make_embedded_data.py ../shared/data

* ``cifar10_sample.npz``: the first 300 training images of each class (the pack keeps the original
  order inside a class) and the first 100 test images of each class in the canonical test order,
  as the original JPEG bytes: 3,000 + 1,000 images, class-balanced.
* ``nb201.csv.gz``: ``nb201/nats_bench.csv`` gzip-compressed (NATS-Bench, MIT licence).
* ``nb301_surrogate/``: the NB301 surrogate's ``model_v2.onnx`` and ``encoding_v2.json`` with its
  ``LICENSE-2.0.txt`` (Apache-2.0), copied unchanged (2.8 MB; ONNX does not compress much).
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "diffnas" / "data" / "embedded"
TRAIN_PER_CLASS, TEST_PER_CLASS = 300, 100
NB301_FILES = ("model_v2.onnx", "encoding_v2.json", "LICENSE-2.0.txt")


def cut(buf, off, labels, order, per_class):
    chosen = []
    counts = np.zeros(10, int)
    for i in order:
        c = labels[i]
        if counts[c] < per_class:
            chosen.append(i)
            counts[c] += 1
    chosen = np.array(chosen)
    parts = [buf[off[i]:off[i + 1]] for i in chosen]
    new_off = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return np.concatenate(parts), new_off, labels[chosen].astype(np.uint8)


def main(root: str) -> None:
    root = Path(root)
    z = np.load(root / "cifar10" / "cifar10_jpeg_bytes.npz")
    tr = cut(z["train_jpeg"], z["train_offsets"], z["y_train"], range(len(z["y_train"])), TRAIN_PER_CLASS)
    te = cut(z["test_jpeg"], z["test_offsets"], z["y_test"], z["test_canonical_perm"], TEST_PER_CLASS)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "cifar10_sample.npz", train_jpeg=tr[0], train_offsets=tr[1], y_train=tr[2],
             test_jpeg=te[0], test_offsets=te[1], y_test=te[2], class_names=z["class_names"])
    with open(root / "nb201" / "nats_bench.csv", "rb") as src, gzip.GzipFile(OUT / "nb201.csv.gz", "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    (OUT / "nb301_surrogate").mkdir(exist_ok=True)
    for name in NB301_FILES:
        shutil.copyfile(root / "nb301_surrogate" / name, OUT / "nb301_surrogate" / name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
