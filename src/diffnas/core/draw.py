"""Draw cells (networkx DAGs) to PNG with matplotlib (Agg backend; no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import networkx as nx

from .genotype import Genotype
from .rundir import atomic_write

OP_COLOURS = {"none": "#bbbbbb", "skip_connect": "#e45756", "avg_pool_3x3": "#f58518", "max_pool_3x3": "#eeca3b"}


def _layout(g: nx.DiGraph) -> dict:
    """Inputs on the left, nodes left to right by longest-path depth, spread vertically."""
    depth = {}
    for n in nx.topological_sort(g):
        preds = list(g.predecessors(n))
        depth[n] = 0 if not preds else 1 + max(depth[p] for p in preds)
    layers: dict[int, list] = {}
    for n, d in depth.items():
        layers.setdefault(d, []).append(n)
    pos = {}
    for d, nodes in layers.items():
        for i, n in enumerate(sorted(nodes, key=str)):
            pos[n] = (d, i - (len(nodes) - 1) / 2)
    return pos


def draw_cell(graph: nx.DiGraph, title: str = "") -> bytes:
    """PNG bytes of one discrete cell graph (edges labelled with their op)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    g = graph.copy()
    concat = list(graph.graph.get("concat", []))
    if len(concat) > 1:
        g.add_node("out", role="output")
        for n in concat:
            g.add_edge(n, "out", op="concat")
    sums = list(graph.graph.get("sum", []))  # a second, summed output path (LHD)
    if sums:
        g.add_node("sum", role="output")
        for n in sums:
            g.add_edge(n, "sum", op="sum")
    pos = _layout(g)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * (max(x for x, _ in pos.values()) + 1), 3.2), dpi=110)
    colours = ["#9ecae9" if g.nodes[n].get("role") == "input" else ("#a1d99b" if g.nodes[n].get("role") == "output" else "#ffffff") for n in g.nodes]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, edgecolors="#333333", node_size=700)
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=9)
    for u, v, d in g.edges(data=True):
        op = d.get("op", "")
        style = "dashed" if op in ("none", "concat", "sum") else "solid"
        nx.draw_networkx_edges(g, pos, edgelist=[(u, v)], ax=ax, edge_color=OP_COLOURS.get(op, "#4c78a8"), style=style,
                               connectionstyle="arc3,rad=0.15", arrows=True, arrowsize=14, node_size=700)
    labels = {(u, v): d.get("op", "") for u, v, d in g.edges(data=True) if d.get("op") not in ("concat", "sum")}
    nx.draw_networkx_edge_labels(g, pos, edge_labels=labels, ax=ax, font_size=7, connectionstyle="arc3,rad=0.15")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def draw_genotype(genotype: Genotype, out_dir: str | Path, prefix: str = "cell") -> list[str]:
    """Write ``<prefix>_<cell>.png`` for every cell of ``genotype``; return the file names."""
    out = []
    for name, cell in genotype.cells.items():
        png = draw_cell(cell.to_graph(name), title=f"{genotype.space} {name} cell")
        path = Path(out_dir) / f"{prefix}_{name}.png"
        atomic_write(path, lambda f, b=png: f.write(b))
        out.append(path.name)
    return out
