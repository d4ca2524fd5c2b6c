"""Scores NAS-Bench-201 genotypes with the benchmark's ground-truth table (see :mod:`diffnas.benchmarks.nb201`)."""

from __future__ import annotations

from ...benchmarks.nb201 import load_table
from ...core.errors import DiffnasError
from ...core.hookspecs import hookimpl


#: the dataset a search ran on → the NB201 column that scores its cells
DATASET_COLUMNS = {"cifar10": "cifar10_test", "cifar100": "cifar100_test", "imagenet16_120": "imagenet16_test"}


@hookimpl
def diffnas_score_genotype(genotype, context):
    """``{"nb201": {"index", "arch", "cifar10_test", "cifar100_test", "imagenet16_test"}}`` for NB201 cells;
    for a search on one of the benchmark's datasets (``context["dataset"]``: ``cifar10``, ``cifar100``,
    ``imagenet16_120``) also ``"column"`` (the matching column's name) and ``"test"`` (its value): the
    score of the cell on the data it was searched on."""
    if genotype.space != "nb201":
        return None
    try:
        arch = genotype.to_nb201_string()
    except DiffnasError:
        return None
    entry = load_table(context.get("data_root")).lookup(arch)
    if entry is None:
        return None
    out = entry.to_dict()
    column = DATASET_COLUMNS.get(context.get("dataset"))
    if column is not None:
        out.update(column=column, test=out[column])
    return {"nb201": out}
