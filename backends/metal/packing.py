"""The Metal backend's packed constants: `pack(kind, array) -> (layout name, packed array)`.

Layouts (docs/formats.md, "Metal"); each is read by a kernel of backends/metal/kernels.py:

metal_q4_simd32 (kind q4_weight; int4 codes q u8 [N, K] of quantize_int4, values 0..15)
    uint32 [N, KW], KW = 4 * ceil(K / 32): output column n's codes are contiguous, 8 codes per 32-bit word in
    order (code k = 8j + i in bits 4i..4i+3 of word j), so lane l of a 32-wide SIMD-group reads the 32 codes
    k = 32l .. 32l + 31 of its column's current 1024-code chunk as one 16-byte uint4 load, and the SIMD-group
    reads 512 contiguous bytes per step. A lane's 32 codes lie in one quantization group (the group size is a
    multiple of 32), so it applies one scale and zero point. K is padded to a multiple of 32 with code 8 (the
    kernel masks k >= K).
metal_q4_scales_f16 (kind q4_scales; f32 [N, G] scales holding fp16 values): fp16 bits [N, G].
metal_q4_zeros_u8 (kind q4_zeros; u8 [N, G] zero points 0..15): as is (absent: 8, the symmetric form).
metal_q4_rows / metal_f16_scales / metal_q8_rows (kinds q4_rows, q4_row_scales, q8_rows): the CPU's row tables
    of codegen/families/packing.py as they are (qgather reads whole rows).
metal_f16_kn / metal_f32_kn (kinds gemm_f16, gemm_f32: a Linear weight B [K, N]): fp16 / f32 [K, N] as is: the
    GEMM stages 16-row tiles of B through threadgroup memory (edges zero-filled there), so it needs no padding.
"""
from __future__ import annotations

import numpy as np

from ...codegen.families import packing

Q4_CHUNK = 32  # codes per lane and load (one uint4) along K


def q4_words(K: int) -> int:
    """Words per column of metal_q4_simd32."""
    return 4 * -(-K // Q4_CHUNK)


def pack_q4_weight(q: np.ndarray) -> np.ndarray:
    """q u8 [N, K] (0..15) -> uint32 [N, q4_words(K)] (metal_q4_simd32)."""
    return packing.pack_q4_words(q, Q4_CHUNK)


def unpack_q4_weight(words: np.ndarray, K: int) -> np.ndarray:
    """Inverse of pack_q4_weight: the u8 [N, K] codes."""
    return packing.unpack_q4_words(words, K)


def pack(kind: str, array: np.ndarray):
    """Reorder a constant for the Metal kernel that reads it: returns (layout name, packed array)."""
    if kind in ("gemm_f16", "gemm_f32"):
        b = np.asarray(array)
        if b.ndim != 2:
            raise ValueError(f"gemm weights must be [K, N], got shape {b.shape}")
        dtype = np.float16 if kind == "gemm_f16" else np.float32
        with np.errstate(over="ignore"):
            return f"metal_{kind[-3:]}_kn", np.ascontiguousarray(b.astype(dtype))
    if kind == "q4_weight":
        return "metal_q4_simd32", pack_q4_weight(array)
    if kind in ("q4_scales", "q4_row_scales"):
        name = "metal_q4_scales_f16" if kind == "q4_scales" else "metal_f16_scales"
        return name, packing.pack_f16_scales(np.asarray(array, np.float32))
    if kind == "q4_zeros":
        return "metal_q4_zeros_u8", np.ascontiguousarray(array, np.uint8)
    if kind == "q4_rows":
        return "metal_q4_rows", packing.pack_q4_rows(array)
    if kind == "q8_rows":
        return "metal_q8_rows", np.ascontiguousarray(array, np.int8)
    raise KeyError(f"metal backend has no packing for {kind!r}")
