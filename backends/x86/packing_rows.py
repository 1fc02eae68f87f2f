"""Row-major quantized tables for QGather (embeddings): rows are read one at a time, so they stay whole.

    q4 rows:   row v of q [V, K] (values 0..15) as ceil(K/2) bytes, byte j = q[v, 2j] | q[v, 2j+1] << 4
               (an odd K pads the last high nibble with 0)
    q4 scales: fp16 bits [V, G]; zeros u8 [V, G] (absent: 8)
    q8 rows:   q [V, K] int8 as is; scales f32 [V]
"""
from __future__ import annotations

import numpy as np


def pack_q4_rows(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.uint8)
    v, k = q.shape
    if k % 2:
        q = np.concatenate([q, np.zeros((v, 1), np.uint8)], axis=1)
    return np.ascontiguousarray(q[:, 0::2] | (q[:, 1::2] << 4))


def unpack_q4_rows(packed: np.ndarray, k: int) -> np.ndarray:
    p = np.asarray(packed, np.uint8)
    out = np.empty((p.shape[0], p.shape[1] * 2), np.uint8)
    out[:, 0::2], out[:, 1::2] = p & 0x0F, p >> 4
    return out[:, :k]


def pack_f16_scales(scales: np.ndarray) -> np.ndarray:
    s = np.asarray(scales, np.float32)
    h = s.astype(np.float16)
    if not np.array_equal(h.astype(np.float32), s):
        raise ValueError("scales are not fp16 values (quantize_int4 rounds them; these were changed since)")
    return np.ascontiguousarray(h.view(np.uint16))
