"""Genotypes: the discrete architectures a search returns, and their lossless conversions.

A :class:`Genotype` holds one :class:`CellGenotype` per cell type of its search space (``normal``
for NAS-Bench-201; ``normal`` and ``reduce`` for the DARTS space). A cell genotype is the list of
kept edges ``(src, dst, op)`` between numbered nodes plus the nodes whose outputs form the cell
output. Node numbering follows the search space's cell graph (see :mod:`diffnas.core.cells`):

* NAS-Bench-201: node 0 is the input, nodes 1 and 2 are intermediate, node 3 is the output;
  every one of the 6 edges is kept, ``none`` included, so that the NB201 string is lossless.
* DARTS: nodes 0 and 1 are the cell inputs c_{k-2} and c_{k-1}, nodes 2..5 are intermediate and
  the output concatenates ``concat`` (2..5). The DARTS ``Genotype(normal=[(op, src), ...], ...)``
  form lists the kept inputs of node 2, then node 3, ..., so its input index is our node id.

Conversions: JSON (any space), the NAS-Bench-201 string and the DARTS ``Genotype(...)`` string,
and :meth:`CellGenotype.to_graph` for a discrete ``networkx.DiGraph``.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Iterable, Mapping

import attrs
import networkx as nx

from .errors import DiffnasError
from .limits import clip, load_json, short

#: edges or concat nodes one cell may list, and the longest genotype string parsed
MAX_CELL_ITEMS = 1000
MAX_GENOTYPE_CHARS = 100_000
#: the largest node number of a cell (far above any space's; a cell of MAX_CELL_ITEMS edges needs fewer)
MAX_NODE = 10_000
#: the longest op name
MAX_OP_CHARS = 200

Edge = tuple[int, int, str]


def _node(x: Any) -> int:
    """A node number: an integer (or integer text) in 0..MAX_NODE, else ``ValueError``."""
    if isinstance(x, bool) or not isinstance(x, (int, str)):
        raise ValueError(f"a node number must be an integer, got {type(x).__name__} {short(x)}")
    if isinstance(x, str) and not (x.strip().isdigit() and len(x.strip()) <= 6):
        raise ValueError(f"a node number must be an integer in 0..{MAX_NODE}, got {short(x)}")
    n = int(x)
    if not 0 <= n <= MAX_NODE:
        raise ValueError(f"a node number must be in 0..{MAX_NODE}, got {short(n)}")
    return n


def _items(value: Any, what: str) -> list[Any]:
    """``value`` as a list of at most :data:`MAX_CELL_ITEMS` items (the documented limit)."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise ValueError(f"a cell's {what} must be a list, got {type(value).__name__} {short(value)}")
    out = []
    for x in value:
        out.append(x)
        if len(out) > MAX_CELL_ITEMS:
            raise ValueError(f"a cell lists more than {MAX_CELL_ITEMS} {what} (the limit)")
    return out


def _edges(value: Iterable[Iterable[Any]]) -> tuple[Edge, ...]:
    out = []
    for e in _items(value, "edges"):
        if isinstance(e, (str, bytes, dict)) or not isinstance(e, Iterable) or len(e := list(e)) != 3:
            raise ValueError(f"an edge must be [src, dst, op], got {short(e)}")
        src, dst, op = e
        if not isinstance(op, str) or not op or len(op) > MAX_OP_CHARS:
            raise ValueError(f"an edge's op must be a name (a string of 1..{MAX_OP_CHARS} characters), got {short(op)}")
        out.append((_node(src), _node(dst), op))
    return tuple(sorted(out, key=lambda e: (e[1], e[0], e[2])))


def _nodes(what: str, sort: bool = False) -> Any:
    def convert(value: Any) -> tuple[int, ...]:
        nodes = [_node(x) for x in _items(value, what)]
        return tuple(sorted(nodes) if sort else nodes)
    return convert


@attrs.frozen
class CellGenotype:
    """One discrete cell: kept edges ``(src, dst, op)`` (sorted by dst, then src) and output nodes.

    ``sum_nodes`` (optional) is a second output path whose nodes are summed (the LHD space's
    "sum" output); it is empty for every other space and then left out of the JSON form. Two edges
    may join the same pair of nodes with different ops (LHD keeps (predecessor, op) pairs).
    """

    edges: tuple[Edge, ...] = attrs.field(converter=_edges)
    concat: tuple[int, ...] = attrs.field(converter=_nodes("concat nodes"))
    sum_nodes: tuple[int, ...] = attrs.field(default=(), converter=_nodes("sum nodes", sort=True))

    def ops(self) -> list[str]:
        """The op names of the kept edges, in edge order."""
        return [op for _, _, op in self.edges]

    def inputs_of(self, node: int) -> list[tuple[str, int]]:
        """``[(op, src), ...]`` of the edges entering ``node``."""
        return [(op, src) for src, dst, op in self.edges if dst == node]

    def to_graph(self, name: str = "cell") -> nx.DiGraph:
        """The discrete cell as a DAG; each edge carries its ``op``, nodes carry a ``role``."""
        g = nx.DiGraph(name=name, concat=list(self.concat))
        if self.sum_nodes:
            g.graph["sum"] = list(self.sum_nodes)
        dsts = {d for _, d, _ in self.edges}
        srcs = {s for s, _, _ in self.edges}
        for n in sorted(srcs | dsts | set(self.concat) | set(self.sum_nodes)):
            role = "input" if n not in dsts else ("output" if n in self.concat and len(self.concat) == 1 else "intermediate")
            g.add_node(n, role=role)
        for src, dst, op in self.edges:
            if g.has_edge(src, dst):  # parallel ops on one pair (LHD): one edge, ``ops`` lists them all
                ops = g.edges[src, dst].get("ops", (g.edges[src, dst]["op"],)) + (op,)
                g.add_edge(src, dst, op="+".join(ops), ops=ops)
            else:
                g.add_edge(src, dst, op=op)
        return g

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"edges": [list(e) for e in self.edges], "concat": list(self.concat)}
        if self.sum_nodes:
            d["sum_nodes"] = list(self.sum_nodes)
        return d


@attrs.frozen
class Genotype:
    """A discrete architecture: its search space's name and one cell genotype per cell type."""

    space: str
    cells: Mapping[str, CellGenotype] = attrs.field(converter=lambda m: dict(sorted(m.items())))

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "cells": {k: c.to_dict() for k, c in self.cells.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Genotype":
        try:
            if not isinstance(data.get("cells"), dict) or len(data["cells"]) > 16:
                raise ValueError("'cells' must map at most 16 cell names to cells")
            if not isinstance(data["space"], str) or len(data["space"]) > 100:
                raise ValueError(f"'space' must be a name, got {short(data['space'])}")
            return cls(
                space=str(data["space"]),
                cells={k: CellGenotype(edges=v["edges"], concat=v["concat"], sum_nodes=v.get("sum_nodes", ()))
                       for k, v in data["cells"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DiffnasError(f"not a genotype: {type(exc).__name__}: {clip(str(exc))}; expected "
                               f"{{space, cells: {{name: {{edges, concat}}}}}}") from None

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        try:
            data = load_json(text)
        except ValueError as exc:
            raise DiffnasError(f"not a genotype: {exc}") from None
        if not isinstance(data, dict):
            raise DiffnasError(f"not a genotype: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    # ------------------------------------------------------------------ NAS-Bench-201
    def to_nb201_string(self) -> str:
        """``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: node 1's incoming edges, then node 2's, node 3's."""
        cell = self.cells["normal"]
        parts = []
        for dst in (1, 2, 3):
            ins = {src: op for op, src in cell.inputs_of(dst)}
            if sorted(ins) != list(range(dst)):
                raise DiffnasError(f"node {dst} of this cell does not have one op from each of nodes 0..{dst - 1}")
            parts.append("|" + "|".join(f"{ins[s]}~{s}" for s in range(dst)) + "|")
        return "+".join(parts)

    @classmethod
    def from_nb201_string(cls, text: str) -> "Genotype":
        text = text.strip()
        nodes = text.split("+")
        if len(nodes) != 3:
            raise DiffnasError(f"not a NAS-Bench-201 string (expected 3 '+'-separated nodes): {short(text)}")
        edges = []
        for dst, node in enumerate(nodes, start=1):
            items = [p for p in node.split("|") if p]
            if len(items) != dst:
                raise DiffnasError(f"node {dst} of {short(text)} should have {dst} input(s), has {len(items)}")
            for item in items:
                m = re.fullmatch(r"([A-Za-z0-9_]{1,200})~(\d{1,6})", item)
                if not m or int(m.group(2)) >= dst:
                    raise DiffnasError(f"bad edge {short(item)} in {short(text)}; expected op~input with an input "
                                       f"node in 0..{dst - 1}")
                edges.append((int(m.group(2)), dst, m.group(1)))
        return cls(space="nb201", cells={"normal": CellGenotype(edges=edges, concat=(3,))})

    # ------------------------------------------------------------------ DARTS
    def has_darts_form(self, per_node: int = 2) -> bool:
        """Whether the DARTS string form is lossless: normal and reduce cells whose every node that
        has inputs has exactly ``per_node`` of them (the form does not say how many a node has)."""
        if set(self.cells) != {"normal", "reduce"}:
            return False
        for cell in self.cells.values():
            counts: dict[int, int] = {}
            for _, dst, _ in cell.edges:
                counts[dst] = counts.get(dst, 0) + 1
            if any(c != per_node for c in counts.values()) or sorted(counts) != list(range(min(counts, default=0), min(counts, default=0) + len(counts))):
                return False
        return True

    def to_darts_string(self) -> str:
        """The DARTS ``Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])`` form.

        Inputs of a node are listed by source node (quark0/darts lists them by strength; the
        architecture is the same). Raises if the form would lose information (see :meth:`has_darts_form`).
        """
        if not self.has_darts_form():
            raise DiffnasError("this genotype has no lossless DARTS string form (a node does not have exactly 2 inputs); use JSON")
        parts = []
        for name in ("normal", "reduce"):
            cell = self.cells[name]
            pairs = [(op, src) for src, dst, op in cell.edges]
            parts.append(f"{name}={pairs!r}, {name}_concat={list(cell.concat)!r}")
        return f"Genotype({', '.join(parts)})"

    @classmethod
    def from_darts_string(cls, text: str, space: str = "darts", per_node: int = 2, first_node: int = 2) -> "Genotype":
        """Parse the DARTS form without evaluating code: only literals and ``range(a, b)`` are read."""
        if len(text) > MAX_GENOTYPE_CHARS:
            raise DiffnasError(f"not a DARTS genotype string: {len(text)} characters (at most {MAX_GENOTYPE_CHARS})")
        try:
            call = ast.parse(text.strip(), mode="eval").body
            if not isinstance(call, ast.Call) or not call.keywords:
                raise ValueError("expected Genotype(normal=..., ...)")
            fields: dict[str, Any] = {}
            for kw in call.keywords:
                v = kw.value
                if isinstance(v, ast.Call) and getattr(v.func, "id", None) == "range":
                    r = range(*[ast.literal_eval(a) for a in v.args])
                    if len(r) > MAX_CELL_ITEMS:
                        raise ValueError(f"{kw.arg}={clip(ast.get_source_segment(text.strip(), v) or 'range(...)', 60)} "
                                         f"has {len(r)} items (at most {MAX_CELL_ITEMS})")
                    fields[kw.arg] = list(r)
                else:
                    fields[kw.arg] = ast.literal_eval(v)
            cells = {}
            for name in ("normal", "reduce"):
                pairs = fields[name]
                edges = []
                for i, (op, src) in enumerate(pairs):
                    edges.append((src, first_node + i // per_node, op))
                cells[name] = CellGenotype(edges=edges, concat=fields.get(f"{name}_concat", []))
        except (SyntaxError, ValueError, KeyError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
            raise DiffnasError(f"not a DARTS genotype string: {clip(str(exc))}") from None
        return cls(space=space, cells=cells)

    # ------------------------------------------------------------------ any
    @classmethod
    def parse(cls, text: str) -> "Genotype":
        """Parse JSON, an NB201 string or a DARTS ``Genotype(...)`` string, whichever ``text`` is."""
        t = text.strip()
        if t.startswith("{"):
            return cls.from_json(t)
        if t.startswith("Genotype("):
            return cls.from_darts_string(t)
        if t.startswith("|"):
            return cls.from_nb201_string(t)
        raise DiffnasError(f"cannot tell what kind of genotype this is: {t[:60]!r} (expected JSON, |op~0|+... or Genotype(...))")

    def __str__(self) -> str:
        if self.space == "nb201":
            return self.to_nb201_string()
        if self.space == "darts" and self.has_darts_form():
            return self.to_darts_string()
        return self.to_json()
