"""The elementwise and data-movement families (docs/kernels.md): binary, where, unary, cast, reduce, softmax,
norm, copy, gather, range, trilu, fill.

The per-op logic lives here as scalar C expressions, which the portable `scalar` templates
(`codegen/templates/common/<family>-scalar.cpp.j2`) and the scalar tails of every vector template
substitute. Scalar helpers the expressions call (`tcc_idiv`, `tcc_f32_to_f16`, ...) are in
`codegen/templates/common/_scalar_ops.inc.j2`, the broadcasting N-d iteration in `_nd_iter.inc.j2`. A
backend's vector expressions (x86 AVX2: backends/x86/kernels_elementwise.py; arm NEON:
backends/arm/kernels_neon.py) extend these contexts for its own targets.

Which kernels exist:
  binary, where     scalar for every dtype; a vector variant for f32 (all ops, comparisons included)
  unary             scalar for every dtype; vector for f32
  cast              scalar for every pair; vector for f32 <-> f16
  reduce            scalar for f32 and i64; vector for f32
  softmax, norm     scalar and vector (f32 only)
  copy              scalar and vector (runs of contiguous elements become memcpy)
  gather, range, trilu, fill   scalar only: pure data movement or trivial loops, SIMD does not matter
(`SCALAR_DOMAINS` and `VECTOR_DOMAINS` at the bottom are the authority.)
"""
from __future__ import annotations

from typing import Any

from ..kernels import KernelFamily, KernelSpec, register_family

CTYPE = {"f32": "float", "f16": "uint16_t", "i64": "int64_t", "i32": "int32_t", "i8": "int8_t",
         "u8": "uint8_t", "bool": "uint8_t"}
UTYPE = {"i64": "uint64_t", "i32": "uint32_t", "i8": "uint8_t", "u8": "uint8_t"}  # wrap-around integer arithmetic (signed overflow is UB)
ESIZE_CTYPE = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}
INT_LIMITS = {"i64": ("INT64_MIN", "INT64_MAX"), "i32": ("INT32_MIN", "INT32_MAX")}

# Elements per parallel task: below this a task costs more to dispatch than it saves.
GRAIN_CHEAP = 1 << 14
GRAIN_TRANSCENDENTAL = 1 << 12

# ---------------------------------------------------------------------------------------------------
# binary

ARITH_OPS = ("add", "sub", "mul", "div", "pow", "max", "min", "mod")
COMPARE_OPS = ("equal", "less", "less_equal", "greater", "greater_equal")
LOGIC_OPS = ("and", "or", "xor")
BINARY_DOMAIN = ([{"op": op, "dtype": dt} for op in ARITH_OPS for dt in ("f32", "i64", "i32", "i8", "u8")]
                 + [{"op": op, "dtype": dt} for op in COMPARE_OPS for dt in ("f32", "i64", "i32", "i8", "u8", "bool")]
                 + [{"op": op, "dtype": "bool"} for op in LOGIC_OPS])

_CMP_C = {"equal": "==", "less": "<", "less_equal": "<=", "greater": ">", "greater_equal": ">="}


def _binary_scalar(op: str, dt: str) -> str:
    if op in _CMP_C:
        return f"(uint8_t)(a {_CMP_C[op]} b)"
    if op in LOGIC_OPS:
        return f"(uint8_t)((a != 0) {dict(zip(LOGIC_OPS, '&|^'))[op]} (b != 0))"
    if dt == "f32":
        return {"add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b", "pow": "tcc_powf(a, b)",
                "max": "tcc_maxf(a, b)", "min": "tcc_minf(a, b)", "mod": "fmodf(a, b)"}[op]
    t, u = CTYPE[dt], UTYPE[dt]
    wrap = {"add": "+", "sub": "-", "mul": "*"}
    if op in wrap:
        return f"({t})(({u})a {wrap[op]} ({u})b)"
    return {"div": "tcc_idiv(a, b)", "mod": "tcc_imod(a, b)", "pow": "tcc_ipow(a, b)",
            "max": "(a >= b ? a : b)", "min": "(a <= b ? a : b)"}[op]


def _binary_context(spec: KernelSpec) -> dict[str, Any]:
    op, dt = spec.param("op"), spec.param("dtype")
    bool_out = op in COMPARE_OPS or op in LOGIC_OPS
    return {"T": CTYPE[dt], "OUT": "uint8_t" if bool_out else CTYPE[dt], "bool_out": bool_out,
            "scalar_expr": _binary_scalar(op, dt), "grain": GRAIN_CHEAP}


register_family(KernelFamily(
    "binary",
    "void {name}(const {T}* a, const {T}* b, {OUT}* out, int32_t ndim, const int64_t* shape, "
    "const int64_t* a_strides, const int64_t* b_strides, tcc_exec* exec)",
    _binary_context, "elementwise a (op) b with broadcasting strides"))

# ---------------------------------------------------------------------------------------------------
# where

WHERE_DOMAIN = [{"dtype": dt} for dt in ("f32", "i64", "i32", "i8", "u8", "bool")]


register_family(KernelFamily(
    "where",
    "void {name}(const uint8_t* cond, const {T}* x, const {T}* y, {T}* out, int32_t ndim, "
    "const int64_t* shape, const int64_t* c_strides, const int64_t* x_strides, const int64_t* y_strides, "
    "tcc_exec* exec)",
    lambda spec: {"T": CTYPE[spec.param("dtype")], "grain": GRAIN_CHEAP},
    "out = cond ? x : y with broadcasting strides"))

# ---------------------------------------------------------------------------------------------------
# unary

UNARY_F32_OPS = ("neg", "abs", "exp", "log", "sqrt", "reciprocal", "erf", "tanh", "sigmoid", "relu",
                 "gelu_erf", "gelu_tanh", "silu", "clip", "floor", "ceil", "sin", "cos", "sign", "identity")
UNARY_INT_OPS = ("neg", "abs", "relu", "clip", "sign", "identity")
UNARY_UNSIGNED_OPS = ("relu", "clip", "sign", "identity")  # neg/abs make no sense on uint8
UNARY_BOOL_OPS = ("not", "identity")
UNARY_DOMAIN = ([{"op": op, "dtype": "f32"} for op in UNARY_F32_OPS]
                + [{"op": op, "dtype": dt} for op in UNARY_INT_OPS for dt in ("i64", "i32", "i8")]
                + [{"op": op, "dtype": "u8"} for op in UNARY_UNSIGNED_OPS]
                + [{"op": op, "dtype": "bool"} for op in UNARY_BOOL_OPS])
TRANSCENDENTAL = {"exp", "log", "erf", "tanh", "sigmoid", "gelu_erf", "gelu_tanh", "silu", "sin", "cos"}

# Scalar f32 forms: libm, except the activations, which are rearranged to avoid cancellation for x < 0
# (1 + erf -> erfc; 1 + tanh(u) -> 2 sigmoid(2u)) and evaluated in double: exp(-x) overflows float
# before x * sigmoid(x) leaves the normal range, and the rounding of a float 2u would be amplified by
# exp (the scalar kernels are the readable accuracy reference).
_UNARY_F32 = {
    "neg": "-x", "abs": "fabsf(x)", "exp": "expf(x)", "log": "logf(x)", "sqrt": "sqrtf(x)",
    "reciprocal": "1.0f / x", "erf": "erff(x)", "tanh": "tanhf(x)",
    "sigmoid": "(float)(1.0 / (1.0 + exp(-(double)x)))", "relu": "(x < 0.0f ? 0.0f : x)",
    "gelu_erf": "(float)(0.5 * x * erfc(-0.70710678118654752 * x))",
    "gelu_tanh": "(float)(x / (1.0 + exp(-1.5957691216057308 * x * (1.0 + 0.044715 * (double)x * x))))",
    "silu": "(float)(x / (1.0 + exp(-(double)x)))", "clip": "tcc_clip(x, lo, hi)", "sign": "(x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x))", "floor": "floorf(x)",
    "ceil": "ceilf(x)", "sin": "sinf(x)", "cos": "cosf(x)", "identity": "x",
}


def _unary_scalar(op: str, dt: str) -> str:
    if dt == "f32":
        return _UNARY_F32[op]
    if dt == "bool":
        return {"not": "(uint8_t)(x == 0)", "identity": "x"}[op]
    t, u = CTYPE[dt], UTYPE[dt]
    neg = f"({t})(({u})0 - ({u})x)"  # wraps at INT_MIN like numpy instead of UB
    return {"neg": neg, "abs": f"(x < 0 ? {neg} : x)", "relu": "(x < 0 ? 0 : x)",
            "clip": "tcc_clip(x, lo, hi)", "sign": f"({t})((x > 0) - (x < 0))", "identity": "x"}[op]


def _unary_bounds(op: str, dt: str) -> str:
    """C statements defining the clip bounds lo/hi from the float alpha/beta; empty for other ops."""
    if op != "clip":
        return ""
    if dt == "f32":
        return "const float lo = alpha, hi = beta;"
    t = CTYPE[dt]
    return f"const {t} lo = tcc_saturate<{t}>(alpha), hi = tcc_saturate<{t}>(beta);"


def _unary_context(spec: KernelSpec) -> dict[str, Any]:
    op, dt = spec.param("op"), spec.param("dtype")
    return {"T": CTYPE[dt], "scalar_expr": _unary_scalar(op, dt), "bounds": _unary_bounds(op, dt),
            "is_copy": op == "identity", "grain": GRAIN_TRANSCENDENTAL if op in TRANSCENDENTAL else GRAIN_CHEAP}


register_family(KernelFamily(
    "unary", "void {name}(const {T}* x, {T}* y, int64_t n, float alpha, float beta, tcc_exec* exec)",
    _unary_context, "y = op(x) over n contiguous elements"))

# ---------------------------------------------------------------------------------------------------
# cast

CAST_DTYPES = ("f32", "f16", "i64", "i32", "i8", "u8", "bool")
CAST_DOMAIN = [{"src": s, "dst": d} for s in CAST_DTYPES for d in CAST_DTYPES if s != d]


def _cast_scalar(src: str, dst: str, x: str = "x") -> str:
    """C expression converting `x` (type src) to dst."""
    if src == "f16":
        if dst == "bool":
            return f"(uint8_t)(({x} & 0x7fff) != 0)"  # +-0 is false; NaN is true, like x != 0
        return _cast_scalar("f32", dst, f"tcc_f16_to_f32({x})")
    if dst == "bool":
        return f"(uint8_t)({x} != 0)"
    if dst == "f16":
        return f"tcc_f32_to_f16({x})" if src == "f32" else f"tcc_f32_to_f16((float){x})"
    if src == "f32" and dst in ("i32", "i8", "u8"):
        # Truncate through int64 so narrowing wraps instead of being UB; out of range is unspecified.
        return f"({CTYPE[dst]})(int64_t){x}"
    return f"({CTYPE[dst]}){x}"


def _cast_context(spec: KernelSpec) -> dict[str, Any]:
    src, dst = spec.param("src"), spec.param("dst")
    return {"SRC": CTYPE[src], "DST": CTYPE[dst], "scalar_expr": _cast_scalar(src, dst), "grain": GRAIN_CHEAP}


register_family(KernelFamily("cast", "void {name}(const {SRC}* x, {DST}* y, int64_t n, tcc_exec* exec)",
                             _cast_context, "y = (dst)x over n contiguous elements"))

# ---------------------------------------------------------------------------------------------------
# reduce

REDUCE_OPS = ("sum", "mean", "max", "min", "prod")
REDUCE_DOMAIN = [{"op": op, "dtype": dt} for op in REDUCE_OPS for dt in ("f32", "i64")]


def _reduce_context(spec: KernelSpec) -> dict[str, Any]:
    op, dt = spec.param("op"), spec.param("dtype")
    t = CTYPE[dt]
    if dt == "f32":
        identity = {"sum": "0.0f", "mean": "0.0f", "prod": "1.0f", "max": "-INFINITY", "min": "INFINITY"}[op]
        combine = {"sum": "acc + v", "mean": "acc + v", "prod": "acc * v",
                   "max": "tcc_maxf(acc, v)", "min": "tcc_minf(acc, v)"}[op]
        # r = 0 gives 0/0 = NaN for mean, as the ABI asks.
        finish = "acc / (float)r" if op == "mean" else "acc"
    else:
        lo, hi = INT_LIMITS[dt]
        identity = {"sum": "0", "mean": "0", "prod": "1", "max": lo, "min": hi}[op]
        combine = {"sum": "(int64_t)((uint64_t)acc + (uint64_t)v)", "mean": "(int64_t)((uint64_t)acc + (uint64_t)v)",
                   "prod": "(int64_t)((uint64_t)acc * (uint64_t)v)",
                   "max": "(v > acc ? v : acc)", "min": "(v < acc ? v : acc)"}[op]
        finish = "(r ? acc / r : 0)" if op == "mean" else "acc"  # integer mean of nothing: 0 (no NaN)
    empty = ("NaN" if dt == "f32" else "0") if op == "mean" else identity
    return {"T": t, "identity": identity, "scalar_combine": combine, "finish": finish, "empty_result": empty,
            "grain": GRAIN_CHEAP}


register_family(KernelFamily(
    "reduce", "void {name}(const {T}* x, {T}* y, int64_t outer, int64_t r, int64_t inner, tcc_exec* exec)",
    _reduce_context, "reduce the middle axis of [outer, r, inner]"))

# ---------------------------------------------------------------------------------------------------
# softmax, norm (T: the activations' type; the CPU kernels are f32 only)

SOFTMAX_DOMAIN = [{"op": op, "dtype": "f32"} for op in ("softmax", "logsoftmax")]
NORM_DOMAIN = [{"op": op, "dtype": "f32"} for op in ("layernorm", "rmsnorm")]

register_family(KernelFamily(
    "softmax",
    "void {name}(const {T}* x, {T}* y, int64_t outer, int64_t n, int64_t inner, tcc_exec* exec)",
    lambda spec: {"log": spec.param("op") == "logsoftmax", "grain": GRAIN_TRANSCENDENTAL},
    "(log)softmax over the middle axis of [outer, n, inner]"))

register_family(KernelFamily(
    "norm",
    "void {name}(const {T}* x, const {T}* gamma, const {T}* beta, {T}* y, int64_t rows, "
    "int64_t cols, float eps, tcc_exec* exec)",
    lambda spec: {"rms": spec.param("op") == "rmsnorm", "grain": GRAIN_CHEAP},
    "layernorm / rmsnorm per row"))

# ---------------------------------------------------------------------------------------------------
# data movement: copy, gather, range, trilu, fill

ESIZE_DOMAIN = [{"esize": e} for e in (1, 2, 4, 8)]


def _esize_context(spec: KernelSpec) -> dict[str, Any]:
    return {"E": ESIZE_CTYPE[spec.param("esize")], "grain": GRAIN_CHEAP}


register_family(KernelFamily(
    "copy",
    "void {name}(const void* src, void* dst, int32_t ndim, const int64_t* shape, "
    "const int64_t* src_strides, const int64_t* dst_strides, tcc_exec* exec)",
    _esize_context, "strided N-d copy"))

register_family(KernelFamily(
    "gather",
    "void {name}(const void* data, const int64_t* idx, void* out, int64_t outer, int64_t axis_len, "
    "int64_t inner, int64_t n_idx, tcc_exec* exec)",
    _esize_context, "out[o, i, j] = data[o, idx[i], j]"))

RANGE_DOMAIN = [{"dtype": dt} for dt in ("f32", "i64", "i32")]


def _range_context(spec: KernelSpec) -> dict[str, Any]:
    dt = spec.param("dtype")
    # f32: one rounding of the exact start + i*delta (fma); ints wrap instead of overflowing (UB).
    expr = ("fmaf((float)i, d, s)" if dt == "f32"
            else f"({CTYPE[dt]})(({UTYPE[dt]})s + ({UTYPE[dt]})i * ({UTYPE[dt]})d)")
    return {"T": CTYPE[dt], "expr": expr}


register_family(KernelFamily("range", "void {name}(const {T}* start, const {T}* delta, {T}* out, int64_t n, "
                                      "tcc_exec* exec)",
                             _range_context, "out[i] = start + i * delta"))

register_family(KernelFamily(
    "trilu",
    "void {name}(const void* x, void* y, int64_t batch, int64_t rows, int64_t cols, int64_t k, tcc_exec* exec)",
    lambda spec: {"E": ESIZE_CTYPE[spec.param("esize")], "upper": bool(spec.param("upper"))},
    "keep the upper (j - i >= k) or lower (j - i <= k) triangle, zero the rest"))

register_family(KernelFamily("fill", "void {name}(void* out, const void* value, int64_t n, tcc_exec* exec)",
                             lambda spec: {"E": ESIZE_CTYPE[spec.param("esize")]}, "out[i] = *value"))

# ---------------------------------------------------------------------------------------------------
# The kernel lists.


def f32(domain: list[dict]) -> list[dict]:
    return [p for p in domain if p["dtype"] == "f32"]


# The params of each family's portable `scalar` variant, which every CPU backend emits.
SCALAR_DOMAINS: dict[str, list[dict]] = {
    "binary": BINARY_DOMAIN, "where": WHERE_DOMAIN, "unary": UNARY_DOMAIN, "cast": CAST_DOMAIN,
    "reduce": REDUCE_DOMAIN, "softmax": SOFTMAX_DOMAIN, "norm": NORM_DOMAIN, "copy": ESIZE_DOMAIN,
    "gather": ESIZE_DOMAIN, "range": RANGE_DOMAIN,
    "trilu": [{"upper": u, "esize": e} for u in (0, 1) for e in (1, 4, 8)],
    "fill": [{"esize": e} for e in (1, 4, 8)],
}
# The params a CPU backend's vector variant covers (x86 avx2, arm neon): where SIMD pays.
VECTOR_DOMAINS: dict[str, list[dict]] = {
    "binary": f32(BINARY_DOMAIN), "where": f32(WHERE_DOMAIN), "unary": f32(UNARY_DOMAIN),
    "cast": [p for p in CAST_DOMAIN if {p["src"], p["dst"]} == {"f32", "f16"}],
    "reduce": f32(REDUCE_DOMAIN), "softmax": SOFTMAX_DOMAIN, "norm": NORM_DOMAIN, "copy": ESIZE_DOMAIN,
}
PORTABLE: list[tuple[str, str, dict]] = [(family, "scalar", params) for family, domain in SCALAR_DOMAINS.items()
                                         for params in domain]
