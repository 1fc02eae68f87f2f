"""Weight packing for the arm quantized Linear kernels: the x86 layouts (docs/formats.md) at NEON width.

One 128-bit vector holds 32 int4 codes, so a K block is 32 codes of a column in 16 bytes and a column tile
is 4 output channels (the 4 lanes of a float32x4 epilogue). Contract (docs/arm.md)::

    q4 weights, NT=4, K blocks of 32 (Kp = K rounded up to 32, Npad = N rounded up to 4, zero padded):
        tile t (columns 4t .. 4t+3), block b (k = 32b .. 32b+31), column c: 16 bytes
            byte e = q[4t+c, 32b+e] | q[4t+c, 32b+16+e] << 4          (e = 0..15)
        [t0: b0: c0 (16 B) c1 c2 c3][b1: c0 .. c3] ... [t1: b0: ...] ...
        so `v & 0x0F` is q[n, 32b .. 32b+15] and `v >> 4` is q[n, 32b+16 .. 32b+31]: one AND and one
        shift turn a 16-byte load into 32 int8 weights in k order (a group of 32 is exactly one block).
    q4 scales: fp16 bits (u16) [t][G][c]; q4 zeros: u8 [t][G][c] (padding 0).
    q8 weights: int8 [t][Kp/16][c][16 bytes] (q[4t+c, 16j .. 16j+15]); q8 scales: f32 [Npad].
    f32 gemm panels and the QGather row tables: the portable layouts of codegen/families/packing.py.
"""
from __future__ import annotations

import numpy as np

NT = 4     # column tile: output channels per tile (one float32x4 in the epilogue)
KB = 32    # q4 K block: 32 codes per column in one 16-byte vector
Q8B = 16   # q8 K chunk: 16 codes per column in one 16-byte vector
KPAD = 32  # K is padded to this for q4 and q8 (the activations' `pad_to`, Target.k_block)


def padded_k(K: int) -> int:
    return -(-K // KPAD) * KPAD


def padded_n(N: int) -> int:
    return -(-N // NT) * NT


def _pad2(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), a.dtype)
    out[:a.shape[0], :a.shape[1]] = a
    return out


def _check2(a, name: str, dtype) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} expects a 2-D array, got shape {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise ValueError(f"{name} expects {np.dtype(dtype)} codes, got {a.dtype}")
    return a


def pack_q4(q: np.ndarray) -> np.ndarray:
    """q u8 [N, K] (0..15) -> flat u8 [Npad * Kp / 2] in the arm q4 layout."""
    q = _check2(q, "pack_q4", np.uint8)
    if q.size and q.max() > 15:
        raise ValueError(f"pack_q4: codes must be 0..15, found {int(q.max())}")
    N, K = q.shape
    T, B = padded_n(N) // NT, padded_k(K) // KB
    p = _pad2(q, T * NT, B * KB).reshape(T, NT, B, 2, KB // 2)   # [t, c, b, half, e]
    packed = p[:, :, :, 0, :] | (p[:, :, :, 1, :] << 4)          # [t, c, b, e]
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3)).reshape(-1)


def unpack_q4(packed: np.ndarray, N: int, K: int, padded: bool = False) -> np.ndarray:
    packed = np.asarray(packed, np.uint8).reshape(-1)
    T, B = padded_n(N) // NT, padded_k(K) // KB
    if packed.size != T * B * NT * KB // 2:
        raise ValueError(f"packed q4 has {packed.size} bytes, expected {T * B * NT * KB // 2} for N={N}, K={K}")
    p = packed.reshape(T, B, NT, KB // 2).transpose(0, 2, 1, 3)  # [t, c, b, e]
    q = np.stack([p & 0x0F, p >> 4], axis=3).reshape(T * NT, B * KB)
    return np.ascontiguousarray(q if padded else q[:N, :K])


def pack_tile_groups(a: np.ndarray, dtype) -> np.ndarray:
    """[N, G] per-(channel, group) values -> flat [t][G][c], zero padded to Npad channels."""
    N, G = a.shape
    T = padded_n(N) // NT
    p = _pad2(np.asarray(a).astype(dtype), T * NT, G).reshape(T, NT, G)
    return np.ascontiguousarray(p.transpose(0, 2, 1)).reshape(-1)


def unpack_tile_groups(packed: np.ndarray, N: int, G: int) -> np.ndarray:
    T = padded_n(N) // NT
    return np.ascontiguousarray(np.asarray(packed).reshape(T, G, NT).transpose(0, 2, 1).reshape(T * NT, G)[:N])


def pack_q4_scales(scales: np.ndarray) -> np.ndarray:
    """scales f32 [N, G] (fp16 values) -> flat u16 fp16 bits [t][G][c]."""
    s = _check2(scales, "pack_q4_scales", None).astype(np.float32)
    h = s.astype(np.float16)
    if not np.array_equal(h.astype(np.float32), s, equal_nan=True):
        raise ValueError("pack_q4_scales: scales are not fp16 values (quantize_int4 rounds them to fp16)")
    return pack_tile_groups(h, np.float16).view(np.uint16)


def pack_q4_zeros(zeros: np.ndarray) -> np.ndarray:
    z = _check2(zeros, "pack_q4_zeros", None)
    if z.size and (z.min() < 0 or z.max() > 15):
        raise ValueError("pack_q4_zeros: zero points must be 0..15")
    return pack_tile_groups(z, np.uint8)


def pack_q8(q: np.ndarray) -> np.ndarray:
    """q i8 [N, K] (-127..127) -> flat i8 [t][Kp/16][c][16]."""
    q = _check2(q, "pack_q8", np.int8)
    N, K = q.shape
    T, J = padded_n(N) // NT, padded_k(K) // Q8B
    p = _pad2(q, T * NT, J * Q8B).reshape(T, NT, J, Q8B)
    return np.ascontiguousarray(p.transpose(0, 2, 1, 3)).reshape(-1)


def unpack_q8(packed: np.ndarray, N: int, K: int) -> np.ndarray:
    T, J = padded_n(N) // NT, padded_k(K) // Q8B
    q = np.asarray(packed).reshape(-1).view(np.int8).reshape(T, J, NT, Q8B).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(q.reshape(T * NT, J * Q8B)[:N, :K])


def pack_q8_scales(scales: np.ndarray) -> np.ndarray:
    s = np.asarray(scales, np.float32).reshape(-1)
    out = np.zeros(padded_n(s.size), np.float32)
    out[:s.size] = s
    return out
