"""lower-ops: rewrite ops into the forms the kernel families implement (target independent).

- Gemm (not turned into Linear) -> Transpose / MatMul / Mul(alpha) / Add(beta * C)
- variadic Max/Min -> a chain of binary ops; Sum/Mean likewise
- Clip with run-time bounds -> Max/Min
- Gather with i32 indices -> Cast to i64 first
- Pow with an exponent of another dtype -> Cast the exponent
- integer Mod with fmod=1 -> a - trunc(a / b) * b
- f16 arithmetic -> Cast to f32, compute, Cast back (data movement stays f16), where the target's
  capabilities (backends.capabilities) say f16 arithmetic is not native
- Reduce* over non-adjacent axes -> Transpose the reduced axes to the end, reduce, Reshape
- LayerNorm/RMSNorm with a gamma/beta that only broadcasts over the normalized axes -> full-size constant
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, Node
from ..ir.dims import product
from ..ir.dtypes import DType
from ..ir.registry import norm_axis
from ..backends import capabilities
from . import register_pass

REDUCES = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")


@register_pass("lower-ops")
def lower_ops(graph: Graph, ctx) -> None:
    for node in list(graph.nodes):
        rule = RULES.get(node.op)
        if rule is not None and rule(graph, node):
            ctx.log("lower-ops", f"lowered {node.op} {node.name!r}")
    caps = capabilities(ctx.target)
    for node in list(graph.nodes):
        if caps.f16_in_f32(node.op) and _compute_f16_in_f32(graph, node):
            ctx.log("lower-ops", f"{node.op} {node.name!r} computes f16 in f32")
    graph.remove_unused_constants()


def _compute_f16_in_f32(graph: Graph, node: Node) -> bool:
    """Run the node's f16 arithmetic in f32 between casts (for a target without native f16 arithmetic:
    results are the f32 result rounded once to f16)."""
    if not any(v is not None and v.dtype == DType.f16 for v in [*node.inputs, *node.outputs]):
        return False
    ins = []
    for v in node.inputs:
        if v is not None and v.dtype == DType.f16:
            v = graph.add_node("Cast", [v], {"to": "f32"}, before=node).output
        ins.append(v)
    wide = graph.add_node(node.op, ins, dict(node.attrs), name=node.name, before=node, num_outputs=len(node.outputs))
    for old, new in zip(node.outputs, wide.outputs):
        if old.dtype == DType.f16:
            new = graph.add_node("Cast", [new], {"to": "f16"}, before=node).output
        graph.replace_uses(old, new)
    graph.remove_nodes([node])
    return True


def _replace(graph: Graph, node: Node, new_out) -> bool:
    graph.replace_uses(node.output, new_out)
    graph.remove_nodes([node])
    return True


def _gemm(graph: Graph, node: Node) -> bool:
    a, b = node.inputs[0], node.inputs[1]
    c = node.input(2)
    at = node.attrs
    if at.get("transA", 0):
        a = graph.add_node("Transpose", [a], {"perm": [1, 0]}, before=node).output
    if at.get("transB", 0):
        b = graph.add_node("Transpose", [b], {"perm": [1, 0]}, before=node).output
    y = graph.add_node("MatMul", [a, b], name=node.name, before=node).output
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    dt = node.output.dtype.np
    if alpha != 1.0:
        y = graph.add_node("Mul", [y, graph.add_const(np.array(alpha, dt), "alpha")], before=node).output
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = graph.add_node("Mul", [c, graph.add_const(np.array(beta, dt), "beta")], before=node).output
        y = graph.add_node("Add", [y, c], before=node).output
    return _replace(graph, node, y)


def _variadic(graph: Graph, node: Node) -> bool:
    if len(node.inputs) == 2:
        return False
    if len(node.inputs) == 1:
        return _replace(graph, node, graph.add_node("Identity", [node.inputs[0]], before=node).output)
    acc = node.inputs[0]
    for x in node.inputs[1:]:
        acc = graph.add_node(node.op, [acc, x], name=node.name, before=node).output
    return _replace(graph, node, acc)


def _clip(graph: Graph, node: Node) -> bool:
    bounds = node.inputs[1:]
    if all(b is None or (b.const is not None and b.const.dtype != object) for b in bounds):
        return False
    y = node.inputs[0]
    for b, op in zip(bounds, ("Max", "Min")):
        if b is not None:
            y = graph.add_node(op, [y, b], before=node).output
    return _replace(graph, node, y)


def _gather(graph: Graph, node: Node) -> bool:
    idx = node.inputs[1]
    if idx.dtype == DType.i64:
        return False
    if idx.const is not None:
        node.inputs[1] = graph.add_const(idx.const.astype(np.int64), idx.name + ".i64")
    else:
        node.inputs[1] = graph.add_node("Cast", [idx], {"to": "i64"}, before=node).output
    return True


def _pow(graph: Graph, node: Node) -> bool:
    x, e = node.inputs
    if e.dtype == x.dtype:
        return False
    if e.const is not None and e.const.dtype != object:
        node.inputs[1] = graph.add_const(e.const.astype(x.dtype.np), e.name + ".cast")
    else:
        node.inputs[1] = graph.add_node("Cast", [e], {"to": str(x.dtype)}, before=node).output
    return True


def _reduce(graph: Graph, node: Node) -> bool:
    x = node.inputs[0]
    rank = x.type.rank
    axes = sorted({norm_axis(a, rank) for a in (node.attrs.get("axes") or range(rank))})
    if not axes or axes == list(range(axes[0], axes[-1] + 1)):
        return False
    kept = [i for i in range(rank) if i not in axes]
    t = graph.add_node("Transpose", [x], {"perm": kept + axes}, before=node).output
    moved = list(range(len(kept), rank))
    r = graph.add_node(node.op, [t], {"axes": moved, "keepdims": 0}, name=node.name, before=node).output
    shape = np.array(node.output.shape, dtype=object)
    if all(isinstance(d, int) for d in shape):
        shape = shape.astype(np.int64)
    y = graph.add_node("Reshape", [r, graph.add_const(shape, "shape")], before=node).output
    return _replace(graph, node, y)


def _norm(graph: Graph, node: Node) -> bool:
    x = node.inputs[0]
    axis = norm_axis(node.attrs["axis"], x.type.rank)
    normalized = tuple(x.shape[axis:])
    changed = False
    for i in (1, 2):
        p = node.input(i)
        if p is None or tuple(p.shape) == normalized or p.type.numel == product(normalized):
            continue
        if p.const is None or not all(isinstance(d, int) for d in normalized):
            continue  # left for the code generator to refuse with a clear message
        node.inputs[i] = graph.add_const(np.ascontiguousarray(np.broadcast_to(p.const, normalized)), p.name + ".full")
        changed = True
    return changed


def _mod(graph: Graph, node: Node) -> bool:
    a, b = node.inputs
    if not node.attrs.get("fmod", 0) or a.dtype.is_float:
        return False
    # Integer fmod (sign of the dividend) = a - trunc(a / b) * b; integer Div truncates toward zero.
    q = graph.add_node("Div", [a, b], before=node).output
    y = graph.add_node("Sub", [a, graph.add_node("Mul", [q, b], before=node).output], before=node).output
    return _replace(graph, node, y)


RULES = {"Gemm": _gemm, "Max": _variadic, "Min": _variadic, "Clip": _clip, "Gather": _gather, "Pow": _pow, "Mod": _mod,
         "LayerNorm": _norm, "RMSNorm": _norm, **{op: _reduce for op in REDUCES}}
