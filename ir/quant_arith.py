"""The exact arithmetic of the quantized ops (ir/ops/quant.py has their contract): int4 / int8 weight
quantization and dequantization, the activation quantization every int8 kernel reproduces, fp16 rounding, and
QLinear's float64 reference. Pure numpy; the quantize passes, the packers, the op references and the tests
share it.
"""
from __future__ import annotations

import numpy as np

F16_MAX = 65504.0  # the packed int4 scales are fp16

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


def qlinear_reference(x: np.ndarray, q, scales, zeros, bias, bits: int, group_size: int, act: str,
                      act_group: int = 0) -> np.ndarray:
    """QLinear in float64 from exactly dequantized operands, rounded once to f32."""
    k = q.shape[1]
    if act == "f16":
        w = round_f16(dequantize(q, scales, zeros, bits, group_size))
        return linear_f64(round_f16(np.asarray(x, np.float32)), w, bias)
    if act == "f32":
        xd = np.asarray(x, np.float64)
    else:
        gs = (act_group or group_size) if act == "i8_group" else None
        xq, xs, _ = quantize_activations(x, gs)
        xd = dequantize_activations(xq, xs, k, gs)
    return linear_f64(xd, dequantize(q, scales, zeros, bits, group_size), bias)


def linear_f64(xd, w, bias) -> np.ndarray:
    """xd @ w.T + bias in float64 (w [N, K] dequantized), rounded once to f32."""
    y = xd @ w.T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.astype(np.float32)
