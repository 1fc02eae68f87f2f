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
from ..registry import REQUIRED, register_op

ACTS = ("f32", "f16", "i8_group", "i8_tensor")
F16_MAX = 65504.0


def n_groups(k: int, group_size: int) -> int:
    return -(-k // group_size)


def _grouped(a: np.ndarray, group_size: int) -> np.ndarray:
    """[..., K] -> [..., G, group_size], zero padded."""
    k = a.shape[-1]
    g = n_groups(k, group_size)
    pad = g * group_size - k
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
    return a.reshape(a.shape[:-1] + (g, group_size))


def _expand_groups(s: np.ndarray, k: int, group_size: int) -> np.ndarray:
    """[..., G] per-group values -> [..., K]."""
    return np.repeat(s, group_size, axis=-1)[..., :k]


# -- weights -----------------------------------------------------------------------------------------

# The symmetric scale search: each group's scale is d = c * m / -8 (m its entry of largest magnitude) for the
# factor c of these that gives the group the least squared error (ties: the earlier, larger c). c = 1 maps m to
# -8 exactly (llama.cpp's Q4_0); a smaller c spends the 16 levels on the bulk of the group and clips its largest
# entries (the idea of llama.cpp's k-quant searches, unweighted here). Measured on the demo model (w4a8,
# held-out perplexity over fp32, windows of 256): AWQ+GPTQ with the default mix +0.36% -> +0.29%, RTN all 4-bit
# +2.19% -> +2.14%; at windows of 1024 (past the 256 tokens it was trained on) see docs/quantization.md.
SCALE_SEARCH = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82)


def quantize_int4(w: np.ndarray, group_size: int, symmetric: bool = True, clip: np.ndarray | None = None,
                  search: bool = True):
    """w [K, N] (a Linear weight) -> (q u8 [N, K], scales f32 [N, G], zeros u8 [N, G] or None).

    symmetric: per group, d = c * m / -8 with m the entry of largest magnitude and c of SCALE_SEARCH (least
    squared error), so the 16 levels -8..7 are used; stored zero point 8. asymmetric: the range
    [min(w, 0), max(w, 0)] in 15 steps with an integer zero point. Scales are rounded to fp16 values (the
    CPU layouts store fp16 scales), and q is computed with the rounded scale. `clip` [N, G] in (0, 1]
    shrinks each group's range instead of the search; search=False: c = 1 (Q4_0's rounding; what AWQ's
    clipping search assumes of the weights it clipped)."""
    if symmetric and clip is None and search:
        clip = scale_search(w, group_size)
    q, d, z = _int4_codes(w, group_size, symmetric, clip)
    k, n = np.shape(w)
    q = np.ascontiguousarray(q.reshape(-1, n)[:k].astype(np.uint8).T)
    d, z = np.ascontiguousarray(d.T), np.ascontiguousarray(z.T)
    return q, d.astype(np.float32), (None if symmetric else z.astype(np.uint8))


def fake_quantize_int4(w: np.ndarray, group_size: int, symmetric: bool = True) -> np.ndarray:
    """The weight [K, N] f32 that quantize_int4(w) stands for without the scale search (c = 1):
    dequantize(...).T, computed without transposing (what the calibration searches simulate, tens of times per
    weight: the search would make AWQ's 7x slower). Exact in float32: (q - z) has 5 bits and the scale is an
    fp16 value, so each product fits the 24-bit mantissa."""
    q, d, z = _int4_codes(w, group_size, symmetric, None)
    q -= z[:, None, :].astype(np.float32)
    q *= d[:, None, :]
    return q.reshape(-1, q.shape[-1])[:np.shape(w)[0]]


def _k_groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """w [K, N] f32 as [G, gs, N], K zero padded to whole groups."""
    k, n = w.shape
    g = n_groups(k, group_size)
    pad = g * group_size - k
    return (np.concatenate([w, np.zeros((pad, n), np.float32)]) if pad else w).reshape(g, group_size, n)


def scale_search(w: np.ndarray, group_size: int) -> np.ndarray:
    """The factor c of SCALE_SEARCH per group [N, G] with the least squared error of the group (quantize_int4)."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int4 expects a 2-D [K, N] weight, got shape {w.shape}")
    wg = _k_groups(w, group_size)
    m = _signed_max(wg)
    best = np.ones(m.shape, np.float32)
    least = None
    for c in SCALE_SEARCH:
        d = (m * np.float32(c) / np.float32(-8.0)).astype(np.float16).astype(np.float32)
        q = wg / np.where(d == 0, np.float32(1), d)[:, None, :]
        np.rint(q, out=q)
        np.clip(q, -8, 7, out=q)
        q *= d[:, None, :]
        q -= wg
        err = np.einsum("gkn,gkn->gn", q, q)
        if least is None:
            least = err
        else:
            better = err < least
            best[better], least[better] = np.float32(c), err[better]
    return np.ascontiguousarray(best.T)


def _signed_max(wg: np.ndarray) -> np.ndarray:
    """[G, N] the entry of largest magnitude of each group of wg [G, gs, N] (the first of equal ones)."""
    hi, lo = wg.max(axis=1), wg.min(axis=1)
    m = np.where(hi > -lo, hi, lo)
    ties = np.nonzero((hi == -lo) & (hi != 0))
    if ties[0].size:  # |max| == |min|: the one that comes first in the group, as argmax(|w|) picks
        tg = wg[ties[0], :, ties[1]]  # [ties, gs]
        m[ties] = np.take_along_axis(tg, np.argmax(np.abs(tg), axis=-1)[:, None], axis=-1)[:, 0]
    return m


def _int4_codes(w: np.ndarray, group_size: int, symmetric: bool, clip: np.ndarray | None):
    """quantize_int4's arithmetic, K-major: (codes f32 [G, gs, N], scales f32 [G, N], zero points i32 [G, N])."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int4 expects a 2-D [K, N] weight, got shape {w.shape}")
    # Computed K-major ([G, gs, N]: group reductions run over rows, contiguous in N) with few passes over
    # the weights, and only the uint8 codes transposed: a 1.1B model quantizes in seconds. The results
    # are those of the plain formulation: the first entry of largest magnitude, float32 codes.
    wg = _k_groups(w, group_size)
    shrink = np.float32(1.0) if clip is None else np.asarray(clip, np.float32).T  # [G, N]
    if symmetric:
        d = _signed_max(wg) * shrink / np.float32(-8.0)
    else:
        hi, lo = wg.max(axis=1), wg.min(axis=1)
        lo = np.minimum(lo, 0) * shrink
        d = (np.maximum(hi, 0) * shrink - lo) / np.float32(15.0)
    if np.any(np.abs(d) > F16_MAX):
        raise ValueError(f"weight group scale {np.abs(d).max():.3g} exceeds the fp16 range of the packed scales")
    d = d.astype(np.float16).astype(np.float32)
    zero = d == 0
    safe = np.where(zero, np.float32(1), d)
    if symmetric:
        z = np.full(d.shape, 8, np.int32)
    else:
        z = np.where(zero, 0, np.clip(np.rint(-lo / safe), 0, 15)).astype(np.int32)
    q = wg / safe[:, None, :]
    np.rint(q, out=q)
    q += z[:, None, :].astype(np.float32)  # small integers: exact in float32
    np.clip(q, 0, 15, out=q)
    if zero.any():
        gi, ni = np.nonzero(zero)
        q[gi, :, ni] = z[gi, ni][:, None]
    return q, d, z


def quantize_int8(w: np.ndarray):
    """w [K, N] -> (q i8 [N, K] in -127..127, scales f32 [N, 1]): symmetric per output channel."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=0)
    d = (amax / np.float32(127.0)).astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)
    q = np.clip(np.rint(w / safe), -127, 127).astype(np.int8).T
    return np.ascontiguousarray(q), d[:, None]


def dequantize(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int, group_size: int) -> np.ndarray:
    """The weight [N, K] that (q, scales, zeros) stand for, in float64 (exact)."""
    k = q.shape[1]
    if bits == 8:
        z = 0.0
    else:
        z = 8.0 if zeros is None else _expand_groups(zeros.astype(np.float64), k, group_size)
    return (q.astype(np.float64) - z) * _expand_groups(scales.astype(np.float64), k, group_size)


# -- activations -------------------------------------------------------------------------------------

def quantize_activations(x: np.ndarray, group_size: int | None, pad_to: int = 1):
    """x [..., K] f32 -> (xq i8 [..., Kp], xs f32 [..., G] or [1], xsum i32 [..., G]).

    group_size None: one scale for the whole tensor (xs [1], xsum per row over K)."""
    x = np.asarray(x, np.float32)
    k = x.shape[-1]
    if group_size is None:
        amax = np.float32(np.abs(x).max()) if x.size else np.float32(0)
        amax = amax.reshape(1)
        xg = x[..., None, :]
    else:
        xg = _grouped(x, group_size)
        amax = np.abs(xg).max(axis=-1) if xg.size else np.zeros(xg.shape[:-1], np.float32)
    amax = amax.astype(np.float32)
    d = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0)).astype(np.float32)
    inv_b = inv[..., None] if group_size is not None else inv
    xq = np.clip(np.rint(xg * inv_b), -127, 127).astype(np.int8)
    xsum = xq.astype(np.int32).sum(axis=-1)
    xq = xq.reshape(x.shape[:-1] + (-1,))[..., :k]
    kp = -(-k // pad_to) * pad_to
    if kp != k:
        xq = np.concatenate([xq, np.zeros(x.shape[:-1] + (kp - k,), np.int8)], axis=-1)
    # contiguous: with a group past K the slice above is a view whose rows are a whole group apart, and the
    # kernels this feeds read rows Kp apart
    return np.ascontiguousarray(xq), d, xsum.astype(np.int32)


def dequantize_activations(xq: np.ndarray, xs: np.ndarray, k: int, group_size: int | None) -> np.ndarray:
    """float64 [..., K] values of quantized activations (exact)."""
    v = xq[..., :k].astype(np.float64)
    if group_size is None:
        return v * np.float64(xs.reshape(-1)[0])
    return v * _expand_groups(xs.astype(np.float64), k, group_size)


def round_f16(a: np.ndarray) -> np.ndarray:
    """float64 values of `a` rounded to fp16 (nearest even; beyond 65504 -> inf, as the hardware)."""
    with np.errstate(over="ignore"):
        return np.asarray(a).astype(np.float16).astype(np.float64)


def act_group_of(attrs) -> int:
    """The activation group along K of an i8_group QLinear / QLinearI8: act_group, else the weight's group."""
    return int(attrs.get("act_group") or attrs["group_size"])


def _check_act_group(attrs, where: str) -> None:
    ag = attrs.get("act_group", 0)
    if not isinstance(ag, int) or ag < 0:
        raise ShapeError(f"{where}: act_group must be a non-negative int (0: the weight's group), got {ag!r}")


def qlinear_reference(x: np.ndarray, q, scales, zeros, bias, bits: int, group_size: int, act: str,
                      act_group: int = 0) -> np.ndarray:
    """QLinear in float64 from exactly dequantized operands, rounded once to f32."""
    k = q.shape[1]
    if act == "f16":
        w = round_f16(dequantize(q, scales, zeros, bits, group_size))
        return _finish(round_f16(np.asarray(x, np.float32)), w, bias)
    if act == "f32":
        xd = np.asarray(x, np.float64)
    else:
        gs = (act_group or group_size) if act == "i8_group" else None
        xq, xs, _ = quantize_activations(x, gs)
        xd = dequantize_activations(xq, xs, k, gs)
    return _finish(xd, dequantize(q, scales, zeros, bits, group_size), bias)


def _finish(xd, w, bias) -> np.ndarray:
    """xd @ w.T + bias in float64 (w [N, K] dequantized), rounded once to f32."""
    y = xd @ w.T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.astype(np.float32)


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
    return [_finish(xd, dequantize(q, scales, zeros, attrs["bits"], attrs["group_size"]), bias)]


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
