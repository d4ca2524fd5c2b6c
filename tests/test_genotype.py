import json

import networkx as nx
import pytest

from diffnas.core.errors import DiffnasError
from diffnas.core.genotype import CellGenotype, Genotype

ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
BEST_C100 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


@pytest.mark.parametrize("arch", [ALL_SKIP, BEST_C100])
def test_nb201_string_round_trip(arch):
    g = Genotype.from_nb201_string(arch)
    assert g.space == "nb201"
    assert len(g.cells["normal"].edges) == 6
    assert g.to_nb201_string() == arch
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.parse(arch) == g


def test_nb201_edges_are_node_ordered():
    g = Genotype.from_nb201_string(BEST_C100)
    assert g.cells["normal"].inputs_of(3) == [("skip_connect", 0), ("nor_conv_3x3", 1), ("nor_conv_3x3", 2)]


def test_darts_string_round_trip_and_json():
    g = Genotype.from_darts_string(DARTS_V2)
    n = g.cells["normal"]
    assert n.inputs_of(5) == [("skip_connect", 0), ("dil_conv_3x3", 2)]
    assert list(n.concat) == [2, 3, 4, 5]
    again = Genotype.from_darts_string(g.to_darts_string())
    assert again == g
    assert Genotype.from_json(json.dumps(g.to_dict())) == g
    # range(2, 6) as written by quark0/darts is accepted, without evaluating code
    assert Genotype.from_darts_string(DARTS_V2.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=range(2, 6)")) == g


def test_darts_string_is_not_evaluated():
    with pytest.raises(DiffnasError):
        Genotype.from_darts_string("Genotype(normal=__import__('os').system('true'), normal_concat=[], reduce=[], reduce_concat=[])")


def test_graph_view():
    g = Genotype.from_nb201_string(BEST_C100).cells["normal"].to_graph("normal")
    assert isinstance(g, nx.DiGraph)
    assert g.edges[(0, 1)]["op"] == "nor_conv_3x3"
    assert g.nodes[0]["role"] == "input" and g.nodes[3]["role"] == "output"
    assert nx.is_directed_acyclic_graph(g)


@pytest.mark.parametrize("bad", ["|nor_conv_3x3~0|+|x~0|", "|a~0|+|b~0|c~1|+|d~0|e~1|", "hello", "|conv~zero|+|a~0|b~1|+|a~0|b~1|c~2|"])
def test_bad_genotype_strings(bad):
    with pytest.raises(DiffnasError):
        Genotype.parse(bad)


def test_png_drawing(tmp_path):
    from diffnas.core.draw import draw_genotype

    names = draw_genotype(Genotype.from_darts_string(DARTS_V2), tmp_path)
    assert names == ["cell_normal.png", "cell_reduce.png"]
    data = (tmp_path / "cell_normal.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cell_genotype_sorts_edges():
    c = CellGenotype(edges=[(1, 2, "a"), (0, 1, "b"), (0, 2, "c")], concat=[2])
    assert c.edges == ((0, 1, "b"), (0, 2, "c"), (1, 2, "a"))


def test_darts_form_only_when_lossless():
    g = Genotype.from_darts_string(DARTS_V2)
    assert g.has_darts_form() and str(g).startswith("Genotype(")
    three = Genotype(space="darts", cells={"normal": CellGenotype(edges=[(0, 2, "sep_conv_3x3"), (1, 2, "skip_connect"), (0, 3, "sep_conv_3x3")], concat=[2, 3]),
                                           "reduce": g.cells["reduce"]})
    assert not three.has_darts_form()
    assert str(three).startswith("{")  # JSON, which keeps everything
    assert Genotype.parse(str(three)) == three
    with pytest.raises(DiffnasError):
        three.to_darts_string()


# --------------------------------------------------------------------------- pictures

DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
            "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
            "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
LHD_CELL = {"edges": [[0, 2, "dil_conv_3x3"], [0, 2, "sep_conv_5x5"], [1, 3, "skip_connect"], [2, 3, "skip_connect"],
                      [2, 4, "dil_conv_5x5"], [2, 4, "sep_conv_5x5"]], "concat": [2, 4], "sum_nodes": [2, 3, 4]}


@pytest.mark.parametrize("text", [
    "|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|",
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    DARTS_V2,
    json.dumps({"space": "lhd", "cells": {"normal": LHD_CELL}}),
])
def test_cell_pictures_have_no_overprinted_or_hidden_labels(text):
    """Every op label is placed once, on its own: no label box overlaps another label or a node."""
    from diffnas.core.draw import NODE_R, _overlap, cell_layout, draw_cell

    g = Genotype.parse(text)
    for name, cell in g.cells.items():
        graph = cell.to_graph(name)
        lay = cell_layout(graph)
        assert set(lay.labels) == set(graph.edges)  # every kept edge labelled (concat/sum edges are not ops)
        boxes = [box for _, _, box in lay.labels.values()]
        nodes = [(x - NODE_R, y - NODE_R, x + NODE_R, y + NODE_R) for x, y in lay.pos.values()]
        for i, b in enumerate(boxes):
            assert all(_overlap(b, o) == 0 for o in boxes[i + 1:] + nodes), (name, lay.labels)
        # no two nodes share a place
        assert len(set(lay.pos.values())) == len(lay.pos)
        assert draw_cell(graph).startswith(b"\x89PNG")
