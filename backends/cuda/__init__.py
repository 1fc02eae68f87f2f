"""The CUDA backend: fp16 and W4A16 programs for NVIDIA GPUs (sm_80+), run on a GPU or under the CPU SIMT
emulator (docs/cuda.md)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def backend(cuda_arch: str | None = None):
    from .. import Backend
    from . import kernels, packing, target

    return Backend("cuda", target.make_target(cuda_arch), kernels.select, packing.pack, tuple(kernels.VARIANTS))
