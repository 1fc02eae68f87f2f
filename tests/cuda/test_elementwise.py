"""Every CUDA kernel of the elementwise and data-movement families (backends/cuda/kernels_elementwise.py) under
the SIMT emulator against numpy, and every one compiled by nvcc for sm_80 and sm_90.

All variants are built into one emulator library per session (two translation units, compiled in parallel;
the same two for nvcc's SASS check). Sizes are the launchers' edges: 0, 1, 31, 33 (a warp and a vector tail), 1007 (several
blocks, odd), rank 0, broadcasts that do and do not merge, a 9-d broadcast that cannot merge (the
launcher's host loop over the dims beyond 8), misaligned pointers (the scalar path of the vectorized
kernels); the reductions also run under the emulator's shuffled thread schedule.

Tolerances (u32 = 2^-24, fp32 unit roundoff; fp16 has an 11-bit significand, unit roundoff 2^-11):
- exact: integer and bool ops, comparisons, data movement, casts, and every f16 result of + - * / max min
  fmod neg abs floor ceil relu sqrt: the kernel computes in fp32 and rounds once to f16, which for the
  basic ops is the correctly rounded f16 result (24 >= 2*11 + 2), i.e. numpy's float16 of the float32
  result, bit for bit. The f32 variants substitute the CPU kernels' C expressions: for the IEEE basic ops
  they are numpy's float32 bits.
- transcendentals, f32: 2e-6 relative (the unary ABI's bound for the approximations; device libm's expf,
  erff, tanhf, ... are within 2 ulp), with an absolute floor of 1e-37 where the output is subnormal.
- transcendentals, f16: at most 1 ulp of fp16 from float16(exact): the fp32 value is within a few fp32 ulps
  of the exact one, so only a value within ~2^-11 ulp of an f16 rounding boundary can round the other way.
- sums (reduce, cumsum) over r terms in fp32: |err| <= r * u32 * sum|x| (any order of summation), plus for
  f16 outputs half an f16 ulp of the result (the final rounding), counted as 1 ulp.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from tcc.backends.cuda.kernels_elementwise import VARIANTS
from tcc.codegen.families import elementwise as ew
from tcc.codegen.kernels import render
from tests.ctypes_abi import argtypes_of

from . import harness

U32 = 2.0 ** -24
NP = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "i8": np.int8, "u8": np.uint8,
      "bool": np.uint8}
EWORD = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
SIZES = [0, 1, 31, 33, 1007]


class Lib:
    """The emulator library of all VARIANTS and one execution context; `run(spec, *args)` launches a kernel
    (numpy arrays pass as pointers: device memory is host memory) and returns the context's error ("" if none).
    Not harness.SimtLib.run: the copy tests pass strided views (negative and zero strides), which it refuses."""

    def __init__(self, cdll):
        self.cdll = cdll
        cdll.tcc_exec_create.restype = ctypes.c_void_p
        cdll.tcc_exec_create.argtypes = [ctypes.c_int]
        cdll.tcc_exec_sync.argtypes = [ctypes.c_void_p]
        cdll.tcc_exec_error.restype = ctypes.c_char_p
        cdll.tcc_exec_error.argtypes = [ctypes.c_void_p]
        cdll.tcc_exec_clear_error.argtypes = [ctypes.c_void_p]
        self.exec = cdll.tcc_exec_create(1)
        self.fns = {}

    def run(self, spec, *args) -> str:
        fn = self.fns.get(spec.name)
        if fn is None:
            fn = getattr(self.cdll, spec.name)
            fn.argtypes = argtypes_of(spec.signature)
            fn.restype = None
            self.fns[spec.name] = fn
        has_exec = "tcc_exec* exec" in spec.signature
        conv = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
        fn(*conv, *([self.exec] if has_exec else []))
        if self.cdll.tcc_exec_sync(self.exec) == 0:
            return ""
        msg = self.cdll.tcc_exec_error(self.exec).decode()
        self.cdll.tcc_exec_clear_error(self.exec)
        return msg or "error"

    def ok(self, spec, *args) -> None:
        err = self.run(spec, *args)
        assert err == "", f"{spec.name}: {err}"


def sources(parts: int = 1) -> list[str]:
    """The kernels as `parts` translation units (each kernel's code is in its own namespace, the shared helpers
    are guarded): the emulator's and CUDA's headers are compiled once per part, not once per kernel (~5x
    faster); two parts compile in parallel."""
    return ["\n".join(render(spec) for spec in VARIANTS[i::parts]) for i in range(parts)]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return Lib(harness.build_kernels(sources(2), str(tmp_path_factory.mktemp("cuda_elem"))))


def of(family: str, **params) -> list:
    return [s for s in VARIANTS if s.family == family and all(s.param(k) == v for k, v in params.items())]


def i64(v) -> np.ndarray:
    return np.ascontiguousarray(v, np.int64)


def estrides(a: np.ndarray, shape) -> np.ndarray:
    """a's strides in elements as broadcast to `shape` (0 on broadcast dims; negative kept)."""
    return i64([s // a.itemsize for s in np.broadcast_to(a, shape).strides])


def f16_ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in f16 ulps (ordered bit patterns; NaN equal to NaN)."""
    def key(x):
        b = x.astype(np.float16).view(np.int16).astype(np.int64)
        return np.where(b < 0, -(b & 0x7fff), b)
    g, w = np.asarray(got, np.float16), np.asarray(want, np.float16)
    both_nan = np.isnan(g) & np.isnan(w)
    return np.where(both_nan, 0, np.abs(key(g) - key(w)))


def rand(dt: str, shape, rng, lo=-100, hi=100) -> np.ndarray:
    if dt in ("f32", "f16"):
        v = rng.uniform(lo / 10, hi / 10, shape)
    elif dt == "bool":
        v = rng.integers(0, 2, shape)
    elif dt == "u8":
        v = rng.integers(0, 200, shape)
    else:
        v = rng.integers(lo, hi, shape)
    return np.asarray(v).astype(NP[dt])  # an array also for shape ()


# ---------------------------------------------------------------------------------------------------
# binary, where

def _binary_ref(op: str, dt: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if op in ew.COMPARE_OPS:
        f = {"equal": np.equal, "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
             "greater_equal": np.greater_equal}[op]
        return f(a, b).astype(np.uint8)
    if op in ew.LOGIC_OPS:
        return {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}[op](a != 0, b != 0).astype(np.uint8)
    if dt in ("f32", "f16"):
        x, y = a.astype(np.float32), b.astype(np.float32)
        with np.errstate(all="ignore"):
            r = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
                 "max": np.maximum, "min": np.minimum, "mod": np.fmod}[op](x, y)
            return r.astype(NP[dt])  # f16: overflow to inf is the point
    x, y = np.broadcast_arrays(a.astype(np.int64), b.astype(np.int64))
    with np.errstate(all="ignore"):
        if op == "div":
            q = np.where(y == 0, 0, np.abs(x) // np.where(y == 0, 1, np.abs(y)))
            r = np.where((x < 0) != (y < 0), -q, q)
        elif op == "mod":
            r = np.where(y == 0, 0, np.mod(x, np.where(y == 0, 1, y)))
        elif op == "pow":
            r = np.array([pow(int(p), int(q)) if q >= 0 else 0 for p, q in zip(x.ravel(), y.ravel())],
                         dtype=object).reshape(x.shape)
            r = np.array([int(v) & 0xffffffffffffffff for v in r.ravel()], np.uint64).reshape(x.shape)
            return r.astype(NP[dt])
        else:
            r = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[op](x, y)
    return r.astype(NP[dt])


def _binary_inputs(op: str, dt: str, sa, sb, rng):
    a, b = rand(dt, sa, rng), rand(dt, sb, rng)
    if op == "pow":
        b = np.asarray(rng.integers(0, 4, sb) if dt not in ("f32", "f16") else rng.uniform(-2, 3, sb)).astype(NP[dt])
        if dt in ("f32", "f16"):
            a = np.abs(a)
    if op in ("div", "mod") and dt in ("f32", "f16"):
        b = np.asarray(np.where(np.abs(b) < 0.5, 1.5, b)).astype(NP[dt])
    if op in ew.COMPARE_OPS:  # ties on purpose
        b = np.asarray(np.where(rng.random(sb) < 0.3, a.reshape(-1)[0] if a.size else 0, b)).astype(NP[dt])
    return np.asarray(a), np.asarray(b)  # arrays also for shape ()


# (a shape, b shape): same shape (the vectorized path), scalar broadcasts, a bias add ([B,S,H] + [H]),
# a two-sided broadcast, and a 9-d one that cannot merge (host loop over the dims beyond 8).
BINARY_SHAPES = [((n,), (n,)) for n in SIZES] + [
    ((), ()), ((33,), (1,)), ((1,), (1007,)), ((2, 3, 37), (37,)), ((3, 1, 5), (1, 4, 5)),
    ((2, 1, 2, 1, 2, 1, 2, 1, 2), (1, 2, 1, 2, 1, 2, 1, 2, 1))]


def _check_binary(lib, spec, a, b, shape, out=None, a_ptr=None):
    op, dt = spec.param("op"), spec.param("dtype")
    want = _binary_ref(op, dt, a, b)
    got = np.zeros(shape, want.dtype) if out is None else out
    lib.ok(spec, a if a_ptr is None else a_ptr, b, got, np.int32(len(shape)), i64(shape), estrides(a, shape),
           estrides(b, shape))
    if dt == "f16" and op == "pow":  # powf vs numpy's float32 power: 1 ulp of fp32, so <= 1 ulp of fp16
        assert f16_ulps(got, want).max(initial=0) <= 1, spec.name
    elif dt in ("f32", "f16") and op == "pow":
        np.testing.assert_allclose(got, want, rtol=2e-6, err_msg=spec.name)
    else:
        assert got.tobytes() == want.tobytes(), f"{spec.name} {shape}"


@pytest.mark.parametrize("spec", of("binary"), ids=lambda s: s.name)
def test_binary(lib, spec):
    rng = np.random.default_rng(1)
    op, dt = spec.param("op"), spec.param("dtype")
    for sa, sb in BINARY_SHAPES:
        shape = np.broadcast_shapes(sa, sb)
        a, b = _binary_inputs(op, dt, sa, sb, rng)
        _check_binary(lib, spec, a, b, shape)
    # misaligned a (one element into a buffer): the launcher's element-by-element path
    buf, b = _binary_inputs(op, dt, (1008,), (1007,), rng)
    _check_binary(lib, spec, buf[1:], b, (1007,))


def test_binary_f16_specials_and_in_place(lib):
    """f16 add/mul of every rounding case (random bit patterns: subnormals, inf, NaN, overflow) equal
    numpy's float16 of the float32 result, bit for bit; out aliasing a works."""
    rng = np.random.default_rng(2)
    for op in ("add", "sub", "mul", "div", "max", "min"):
        spec = of("binary", op=op, dtype="f16")[0]
        a = rng.integers(0, 1 << 16, 4099).astype(np.uint16).view(np.float16)
        b = rng.integers(0, 1 << 16, 4099).astype(np.uint16).view(np.float16)
        want = _binary_ref(op, "f16", a, b)
        got = np.zeros_like(a)
        lib.ok(spec, a, b, got, np.int32(1), i64([4099]), i64([1]), i64([1]))
        nan = np.isnan(want)
        assert (np.isnan(got) == nan).all(), op
        assert got[~nan].tobytes() == want[~nan].tobytes(), op
    spec = of("binary", op="add", dtype="f32")[0]
    a, b = rng.random(1007).astype(np.float32), rng.random(1007).astype(np.float32)
    want = a + b
    lib.ok(spec, a, b, a, np.int32(1), i64([1007]), i64([1]), i64([1]))  # out is a
    assert a.tobytes() == want.tobytes()


@pytest.mark.parametrize("spec", of("where"), ids=lambda s: s.name)
def test_where(lib, spec):
    rng = np.random.default_rng(3)
    dt = spec.param("dtype")
    for sc, sx, sy in [((n,), (n,), (n,)) for n in SIZES] + [
            ((), (), ()), ((1,), (33,), (1,)), ((2, 1, 5), (1, 3, 5), (5,)), ((1, 1, 4, 6), (2, 1, 1, 6), (2, 3, 4, 6)),
            ((2, 1, 2, 1, 2, 1, 2, 1, 2), (1, 2, 1, 2, 1, 2, 1, 2, 1), (2,))]:
        shape = np.broadcast_shapes(sc, sx, sy)
        c, x, y = np.asarray(rand("bool", sc, rng) * 3), rand(dt, sx, rng), rand(dt, sy, rng)
        got = np.zeros(shape, NP[dt])
        lib.ok(spec, c, x, y, got, np.int32(len(shape)), i64(shape), estrides(c, shape), estrides(x, shape),
               estrides(y, shape))
        assert got.tobytes() == np.where(c != 0, x, y).astype(NP[dt]).tobytes(), shape
    # misaligned x (one element into a buffer): the element-by-element path; and out aliasing y
    c, x, y = rand("bool", (1007,), rng), rand(dt, (1008,), rng)[1:], rand(dt, (1007,), rng)
    for out in (np.zeros(1007, NP[dt]), y):
        want = np.where(c != 0, x, y)
        lib.ok(spec, c, x, y, out, np.int32(1), i64([1007]), i64([1]), i64([1]), i64([1]))
        assert out.tobytes() == want.tobytes()


# ---------------------------------------------------------------------------------------------------
# unary

def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _erfc(x):
    return np.vectorize(math.erfc, otypes=[np.float64])(x)


def _unary_ref64(op: str, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        return {
            "neg": lambda: -x, "abs": lambda: np.abs(x), "exp": lambda: np.exp(x), "log": lambda: np.log(x),
            "sqrt": lambda: np.sqrt(x), "reciprocal": lambda: 1.0 / x, "erf": lambda: _erf(x),
            "tanh": lambda: np.tanh(x), "sigmoid": lambda: 1.0 / (1.0 + np.exp(-x)),
            "relu": lambda: np.where(x < 0, 0.0, x),
            "gelu_erf": lambda: 0.5 * x * _erfc(-x / math.sqrt(2.0)),  # erfc: no cancellation for x < 0
            "gelu_tanh": lambda: x / (1.0 + np.exp(-2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
            "silu": lambda: x / (1.0 + np.exp(-x)), "clip": lambda: np.minimum(np.maximum(x, lo), hi),
            "floor": lambda: np.floor(x), "ceil": lambda: np.ceil(x), "sin": lambda: np.sin(x),
            "cos": lambda: np.cos(x), "sign": lambda: np.sign(x), "identity": lambda: x,
        }[op]()


@pytest.mark.parametrize("spec", of("unary"), ids=lambda s: s.name)
def test_unary(lib, spec):
    rng = np.random.default_rng(4)
    op, dt = spec.param("op"), spec.param("dtype")
    lo, hi = (-2.5, 3.5) if op == "clip" else (0.0, 0.0)
    for n in SIZES + [1008]:
        x = rand(dt, (n,), rng)
        if op in ("log", "sqrt"):
            x = np.abs(x)
        if op == "reciprocal":
            x = np.where(x == 0, 1, x).astype(x.dtype)
        src = x[1:] if n == 1008 else x  # misaligned: the element-by-element path
        y = np.zeros(src.shape, src.dtype)
        lib.ok(spec, src, y, np.int64(src.size), np.float32(lo), np.float32(hi))
        if dt == "bool":
            want = (src == 0).astype(np.uint8) if op == "not" else src
        elif dt not in ("f32", "f16"):
            want = {"neg": lambda: -src, "abs": lambda: np.abs(src), "relu": lambda: np.maximum(src, 0),
                    "clip": lambda: np.clip(src, int(lo), int(hi)), "sign": lambda: np.sign(src),
                    "identity": lambda: src}[op]().astype(src.dtype)
        else:
            want64 = _unary_ref64(op, src, lo, hi)
            if op in ew.TRANSCENDENTAL:
                if dt == "f16":
                    assert f16_ulps(y, want64.astype(np.float16)).max(initial=0) <= 1, f"{spec.name} n={n}"
                else:
                    np.testing.assert_allclose(y, want64, rtol=2e-6, atol=1e-37, err_msg=spec.name)
                continue
            want = want64.astype(np.float32).astype(src.dtype)  # exact ops: one rounding
        assert y.tobytes() == want.tobytes(), f"{spec.name} n={n}"


def test_unary_in_place(lib):
    spec = of("unary", op="silu", dtype="f16")[0]
    x = np.linspace(-8, 8, 1007).astype(np.float16)
    want = _unary_ref64("silu", x, 0, 0).astype(np.float16)
    lib.ok(spec, x, x, np.int64(1007), np.float32(0), np.float32(0))
    assert f16_ulps(x, want).max() <= 1


# ---------------------------------------------------------------------------------------------------
# cast

def _cast_ref(src: str, dst: str, x: np.ndarray) -> np.ndarray:
    if dst == "bool":
        return (x != 0).astype(np.uint8)
    if dst == "f16":
        return x.astype(np.float16) if src == "f32" else x.astype(np.float32).astype(np.float16)
    if src in ("f32", "f16") and dst not in ("f32", "f16"):
        return np.trunc(x.astype(np.float64)).astype(np.int64).astype(NP[dst])  # truncate, then wrap
    return x.astype(NP[dst])


@pytest.mark.parametrize("spec", of("cast"), ids=lambda s: s.name)
def test_cast(lib, spec):
    rng = np.random.default_rng(5)
    src, dst = spec.param("src"), spec.param("dst")
    for n in SIZES + [1008]:
        x = rand(src, (n,), rng, -120, 120)
        if src in ("f32", "f16") and dst == "u8":
            x = np.abs(x)
        if src in ("f32", "f16"):
            x[: n // 4] = np.round(x[: n // 4])  # exact integers, zeros among them
        xs = x[1:] if n == 1008 else x
        y = np.zeros(xs.shape, NP[dst])
        lib.ok(spec, xs, y, np.int64(xs.size))
        assert y.tobytes() == _cast_ref(src, dst, xs).tobytes(), f"{spec.name} n={n}"


def test_cast_f16_rounding(lib):
    """f32 -> f16 of random bit patterns around the f16 range (subnormals, ties, overflow to inf) equals
    numpy's round-to-nearest-even; f16 -> f32 of every f16 bit pattern is exact."""
    rng = np.random.default_rng(15)
    bits = rng.integers(0x30000000, 0x48000000, 4099, dtype=np.int64).astype(np.uint32)
    bits[::7] = (bits[::7] & 0xffffe000) | 0x1000  # exact ties of the 13 dropped bits (normal range)
    x = np.concatenate([bits.view(np.float32), -bits.view(np.float32)[:100],
                        np.array([0.0, -0.0, np.inf, -np.inf, 65519.996, 65520.0, 6e-8, 2.9e-8], np.float32)])
    y = np.zeros(x.size, np.float16)
    lib.ok(of("cast", src="f32", dst="f16")[0], x, y, np.int64(x.size))
    with np.errstate(over="ignore"):
        assert y.tobytes() == x.astype(np.float16).tobytes()
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f = np.zeros(h.size, np.float32)
    lib.ok(of("cast", src="f16", dst="f32")[0], h, f, np.int64(h.size))
    nan = np.isnan(h)
    assert np.isnan(f[nan]).all() and f[~nan].tobytes() == h[~nan].astype(np.float32).tobytes()


# ---------------------------------------------------------------------------------------------------
# reduce, cumsum

REDUCE_SHAPES = [(1, 1, 1), (3, 0, 2), (2, 0, 1), (1, 31, 1), (5, 33, 1), (7, 1007, 1), (2, 3000, 1),
                 (2, 5, 33), (3, 7, 1)]


@pytest.mark.parametrize("spec", of("reduce"), ids=lambda s: s.name)
def test_reduce(lib, spec):
    rng = np.random.default_rng(6)
    op, dt = spec.param("op"), spec.param("dtype")
    for outer, r, inner in REDUCE_SHAPES:
        if op == "prod" and r > 40:
            continue  # products of many terms over/underflow: 33 terms cover the warp paths
        x = rand(dt, (outer, r, inner), rng, -30, 30)
        if op == "prod":
            x = (rng.uniform(0.5, 1.5, x.shape) * rng.choice([-1, 1], x.shape)).astype(NP[dt]) if dt != "i64" \
                else rng.integers(-3, 4, x.shape).astype(np.int64)
        y = np.zeros((outer, inner), NP[dt])
        lib.ok(spec, x, y, np.int64(outer), np.int64(r), np.int64(inner))
        if dt == "i64":
            with np.errstate(all="ignore"):
                want = {"sum": lambda: x.sum(1), "mean": lambda: (np.trunc(x.sum(1) / r) if r else np.zeros((outer, inner))),
                        "max": lambda: x.max(1, initial=np.iinfo(np.int64).min),
                        "min": lambda: x.min(1, initial=np.iinfo(np.int64).max), "prod": lambda: x.prod(1)}[op]()
            assert (y == want.astype(np.int64)).all(), f"{spec.name} {(outer, r, inner)}"
            continue
        x64 = x.astype(np.float64)
        with np.errstate(all="ignore"):
            want = {"sum": lambda: x64.sum(1), "mean": lambda: x64.sum(1) / r, "prod": lambda: x64.prod(1),
                    "max": lambda: x64.max(1, initial=-np.inf), "min": lambda: x64.min(1, initial=np.inf)}[op]()
        if op in ("max", "min"):
            assert y.tobytes() == want.astype(NP[dt]).tobytes(), spec.name
            continue
        # fp32 accumulation of r terms (any order): r * u32 * sum|x| (prod: r * u32 relative), then the
        # f16 rounding of the result.
        if r == 0 and op == "mean":
            assert np.isnan(y).all(), spec.name
            continue
        mag = np.abs(x64).sum(1) / (r if op == "mean" else 1) if op != "prod" else np.abs(want)
        bound = (r + 1) * U32 * mag + (np.abs(want) * 2.0 ** -11 if dt == "f16" else 0)
        assert (np.abs(y.astype(np.float64) - want) <= bound + 1e-30).all(), f"{spec.name} {(outer, r, inner)}"


def test_reductions_shuffled_schedule(lib):
    """The warp and block reductions and the warp scan under the emulator's shuffled thread order (a missing
    barrier or a race on the shared scratch shows up as a wrong result or an emulator error)."""
    rng = np.random.default_rng(14)
    lib.cdll.set_seed(20261206)
    try:
        for outer, r in ((2, 3000), (9, 70)):  # the block-per-row and the warp-per-row kernels
            x = rng.integers(-1000, 1000, (outer, r, 1)).astype(np.int64)
            y = np.zeros((outer, 1), np.int64)
            lib.ok(of("reduce", op="sum", dtype="i64")[0], x, y, np.int64(outer), np.int64(r), np.int64(1))
            assert (y == x.sum(1)).all()
        x = rng.integers(-1000, 1000, (3, 1007, 1)).astype(np.int64)
        y = np.zeros_like(x)
        lib.ok(of("cumsum", dtype="i64")[0], x, y, np.int64(3), np.int64(1007), np.int64(1), np.int32(0), np.int32(0))
        assert (y == np.cumsum(x, 1)).all()
    finally:
        lib.cdll.set_seed(0)


@pytest.mark.parametrize("spec", of("cumsum"), ids=lambda s: s.name)
def test_cumsum(lib, spec):
    rng = np.random.default_rng(7)
    dt = spec.param("dtype")
    for outer, n, inner in [(1, 1, 1), (2, 0, 3), (3, 31, 1), (2, 33, 1), (1, 1007, 1), (2, 5, 33)]:
        for exclusive in (0, 1):
            for reverse in (0, 1):
                x = rand(dt, (outer, n, inner), rng, -20, 20)
                y = np.full(x.shape, 77, NP[dt])
                lib.ok(spec, x, y, np.int64(outer), np.int64(n), np.int64(inner), np.int32(exclusive),
                       np.int32(reverse))
                acc = x.astype(np.float64 if dt in ("f32", "f16") else np.int64)
                xs = np.flip(acc, 1) if reverse else acc
                c = np.cumsum(xs, 1)
                if exclusive:
                    c = c - xs
                want = np.flip(c, 1) if reverse else c
                case = f"{spec.name} {(outer, n, inner)} excl={exclusive} rev={reverse}"
                if dt not in ("f32", "f16"):
                    assert (y == want.astype(NP[dt])).all(), case
                    continue
                mag = np.cumsum(np.abs(xs), 1)
                mag = np.flip(mag, 1) if reverse else mag
                bound = (n + 1) * U32 * mag + (np.abs(want) * 2.0 ** -11 if dt == "f16" else 0)
                assert (np.abs(y.astype(np.float64) - want) <= bound + 1e-30).all(), case


# ---------------------------------------------------------------------------------------------------
# copy, trilu, fill, range

@pytest.mark.parametrize("spec", of("copy"), ids=lambda s: s.name)
def test_copy(lib, spec):
    rng = np.random.default_rng(8)
    t = EWORD[spec.param("esize")]
    base = rng.integers(0, 250, (6, 7, 9)).astype(t)
    dst_base = np.zeros((12, 7, 9), t)
    cases = [
        (base, np.zeros_like(base)),                              # one contiguous run: the widest words
        (base[:, :, 1:], np.zeros((6, 7, 8), t)),                 # rows of 8, strided source
        (base[::-1, ::2, ::-3], np.zeros((6, 4, 3), t)),          # negative strides
        (np.broadcast_to(base[:1, :, :1], (6, 7, 5)), dst_base[::2, :, :5]),  # zero strides, strided dst
        (base.reshape(-1)[1:34], np.zeros(33, t)),                # misaligned contiguous
        (base.reshape(-1)[:0], np.zeros(0, t)),
        (base.reshape(-1)[5:6].reshape(()), np.zeros((), t)),     # rank 0
        # 9 dims that cannot merge (alternating broadcast): the host loop over the dims beyond 8
        (np.broadcast_to(base.reshape(-1)[:16].reshape(1, 2, 1, 2, 1, 2, 1, 2, 1), (2,) * 9), np.zeros((2,) * 9, t)),
    ]
    for src, dst in cases:
        shape = src.shape
        dst[...] = 0
        lib.ok(spec, src, dst, np.int32(len(shape)), i64(shape), estrides(src, shape), estrides(dst, shape))
        assert (dst == src).all(), f"{spec.name} {shape}"


@pytest.mark.parametrize("spec", of("trilu"), ids=lambda s: s.name)
def test_trilu(lib, spec):
    rng = np.random.default_rng(9)
    t, upper = EWORD[spec.param("esize")], spec.param("upper")
    for batch, rows, cols in [(1, 1, 1), (2, 5, 7), (1, 33, 31), (3, 4, 0)]:
        for k in (-100, -2, 0, 1, 3, 1 << 62):
            x = rng.integers(1, 250, (batch, rows, cols)).astype(t)
            y = np.full_like(x, 7)
            lib.ok(spec, x, y, np.int64(batch), np.int64(rows), np.int64(cols), np.int64(k))
            kk = max(min(k, cols + 1), -rows - 1)
            want = np.triu(x, kk) if upper else np.tril(x, kk)
            assert (y == want).all(), f"{spec.name} {(batch, rows, cols)} k={k}"
    x = rng.integers(1, 250, (2, 9, 9)).astype(t)
    want = np.triu(x, 1) if upper else np.tril(x, 1)
    lib.ok(spec, x, x, np.int64(2), np.int64(9), np.int64(9), np.int64(1))  # in place
    assert (x == want).all()


@pytest.mark.parametrize("spec", of("fill"), ids=lambda s: s.name)
def test_fill(lib, spec):
    t = EWORD[spec.param("esize")]
    for n in SIZES:
        value = np.array([0xA5], t)
        out = np.zeros(n + 1, t)
        lib.ok(spec, out, value, np.int64(n))
        assert (out[:n] == 0xA5).all() and out[n] == 0


@pytest.mark.parametrize("spec", of("range"), ids=lambda s: s.name)
def test_range(lib, spec):
    dt = spec.param("dtype")
    for n, s, d in [(0, 1, 1), (1, 3, 2), (33, -5, 3), (1007, 10, -1)]:
        if dt in ("f32", "f16"):
            s, d = s + 0.25, d * 0.5
        start, delta = np.array([s], NP[dt]), np.array([d], NP[dt])
        out = np.zeros(n, NP[dt])
        lib.ok(spec, start, delta, out, np.int64(n))
        i = np.arange(n)
        if dt in ("f32", "f16"):
            want = (float(start[0]) + i * float(delta[0])).astype(np.float32).astype(NP[dt])
        else:
            want = (int(start[0]) + i * int(delta[0])).astype(NP[dt])
        assert out.tobytes() == want.tobytes(), f"{spec.name} n={n}"


# ---------------------------------------------------------------------------------------------------
# gather, gathernd, gatherelements, scatternd (index errors: one line through tcc_exec_error)

def _index_error(msg: str, value: int) -> None:
    assert msg and "\n" not in msg and str(value) in msg and "out of range" in msg, msg


@pytest.mark.parametrize("spec", of("gather"), ids=lambda s: s.name)
def test_gather(lib, spec):
    rng = np.random.default_rng(10)
    t = EWORD[spec.param("esize")]
    for outer, axis_len, inner, n_idx in [(1, 5, 1, 3), (2, 7, 33, 4), (1, 50, 64, 17), (3, 4, 8, 0), (1, 1, 1, 1)]:
        data = rng.integers(0, 250, (outer, axis_len, inner)).astype(t)
        idx = rng.integers(-axis_len, axis_len, n_idx).astype(np.int64)
        out = np.zeros((outer, n_idx, inner), t)
        lib.ok(spec, data, idx, out, np.int64(outer), np.int64(axis_len), np.int64(inner), np.int64(n_idx))
        assert (out == np.take(data, idx, axis=1)).all(), f"{spec.name} {(outer, axis_len, inner, n_idx)}"
    data = np.zeros((1, 4, 3), t)
    for bad in (4, -5):
        out = np.zeros((1, 2, 3), t)
        _index_error(lib.run(spec, data, i64([0, bad]), out, np.int64(1), np.int64(4), np.int64(3), np.int64(2)), bad)


@pytest.mark.parametrize("spec", of("gathernd"), ids=lambda s: s.name)
def test_gathernd(lib, spec):
    rng = np.random.default_rng(11)
    t = EWORD[spec.param("esize")]
    # data [batch, d0, .., d(k-1), slice...]; idx [batch, n_idx, k]
    for batch, dims, slice_, n_idx in [(1, (4,), 1, 3), (2, (3, 5), 8, 4), (1, (2, 3, 4), 33, 5), (2, (), 6, 2)]:
        k = len(dims)
        data = rng.integers(0, 250, (batch, *dims, slice_)).astype(t)
        idx = np.stack([rng.integers(-d, d, (batch, n_idx)) for d in dims], -1).astype(np.int64) if k \
            else np.zeros((batch, n_idx, 0), np.int64)
        out = np.zeros((batch, n_idx, slice_), t)
        dstride = int(np.prod(dims, dtype=np.int64)) * slice_
        lib.ok(spec, data, np.ascontiguousarray(idx), out, np.int64(batch), np.int64(n_idx), np.int32(k),
               i64(list(dims) or [0]), np.int64(slice_), np.int64(dstride))
        for b in range(batch):
            for i in range(n_idx):
                assert (out[b, i] == data[b][tuple(int(v) for v in idx[b, i])]).all(), spec.name
    data = np.zeros((1, 3, 4, 2), t)
    out = np.zeros((1, 1, 2), t)
    _index_error(lib.run(spec, data, i64([[[1, -5]]]), out, np.int64(1), np.int64(1), np.int32(2), i64([3, 4]),
                         np.int64(2), np.int64(24)), -5)


@pytest.mark.parametrize("spec", of("gatherelements"), ids=lambda s: s.name)
def test_gatherelements(lib, spec):
    rng = np.random.default_rng(12)
    t = EWORD[spec.param("esize")]
    for dshape, oshape, axis in [((5,), (3,), 0), ((4, 6), (4, 3), 1), ((3, 4, 5), (2, 4, 5), 0),
                                 ((2, 3, 4), (2, 3, 33), 2), ((2,) * 8, (2,) * 7 + (1,), 7)]:
        data = rng.integers(0, 250, dshape).astype(t)
        idx = rng.integers(-dshape[axis], dshape[axis], oshape).astype(np.int64)
        out = np.zeros(oshape, t)
        lib.ok(spec, data, idx, out, np.int32(len(oshape)), i64(oshape), estrides(data, dshape), np.int32(axis),
               np.int64(dshape[axis]))
        want = np.take_along_axis(data, np.where(idx < 0, idx + dshape[axis], idx), axis)
        assert (out == want).all(), f"{spec.name} {dshape}"
    data = np.zeros((2, 3), t)
    out = np.zeros((2, 1), t)
    _index_error(lib.run(spec, data, i64([[0], [3]]), out, np.int32(2), i64([2, 1]), i64([3, 1]), np.int32(1),
                         np.int64(3)), 3)


@pytest.mark.parametrize("spec", of("scatternd"), ids=lambda s: s.name)
def test_scatternd(lib, spec):
    rng = np.random.default_rng(13)
    op, dt = spec.param("op"), spec.param("dtype")
    for dims, slice_, n_idx in [((4,), 1, 3), ((3, 5), 8, 6), ((6,), 33, 10), ((2, 3), 4, 0)]:
        k = len(dims)
        data = rand(dt, (*dims, slice_), rng, -20, 20)
        if op == "none":  # duplicates are undefined without a reduction: distinct indices
            n_idx = min(n_idx, int(np.prod(dims)))
            flat = rng.permutation(int(np.prod(dims)))[:n_idx]
            coords = np.stack(np.unravel_index(flat, dims), -1) if n_idx else np.zeros((0, k), np.int64)
        else:
            coords = np.stack([rng.integers(0, d, n_idx) for d in dims], -1)  # with duplicates
        idx = np.where(rng.random(coords.shape) < 0.3, coords - np.array(dims), coords).astype(np.int64)
        upd = rand(dt, (n_idx, slice_), rng, -20, 20)
        if op == "mul":
            upd = (np.sign(upd) + (upd == 0)).astype(NP[dt]) * (2 if dt not in ("f32", "f16") else 1.5)
            upd = upd.astype(NP[dt])
        out = np.zeros_like(data)
        lib.ok(spec, data, np.ascontiguousarray(idx), upd, out, np.int64(data.size), np.int64(n_idx), np.int32(k),
               i64(dims), np.int64(slice_))
        want = data.copy()
        for i in range(n_idx):
            pos = tuple(int(c) for c in coords[i])
            o, u = want[pos], upd[i]
            if dt in ("f32", "f16"):
                o, u = o.astype(np.float32), u.astype(np.float32)
            with np.errstate(all="ignore"):
                r = {"none": lambda: u, "add": lambda: o + u, "mul": lambda: o * u, "max": lambda: np.maximum(o, u),
                     "min": lambda: np.minimum(o, u)}[op]()
            want[pos] = r.astype(NP[dt])
        assert out.tobytes() == want.tobytes(), f"{spec.name} {dims}"
    data = np.zeros((3, 2), NP[dt])
    out = np.zeros_like(data)
    _index_error(lib.run(spec, data, i64([[1], [-4]]), np.zeros((2, 2), NP[dt]), out, np.int64(6), np.int64(2),
                         np.int32(1), i64([3]), np.int64(2)), -4)


def test_refused_ranks(lib):
    """What the launchers cannot take (a rank above 64; gathernd/gatherelements beyond the 8 dims that travel
    by value) fails the run in one line instead of reading past the host arrays."""
    ones = i64([1] * 65)
    a = np.ones(1, np.float32)
    out = np.zeros(1, np.float32)
    _index_error(lib.run(of("binary", op="add", dtype="f32")[0], a, a, out, np.int32(65), ones, ones * 0, ones * 0), 65)
    data, idx = np.zeros(2 ** 9, np.uint8), np.zeros(9, np.int64)
    _index_error(lib.run(of("gathernd", esize=1)[0], data, idx, np.zeros(1, np.uint8), np.int64(1), np.int64(1),
                         np.int32(9), i64([2] * 9), np.int64(1), np.int64(512)), 9)
    _index_error(lib.run(of("gatherelements", esize=1)[0], data, idx, np.zeros(1, np.uint8), np.int32(9),
                         i64([1] * 9), i64([1] * 9), np.int32(0), np.int64(2)), 9)


# ---------------------------------------------------------------------------------------------------

def test_nvcc_sm80_sm90(tmp_path):
    """Every variant compiles with nvcc for sm_80 and sm_90, SASS for both in the fatbinary (two translation
    units compiled in parallel), and each launcher is in an object."""
    objects = harness.nvcc_compile(sources(2), archs=("sm_80", "sm_90"), tmpdir=str(tmp_path), jobs=2)
    symbols = b""
    for obj in objects.values():
        with open(obj, "rb") as f:
            symbols += f.read()  # the launchers' C names are in the objects' symbol tables
    missing = [s.name for s in VARIANTS if s.name.encode() not in symbols]
    assert not missing, missing
