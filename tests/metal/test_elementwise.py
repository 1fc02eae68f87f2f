"""Metal element-wise and data-movement kernels (backends/metal/kernels.py: unary, cast, copy, gather, fill,
range, qgather, where, cumsum, gathernd, gatherelements, reduce, trilu, scatternd) on the SIMT emulator against numpy.

Tolerances: unary computes in fp32 and rounds once: the output's rounding (2^-11 relative for fp16, 2^-24 for
f32) plus fp32 libm-class error, 2^-20 of |ref| + |x| (a wrong function errs by far more). Everything else
moves or converts values exactly: compared bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.backends.metal import kernels as mk
from tcc.codegen.families import packing as cpu_packing
from tcc.ir.quant_arith import quantize_int4

from .harness import build_metal

NP = {"f16": np.float16, "f32": np.float32, "i64": np.int64, "i32": np.int32, "i8": np.int8, "u8": np.uint8,
      "bool": np.uint8}
FAMILIES = ("unary", "cast", "copy", "gather", "fill", "range", "qgather", "where", "cumsum", "gathernd", "gatherelements", "reduce", "trilu",
            "scatternd")
SPECS = [s for s in mk.VARIANTS if s.family in FAMILIES]
IDS = lambda spec: spec.name  # noqa: E731


def by_family(family):
    return [s for s in SPECS if s.family == family]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = build_metal(SPECS, str(tmp_path_factory.mktemp("metal_elementwise")))
    lib.set_seed(7)
    return lib


def call(lib, spec, *args):
    conv = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
    with lib.exec() as ex:
        lib.fn(spec.name)(*conv, ex.handle)
        return ex.sync()


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


def _erf(x):
    import math

    return np.vectorize(math.erf)(x)


REF = {"erf": _erf, "gelu_erf": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))), "neg": np.negative, "abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
       "reciprocal": lambda x: 1 / x, "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
       "relu": lambda x: np.maximum(x, 0), "silu": lambda x: x / (1 + np.exp(-x)), "gelu_tanh": _gelu_tanh,
       "clip": lambda x: np.clip(x, -0.5, 1.25), "floor": np.floor, "ceil": np.ceil, "sin": np.sin, "cos": np.cos,
       "sign": np.sign, "identity": lambda x: x}


@pytest.mark.parametrize("spec", by_family("unary"), ids=IDS)
def test_unary(lib, spec):
    op, dt = spec.param("op"), spec.param("dtype")
    T = NP[dt]
    rng = np.random.default_rng(len(op))
    n = 1000  # not a multiple of the 256-thread threadgroups: a partial one
    x = (rng.standard_normal(n) * 3).astype(T)
    if op in ("log", "sqrt"):
        x = np.abs(x) + T(0.01)
    x[:4] = np.array([0.0, -0.0, 12.0, -12.0], T)
    x[4:10] = np.array([1e-3, -0.3, 0.49, 0.51, -2.5, 5.0], T)  # erf's branches
    y = np.full(n, np.nan, T)
    assert call(lib, spec, x, y, n, -0.5, 1.25) == ""
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        ref = REF[op](x64)
    rounding = 2.0 ** -11 if dt == "f16" else 2.0 ** -24
    tol = rounding * np.abs(ref) + 2.0 ** -20 * (np.abs(ref) + np.abs(x64)) + (2.0 ** -25 if dt == "f16" else 2.0 ** -140)
    y64 = y.astype(np.float64)
    with np.errstate(all="ignore"):
        ref_t = ref.astype(T).astype(np.float64)  # beyond the type's range the rounded result is +-inf
        exact = np.isinf(ref_t) | np.isnan(ref)  # infinities and NaN must come out as such
        ok = np.where(exact, (y64 == ref_t) | (np.isnan(y64) & np.isnan(ref)), np.abs(y64 - ref) <= tol)
    bad = ~ok
    assert not bad.any(), (x[bad][:4], y[bad][:4], ref[bad][:4])


CAST_VALUES = [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 100.75, -100.75, 65504.0, 0.333, 7.0, 126.0]


@pytest.mark.parametrize("spec", by_family("cast"), ids=IDS)
def test_cast(lib, spec):
    src, dst = spec.param("src"), spec.param("dst")
    S, D = NP[src], NP[dst]
    vals = np.array(CAST_VALUES, np.float64)
    if src in ("f16", "f32"):
        x = vals.astype(S)
        if dst not in ("f16", "f32", "bool"):  # float -> integer: values in range only (out of range unspecified)
            info = np.iinfo(D)
            x = x[(np.trunc(x.astype(np.float64)) >= info.min) & (np.trunc(x.astype(np.float64)) <= info.max)]
    elif src == "bool":
        x = np.array([0, 1, 1, 0, 1], np.uint8)
    else:
        x = np.array([0, 1, -1, 100, -100, 127, 7], np.int64).astype(S)
        if dst == "f16":
            x = x[np.abs(x.astype(np.int64)) <= 2048]
    y = np.zeros(len(x), D)
    assert call(lib, spec, x, y, len(x)) == ""
    if dst == "bool":
        ref = (x != 0).astype(np.uint8)
    elif src in ("f16", "f32") and dst not in ("f16", "f32"):
        ref = np.trunc(x.astype(np.float64)).astype(np.int64).astype(D)
    else:
        ref = x.astype(np.float32 if src == "f16" else S).astype(D)
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("spec", by_family("copy"), ids=IDS)
def test_copy_strided(lib, spec):
    e = spec.param("esize")
    W = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[e]
    rng = np.random.default_rng(e)
    src = rng.integers(0, 200, (4, 5, 6)).astype(W)
    for view, shape in [(src[:, ::-1, 1:], (4, 5, 5)), (src.transpose(2, 0, 1), (6, 4, 5)),
                        (np.broadcast_to(src[:1, :1, :], (3, 2, 6)), (3, 2, 6)), (src, (4, 5, 6))]:
        strides = np.array([s // e for s in view.strides], np.int64)
        base = src.ctypes.data + (view.__array_interface__["data"][0] - src.ctypes.data)
        dst, dims = np.zeros(shape, W), np.array(shape, np.int64)  # (named: alive during the call)
        with lib.exec() as ex:
            lib.fn(spec.name)(base, dst.ctypes.data, len(shape), dims.ctypes.data, strides.ctypes.data, None,
                              ex.handle)
            assert ex.sync() == ""
        np.testing.assert_array_equal(dst, view)


@pytest.mark.parametrize("spec", by_family("gather"), ids=IDS)
def test_gather(lib, spec):
    e = spec.param("esize")
    W = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[e]
    data = np.arange(3 * 7 * 5).astype(W).reshape(3, 7, 5)
    idx = np.array([0, 6, -1, -7, 3], np.int64)
    out = np.zeros((3, 5, 5), W)
    assert call(lib, spec, data, idx, out, 3, 7, 5, 5) == ""
    np.testing.assert_array_equal(out, data[:, idx % 7, :])
    bad = np.array([1, 7], np.int64)
    out[:] = 0
    assert "index 7 out of range [-7, 7)" in call(lib, spec, data, bad, out, 3, 7, 5, 2)
    assert not out[:, 1].any()  # the bad index's rows stay unwritten


@pytest.mark.parametrize("spec", by_family("fill"), ids=IDS)
def test_fill(lib, spec):
    W = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    out = np.zeros(777, W)
    value = np.array([123], W)
    assert call(lib, spec, out, value, 700) == ""
    assert np.all(out[:700] == 123) and not out[700:].any()


@pytest.mark.parametrize("spec", by_family("range"), ids=IDS)
def test_range(lib, spec):
    dt = spec.param("dtype")
    T = NP[dt]
    start, delta = np.array([3], T), np.array([-2] if dt in ("i64", "i32") else [0.25], T)
    out = np.zeros(300, T)
    assert call(lib, spec, start, delta, out, 300) == ""
    ref = (np.float32(start[0]) + np.arange(300, dtype=np.float64) * np.float32(delta[0])).astype(np.float32).astype(T) \
        if dt in ("f32", "f16") else (start[0] + np.arange(300) * delta[0]).astype(T)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("spec", by_family("qgather"), ids=IDS)
def test_qgather(lib, spec):
    bits, dt = spec.param("bits"), spec.param("dtype", "f32")  # (no dtype: the f32 form of f32 programs)
    T = NP[dt]
    rng = np.random.default_rng(bits)
    V, K, group = 11, 77, 32
    w = rng.standard_normal((V, K)).astype(np.float32)
    ids = np.array([0, 10, -1, 4], np.int64)
    if bits == 4:
        q, scales, zeros = quantize_int4(w.T, group, symmetric=False)  # q [V, K]
        table, sc = cpu_packing.pack_q4_rows(q), cpu_packing.pack_f16_scales(scales)
        zp = np.ascontiguousarray(zeros, np.uint8)
        G = scales.shape[1]
        deq = (q.astype(np.float32) - np.repeat(zeros.astype(np.float32), group, 1)[:, :K]) * \
            np.repeat(scales.astype(np.float32), group, 1)[:, :K]
    else:
        sc = (np.abs(w).max(1) / 127).astype(np.float32)
        table = np.clip(np.round(w / sc[:, None]), -127, 127).astype(np.int8)
        zp, G = None, 0
        deq = table.astype(np.float32) * sc[:, None]
    out = np.full((len(ids), K), np.nan, T)
    assert call(lib, spec, table, sc, zp, ids, out, len(ids), V, K, group) == "", G
    np.testing.assert_array_equal(out, deq[ids % V].astype(T))
    assert f"index {V} out of range [-{V}, {V})" in call(lib, spec, table, sc, zp, np.array([V], np.int64), out, 1,
                                                         V, K, group)


@pytest.mark.parametrize("spec", by_family("where"), ids=IDS)
def test_where(lib, spec):
    T = NP[spec.param("dtype")]
    rng = np.random.default_rng(3)
    for sc, sx, sy in [((4, 5), (4, 5), (4, 5)), ((4, 1), (1, 5), (5,)), ((1,), (2, 3, 4), (3, 1))]:
        shape = np.broadcast_shapes(sc, sx, sy)
        c = rng.integers(0, 2, sc).astype(np.uint8)
        x, y = (rng.standard_normal(sx) * 50).astype(T), (rng.standard_normal(sy) * 50).astype(T)
        out = np.zeros(shape, T)
        strides = [_bstrides(s_, shape) for s_ in (sc, sx, sy)]
        assert call(lib, spec, c, x, y, out, len(shape), np.array(shape, np.int64), *strides) == ""
        np.testing.assert_array_equal(out, np.where(np.broadcast_to(c, shape) != 0, np.broadcast_to(x, shape),
                                                    np.broadcast_to(y, shape)))


def _bstrides(shape_a, out_shape):
    pad = (1,) * (len(out_shape) - len(shape_a)) + tuple(shape_a)
    dense, st = 1, []
    for d in reversed(pad):
        st.append(dense if d != 1 else 0)
        dense *= d
    return np.array(st[::-1], np.int64)


@pytest.mark.parametrize("shape", [(2, 7, 1), (3, 5, 4), (1, 40, 1)], ids=str)
@pytest.mark.parametrize("spec", by_family("cumsum"), ids=IDS)
def test_cumsum(lib, spec, shape):
    dt = spec.param("dtype")
    T = NP[dt]
    rng = np.random.default_rng(shape[1])
    x = (rng.integers(-9, 10, shape)).astype(T)  # small integers: every float sum is exact
    for exclusive in (0, 1):
        for reverse in (0, 1):
            y = np.zeros_like(x)
            assert call(lib, spec, x, y, *shape, exclusive, reverse) == ""
            xs = x[:, ::-1] if reverse else x
            ref = np.cumsum(xs.astype(np.int64), axis=1)
            if exclusive:
                ref = ref - xs.astype(np.int64)
            ref = ref[:, ::-1] if reverse else ref
            np.testing.assert_array_equal(y, ref.astype(T))


@pytest.mark.parametrize("spec", by_family("gathernd"), ids=IDS)
def test_gathernd(lib, spec):
    W = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    data = np.arange(2 * 4 * 3 * 5).astype(W).reshape(2, 4, 3, 5)  # batch 2, indexed dims (4, 3), slice 5
    idx = np.array([[[0, 0], [3, -1], [-4, 2]], [[1, 1], [2, 0], [3, 2]]], np.int64)  # [batch, n_idx, k]
    out = np.zeros((2, 3, 5), W)
    dims = np.array([4, 3], np.int64)
    assert call(lib, spec, data, idx, out, 2, 3, 2, dims, 5, 4 * 3 * 5) == ""
    ref = np.stack([np.stack([data[b, i % 4, j % 3] for i, j in idx[b]]) for b in range(2)])
    np.testing.assert_array_equal(out, ref)
    bad = idx.copy()
    bad[1, 2, 1] = 3
    assert "index 3 out of range [-3, 3)" in call(lib, spec, data, bad, out, 2, 3, 2, dims, 5, 60)


@pytest.mark.parametrize("spec", by_family("gatherelements"), ids=IDS)
def test_gatherelements(lib, spec):
    e = spec.param("esize")
    W = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[e]
    data = np.arange(3 * 4 * 5).astype(W).reshape(3, 4, 5)[:, ::-1]  # strided data (a negative stride)
    rng = np.random.default_rng(e)
    for axis in (0, 1, 2):
        out_shape = (3, 2, 5) if axis == 1 else (2, 4, 3) if axis == 0 else (3, 4, 2)
        idx = rng.integers(-data.shape[axis], data.shape[axis], out_shape).astype(np.int64)
        out = np.zeros(out_shape, W)
        strides, dims = np.array([s // e for s in data.strides], np.int64), np.array(out_shape, np.int64)
        base = data.__array_interface__["data"][0]
        with lib.exec() as ex:
            lib.fn(spec.name)(base, idx.ctypes.data, out.ctypes.data, 3, dims.ctypes.data, strides.ctypes.data, axis,
                              data.shape[axis], ex.handle)
            assert ex.sync() == ""
        np.testing.assert_array_equal(out, _take(data, idx, axis))
    idx, one, ones = np.array([[[4]]], np.int64), np.zeros(1, W), np.array([1, 1, 1], np.int64)
    strides = np.array([s // e for s in data.strides], np.int64)
    with lib.exec() as ex:  # (every array the call reads is kept alive by a name)
        lib.fn(spec.name)(data.__array_interface__["data"][0], idx.ctypes.data, one.ctypes.data, 3, ones.ctypes.data,
                          strides.ctypes.data, 1, 4, ex.handle)
        assert "index 4 out of range [-4, 4)" in ex.sync()
    assert not one.any()


def _take(data, idx, axis):
    """ONNX GatherElements: out[i] = data[i with coordinate `axis` replaced by idx[i]]."""
    out = np.empty(idx.shape, data.dtype)
    for pos in np.ndindex(*idx.shape):
        src = list(pos)
        src[axis] = idx[pos] % data.shape[axis]
        out[pos] = data[tuple(src)]
    return out


REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


@pytest.mark.parametrize("shape", [(3, 7, 1), (2, 5, 4), (1, 1, 3)], ids=str)
@pytest.mark.parametrize("spec", by_family("reduce"), ids=IDS)
def test_reduce(lib, spec, shape):
    op, dt = spec.param("op"), spec.param("dtype")
    T = NP[dt]
    rng = np.random.default_rng(shape[1])
    x = rng.integers(-3, 4, shape).astype(T) if op != "prod" else rng.choice([-1, 1, 2], shape).astype(T)
    y = np.zeros((shape[0], shape[2]), T)
    assert call(lib, spec, x, y, *shape) == ""
    ref = REDUCE[op](x.astype(np.float64), axis=1)  # small integers: every result is exact
    if op == "mean" and dt == "i64":
        ref = np.trunc(ref)
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=2.0 ** -11 if op == "mean" else 0, atol=0)


@pytest.mark.parametrize("spec", by_family("trilu"), ids=IDS)
def test_trilu(lib, spec):
    W = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[spec.param("esize")]
    x = (np.arange(2 * 5 * 7) + 1).astype(W).reshape(2, 5, 7)
    for k in (-2, 0, 3):
        y = np.zeros_like(x)
        assert call(lib, spec, x, y, 2, 5, 7, k) == ""
        np.testing.assert_array_equal(y, np.triu(x, k) if spec.param("upper") else np.tril(x, k))


@pytest.mark.parametrize("spec", by_family("scatternd"), ids=IDS)
def test_scatternd(lib, spec):
    """tests/cuda/test_elementwise.py's cases: duplicates combine in order with a reduction, negative indices."""
    rng = np.random.default_rng(13)
    op, dt = spec.param("op"), spec.param("dtype")
    T = NP[dt]
    for dims, slice_, n_idx in [((4,), 1, 3), ((3, 5), 8, 6), ((6,), 33, 10), ((2, 3), 4, 0)]:
        k = len(dims)
        data = rng.integers(-20, 21, (*dims, slice_)).astype(T)
        if op == "none":  # duplicates are undefined without a reduction: distinct indices
            n_idx = min(n_idx, int(np.prod(dims)))
            flat = rng.permutation(int(np.prod(dims)))[:n_idx]
            coords = np.stack(np.unravel_index(flat, dims), -1) if n_idx else np.zeros((0, k), np.int64)
        else:
            coords = np.stack([rng.integers(0, d, n_idx) for d in dims], -1)
        idx = np.ascontiguousarray(np.where(rng.random(coords.shape) < 0.3, coords - np.array(dims), coords), np.int64)
        upd = rng.integers(-20, 21, (n_idx, slice_)).astype(T)
        if op == "mul":
            upd = ((np.sign(upd) + (upd == 0)) * (2 if dt not in ("f32", "f16") else 1.5)).astype(T)
        out, dims_a = np.zeros_like(data), np.array(dims, np.int64)
        assert call(lib, spec, data, idx, upd, out, data.size, n_idx, k, dims_a, slice_) == ""
        want = data.copy()
        for i in range(n_idx):
            pos = tuple(int(c) for c in coords[i])
            o, u = want[pos], upd[i]
            if dt in ("f32", "f16"):
                o, u = o.astype(np.float32), u.astype(np.float32)
            with np.errstate(all="ignore"):
                r = {"none": lambda: u, "add": lambda: o + u, "mul": lambda: o * u,
                     "max": lambda: np.maximum(o, u), "min": lambda: np.minimum(o, u)}[op]()
            want[pos] = r.astype(T)
        assert out.tobytes() == want.tobytes(), f"{spec.name} {dims}"
    data, out = np.zeros((3, 2), T), np.zeros((3, 2), T)
    idx, upd, dims_a = np.array([[1], [-4]], np.int64), np.zeros((2, 2), T), np.array([3], np.int64)
    assert "index -4 out of range [-3, 3)" in call(lib, spec, data, idx, upd, out, 6, 2, 1, dims_a, 2)
