"""Quantized linear layers: the ops the quantize pass produces, and the exact arithmetic they stand for.

QLinear(x, q, scales, zeros?, bias?)  {bits, group_size, act, act_group}
    y[..., n] = sum_k X(x)[..., k] * W[n, k] + bias[n], with the weight dequantized group-wise along K:
      W[n, k] = (q[n, k] - z[n, g]) * scales[n, g],   g = k // group_size
    bits 4: q u8 [N, K] in 0..15, zeros u8 [N, G] in 0..15 (absent: 8, the symmetric form);
    bits 8: q i8 [N, K] in -127..127, zeros absent (0; int8 weights are symmetric per output channel,
            group_size = K);
    scales f32 [N, G], G = ceil(K / group_size).
    act "f32":       X(x) = x (the weight is dequantized; w4a32);
    act "i8_group":  X(x) = the int8 quantization of x per row and group of A = act_group along K, or of the
                     weight's group_size when act_group is 0 (w4a8: A = group_size; w8a8: per-channel
                     weights, A = K rounded up to 32, one scale per row; see quantize_activations; an A
                     of K or more is one group per row);
    act "i8_tensor": X(x) = the int8 quantization of the whole x with one scale (the w8a8 of old: no scheme
                     makes it now, and no kernel runs it);
    act "f16":       fp16 arithmetic (w4a16): X(x) = fp16(x) and W is rounded once more, to fp16 after
                     dequantization, Wh[n, k] = fp16((q[n, k] - z[n, g]) * scales[n, g]) (round to nearest
                     even; the product is exact before it). y = sum_k X(x)[k] * Wh[n, k] + bias: fp16
                     products, fp16 sums within a K block of 32 (lane chains of at most 4 terms), f32 sums
                     across blocks. The reference sums exactly; the bound a kernel meets is in
                     tests/backends/test_arm.py (about 4 fp16 roundings of sum |X| |Wh|).
QuantizeActs(x) {group_size, per_tensor, pad_to} -> xq i8 [..., Kp], xs f32 [..., G] (per_tensor: [1]),
    xsum i32 [..., G]: x quantized once so that several QLinearI8 sharing x reuse it; Kp = K rounded up
    to pad_to (the target's weight block), zero filled.
QLinearI8(xq, xs, xsum, q, scales, zeros?, bias?) {bits, group_size, per_tensor, act_group}
    QLinear on already quantized activations: y = sum_g xs[g] * scales[n, g] * sum_{k in g} (q - z) * xq
    when the activation groups are the weight's (act_group 0: w4a8). (xsum = sum_{k in g} xq lets a kernel
    apply the zero point once per group: sum q*xq - z*xsum.) w8a8 (bits 8, one weight scale per output
    channel, act_group A): y = scales[n] * sum_a xs[a] * sum_{k in a} q * xq, an exact int32 sum per
    activation group of A.

The arithmetic is fixed here so that every kernel reproduces it: activations round with
    amax = max|x| over the group (f32), d = amax / 127 (f32), inv = 127 / amax (f32; 0 when amax = 0),
    xq = rint(x * inv) (f32 product, round half to even), xs = d;
the integer sums are exact and only the final float accumulation may differ between kernels. The numpy
references dequantize both operands exactly (integers times f32 scales fit a float64) and multiply in
float64: the kernels' fp32 results must lie within fp32 summation error of them.
"""
from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ..core import TensorType
from ..dims import Sym
from ..dtypes import DType
from ..quant_arith import (dequantize, dequantize_activations, linear_f64, n_groups, qlinear_reference,
                           quantize_activations)
from ..registry import REQUIRED, register_op

ACTS = ("f32", "f16", "i8_group", "i8_tensor")


def act_group_of(attrs) -> int:
    """The activation group along K of an i8_group QLinear / QLinearI8: act_group, else the weight's group."""
    return int(attrs.get("act_group") or attrs["group_size"])


def _check_act_group(attrs, where: str) -> None:
    ag = attrs.get("act_group", 0)
    if not isinstance(ag, int) or ag < 0:
        raise ShapeError(f"{where}: act_group must be a non-negative int (0: the weight's group), got {ag!r}")


# -- ops ---------------------------------------------------------------------------------------------

def _check_weight(q, scales, zeros, bias, bits, group_size, where: str, bias_dtype=DType.f32) -> tuple:
    if bits not in (4, 8):
        raise ShapeError(f"{where}: bits must be 4 or 8, got {bits}")
    want_q = DType.u8 if bits == 4 else DType.i8
    if q.type.rank != 2 or q.dtype != want_q:
        raise ShapeError(f"{where}: weight %{q.name} must be {want_q}[N,K], got {q.type}")
    n, k = q.shape
    if not isinstance(group_size, int) or group_size <= 0:
        raise ShapeError(f"{where}: group_size must be a positive int, got {group_size}")
    g = n_groups(k, group_size) if isinstance(k, int) else None
    if scales.dtype != DType.f32 or tuple(scales.shape) != (n, g):
        raise ShapeError(f"{where}: scales %{scales.name} must be f32[{n},{g}], got {scales.type}")
    if zeros is not None:
        if bits == 8:
            raise ShapeError(f"{where}: int8 weights are symmetric (no zero points)")
        if zeros.dtype != DType.u8 or tuple(zeros.shape) != (n, g):
            raise ShapeError(f"{where}: zeros %{zeros.name} must be u8[{n},{g}], got {zeros.type}")
    if bias is not None and (bias.dtype != bias_dtype or tuple(bias.shape) != (n,)):
        raise ShapeError(f"{where}: bias %{bias.name} must be {bias_dtype}[{n}], got {bias.type}")
    return n, k


def _qlinear_infer(ins, attrs):
    x, q, scales = ins[:3]
    zeros, bias = (ins[3] if len(ins) > 3 else None), (ins[4] if len(ins) > 4 else None)
    if attrs["act"] not in ACTS:
        raise ShapeError(f"QLinear: act must be one of {', '.join(ACTS)}, got {attrs['act']!r}")
    _check_act_group(attrs, "QLinear")
    # f16 activations (a GPU program, passes/float16.py) only with fp16 arithmetic; the bias and the output
    # have the activations' type, the scales stay f32 (holding fp16 values) whatever the activations
    dt = DType.f16 if attrs["act"] == "f16" and x.dtype == DType.f16 else DType.f32
    n, k = _check_weight(q, scales, zeros, bias, attrs["bits"], attrs["group_size"], "QLinear", dt)
    if x.dtype != dt or x.type.rank < 1 or x.shape[-1] != k:
        raise ShapeError(f"QLinear: input %{x.name} must be {dt}[...,{k}], got {x.type}")
    return [TensorType(dt, (*x.shape[:-1], n))]


def _qlinear_ref(xs, attrs):
    x, q, scales = xs[:3]
    zeros, bias = (xs[3] if len(xs) > 3 else None), (xs[4] if len(xs) > 4 else None)
    y = qlinear_reference(np.asarray(x, np.float32), q, scales, zeros, bias, attrs["bits"], attrs["group_size"],
                          attrs["act"], attrs["act_group"])
    return [y.astype(np.asarray(x).dtype)]


register_op("QLinear", infer=_qlinear_infer, ref=_qlinear_ref, kind="opaque", inputs=(3, 5),
            attrs={"bits": REQUIRED, "group_size": REQUIRED, "act": REQUIRED, "act_group": 0},
            doc="quantized Linear: group-wise int4/int8 weights, f32, fp16 or run-time int8 activations")


def _padded(k, pad_to: int):
    return -(-k // pad_to) * pad_to if isinstance(k, int) else k


def _quantize_acts_infer(ins, attrs):
    x = ins[0]
    if x.dtype != DType.f32 or x.type.rank < 1:
        raise ShapeError(f"QuantizeActs: input %{x.name} must be f32[...,K], got {x.type}")
    k = x.shape[-1]
    if isinstance(k, Sym):
        raise ShapeError(f"QuantizeActs: K of %{x.name} must be static, got {x.type}")
    g = 1 if attrs["per_tensor"] else n_groups(k, attrs["group_size"])
    lead = tuple(x.shape[:-1])
    xs_shape = (1,) if attrs["per_tensor"] else (*lead, g)
    return [TensorType(DType.i8, (*lead, _padded(k, attrs["pad_to"]))), TensorType(DType.f32, xs_shape),
            TensorType(DType.i32, (*lead, g))]


def _quantize_acts_ref(xs, attrs):
    gs = None if attrs["per_tensor"] else attrs["group_size"]
    return list(quantize_activations(xs[0], gs, attrs["pad_to"]))


register_op("QuantizeActs", infer=_quantize_acts_infer, ref=_quantize_acts_ref, kind="opaque", inputs=1, outputs=3,
            attrs={"group_size": REQUIRED, "per_tensor": 0, "pad_to": 1},
            doc="int8 activations per row and group (or per tensor), their scales and group sums")


def _qlinear_i8_infer(ins, attrs):
    xq, xs, xsum, q, scales = ins[:5]
    zeros, bias = (ins[5] if len(ins) > 5 else None), (ins[6] if len(ins) > 6 else None)
    n, k = _check_weight(q, scales, zeros, bias, attrs["bits"], attrs["group_size"], "QLinearI8")
    _check_act_group(attrs, "QLinearI8")
    if xq.dtype != DType.i8 or xs.dtype != DType.f32 or xsum.dtype != DType.i32:
        raise ShapeError(f"QLinearI8: activations must be i8/f32/i32, got {xq.type}, {xs.type}, {xsum.type}")
    if isinstance(xq.shape[-1], int) and isinstance(k, int) and xq.shape[-1] < k:
        raise ShapeError(f"QLinearI8: activations %{xq.name} {xq.type} hold fewer than K={k} values")
    return [TensorType(DType.f32, (*xq.shape[:-1], n))]


def _qlinear_i8_ref(xs, attrs):
    xq, x_scale, _, q, scales = xs[:5]
    zeros, bias = (xs[5] if len(xs) > 5 else None), (xs[6] if len(xs) > 6 else None)
    gs = None if attrs["per_tensor"] else act_group_of(attrs)
    xd = dequantize_activations(xq, x_scale, q.shape[1], gs)
    return [linear_f64(xd, dequantize(q, scales, zeros, attrs["bits"], attrs["group_size"]), bias)]


register_op("QLinearI8", infer=_qlinear_i8_infer, ref=_qlinear_i8_ref, kind="opaque", inputs=(5, 7),
            attrs={"bits": REQUIRED, "group_size": REQUIRED, "per_tensor": 0, "act_group": 0},
            doc="quantized Linear on int8 activations from QuantizeActs (int8 dot products)")


def _qgather_infer(ins, attrs):
    idx, q, scales = ins[:3]
    zeros = ins[3] if len(ins) > 3 else None
    n, k = _check_weight(q, scales, zeros, None, attrs["bits"], attrs["group_size"], "QGather")
    if idx.dtype != DType.i64:
        raise ShapeError(f"QGather: indices %{idx.name} must be i64, got {idx.type}")
    if attrs["dtype"] not in ("f32", "f16"):
        raise ShapeError(f"QGather: dtype must be f32 or f16, got {attrs['dtype']!r}")
    if attrs["layout"] not in GATHER_LAYOUTS:
        raise ShapeError(f"QGather: layout must be one of {', '.join(GATHER_LAYOUTS)}, got {attrs['layout']!r}")
    return [TensorType(DType(attrs["dtype"]), (*idx.shape, k))]


def _qgather_ref(xs, attrs):
    idx, q, scales = np.asarray(xs[0]), xs[1], xs[2]
    zeros = xs[3] if len(xs) > 3 else None
    rows = q.shape[0]
    if idx.size and (idx.min() < -rows or idx.max() >= rows):
        from ...errors import RuntimeFeedError

        bad = idx[(idx < -rows) | (idx >= rows)].reshape(-1)[0]
        raise RuntimeFeedError(f"QGather index {bad} out of range [-{rows}, {rows})")
    table = dequantize(q, scales, zeros, attrs["bits"], attrs["group_size"]).astype(DType(attrs["dtype"]).np)
    return [table[np.where(idx < 0, idx + rows, idx)]]


# How the backend stores a QGather's table: "rows" (its own row-major table, codegen/families/packing.py) or
# "linear" (the table is a quantized Linear's weights, stored once in the Linear's packed layout: a tied
# embedding and LM head, passes/tie_tables.py). The values, and so the reference, are the same.
GATHER_LAYOUTS = ("rows", "linear")

register_op("QGather", infer=_qgather_infer, ref=_qgather_ref, kind="opaque", inputs=(3, 4),
            attrs={"bits": REQUIRED, "group_size": REQUIRED, "dtype": "f32", "layout": "rows"},
            doc="rows of a quantized table (an embedding): QGather(indices, q, scales, zeros?) = "
                "dequantize(q)[indices], in f32 (or f16: attr dtype); layout linear: q is a QLinear's weight")


# -- norm + activation quantization, fused (passes/fuse_norm_quantize.py) ----------------------------

NORMS = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}


def _norm_quantize_infer(ins, attrs):
    x = ins[0]
    if attrs["norm"] not in NORMS:
        raise ShapeError(f"NormQuantize: norm must be one of {', '.join(NORMS)}, got {attrs['norm']!r}")
    if attrs["axis"] not in (-1, x.type.rank - 1):
        raise ShapeError(f"NormQuantize: the norm must be over the last axis (K), got axis {attrs['axis']}")
    return _quantize_acts_infer([x], {**attrs, "per_tensor": 0})


def _norm_quantize_ref(xs, attrs):
    from ..registry import get_op

    norm = get_op(NORMS[attrs["norm"]])
    y = norm.ref([a for a in xs if a is not None] if attrs["norm"] == "layernorm" else xs[:2],
                 {"axis": attrs["axis"], "eps": attrs["eps"]})[0]
    return list(quantize_activations(y, attrs["group_size"], attrs["pad_to"]))


register_op("NormQuantize", infer=_norm_quantize_infer, ref=_norm_quantize_ref, kind="opaque", inputs=(2, 3),
            outputs=3, attrs={"norm": REQUIRED, "axis": -1, "eps": REQUIRED, "group_size": REQUIRED, "pad_to": 1},
            doc="RMSNorm / LayerNorm over the last axis, then int8 activations per row and group (QuantizeActs)")
