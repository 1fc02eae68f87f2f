"""Lowering of data movement: Copy, Transpose, Expand, Tile, Concat, Split and Slice, all one strided copy
kernel (with run-time checks where a Slice's shape rests on an assumption)."""
from __future__ import annotations

from ...ir.core import Node
from ...ir.dims import Dim
from ...ir.dtypes import DType
from ...ir.ops._common import const_ints as attr_ints
from ...ir.registry import norm_axis
from ..launch import SliceGuard, dim
from .emitter import Emitter, broadcast_strides, const_ints, dense_strides, lowering


def copy_call(node, em: Emitter, src, dst, shape, src_strides, dst_strides, dtype: DType) -> None:
    em.call(node, "copy", [src, dst, dim(len(shape)), em.array("shp", shape), em.array("ss", src_strides),
                           em.array("ds", dst_strides)], esize=dtype.itemsize)


@lowering("Copy")
def _copy(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), out.shape, dense_strides(x.shape),
              dense_strides(out.shape), out.dtype)


@lowering("Transpose")
def _transpose(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    perm = node.attrs.get("perm") or list(range(x.type.rank))[::-1]
    src = dense_strides(x.shape)
    copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), out.shape, [src[p] for p in perm],
              dense_strides(out.shape), out.dtype)


@lowering("Expand")
def _expand(node: Node, em: Emitter) -> None:
    x, out = node.inputs[0], node.output
    copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), out.shape, broadcast_strides(x.shape, out.shape),
              dense_strides(out.shape), out.dtype)


@lowering("Tile")
def _tile(node: Node, em: Emitter) -> None:
    """out viewed as [r0, d0, r1, d1, ...] reads x with stride 0 along each repeat axis (repeats of 1 dropped)."""
    x, out = node.inputs[0], node.output
    reps = attr_ints(node.inputs[1], "Tile repeats")
    xstr = dense_strides(x.shape)
    shape, src = [], []
    for d, r, s in zip(x.shape, reps, xstr):
        if not (isinstance(r, int) and r == 1):
            shape.append(r)
            src.append(0)
        shape.append(d)
        src.append(s)
    copy_call(node, em, em.ptr(x, "void"), em.ptr(out, "void"), shape, src, dense_strides(shape), out.dtype)


@lowering("Concat")
def _concat(node: Node, em: Emitter) -> None:
    out = node.output
    axis = norm_axis(node.attrs["axis"], out.type.rank)
    ostr = dense_strides(out.shape)
    offset: Dim = 0
    base = em.ptr(out, "char")
    for x in node.inputs:
        if x.type.numel != 0:
            dst = base.at(offset * ostr[axis] * out.dtype.itemsize)
            copy_call(node, em, em.ptr(x, "void"), dst, x.shape, dense_strides(x.shape), ostr, out.dtype)
        offset = offset + x.shape[axis]


@lowering("Split")
def _split(node: Node, em: Emitter) -> None:
    x = node.inputs[0]
    axis = norm_axis(node.attrs["axis"], x.type.rank)
    xstr = dense_strides(x.shape)
    base = em.ptr(x, "char")
    offset: Dim = 0
    for out in node.outputs:
        src = base.at(offset * xstr[axis] * x.dtype.itemsize)
        copy_call(node, em, src, em.ptr(out, "void"), out.shape, xstr, dense_strides(out.shape), x.dtype)
        offset = offset + out.shape[axis]


@lowering("Slice")
def _slice(node: Node, em: Emitter) -> None:
    from ...ir.ops.movement import slice_assumed, slice_plan
    x, out = node.inputs[0], node.output
    rank = x.type.rank
    starts, ends = (const_ints(node, node.input(i), what) for i, what in ((1, "starts"), (2, "ends")))
    axes = const_ints(node, node.input(3), "axes") if node.input(3) is not None else list(range(len(starts)))
    steps = const_ints(node, node.input(4), "steps") if node.input(4) is not None else [1] * len(starts)
    xstr = dense_strides(x.shape)
    begin: list = [0] * rank
    step = [1] * rank
    assumed = slice_assumed(x.shape, starts, ends, axes, steps)
    for (a, start, _, st), s, e in zip(slice_plan(x.shape, starts, ends, axes, steps), starts, ends):
        begin[a], step[a] = start, st  # the clamped start; exact, or checked below
        if a in assumed:
            em.body.append(SliceGuard(node.op, node.name, a, s, e, st, x.shape[a], start, out.shape[a]))
    # Offset (bytes) of the first element read, and strides scaled by the steps.
    offset: Dim = 0
    for i, b in enumerate(begin):
        if not (isinstance(b, int) and b == 0):
            offset = offset + b * xstr[i]
    src = em.ptr(x, "char").at(offset * x.dtype.itemsize)
    src_strides = [xstr[i] * step[i] for i in range(rank)]
    copy_call(node, em, src, em.ptr(out, "void"), out.shape, src_strides, dense_strides(out.shape), out.dtype)
