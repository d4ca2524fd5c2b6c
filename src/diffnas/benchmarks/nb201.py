"""NAS-Bench-201 ground truth: test accuracy of all 15,625 cells on CIFAR-10/100 and ImageNet16-120.

The table is NATS-Bench's topology space (MIT licence; ``data/embedded/NOTICE``): the mean over
seeds 777/888/999 after 200 epochs, CIFAR-10 trained on train+valid and scored on the test set,
CIFAR-100 and ImageNet16-120 scored on their x-test halves (the "test" columns of the NB201 paper).
The package embeds it (``nb201.csv.gz``); ``<data root>/nb201/nats_bench.csv`` is used when present.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io


import attrs

from ..core.errors import DataError
from ..data.root import data_root, embedded_path

COLUMNS = {"cifar10_test": "CIFAR10TestAccuracy200Epochs", "cifar100_test": "CIFAR100TestAccuracy200Epochs",
           "imagenet16_test": "ImageNetTestAccuracy200Epochs"}


@attrs.frozen
class NB201Entry:
    index: int
    arch: str
    cifar10_test: float
    cifar100_test: float
    imagenet16_test: float

    def to_dict(self) -> dict:
        return attrs.asdict(self)


class NB201Table:
    """Look architectures up by their NB201 string (``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``)."""

    def __init__(self, rows: list[NB201Entry], source: str):
        self.rows = rows
        self.source = source
        self.by_arch = {r.arch: r for r in rows}

    @classmethod
    def from_csv_text(cls, text: str, source: str) -> "NB201Table":
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in (*COLUMNS.values(), "ArchitectureString") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{source}: not a NAS-Bench-201 table (missing columns {missing})")
        rows = [NB201Entry(i, r["ArchitectureString"], *(float(r[c]) for c in COLUMNS.values())) for i, r in enumerate(reader)]
        return cls(rows, source)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, arch: str) -> NB201Entry | None:
        return self.by_arch.get(arch)

    def __getitem__(self, arch: str) -> NB201Entry:
        entry = self.lookup(arch)
        if entry is None:
            raise KeyError(f"{arch!r} is not a NAS-Bench-201 architecture")
        return entry


@functools.lru_cache(maxsize=4)
def load_table(root: str | None = None) -> NB201Table:
    """The table from ``<data root>/nb201/nats_bench.csv`` if present, else the embedded copy."""
    path = data_root(root) / "nb201" / "nats_bench.csv"
    if path.exists():
        return NB201Table.from_csv_text(path.read_text(encoding="utf-8"), str(path))
    emb = embedded_path("nb201.csv.gz")
    with gzip.open(emb, "rt", encoding="utf-8") as f:
        return NB201Table.from_csv_text(f.read(), f"embedded:{emb.name}")


def find_optimum(table: NB201Table, column: str = "cifar10_test") -> NB201Entry:
    return max(table.rows, key=lambda r: getattr(r, column))


