"""Lowering of indexing: Gather, QGather (quantized embedding rows), GatherND, GatherElements, ScatterND.
These kernels check their indices and raise on a bad one, so each launch is followed by a sync point."""
from __future__ import annotations

from ...errors import TccError, UnsupportedError
from ...ir.core import Node
from ...ir.dims import product
from ...ir.dtypes import DType
from ...ir.registry import norm_axis
from ..launch import dim
from .emitter import DTYPE_CODE, Emitter, activation_dtype, dense_strides, lowering


@lowering("Gather")
def _gather(node: Node, em: Emitter) -> None:
    data, idx = node.inputs
    out = node.output
    axis = norm_axis(node.attrs.get("axis", 0), data.type.rank)
    outer, axis_len, inner = product(data.shape[:axis]), data.shape[axis], product(data.shape[axis + 1:])
    if idx.dtype != DType.i64:
        raise TccError(f"Gather node {node.name!r}: indices must be i64 (lower-ops should cast)")
    em.call(node, "gather", [em.ptr(data, "void"), em.ptr(idx), em.ptr(out, "void"), dim(outer), dim(axis_len),
                             dim(inner), dim(idx.type.numel)], check_error=True, esize=data.dtype.itemsize)


@lowering("QGather")
def _qgather(node: Node, em: Emitter) -> None:
    idx, q, scales = node.inputs[:3]
    zeros = node.input(3)
    rows, k = q.shape
    bits = node.attrs["bits"]
    if node.attrs.get("layout", "rows") == "linear":
        # A tied table: the QLinear's packed weights, packed under the same kinds (and so the same layout
        # names) as the QLinear's lowering asks for, so weights.bin holds them once.
        table, sc, zp = _linear_table(q, scales, zeros, bits, em)
        em.call(node, "qgather", [table, sc, zp, em.ptr(idx), em.ptr(node.output), dim(idx.type.numel),
                                  dim(rows), dim(k), dim(node.attrs["group_size"])], check_error=True, bits=bits,
                layout="tiles", **activation_dtype(node.output))
        return
    table = em.packed_ptr(q, "q4_rows" if bits == 4 else "q8_rows", "void")
    sc = em.packed_ptr(scales, "q4_row_scales", "uint16_t") if bits == 4 else em.ptr(scales)
    em.call(node, "qgather", [table, sc, em.ptr(zeros), em.ptr(idx), em.ptr(node.output), dim(idx.type.numel),
                              dim(rows), dim(k), dim(node.attrs["group_size"])], check_error=True, bits=bits,
            **activation_dtype(node.output))


def _linear_table(q, scales, zeros, bits: int, em: Emitter) -> tuple:
    """The packed weights of the QLinear (or QLinearI8) that `q` feeds, as its lowering packs them."""
    if bits == 8:
        return em.packed_ptr(q, "q8_weight", "void"), em.packed_ptr(scales, "q8_scales", "float"), None
    int8_acts = any(n.op == "QLinearI8" and n.inputs[3] is q for n in em.graph.nodes)
    weight = em.packed_ptr(q, "q4_weight_i8" if int8_acts else "q4_weight", "void")
    return weight, em.packed_ptr(scales, "q4_scales", "uint16_t"), em.packed_ptr(zeros, "q4_zeros", "uint8_t")


@lowering("GatherND")
def _gather_nd(node: Node, em: Emitter) -> None:
    data, idx = node.inputs
    out = node.output
    b = int(node.attrs.get("batch_dims", 0))
    k = idx.shape[-1]
    if idx.dtype != DType.i64:
        raise UnsupportedError(f"GatherND node {node.name!r}: indices must be i64")
    batch = product(data.shape[:b])
    n_idx = product(idx.shape[b:-1])
    slice_ = product(data.shape[b + k:])
    em.call(node, "gathernd", [em.ptr(data, "void"), em.ptr(idx), em.ptr(out, "void"), dim(batch), dim(n_idx),
                               dim(k), em.array("dims", data.shape[b:b + k]), dim(slice_),
                               dim(product(data.shape[b:]))], check_error=True, esize=data.dtype.itemsize)


@lowering("GatherElements")
def _gather_elements(node: Node, em: Emitter) -> None:
    data, idx = node.inputs
    out = node.output
    if idx.dtype != DType.i64:
        raise UnsupportedError(f"GatherElements node {node.name!r}: indices must be i64, got {idx.dtype}")
    if out.type.rank > 8:  # the kernel's coordinate array (like every tcc tensor) holds 8 dims
        raise UnsupportedError(f"GatherElements node {node.name!r}: rank {out.type.rank} exceeds 8")
    axis = norm_axis(int(node.attrs.get("axis", 0)), data.type.rank)
    em.call(node, "gatherelements", [em.ptr(data, "void"), em.ptr(idx), em.ptr(out, "void"), dim(out.type.rank),
                                     em.array("shp", out.shape), em.array("ds", dense_strides(data.shape)),
                                     dim(axis), dim(data.shape[axis])], check_error=True, esize=data.dtype.itemsize)


@lowering("ScatterND")
def _scatter_nd(node: Node, em: Emitter) -> None:
    data, idx, upd = node.inputs
    out = node.output
    if idx.dtype != DType.i64:
        raise UnsupportedError(f"ScatterND node {node.name!r}: indices must be i64, got {idx.dtype}")
    k = idx.shape[-1]
    if not isinstance(k, int):
        raise UnsupportedError(f"ScatterND node {node.name!r}: index depth {k} is not static")
    em.call(node, "scatternd", [em.ptr(data), em.ptr(idx), em.ptr(upd), em.ptr(out), dim(product(data.shape)),
                                dim(product(idx.shape[:-1])), dim(k), em.array("dims", data.shape[:k]),
                                dim(product(data.shape[k:]))],
            check_error=True, op=node.attrs.get("reduction", "none"), dtype=DTYPE_CODE[data.dtype])
