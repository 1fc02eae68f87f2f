"""CUDA kernels of the elementwise and data-movement families (codegen/families/elementwise.py, llm.py): binary,
where, unary, cast, reduce, copy, gather, gathernd, gatherelements, scatternd, range, trilu, fill, cumsum.

The templates are `codegen/templates/cuda/<family>-cuda.cu.j2`; what they share (the device forms of the
families' scalar helpers, the f16 load/store, the host-side coalescing of N-d broadcast strides and the
device-side N-d offset walk) is in `codegen/templates/cuda/_elem_*.inc.j2`. Each family keeps the CPU
signature; f16 data is `uint16_t*` there and `__half` bits inside.

Arithmetic on f16 data runs in fp32 and rounds once to f16: for + - * / that is the correctly rounded f16
result (fp32 has 24 >= 2 * 11 + 2 significand bits, so the double rounding fp32 -> f16 is innocuous); for
the transcendental ops the fp32 result is within a few fp32 ulps of the exact value, so its f16 rounding is
within 1 ulp of fp16. The f32 variants substitute the families' own scalar C expressions (which compile
as device code: expf, erfc, exp in double ...), so they compute what the CPU scalar kernels compute.

The domains are the CPU scalar domains (`SCALAR_DOMAINS`, llm.py's `PORTABLE`) with f16 added wherever a
float dtype appears (every float tensor of a CUDA program is f16 after the fp16 pass); the copy-like
families (copy, gather*, trilu, fill) move 1/2/4/8-byte words, 2 being f16.
"""
from __future__ import annotations

from typing import Any

from ...codegen.families import elementwise as ew
from ...codegen.families import llm
from ...codegen.kernels import KernelSpec, register_target_context

TARGET = "cuda"
VARIANT = "cuda"
FLOATS = ("f32", "f16")
BLOCK = 256  # threads per block of the elementwise kernels

CTYPE = dict(ew.CTYPE)
UTYPE = {**ew.UTYPE, "bool": "uint8_t"}

# fp32 forms of the activations for f16 data (the f32 kernels use the families' double-precision forms):
# the f16 rounding of these is within 1 ulp of the exact value (fp32 keeps 13 more bits than fp16).
_UNARY_F16_MATH = {
    "sigmoid": "1.0f / (1.0f + expf(-x))",
    "silu": "x / (1.0f + expf(-x))",
    "gelu_erf": "0.5f * x * erfcf(-0.70710678118654752f * x)",
    "gelu_tanh": "x / (1.0f + expf(-1.5957691216057308f * x * (1.0f + 0.044715f * x * x)))",
}


def _io(dt: str) -> dict[str, Any]:
    """Template names for data of dtype dt: T (memory type), C (compute type) and whether to convert."""
    return {"T": CTYPE[dt], "C": "float" if dt == "f16" else CTYPE[dt], "is_f16": dt == "f16"}


def _binary_ctx(spec: KernelSpec) -> dict[str, Any]:
    op, dt = spec.param("op"), spec.param("dtype")
    bool_out = op in ew.COMPARE_OPS or op in ew.LOGIC_OPS
    math_dt = "f32" if dt == "f16" else dt  # f16 computes in fp32
    return {**_io(dt), "OUT": "uint8_t" if bool_out else CTYPE[dt], "bool_out": bool_out,
            "out_f16": dt == "f16" and not bool_out, "scalar_expr": ew._binary_scalar(op, math_dt)}


def _unary_ctx(spec: KernelSpec) -> dict[str, Any]:
    op, dt = spec.param("op"), spec.param("dtype")
    if dt == "f16":
        expr = _UNARY_F16_MATH.get(op) or ew._unary_scalar(op, "f32")
        bounds = ew._unary_bounds(op, "f32")
    else:
        expr, bounds = ew._unary_scalar(op, dt), ew._unary_bounds(op, dt)
        # The same values without comparing an unsigned value with 0 (nvcc warns about those).
        expr = {("relu", "u8"): "x", ("sign", "u8"): "(uint8_t)(x > 0)"}.get((op, dt), expr)
    return {**_io(dt), "scalar_expr": expr, "bounds": bounds}


def _cast_ctx(spec: KernelSpec) -> dict[str, Any]:
    src, dst = spec.param("src"), spec.param("dst")
    return {"SRC": CTYPE[src], "DST": CTYPE[dst], "scalar_expr": ew._cast_scalar(src, dst)}


def _reduce_ctx(spec: KernelSpec) -> dict[str, Any]:
    op, dt = spec.param("op"), spec.param("dtype")
    base = ew._reduce_context(KernelSpec.make("x86", "reduce", "scalar", op=op, dtype="f32" if dt == "f16" else dt))
    # The accumulator: fp32 for f16 data, T otherwise.
    return {**_io(dt), "A": "float" if dt in FLOATS else CTYPE[dt], "identity": base["identity"],
            "scalar_combine": base["scalar_combine"], "finish": base["finish"]}


def _where_ctx(spec: KernelSpec) -> dict[str, Any]:
    return {"T": CTYPE[spec.param("dtype")]}


def _esize_ctx(spec: KernelSpec) -> dict[str, Any]:
    return {"E": ew.ESIZE_CTYPE[spec.param("esize")]}



def _range_ctx(spec: KernelSpec) -> dict[str, Any]:
    dt = spec.param("dtype")
    if dt in FLOATS:
        expr = "fmaf((float)i, d, s)"  # one rounding of start + i * delta (then once more to f16)
    else:
        u = UTYPE[dt]
        expr = f"({CTYPE[dt]})(({u})s + ({u})i * ({u})d)"  # wraps instead of overflowing (UB)
    return {**_io(dt), "expr": expr}


def _trilu_ctx(spec: KernelSpec) -> dict[str, Any]:
    return {"E": ew.ESIZE_CTYPE[spec.param("esize")], "upper": bool(spec.param("upper"))}


def _fill_ctx(spec: KernelSpec) -> dict[str, Any]:
    return {"E": ew.ESIZE_CTYPE[spec.param("esize")]}


def _cumsum_ctx(spec: KernelSpec) -> dict[str, Any]:
    dt = spec.param("dtype")
    u = UTYPE.get(dt)
    add = "a + b" if dt in FLOATS else f"({CTYPE[dt]})(({u})a + ({u})b)"  # ints wrap
    return {**_io(dt), "A": "float" if dt in FLOATS else CTYPE[dt], "add_expr": add}


def _scatternd_ctx(spec: KernelSpec) -> dict[str, Any]:
    dt, op = spec.param("dtype"), spec.param("op")
    c = "float" if dt in FLOATS else CTYPE[dt]
    combine = {"none": "u", "add": "o + u", "mul": "o * u", "max": "(u > o ? u : o)", "min": "(u < o ? u : o)"}[op]
    if dt not in FLOATS and op in ("add", "mul"):
        combine = f"({c})(({UTYPE[dt]})o {'+' if op == 'add' else '*'} ({UTYPE[dt]})u)"  # ints wrap
    return {**_io(dt), "reduction": op, "combine": combine}


_CONTEXTS = {
    "binary": _binary_ctx, "where": _where_ctx, "unary": _unary_ctx, "cast": _cast_ctx, "reduce": _reduce_ctx,
    "copy": _esize_ctx, "gather": _esize_ctx, "gathernd": _esize_ctx, "gatherelements": _esize_ctx,
    "range": _range_ctx, "trilu": _trilu_ctx, "fill": _fill_ctx, "cumsum": _cumsum_ctx,
    "scatternd": _scatternd_ctx,
}
for _family, _fn in _CONTEXTS.items():
    register_target_context(TARGET, _family, _fn)

# ---------------------------------------------------------------------------------------------------
# The kernel list.

ESIZES = (1, 2, 4, 8)


def _with_f16(domain: list[dict]) -> list[dict]:
    """The domain plus, for every f32 entry, the same entry at f16 (keys dtype/src/dst)."""
    out = list(domain)
    for p in domain:
        if "dtype" in p and p["dtype"] == "f32":
            out.append({**p, "dtype": "f16"})
    return out


UNARY_F16 = [{"op": op, "dtype": "f16"} for op in ew.UNARY_F32_OPS]
DOMAINS: dict[str, list[dict]] = {
    "binary": _with_f16(ew.BINARY_DOMAIN),
    "where": [{"dtype": dt} for dt in ("f32", "f16", "i64", "i32", "i8", "u8", "bool")],
    "unary": ew.UNARY_DOMAIN + UNARY_F16,
    "cast": ew.CAST_DOMAIN,  # f16 is already one of CAST_DTYPES
    "reduce": _with_f16(ew.REDUCE_DOMAIN),
    "copy": [{"esize": e} for e in ESIZES],
    "gather": [{"esize": e} for e in ESIZES],
    "gathernd": [{"esize": e} for e in ESIZES],
    "gatherelements": [{"esize": e} for e in ESIZES],
    "range": [{"dtype": dt} for dt in ("f32", "f16", "i64", "i32")],
    "trilu": [{"upper": u, "esize": e} for u in (0, 1) for e in ESIZES],
    "fill": [{"esize": e} for e in ESIZES],
    "cumsum": [{"dtype": dt} for dt in ("f32", "f16", "i64", "i32")],
    "scatternd": [{"op": o, "dtype": d} for o in llm.SCATTER_OPS for d in ("f32", "f16", "i64", "i32")],
}

VARIANTS: list[KernelSpec] = [KernelSpec.make(TARGET, family, VARIANT, **params)
                              for family, domain in DOMAINS.items() for params in domain]
