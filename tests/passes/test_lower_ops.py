"""lower-ops: ops rewritten into the forms the kernel families implement, with the same results in the
reference interpreter; ops already in kernel form are left alone."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.ir.dtypes import DType

from .helpers import F16_TOL, check_pass, per_test_constants, t, w  # noqa: F401 (an autouse fixture)


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [(0, 0, 1.0, 1.0), (1, 0, 0.5, 1.0), (0, 1, 1.0, 2.0),
                                                        (1, 1, 3.0, 0.0)])
def test_gemm_becomes_matmul_with_scaled_bias(trans_a, trans_b, alpha, beta):
    g = Graph()
    a = g.add_input("a", t("f32", 8, 4) if trans_a else t("f32", 4, 8))
    b = g.add_input("b", t("f32", 6, 8) if trans_b else t("f32", 8, 6))
    c = g.add_input("c", t("f32", 6))
    g.outputs = [g.add_node("Gemm", [a, b, c], {"transA": trans_a, "transB": trans_b, "alpha": alpha,
                                                 "beta": beta}, out_names=["y"]).output]
    check_pass("lower-ops", g, [{}])
    ops = g.ops()
    assert "Gemm" not in ops and ops["MatMul"] == 1
    assert ops.get("Transpose", 0) == trans_a + trans_b
    assert ops.get("Add", 0) == (beta != 0.0)  # beta 0 drops C
    assert ops.get("Mul", 0) == (alpha != 1.0) + (beta not in (0.0, 1.0))
    assert g.outputs[0].name == "y"


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_variadic_becomes_a_binary_chain(op):
    g = Graph()
    xs = [g.add_input(f"x{i}", t("f32", "n", 5)) for i in range(4)]
    g.outputs = [g.add_node(op, xs).output]
    check_pass("lower-ops", g, [{"n": 3}, {"n": 1}])
    assert g.ops() == {op: 3}
    assert all(len(n.inputs) == 2 for n in g.nodes)


def test_single_input_max_becomes_identity():
    g = Graph()
    x = g.add_input("x", t("f32", 3))
    g.outputs = [g.add_node("Max", [x]).output]
    check_pass("lower-ops", g, [{}])
    assert g.ops() == {"Identity": 1}


def test_clip_with_runtime_bounds_becomes_max_min():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 7))
    lo, hi = g.add_input("lo", t("f32")), g.add_input("hi", t("f32"))
    g.outputs = [g.add_node("Clip", [x, lo, hi]).output]
    check_pass("lower-ops", g, [{"n": 4}], overrides=lambda env: {"lo": np.float32(-0.5), "hi": np.float32(0.7)})
    assert g.ops() == {"Max": 1, "Min": 1}
    mx = next(n for n in g.nodes if n.op == "Max")
    assert mx.inputs[0] is g.inputs[0] and mx.inputs[1] is g.inputs[1]


def test_gather_with_i32_indices_casts_to_i64():
    g = Graph()
    data = g.add_input("data", t("f32", 9, 4))
    idx = g.add_input("idx", t("i32", "n"))
    cidx = g.add_const(np.array([0, 8, 3], np.int32), "cidx")
    g.outputs = [g.add_node("Gather", [data, idx], {"axis": 0}, out_names=["y"]).output,
                 g.add_node("Gather", [data, cidx], {"axis": 0}, out_names=["z"]).output]
    check_pass("lower-ops", g, [{"n": 5}])
    assert g.ops() == {"Gather": 2, "Cast": 1}
    assert all(n.inputs[1].dtype == DType.i64 for n in g.nodes if n.op == "Gather")
    assert g.outputs[1].producer.inputs[1].is_const  # a constant index is converted, not cast at run time


def test_pow_exponent_of_another_dtype_is_cast():
    g = Graph()
    x = g.add_input("x", t("f32", 6))
    e = g.add_input("e", t("i64", 6))
    g.outputs = [g.add_node("Pow", [x, e]).output]
    check_pass("lower-ops", g, [{}])
    assert g.ops() == {"Pow": 1, "Cast": 1}
    assert g.outputs[0].producer.inputs[1].dtype == DType.f32


def test_integer_fmod_becomes_div_mul_sub():
    g = Graph()
    a, b = g.add_input("a", t("i64", 12)), g.add_input("b", t("i64", 12))
    g.outputs = [g.add_node("Mod", [a, b], {"fmod": 1}).output]
    a_v = np.array([7, -7, 7, -7, 0, 5, -5, 13, -13, 1, -1, 9], np.int64)
    b_v = np.array([3, 3, -3, -3, 2, 5, 5, 4, -4, 7, 7, -2], np.int64)
    check_pass("lower-ops", g, [{}], overrides=lambda env: {"a": a_v, "b": b_v})
    assert g.ops() == {"Div": 1, "Mul": 1, "Sub": 1}


def test_f16_arithmetic_computes_in_f32_between_casts():
    g = Graph()
    x, y = g.add_input("x", t("f16", "n", 8)), g.add_input("y", t("f16", "n", 8))
    s = g.add_node("Add", [x, y]).output
    g.outputs = [g.add_node("Transpose", [s], {"perm": [1, 0]}, out_names=["out"]).output]
    check_pass("lower-ops", g, [{"n": 3}], tol=F16_TOL)
    add = next(n for n in g.nodes if n.op == "Add")
    assert [v.dtype for v in add.inputs] == [DType.f32, DType.f32] and add.output.dtype == DType.f32
    assert g.ops() == {"Cast": 3, "Add": 1, "Transpose": 1}
    assert g.outputs[0].producer.op == "Transpose" and g.outputs[0].dtype == DType.f16  # data movement stays f16


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMean"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_non_adjacent_axes_transposes_them_last(op, keepdims):
    g = Graph()
    x = g.add_input("x", t("f32", 2, 3, 4, 5))
    g.outputs = [g.add_node(op, [x], {"axes": [0, 2], "keepdims": keepdims}).output]
    check_pass("lower-ops", g, [{}])
    assert g.ops() == {"Transpose": 1, op: 1, "Reshape": 1}
    tr = next(n for n in g.nodes if n.op == "Transpose")
    assert list(tr.attrs["perm"]) == [1, 3, 0, 2]
    red = next(n for n in g.nodes if n.op == op)
    assert list(red.attrs["axes"]) == [2, 3]
    assert g.outputs[0].shape == ((1, 3, 1, 5) if keepdims else (3, 5))


@pytest.mark.parametrize("op", ["LayerNorm", "RMSNorm"])
def test_norm_with_broadcasting_gamma_gets_a_full_size_constant(op):
    g = Graph()
    x = g.add_input("x", t("f32", "n", 4, 6))
    gamma = g.add_const(w(1, 6), "gamma")
    ins = [x, gamma] + ([g.add_const(w(6), "beta")] if op == "LayerNorm" else [])
    g.outputs = [g.add_node(op, ins, {"axis": -2, "eps": 1e-5}).output]
    check_pass("lower-ops", g, [{"n": 2}])
    norm = g.nodes[0]
    assert norm.inputs[1].const.shape == (4, 6)
    if op == "LayerNorm":
        assert norm.inputs[2].const.shape == (4, 6)
    assert "gamma" not in g.constants  # the broadcasting original is gone


def test_kernel_form_ops_are_left_alone():
    """Binary Max, Clip with constant bounds, i64 Gather, same-dtype Pow, float/plain Mod, Reduce over
    adjacent axes, f32 arithmetic and a full-size norm gamma: nothing to lower."""
    g = Graph()
    x = g.add_input("x", t("f32", 2, 3, 4))
    y = g.add_input("y", t("f32", 2, 3, 4))
    i = g.add_input("i", t("i64", 5))
    j = g.add_input("j", t("i64", 5))
    outs = [g.add_node("Max", [x, y]).output,
            g.add_node("Clip", [x, g.add_const(np.array(-1, np.float32)), g.add_const(np.array(1, np.float32))]).output,
            g.add_node("Gather", [x, g.add_const(np.array([1, 0], np.int64))], {"axis": 1}).output,
            g.add_node("Pow", [x, y]).output,
            g.add_node("Mod", [x, y], {"fmod": 1}).output,
            g.add_node("Mod", [i, j], {"fmod": 0}).output,
            g.add_node("ReduceSum", [x], {"axes": [1, 2], "keepdims": 0}).output,
            g.add_node("LayerNorm", [x, g.add_const(w(4)), g.add_const(w(4))], {"axis": -1, "eps": 1e-5}).output]
    g.outputs = outs
    before = [(n.op, [id(v) for v in n.inputs], dict(n.attrs)) for n in g.nodes]
    ctx = check_pass("lower-ops", g, [{}], overrides=lambda env: {"j": np.arange(1, 6, dtype=np.int64)})
    assert [(n.op, [id(v) for v in n.inputs], dict(n.attrs)) for n in g.nodes] == before
    assert not [m for m in ctx.messages if "lowered" in m or "computes f16" in m]
