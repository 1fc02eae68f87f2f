"""canonicalize: rewrite equivalent spellings into one form so later patterns match once.

  MatMul(x, W)            W a constant 2-D f32 weight                 -> Linear(x, W)
  Add(MatMul(x, W), b)    b constant, broadcast-equivalent to [N]     -> Linear(x, W, b)
                          ([N], [1,N], [1,1,N], a scalar ...; either Add operand; only when the MatMul has
                          no other consumer and the Add does not broaden the MatMul's shape)
  Gemm(A, B, C) {alpha, beta, transA, transB}, B constant 2-D        -> Linear(A', alpha * B', c)
                          B' = B^T if transB (the constant is transposed); A' = Transpose(A) if transA;
                          C constant and row-broadcast ([N], [1,N], scalar) becomes the bias beta*C;
                          any other C is added after the Linear (scaled by beta with a Mul if beta != 1)
  Div(x, c)               c a float constant                          -> Mul(x, 1/c)
Sub(x, c) is left alone. Results equal the originals up to fp32 rounding (1/c, alpha * B).
Refusals (logged): non-f32 operands, a MatMul weight that is not 2-D, a symbolic constant divisor.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph, Node
from ..ir.dtypes import DType
from . import register_pass
from .rewrite_utils import as_f32, attrs, only_consumer, replace_value

NAME = "canonicalize"


def _row_bias(c: np.ndarray, n: int, out_rank: int) -> np.ndarray | None:
    """c as a [N] bias when adding it to a [..., N] tensor only broadcasts along the last axis."""
    if c.dtype == object or c.ndim > out_rank:
        return None
    if any(d != 1 for d in c.shape[:-1]):
        return None
    if c.ndim and c.shape[-1] not in (1, n):
        return None
    return as_f32(np.broadcast_to(c.reshape(-1), (n,)))


def _match_matmul(graph: Graph, users, mm: Node, ctx):
    x, w = mm.inputs
    if w is None or not w.is_const:
        return None
    if w.type.rank != 2:
        ctx.refuse(NAME, mm, f"constant operand {w.type} is not a 2-D weight")
        return None
    if x.dtype != DType.f32 or w.dtype != DType.f32:
        ctx.refuse(NAME, mm, f"Linear is f32 only, got {x.type} @ {w.type}")
        return None
    n = w.shape[1]
    out = mm.output
    add = only_consumer(users, graph, out)
    bias = None
    if add is not None and add.op == "Add" and len(add.inputs) == 2:
        b = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        if (b is not out and b is not None and b.is_const and b.dtype == DType.f32
                and add.output.type == out.type):
            bias = _row_bias(b.const, n, out.type.rank)
    if bias is None:
        add = None
    return ("matmul", mm, add, bias)


def _match_gemm(graph: Graph, users, g: Node, ctx):
    b = g.inputs[1]
    if b is None or not b.is_const:
        ctx.refuse(NAME, g, "Gemm B is computed at run time")
        return None
    if g.output.dtype != DType.f32:
        ctx.refuse(NAME, g, f"Linear is f32 only, got {g.output.type}")
        return None
    return ("gemm", g)


def _match_div(graph: Graph, users, d: Node, ctx):
    x, c = d.inputs
    if c is None or not c.is_const or not x.dtype.is_float:
        return None
    if c.const.dtype == object:
        return None
    return ("div", d)


def canonicalize(graph: Graph, ctx) -> int:
    users = graph.users()
    matches = []
    for n in graph.nodes:  # collect
        m = None
        if n.op == "MatMul":
            m = _match_matmul(graph, users, n, ctx)
        elif n.op == "Gemm":
            m = _match_gemm(graph, users, n, ctx)
        elif n.op == "Div":
            m = _match_div(graph, users, n, ctx)
        if m is not None:
            matches.append(m)
    dead: list[Node] = []
    for m in matches:  # commit
        kind = m[0]
        if kind == "matmul":
            _, mm, add, bias = m
            x, w = mm.inputs
            ins = [x, w] if bias is None else [x, w, graph.add_const(bias, w.name + ".bias")]
            lin = graph.add_node("Linear", ins, name=mm.name, before=mm)
            final = add.output if add is not None else mm.output
            replace_value(graph, final, lin.output)
            dead += [mm] + ([add] if add is not None else [])
            ctx.log(NAME, f"MatMul{'+Add' if add is not None else ''} -> Linear %{lin.output.name}")
        elif kind == "gemm":
            _commit_gemm(graph, m[1], ctx)
            dead.append(m[1])
        else:
            d = m[1]
            x, c = d.inputs
            with np.errstate(divide="ignore"):
                recip = (np.ones((), c.const.dtype) / c.const).astype(c.const.dtype)
            rc = graph.add_const(recip, c.name + ".recip")
            mul = graph.add_node("Mul", [x, rc], name=d.name, before=d)
            replace_value(graph, d.output, mul.output)
            dead.append(d)
            ctx.log(NAME, f"Div by constant -> Mul %{mul.output.name}")
    graph.remove_nodes(dead)
    ctx.stats[NAME] = ctx.stats.get(NAME, 0) + len(matches)
    return len(matches)


def _commit_gemm(graph: Graph, g: Node, ctx) -> None:
    a, b = g.inputs[0], g.inputs[1]
    c = g.input(2)
    at = attrs(g)
    alpha, beta = float(at["alpha"]), float(at["beta"])
    w = b.const.T if at["transB"] else b.const
    if alpha != 1.0:
        w = w * np.float32(alpha)
    w = as_f32(w)
    x = a
    if at["transA"]:
        x = graph.add_node("Transpose", [a], {"perm": [1, 0]}, name=g.name + "/transA", before=g).output
    n = w.shape[1]
    bias = None
    if c is not None and c.is_const and c.const.dtype != object:
        cc = c.const * np.float32(beta) if beta != 1.0 else c.const
        bias = _row_bias(cc, n, 2)
    ins = [x, graph.add_const(w, b.name + ".w")]
    if bias is not None:
        ins.append(graph.add_const(bias, (c.name if c is not None else b.name) + ".bias"))
    lin = graph.add_node("Linear", ins, name=g.name, before=g)
    y = lin.output
    if c is not None and bias is None:
        if c.is_const and c.const.dtype != object:
            cv = graph.add_const(as_f32(c.const * np.float32(beta)) if beta != 1.0 else c.const, c.name + ".c")
        elif beta != 1.0:
            cv = graph.add_node("Mul", [c, graph.add_const(np.array(beta, np.float32), "beta")],
                                name=g.name + "/beta", before=g).output
        else:
            cv = c
        y = graph.add_node("Add", [y, cv], name=g.name + "/C", before=g).output
    replace_value(graph, g.output, y)
    ctx.log(NAME, f"Gemm -> Linear %{y.name}")


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    canonicalize(graph, ctx)
