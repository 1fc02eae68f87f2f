"""fuse-activations: one unary kernel instead of a chain of elementwise ops.

- GELU (exact):  Mul(Mul(x, Add(Erf(Mul(x, 1/sqrt2)), 1)), 0.5), in any association of the two final
  multiplications (x * a * 0.5, x * (a * 0.5), (x * 0.5) * a)  ->  Gelu(x) {approximate="none"}
  (canonicalize has already turned Div(x, sqrt2) into Mul(x, 1/sqrt2)).
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
TOL = 1e-6  # the constants come from float32 exports: 1/sqrt(2) and 0.5 to float32 precision


@register_pass("fuse-activations")
def fuse_activations(graph: Graph, ctx) -> None:
    users = graph.users()
    matches: list[tuple[str, Value, Value, list[Node]]] = []
    for node in graph.nodes:
        found = _match_gelu(graph, users, node, ctx) if node.op == "Erf" else None
        found = found or (_match_silu(graph, users, node, ctx) if node.op == "Sigmoid" else None)
        if found:
            matches.append(found)
    for op, x, out, inner in matches:
        attrs = {"approximate": "none"} if op == "Gelu" else {}
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
    add = _sole_consumer(graph, users, erf.output, erf, ctx)
    if add is None or add.op != "Add" or not is_scalar_const(other_input(add, erf.output), 1.0):
        return None
    m1 = _sole_consumer(graph, users, add.output, erf, ctx)
    if m1 is None or m1.op != "Mul":
        return None
    p = other_input(m1, add.output)
    half = producer(p, "Mul")
    inner = [scale, erf, add, m1]
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
        ctx.refuse("fuse-activations", erf, f"%{leak.name} is used outside the GELU pattern")
        return None
    return "Gelu", x, inner[-1].output, inner


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
    return "Silu", x, mul.output, [sig, mul]
