"""KV-cache attention: what the kv-cache pass makes of a decoder's past/present attention.

KVAttention(q, k, v, k_cache, v_cache, past, cos?, sin?, slopes?)
        {scale, rope, rotary_dim, window, softcap, capacity}
    q [B,Hq,S,D], k [B,Hkv,S,D], v [B,Hkv,S,Dv]: this run's S tokens, at positions past..past+S-1;
    k_cache [Bc,Hkv,R,D], v_cache [Bc,Hkv,R,Dv]: states (B <= Bc); position p lives in row p % R;
    capacity C: the context limit (positions 0..C-1); 0 means R. R < C makes the caches rings, which needs a
    sliding window with R >= window (Mistral: a long chat holds only its window);
    past: i64 scalar (a symbolic constant: the number of cached tokens);
    cos, sin: constant tables [C, rotary_dim/2], row p for position p (with rope != 0);
    slopes: ALiBi, f32 [Hq] (a constant): score += slopes[h] * (key position - query position).
  Effects: k_cache[:B, :, (past+s) % R] = rope(k[:, :, s], past+s) and v_cache[...] = v[:, :, s].
  Result: causal attention of rope(q) over positions 0..past+s (window > 0: only the last `window` of them);
  query head h reads kv head h // (Hq // Hkv) (grouped-query attention shares the cached head; nothing is
  duplicated); softcap > 0 caps the scaled scores to softcap * tanh(score / softcap) before the bias.
  rope: 0 none, 1 rotate-half (pairs i, i + rotary_dim/2), 2 interleaved (pairs 2i, 2i+1); dims at or
  beyond rotary_dim pass through.
"""
from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ..core import TensorType
from ..dims import Sym
from ..dtypes import DType
from ..registry import REQUIRED, register_op
from .fused import attention_reference, check_variants

ROPE_NONE, ROPE_HALF, ROPE_INTERLEAVED = 0, 1, 2


def apply_rope(x: np.ndarray, positions: np.ndarray, cos: np.ndarray, sin: np.ndarray, mode: int,
               rotary_dim: int) -> np.ndarray:
    """Rotate x [..., S, D] at `positions` [S] with tables [C, rotary_dim/2] (numpy reference)."""
    if mode == ROPE_NONE:
        return x
    h = rotary_dim // 2
    c = cos[positions].astype(np.float32)  # [S, h]
    s = sin[positions].astype(np.float32)
    y = x.astype(np.float32, copy=True)
    if mode == ROPE_HALF:
        a, b = x[..., :h], x[..., h:rotary_dim]
        y[..., :h] = a * c - b * s
        y[..., h:rotary_dim] = b * c + a * s
    else:
        a, b = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        y[..., 0:rotary_dim:2] = a * c - b * s
        y[..., 1:rotary_dim:2] = b * c + a * s
    return y


def _static(d, what: str) -> int:
    if isinstance(d, Sym):
        raise ShapeError(f"KVAttention: {what} must be a static dim, got {d}")
    return d


def _infer(ins, attrs):
    q, k, v, kc, vc, past = ins[:6]
    dt = q.dtype if q.dtype in (DType.f32, DType.f16) else DType.f32  # f16 in a GPU program (passes/float16.py)
    for t in (q, k, v, kc, vc):
        if t.type.rank != 4 or t.dtype != dt:
            raise ShapeError(f"KVAttention expects 4-D {dt} q/k/v/caches, got {t.name!r} {t.type}")
    (b, hq, s, d), (_, hkv, sk, dk), (_, hv, sv, dv) = q.shape, k.shape, v.shape
    if dk != d or hv != hkv or sk != s or sv != s:
        raise ShapeError(f"KVAttention shapes do not match: q {q.type}, k {k.type}, v {v.type}")
    rows = _static(kc.shape[2], "cache rows")
    if tuple(kc.shape[1:]) != (hkv, rows, d) or tuple(vc.shape[1:]) != (hkv, rows, dv) or kc.shape[0] != vc.shape[0]:
        raise ShapeError(f"KVAttention caches {kc.type} / {vc.type} do not match k {k.type} / v {v.type}")
    cap, window = attrs["capacity"] or rows, attrs["window"]
    if cap < rows or (cap > rows and not (isinstance(window, int) and 0 < window <= rows)):
        raise ShapeError(f"KVAttention: a {rows}-row cache cannot serve a {cap}-token context with window {window}")
    check_variants("KVAttention", ins[8] if len(ins) > 8 else None, hq, attrs, dt)
    if isinstance(hq, int) and isinstance(hkv, int) and (hkv < 1 or hq % hkv):  # 0 kv heads: no division
        raise ShapeError(f"KVAttention: query heads {hq} not a multiple of kv heads {hkv}")
    if past.type.rank != 0 or past.dtype != DType.i64:
        raise ShapeError(f"KVAttention past must be an i64 scalar, got {past.type}")
    rope, rd = attrs["rope"], attrs["rotary_dim"]
    if rope not in (ROPE_NONE, ROPE_HALF, ROPE_INTERLEAVED):
        raise ShapeError(f"KVAttention: rope must be 0, 1 or 2, got {rope}")
    if rope != ROPE_NONE:
        if len(ins) < 8 or ins[6] is None or ins[7] is None:
            raise ShapeError("KVAttention with rope needs cos and sin tables")
        if rd <= 0 or rd % 2 or (isinstance(d, int) and rd > d):
            raise ShapeError(f"KVAttention: rotary_dim {rd} must be even and in (0, {d}]")
        for t in ins[6:8]:
            if tuple(t.shape) != (cap, rd // 2) or t.dtype != dt:
                raise ShapeError(f"KVAttention rope table {t.name!r} {t.type} must be {dt}[{cap},{rd // 2}]")
    return [TensorType(dt, (b, hq, s, dv))]


def _ref(xs, attrs):
    q, k, v, kc, vc, past = xs[:6]
    past = int(past)
    b, s, rows = q.shape[0], q.shape[2], kc.shape[2]
    cap, window = attrs["capacity"] or rows, attrs["window"]
    if past + s > cap:
        raise ShapeError(f"KVAttention: {past} cached + {s} new tokens exceed the cache capacity {cap}")
    pos = np.arange(past, past + s)
    rope, rd = attrs["rope"], attrs["rotary_dim"]
    cos, sin = (xs[6], xs[7]) if rope != ROPE_NONE else (None, None)
    knew = apply_rope(k, pos, cos, sin, rope, rd)
    # the keys the queries may read: positions lo..past+s-1, the cached ones read before this run's writes
    lo = max(0, past - window + 1) if window else 0
    old = np.arange(lo, past) % rows
    keys = np.concatenate([kc[:b, :, old], knew], axis=2)
    vals = np.concatenate([vc[:b, :, old], v], axis=2)
    for i, p in enumerate(pos[-rows:] if s > rows else pos):  # a ring keeps only the last rows positions
        kc[:b, :, p % rows] = knew[:, :, i + max(0, s - rows)]
        vc[:b, :, p % rows] = v[:, :, i + max(0, s - rows)]
    qr = apply_rope(q, pos, cos, sin, rope, rd)
    slopes = xs[8] if len(xs) > 8 else None
    out = attention_reference(qr, keys, vals, None, attrs["scale"], True, window, slopes, attrs["softcap"],
                              key_pos=np.arange(lo, past + s) - past)
    return [out.astype(q.dtype)]


register_op("KVAttention", infer=_infer, ref=_ref, kind="opaque", inputs=(6, 9),
            attrs={"scale": REQUIRED, "rope": ROPE_NONE, "rotary_dim": 0, "window": 0, "softcap": 0.0,
                   "capacity": 0}, effects=True,
            doc="causal attention over a KV-cache state (optionally a sliding window over a ring cache, ALiBi, "
                "soft-capped scores), appending this run's rotated k and v in place")
