"""fuse-activations: GELU from its erf decomposition (every association of the final products) and SiLU."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcc.ir.core import Graph

from .helpers import check_pass, refusals, t

# Gelu via erf vs the decomposition in f32: a few ulps of the erf kernel/reference apart; the interpreter
# compares both in f32 with the shared pass tolerance.


def _gelu_graph(form: str, leak: bool = False) -> Graph:
    g = Graph()
    x = g.add_input("x", t("f32", "n", 16))
    k = g.add_const(np.array(1 / math.sqrt(2), np.float32), "inv_sqrt2")
    one = g.add_const(np.array(1.0, np.float32), "one")
    half = g.add_const(np.array(0.5, np.float32), "half")
    e = g.add_node("Erf", [g.add_node("Mul", [x, k]).output]).output
    a = g.add_node("Add", [one, e]).output  # the constant on the left: either order matches
    if form == "x*a*0.5":
        y = g.add_node("Mul", [g.add_node("Mul", [x, a]).output, half]).output
    elif form == "x*(a*0.5)":
        y = g.add_node("Mul", [x, g.add_node("Mul", [a, half]).output]).output
    else:  # (x*0.5)*a
        y = g.add_node("Mul", [g.add_node("Mul", [x, half]).output, a]).output
    g.outputs = [y]
    if leak:
        g.outputs.append(g.add_node("Neg", [e], out_names=["leak"]).output)
    return g


@pytest.mark.parametrize("form", ["x*a*0.5", "x*(a*0.5)", "(x*0.5)*a"])
def test_gelu_forms(form):
    g = _gelu_graph(form)
    ctx = check_pass("fuse-activations", g, [{"n": 3}, {"n": 1}])
    assert g.ops() == {"Gelu": 1}
    assert g.nodes[0].attrs == {"approximate": "none"}
    assert ctx.stats["fuse-activations"] == 1
    assert g.outputs[0].name == _gelu_graph(form).outputs[0].name  # the output keeps its public name


def test_gelu_refused_when_inner_value_escapes():
    g = _gelu_graph("x*a*0.5", leak=True)
    ctx = check_pass("fuse-activations", g, [{"n": 2}])
    assert "Gelu" not in g.ops()
    assert any("outside the GELU pattern" in r for r in refusals(ctx))


def test_gelu_needs_the_right_constants():
    g = Graph()
    x = g.add_input("x", t("f32", 4))
    e = g.add_node("Erf", [g.add_node("Mul", [x, g.add_const(np.array(0.5, np.float32), "k")]).output]).output
    a = g.add_node("Add", [e, g.add_const(np.array(1.0, np.float32), "one")]).output
    y = g.add_node("Mul", [g.add_node("Mul", [x, a]).output, g.add_const(np.array(0.5, np.float32), "h")]).output
    g.outputs = [y]
    check_pass("fuse-activations", g, [{}])
    assert "Gelu" not in g.ops()


def test_silu():
    g = Graph()
    x = g.add_input("x", t("f32", "n", 8))
    s = g.add_node("Sigmoid", [x]).output
    g.outputs = [g.add_node("Mul", [s, x], out_names=["y"]).output]
    check_pass("fuse-activations", g, [{"n": 5}])
    assert g.ops() == {"Silu": 1} and g.outputs[0].name == "y"


def test_silu_not_fused_when_mul_broadcasts_or_operand_differs():
    g = Graph()
    x = g.add_input("x", t("f32", 1, 8))
    z = g.add_input("z", t("f32", 3, 8))
    s = g.add_node("Sigmoid", [x]).output
    y1 = g.add_node("Mul", [s, z]).output  # sigmoid(x) * z: a gate, not SiLU
    g.outputs = [y1]
    check_pass("fuse-activations", g, [{}])
    assert g.ops() == {"Sigmoid": 1, "Mul": 1}


def _gelu_tanh_graph(cube: str, half_first: bool) -> Graph:
    """GPT-2's gelu_new as the exporters write it: x^3 by Pow or by two Muls; 0.5*x first or last."""
    g = Graph()
    x = g.add_input("x", t("f32", "n", 16))
    c = lambda v, name: g.add_const(np.array(v, np.float32), name)  # noqa: E731
    if cube == "pow":
        x3 = g.add_node("Pow", [x, c(3.0, "three")]).output
    else:
        x3 = g.add_node("Mul", [g.add_node("Mul", [x, x]).output, x]).output
    inner = g.add_node("Add", [x, g.add_node("Mul", [c(0.044715, "k"), x3]).output]).output
    th = g.add_node("Tanh", [g.add_node("Mul", [c(math.sqrt(2 / math.pi), "s2pi"), inner]).output]).output
    a = g.add_node("Add", [c(1.0, "one"), th]).output
    if half_first:
        y = g.add_node("Mul", [g.add_node("Mul", [c(0.5, "half"), x]).output, a]).output
    else:
        y = g.add_node("Mul", [g.add_node("Mul", [x, a]).output, c(0.5, "half")]).output
    g.outputs = [y]
    return g


@pytest.mark.parametrize("cube", ["pow", "mul"])
@pytest.mark.parametrize("half_first", [True, False])
def test_gelu_tanh_forms(cube, half_first):
    g = _gelu_tanh_graph(cube, half_first)
    check_pass("fuse-activations", g, [{"n": 3}, {"n": 1}])
    assert g.ops() == {"Gelu": 1} and g.nodes[0].attrs == {"approximate": "tanh"}


def test_gelu_tanh_needs_the_cubic_coefficient():
    g = _gelu_tanh_graph("pow", False)
    k = g.constants["k"]
    g.constants["k"].const = np.array(0.05, np.float32)  # not gelu_new any more
    assert k.const.item() == np.float32(0.05)
    check_pass("fuse-activations", g, [{"n": 2}])
    assert "Gelu" not in g.ops()
