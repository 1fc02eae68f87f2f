"""canonicalize: MatMul/Gemm -> Linear (bias folded), Div by a constant -> Mul."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.ir.text import print_graph

from .helpers import check_pass, make_ctx, per_test_constants, refusals, run_pass, t, w  # noqa: F401 (an autouse fixture)


@pytest.mark.parametrize("bias_shape,bias_first", [((16,), False), ((1, 16), True), ((1, 1, 16), False),
                                                   ((), True), ((1,), False)])
def test_matmul_add_becomes_linear_with_bias(bias_shape, bias_first):
    g = Graph()
    x = g.add_input("x", t("f32", "b", "s", 8))
    mm = g.add_node("MatMul", [x, g.add_const(w(8, 16), "W")]).output
    b = g.add_const(w(*bias_shape), "bias")
    g.outputs = [g.add_node("Add", [b, mm] if bias_first else [mm, b], out_names=["y"]).output]
    check_pass("canonicalize", g, [{"b": 2, "s": 3}, {"b": 1, "s": 1}])
    assert g.ops() == {"Linear": 1}
    lin = g.nodes[0]
    assert lin.inputs[1].const.shape == (8, 16) and lin.inputs[2].const.shape == (16,)
    assert g.outputs[0].name == "y"


def test_matmul_with_other_consumer_keeps_add():
    g = Graph()
    x = g.add_input("x", t("f32", 4, 8))
    mm = g.add_node("MatMul", [x, g.add_const(w(8, 16))]).output
    y1 = g.add_node("Add", [mm, g.add_const(w(16))], out_names=["y1"]).output
    y2 = g.add_node("Relu", [mm], out_names=["y2"]).output
    g.outputs = [y1, y2]
    check_pass("canonicalize", g, [{}])
    assert g.ops() == {"Linear": 1, "Add": 1, "Relu": 1}
    assert len(g.nodes[0].inputs) == 2


def test_add_that_broadens_or_is_not_rowwise_stays():
    g = Graph()
    x = g.add_input("x", t("f32", 4, 8))
    mm = g.add_node("MatMul", [x, g.add_const(w(8, 16))]).output
    g.outputs = [g.add_node("Add", [mm, g.add_const(w(4, 16))], out_names=["y"]).output]
    check_pass("canonicalize", g, [{}])
    assert g.ops() == {"Linear": 1, "Add": 1}


def test_matmul_refusals():
    g = Graph()
    x = g.add_input("x", t("f32", 2, 4, 8))
    y1 = g.add_node("MatMul", [x, g.add_const(w(2, 8, 3))], out_names=["y1"]).output  # batched weight
    xi = g.add_input("xi", t("i64", 4, 8))
    y2 = g.add_node("MatMul", [xi, g.add_const(np.ones((8, 2), np.int64))], out_names=["y2"]).output
    z = g.add_input("z", t("f32", 8, 3))
    y3 = g.add_node("MatMul", [x, z], out_names=["y3"]).output  # run-time operand: not a Linear
    g.outputs = [y1, y2, y3]
    ctx = check_pass("canonicalize", g, [{}])
    assert g.ops() == {"MatMul": 3}
    msgs = refusals(ctx)
    assert any("not a 2-D weight" in m for m in msgs) and any("f32 only" in m for m in msgs)


@pytest.mark.parametrize("transA,transB,alpha,beta,c_kind", [
    (0, 1, 1.0, 1.0, "row"), (0, 0, 0.5, 2.0, "row"), (1, 1, 1.0, 1.0, "none"), (0, 1, 1.0, 3.0, "full"),
    (1, 0, 2.0, 0.5, "input"), (0, 1, 1.0, 1.0, "scalar"), (0, 0, 1.0, 1.0, "col")])
def test_gemm_becomes_linear(transA, transB, alpha, beta, c_kind):
    g = Graph()
    a = g.add_input("a", t("f32", 8, "m") if transA else t("f32", "m", 8))
    b = g.add_const(w(16, 8) if transB else w(8, 16), "B")
    c = {"row": lambda: g.add_const(w(16), "C"), "none": lambda: None, "full": lambda: g.add_const(w(5, 16), "C"),
         "input": lambda: g.add_input("c", t("f32", 1, 16)), "scalar": lambda: g.add_const(w(), "C"),
         "col": lambda: g.add_const(w(5, 1), "C")}[c_kind]()
    if c_kind in ("full", "col"):
        a.type = t("f32", 5, 8)  # C fixes M
    attrs = {"transA": transA, "transB": transB, "alpha": alpha, "beta": beta}
    g.outputs = [g.add_node("Gemm", [a, b] + ([c] if c is not None else []), attrs, out_names=["y"]).output]
    check_pass("canonicalize", g, [{"m": 5}, {"m": 1}] if c_kind not in ("full", "col") else [{}])
    ops = g.ops()
    assert ops.get("Linear") == 1 and "Gemm" not in ops
    assert ops.get("Transpose", 0) == transA
    assert ops.get("Add", 0) == (1 if c_kind in ("full", "input", "col") else 0)
    assert ops.get("Mul", 0) == (1 if c_kind == "input" and beta != 1.0 else 0)
    lin = next(n for n in g.nodes if n.op == "Linear")
    assert lin.inputs[1].const.shape == (8, 16)
    assert len(lin.inputs) == (3 if c_kind in ("row", "scalar") else 2)


def test_div_by_constant_becomes_mul_and_sub_stays():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 3))
    d = g.add_node("Div", [x, g.add_const(np.array([2.0, 3.0, 7.0], np.float32), "c")]).output
    s = g.add_node("Sub", [d, g.add_const(np.float32(1.0), "one")]).output
    xi = g.add_input("xi", t("i64", 3))
    di = g.add_node("Div", [xi, g.add_const(np.array(2, np.int64))], out_names=["yi"]).output  # integer: stays
    dv = g.add_node("Div", [x, x], out_names=["yv"]).output  # run-time divisor: stays
    g.outputs = [g.add_node("Identity", [s], out_names=["y"]).output, di, dv]
    check_pass("canonicalize", g, [{"n": 4}])
    assert g.ops() == {"Mul": 1, "Sub": 1, "Div": 2, "Identity": 1}
    mul = next(n for n in g.nodes if n.op == "Mul")
    np.testing.assert_array_equal(mul.inputs[1].const, np.float32(1) / np.array([2, 3, 7], np.float32))


def test_golden_text():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 2))
    mm = g.add_node("MatMul", [x, g.add_const(np.array([[1, 2], [3, 4]], np.float32), "W")], out_names=["mm"])
    g.outputs = [g.add_node("Add", [mm.output, g.add_const(np.array([0.5, -0.5], np.float32), "b")],
                            out_names=["y"]).output]
    run_pass("canonicalize", g, make_ctx())
    assert print_graph(g) == (
        "# tcc IR v1\n"
        "graph main(%x: f32[n,2]) -> (%y) {\n"
        "  %W : f32[2,2] = const [[1.0, 2.0], [3.0, 4.0]]\n"
        "  %b : f32[2] = const [0.5, -0.5]\n"
        "  %W.bias : f32[2] = const [0.5, -0.5]\n"
        "  %y : f32[n,2] = Linear(%x, %W, %W.bias)\n"
        "  return %y\n"
        "}\n")
