"""The arm kernel list and kernel selection.

`VARIANTS` is the one list of every kernel the arm backend emits (codegen, CMake and the tests under
qemu all read it). Two kinds:
- the portable variants every CPU backend shares (`codegen/families: PORTABLE`, rendered from
  `codegen/templates/common/`: scalar elementwise, linear algebra, LLM ops, and the naive / unroll /
  threads quantized linear kernels), with the arm packed-block sizes in their context;
- NEON variants (`codegen/templates/arm/<family>-neon.cpp.j2`) for the hot families. Their optional
  Armv8.2 paths (dotprod, i8mm, fp16) are chosen at run time (runtime/tcc_arm.h).

The families themselves (signatures, op domains, portable C expressions) are the target-neutral
`codegen/families/` package; this backend extends their contexts for arm specs (here: the packed block
sizes and qlinear tiles; backends/arm/kernels_neon.py: the NEON expressions and f32 tiles).
"""
from __future__ import annotations

from ...codegen import families
from ...codegen.families.quant import QLINEAR_W4A16_PORTABLE
from ...codegen.kernels import KernelSpec, extended_context, register_target_context
from . import kernels_neon
from .packing import KB, KPAD, NT, Q8B

TARGET = "arm"
# w4a16 (fp16 arithmetic) is arm's own scheme: x86 refuses it, so only arm emits its kernels.
QLINEAR_FAMILIES = (*families.quant.QLINEAR_FAMILIES, "qlinear_w4a16")
# NEON kernels: (family, params) for each (the f32 ones: backends/arm/kernels_neon.py).
NEON = [("quantize_acts", {}), *(("norm_quantize", {"op": op, "dtype": "f32"}) for op in families.quant.NORM_OPS),
        ("qlinear_w4a8", {}), ("qlinear_w8a8", {}), ("qlinear_w4a32", {}), ("qlinear_w4a16", {}),
        *kernels_neon.NEON_F32]

# NEON qlinear tiling (32 x 128-bit registers). w4a8 decode (M = 1): a GEMV over one 4-column tile at a
# time, one exact int32x4 of (q - z) * xq lanes per column, scaled per group in f32 without horizontal sums
# (qlinear_w4a8-neon.cpp.j2: gemv_*). GEMM (prefill, and every M of the other families): rows are processed
# MR at a time against one tile, so each unpacked weight vector feeds MR dots; the 4 per-column sums of a
# group reduce into one int32x4 with two pairwise adds and are scaled with the tile's 4 scales at once.
GEMM_MR = 4
# i8mm (smmla, M >= 2): MMLA_PAIRS row pairs share each tile's interleaved weight vectors; per 16 k of a pair
# 2 smmla per column pair. 4 pairs = 8 rows: 8 accumulators + 8 weight + 4 activation vectors.
MMLA_PAIRS = 4


def _qlinear_tiles(spec: KernelSpec) -> dict:
    return {"NT": NT, "KB": KB, "Q8B": Q8B, "KPAD": KPAD,
            "Q4_QUAD": False,  # one q4 layout for every arm kernel
            "GEMM_MR": GEMM_MR, "MMLA_PAIRS": MMLA_PAIRS}


for _family in (*QLINEAR_FAMILIES, "qgather"):  # qgather: a tied table read from a QLinear's packed weights
    register_target_context(TARGET, _family, extended_context(_family, _qlinear_tiles))
for _family in ("quantize_acts", "norm_quantize"):
    register_target_context(TARGET, _family, extended_context(_family, lambda spec: {"KPAD": KPAD}))


def _variants() -> list[KernelSpec]:
    portable = families.specs(TARGET, families.PORTABLE + families.llm.TIED_TABLES)
    portable += [KernelSpec.make(TARGET, "qlinear_w4a16", v) for v in QLINEAR_W4A16_PORTABLE]
    neon = [KernelSpec.make(TARGET, family, "neon", **params) for family, params in NEON]
    return portable + neon


VARIANTS: list[KernelSpec] = _variants()

# Preferred variant when several implement the same (family, params).
VARIANT_PREFERENCE = ("neon", "threads", "scalar", "unroll", "naive")

_by_key: dict[tuple, dict[str, KernelSpec]] = {}
for _spec in VARIANTS:
    _by_key.setdefault((_spec.family, _spec.params), {})[_spec.variant] = _spec


def select(family: str, variant: str | None = None, **params) -> KernelSpec | None:
    """The kernel for (family, params): the requested variant, else the preferred one; None if none."""
    choices = _by_key.get((family, tuple(sorted(params.items()))))
    if not choices:
        return None
    if variant is not None:
        return choices.get(variant)
    for name in VARIANT_PREFERENCE:
        if name in choices:
            return choices[name]
    return next(iter(choices.values()))
