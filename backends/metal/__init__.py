"""The Metal backend: fp16, W4A16 and W4A32 kernels for Apple GPUs in Metal Shading Language, type-checked with
clang through tcc's MSL shim and run on Linux by the CPU SIMT emulator (docs/metal.md)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def backend():
    from .. import Backend
    from . import kernels, packing, target

    return Backend("metal", target.TARGET, kernels.select, packing.pack, tuple(kernels.VARIANTS))
