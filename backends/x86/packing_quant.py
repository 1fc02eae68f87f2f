"""Weight packing for the x86 quantized Linear kernels (qlinear_w4a8, qlinear_w4a32, qlinear_w8a8).

Layout contract: docs/formats.md. The canonical weights come from `ir/ops/quant.py` (int4: q u8 [N, K]
in 0..15, scales f32 [N, G] holding fp16 values, zeros u8 [N, G] or None; int8: q i8 [N, K], scales
f32 [N, 1]). The kernels read weights in column tiles of NT output channels: one tile is one
contiguous stream, so a GEMV thread walks its tiles front to back, and one tile's 8 scales / zeros of a
group are one 8-lane vector (the per-group epilogue works on 8 columns at once).

q4 weights (qlinear_w4a8 and qlinear_w4a32), "quad" layout, NT=8 column tiles, K blocks of 64 (Kp = K
rounded up to 64, Npad = N rounded up to NT, zero padded); k-quad major, so that one nibble plane of a
32-byte vector is 4 consecutive k of all 8 columns (the operand of one vpdpbusd against a broadcast 4-byte
activation quad: 8 column sums in 8 lanes, no horizontal reduction), and dword c of a vector is 8 codes of
column c (w4a32 dequantizes each nibble in place into a float lane of column c)::

    tile t, K block b, vector v (0..7), column c, i (0..3):
        byte 32v + 4c + i = q[8t+c, 64b+4v+i] | q[8t+c, 64b+32+4v+i] << 4

    [t0: b0: v0 (32 B) v1 .. v7][b1: ...] ... [t1: ...] ...

    so `v & 0x0F` is k-quad v of the block and `(v >> 4) & 0x0F` k-quad 8+v: the low nibbles of a block's
    8 vectors are its k 0..31 (a group of 32), the high nibbles k 32..63. (Until the w4a32 kernels moved to
    it, they read a column-major layout `x86_q4_nt8`; the new name keeps old manifests from being misread.)

q4 scales: fp16 bits (u16) [t][G][c]; q4 zeros: u8 [t][G][c] (padding: 0).
q8 weights: int8 [t][Kp/32][c][32 bytes] (q[8t+c, 32j .. 32j+31]); q8 scales: f32 [Npad].
"""
from __future__ import annotations

import numpy as np

NT = 8    # column tile: output channels per tile (one ymm of 8 floats in the epilogue)
KB = 64   # q4 K block: 64 weights per column in one 32-byte vector
KPAD = 64  # K is padded to this for both q4 and q8 (the activations' `pad_to`)
Q8B = 32   # q8 K chunk: 32 codes of a column in one 32-byte vector


def padded_k(K: int) -> int:
    return -(-K // KPAD) * KPAD


def padded_n(N: int) -> int:
    return -(-N // NT) * NT


def n_groups(K: int, group: int) -> int:
    return -(-K // group)


def q4_quad_layout_name() -> str:
    return f"x86_q4quad_nt{NT}"


def q4_scales_layout_name() -> str:
    return f"x86_q4_scales_f16_nt{NT}"


def q4_zeros_layout_name() -> str:
    return f"x86_q4_zeros_nt{NT}"


def q8_layout_name() -> str:
    return f"x86_q8_nt{NT}"


def q8_scales_layout_name() -> str:
    return f"x86_q8_scales_nt{NT}"


def _pad2(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), a.dtype)
    out[:a.shape[0], :a.shape[1]] = a
    return out


def _check2(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} expects a 2-D array, got shape {a.shape}")
    return a


# -- q4 weights ----------------------------------------------------------------------------------------

def q4_packed_size(N: int, K: int) -> int:
    """Bytes of packed q4 weights for q [N, K]."""
    return padded_n(N) * padded_k(K) // 2


def _q4_codes(q, name: str):
    """Checked int4 codes [N, K] and their tile and K-block counts (T, B)."""
    q = _check2(q, name)
    if q.dtype != np.uint8:
        raise ValueError(f"{name} expects uint8 codes, got {q.dtype}")
    if q.size and q.max() > 15:
        raise ValueError(f"{name}: codes must be 0..15, found {int(q.max())}")
    N, K = q.shape
    return q, padded_n(N) // NT, padded_k(K) // KB


def pack_q4_quad(q: np.ndarray) -> np.ndarray:
    """q u8 [N, K] (values 0..15) -> flat u8 [Npad * Kp / 2] in the x86 q4 quad layout."""
    q, T, B = _q4_codes(q, "pack_q4_quad")
    p = _pad2(q, T * NT, B * KB).reshape(T, NT, B, 2, 8, 4)  # [t, c, b, half, v, i]
    packed = p[:, :, :, 0] | (p[:, :, :, 1] << 4)            # [t, c, b, v, i]
    return np.ascontiguousarray(packed.transpose(0, 2, 3, 1, 4)).reshape(-1)


def unpack_q4_quad(packed: np.ndarray, N: int, K: int, padded: bool = False) -> np.ndarray:
    """Inverse of `pack_q4_quad`: q u8 [N, K] (or the whole padded [Npad, Kp] with `padded`)."""
    packed = np.asarray(packed, np.uint8).reshape(-1)
    if packed.size != q4_packed_size(N, K):
        raise ValueError(f"packed q4 has {packed.size} bytes, expected {q4_packed_size(N, K)} for N={N}, K={K}")
    T, B = padded_n(N) // NT, padded_k(K) // KB
    p = packed.reshape(T, B, 8, NT, 4).transpose(0, 3, 1, 2, 4)  # [t, c, b, v, i]
    q = np.stack([p & 0x0F, p >> 4], axis=3).reshape(T * NT, B * KB)
    return np.ascontiguousarray(q if padded else q[:N, :K])


# -- q4 scales and zeros -------------------------------------------------------------------------------

def _pack_tile_groups(a: np.ndarray, dtype) -> np.ndarray:
    """[N, G] -> flat [t][G][c], zero padded to Npad columns."""
    N, G = a.shape
    T = padded_n(N) // NT
    p = _pad2(a.astype(dtype), T * NT, G).reshape(T, NT, G)
    return np.ascontiguousarray(p.transpose(0, 2, 1)).reshape(-1)


def _unpack_tile_groups(packed: np.ndarray, N: int, G: int, padded: bool) -> np.ndarray:
    T = padded_n(N) // NT
    if packed.size != T * NT * G:
        raise ValueError(f"packed per-group array has {packed.size} entries, expected {T * NT * G} for N={N}, G={G}")
    a = packed.reshape(T, G, NT).transpose(0, 2, 1).reshape(T * NT, G)
    return np.ascontiguousarray(a if padded else a[:N])


def pack_q4_scales(scales: np.ndarray) -> np.ndarray:
    """scales f32 [N, G] (fp16-representable) -> flat u16 fp16 bits [t][G][c]."""
    s = _check2(scales, "pack_q4_scales").astype(np.float32)
    h = s.astype(np.float16)
    if not np.array_equal(h.astype(np.float32), s, equal_nan=True):
        bad = np.argwhere(h.astype(np.float32) != s)[0]
        raise ValueError(f"pack_q4_scales: scale {s[tuple(bad)]!r} at {tuple(bad)} is not an fp16 value "
                         "(quantize_int4 rounds scales to fp16)")
    return _pack_tile_groups(h, np.float16).view(np.uint16)


def unpack_q4_scales(packed: np.ndarray, N: int, G: int, padded: bool = False) -> np.ndarray:
    """Inverse of `pack_q4_scales`: f32 [N, G]."""
    h = np.asarray(packed).reshape(-1).view(np.uint16).view(np.float16)
    return _unpack_tile_groups(h, N, G, padded).astype(np.float32)


def pack_q4_zeros(zeros: np.ndarray) -> np.ndarray:
    """zeros u8 [N, G] (0..15) -> flat u8 [t][G][c]."""
    z = _check2(zeros, "pack_q4_zeros")
    if z.size and (z.min() < 0 or z.max() > 15):
        raise ValueError("pack_q4_zeros: zero points must be 0..15")
    return _pack_tile_groups(z, np.uint8)


def unpack_q4_zeros(packed: np.ndarray, N: int, G: int, padded: bool = False) -> np.ndarray:
    """Inverse of `pack_q4_zeros`: u8 [N, G]."""
    return _unpack_tile_groups(np.asarray(packed, np.uint8).reshape(-1), N, G, padded)


# -- q8 ------------------------------------------------------------------------------------------------

def q8_packed_size(N: int, K: int) -> int:
    return padded_n(N) * padded_k(K)


def pack_q8(q: np.ndarray) -> np.ndarray:
    """q i8 [N, K] (values -127..127) -> flat i8 [t][Kp/32][c][32]."""
    q = _check2(q, "pack_q8")
    if q.dtype != np.int8:
        raise ValueError(f"pack_q8 expects int8 codes, got {q.dtype}")
    if q.size and q.min() < -127:
        raise ValueError("pack_q8: codes must be -127..127 (the AVX2 sign trick has no -128)")
    N, K = q.shape
    T, J = padded_n(N) // NT, padded_k(K) // Q8B
    p = _pad2(q, T * NT, J * Q8B).reshape(T, NT, J, Q8B)
    return np.ascontiguousarray(p.transpose(0, 2, 1, 3)).reshape(-1)


def unpack_q8(packed: np.ndarray, N: int, K: int, padded: bool = False) -> np.ndarray:
    """Inverse of `pack_q8`: i8 [N, K] (or [Npad, Kp] with `padded`)."""
    packed = np.asarray(packed).reshape(-1).view(np.int8)
    if packed.size != q8_packed_size(N, K):
        raise ValueError(f"packed q8 has {packed.size} bytes, expected {q8_packed_size(N, K)} for N={N}, K={K}")
    T, J = padded_n(N) // NT, padded_k(K) // Q8B
    q = packed.reshape(T, J, NT, Q8B).transpose(0, 2, 1, 3).reshape(T * NT, J * Q8B)
    return np.ascontiguousarray(q if padded else q[:N, :K])


def pack_q8_scales(scales: np.ndarray) -> np.ndarray:
    """scales f32 [N, 1] or [N] -> f32 [Npad] (padding 0)."""
    s = np.asarray(scales, np.float32).reshape(-1)
    out = np.zeros(padded_n(s.size), np.float32)
    out[:s.size] = s
    return out


def unpack_q8_scales(packed: np.ndarray, N: int, padded: bool = False) -> np.ndarray:
    """Inverse of `pack_q8_scales`: f32 [N, 1] (or [Npad] with `padded`)."""
    p = np.asarray(packed, np.float32).reshape(-1)
    if p.size != padded_n(N):
        raise ValueError(f"packed q8 scales have {p.size} entries, expected {padded_n(N)} for N={N}")
    return p.copy() if padded else p[:N].reshape(N, 1).copy()
