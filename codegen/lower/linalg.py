"""Lowering of linear algebra: Linear (gemm), the quantized linears and their activation quantizers, MatMul."""
from __future__ import annotations

from ...errors import UnsupportedError
from ...ir.core import Node
from ...ir.dims import product
from ...ir.ops.quant import act_group_of
from ..launch import dim, flt
from .emitter import DTYPE_CODE, Emitter, activation_dtype, broadcast_strides, dense_strides, lowering


@lowering("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten")
def _view(node: Node, em: Emitter) -> None:
    pass  # a view aliases its input's storage: nothing to run


@lowering("Linear")
def _linear(node: Node, em: Emitter) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.input(2)
    k, n = w.shape
    m = product(x.shape[:-1])
    packed = em.packed_ptr(w, f"gemm_{DTYPE_CODE[w.dtype]}", w.dtype.ctype)  # gemm_f32 on the CPUs, f16 on GPUs
    em.call(node, "gemm", [em.ptr(x), dim(k), packed, em.ptr(bias), em.ptr(node.output),
                           dim(n), dim(m), dim(n), dim(k)], dtype=DTYPE_CODE[x.dtype])


@lowering("QuantizeActs")
def _quantize_acts(node: Node, em: Emitter) -> None:
    x = node.inputs[0]
    xq, xs, xsum = node.outputs
    k = x.shape[-1]
    em.call(node, "quantize_acts", [em.ptr(x), dim(k), em.ptr(xq), dim(xq.shape[-1]), em.ptr(xs), em.ptr(xsum),
                                    dim(product(x.shape[:-1])), dim(k), dim(node.attrs["group_size"]),
                                    dim(int(node.attrs["per_tensor"]))])


@lowering("NormQuantize")
def _norm_quantize(node: Node, em: Emitter) -> None:
    x, gamma, beta = node.inputs[0], node.input(1), node.input(2)
    xq, xs, xsum = node.outputs
    k = x.shape[-1]
    em.call(node, "norm_quantize", [em.ptr(x), em.ptr(gamma), em.ptr(beta), em.ptr(xq), dim(xq.shape[-1]),
                                    em.ptr(xs), em.ptr(xsum), dim(product(x.shape[:-1])), dim(k),
                                    flt(node.attrs["eps"]), dim(node.attrs["group_size"])],
            op=node.attrs["norm"], dtype="f32")


@lowering("QLinearI8")
def _qlinear_i8(node: Node, em: Emitter) -> None:
    xq, xs, xsum, q, scales = node.inputs[:5]
    zeros, bias = node.input(5), node.input(6)
    n, k = q.shape
    m = product(xq.shape[:-1])
    out = em.ptr(node.output)
    bits, per_tensor = node.attrs["bits"], node.attrs["per_tensor"]
    if bits == 4 and not per_tensor and act_group_of(node.attrs) == node.attrs["group_size"]:
        em.call(node, "qlinear_w4a8", [em.ptr(xq), em.ptr(xs), em.ptr(xsum), dim(xq.shape[-1]),
                                       em.packed_ptr(q, "q4_weight_i8", "uint8_t"),
                                       em.packed_ptr(scales, "q4_scales", "uint16_t"),
                                       em.packed_ptr(zeros, "q4_zeros", "uint8_t"), em.ptr(bias), out, dim(n),
                                       dim(m), dim(n), dim(k), dim(node.attrs["group_size"])])
    elif bits == 8 and not per_tensor:  # per-channel weights, activations per row and group of act_group
        em.call(node, "qlinear_w8a8", [em.ptr(xq), em.ptr(xs), em.ptr(xsum), dim(xq.shape[-1]),
                                       em.packed_ptr(q, "q8_weight", "int8_t"),
                                       em.packed_ptr(scales, "q8_scales", "float"), em.ptr(bias), out, dim(n),
                                       dim(m), dim(n), dim(k), dim(act_group_of(node.attrs))])
    else:
        raise UnsupportedError(f"QLinearI8 node {node.name!r}: no kernel for {bits}-bit weights with "
                               f"{'per-tensor' if per_tensor else 'per-group'} int8 activations")


@lowering("QLinear")
def _qlinear(node: Node, em: Emitter) -> None:
    x, q, scales = node.inputs[:3]
    zeros, bias = node.input(3), node.input(4)
    n, k = q.shape
    families = {"f32": "qlinear_w4a32", "f16": "qlinear_w4a16"}  # same operands; f16: fp16 arithmetic
    if node.attrs["act"] not in families or node.attrs["bits"] != 4:
        raise UnsupportedError(f"QLinear node {node.name!r}: {node.attrs['bits']}-bit weights with "
                               f"{node.attrs['act']} activations have no kernel here (int8 activations are "
                               "split off by the quantize-activations pass)")
    em.call(node, families[node.attrs["act"]], [em.ptr(x), dim(k), em.packed_ptr(q, "q4_weight", "uint8_t"),
                                                em.packed_ptr(scales, "q4_scales", "uint16_t"),
                                                em.packed_ptr(zeros, "q4_zeros", "uint8_t"), em.ptr(bias),
                                                em.ptr(node.output), dim(n), dim(product(x.shape[:-1])), dim(n),
                                                dim(k), dim(node.attrs["group_size"])], **activation_dtype(x))


@lowering("MatMul")
def _matmul(node: Node, em: Emitter) -> None:
    a, b = node.inputs
    if not a.dtype.is_float:
        raise UnsupportedError(f"{node.op} node {node.name!r}: {a.dtype} inputs are not supported by the compiled "
                               "backends (float MatMul only)")
    ash, bsh = list(a.shape), list(b.shape)
    if len(ash) == 1:
        ash = [1] + ash
    if len(bsh) == 1:
        bsh = bsh + [1]
    mdim, kdim, ndim_ = ash[-2], ash[-1], bsh[-1]
    batch = list(_batch_shape(ash[:-2], bsh[:-2]))
    a_str, b_str = dense_strides(ash), dense_strides(bsh)
    a_b = broadcast_strides(ash[:-2], batch) if batch else []
    b_b = broadcast_strides(bsh[:-2], batch) if batch else []
    # broadcast_strides uses dense strides of the batch shape alone; rescale by the matrix size.
    a_b = [s * (mdim * kdim) if not (isinstance(s, int) and s == 0) else 0 for s in a_b]
    b_b = [s * (kdim * ndim_) if not (isinstance(s, int) and s == 0) else 0 for s in b_b]
    em.call(node, "matmul", [em.ptr(a), em.ptr(b), em.ptr(node.output), dim(mdim), dim(ndim_), dim(kdim),
                             dim(a_str[-2]), dim(1), dim(b_str[-2]), dim(1), dim(len(batch)),
                             em.array("bshape", batch), em.array("abs", a_b), em.array("bbs", b_b)],
            dtype=DTYPE_CODE[a.dtype])


def _batch_shape(a, b):
    from ...ir.registry import broadcast_shapes

    return broadcast_shapes(a, b)

