"""fuse-activations: one unary kernel instead of a chain of elementwise ops.

- GELU (exact):  Mul(Mul(x, Add(Erf(Mul(x, 1/sqrt2)), 1)), 0.5), in any association of the two final
  multiplications (x * a * 0.5, x * (a * 0.5), (x * 0.5) * a)  ->  Gelu(x) {approximate="none"}
  (canonicalize has already turned Div(x, sqrt2) into Mul(x, 1/sqrt2)).
- GELU (tanh, GPT-2's gelu_new): the same tail around Tanh(Mul(Add(x, Mul(x^3, 0.044715)), sqrt(2/pi))),
  x^3 as Pow(x, 3) or x*x*x  ->  Gelu(x) {approximate="tanh"}
- SiLU:          Mul(x, Sigmoid(x))  ->  Silu(x)

Refused (logged) when an inner value has consumers outside the pattern. Matches are collected first and
committed afterwards.
"""
from __future__ import annotations

import math

from ..ir.core import Graph, Node, Value
from . import register_pass
from .rewrite_utils import is_scalar_const, only_consumer, other_input, outside_consumers, producer, replace_value

INV_SQRT2 = 1.0 / math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715
TOL = 1e-6  # the constants come from float32 exports: 1/sqrt(2) and 0.5 to float32 precision


@register_pass("fuse-activations")
def fuse_activations(graph: Graph, ctx) -> None:
    users = graph.users()
    matchers = {"Erf": _match_gelu, "Tanh": _match_gelu_tanh, "Sigmoid": _match_silu}
    matches: list[tuple[str, Value, Value, list[Node], str | None]] = []
    for node in graph.nodes:
        found = matchers[node.op](graph, users, node, ctx) if node.op in matchers else None
        if found:
            matches.append(found)
    for op, x, out, inner, approximate in matches:
        attrs = {"approximate": approximate} if op == "Gelu" else {}
        fused = graph.add_node(op, [x], attrs, name=inner[-1].name, before=inner[-1])
        replace_value(graph, out, fused.output)
        graph.remove_nodes(inner)
        ctx.log("fuse-activations", f"{op} from {len(inner)} ops at {inner[-1].name!r}")
    ctx.stats["fuse-activations"] = len(matches)


def _match_gelu(graph: Graph, users, erf: Node, ctx):
    scale = producer(erf.inputs[0], "Mul")
    if scale is None:
        return None
    x = next((v for v in scale.inputs if is_scalar_const(other_input(scale, v), INV_SQRT2, TOL)), None)
    if x is None:
        return None
    return _match_tail(graph, users, erf, x, [scale], "none", ctx)


def _match_gelu_tanh(graph: Graph, users, tanh: Node, ctx):
    """tanh(sqrt(2/pi) * (x + 0.044715 * x^3)), the cube as Pow(x, 3) or x*x*x."""
    scale = producer(tanh.inputs[0], "Mul")
    if scale is None:
        return None
    s = next((v for v in scale.inputs if is_scalar_const(other_input(scale, v), SQRT_2_OVER_PI, TOL)), None)
    add = producer(s, "Add")
    if add is None:
        return None
    for x in add.inputs:
        t = producer(other_input(add, x), "Mul")
        cube_v = None if t is None else next(
            (v for v in t.inputs if is_scalar_const(other_input(t, v), GELU_CUBIC, TOL)), None)
        cube = _cube_nodes(cube_v, x)
        if cube is not None:
            return _match_tail(graph, users, tanh, x, [*cube, t, add, scale], "tanh", ctx)
    return None


def _cube_nodes(v: Value | None, x: Value) -> list[Node] | None:
    """The nodes computing v = x^3 (Pow(x, 3), or x*x*x in either association), else None."""
    pw = producer(v, "Pow")
    if pw is not None:
        return [pw] if pw.inputs[0] is x and is_scalar_const(pw.inputs[1], 3.0) else None
    outer = producer(v, "Mul")
    if outer is None or x not in outer.inputs:
        return None
    sq = producer(other_input(outer, x), "Mul")
    if sq is None or sq.inputs[0] is not x or sq.inputs[1] is not x:
        return None
    return [sq, outer]


def _match_tail(graph: Graph, users, act: Node, x: Value, head: list[Node], approximate: str, ctx):
    """0.5 * x * (1 + act) after the erf/tanh node `act`, in any association of the two products."""
    add = _sole_consumer(graph, users, act.output, act, ctx)
    if add is None or add.op != "Add" or not is_scalar_const(other_input(add, act.output), 1.0):
        return None
    m1 = _sole_consumer(graph, users, add.output, act, ctx)
    if m1 is None or m1.op != "Mul":
        return None
    p = other_input(m1, add.output)
    half = producer(p, "Mul")
    inner = [*head, act, add, m1]
    if p is x:  # (x * a) * 0.5
        m2 = only_consumer(users, graph, m1.output)
        if m2 is None or m2.op != "Mul" or not is_scalar_const(other_input(m2, m1.output), 0.5, TOL):
            return None
        inner.append(m2)
    elif is_scalar_const(p, 0.5, TOL):  # x * (a * 0.5)
        m2 = only_consumer(users, graph, m1.output)
        if m2 is None or m2.op != "Mul" or other_input(m2, m1.output) is not x:
            return None
        inner.append(m2)
    elif half is not None and x in half.inputs and is_scalar_const(other_input(half, x), 0.5, TOL):
        inner.insert(0, half)  # (x * 0.5) * a
    else:
        return None
    leak = outside_consumers(graph, users, inner, exclude=inner[-1].output)
    if leak is not None:
        ctx.refuse("fuse-activations", act, f"%{leak.name} is used outside the GELU pattern")
        return None
    return "Gelu", x, inner[-1].output, inner, approximate


def _sole_consumer(graph: Graph, users, v: Value, anchor: Node, ctx) -> Node | None:
    """The one node reading an inner value of the pattern; logs a refusal when others read it too."""
    n = only_consumer(users, graph, v)
    if n is None and users.get(v):
        ctx.refuse("fuse-activations", anchor, f"%{v.name} is used outside the GELU pattern")
    return n


def _match_silu(graph: Graph, users, sig: Node, ctx):
    x = sig.inputs[0]
    mul = only_consumer(users, graph, sig.output)
    if mul is None or mul.op != "Mul" or other_input(mul, sig.output) is not x:
        return None
    if x.type != mul.output.type:
        return None  # the Mul broadcasts: not an elementwise SiLU
    return "Silu", x, mul.output, [sig, mul], None
