"""Every x86 kernel of the elementwise and data-movement families (backends/x86/kernels_elementwise.py:
binary, where, unary, cast, reduce, softmax, norm, copy, gather, range, trilu, fill) against numpy.

Tolerances are per op and dtype, each justified where it is used. In short (u = 2^-24, fp32 unit
roundoff):
- exact: integer and bool ops, comparisons, data movement, casts (numpy rounds float -> f16 to nearest
  even too), and the IEEE-754 basic ops (+ - * / sqrt, min/max, fmod, floor, ...): those are correctly
  rounded, so without -ffast-math/FTZ the kernels must give numpy's float32 bits.
- transcendentals: the ABI's relative 2e-6 against a float64 reference, with an absolute floor only
  where the output is subnormal (spacing 1.4e-45 there, so relative accuracy does not exist).
- sums (reduce, softmax, norms): the classic fp32 summation bound ~n*u*sum|terms|.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcc.backends.x86.kernels_elementwise import VARIANTS

U = 2.0 ** -24
# Outputs below FLT_MIN are subnormal: their spacing is 2^-149, so only an absolute bound makes sense.
# 1e-37 is ~8 ulp of FLT_MIN (1.18e-38).
SUBNORMAL_FLOOR = 1e-37
TRANSCENDENTAL_RTOL = 2e-6  # the ABI's contract for the approximations (docs/kernels.md, unary)
SIZES = [0, 1, 7, 8, 9, 31, 33, 1000]
NP = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "i8": np.int8, "u8": np.uint8,
      "bool": np.uint8}
F32_SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -3e-39, 3e38, -2.5e38], np.float32)


def of(family: str) -> list:
    return [s for s in VARIANTS if s.family == family]


def ptr(a) -> int | None:
    """The address of a's first element. The caller must keep `a` alive until the call returns: a
    temporary passed as ptr(np.array(...)) is freed before the kernel runs."""
    return None if a is None else a.ctypes.data


def i64(values) -> np.ndarray:
    return np.ascontiguousarray(values, np.int64)


def elem_strides(a: np.ndarray, shape) -> np.ndarray:
    """a's strides in elements as broadcast to `shape` (0 on broadcast dims; negative ones kept)."""
    return i64([s // a.itemsize for s in np.broadcast_to(a, shape).strides])


def sprinkle(a: np.ndarray, values: np.ndarray, rng, fraction: float = 0.1) -> np.ndarray:
    """a with some elements replaced by the given special values (every value at least once if room)."""
    flat = a.reshape(-1).copy()
    if flat.size:
        count = max(min(len(values), flat.size), int(flat.size * fraction))
        pos = rng.choice(flat.size, size=min(count, flat.size), replace=False)
        flat[pos] = np.resize(values, len(pos))
    return flat.reshape(a.shape)


def assert_close(got, ref, rtol, atol=0.0, what=""):
    """|got - ref| <= atol + rtol*|ref| elementwise (rtol/atol may be arrays); NaN and inf must match
    exactly, classified on the reference rounded to float32 (float64 values past FLT_MAX are inf there)."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        ref32 = ref.astype(np.float32).astype(np.float64)
    nan = np.isnan(ref32)
    mismatch = np.argwhere(np.isnan(got) != nan)[:4].tolist()
    assert not mismatch, f"{what}: NaN mismatch at {mismatch}"
    inf = np.isinf(ref32)
    assert np.array_equal(got[inf], ref32[inf]), f"{what}: inf mismatch {got[inf][:4]} vs {ref32[inf][:4]}"
    ok = ~nan & ~inf
    tol = np.broadcast_to(atol + rtol * np.abs(ref), ref.shape)[ok]
    err = np.abs(got[ok] - ref[ok])
    if (err > tol).any():
        i = int(np.argmax(err - tol))
        where = np.argwhere(ok)[i].tolist()
        raise AssertionError(f"{what}: at {where} got {got[ok][i]!r} want {ref[ok][i]!r} "
                             f"(err {err[i]:.3g} > tol {tol[i]:.3g})")


def assert_exact(got, ref, what=""):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    np.testing.assert_array_equal(got, ref, err_msg=what)


def vectorize64(fn):
    """A float64 numpy function from a math-module scalar function (erf/erfc are not in numpy)."""
    vec = np.frompyfunc(fn, 1, 1)
    return lambda x: vec(np.asarray(x, np.float64)).astype(np.float64)


erf64, erfc64 = vectorize64(math.erf), vectorize64(math.erfc)


# --------------------------------------------------------------------------------------------------
# binary

BINARY_SHAPES = [
    *(((n,), (n,)) for n in SIZES),
    ((), ()), ((33,), ()), ((), (9,)),                              # scalar operands (ndim 0)
    ((5, 33), (33,)), ((5, 33), (5, 1)), ((5, 1), (1, 33)),          # row, column, outer product
    ((2, 3, 9), (2, 1, 9)), ((4, 3, 2), (4, 1, 1)), ((3, 1, 7), (3, 5, 1)),  # middle dims
    ((2, 1, 3, 1, 5), (4, 3, 1, 5)), ((1, 2, 1, 3, 2), (2, 2, 2, 1, 1)),    # ndim 5
    ((96, 700), (700,)), ((70000,), (70000,)),                       # large: several pool tasks
]


def binary_inputs(op: str, dt: str, shape, rng):
    if dt == "bool":
        return rng.integers(0, 2, shape).astype(np.uint8)
    if dt == "f32":
        if op == "pow":
            exps = np.array([2.0, 0.5, 3.0, -1.0, 1.5, 0.0, -2.5, 2.0, 0.5], np.float32)
            values = np.concatenate([exps, F32_SPECIALS])
            return sprinkle((rng.standard_normal(shape) * 2).astype(np.float32), values, rng, 0.5)
        return sprinkle((rng.standard_normal(shape) * 4).astype(np.float32), F32_SPECIALS, rng)
    info = np.iinfo(NP[dt])
    lo = max(info.min, -1000)  # the values wrap into int8/uint8 ranges on astype, as integer inputs do
    if op == "pow":
        return rng.integers(max(info.min, -3), 6, shape).astype(NP[dt])
    edge = np.array([v for v in (0, -1, 1, info.min, info.max, -7, 7) if info.min <= v <= info.max], NP[dt])
    return sprinkle(rng.integers(lo, 1000, shape).astype(NP[dt]), edge, rng)


def trunc_div(a, b):
    """ONNX integer Div (toward zero), 0 for division by 0, INT_MIN / -1 wrapping (what the kernel does)."""
    with np.errstate(all="ignore"):
        safe = np.where(b == 0, 1, b)
        q = a // safe
        r = a - q * safe
        q = q + ((r != 0) & ((a < 0) != (safe < 0))).astype(a.dtype)
        return np.where(b == 0, 0, q).astype(a.dtype)


def int_pow(a, b):
    """Wrapping integer power; negative exponents give 1/a^|b| truncated (1, +-1 or 0)."""
    with np.errstate(all="ignore"):
        pos = np.power(a, np.maximum(b, 0))
    neg = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 1, -1, 1), 0)).astype(a.dtype)
    return np.where(b < 0, neg, pos).astype(a.dtype)


def binary_ref(op: str, dt: str, a, b):
    with np.errstate(all="ignore"):
        cmp = {"equal": np.equal, "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
               "greater_equal": np.greater_equal}
        if op in cmp:
            return cmp[op](a, b).astype(np.uint8)
        if op in ("and", "or", "xor"):
            fn = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}[op]
            return fn(a != 0, b != 0).astype(np.uint8)
        if op == "pow" and dt == "f32":
            return np.power(a.astype(np.float64), b.astype(np.float64))
        common = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
        if op in common:
            return common[op](a, b)
        if dt == "f32":
            return {"div": np.divide, "mod": np.fmod}[op](a, b)
        return {"div": trunc_div, "mod": np.mod, "pow": int_pow}[op](a, b)


def run_binary(lib, spec, a, b, pool, out=None):
    shape = np.broadcast_shapes(a.shape, b.shape)
    ref_out_dtype = np.uint8 if spec.param("op") in ("equal", "less", "less_equal", "greater",
                                                        "greater_equal", "and", "or", "xor") else a.dtype
    if out is None:
        out = np.full(shape, 123, ref_out_dtype)
    dims, sa, sb = i64(shape), elem_strides(a, shape), elem_strides(b, shape)  # alive during the call
    lib.kernel(spec)(ptr(a), ptr(b), ptr(out), len(shape), ptr(dims), ptr(sa), ptr(sb), pool)
    return out


def check_binary(spec, a, b, got, what):
    op, dt = spec.param("op"), spec.param("dtype")
    ref = binary_ref(op, dt, a, b)
    if op == "pow" and dt == "f32":
        # powf is within 1 ulp (<= 2u relative) of the exact power; 4u leaves room for the reference's
        # own rounding. The exponent 2 / 0.5 fast paths are exactly rounded. Subnormal results: floor.
        assert_close(got, ref, 4 * U, SUBNORMAL_FLOOR, what)
    else:
        # Exact: IEEE basic ops, fmod, NaN-propagating max/min, comparisons and all integer ops are
        # deterministic, so the kernel must reproduce numpy bit for bit (NaN positions included).
        assert_exact(got, ref, what)


@pytest.mark.parametrize("spec", of("binary"), ids=lambda s: s.name)
def test_binary(x86_kernel_lib, x86_pool, spec, rng):
    op, dt = spec.param("op"), spec.param("dtype")
    for sa, sb in BINARY_SHAPES:
        a, b = binary_inputs(op, dt, sa, rng), binary_inputs(op, dt, sb, rng)
        got = run_binary(x86_kernel_lib, spec, a, b, x86_pool)
        check_binary(spec, a, b, got, f"{spec.name} {sa} x {sb}")


@pytest.mark.parametrize("spec", of("binary"), ids=lambda s: s.name)
def test_binary_strided_and_inplace(x86_kernel_lib, spec, rng):
    op, dt = spec.param("op"), spec.param("dtype")
    # Non-contiguous operands: a column-sliced view and a reversed (negative stride) view.
    base_a, base_b = binary_inputs(op, dt, (6, 40), rng), binary_inputs(op, dt, (6, 20), rng)
    a, b = base_a[:, ::2], base_b[::-1]
    got = run_binary(x86_kernel_lib, spec, a, b, None)
    check_binary(spec, a, b, got, f"{spec.name} strided")
    # In place: out == a with out's dense strides (b broadcast along rows).
    if np.dtype(NP[dt]) == got.dtype:
        a = binary_inputs(op, dt, (9, 37), rng)
        b = binary_inputs(op, dt, (37,), rng)
        a0 = a.copy()
        run_binary(x86_kernel_lib, spec, a, b, None, out=a)
        check_binary(spec, a0, b, a, f"{spec.name} in place")


# --------------------------------------------------------------------------------------------------
# where

WHERE_SHAPES = [
    *(((n,), (n,), (n,)) for n in SIZES),
    ((), (), ()), ((), (7,), ()), ((9,), (), (9,)), ((33,), (33,), ()),
    ((5, 33), (33,), (5, 1)), ((5, 1), (1, 33), (5, 33)),
    ((2, 1, 9), (1, 3, 9), (2, 3, 1)), ((3, 1, 1, 2, 1), (1, 4, 1, 1, 5), (3, 4, 2, 2, 5)),
    ((64, 513), (64, 513), (513,)),
]


def where_inputs(dt, shape, rng):
    if dt == "bool":
        return rng.integers(0, 2, shape).astype(np.uint8)
    if dt == "f32":
        return sprinkle(rng.standard_normal(shape).astype(np.float32), F32_SPECIALS, rng)
    return rng.integers(-10**6, 10**6, shape).astype(NP[dt])


def run_where(lib, spec, c, x, y, pool, out=None):
    shape = np.broadcast_shapes(c.shape, x.shape, y.shape)
    if out is None:
        out = np.zeros(shape, x.dtype)
    dims, sc, sx, sy = i64(shape), elem_strides(c, shape), elem_strides(x, shape), elem_strides(y, shape)
    lib.kernel(spec)(ptr(c), ptr(x), ptr(y), ptr(out), len(shape), ptr(dims), ptr(sc), ptr(sx), ptr(sy), pool)
    return out


@pytest.mark.parametrize("spec", of("where"), ids=lambda s: s.name)
def test_where(x86_kernel_lib, x86_pool, spec, rng):
    dt = spec.param("dtype")
    for sc, sx, sy in WHERE_SHAPES:
        # cond bytes other than 0/1 count as true (anything nonzero), so use 0 and 2.
        c = np.asarray(rng.integers(0, 2, sc) * 2, np.uint8)
        x, y = where_inputs(dt, sx, rng), where_inputs(dt, sy, rng)
        got = run_where(x86_kernel_lib, spec, c, x, y, x86_pool)
        # Exact: a select moves bits.
        assert_exact(got, np.where(c != 0, x, y), f"{spec.name} {sc} {sx} {sy}")
    # In place over x, and a strided (reversed) y.
    c = rng.integers(0, 2, (7, 45)).astype(np.uint8)
    x, y = where_inputs(dt, (7, 45), rng), where_inputs(dt, (7, 45), rng)[::-1]
    ref = np.where(c != 0, x, y)
    run_where(x86_kernel_lib, spec, c, x, y, None, out=x)
    assert_exact(x, ref, f"{spec.name} in place")


# --------------------------------------------------------------------------------------------------
# unary

def unary_domain(op: str, n: int, rng) -> np.ndarray:
    """Inputs covering each op's interesting range, plus its special values."""
    ranges = {"exp": (-110, 95), "log": None, "sin": (-300, 300), "cos": (-300, 300), "erf": (-6, 6),
              "tanh": (-12, 12), "sigmoid": (-120, 120), "silu": (-120, 120), "gelu_erf": (-16, 16),
              "gelu_tanh": (-16, 16)}
    r = ranges.get(op, (-20, 20))
    if op == "log":  # positive over the whole float range, subnormals included
        x = np.exp(rng.uniform(-103, 88, n)).astype(np.float32)
    else:
        x = rng.uniform(*r, n).astype(np.float32)
    extra = {"exp": [88.7, 88.73, -87.3, -103.9, -104.5, 1e-8], "log": [1.0, 1.0000001, 0.99999994, 3e-45, 3e38, -1.0],
             # Floats nearest multiples of pi/2: sin/cos near their zeros test the range reduction.
             "sin": [1e5, -7e5, 1e-20, *(np.float32(k * np.pi / 2) for k in (1, 2, 3, 4, 101, 1001, 20001, 63000))],
             "cos": [1e5, -3e6, *(np.float32(k * np.pi / 2) for k in (1, 2, 3, 5, 101, 1001, 20001, 63001))],
             "tanh": [0.6249, 0.6251, 9.1, 1e-20], "erf": [0.9999, 1.0001, 3.9, 11.5, 1e-20],
             "gelu_erf": [-0.88, -1.42, -2.83, -5.0, -9.0, -15.0, 20.0], "gelu_tanh": [-5.0, -8.0, 12.0],
             "sigmoid": [-87.0, -88.8, 100.0], "silu": [-87.0, -104.0, 100.0]}.get(op, [])
    return sprinkle(x, np.concatenate([F32_SPECIALS, np.array(extra, np.float32)]), rng, 0.05)


def unary_ref(op: str, x: np.ndarray, alpha: float, beta: float):
    """float32 numpy for the correctly rounded ops; float64 for the transcendental ones."""
    d = x.astype(np.float64)
    with np.errstate(all="ignore"):
        exact = {"neg": np.negative, "abs": np.abs, "sqrt": np.sqrt, "reciprocal": lambda v: np.float32(1) / v,
                 "relu": lambda v: np.where(v < 0, v.dtype.type(0), v), "floor": np.floor, "ceil": np.ceil,
                 "identity": lambda v: v, "not": lambda v: (v == 0).astype(np.uint8), "sign": np.sign,
                 "clip": lambda v: np.minimum(np.maximum(v, v.dtype.type(alpha)), v.dtype.type(beta))}
        if op in exact:
            return exact[op](x)
        two_u = 2 * math.sqrt(2 / math.pi) * d * (1 + 0.044715 * d * d)
        return {"exp": np.exp, "log": np.log, "erf": erf64, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
                "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "silu": lambda v: v / (1 + np.exp(-v)),
                "gelu_erf": lambda v: 0.5 * v * erfc64(-v / math.sqrt(2)),
                "gelu_tanh": lambda v: v / (1 + np.exp(-two_u))}[op](d)


def int_unary_ref(op, x, alpha, beta):
    info = np.iinfo(x.dtype)
    lo, hi = (x.dtype.type(max(alpha, info.min)), x.dtype.type(min(beta, info.max))) if op == "clip" else (0, 0)
    with np.errstate(all="ignore"):
        return {"neg": np.negative, "abs": np.abs, "relu": lambda v: np.maximum(v, 0),
                "clip": lambda v: np.minimum(np.maximum(v, lo), hi), "identity": lambda v: v,
                "sign": np.sign}[op](x)


def unary_inputs(op, dt, n, rng):
    if dt == "f32":
        return unary_domain(op, n, rng)
    if dt == "bool":
        return rng.integers(0, 2, n).astype(np.uint8)
    info = np.iinfo(NP[dt])
    edge = np.array([v for v in (info.min, info.max, 0, -1) if info.min <= v <= info.max], NP[dt])
    return sprinkle(rng.integers(max(info.min, -50), 50, n).astype(NP[dt]), edge, rng)


def check_unary(spec, x, got, alpha, beta, what):
    op, dt = spec.param("op"), spec.param("dtype")
    if dt != "f32":
        ref = int_unary_ref(op, x, alpha, beta) if dt != "bool" else unary_ref(op, x, alpha, beta)
        assert_exact(got, ref, what)  # integer/bool: exact
        return
    ref = unary_ref(op, x, alpha, beta)
    if ref.dtype == np.float32:
        assert_exact(got, ref, what)  # correctly rounded IEEE ops (and copies): numpy's bits
    else:
        # The ABI's 2e-6 relative for the approximations (libm in the scalar variants); outputs that
        # are subnormal get the absolute floor. sin/cos past 1e5 fall back to libm, which is exact-ish.
        assert_close(got, ref, TRANSCENDENTAL_RTOL, SUBNORMAL_FLOOR, what)


@pytest.mark.parametrize("spec", of("unary"), ids=lambda s: s.name)
def test_unary(x86_kernel_lib, x86_pool, spec, rng):
    op, dt = spec.param("op"), spec.param("dtype")
    alpha, beta = (-2.5, 3.0) if dt == "f32" else (-7.0, 30.0)
    fn = x86_kernel_lib.kernel(spec)
    for n in [*SIZES, 20000]:
        x = unary_inputs(op, dt, n, rng)
        y = np.zeros_like(x)
        fn(ptr(x), ptr(y), n, alpha, beta, x86_pool)
        check_unary(spec, x, y, alpha, beta, f"{spec.name} n={n}")
    # In place (y == x), with a length that leaves a vector tail.
    x = unary_inputs(op, dt, 77, rng)
    x0 = x.copy()
    fn(ptr(x), ptr(x), x.size, alpha, beta, None)
    check_unary(spec, x0, x, alpha, beta, f"{spec.name} in place")


@pytest.mark.parametrize("spec", [s for s in of("unary") if s.param("op") == "clip"], ids=lambda s: s.name)
def test_unary_clip_bounds(x86_kernel_lib, spec, rng):
    # Absent bounds arrive as -inf / +inf (they saturate for integers); lo > hi gives hi (ONNX).
    dt = spec.param("dtype")
    x = unary_inputs("clip", dt, 101, rng)
    for alpha, beta in [(-math.inf, math.inf), (-math.inf, 5.0), (3.0, 1.0), (0.0, 0.0)]:
        y = np.zeros_like(x)
        x86_kernel_lib.kernel(spec)(ptr(x), ptr(y), x.size, alpha, beta, None)
        check_unary(spec, x, y, alpha, beta, f"{spec.name} clip({alpha}, {beta})")


SPECIAL_CASES = {  # exact results the ABI requires
    "exp": ([-np.inf, np.inf, np.nan, 0.0, 89.0, -104.0], [0.0, np.inf, np.nan, 1.0, np.inf, 0.0]),
    "log": ([0.0, -0.0, -1.0, np.inf, np.nan, -np.inf, 1.0], [-np.inf, -np.inf, np.nan, np.inf, np.nan, np.nan, 0.0]),
    "tanh": ([np.inf, -np.inf, np.nan, 0.0, 30.0, -30.0], [1.0, -1.0, np.nan, 0.0, 1.0, -1.0]),
    "erf": ([np.inf, -np.inf, np.nan, 0.0, 12.0], [1.0, -1.0, np.nan, 0.0, 1.0]),
    "sigmoid": ([np.inf, -np.inf, np.nan, 0.0], [1.0, 0.0, np.nan, 0.5]),
    "silu": ([np.inf, np.nan, 0.0], [np.inf, np.nan, 0.0]),
    "gelu_erf": ([np.inf, np.nan, 0.0], [np.inf, np.nan, 0.0]),
    "gelu_tanh": ([np.inf, np.nan, 0.0], [np.inf, np.nan, 0.0]),
    "sin": ([np.inf, np.nan, 0.0], [np.nan, np.nan, 0.0]),
    "cos": ([np.inf, np.nan, 0.0], [np.nan, np.nan, 1.0]),
    "sqrt": ([-1.0, np.inf, -0.0], [np.nan, np.inf, -0.0]),
    "relu": ([np.nan, -np.inf, np.inf], [np.nan, 0.0, np.inf]),
}


@pytest.mark.parametrize("spec", [s for s in of("unary") if s.param("op") in SPECIAL_CASES
                                  and s.param("dtype") == "f32"], ids=lambda s: s.name)
def test_unary_special_values(x86_kernel_lib, spec):
    xs, want = SPECIAL_CASES[spec.param("op")]
    # Repeat so that both the vector body and the tail see every value.
    x = np.array(xs * 3, np.float32)
    y = np.zeros_like(x)
    x86_kernel_lib.kernel(spec)(ptr(x), ptr(y), x.size, 0.0, 0.0, None)
    assert_exact(y, np.array(want * 3, np.float32), spec.name)


# --------------------------------------------------------------------------------------------------
# cast

F16_EDGES = np.array([65504, 65519, 65520, 1e6, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14,
                      2.0 ** -14 - 2.0 ** -25, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 2049, 0.1, 1e-8, -1e-10],
                     np.float32)


def cast_inputs(src: str, dst: str, n: int, rng) -> np.ndarray:
    if src in ("f32", "f16"):
        if dst in ("f32", "f16", "bool"):
            x = sprinkle((rng.standard_normal(n) * 100).astype(np.float32),
                         np.concatenate([F32_SPECIALS, F16_EDGES, -F16_EDGES]), rng, 0.3)
        else:  # float -> int: values within the destination's range (out of range is unspecified)
            info = np.iinfo(NP[dst])
            lo, hi = max(info.min, -60000), min(info.max, 60000)
            x = rng.uniform(lo, hi + 0.999, n).astype(np.float32)
            x = sprinkle(x, np.array([-0.0, 0.999, -0.999, 0.5, -0.5, lo, hi], np.float32), rng)
        with np.errstate(over="ignore"):
            return x.astype(np.float16) if src == "f16" else x
    if src == "bool":
        return rng.integers(0, 2, n).astype(np.uint8)
    info = np.iinfo(NP[src])
    x = rng.integers(max(info.min, -100000), min(info.max, 100000) + 1, n).astype(NP[src])
    return sprinkle(x, np.array([info.min, info.max, 0, 1], NP[src]), rng)


def cast_ref(src: str, dst: str, x: np.ndarray) -> np.ndarray:
    if dst == "bool":
        return (x != 0).astype(np.uint8)
    with np.errstate(all="ignore"):
        if src == "bool":
            return x.astype(NP[dst])
        return x.astype(NP[dst])  # numpy truncates float -> int, wraps int -> int, rounds to nearest even


@pytest.mark.parametrize("spec", of("cast"), ids=lambda s: s.name)
def test_cast(x86_kernel_lib, x86_pool, spec, rng):
    src, dst = spec.param("src"), spec.param("dst")
    fn = x86_kernel_lib.kernel(spec)
    for n in [*SIZES, 30000]:
        x = cast_inputs(src, dst, n, rng)
        y = np.zeros(n, NP[dst])
        fn(ptr(x), ptr(y), n, x86_pool)
        ref = cast_ref(src, dst, x)
        # Exact: conversions are deterministic (RNE for f16). NaN payloads may differ, so for float
        # outputs compare NaN positions and the bits of everything else.
        assert_exact(y.view(np.uint8) if dst == "bool" else y, ref, f"{spec.name} n={n}")
        if dst == "f16":
            nan = np.isnan(ref)
            assert np.array_equal(np.isnan(y), nan) and np.array_equal(y[~nan].view(np.uint16),
                                                                       ref[~nan].view(np.uint16)), spec.name
    if np.dtype(NP[src]).itemsize == np.dtype(NP[dst]).itemsize:  # in place (y == x): same element size
        x = cast_inputs(src, dst, 77, rng)
        ref = cast_ref(src, dst, x)
        fn(ptr(x), ptr(x), x.size, None)
        assert_exact(x.view(NP[dst]), ref, f"{spec.name} in place")


# --------------------------------------------------------------------------------------------------
# reduce

REDUCE_SHAPES = [(1, 0, 1), (3, 0, 5), (1, 1, 1), (2, 7, 1), (3, 33, 1), (1, 1000, 1), (2, 5, 3),
                 (3, 9, 40), (2, 31, 33), (4, 1, 9), (1, 17, 100), (5, 8, 8), (300, 64, 1), (2, 3, 70)]


def reduce_ref(op: str, dt: str, x: np.ndarray) -> np.ndarray:
    o, r, i = x.shape
    if r == 0:
        if dt == "f32":
            return np.full((o, i), {"sum": 0.0, "mean": np.nan, "prod": 1.0, "max": -np.inf, "min": np.inf}[op])
        info = np.iinfo(np.int64)
        return np.full((o, i), {"sum": 0, "mean": 0, "prod": 1, "max": info.min, "min": info.max}[op], np.int64)
    if dt == "f32":
        d = x.astype(np.float64)
        return {"sum": d.sum(1), "mean": d.mean(1), "prod": d.prod(1), "max": x.max(1), "min": x.min(1)}[op]
    with np.errstate(all="ignore"):
        s = x.sum(1)  # wraps like the kernel
        mean = np.array([int(abs(int(v)) // r) * (1 if v >= 0 else -1) for v in s.reshape(-1)], np.int64)
        return {"sum": s, "prod": x.prod(1), "max": x.max(1), "min": x.min(1),
                "mean": mean.reshape(s.shape)}[op]


@pytest.mark.parametrize("spec", of("reduce"), ids=lambda s: s.name)
def test_reduce(x86_kernel_lib, x86_pool, spec, rng):
    op, dt = spec.param("op"), spec.param("dtype")
    fn = x86_kernel_lib.kernel(spec)
    for shape in REDUCE_SHAPES:
        o, r, i = shape
        if dt == "f32":
            x = (rng.uniform(0.6, 1.5, shape) if op == "prod" else rng.standard_normal(shape) * 3).astype(np.float32)
            if op in ("max", "min") and x.size:
                x.reshape(-1)[rng.integers(0, x.size)] = np.nan  # NaN propagates like numpy's max
        else:
            x = rng.integers(-5, 6, shape) if op == "prod" else rng.integers(-10**15, 10**15, shape)
            x = x.astype(np.int64)
        y = np.zeros((o, i), x.dtype)
        fn(ptr(x), ptr(y), o, r, i, x86_pool)
        ref = reduce_ref(op, dt, x)
        what = f"{spec.name} {shape}"
        if dt != "f32" or op in ("max", "min"):
            assert_exact(y, ref, what)  # integer arithmetic wraps identically; max/min select a value
        else:
            # Any fp32 summation order errs by at most (r-1)*u*sum|x_j| (mean: plus the division's
            # rounding); a product of r factors by about r*u relative. Both bounds are per output.
            scale = np.abs(x.astype(np.float64)).sum(1) if op != "prod" else np.abs(ref)
            if op == "mean":
                scale = scale / max(r, 1)
            assert_close(y, ref, 2 * U, (r + 1) * U * scale, what)


# --------------------------------------------------------------------------------------------------
# softmax

SOFTMAX_SHAPES = [(1, 1, 1), (3, 7, 1), (2, 8, 1), (4, 9, 1), (2, 31, 1), (1, 33, 1), (2, 1000, 1),
                  (2, 5, 3), (3, 9, 8), (2, 33, 17), (1, 1, 9), (4, 0, 1), (64, 256, 1)]


def softmax_ref(x, log):
    d = x.astype(np.float64)
    m = d.max(axis=1, keepdims=True)
    s = np.exp(d - m).sum(axis=1, keepdims=True)
    return (d - m - np.log(s)) if log else np.exp(d - m) / s, d - m, np.log(s)


@pytest.mark.parametrize("spec", of("softmax"), ids=lambda s: s.name)
def test_softmax(x86_kernel_lib, x86_pool, spec, rng):
    log = spec.param("op") == "logsoftmax"
    fn = x86_kernel_lib.kernel(spec)
    for shape in SOFTMAX_SHAPES:
        o, n, i = shape
        x = (rng.standard_normal(shape) * 4).astype(np.float32)
        if x.size:
            x[0] += 1e4  # large logits: stability (x - max) matters
            x[-1, : max(n - 1, 0)] = -np.inf  # masked positions (one key left, so the row is valid)
        y = np.full(shape, np.nan, np.float32)
        fn(ptr(x), ptr(y), o, n, i, x86_pool)
        if n == 0:
            continue
        ref, centered, log_sum = softmax_ref(x, log)
        # exp is within a few ulp, x - max rounds once in fp32 (error |x - max|*u, amplified by exp
        # into the same relative error), and the fp32 sum of n terms errs by at most n*u relative.
        # softmax: relative (8 + n + |x - max|)*u; log_softmax: absolute, the same terms times the
        # magnitudes they scale (|x - max| + |log sum| rounding, and n*u of the sum through the log).
        with np.errstate(invalid="ignore"):
            budget = (8 + n + np.nan_to_num(np.abs(centered), posinf=0.0)) * U
        if log:
            assert_close(y, ref, 2 * U, budget + (np.abs(log_sum) + 2) * U, f"{spec.name} {shape}")
        else:
            assert_close(y, ref, budget, SUBNORMAL_FLOOR, f"{spec.name} {shape}")
    # In place, with a whole row of -inf: x - max is NaN there, like the reference.
    x = (rng.standard_normal((3, 19, 1)) * 4).astype(np.float32)
    x[1] = -np.inf
    with np.errstate(invalid="ignore"):
        ref = softmax_ref(x, log)[0]
    fn(ptr(x), ptr(x), 3, 19, 1, None)
    assert np.isnan(x[1]).all() and np.isnan(ref[1]).all()
    assert_close(x[[0, 2]], ref[[0, 2]], (40 + 19) * U, (40 + 19) * U, f"{spec.name} in place")


# --------------------------------------------------------------------------------------------------
# norm

NORM_SHAPES = [(1, 1), (3, 7), (5, 33), (7, 9), (2, 1000), (4, 8), (2, 31), (129, 257)]


@pytest.mark.parametrize("affine", ["gamma_beta", "gamma", "beta", "none"])
@pytest.mark.parametrize("spec", of("norm"), ids=lambda s: s.name)
def test_norm(x86_kernel_lib, x86_pool, spec, affine, rng):
    rms = spec.param("op") == "rmsnorm"
    fn = x86_kernel_lib.kernel(spec)
    eps = 1e-5
    for rows, cols in NORM_SHAPES:
        # An offset of 3 makes the mean matter (a one-pass E[x^2] - E[x]^2 would lose digits here).
        x = (rng.standard_normal((rows, cols)) * 2 + 3).astype(np.float32)
        gamma = rng.uniform(0.5, 1.5, cols).astype(np.float32) if "gamma" in affine else None
        beta = rng.standard_normal(cols).astype(np.float32) if "beta" in affine else None
        y = np.zeros_like(x)
        fn(ptr(x), ptr(gamma), ptr(beta), ptr(y), rows, cols, eps, x86_pool)
        d = x.astype(np.float64)
        g = np.ones(cols) if gamma is None else gamma.astype(np.float64)
        b = np.zeros(cols) if beta is None or rms else beta.astype(np.float64)
        mean = np.zeros((rows, 1)) if rms else d.mean(1, keepdims=True)
        rstd = 1 / np.sqrt(((d - mean) ** 2).mean(1, keepdims=True) + eps)
        ref = (d - mean) * rstd * g + b
        # fp32 sums of `cols` terms err by <= cols*u relative (mean, variance -> rstd); the mean's
        # error moves x - mean by cols*u*max|x|, scaled by rstd*|g|; a few more roundings per output.
        tol = (cols + 8) * U * (np.abs(ref) + rstd * np.abs(g) * np.abs(d).max(1, keepdims=True) + np.abs(b))
        assert_close(y, ref, 0.0, tol, f"{spec.name} {affine} {rows}x{cols}")
    x = (rng.standard_normal((5, 37)) + 1).astype(np.float32)  # in place
    y = np.zeros_like(x)
    fn(ptr(x), None, None, ptr(y), 5, 37, eps, None)
    fn(ptr(x), None, None, ptr(x), 5, 37, eps, None)
    assert_exact(x, y, f"{spec.name} in place")


# --------------------------------------------------------------------------------------------------
# copy

def copy_cases(dtype, rng):
    """(src view, dst array, dst view) triples: the kernel copies src into dst view's elements."""
    def arr(shape):
        return np.asarray(rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True))
    cases = []
    for n in SIZES:
        cases.append((arr(n), None))
    base = arr((33, 65))
    cases += [
        (base.T, None),                                    # 2-d transpose (tiled path)
        (base[::-1, 2:50:3], None),                        # Slice with negative and >1 steps
        (base[5:6, ::-1], None),                           # one row, reversed
        (np.broadcast_to(arr((1, 7, 1)), (4, 7, 9)), None),  # Expand: zero strides
        (np.broadcast_to(arr(()), (3, 5)), None),          # scalar broadcast
        (arr(()), None),                                   # ndim 0
        (arr((2, 3, 4, 5, 6)).transpose(4, 1, 3, 0, 2), None),  # 5-d permutation
        (arr((2, 8, 3, 40)).transpose(0, 2, 1, 3), None),  # [B,S,H,D] -> [B,H,S,D]: memcpy runs
        (arr((3, 300, 200)).transpose(0, 2, 1), None),     # batched transpose, several tiles
        (arr((4, 0, 3)), None),                            # empty
    ]
    # Non-dense destination: write into a column block of a wider buffer (Concat).
    cases.append((arr((6, 10)), ("concat", (6, 25), (slice(None), slice(7, 17)))))
    return cases


@pytest.mark.parametrize("spec", of("copy"), ids=lambda s: s.name)
def test_copy(x86_kernel_lib, x86_pool, spec, rng):
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    fn = x86_kernel_lib.kernel(spec)
    for src, dst_spec in copy_cases(dtype, rng):
        shape = src.shape
        if dst_spec is None:
            full = np.zeros(shape, dtype)
            dst = full
        else:
            full = rng.integers(0, 100, dst_spec[1]).astype(dtype)
            dst = full[dst_spec[2]]
        before = full.copy()
        dims, s_src, s_dst = i64(shape), elem_strides(src, shape), elem_strides(dst, shape)
        fn(ptr(src), ptr(dst), len(shape), ptr(dims), ptr(s_src), ptr(s_dst), x86_pool)
        want = before.copy()
        if dst_spec is None:
            want = np.array(src)
        else:
            want[dst_spec[2]] = src
        assert_exact(full, want, f"{spec.name} {shape} src strides {src.strides}")  # data movement: exact


# --------------------------------------------------------------------------------------------------
# gather

GATHER_CASES = [  # outer, axis_len, inner, idx
    (1, 5, 1, [0, 4, -1, -5, 2]),
    (3, 7, 4, [6, -7, 0, 3, 3]),
    (2, 10, 33, [-1, 9, 0]),
    (4, 3, 1000, [1]),
    (2, 4, 5, []),
    (0, 4, 5, [1, 2]),
    (257, 9, 2, list(range(-9, 9))),
]


@pytest.mark.parametrize("spec", of("gather"), ids=lambda s: s.name)
def test_gather(x86_kernel_lib, x86_pool, spec, rng):
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    fn = x86_kernel_lib.kernel(spec)
    for outer, axis_len, inner, idx in GATHER_CASES:
        data = rng.integers(0, 200, (outer, axis_len, inner)).astype(dtype)
        idx = i64(idx)
        out = np.zeros((outer, len(idx), inner), dtype)
        fn(ptr(data), ptr(idx), ptr(out), outer, axis_len, inner, len(idx), x86_pool)
        assert not x86_kernel_lib.cdll.tcc_error_pending()
        assert_exact(out, np.take(data, idx, axis=1), f"{spec.name} {(outer, axis_len, inner, idx.tolist())}")


@pytest.mark.parametrize("bad", [5, -6, 2**40])
@pytest.mark.parametrize("spec", of("gather"), ids=lambda s: s.name)
def test_gather_out_of_range_raises(x86_kernel_lib, spec, bad):
    lib = x86_kernel_lib.cdll
    lib.tcc_clear_error()
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    data = np.zeros((2, 5, 3), dtype)
    idx = i64([0, bad, 1])
    out = np.zeros((2, 3, 3), dtype)
    x86_kernel_lib.kernel(spec)(ptr(data), ptr(idx), ptr(out), 2, 5, 3, 3, None)
    try:
        assert lib.tcc_error_pending()
        assert lib.tcc_error_message().decode() == f"Gather index {bad} out of range [-5, 5)"
    finally:
        lib.tcc_clear_error()
    assert not lib.tcc_error_pending()


# --------------------------------------------------------------------------------------------------
# range, trilu, fill

@pytest.mark.parametrize("spec", of("range"), ids=lambda s: s.name)
def test_range(x86_kernel_lib, x86_pool, spec):
    dt = spec.param("dtype")
    fn = x86_kernel_lib.kernel(spec)
    cases = [(-3.5, 0.25), (10.0, -0.1), (0.0, 1.0)] if dt == "f32" else [(-7, 3), (100, -9), (0, 1)]
    for start, delta in cases:
        for n in SIZES:
            s, d = np.array(start, NP[dt]), np.array(delta, NP[dt])
            out = np.zeros(n, NP[dt])
            fn(ptr(s), ptr(d), ptr(out), n, x86_pool)
            if dt == "f32":
                # Exact: start + i*delta is computed with one rounding (fma); the float64 reference is
                # exact for these small i, so rounding it to float32 gives the same bits.
                ref = (np.float64(s) + np.arange(n) * np.float64(d)).astype(np.float32)
            else:
                ref = (s + np.arange(n, dtype=NP[dt]) * d).astype(NP[dt])
            assert_exact(out, ref, f"{spec.name} start={start} delta={delta} n={n}")


@pytest.mark.parametrize("spec", of("trilu"), ids=lambda s: s.name)
def test_trilu(x86_kernel_lib, x86_pool, spec, rng):
    dtype = {1: np.uint8, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    upper = spec.param("upper") == 1
    fn = x86_kernel_lib.kernel(spec)
    for batch, rows, cols in [(1, 1, 1), (2, 5, 7), (3, 7, 5), (1, 0, 3), (2, 64, 130)]:
        for k in [-10**12, -10, -2, 0, 1, 3, 100, 10**12]:
            x = rng.integers(1, 200, (batch, rows, cols)).astype(dtype)
            y = np.full_like(x, 255)
            fn(ptr(x), ptr(y), batch, rows, cols, k, x86_pool)
            ref = np.triu(x, k) if upper else np.tril(x, k)
            assert_exact(y, ref, f"{spec.name} {(batch, rows, cols)} k={k}")  # data movement: exact
            fn(ptr(x), ptr(x), batch, rows, cols, k, x86_pool)  # in place
            assert_exact(x, ref, f"{spec.name} in place k={k}")


@pytest.mark.parametrize("spec", of("fill"), ids=lambda s: s.name)
def test_fill(x86_kernel_lib, x86_pool, spec):
    dtype = {1: np.uint8, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    for n in [*SIZES, 100000]:
        value = np.array(np.iinfo(dtype).max - 3, dtype)
        out = np.zeros(n + 1, dtype)  # one past the end must stay untouched
        x86_kernel_lib.kernel(spec)(ptr(out), ptr(value), n, x86_pool)
        assert_exact(out, np.r_[np.full(n, value), 0].astype(dtype), f"{spec.name} n={n}")


def test_variant_list_covers_the_abi():
    """The kernel list names which families are scalar-only; every other family has both variants."""
    families = {s.family for s in VARIANTS}
    assert families == {"binary", "where", "unary", "cast", "reduce", "softmax", "norm", "copy", "gather",
                        "range", "trilu", "fill"}
    scalar_only = {f for f in families if not any(s.family == f and s.variant == "avx2" for s in VARIANTS)}
    assert scalar_only == {"gather", "range", "trilu", "fill"}
    names = [s.name for s in VARIANTS]
    assert len(names) == len(set(names))
