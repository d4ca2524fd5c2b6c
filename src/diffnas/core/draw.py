"""Draw cells (networkx DAGs) and op strengths to PNG with matplotlib (Agg backend; no display needed).

Cells are laid out left to right by longest-path depth; a layer holding one node alternates above
and below the middle line, so that edges skipping a layer pass beside the nodes in between. An
edge that would still pass through a node is drawn as an arc bending away from it. Each edge's op
label is put at the first point along the edge (middle first) where it overlaps no node and no
label placed before it, so no label is printed over another or hidden under a node.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import attrs
import networkx as nx

from .genotype import Genotype
from .rundir import atomic_write

OP_COLOURS = {"none": "#9a9a9a", "skip_connect": "#d62728", "avg_pool_3x3": "#ff7f0e", "max_pool_3x3": "#b8860b",
              "concat": "#7f7f7f", "sum": "#7f7f7f"}
DEFAULT_COLOUR = "#1f5fa8"
NODE_R = 0.2        # node radius (data units)
X_STEP = 1.9        # distance between layers
Y_STEP = 1.1        # distance between nodes of a layer
INCH = 1.15         # inches per data unit
FONT = 7.5          # label font size (points)
CHAR_W = 0.62 * FONT / 72 / INCH   # approximate character width and line height in data units
LINE_H = 1.45 * FONT / 72 / INCH


def _layout(g: nx.DiGraph) -> dict:
    """Inputs on the left, nodes left to right by longest-path depth; a layer's nodes spread
    vertically, a lone inner node placed alternately above and below the middle line."""
    depth: dict = {}
    for n in nx.topological_sort(g):
        preds = list(g.predecessors(n))
        depth[n] = 0 if not preds else 1 + max(depth[p] for p in preds)
    layers: dict[int, list] = {}
    for n, d in depth.items():
        layers.setdefault(d, []).append(n)
    last = max(layers)
    pos = {}
    for d, nodes in layers.items():
        nodes = sorted(nodes, key=str)
        if len(nodes) == 1 and 0 < d < last:
            pos[nodes[0]] = (d * X_STEP, (0.45 if d % 2 else -0.45) * Y_STEP)
            continue
        for i, n in enumerate(nodes):
            pos[n] = (d * X_STEP, ((len(nodes) - 1) / 2 - i) * Y_STEP)
    return pos


def _control(p0: tuple, p1: tuple, rad: float) -> tuple[float, float]:
    """The control point of matplotlib's ``arc3,rad=rad`` quadratic Bézier from p0 to p1."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    return ((x0 + x1) / 2 + rad * dy, (y0 + y1) / 2 - rad * dx)


def _point(p0: tuple, c: tuple, p1: tuple, t: float) -> tuple[float, float]:
    a, b, d = (1 - t) ** 2, 2 * (1 - t) * t, t ** 2
    return (a * p0[0] + b * c[0] + d * p1[0], a * p0[1] + b * c[1] + d * p1[1])


def _clearance(p0: tuple, p1: tuple, rad: float, others: list[tuple]) -> float:
    """Smallest distance between the edge's curve and the centres of ``others``."""
    c = _control(p0, p1, rad)
    pts = [_point(p0, c, p1, i / 24) for i in range(1, 24)]
    return min((math.dist(p, q) for p in pts for q in others), default=math.inf)


def _overlap(a: tuple, b: tuple) -> float:
    """Overlap area of two boxes ``(x0, y0, x1, y1)``."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _box(p: tuple, text: str) -> tuple[float, float, float, float]:
    w, h = CHAR_W * len(text) + 0.06, LINE_H + 0.04
    return (p[0] - w / 2, p[1] - h / 2, p[0] + w / 2, p[1] + h / 2)


@attrs.frozen
class CellLayout:
    """Where :func:`draw_cell` puts things (data units): the graph with its output nodes added,
    node centres, each edge's arc ``rad`` and each labelled edge's ``(centre, text, box)``."""

    graph: nx.DiGraph
    pos: dict
    rads: dict
    labels: dict


def cell_layout(graph: nx.DiGraph) -> CellLayout:
    """Lay out a discrete cell graph (see the module docstring)."""
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

    # edge shapes: straight unless the straight line passes through another node; then the arc
    # that keeps farthest from the nodes and, second, from the middle parts of the other edges
    shapes = {e: 0.0 for e in g.edges}
    for u, v in g.edges:
        others = [pos[n] for n in g.nodes if n not in (u, v)]
        if _clearance(pos[u], pos[v], 0.0, others) >= NODE_R + 0.25:
            continue
        lines = [_point(pos[a], _control(pos[a], pos[b], r), pos[b], i / 10) for (a, b), r in shapes.items()
                 if (a, b) != (u, v) for i in range(2, 9)]

        def score(rad: float) -> tuple[float, float]:
            c = _control(pos[u], pos[v], rad)
            mid = [_point(pos[u], c, pos[v], i / 10) for i in range(2, 9)]
            return (min(_clearance(pos[u], pos[v], rad, others), NODE_R + 0.35),
                    min((math.dist(p, q) for p in mid for q in lines), default=math.inf))

        shapes[(u, v)] = max((0.3, -0.3, 0.5, -0.5), key=score)

    # label places: the first point along the edge that hits no node and no earlier label
    node_boxes = [(x - NODE_R, y - NODE_R, x + NODE_R, y + NODE_R) for x, y in pos.values()]
    placed: list[tuple] = []
    labels = {}
    order = sorted((e for e in g.edges if g.edges[e].get("op") not in ("concat", "sum")),
                   key=lambda e: (math.dist(pos[e[0]], pos[e[1]]), str(e)))  # short edges have the least room
    for u, v in order:
        text = g.edges[u, v].get("op", "")
        c = _control(pos[u], pos[v], shapes[(u, v)])
        best = None
        for t in (0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73, 0.2, 0.8):
            box = _box(_point(pos[u], c, pos[v], t), text)
            cost = sum(_overlap(box, b) for b in node_boxes + placed)
            if best is None or cost < best[0] - 1e-9:
                best = (cost, box, t)
            if cost == 0:
                break
        placed.append(best[1])
        labels[(u, v)] = (_point(pos[u], c, pos[v], best[2]), text, best[1])

    return CellLayout(g, pos, shapes, labels)


def draw_cell(graph: nx.DiGraph, title: str = "") -> bytes:
    """PNG bytes of one discrete cell graph (edges labelled with their op)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, FancyArrowPatch

    lay = cell_layout(graph)
    g, pos, shapes, labels = lay.graph, lay.pos, lay.rads, lay.labels
    placed = [box for _, _, box in labels.values()]
    curves = [_point(pos[u], _control(pos[u], pos[v], rad), pos[v], i / 8) for (u, v), rad in shapes.items() if rad
              for i in range(1, 8)]
    xs = [p[0] for p in list(pos.values()) + curves] + [b[0] for b in placed] + [b[2] for b in placed]
    ys = [p[1] for p in list(pos.values()) + curves] + [b[1] for b in placed] + [b[3] for b in placed]
    x0, x1 = min(xs) - NODE_R - 0.15, max(xs) + NODE_R + 0.15
    y0, y1 = min(ys) - NODE_R - 0.15, max(ys) + NODE_R + 0.35
    fig = plt.figure(figsize=((x1 - x0) * INCH, (y1 - y0) * INCH), dpi=120)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")
    r_pt = NODE_R * INCH * 72
    for (u, v), rad in shapes.items():
        op = g.edges[u, v].get("op", "")
        ax.add_patch(FancyArrowPatch(pos[u], pos[v], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                     mutation_scale=11, shrinkA=r_pt, shrinkB=r_pt + 1, lw=1.3,
                                     linestyle="--" if op in ("none", "concat", "sum") else "-",
                                     color=OP_COLOURS.get(op, DEFAULT_COLOUR), zorder=1))
    for n, (x, y) in pos.items():
        role = g.nodes[n].get("role")
        face = "#9ecae9" if role == "input" else ("#a1d99b" if role == "output" else "#ffffff")
        ax.add_patch(Circle((x, y), NODE_R, facecolor=face, edgecolor="#333333", lw=1.2, zorder=3))
        ax.text(x, y, str(n), ha="center", va="center", fontsize=9, zorder=4)
    for (u, v), ((x, y), text, _) in labels.items():
        colour = OP_COLOURS.get(g.edges[u, v].get("op", ""), DEFAULT_COLOUR)
        ax.text(x, y, text, ha="center", va="center", fontsize=FONT, color=colour, zorder=5,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": colour, "lw": 0.6, "alpha": 0.95})
    if title:
        ax.text((x0 + x1) / 2, y1 - 0.12, title, ha="center", va="top", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def draw_alphas(probs: Sequence[Sequence[float]], edges: Sequence[tuple], ops: Sequence[Sequence[str]], title: str = "") -> bytes:
    """PNG bytes of a heatmap of op strengths: one row per edge (``src-dst``), one column per op
    (columns are named by the first edge's ops; ``op i`` where edges differ), values printed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_e, n_o = len(probs), len(probs[0]) if probs else 0
    same = all(tuple(o) == tuple(ops[0]) for o in ops) if ops else False
    cols = list(ops[0]) if same else [f"op {i}" for i in range(n_o)]
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * n_o, 1.0 + 0.3 * n_e), dpi=100)
    im = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=max(1e-9, max(max(r) for r in probs)), aspect="auto")
    ax.set_xticks(range(n_o), cols, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(n_e), [f"{s}-{d}" for s, d in edges], fontsize=7)
    for i, row in enumerate(probs):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 * im.get_clim()[1] else "black")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
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
