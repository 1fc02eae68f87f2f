"""The x86-64 backend: AVX2 + FMA kernels with portable scalar fallbacks."""
from __future__ import annotations

import functools

import numpy as np


def pack(kind: str, array: np.ndarray):
    """Reorder a constant for the kernel that reads it: returns (layout name, packed array)."""
    from . import packing

    if kind == "gemm_f32":
        return f"x86_f32_panel{packing.NR}", packing.pack_f32_panels(np.asarray(array, np.float32))
    raise KeyError(f"x86 backend has no packing for {kind!r}")


@functools.lru_cache(maxsize=None)
def backend():
    from .. import Backend
    from . import kernels, target

    return Backend("x86", target.TARGET, kernels.select, pack, tuple(kernels.VARIANTS))
