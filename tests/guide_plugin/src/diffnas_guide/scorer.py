"""The ``chain`` scorer: counts the convolutions and parameter-free ops of a chain-space genotype."""

from __future__ import annotations

from diffnas import hookimpl


@hookimpl
def diffnas_score_genotype(genotype, context):
    """``{"chain": {"conv_edges", "parameter_free_edges"}}`` for genotypes of the chain space."""
    if genotype.space != "chain":
        return None
    ops = [op for cell in genotype.cells.values() for op in cell.ops()]
    conv = sum(op == "conv_3x3" for op in ops)
    return {"chain": {"conv_edges": conv, "parameter_free_edges": len(ops) - conv}}
