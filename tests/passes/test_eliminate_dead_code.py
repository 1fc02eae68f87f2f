"""eliminate-dead-code: unused nodes (all outputs unused) and unused constants go."""
from __future__ import annotations

import numpy as np

from tcc.ir.core import Graph
from tcc.ir.text import print_graph

from .helpers import check_pass, make_ctx, run_pass, t


def test_dead_chain_and_constants_removed():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 4))
    c_used = g.add_const(np.ones((4,), np.float32), "one")
    c_dead = g.add_const(np.zeros((4,), np.float32), "zero")
    dead = g.add_node("Add", [x, c_dead]).output
    g.add_node("Relu", [dead])
    y = g.add_node("Mul", [x, c_used], out_names=["y"]).output
    g.outputs = [y]
    check_pass("eliminate-dead-code", g, [{"n": 3}])
    assert g.ops() == {"Mul": 1}
    assert list(g.constants) == ["one"]


def test_multi_output_node_kept_when_one_output_used():
    g = Graph()
    x = g.add_input("x", t("f32", 6, 2))
    a, b, c = g.add_node("Split", [x], {"axis": 0, "split": [2, 2, 2]}).outputs
    g.add_node("Neg", [a])  # dead
    g.outputs = [g.add_node("Relu", [c], out_names=["y"]).output]
    ctx = check_pass("eliminate-dead-code", g, [{}])
    assert g.ops() == {"Split": 1, "Relu": 1}
    assert ctx.stats["eliminate-dead-code"] == 1


def test_graph_output_constant_and_input_passthrough_survive():
    g = Graph()
    x = g.add_input("x", t("f32", 2))
    k = g.add_const(np.array([1.0, 2.0], np.float32), "k")
    g.outputs = [x, k]
    run_pass("eliminate-dead-code", g)
    assert list(g.constants) == ["k"] and not g.nodes


def test_golden_text():
    g = Graph()
    x = g.add_input("x", t("f32", 2))
    u = g.add_const(np.array([1.0, 2.0], np.float32), "u")
    g.add_node("Add", [x, u], out_names=["dead"])
    g.outputs = [g.add_node("Sigmoid", [x], out_names=["y"]).output]
    run_pass("eliminate-dead-code", g, make_ctx())
    assert print_graph(g) == (
        "# tcc IR v1\n"
        "graph main(%x: f32[2]) -> (%y) {\n"
        "  %y : f32[2] = Sigmoid(%x)\n"
        "  return %y\n"
        "}\n")
