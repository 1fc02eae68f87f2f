"""The quantized Linear families: activation quantization (quantize_acts, norm_quantize) and the qlinear
families.

Contracts: docs/kernels.md (signatures, variants) and docs/formats.md (packed weight layouts, the
activation quantization contract); the arithmetic is `ir/ops/quant.py`.

- quantize_acts: x f32 -> (xq i8 rows padded to the target's K block, xs, xsum), bit-exact with
  `quantize_activations`.
- qlinear_w4a8: int4 weights x int8 activations per row and group.
- qlinear_w4a32: int4 weights x f32 activations (the weight is dequantized in registers).
- qlinear_w8a8: int8 per-channel weights x int8 activations per row and group (the group's int32 sum times
  its activation scale).
- qlinear_w4a16: int4 weights x f32 activations rounded to fp16, fp16 arithmetic (the signature of w4a32).

The packed layouts differ per target (column tile NT, K block KB, q8 chunk Q8B, padding KPAD: x86's in
backends/x86/packing_quant.py, arm's in backends/arm/packing.py), so every backend extends these contexts
with its own (`register_target_context`); the contexts here hold only what the portable templates of
every target share. Each qlinear family's portable variants (`QLINEAR_PORTABLE`) are the first steps of
an optimization ablation (efficientml.ai lab 4 style): naive (scalar, one output at a time), unroll
(scalar, UNROLL columns share each activation load), threads (naive split over column tiles with the pool).
"""
from __future__ import annotations

from ..kernels import KernelFamily, KernelSpec, register_family
from .elementwise import GRAIN_CHEAP

QUANTIZE_ACTS_SIGNATURE = (
    "void {name}(const float* x, int64_t ldx, int8_t* xq, int64_t ldq, float* xs, int32_t* xsum, "
    "int64_t M, int64_t K, int64_t group, int32_t per_tensor, tcc_exec* exec)"
)
QLINEAR_W4A8_SIGNATURE = (
    "void {name}(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t ldq, const uint8_t* w, "
    "const uint16_t* ws, const uint8_t* wz, const float* bias, float* y, int64_t ldy, int64_t M, int64_t N, "
    "int64_t K, int64_t group, tcc_exec* exec)"
)
QLINEAR_W4A32_SIGNATURE = (
    "void {name}(const float* x, int64_t ldx, const uint8_t* w, const uint16_t* ws, const uint8_t* wz, "
    "const float* bias, float* y, int64_t ldy, int64_t M, int64_t N, int64_t K, int64_t group, tcc_exec* exec)"
)
# w4a16: w4a32's operands with the activations, bias and output of type T (f32 on the CPUs, which round x to
# fp16 inside the kernel; fp16 on the GPUs).
QLINEAR_W4A16_SIGNATURE = QLINEAR_W4A32_SIGNATURE.replace("float*", "{T}*")
# w8a8: xs and xsum [M][G] per row and activation group (G = ceil(K / group)), ws one scale per column.
QLINEAR_W8A8_SIGNATURE = (
    "void {name}(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t ldq, const int8_t* w, "
    "const float* ws, const float* bias, float* y, int64_t ldy, int64_t M, int64_t N, int64_t K, int64_t group, "
    "tcc_exec* exec)"
)

NORM_QUANTIZE_SIGNATURE = (
    "void {name}(const float* x, const float* gamma, const float* beta, int8_t* xq, int64_t ldq, float* xs, "
    "int32_t* xsum, int64_t rows, int64_t cols, float eps, int64_t group, tcc_exec* exec)"
)

# The qlinear families every CPU backend emits; w4a16 (fp16 arithmetic) only where the target offers that
# scheme (arm; x86 refuses --qm w4a16).
QLINEAR_FAMILIES = ("qlinear_w4a8", "qlinear_w4a32", "qlinear_w8a8")
QLINEAR_PORTABLE = ("naive", "unroll", "threads")
QLINEAR_W4A16_PORTABLE = ("naive", "threads")
NORM_OPS = ("layernorm", "rmsnorm")

# Multiply-adds per parallel chunk below which threading costs more than it saves.
MIN_PARALLEL_MACS = 1 << 17
# Elements per parallel chunk for quantize_acts (a 1 x 4096 decode row stays on the calling thread).
QUANT_GRAIN_ELEMS = 1 << 14


def _qlinear_context(spec: KernelSpec) -> dict:
    return {"UNROLL": 4, "MIN_PARALLEL_MACS": MIN_PARALLEL_MACS}


register_family(KernelFamily(
    "quantize_acts", QUANTIZE_ACTS_SIGNATURE, lambda spec: {"GRAIN_ELEMS": QUANT_GRAIN_ELEMS},
    doc="int8 activations per row and group (or per tensor) with scales and group sums, rows padded to the "
        "target's K block"))
register_family(KernelFamily(
    "norm_quantize", NORM_QUANTIZE_SIGNATURE,
    lambda spec: {"rms": spec.param("op") == "rmsnorm", "grain": GRAIN_CHEAP},
    doc="layernorm / rmsnorm per row fused with int8 activations per row and group (passes/fuse_norm_quantize.py)"))
# The quantized Linear families: (name, C signature, what y is). w4a16 shares w4a32's operands.
QLINEAR_SIGNATURES = (
    ("qlinear_w4a8", QLINEAR_W4A8_SIGNATURE,
     "y = int8 activations (per row and group) x packed int4 weights (per group scale / zero) + bias"),
    ("qlinear_w4a32", QLINEAR_W4A32_SIGNATURE,
     "y = f32 activations x packed int4 weights dequantized in registers + bias"),
    ("qlinear_w8a8", QLINEAR_W8A8_SIGNATURE,
     "y = int8 activations (per row and group) x packed int8 per-channel weights + bias"),
    ("qlinear_w4a16", QLINEAR_W4A16_SIGNATURE,
     "y = activations (f32 on the CPUs) rounded to fp16 x packed int4 weights dequantized to fp16, fp16 products and block "
     "sums (ir/ops/quant.py, act f16) + bias"),
)
for _name, _signature, _doc in QLINEAR_SIGNATURES:
    register_family(KernelFamily(_name, _signature, _qlinear_context, doc=_doc))

# The portable kernels every CPU backend emits.
PORTABLE: list[tuple[str, str, dict]] = [
    ("quantize_acts", "scalar", {}),
    *(("norm_quantize", "scalar", {"op": op, "dtype": "f32"}) for op in NORM_OPS),
    *((family, variant, {}) for family in QLINEAR_FAMILIES for variant in QLINEAR_PORTABLE),
]
