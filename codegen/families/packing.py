"""The portable packed layouts that kernel family contracts name, shared by every CPU backend: the f32
panels of family gemm (docs/kernels.md) and the quantized row tables of family qgather.

f32 panels: B[K, N] is cut into ceil(N / nr) column panels of `nr` columns. Each panel stores its K rows
one after the other, so the gemm micro-kernel streams one panel front to back with unit stride; the last
panel is zero padded so the kernel never needs a column tail on the B side::

    B (K=3, N=20, nr=16)            packed (flat float32, 2 panels x 3 rows x 16)
    k0: b00 b01 .. b0,15 | b0,16 .. b0,19     panel 0: [b00..b0,15][b10..b1,15][b20..b2,15]
    k1: b10 b11 .. b1,15 | b1,16 .. b1,19     panel 1: [b0,16..b0,19 0 x12][b1,16..b1,19 0 x12]
    k2: b20 b21 .. b2,15 | b2,16 .. b2,19              [b2,16..b2,19 0 x12]

Element B[k, n] lives at ((n // nr) * K + k) * nr + n % nr. A panel is K * nr * 4 bytes (a multiple of
64 for nr=16), so panels stay 64-byte aligned when the weights file aligns the first one.

Quantized row tables (QGather: embeddings): rows are read one at a time, so they stay whole.

    q4 rows:   row v of q [V, K] (values 0..15) as ceil(K/2) bytes, byte j = q[v, 2j] | q[v, 2j+1] << 4
               (an odd K pads the last high nibble with 0)
    q4 scales: fp16 bits [V, G]; zeros u8 [V, G] (absent: 8)
    q8 rows:   q [V, K] int8 as is; scales f32 [V]

GPU int4 columns (the CUDA and Metal GEMVs): column n of the codes q [N, K] as uint32 words of 8 codes, K padded
with the code 8 (zero after the symmetric offset) to a multiple of `chunk`; the nibble slot of each of a word's
8 codes is the backend's (`nibble_of`), chosen for its dequantization.
"""
from __future__ import annotations

import numpy as np

NR = 16  # panel width of the gemm kernels: two 8-float AVX2 or four 4-float NEON vectors per packed row


def packed_size(K: int, N: int, nr: int = NR) -> int:
    """Number of float32 elements `pack_f32_panels` produces for B[K, N]."""
    return -(-N // nr) * K * nr


def pack_f32_panels(w: np.ndarray, nr: int = NR) -> np.ndarray:
    """Pack B[K, N] (float32) into nr-column panels; returns a flat float32 array."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack_f32_panels expects a 2-D [K, N] array, got shape {w.shape}")
    K, N = w.shape
    npanels = -(-N // nr)
    padded = np.zeros((K, npanels * nr), dtype=np.float32)
    padded[:, :N] = w
    # [K, P, nr] -> [P, K, nr]: panel-major, then rows of one panel.
    return np.ascontiguousarray(padded.reshape(K, npanels, nr).transpose(1, 0, 2)).reshape(-1)


def unpack_f32_panels(packed: np.ndarray, K: int, N: int, nr: int = NR) -> np.ndarray:
    """Inverse of `pack_f32_panels`: the [K, N] float32 matrix (padding dropped)."""
    packed = np.asarray(packed, dtype=np.float32).reshape(-1)
    if packed.size != packed_size(K, N, nr):
        raise ValueError(f"packed buffer has {packed.size} floats, expected {packed_size(K, N, nr)} for K={K}, N={N}, nr={nr}")
    npanels = -(-N // nr)
    return np.ascontiguousarray(packed.reshape(npanels, K, nr).transpose(1, 0, 2).reshape(K, npanels * nr)[:, :N])


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


def pack_q4_words(q: np.ndarray, chunk: int, nibble_of=range(8)) -> np.ndarray:
    """q u8 [N, K] (0..15) -> uint32 [N, 4 * ceil(K / chunk)]: code k0+i of a word in nibble nibble_of[i]."""
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q4 weights must be [N, K], got shape {q.shape}")
    if q.size and (q.min() < 0 or q.max() > 15):
        raise ValueError("q4 weight codes must lie in 0..15")
    n, k = q.shape
    kp = -(-k // chunk) * chunk
    codes = np.full((n, kp), 8, np.uint32)
    codes[:, :k] = q
    codes = codes.reshape(n, kp // 8, 8)
    words = np.zeros((n, kp // 8), np.uint32)
    for i, slot in enumerate(nibble_of):
        words |= codes[:, :, i] << np.uint32(4 * slot)
    return np.ascontiguousarray(words)


def unpack_q4_words(words: np.ndarray, K: int, nibble_of=range(8)) -> np.ndarray:
    """Inverse of pack_q4_words: the u8 [N, K] codes."""
    words = np.asarray(words, np.uint32)
    codes = np.empty((words.shape[0], words.shape[1], 8), np.uint8)
    for i, slot in enumerate(nibble_of):
        codes[:, :, i] = (words >> np.uint32(4 * slot)) & np.uint32(15)
    return codes.reshape(words.shape[0], -1)[:, :K]
