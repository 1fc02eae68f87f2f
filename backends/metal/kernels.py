"""The Metal kernel list and kernel selection (issue 18; docs/metal.md).

`VARIANTS` is the one list of every kernel the Metal backend can emit (one variant, "metal", per family and
params): tests/metal renders every one, type-checks it with clang through tcc's MSL shim and runs it on the
SIMT emulator against its numpy reference. Templates are `codegen/templates/metal/<family>-metal.metal.j2`;
a rendered file holds the MSL kernels (TCC_METAL_DEVICE_CODE) and the launcher with the family's C signature
(TCC_METAL_HOST_CODE), and backends/metal/msl.py adds the emulator's entries.

Families so far: norm (rmsnorm, layernorm), softmax, binary (float arithmetic), qlinear_w4a16 (fp16
activations), qlinear_w4a32 (f32 activations), gemm (fp16, simdgroup_matrix) and kvattention (decode and
prefill over an in-place KV cache with RoPE, GQA, sliding window / ring cache, ALiBi, softcap).
"""
from __future__ import annotations

from ...codegen.kernels import SOURCE_FINISHERS, KernelSpec, extended_context, register_target_context
from . import msl

TARGET = "metal"
VARIANT = "metal"

SOURCE_FINISHERS.setdefault(".metal", msl.finish_source)

# Row kernels (norm, softmax over a contiguous row): threads per threadgroup by row length.
ROW_THREADS_MAX = 256
# Element-wise kernels: threads per threadgroup.
ELEM_THREADS = 256
# qlinear GEMV: output columns (SIMD-groups) per threadgroup; rows sharing each weight load.
GEMV_SIMDGROUPS = 4
GEMV_ROWS = 8
# gemm: a threadgroup of 4 SIMD-groups computes a 32 x 32 tile of C (each SIMD-group 16 x 16: 2 x 2
# simdgroup_matrix 8 x 8 accumulators) over K steps of 16 staged in threadgroup memory.
GEMM_TILE = dict(BM=32, BN=32, BK=16, GEMM_THREADS=128)

_MTYPE = {"f32": "float", "f16": "half"}


def _float_context(spec: KernelSpec) -> dict:
    dt = spec.param("dtype", "f32")
    return dict(MT=_MTYPE[dt], f16=dt == "f16", ROW_THREADS_MAX=ROW_THREADS_MAX, ELEM_THREADS=ELEM_THREADS)


def _qlinear_context(spec: KernelSpec) -> dict:
    act = "half" if spec.family == "qlinear_w4a16" else "float"
    return dict(MT=act, HT="uint16_t" if act == "half" else "float", GEMV_SIMDGROUPS=GEMV_SIMDGROUPS,
                GEMV_ROWS=GEMV_ROWS)


# kvattention: head dimensions up to MAX_D (a lane holds D / 32 query and output values).
MAX_D = 256


def _kv_context(spec: KernelSpec) -> dict:
    return {**_float_context(spec), "MAX_D": MAX_D}


def _gemm_context(spec: KernelSpec) -> dict:
    return dict(GEMM_TILE, MT="half")


# binary: float arithmetic in float, rounded once to the element type.
BINARY_OPS = {"add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b", "max": "tcc_maxf(a, b)",
              "min": "tcc_minf(a, b)", "pow": "tcc_powf(a, b)"}


def _binary_context(spec: KernelSpec) -> dict:
    """The family's own context covers f32 and the integer types only: the float ops' context in full here."""
    from ...codegen.families.elementwise import CTYPE

    ctype = CTYPE[spec.param("dtype")]
    return {**_float_context(spec), "T": ctype, "OUT": ctype, "expr": BINARY_OPS[spec.param("op")]}


for _family in ("norm", "softmax"):
    register_target_context(TARGET, _family, extended_context(_family, _float_context))
register_target_context(TARGET, "binary", _binary_context)
for _family in ("qlinear_w4a16", "qlinear_w4a32"):
    register_target_context(TARGET, _family, extended_context(_family, _qlinear_context))
register_target_context(TARGET, "gemm", extended_context("gemm", _gemm_context))
register_target_context(TARGET, "kvattention", extended_context("kvattention", _kv_context))

DTYPES = ("f16", "f32")
VARIANTS: list[KernelSpec] = [
    *(KernelSpec.make(TARGET, "norm", VARIANT, op=op, dtype=d) for op in ("layernorm", "rmsnorm") for d in DTYPES),
    *(KernelSpec.make(TARGET, "softmax", VARIANT, op=op, dtype=d) for op in ("softmax", "logsoftmax")
      for d in DTYPES),
    *(KernelSpec.make(TARGET, "binary", VARIANT, op=op, dtype=d) for op in BINARY_OPS for d in DTYPES),
    KernelSpec.make(TARGET, "qlinear_w4a16", VARIANT, dtype="f16"),
    KernelSpec.make(TARGET, "qlinear_w4a32", VARIANT),
    KernelSpec.make(TARGET, "gemm", VARIANT, dtype="f16"),
    *(KernelSpec.make(TARGET, "kvattention", VARIANT, dtype=d) for d in DTYPES),
]

_by_key: dict[tuple, KernelSpec] = {(s.family, s.params): s for s in VARIANTS}


def select(family: str, variant: str | None = None, **params) -> KernelSpec | None:
    """The kernel for (family, params); None if the Metal backend has none (the compile then refuses the op)."""
    spec = _by_key.get((family, tuple(sorted(params.items()))))
    if spec is None or (variant is not None and spec.variant != variant):
        return None
    return spec
