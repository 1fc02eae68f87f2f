"""The x86-64 backend: AVX2 + FMA kernels with portable scalar fallbacks."""
from __future__ import annotations

import functools

import numpy as np


def pack(kind: str, array: np.ndarray):
    """Reorder a constant for the kernel that reads it: returns (layout name, packed array)."""
    from ...codegen.families import packing  # the portable f32 panel and row-table layouts
    from . import packing_quant as pq

    if kind == "gemm_f32":
        return f"x86_f32_panel{packing.NR}", packing.pack_f32_panels(np.asarray(array, np.float32))
    # Quantized Linear weights (docs/formats.md): int4 codes / fp16 scales / zero points of quantize_int4,
    # int8 codes / scales of quantize_int8.
    # int4 weights, f32 (qlinear_w4a32) or int8 activations (qlinear_w4a8): one k-quad-major layout, whose
    # dwords hold 8 codes of one column (w4a32 dequantizes them in place, w4a8 dots their nibble planes).
    if kind in ("q4_weight", "q4_weight_i8"):
        return pq.q4_quad_layout_name(), pq.pack_q4_quad(array)
    if kind == "q4_scales":
        return pq.q4_scales_layout_name(), pq.pack_q4_scales(array)
    if kind == "q4_zeros":
        return pq.q4_zeros_layout_name(), pq.pack_q4_zeros(array)
    if kind == "q8_weight":
        return pq.q8_layout_name(), pq.pack_q8(array)
    if kind == "q8_scales":
        return pq.q8_scales_layout_name(), pq.pack_q8_scales(array)
    # Quantized tables read a row at a time (QGather): codegen/families/packing.py.
    if kind == "q4_rows":
        return "x86_q4_rows", packing.pack_q4_rows(array)
    if kind == "q4_row_scales":
        return "x86_f16_scales", packing.pack_f16_scales(array)
    if kind == "q8_rows":
        return "x86_q8_rows", np.ascontiguousarray(array, np.int8)
    raise KeyError(f"x86 backend has no packing for {kind!r}")


@functools.lru_cache(maxsize=None)
def backend():
    from .. import Backend
    from . import kernels, target, tuning

    return Backend("x86", target.TARGET, kernels.select, pack, tuple(kernels.VARIANTS), tuner=tuning)
