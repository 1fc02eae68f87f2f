"""The aarch64 backend: NEON kernels (dotprod / i8mm paths chosen at run time) with the portable scalar
kernels as fallbacks; cross-compiled from other hosts and runnable there under qemu (docs/arm.md)."""
from __future__ import annotations

import functools

import numpy as np


def pack(kind: str, array: np.ndarray):
    """Reorder a constant for the kernel that reads it: returns (layout name, packed array)."""
    from ...codegen.families import packing as portable  # the f32 panel and row-table layouts
    from . import packing as p

    if kind == "gemm_f32":
        return f"arm_f32_panel{portable.NR}", portable.pack_f32_panels(np.asarray(array, np.float32))
    if kind in ("q4_weight", "q4_weight_i8"):  # one layout for f32 and int8 activations
        return f"arm_q4_nt{p.NT}_kb{p.KB}", p.pack_q4(array)
    if kind == "q4_scales":
        return f"arm_q4_scales_f16_nt{p.NT}", p.pack_q4_scales(array)
    if kind == "q4_zeros":
        return f"arm_q4_zeros_nt{p.NT}", p.pack_q4_zeros(array)
    if kind == "q8_weight":
        return f"arm_q8_nt{p.NT}_kb{p.Q8B}", p.pack_q8(array)
    if kind == "q8_scales":
        return f"arm_q8_scales_nt{p.NT}", p.pack_q8_scales(array)
    if kind == "q4_rows":
        return "arm_q4_rows", portable.pack_q4_rows(array)
    if kind == "q4_row_scales":
        return "arm_f16_scales", portable.pack_f16_scales(array)
    if kind == "q8_rows":
        return "arm_q8_rows", np.ascontiguousarray(array, np.int8)
    raise KeyError(f"arm backend has no packing for {kind!r}")


@functools.cache
def backend(cpu: str | None = None):
    """The arm backend; `cpu` (--cpu) sets the baseline CPU (default: armv8-a)."""
    from .. import Backend
    from . import kernels, target

    tgt = target.make_target(cpu)
    return Backend("arm", tgt, kernels.select, pack, tuple(kernels.VARIANTS))
