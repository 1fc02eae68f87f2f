"""fold-constants: folding (numeric and symbolic), size guard, no-op removal."""
from __future__ import annotations

import numpy as np

from tcc.ir.core import Graph
from tcc.ir.text import print_graph

from .helpers import S, check_pass, make_ctx, refusals, run_pass, t


def test_shape_subgraph_folds_to_symbolic_constants():
    # (Reshape/Expand need constant shape inputs at construction, so the frontend folds those; what
    # reaches this pass are shape computations feeding run-time arithmetic or outputs.)
    g = Graph()
    x = g.add_input("x", t("f32", "batch", "seq", 64))
    n = g.add_input("n", t("i64", 4))
    shp = g.add_node("Shape", [x]).output
    b = g.add_node("Gather", [shp, g.add_const(np.array(0, np.int64))]).output
    s = g.add_node("Gather", [shp, g.add_const(np.array(1, np.int64))]).output
    bu = g.add_node("Unsqueeze", [b], {"axes": [0]}).output
    su = g.add_node("Unsqueeze", [s], {"axes": [0]}).output
    su2 = g.add_node("Mul", [su, g.add_const(np.array([2], np.int64))]).output
    tgt = g.add_node("Concat", [bu, su2, g.add_const(np.array([4, 16], np.int64))], {"axis": 0}).output
    g.outputs = [g.add_node("Add", [n, tgt], out_names=["y"]).output]
    ctx = check_pass("fold-constants", g, [{"batch": 2, "seq": 3}, {"batch": 1, "seq": 7}])
    assert g.ops() == {"Add": 1}
    target = g.nodes[0].inputs[1]
    assert target.is_const and target.const.dtype == object
    assert list(target.const) == [S("batch"), 2 * S("seq"), 4, 16]
    assert ctx.stats["fold-constants"] == 7


def test_shape_of_static_input_and_start_end():
    g = Graph()
    x = g.add_input("x", t("f32", 2, "seq", 5))
    a = g.add_node("Shape", [x], {"start": 1}).output
    b = g.add_node("Shape", [x], {"start": -1}).output
    g.outputs = [g.add_node("Concat", [a, b], {"axis": 0}, out_names=["s"]).output]
    check_pass("fold-constants", g, [{"seq": 3}])
    out = g.outputs[0]
    assert out.is_const and out.name == "s"  # a folded graph output keeps its name
    assert list(out.const) == [S("seq"), 5, 5]


def test_all_constant_nodes_fold_and_transposed_weight_is_folded():
    g = Graph()
    x = g.add_input("x", t("f32", 3, 600))
    w = g.add_const(np.random.default_rng(0).standard_normal((600, 600)).astype(np.float32), "w")  # 1.4 MiB
    wt = g.add_node("Transpose", [w], {"perm": [1, 0]}).output
    two = g.add_node("Add", [g.add_const(np.float32(1.0)), g.add_const(np.float32(1.0))]).output
    y = g.add_node("MatMul", [x, wt]).output
    g.outputs = [g.add_node("Mul", [y, two], out_names=["y"]).output]
    check_pass("fold-constants", g, [{}])
    assert g.ops() == {"MatMul": 1, "Mul": 1}
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, w.const.T)
    assert float(g.nodes[1].inputs[1].const) == 2.0


def test_large_generated_results_are_not_folded():
    g = Graph()
    x = g.add_input("x", t("f32", 1024, 1024))
    shape = g.add_const(np.array([1024, 1024], np.int64), "shape")
    big = g.add_node("ConstantOfShape", [shape], {"value": 1.5, "dtype": "f32"}).output  # 4 MiB
    e = g.add_node("Expand", [g.add_const(np.float32(2.0)), shape]).output
    small = g.add_node("ConstantOfShape", [g.add_const(np.array([1024], np.int64))], {"value": 1.0}).output
    y = g.add_node("Add", [x, big]).output
    y = g.add_node("Mul", [y, e]).output
    g.outputs = [g.add_node("Add", [y, small], out_names=["y"]).output]
    ctx = check_pass("fold-constants", g, [{}])
    assert g.ops() == {"ConstantOfShape": 1, "Expand": 1, "Add": 2, "Mul": 1}
    msgs = refusals(ctx)
    assert any("ConstantOfShape" in m and "left to run time" in m for m in msgs)
    assert any("Expand" in m and "left to run time" in m for m in msgs)


def test_noops_are_dropped():
    g = Graph()
    x = g.add_input("x", t("f32", "batch", 8))
    a = g.add_node("Cast", [x], {"to": "f32"}).output
    a = g.add_node("Identity", [a]).output
    a = g.add_node("Reshape", [a, g.add_const(np.array([0, 8], np.int64))]).output
    a = g.add_node("Expand", [a, g.add_const(np.array([1, 8], np.int64))]).output
    a = g.add_node("Add", [a, g.add_const(np.zeros((8,), np.float32))]).output
    a = g.add_node("Mul", [g.add_const(np.float32(1.0)), a]).output
    a = g.add_node("Transpose", [a], {"perm": [0, 1]}).output
    a = g.add_node("Sub", [a, g.add_const(np.float32(0.0))]).output
    a = g.add_node("Div", [a, g.add_const(np.float32(1.0))]).output
    g.outputs = [g.add_node("Relu", [a], out_names=["y"]).output]
    check_pass("fold-constants", g, [{"batch": 3}])
    assert g.ops() == {"Relu": 1}
    assert g.nodes[0].inputs[0] is g.inputs[0]


def test_noops_that_change_shape_or_dtype_stay():
    g = Graph()
    x = g.add_input("x", t("f32", 1, 8))
    a = g.add_node("Add", [x, g.add_const(np.zeros((4, 8), np.float32))]).output  # broadcasts [1,8] -> [4,8]
    b = g.add_node("Mul", [x, g.add_const(np.ones((8,), np.float32))]).output
    c = g.add_node("Cast", [b], {"to": "f16"}).output
    d = g.add_node("Add", [x, g.add_const(np.full((8,), 0.5, np.float32))]).output
    g.outputs = [a, c, d]
    check_pass("fold-constants", g, [{}])
    assert g.ops() == {"Add": 2, "Cast": 1}


def test_output_identity_of_input_is_kept_but_plain_intermediate_takes_the_name():
    g = Graph()
    x = g.add_input("x", t("f32", 4))
    i1 = g.add_node("Identity", [x], out_names=["y1"]).output  # output that is a graph input: kept
    r = g.add_node("Relu", [x]).output
    i2 = g.add_node("Identity", [r], out_names=["y2"]).output  # Relu's value can take the name
    g.outputs = [i1, i2]
    check_pass("fold-constants", g, [{}])
    assert g.ops() == {"Identity": 1, "Relu": 1}
    assert [v.name for v in g.outputs] == ["y1", "y2"]
    assert g.outputs[1].producer.op == "Relu"


def test_symbolic_comparisons_fold_only_when_provable():
    g = Graph()
    x = g.add_input("x", t("f32", "seq"))
    s = g.add_node("Shape", [x]).output
    provable = g.add_node("Equal", [s, g.add_const(np.array([-1], np.int64))], out_names=["neg"]).output
    ge = g.add_node("GreaterOrEqual", [s, g.add_const(np.array([0], np.int64))], out_names=["ge"]).output
    unknown = g.add_node("Equal", [s, g.add_const(np.array([5], np.int64))], out_names=["five"]).output
    g.outputs = [provable, ge, unknown]
    ctx = check_pass("fold-constants", g, [{"seq": 5}, {"seq": 2}])
    assert g.outputs[0].is_const and not g.outputs[0].const.any()
    assert g.outputs[1].is_const and g.outputs[1].const.all()
    assert not g.outputs[2].is_const
    assert any("depends on the shape binding" in m for m in refusals(ctx))


def test_symbolic_range_and_cast_to_float_stay():
    g = Graph()
    x = g.add_input("x", t("f32", "seq"))
    lim = np.empty((), object)
    lim[()] = S("seq")
    r = g.add_node("Range", [g.add_const(np.array(0, np.int64)), g.add_const(lim, "seq"),
                             g.add_const(np.array(1, np.int64))]).output
    f = g.add_node("Cast", [r], {"to": "f32"}).output
    g.outputs = [g.add_node("Add", [x, f], out_names=["y"]).output]
    check_pass("fold-constants", g, [{"seq": 4}])
    assert g.ops() == {"Range": 1, "Cast": 1, "Add": 1}  # output shape is symbolic: no constant


def test_golden_text():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 2))
    s = g.add_node("Shape", [x], out_names=["s"]).output
    c = g.add_node("Add", [g.add_const(np.array([1.0, 2.0], np.float32), "a"),
                           g.add_const(np.array([3.0, 4.0], np.float32), "b")], out_names=["c"]).output
    i = g.add_node("Identity", [x], out_names=["i"]).output
    y = g.add_node("Mul", [i, c], out_names=["y"]).output
    g.outputs = [y, s]
    run_pass("fold-constants", g, make_ctx())
    assert print_graph(g) == (
        "# tcc IR v1\n"
        "graph main(%x: f32[n,2]) -> (%y, %s) {\n"
        "  %a : f32[2] = const [1.0, 2.0]\n"
        "  %b : f32[2] = const [3.0, 4.0]\n"
        "  %s : i64[2] = const [n, 2]\n"
        "  %c : f32[2] = const [4.0, 6.0]\n"
        "  %y : f32[n,2] = Mul(%x, %c)\n"
        "  return %y, %s\n"
        "}\n")
