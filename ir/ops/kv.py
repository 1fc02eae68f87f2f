"""KV-cache attention: what the kv-cache pass makes of a decoder's past/present attention.

KVAttention(q, k, v, k_cache, v_cache, past, cos?, sin?)  {scale, rope, rotary_dim}
    q [B,Hq,S,D], k [B,Hkv,S,D], v [B,Hkv,S,Dv]: this run's S tokens, at positions past..past+S-1;
    k_cache [Bc,Hkv,C,D], v_cache [Bc,Hkv,C,Dv]: states (B <= Bc; C = the context capacity);
    past: i64 scalar (a symbolic constant: the number of cached tokens);
    cos, sin: constant tables [C, rotary_dim/2], row p for position p (with rope != 0).
  Effects: k_cache[:B, :, past+s] = rope(k[:, :, s], past+s) and v_cache[:B, :, past+s] = v[:, :, s].
  Result: causal attention of rope(q) over the cache's first past+S positions; query head h reads kv head
  h // (Hq // Hkv) (grouped-query attention shares the cached head; nothing is duplicated).
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
from .fused import attention_reference

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
    for t in (q, k, v, kc, vc):
        if t.type.rank != 4 or t.dtype != DType.f32:
            raise ShapeError(f"KVAttention expects 4-D f32 q/k/v/caches, got {t.name!r} {t.type}")
    (b, hq, s, d), (_, hkv, sk, dk), (_, hv, sv, dv) = q.shape, k.shape, v.shape
    if dk != d or hv != hkv or sk != s or sv != s:
        raise ShapeError(f"KVAttention shapes do not match: q {q.type}, k {k.type}, v {v.type}")
    cap = _static(kc.shape[2], "cache capacity")
    if tuple(kc.shape[1:]) != (hkv, cap, d) or tuple(vc.shape[1:]) != (hkv, cap, dv) or kc.shape[0] != vc.shape[0]:
        raise ShapeError(f"KVAttention caches {kc.type} / {vc.type} do not match k {k.type} / v {v.type}")
    if isinstance(hq, int) and isinstance(hkv, int) and hq % hkv:
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
            if tuple(t.shape) != (cap, rd // 2) or t.dtype != DType.f32:
                raise ShapeError(f"KVAttention rope table {t.name!r} {t.type} must be f32[{cap},{rd // 2}]")
    return [TensorType(DType.f32, (b, hq, s, dv))]


def _ref(xs, attrs):
    q, k, v, kc, vc, past = xs[:6]
    past = int(past)
    b, s = q.shape[0], q.shape[2]
    if past + s > kc.shape[2]:
        raise ShapeError(f"KVAttention: {past} cached + {s} new tokens exceed the cache capacity {kc.shape[2]}")
    pos = np.arange(past, past + s)
    rope, rd = attrs["rope"], attrs["rotary_dim"]
    cos, sin = (xs[6], xs[7]) if rope != ROPE_NONE else (None, None)
    kc[:b, :, past:past + s] = apply_rope(k, pos, cos, sin, rope, rd)
    vc[:b, :, past:past + s] = v
    qr = apply_rope(q, pos, cos, sin, rope, rd)
    n = past + s
    return [attention_reference(qr, kc[:b, :, :n], vc[:b, :, :n], None, attrs["scale"], True)]


register_op("KVAttention", infer=_infer, ref=_ref, kind="opaque", inputs=(6, 8),
            attrs={"scale": REQUIRED, "rope": ROPE_NONE, "rotary_dim": 0}, effects=True,
            doc="causal attention over a KV-cache state, appending this run's rotated k and v in place")
