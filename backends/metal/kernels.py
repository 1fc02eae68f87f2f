"""The Metal kernel list and kernel selection (issue 18; docs/metal.md).

`VARIANTS` is the one list of every kernel the Metal backend can emit (one variant, "metal", per family and
params): tests/metal renders every one, type-checks it with clang through tcc's MSL shim and runs it on the
SIMT emulator against its numpy reference. Templates are `codegen/templates/metal/<family>-metal.metal.j2`;
a rendered file holds the MSL kernels (TCC_METAL_DEVICE_CODE) and the launcher with the family's C signature
(TCC_METAL_HOST_CODE), and backends/metal/msl.py adds the emulator's entries.

Families so far: norm (rmsnorm, layernorm), softmax, binary (float arithmetic), qlinear_w4a16 (fp16
activations), qlinear_w4a32 (f32 activations), gemm (fp16, simdgroup_matrix) and kvattention (decode and
prefill over an in-place KV cache with RoPE, GQA, sliding window / ring cache, ALiBi, softcap), unary (float
activations), cast, copy, gather, fill, range, qgather, where and cumsum; binary has the CPU's whole domain
(integer arithmetic, comparisons, logic) plus f16; attention (no KV cache), gathernd, gatherelements, reduce, trilu, matmul, rope and scatternd.
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
    return dict(GEMM_TILE, MT=_MTYPE[spec.param("dtype")])


# The MSL type of each tcc dtype (bool is a byte), and of each element size of the copy-like families.
MSL_TYPE = {"f32": "float", "f16": "half", "i64": "long", "i32": "int", "i8": "char", "u8": "uchar", "bool": "uchar"}
MSL_WORD = {1: "uchar", 2: "ushort", 4: "uint", 8: "ulong"}
ESIZES = (1, 2, 4, 8)


# binary: the families' scalar expressions (integers wrap, ONNX Div / Mod / Pow), floats in fp32.
def _binary_context(spec: KernelSpec) -> dict:
    """The family's own context covers f32 and the integer types only: the f16 form computes as f32."""
    from ...codegen.families import elementwise as ew

    op, dt = spec.param("op"), spec.param("dtype")
    bool_out = op in ew.COMPARE_OPS or op in ew.LOGIC_OPS
    math = "f32" if dt == "f16" else dt
    expr = ew._binary_scalar(op, math).replace("fmodf(", "fmod(")
    return {"ELEM_THREADS": ELEM_THREADS, "T": ew.CTYPE[dt], "OUT": "uint8_t" if bool_out else ew.CTYPE[dt],
            "MT": MSL_TYPE[dt], "MA": MSL_TYPE[math], "MOUT": "uchar" if bool_out else MSL_TYPE[dt], "expr": expr,
            "f16": dt == "f16"}


def _binary_domain() -> list[dict]:
    """The CPU's binary domain (codegen/families/elementwise.py) plus f16 wherever it has f32."""
    from ...codegen.families.elementwise import BINARY_DOMAIN

    return BINARY_DOMAIN + [{**p, "dtype": "f16"} for p in BINARY_DOMAIN if p["dtype"] == "f32"]


def _esize_context(spec: KernelSpec) -> dict:
    return {"MW": MSL_WORD[spec.param("esize")], "ELEM_THREADS": ELEM_THREADS}


# unary: float ops in fp32 (erf: metal/_common.metal.inc.j2, MSL has none).
UNARY_OPS = {
    "erf": "tcc_erff(x)", "gelu_erf": "0.5f * x * tcc_erfcf(-0.70710678118654752f * x)",
    "neg": "-x", "abs": "fabs(x)", "exp": "precise::exp(x)", "log": "precise::log(x)", "sqrt": "precise::sqrt(x)",
    "reciprocal": "1.0f / x", "tanh": "precise::tanh(x)", "sigmoid": "1.0f / (1.0f + precise::exp(-x))",
    "relu": "(x < 0.0f ? 0.0f : x)", "silu": "x / (1.0f + precise::exp(-x))",
    # 0.5 x (1 + tanh(u)) = x sigmoid(2u): no cancellation for x < 0 (the CPU kernels' form)
    "gelu_tanh": "x / (1.0f + precise::exp(-1.5957691216057308f * x * (1.0f + 0.044715f * x * x)))",
    "clip": "(x < alpha ? alpha : (x > beta ? beta : x))", "floor": "floor(x)", "ceil": "ceil(x)",
    "sin": "precise::sin(x)", "cos": "precise::cos(x)", "sign": "(x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x))",
    "identity": "x",
}


def _unary_context(spec: KernelSpec) -> dict:
    from ...codegen.families.elementwise import CTYPE

    return {**_float_context(spec), "T": CTYPE[spec.param("dtype")], "expr": UNARY_OPS[spec.param("op")]}


CAST_DTYPES = ("f32", "f16", "i64", "i32", "i8", "u8", "bool")


def _cast_expr(src: str, dst: str) -> str:
    """The MSL expression converting `v` (src) to dst."""
    m = MSL_TYPE[dst]
    if dst == "bool":
        return "uchar(float(v) != 0.0f)" if src in ("f16", "f32") else "uchar(v != 0)"
    if src in ("f16", "f32") and dst not in ("f16", "f32"):
        return f"{m}(long(float(v)))"  # truncation through 64 bits: narrowing wraps
    if src == "f16":
        return f"{m}(float(v))"
    return f"{m}(v)"


def _cast_context(spec: KernelSpec) -> dict:
    src, dst = spec.param("src"), spec.param("dst")
    from ...codegen.families.elementwise import CTYPE

    return {"SRC": CTYPE[src], "DST": CTYPE[dst], "MSRC": MSL_TYPE[src], "MDST": MSL_TYPE[dst],
            "expr": _cast_expr(src, dst), "ELEM_THREADS": ELEM_THREADS}


def _range_context(spec: KernelSpec) -> dict:
    from ...codegen.families.elementwise import CTYPE

    return {"T": CTYPE[spec.param("dtype")], "MT": MSL_TYPE[spec.param("dtype")], "ELEM_THREADS": ELEM_THREADS}


def _where_context(spec: KernelSpec) -> dict:
    from ...codegen.families.elementwise import CTYPE

    return {"T": CTYPE[spec.param("dtype")], "MT": MSL_TYPE[spec.param("dtype")], "ELEM_THREADS": ELEM_THREADS}


def _cumsum_context(spec: KernelSpec) -> dict:
    from ...codegen.families.elementwise import CTYPE

    dt = spec.param("dtype")
    acc = {"f32": "float", "f16": "float", "i64": "long", "i32": "int"}[dt]
    unsigned = {"long": "ulong", "int": "uint"}.get(acc)
    add = f"{acc}({unsigned}(acc) + {unsigned}(v))" if unsigned else "acc + v"  # integers wrap
    return {"T": CTYPE[dt], "MT": MSL_TYPE[dt], "MA": acc, "add": add, "ELEM_THREADS": ELEM_THREADS}


def _reduce_context(spec: KernelSpec) -> dict:
    """The family's identity / combine / finish (f16 computes as f32: its f32 expressions, rounded at the end)."""
    from ...codegen.families import elementwise as ew

    dt = spec.param("dtype")
    fam = ew._reduce_context(KernelSpec.make("", "reduce", "", op=spec.param("op"), dtype="f32" if dt == "f16" else dt))
    return {"T": ew.CTYPE[dt], "MT": MSL_TYPE[dt], "MA": "float" if dt in ("f16", "f32") else "long",
            "identity": fam["identity"], "combine": fam["scalar_combine"], "finish": fam["finish"],
            "ELEM_THREADS": ELEM_THREADS}


def _trilu_context(spec: KernelSpec) -> dict:
    return {**_esize_context(spec), "upper": bool(spec.param("upper"))}


def _scatternd_context(spec: KernelSpec) -> dict:
    from ...codegen.families.elementwise import CTYPE

    op, dt = spec.param("op"), spec.param("dtype")
    acc = {"f32": "float", "f16": "float", "i64": "long", "i32": "int"}[dt]
    combine = {"none": "u", "add": "o + u", "mul": "o * u", "max": "(u > o ? u : o)", "min": "(u < o ? u : o)"}[op]
    if acc in ("long", "int") and op in ("add", "mul"):  # integers wrap
        combine = f"{acc}(u{acc}(o) {'+' if op == 'add' else '*'} u{acc}(u))"
    return {"T": CTYPE[dt], "MT": MSL_TYPE[dt], "MA": acc, "combine": combine, "reduction": op,
            "ELEM_THREADS": ELEM_THREADS}


def _qgather_context(spec: KernelSpec) -> dict:
    # (no dtype: the f32 form an f32 program selects, named as on the CPUs)
    return {"MT": MSL_TYPE[spec.param("dtype", "f32")], "MS": "ushort" if spec.param("bits") == 4 else "float"}


for _family in ("copy", "gather", "fill", "gathernd", "gatherelements"):
    register_target_context(TARGET, _family, extended_context(_family, _esize_context))
# (the families' own contexts know no f16 here: these are complete)
register_target_context(TARGET, "unary", _unary_context)
register_target_context(TARGET, "cast", _cast_context)
register_target_context(TARGET, "range", _range_context)
register_target_context(TARGET, "where", _where_context)
register_target_context(TARGET, "cumsum", _cumsum_context)
register_target_context(TARGET, "reduce", _reduce_context)
register_target_context(TARGET, "scatternd", _scatternd_context)
register_target_context(TARGET, "rope", extended_context("rope", _float_context))
register_target_context(TARGET, "trilu", extended_context("trilu", _trilu_context))
register_target_context(TARGET, "matmul", extended_context("matmul", lambda spec: {
    **_float_context(spec), "ELEM_THREADS": ELEM_THREADS}))
register_target_context(TARGET, "qgather", extended_context("qgather", _qgather_context))

for _family in ("norm", "softmax"):
    register_target_context(TARGET, _family, extended_context(_family, _float_context))
register_target_context(TARGET, "binary", _binary_context)
for _family in ("qlinear_w4a16", "qlinear_w4a32"):
    register_target_context(TARGET, _family, extended_context(_family, _qlinear_context))
register_target_context(TARGET, "gemm", extended_context("gemm", _gemm_context))
register_target_context(TARGET, "kvattention", extended_context("kvattention", _kv_context))
register_target_context(TARGET, "attention", extended_context("attention", _kv_context))

DTYPES = ("f16", "f32")
VARIANTS: list[KernelSpec] = [
    *(KernelSpec.make(TARGET, "norm", VARIANT, op=op, dtype=d) for op in ("layernorm", "rmsnorm") for d in DTYPES),
    *(KernelSpec.make(TARGET, "softmax", VARIANT, op=op, dtype=d) for op in ("softmax", "logsoftmax")
      for d in DTYPES),
    *(KernelSpec.make(TARGET, "binary", VARIANT, **p) for p in _binary_domain()),
    KernelSpec.make(TARGET, "qlinear_w4a16", VARIANT, dtype="f16"),
    KernelSpec.make(TARGET, "qlinear_w4a32", VARIANT),
    *(KernelSpec.make(TARGET, "gemm", VARIANT, dtype=d) for d in DTYPES),
    *(KernelSpec.make(TARGET, "kvattention", VARIANT, dtype=d) for d in DTYPES),
    *(KernelSpec.make(TARGET, "unary", VARIANT, op=op, dtype=d) for op in UNARY_OPS for d in DTYPES),
    *(KernelSpec.make(TARGET, "cast", VARIANT, src=a, dst=b) for a in CAST_DTYPES for b in CAST_DTYPES if a != b),
    *(KernelSpec.make(TARGET, family, VARIANT, esize=e)
      for family in ("copy", "gather", "fill", "gathernd", "gatherelements") for e in ESIZES),
    *(KernelSpec.make(TARGET, "attention", VARIANT, dtype=d) for d in DTYPES),
    *(KernelSpec.make(TARGET, "range", VARIANT, dtype=d) for d in ("f32", "f16", "i64", "i32")),
    *(KernelSpec.make(TARGET, "qgather", VARIANT, bits=b, dtype=d) for b in (4, 8) for d in DTYPES),
    *(KernelSpec.make(TARGET, "qgather", VARIANT, bits=b) for b in (4, 8)),  # f32 programs (w4a32)
    *(KernelSpec.make(TARGET, "where", VARIANT, dtype=d) for d in ("f32", "f16", "i64", "i32", "i8", "u8", "bool")),
    *(KernelSpec.make(TARGET, "cumsum", VARIANT, dtype=d) for d in ("f32", "f16", "i64", "i32")),
    *(KernelSpec.make(TARGET, "reduce", VARIANT, op=op, dtype=d) for op in ("sum", "mean", "max", "min", "prod")
      for d in ("f32", "f16", "i64")),
    *(KernelSpec.make(TARGET, "trilu", VARIANT, upper=u, esize=e) for u in (0, 1) for e in ESIZES),
    *(KernelSpec.make(TARGET, "matmul", VARIANT, dtype=d) for d in DTYPES),
    *(KernelSpec.make(TARGET, "rope", VARIANT, dtype=d) for d in DTYPES),
    *(KernelSpec.make(TARGET, "scatternd", VARIANT, op=o, dtype=d) for o in ("none", "add", "mul", "max", "min")
      for d in ("f32", "f16", "i64", "i32")),
]

_by_key: dict[tuple, KernelSpec] = {(s.family, s.params): s for s in VARIANTS}


def select(family: str, variant: str | None = None, **params) -> KernelSpec | None:
    """The kernel for (family, params); None if the Metal backend has none (the compile then refuses the op)."""
    spec = _by_key.get((family, tuple(sorted(params.items()))))
    if spec is None or (variant is not None and spec.variant != variant):
        return None
    return spec
