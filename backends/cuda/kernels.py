"""The CUDA kernel list and kernel selection.

`VARIANTS` is the one list of every kernel the CUDA backend can emit (one variant, "cuda", per family and
params): codegen renders the ones a model selects, and tests/cuda renders, compiles (nvcc, sm_80/sm_90) and
runs (the SIMT emulator) all of them. The families are the target-neutral `codegen/families/` package; the
modules here add the CUDA templates' contexts per family group and list their kernels.
"""
from __future__ import annotations

from ...codegen.kernels import KernelSpec
from . import kernels_attention, kernels_elementwise, kernels_linalg

TARGET = "cuda"
VARIANTS: list[KernelSpec] = [*kernels_linalg.VARIANTS, *kernels_attention.VARIANTS, *kernels_elementwise.VARIANTS]

_by_key: dict[tuple, KernelSpec] = {}
for _spec in VARIANTS:
    _by_key[(_spec.family, _spec.params)] = _spec


def select(family: str, variant: str | None = None, **params) -> KernelSpec | None:
    """The kernel for (family, params); None if the CUDA backend has none (the compile then refuses the op
    in one line: a CUDA program never falls back to the CPU)."""
    spec = _by_key.get((family, tuple(sorted(params.items()))))
    if spec is None or (variant is not None and spec.variant != variant):
        return None
    return spec
