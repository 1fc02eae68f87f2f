"""tcc's own ops: what the fusion passes produce and what the kernels implement directly.

Linear(x, w, bias?)              y = x @ w + bias; w is a constant [K, N] (logical layout; backends pack it)
LayerNorm(x, gamma, beta?)       {axis, eps}: normalize over axes [axis, rank), biased variance
RMSNorm(x, gamma)                {axis, eps}: y = x / sqrt(mean(x^2 over [axis, rank)) + eps) * gamma
Attention(q, k, v, mask?, slopes?)  {scale, causal, window, softcap}: q [B,Hq,Sq,D], k [B,Hkv,Skv,D],
                                 v [B,Hkv,Skv,Dv] -> [B,Hq,Sq,Dv]; query head h uses kv head h // (Hq // Hkv);
                                 with i' = i + Skv - Sq (the query's position among the keys):
                                 score = scale * q.k; softcap > 0: score = softcap * tanh(score / softcap);
                                 slopes (ALiBi, f32 [Hq]): score += slopes[h] * (j - i'); mask is additive
                                 f32, broadcastable to [B,Hq,Sq,Skv]; causal keeps key j <= i'; window > 0
                                 keeps key j > i' - window (sliding window); a query row with every key
                                 masked gives zeros
Copy(x)                          materializes x in a buffer of its own (used for graph outputs that
                                 would otherwise alias an input, a constant or another output)
"""
from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ..core import TensorType
from ..dtypes import DType
from ..registry import REQUIRED, broadcast_shapes, norm_axis, register_op


def _linear_infer(ins, attrs):
    x, w = ins[0], ins[1]
    if w.type.rank != 2:
        raise ShapeError(f"Linear weight {w.name!r} must be 2-D [K, N], got {w.type}")
    if x.type.rank < 1 or x.shape[-1] != w.shape[0]:
        raise ShapeError(f"Linear: x {x.type} last dim does not match weight {w.type} (expected K={w.shape[0]})")
    if len(ins) > 2 and ins[2] is not None and tuple(ins[2].shape) not in ((w.shape[1],), (1, w.shape[1])):
        raise ShapeError(f"Linear bias must be [{w.shape[1]}], got {ins[2].type}")
    return [TensorType(x.dtype, x.shape[:-1] + (w.shape[1],))]


def _linear_ref(xs, attrs):
    x, w = xs[0], xs[1]
    y = np.matmul(x.astype(np.float32), w.astype(np.float32))
    if len(xs) > 2 and xs[2] is not None:
        y = y + xs[2].reshape(-1)
    return [y.astype(x.dtype)]


register_op("Linear", infer=_linear_infer, ref=_linear_ref, kind="opaque", inputs=(2, 3),
            doc="y = x @ w + bias, w constant [K, N]")


def _norm_infer(ins, attrs):
    x = ins[0]
    axis = norm_axis(attrs["axis"], x.type.rank)
    normalized = x.shape[axis:]
    for p in ins[1:]:
        if p is None:
            continue
        if broadcast_shapes(normalized, p.shape, what="norm parameter") != tuple(normalized):
            raise ShapeError(f"norm parameter {p.name!r} {p.type} does not broadcast to {list(map(str, normalized))}")
    return [x.type]


def _layernorm_ref(xs, attrs):
    x = xs[0].astype(np.float32)
    axes = tuple(range(norm_axis(attrs["axis"], x.ndim), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(attrs["eps"]))
    y = y * xs[1]
    if len(xs) > 2 and xs[2] is not None:
        y = y + xs[2]
    return [y.astype(xs[0].dtype)]


def _rmsnorm_ref(xs, attrs):
    x = xs[0].astype(np.float32)
    axes = tuple(range(norm_axis(attrs["axis"], x.ndim), x.ndim))
    ms = (x * x).mean(axis=axes, keepdims=True)
    y = x / np.sqrt(ms + np.float32(attrs["eps"])) * xs[1]
    return [y.astype(xs[0].dtype)]


register_op("LayerNorm", infer=_norm_infer, ref=_layernorm_ref, kind="opaque", inputs=(2, 3),
            attrs={"axis": -1, "eps": 1e-5}, doc="layer normalization over axes [axis, rank)")
register_op("RMSNorm", infer=_norm_infer, ref=_rmsnorm_ref, kind="opaque", inputs=2,
            attrs={"axis": -1, "eps": 1e-6}, doc="RMS normalization over axes [axis, rank)")


def _attention_infer(ins, attrs):
    q, k, v = ins[0], ins[1], ins[2]
    for t in (q, k, v):
        if t.type.rank != 4:
            raise ShapeError(f"Attention expects 4-D [B,H,S,D] q/k/v, got {t.name!r} {t.type}")
    (b, hq, sq, d), (bk, hkv, skv, dk), (bv, hv, sv, dv) = q.shape, k.shape, v.shape
    if dk != d or hv != hkv or sv != skv or bk != b or bv != b:
        raise ShapeError(f"Attention shapes do not match: q {q.type}, k {k.type}, v {v.type}")
    if isinstance(hq, int) and isinstance(hkv, int) and (hkv < 1 or hq % hkv):  # 0 kv heads: no division
        raise ShapeError(f"Attention: query heads {hq} not a multiple of kv heads {hkv}")
    if len(ins) > 3 and ins[3] is not None:
        m = ins[3]
        if m.dtype not in (DType.f32, q.dtype):
            raise ShapeError(f"Attention mask must be an additive {q.dtype} mask, got {m.type}")
        broadcast_shapes((b, hq, sq, skv), m.shape, what="attention mask")
    check_variants("Attention", ins[4] if len(ins) > 4 else None, hq, attrs, q.dtype)
    return [TensorType(q.dtype, (b, hq, sq, dv))]


def check_variants(op: str, slopes, hq, attrs, dtype=DType.f32) -> None:
    """The attributes and the ALiBi slopes input shared by Attention and KVAttention."""
    if not isinstance(attrs.get("window", 0), int) or attrs.get("window", 0) < 0:
        raise ShapeError(f"{op}: window must be an integer >= 0 (0: none), got {attrs.get('window')!r}")
    if not attrs.get("softcap", 0.0) >= 0:
        raise ShapeError(f"{op}: softcap must be >= 0 (0: none), got {attrs.get('softcap')!r}")
    if slopes is not None and (slopes.dtype not in (DType.f32, dtype) or tuple(slopes.shape) != (hq,)):
        raise ShapeError(f"{op}: ALiBi slopes must be {dtype}[{hq}] (one per query head), got {slopes.type}")


def attention_reference(q, k, v, mask, scale: float, causal: bool, window: int = 0, slopes=None,
                        softcap: float = 0.0, key_pos=None) -> np.ndarray:
    """numpy scaled-dot-product attention with GQA, soft-capping, ALiBi slopes, additive mask, bottom-right
    causal masking and a sliding window. key_pos: the keys' positions relative to i' = i (default
    arange(Skv) - (Skv - Sq)), for callers that pass a window of a longer sequence."""
    hq, hkv = q.shape[1], k.shape[1]
    rep = hq // hkv
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    s = np.matmul(q.astype(np.float32), np.swapaxes(k, -1, -2).astype(np.float32)) * np.float32(scale)
    if softcap:
        s = np.float32(softcap) * np.tanh(s / np.float32(softcap))
    sq, skv = q.shape[2], k.shape[2]
    jp = np.arange(skv) - (skv - sq) if key_pos is None else np.asarray(key_pos)
    rel = jp[None, :] - np.arange(sq)[:, None]  # key position - query position
    if slopes is not None:
        s = s + np.asarray(slopes, np.float32)[:, None, None] * rel.astype(np.float32)
    if mask is not None:
        s = s + mask
    allowed = np.ones((sq, skv), bool)
    if causal:
        allowed &= rel <= 0
    if window:
        allowed &= rel > -window
    if causal or window:
        s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(m)  # every key masked: the output row is zero
    p = np.exp(s - np.where(dead, 0, m))
    denom = p.sum(axis=-1, keepdims=True)
    p = np.where(dead, 0, p / np.where(denom == 0, 1, denom))
    return np.matmul(p, v.astype(np.float32)).astype(q.dtype)


def _attention_ref(xs, attrs):
    mask = xs[3] if len(xs) > 3 else None
    slopes = xs[4] if len(xs) > 4 else None
    out = attention_reference(xs[0], xs[1], xs[2], mask, attrs["scale"], bool(attrs["causal"]),
                              int(attrs["window"]), slopes, float(attrs["softcap"]))
    return [out.astype(np.asarray(xs[0]).dtype)]


register_op("Attention", infer=_attention_infer, ref=_attention_ref, kind="opaque", inputs=(3, 5),
            attrs={"scale": REQUIRED, "causal": 0, "window": 0, "softcap": 0.0},
            doc="fused scaled dot-product attention, [B,H,S,D] layout, GQA by head index")

register_op("Copy", infer=lambda ins, attrs: [ins[0].type], ref=lambda xs, attrs: [np.array(xs[0], copy=True)],
            kind="injective", inputs=1, doc="materialize a tensor in its own buffer")


def _silu_ref(xs, attrs):
    x = xs[0].astype(np.float64)
    return [(x / (1.0 + np.exp(-x))).astype(xs[0].dtype)]


register_op("Silu", infer=lambda ins, attrs: [ins[0].type], ref=_silu_ref, kind="elementwise", inputs=1,
            inplace=True, doc="x * sigmoid(x)")
