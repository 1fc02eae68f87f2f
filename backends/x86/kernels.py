"""The x86 kernel list and kernel selection.

`VARIANTS` is the one list of every kernel the x86 backend can emit: codegen renders the ones a model
selects, and the kernel tests render and test all of them. The families are the target-neutral
`codegen/families/` package; the modules here add x86's own parts per family group (AVX2 expressions,
tile and packed block sizes) and list its kernels.
"""
from __future__ import annotations

from ...codegen.kernels import KernelSpec
from . import kernels_elementwise, kernels_kv, kernels_llm, kernels_linalg, kernels_quant

TARGET = "x86"
VARIANTS: list[KernelSpec] = [*kernels_linalg.VARIANTS, *kernels_elementwise.VARIANTS, *kernels_llm.VARIANTS, *kernels_kv.VARIANTS,
                               *kernels_quant.VARIANTS]

# Preferred variant order when several implement the same (family, params): "all" is the fastest of the
# qlinear ablation variants (naive, unroll, threads, simd, all), which stay selectable by name.
VARIANT_PREFERENCE = ("all", "avx2", "scalar")

_by_key: dict[tuple, dict[str, KernelSpec]] = {}
for _spec in VARIANTS:
    _by_key.setdefault((_spec.family, _spec.params), {})[_spec.variant] = _spec


def select(family: str, variant: str | None = None, **params) -> KernelSpec | None:
    """The kernel for (family, params): the requested variant, else the fastest available; None if
    this backend has no kernel for it."""
    key = (family, tuple(sorted(params.items())))
    choices = _by_key.get(key)
    if not choices:
        return None
    if variant is not None:
        return choices.get(variant)
    for name in VARIANT_PREFERENCE:
        if name in choices:
            return choices[name]
    return next(iter(choices.values()))
