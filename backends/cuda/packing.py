"""The CUDA backend's packed constants: `pack(kind, array) -> (layout name, packed array)`.

Layouts (docs/formats.md, "CUDA"); every one is read by backends/cuda/kernels_linalg.py's kernels:

cuda_q4_n32k (kind q4_weight; int4 codes q u8 [N, K] of quantize_int4, values 0..15)
    uint32 [N, KW], KW = 4 * ceil(K / 32): output column n's K codes are contiguous, 8 codes per 32-bit
    word, so a thread reads 32 codes of one column with one 128-bit load and a warp reads 512 contiguous
    bytes of a column. Word j of column n holds k = 8j .. 8j+7 interleaved for the fp16 magic-number
    dequantization (each half of the word is one fp16 lane):
        bits  0- 3: k0   bits 16-19: k1      (w & 0x000F000F)        | 0x64006400 = half2(1024+k0, 1024+k1)
        bits  4- 7: k2   bits 20-23: k3      (w & 0x00F000F0)        | 0x64006400 = half2(1024+16k2, 1024+16k3)
        bits  8-11: k4   bits 24-27: k5      (w >> 8) & 0x000F000F   | 0x64006400 = half2(1024+k4, 1024+k5)
        bits 12-15: k6   bits 28-31: k7      ((w >> 8) & 0x00F000F0) | 0x64006400 = half2(1024+16k6, 1024+16k7)
    K is padded to a multiple of 32 with code 8 (the kernels read zero activations there).
cuda_q4_scales_f16 (kind q4_scales; f32 [N, G] scales holding fp16 values): fp16 bits [N, G] as is.
cuda_q4_zeros_u8 (kind q4_zeros; u8 [N, G] zero points 0..15): as is (absent: 8, the symmetric form).
cuda_f16_nk8 (kind gemm_f16; a Linear weight B [K, N], f16 or f32): fp16 [N, Kp], Kp = 8 * ceil(K / 8):
    B transposed so a column's K values are contiguous (16-byte rows of 8), zero padded to Kp; the GEMV
    path reads 8 values of a column per 128-bit load, the tensor-core path 16-byte chunks of B tiles.
cuda_q4_rows / cuda_f16_scales / cuda_q8_rows (kinds q4_rows, q4_row_scales, q8_rows): the CPU's row
    tables of codegen/families/packing.py as they are (a gather reads whole rows; byte loads suffice).
"""
from __future__ import annotations

import numpy as np

from ...codegen.families import packing

Q4_CHUNK = 32  # codes per 128-bit load (4 words) along K: the padding of cuda_q4_n32k
F16_KPAD = 8  # fp16 values per 16-byte chunk: the K padding of cuda_f16_nk8
# The position (0..7) of code k0+i in its word's nibble order: nibble slot s holds bits 4s..4s+3.
_NIBBLE_OF = np.array([0, 4, 1, 5, 2, 6, 3, 7])


def q4_words(K: int) -> int:
    """Words per column of cuda_q4_n32k."""
    return 4 * -(-K // Q4_CHUNK)


def pack_q4_weight(q: np.ndarray) -> np.ndarray:
    """q u8 [N, K] (0..15) -> uint32 [N, q4_words(K)] (cuda_q4_n32k)."""
    return packing.pack_q4_words(q, Q4_CHUNK, nibble_of=_NIBBLE_OF)


def unpack_q4_weight(words: np.ndarray, K: int) -> np.ndarray:
    """Inverse of pack_q4_weight: the u8 [N, K] codes."""
    return packing.unpack_q4_words(words, K, nibble_of=_NIBBLE_OF)


def pack_gemm_f16(b: np.ndarray) -> np.ndarray:
    """B [K, N] -> fp16 [N, Kp] (cuda_f16_nk8)."""
    b = np.asarray(b)
    if b.ndim != 2:
        raise ValueError(f"gemm weights must be [K, N], got shape {b.shape}")
    k, n = b.shape
    kp = -(-k // F16_KPAD) * F16_KPAD
    out = np.zeros((n, kp), np.float16)
    with np.errstate(over="ignore"):
        out[:, :k] = b.T.astype(np.float16)
    return out


def pack(kind: str, array: np.ndarray):
    """Reorder a constant for the CUDA kernel that reads it: returns (layout name, packed array)."""
    if kind == "gemm_f16":
        return "cuda_f16_nk8", pack_gemm_f16(array)
    if kind == "q4_weight":
        return "cuda_q4_n32k", pack_q4_weight(array)
    if kind in ("q4_scales", "q4_row_scales"):
        name = "cuda_q4_scales_f16" if kind == "q4_scales" else "cuda_f16_scales"
        return name, packing.pack_f16_scales(np.asarray(array, np.float32))
    if kind == "q4_zeros":
        return "cuda_q4_zeros_u8", np.ascontiguousarray(array, np.uint8)
    if kind == "q4_rows":
        return "cuda_q4_rows", packing.pack_q4_rows(array)
    if kind == "q8_rows":
        return "cuda_q8_rows", np.ascontiguousarray(array, np.int8)
    raise KeyError(f"cuda backend has no packing for {kind!r}")
