"""fuse-norms: RMSNorm / LayerNorm from decomposed forms, with casts, gamma/beta and refusals."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.ir.text import print_graph

from .helpers import F16_TOL, check_pass, make_ctx, refusals, run_pass, t

RNG = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def _per_test_rng(request):
    """Each test draws its own constants, seeded by its id: the same data whatever order tests run in."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


D = 16


def _rms_core(g, x, *, square="pow", inv="recip_sqrt", eps=1e-6, axes=(-1,), keepdims=1):
    if square == "pow":
        sq = g.add_node("Pow", [x, g.add_const(np.array(2.0, x.dtype.np))]).output
    else:
        sq = g.add_node("Mul", [x, x]).output
    ms = g.add_node("ReduceMean", [sq], {"axes": list(axes), "keepdims": keepdims}).output
    v = g.add_node("Add", [ms, g.add_const(np.array(eps, x.dtype.np), "eps")]).output if eps else ms
    if inv == "div_sqrt":
        return g.add_node("Div", [x, g.add_node("Sqrt", [v]).output]).output
    if inv == "recip_sqrt":
        r = g.add_node("Reciprocal", [g.add_node("Sqrt", [v]).output]).output
    elif inv == "one_over_sqrt":
        r = g.add_node("Div", [g.add_const(np.array(1.0, x.dtype.np)), g.add_node("Sqrt", [v]).output]).output
    else:  # pow -0.5
        r = g.add_node("Pow", [v, g.add_const(np.array(-0.5, x.dtype.np))]).output
    return g.add_node("Mul", [x, r] if inv != "pow_swapped" else [r, x]).output


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("inv", ["recip_sqrt", "one_over_sqrt", "pow", "div_sqrt"])
@pytest.mark.parametrize("weight", ["left", "right", "none"])
def test_rmsnorm_variants(square, inv, weight):
    g = Graph()
    x = g.add_input("x", t("f32", "b", "s", D))
    y = _rms_core(g, x, square=square, inv=inv)
    gamma = g.add_const(RNG.standard_normal(D).astype(np.float32), "gamma")
    if weight == "left":
        y = g.add_node("Mul", [gamma, y]).output
    elif weight == "right":
        y = g.add_node("Mul", [y, gamma]).output
    g.outputs = [g.add_node("Relu", [y], out_names=["out"]).output]
    ctx = check_pass("fuse-norms", g, [{"b": 2, "s": 3}, {"b": 1, "s": 5}])
    assert g.ops() == {"RMSNorm": 1, "Relu": 1}, g.ops()
    n = g.nodes[0]
    assert n.attrs["axis"] == -1 and n.attrs["eps"] == pytest.approx(1e-6)
    if weight == "none":
        np.testing.assert_array_equal(n.inputs[1].const, np.ones(D, np.float32))
    else:
        np.testing.assert_array_equal(n.inputs[1].const, gamma.const)
    assert ctx.stats["fuse-norms"] == {"RMSNorm": 1, "LayerNorm": 0}


def test_llama_style_rmsnorm_with_casts_f16():
    """x.to(f32) -> pow/mean/add/sqrt/reciprocal -> mul -> .to(f16) -> weight * ."""
    g = Graph()
    x = g.add_input("x", t("f16", "s", D))
    xf = g.add_node("Cast", [x], {"to": "f32"}).output
    y = _rms_core(g, xf, eps=1e-5)
    yh = g.add_node("Cast", [y], {"to": "f16"}).output
    gamma = g.add_const((1 + 0.1 * RNG.standard_normal(D)).astype(np.float16), "w")
    g.outputs = [g.add_node("Mul", [gamma, yh], out_names=["out"]).output]
    check_pass("fuse-norms", g, [{"s": 4}], tol=F16_TOL)
    run_pass("eliminate-dead-code", g)  # the up-cast is left unused
    assert g.ops() == {"RMSNorm": 1}
    n = g.nodes[0]
    assert n.inputs[0] is g.inputs[0] and n.output.name == "out"
    assert n.inputs[1].dtype.np == np.float16


def test_rmsnorm_in_f32_of_f16_input_without_cast_back_keeps_cast():
    g = Graph()
    x = g.add_input("x", t("f16", "s", D))
    xf = g.add_node("Cast", [x], {"to": "f32"}).output
    g.outputs = [g.add_node("Identity", [_rms_core(g, xf)], out_names=["out"]).output]
    check_pass("fuse-norms", g, [{"s": 3}])
    assert g.ops() == {"Cast": 1, "RMSNorm": 1, "Identity": 1}


def test_rmsnorm_over_two_trailing_axes():
    g = Graph()
    x = g.add_input("x", t("f32", 2, 3, 4))
    y = _rms_core(g, x, axes=(1, 2))
    gamma = g.add_const(RNG.standard_normal((1, 3, 4)).astype(np.float32))
    g.outputs = [g.add_node("Mul", [y, gamma], out_names=["out"]).output]
    check_pass("fuse-norms", g, [{}])
    assert g.ops() == {"RMSNorm": 1}
    assert g.nodes[0].attrs["axis"] == -2 and g.nodes[0].inputs[1].const.shape == (3, 4)


def _layernorm(g, x, *, square="pow", gamma=True, beta=True, eps=1e-5, inv="div"):
    mean = g.add_node("ReduceMean", [x], {"axes": [-1]}).output
    d = g.add_node("Sub", [x, mean]).output
    sq = (g.add_node("Pow", [d, g.add_const(np.array(2.0, np.float32))]).output if square == "pow"
          else g.add_node("Mul", [d, d]).output)
    var = g.add_node("ReduceMean", [sq], {"axes": [-1]}).output
    v = g.add_node("Add", [g.add_const(np.array(eps, np.float32)), var]).output
    s = g.add_node("Sqrt", [v]).output
    if inv == "div":
        y = g.add_node("Div", [d, s]).output
    else:
        y = g.add_node("Mul", [d, g.add_node("Reciprocal", [s]).output]).output
    if gamma:
        y = g.add_node("Mul", [y, g.add_const(RNG.standard_normal(D).astype(np.float32), "g")]).output
    if beta:
        y = g.add_node("Add", [g.add_const(RNG.standard_normal(D).astype(np.float32), "beta"), y]).output
    return y


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("gamma,beta", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("inv", ["div", "recip"])
def test_layernorm_variants(square, gamma, beta, inv):
    g = Graph()
    x = g.add_input("x", t("f32", "n", D))
    g.outputs = [g.add_node("Tanh", [_layernorm(g, x, square=square, gamma=gamma, beta=beta, inv=inv)],
                            out_names=["out"]).output]
    ctx = check_pass("fuse-norms", g, [{"n": 3}, {"n": 1}])
    assert g.ops() == {"LayerNorm": 1, "Tanh": 1}
    n = g.nodes[0]
    assert n.attrs == {"axis": -1, "eps": pytest.approx(1e-5)}
    assert len(n.inputs) == (3 if beta else 2)
    if not gamma:
        np.testing.assert_array_equal(n.inputs[1].const, np.ones(D, np.float32))
    assert ctx.stats["fuse-norms"]["LayerNorm"] == 1


def test_refuses_when_inner_value_is_used_outside():
    g = Graph()
    x = g.add_input("x", t("f32", 4, D))
    mean = g.add_node("ReduceMean", [x], {"axes": [-1]}).output
    d = g.add_node("Sub", [x, mean]).output
    var = g.add_node("ReduceMean", [g.add_node("Mul", [d, d]).output], {"axes": [-1]}).output
    y = g.add_node("Div", [d, g.add_node("Sqrt", [g.add_node("Add", [var, g.add_const(np.float32(1e-5))]).output]).output],
                   out_names=["y"]).output
    g.outputs = [y, var]  # the variance is also a graph output
    ctx = check_pass("fuse-norms", g, [{}])
    assert "LayerNorm" not in g.ops()
    assert any("used outside" in m for m in refusals(ctx))


def test_refuses_non_trailing_axes_and_keepdims0():
    g = Graph()
    x = g.add_input("x", t("f32", 4, D))
    y1 = _rms_core(g, x, axes=(0,))
    g.outputs = [g.add_node("Identity", [y1], out_names=["y1"]).output]
    ctx = check_pass("fuse-norms", g, [{}])
    assert "RMSNorm" not in g.ops()
    assert any("does not reduce trailing axes" in m for m in refusals(ctx))


def test_refuses_symbolic_ones_gamma():
    g = Graph()
    x = g.add_input("x", t("f32", 2, "d"))
    g.outputs = [g.add_node("Identity", [_rms_core(g, x)], out_names=["y"]).output]
    ctx = check_pass("fuse-norms", g, [{"d": 5}])
    assert "RMSNorm" not in g.ops()
    assert any("symbolic" in m for m in refusals(ctx))


def test_refuses_nonscalar_eps():
    g = Graph()
    x = g.add_input("x", t("f32", 4, D))
    ms = g.add_node("ReduceMean", [g.add_node("Mul", [x, x]).output], {"axes": [-1]}).output
    v = g.add_node("Add", [ms, g.add_const(np.full((4, 1), 1e-5, np.float32))]).output
    y = g.add_node("Mul", [x, g.add_node("Reciprocal", [g.add_node("Sqrt", [v]).output]).output]).output
    g.outputs = [g.add_node("Identity", [y], out_names=["y"]).output]
    ctx = check_pass("fuse-norms", g, [{}])
    assert "RMSNorm" not in g.ops()
    assert any("constant scalar eps" in m for m in refusals(ctx))


def test_gamma_that_varies_per_row_is_not_absorbed():
    g = Graph()
    x = g.add_input("x", t("f32", 3, D))
    y = _rms_core(g, x)
    rowwise = g.add_const(RNG.standard_normal((3, 1)).astype(np.float32))
    g.outputs = [g.add_node("Mul", [y, rowwise], out_names=["y"]).output]
    check_pass("fuse-norms", g, [{}])
    assert g.ops() == {"RMSNorm": 1, "Mul": 1}


def test_golden_text():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 2))
    y = _rms_core(g, x, eps=0.5)
    g.outputs = [g.add_node("Mul", [g.add_const(np.array([2.0, 3.0], np.float32), "w"), y], out_names=["y"]).output]
    run_pass("fuse-norms", g, make_ctx())
    run_pass("eliminate-dead-code", g, make_ctx())
    assert print_graph(g) == (
        "# tcc IR v1\n"
        "graph main(%x: f32[n,2]) -> (%y) {\n"
        "  %w.gamma : f32[2] = const [2.0, 3.0]\n"
        "  %y : f32[n,2] = RMSNorm(%x, %w.gamma) {axis=-1, eps=0.5}\n"
        "  return %y\n"
        "}\n")
