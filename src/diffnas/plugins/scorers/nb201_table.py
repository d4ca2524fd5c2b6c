"""Scores NAS-Bench-201 genotypes with the benchmark's ground-truth table (see :mod:`diffnas.benchmarks.nb201`)."""

from __future__ import annotations

from ...benchmarks.nb201 import load_table
from ...core.errors import DiffnasError
from ...core.hookspecs import hookimpl


@hookimpl
def diffnas_score_genotype(genotype, context):
    """``{"nb201": {"index", "arch", "cifar10_test", "cifar100_test", "imagenet16_test"}}`` for NB201 cells."""
    if genotype.space != "nb201":
        return None
    try:
        arch = genotype.to_nb201_string()
    except DiffnasError:
        return None
    entry = load_table(context.get("data_root")).lookup(arch)
    return None if entry is None else {"nb201": entry.to_dict()}
