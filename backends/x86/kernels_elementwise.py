"""x86 kernels of the elementwise and data-movement families (codegen/families/elementwise.py): the AVX2
expressions of the `avx2` variants and the x86 kernel list.

The families, their op domains and scalar C expressions are target-neutral (codegen/families/elementwise.py);
this module extends their contexts, for x86 specs, with the AVX2 form of each op, which the templates in
`codegen/templates/x86/<family>-avx2.cpp.j2` substitute (the AVX2 vector math, `tcc::avx2::exp_ps`, ...,
is in `runtime/tcc_math_avx2.h`).

x86 emits the portable `scalar` variant of every family and an `avx2` variant over the family's vector
domain (`VECTOR_DOMAINS`: f32 ops, the f32 <-> f16 casts, every copy); gather, range, trilu and fill are
scalar only.
"""
from __future__ import annotations

from ...codegen.families.elementwise import SCALAR_DOMAINS, VECTOR_DOMAINS
from ...codegen.kernels import KernelSpec, extended_context, register_target_context

TARGET = "x86"

_CMP_AVX = {"equal": "_CMP_EQ_OQ", "less": "_CMP_LT_OQ", "less_equal": "_CMP_LE_OQ",
            "greater": "_CMP_GT_OQ", "greater_equal": "_CMP_GE_OQ"}  # ordered: NaN compares false


def _binary_vector(op: str) -> str | None:
    """AVX2 expression on __m256 a, b; None where the op has no vector form (mod: per-lane fmodf)."""
    if op in _CMP_AVX:
        return f"_mm256_cmp_ps(a, b, {_CMP_AVX[op]})"
    return {"add": "_mm256_add_ps(a, b)", "sub": "_mm256_sub_ps(a, b)", "mul": "_mm256_mul_ps(a, b)",
            "div": "_mm256_div_ps(a, b)", "pow": "tcc::avx2::pow_ps(a, b)",
            "max": "tcc::avx2::max_ps(a, b)", "min": "tcc::avx2::min_ps(a, b)"}.get(op)


_UNARY_AVX = {
    "neg": "_mm256_xor_ps(x, _mm256_set1_ps(-0.0f))", "abs": "tcc::avx2::abs_ps(x)",
    "exp": "tcc::avx2::exp_ps(x)", "log": "tcc::avx2::log_ps(x)", "sqrt": "_mm256_sqrt_ps(x)",
    "reciprocal": "_mm256_div_ps(_mm256_set1_ps(1.0f), x)", "erf": "tcc::avx2::erf_ps(x)",
    "tanh": "tcc::avx2::tanh_ps(x)", "sigmoid": "tcc::avx2::sigmoid_ps(x)",
    # max/min return their second operand when either is NaN: x second keeps NaN.
    "relu": "_mm256_max_ps(_mm256_setzero_ps(), x)",
    "gelu_erf": "tcc::avx2::gelu_erf_ps(x)", "gelu_tanh": "tcc::avx2::gelu_tanh_ps(x)",
    "silu": "tcc::avx2::silu_ps(x)", "clip": "_mm256_min_ps(vhi, _mm256_max_ps(vlo, x))",
    "floor": "_mm256_round_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)",
    "ceil": "_mm256_round_ps(x, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC)",
    "sin": "tcc::avx2::sin_ps(x)", "cos": "tcc::avx2::cos_ps(x)", "identity": "x",
    # 1 where x > 0, -1 where x < 0, x itself otherwise (keeps +-0 and NaN, like numpy)
    "sign": ("_mm256_blendv_ps(_mm256_blendv_ps(x, _mm256_set1_ps(-1.0f), _mm256_cmp_ps(x, _mm256_setzero_ps(), "
             "_CMP_LT_OQ)), _mm256_set1_ps(1.0f), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ))"),
}
_REDUCE_AVX = {"sum": "_mm256_add_ps(acc, v)", "mean": "_mm256_add_ps(acc, v)", "prod": "_mm256_mul_ps(acc, v)",
               "max": "tcc::avx2::max_ps(acc, v)", "min": "tcc::avx2::min_ps(acc, v)"}


def _is_f32(spec: KernelSpec) -> bool:
    return spec.param("dtype") == "f32"


register_target_context(TARGET, "binary", extended_context("binary", lambda spec: {
    "vector_expr": _binary_vector(spec.param("op")) if _is_f32(spec) else None}))
register_target_context(TARGET, "unary", extended_context("unary", lambda spec: {
    "vector_expr": _UNARY_AVX[spec.param("op")] if _is_f32(spec) else None}))
register_target_context(TARGET, "reduce", extended_context("reduce", lambda spec: {
    "vector_combine": _REDUCE_AVX[spec.param("op")] if _is_f32(spec) else None}))


def _variants() -> list[KernelSpec]:
    # Each family's scalar kernels, then its avx2 ones.
    return [KernelSpec.make(TARGET, family, variant, **params)
            for family, domain in SCALAR_DOMAINS.items()
            for variant, params_list in (("scalar", domain), ("avx2", VECTOR_DOMAINS.get(family, [])))
            for params in params_list]


VARIANTS: list[KernelSpec] = _variants()
