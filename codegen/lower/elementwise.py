"""Lowering of elementwise ops, reductions, normalizations and the small generators (Range, Trilu,
ConstantOfShape, CumSum)."""
from __future__ import annotations

import math

import numpy as np

from ...errors import TccError, UnsupportedError
from ...ir.core import Node
from ...ir.dims import product
from ...ir.dtypes import DType
from ...ir.registry import norm_axis
from ..launch import Buf, Elem, dim, flt
from .emitter import DTYPE_CODE, Emitter, broadcast_strides, const_ints, lowering

BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "max", "Min": "min",
          "Mod": "mod", "Equal": "equal", "Less": "less", "LessOrEqual": "less_equal", "Greater": "greater",
          "GreaterOrEqual": "greater_equal", "And": "and", "Or": "or", "Xor": "xor"}


@lowering(*BINARY)
def _binary(node: Node, em: Emitter) -> None:
    a, b = node.inputs
    out = node.output
    shape = out.shape
    em.call(node, "binary", [em.ptr(a), em.ptr(b), em.ptr(out), dim(len(shape)), em.array("shp", shape),
                             em.array("as", broadcast_strides(a.shape, shape)),
                             em.array("bs", broadcast_strides(b.shape, shape))],
            op=BINARY[node.op], dtype=DTYPE_CODE[a.dtype])


@lowering("Where")
def _where(node: Node, em: Emitter) -> None:
    c, x, y = node.inputs
    out = node.output
    shape = out.shape
    em.call(node, "where", [em.ptr(c), em.ptr(x), em.ptr(y), em.ptr(out), dim(len(shape)), em.array("shp", shape),
                            em.array("cs", broadcast_strides(c.shape, shape)),
                            em.array("xs", broadcast_strides(x.shape, shape)),
                            em.array("ys", broadcast_strides(y.shape, shape))],
            dtype=DTYPE_CODE[x.dtype])


UNARY = {"Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
         "Erf": "erf", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Floor": "floor", "Ceil": "ceil",
         "Sin": "sin", "Cos": "cos", "Not": "not", "Clip": "clip", "Gelu": None, "Silu": "silu", "Sign": "sign"}


@lowering(*UNARY)
def _unary(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    op = UNARY[node.op]
    alpha, beta = 0.0, 0.0
    if node.op == "Gelu":
        op = "gelu_tanh" if node.attrs.get("approximate", "none") == "tanh" else "gelu_erf"
    if node.op == "Clip":
        alpha, beta = _clip_bounds(node)
    em.call(node, "unary", [em.ptr(x), em.ptr(out), dim(out.type.numel), flt(alpha), flt(beta)],
            op=op, dtype=DTYPE_CODE[x.dtype])


def _clip_bounds(node: Node) -> tuple[float, float]:
    bounds = []
    for i, default in ((1, -math.inf), (2, math.inf)):
        v = node.input(i)
        if v is None:
            bounds.append(default)
        elif v.const is not None and v.const.dtype != object:
            bounds.append(float(v.const.reshape(-1)[0]))
        else:
            raise UnsupportedError(f"Clip node {node.name!r}: min/max must be constants")
    return bounds[0], bounds[1]


@lowering("Cast")
def _cast(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    em.call(node, "cast", [em.ptr(x), em.ptr(out), dim(out.type.numel)],
            src=DTYPE_CODE[x.dtype], dst=DTYPE_CODE[out.dtype])


REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}


@lowering(*REDUCE)
def _reduce(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    rank = x.type.rank
    axes = sorted(norm_axis(a, rank) for a in (node.attrs.get("axes") or range(rank)))
    if axes and axes != list(range(axes[0], axes[-1] + 1)):
        raise TccError(f"{node.op} node {node.name!r}: reduced axes {axes} are not contiguous (lower-ops should fix)")
    lo, hi = (axes[0], axes[-1] + 1) if axes else (rank, rank)
    outer, r, inner = product(x.shape[:lo]), product(x.shape[lo:hi]), product(x.shape[hi:])
    em.call(node, "reduce", [em.ptr(x), em.ptr(out), dim(outer), dim(r), dim(inner)],
            op=REDUCE[node.op], dtype=DTYPE_CODE[x.dtype])


@lowering("Softmax", "LogSoftmax")
def _softmax(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    axis = norm_axis(node.attrs.get("axis", -1), x.type.rank)
    outer, n, inner = product(x.shape[:axis]), x.shape[axis], product(x.shape[axis + 1:])
    em.call(node, "softmax", [em.ptr(x), em.ptr(out), dim(outer), dim(n), dim(inner)],
            op=node.op.lower(), dtype=DTYPE_CODE[x.dtype])


@lowering("LayerNorm", "RMSNorm")
def _norm(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    axis = norm_axis(node.attrs["axis"], x.type.rank)
    rows, cols = product(x.shape[:axis]), product(x.shape[axis:])
    gamma, beta = node.input(1), node.input(2)
    for p in (gamma, beta):
        if p is not None and p.type.numel != cols:
            raise TccError(f"{node.op} node {node.name!r}: parameter %{p.name} must have {cols} elements "
                           "(lower-ops should have expanded it)")
    em.call(node, "norm", [em.ptr(x), em.ptr(gamma), em.ptr(beta), em.ptr(out), dim(rows), dim(cols),
                           flt(node.attrs["eps"])], op=node.op.lower(), dtype=DTYPE_CODE[x.dtype])


@lowering("Range")
def _range(node: Node, em: Emitter) -> None:
    start, _, delta = node.inputs
    out = node.output
    em.call(node, "range", [em.ptr(start), em.ptr(delta), em.ptr(out), dim(out.shape[0])],
            dtype=DTYPE_CODE[out.dtype])


@lowering("Trilu")
def _trilu(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    kv = node.input(1)
    if kv is None:
        k = dim(0)
    elif kv.const is not None:
        k = dim(const_ints(node, kv, "k")[0])
    elif kv.dtype == DType.i64:
        k = Elem(em.ptr(kv))  # a run-time diagonal offset: read when the kernel is launched
    else:
        raise UnsupportedError(f"Trilu node {node.name!r}: k must be i64, got {kv.dtype}")
    rows, cols = x.shape[-2], x.shape[-1]
    em.call(node, "trilu", [em.ptr(x, "void"), em.ptr(out, "void"), dim(product(x.shape[:-2])), dim(rows),
                            dim(cols), k],
            upper=int(node.attrs.get("upper", 1)), esize=x.dtype.itemsize)


@lowering("ConstantOfShape")
def _constant_of_shape(node: Node, em: Emitter) -> None:
    out = node.output
    value = np.array(node.attrs.get("value", 0), dtype=out.dtype.np).reshape(1)
    off = em.weights.add((f"fill:{out.dtype}:{value.tobytes().hex()}", "dense"), value, "fill value")
    em.call(node, "fill", [em.ptr(out, "void"), Buf("weights", off, "const char"), dim(out.type.numel)],
            esize=out.dtype.itemsize)


@lowering("CumSum")
def _cumsum(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    axis = norm_axis(const_ints(node, node.inputs[1], "axis")[0], x.type.rank)
    outer, n, inner = product(x.shape[:axis]), x.shape[axis], product(x.shape[axis + 1:])
    em.call(node, "cumsum", [em.ptr(x), em.ptr(out), dim(outer), dim(n), dim(inner),
                             dim(int(node.attrs.get("exclusive", 0))), dim(int(node.attrs.get("reverse", 0)))],
            dtype=DTYPE_CODE[x.dtype])
