"""The x86 LLM kernels (backends/x86/kernels_llm.py, every VARIANT) against numpy, called as
codegen/lower.py calls them (_gather_nd, _gather_elements, _scatter_nd, _cumsum, _rope).

- gathernd (esize 1/4/8): k = 1..rank, batch_dims 0/1/2, slices of 0/1/2/33, 1/33/no indices, empty batch.
- gatherelements (esize 1/4/8): ranks 1..8 (coord[8] is the kernel's limit), first/middle/last axis,
  indices smaller than data on non-axis dims, empty outputs.
- scatternd (none/add/mul/max/min x f32/i64/i32): k = 1..rank, rank-3 indices, empty updates / data,
  duplicates for the reductions (ONNX: applied in index order), in place (out == data).
- all three: negative indices wrap; out of range on any coordinate raises the template's message.
- cumsum (f32/i64/i32): exclusive x reverse, n = 0/1/8/33/1000, inner > 1, empty, pool-split, in place.
- rope (f32): interleaved 0/1, partial rotary (rd < D passes the rest through), x via (b, s, h, d)
  strides of [B,S,H,D], [B,H,S,D] and a d-stride-2 view (gaps untouched), pos given / null, in place,
  pos out of range raises (negatives do not wrap).

Tolerances (u = 2^-24). Exact: data movement, integer ops (inputs far from overflow, UB in C++), and
scatternd f32 (numpy's float32 + * max min are the same IEEE ops, applied in the same order).
rope: each output is c*x1 -+ s*x2, two fp32 products and one add (or an fma), each rounding by <= u
relative: |err| <= 2u(|c*x1| + |s*x2|) + O(u^2) against float64; we allow 4u (0.25u fails).
cumsum f32: a sequential fp32 sum of m terms errs by <= (m-1)u*sum|x| (Higham); we allow n*u times the
running sum of |x|, far below any single term, so a missing or misplaced term fails.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcc.backends.x86.kernels_llm import VARIANTS
from tcc.codegen.families.llm import SCATTER_OPS

U = 2.0 ** -24
UINT = {1: np.uint8, 4: np.uint32, 8: np.uint64}
NP = {"f32": np.float32, "i64": np.int64, "i32": np.int32}
_R = np.random.default_rng(7)  # for index tables fixed at import


def of(family: str) -> list:
    return [s for s in VARIANTS if s.family == family]


def ptr(a) -> int | None:  # the caller keeps `a` alive until the kernel returns
    return None if a is None else a.ctypes.data


def i64(values) -> np.ndarray:
    return np.ascontiguousarray(values, np.int64)


def bits(dtype, shape, rng) -> np.ndarray:  # full-range values: a truncated or misplaced copy shows
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def assert_exact(got, ref, what):
    assert got.shape == ref.shape and got.dtype == ref.dtype, (what, got.shape, ref.shape, got.dtype, ref.dtype)
    np.testing.assert_array_equal(got, ref, err_msg=what)


def assert_within(got, ref, tol, what):
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    bad = np.argwhere(~(err <= tol))  # NaN fails too
    assert not bad.size, (f"{what}: {len(bad)} bad, first at {bad[0].tolist()}: got {got[tuple(bad[0])]!r} "
                          f"want {ref[tuple(bad[0])]!r} tol {tol[tuple(bad[0])]:.3g}")


def no_error(lib, what):
    assert not lib.tcc_error_pending(), f"{what}: unexpected error {lib.tcc_error_message()!r}"


def expect_raise(lib, call, message):
    lib.tcc_clear_error()
    call()
    try:
        assert lib.tcc_error_pending(), f"no error raised, expected {message!r}"
        assert lib.tcc_error_message().decode() == message
    finally:
        lib.tcc_clear_error()
    assert not lib.tcc_error_pending()


# gathernd

GATHERND_CASES = [  # data shape, batch_dims, indices (last axis: k)
    ((5,), 0, [[0], [4], [-1], [-5], [2]]),
    ((1,), 0, [[-1]]),                                           # one element
    ((40, 3), 0, _R.integers(-40, 40, (33, 1))),                 # 33 indices
    ((3, 4, 33), 0, [[[2, -1], [0, 0]], [[-3, 3], [1, -4]]]),    # k = 2, slices of 33
    ((2, 3, 4), 0, [[1, -2, 3], [0, 0, -4], [-2, 2, 0]]),        # k = rank: one element each
    ((2, 8, 9), 1, [[[7], [-8], [3]], [[0], [0], [-1]]]),        # batch_dims 1
    ((4, 3, 8, 2), 2, _R.integers(-8, 8, (4, 3, 5, 1))),         # batch_dims 2, 60 rows
    ((2, 3, 4), 0, np.zeros((0, 2))),                            # no indices: empty output
    ((0, 5), 1, np.zeros((0, 2, 1))),                            # empty batch
    ((3, 0), 0, [[2], [-3]]),                                    # zero-size slices
]


def gathernd_ref(data, idx, b):
    k = idx.shape[-1]
    batch, n_idx = math.prod(data.shape[:b]), math.prod(idx.shape[b:-1])
    d, ix = data.reshape(batch, *data.shape[b:]), idx.reshape(batch, n_idx, k)
    out = np.empty((batch, n_idx, *data.shape[b + k:]), data.dtype)
    for j in range(batch):
        for i in range(n_idx):
            out[j, i] = d[j][tuple(ix[j, i])]  # numpy wraps negatives as ONNX does
    return out.reshape(idx.shape[:-1] + data.shape[b + k:])


def run_gathernd(lib, spec, data, idx, b, pool):
    k = idx.shape[-1]
    out = np.full(idx.shape[:-1] + data.shape[b + k:], 0x5A, data.dtype)
    dims = i64(data.shape[b:b + k])
    lib.kernel(spec)(ptr(data), ptr(idx), ptr(out), math.prod(data.shape[:b]), math.prod(idx.shape[b:-1]), k,
                     ptr(dims), math.prod(data.shape[b + k:]), math.prod(data.shape[b:]), pool)
    return out


@pytest.mark.parametrize("spec", of("gathernd"), ids=lambda s: s.name)
def test_gathernd(x86_kernel_lib, x86_pool, spec, rng):
    for shape, b, idx in GATHERND_CASES:
        data, idx = bits(UINT[spec.param("esize")], shape, rng), i64(idx)
        got = run_gathernd(x86_kernel_lib, spec, data, idx, b, x86_pool)
        no_error(x86_kernel_lib, spec.name)
        assert_exact(got, gathernd_ref(data, idx, b), f"{spec.name} {shape} b={b} idx={idx.tolist()}")


# gatherelements

GATHERELEMENTS_CASES = [  # data shape, indices shape, axis (normalized, as lower.py passes it)
    ((5,), (7,), 0), ((1,), (1,), 0), ((33,), (8,), 0),
    ((3, 4), (3, 4), 0), ((3, 4), (3, 9), 1), ((8, 33), (8, 33), 1),
    ((2, 3, 33), (2, 3, 8), 2), ((2, 5, 4), (1, 9, 2), 1),     # indices smaller on non-axis dims
    ((2, 3, 4), (2, 0, 4), 1), ((0, 3), (0, 3), 1),             # empty outputs
    ((2, 1, 2, 1, 3, 1, 2, 2), (2, 1, 2, 1, 5, 1, 2, 2), 4),   # rank 8: the kernel's limit
    ((2, 3, 2, 1, 2, 1, 2, 3), (1, 3, 2, 1, 2, 1, 2, 2), 7),
    ((3, 3, 2, 1, 2, 1, 2, 3), (4, 2, 2, 1, 1, 1, 2, 3), 0),
]


def gatherelements_ref(data, idx, axis):
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx  # negatives wrap in numpy indexing too
    return data[tuple(grid)]


def run_gatherelements(lib, spec, data, idx, axis, pool):
    out = np.full(idx.shape, 0x5A, data.dtype)
    shp, ds = i64(idx.shape), i64([s // data.itemsize for s in data.strides])
    lib.kernel(spec)(ptr(data), ptr(idx), ptr(out), idx.ndim, ptr(shp), ptr(ds), axis, data.shape[axis], pool)
    return out


@pytest.mark.parametrize("spec", of("gatherelements"), ids=lambda s: s.name)
def test_gatherelements(x86_kernel_lib, x86_pool, spec, rng):
    for shape, ishape, axis in GATHERELEMENTS_CASES:
        n = shape[axis]
        data = bits(UINT[spec.param("esize")], shape, rng)
        idx = rng.integers(-n, n, ishape) if n else np.zeros(ishape, np.int64)
        if idx.size >= 2:
            idx.flat[0], idx.flat[-1] = -n, n - 1  # both ends of the valid range
        got = run_gatherelements(x86_kernel_lib, spec, data, idx, axis, x86_pool)
        no_error(x86_kernel_lib, spec.name)
        assert_exact(got, gatherelements_ref(data, idx, axis), f"{spec.name} {shape} {ishape} axis={axis}")


# scatternd

SCATTERND_CASES = [  # data shape, indices (last axis: k); duplicates are dropped for reduction none
    ((8,), [[1], [-1], [3], [1], [7], [-7]]),
    ((1,), [[0], [-1]]),                                         # one element
    ((4, 5, 33), [[0, 1], [-1, -1], [3, 4], [0, -4], [2, 2]]),   # k = 2, slices of 33
    ((3, 4), [[[2], [0]], [[-1], [1]]]),                         # indices of rank 3
    ((2, 3, 4), [[1, -1, 3], [0, 0, 0], [-2, 2, -1], [1, 2, 3]]),  # k = rank
    ((40, 3), _R.integers(-40, 40, (33, 1))),                    # 33 updates
    ((9, 2), np.zeros((0, 1))),                                  # no updates: out = data
    ((0, 3), np.zeros((0, 1))),                                  # empty data
]
SCATTER_FNS = {"none": lambda o, u: u, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def scatternd_inputs(op, dt, shape, idx, rng):
    k = idx.shape[-1]
    if op == "none" and idx.size:  # ONNX leaves duplicates undefined for none: keep each target once
        _, first = np.unique(idx.reshape(-1, k) % shape[:k], axis=0, return_index=True)
        idx = idx.reshape(-1, k)[np.sort(first)]
    ushape = idx.shape[:-1] + shape[k:]
    if dt == "f32":
        data = rng.standard_normal(shape).astype(np.float32)
        upd = (rng.uniform(0.5, 1.5, ushape) * rng.choice([-1, 1], ushape) if op == "mul"
               else rng.standard_normal(ushape)).astype(np.float32)
    else:  # i64 values beyond 32 bits; no overflow (UB): <= 5 updates per target, |mul data| <= 1000 * 3^5
        big = 1000 if op == "mul" else 2**40 if dt == "i64" else 2**26
        data = rng.integers(-big, big, shape).astype(NP[dt])
        upd = rng.integers(-3, 4, ushape) if op == "mul" else rng.integers(-big, big, ushape)
        upd = upd.astype(NP[dt])
    return data, i64(idx), upd


def scatternd_ref(data, idx, upd, op):
    out = data.copy()
    k = idx.shape[-1]
    rows, ups = idx.reshape(-1, k), upd.reshape((-1,) + data.shape[k:])
    for r, u in zip(rows, ups):  # in index order
        out[tuple(r)] = SCATTER_FNS[op](out[tuple(r)], u)
    return out


def run_scatternd(lib, spec, data, idx, upd, pool, out=None):
    k = idx.shape[-1]
    out = np.full_like(data, 77) if out is None else out
    dims = i64(data.shape[:k])
    lib.kernel(spec)(ptr(data), ptr(idx), ptr(upd), ptr(out), data.size, math.prod(idx.shape[:-1]), k, ptr(dims),
                     math.prod(data.shape[k:]), pool)
    return out


@pytest.mark.parametrize("spec", of("scatternd"), ids=lambda s: s.name)
def test_scatternd(x86_kernel_lib, x86_pool, spec, rng):
    op, dt = spec.param("op"), spec.param("dtype")
    for shape, idx in SCATTERND_CASES:
        data, idx, upd = scatternd_inputs(op, dt, shape, i64(idx), rng)
        ref, what = scatternd_ref(data, idx, upd, op), f"{spec.name} {shape} idx={idx.tolist()}"
        got = run_scatternd(x86_kernel_lib, spec, data, idx, upd, x86_pool)
        no_error(x86_kernel_lib, what)
        assert_exact(got, ref, what)  # exact for f32 too: same IEEE ops in the same order
        run_scatternd(x86_kernel_lib, spec, data, idx, upd, x86_pool, out=data)  # in place
        no_error(x86_kernel_lib, what)
        assert_exact(data, ref, what + " in place")


@pytest.mark.parametrize("row,dim", [([1, 5], 5), ([0, -6], 5), ([3, 2**40], 5), ([4, 0], 4), ([-5, 1], 4)])
@pytest.mark.parametrize("spec", of("gathernd") + of("gatherelements") + of("scatternd"), ids=lambda s: s.name)
def test_index_out_of_range_raises(x86_kernel_lib, spec, row, dim):
    """Index rows [[0, 1], row]: k = 2 into dims (4, 5) for the ND kernels; along axis 1 of a [2, dim]
    tensor for GatherElements. The first bad value is reported, with the exact template message."""
    bad, idx, lib = row[1] if dim == 5 else row[0], i64([[0, 1], row]), x86_kernel_lib
    dt = UINT[spec.param("esize")] if spec.param("esize") else NP[spec.param("dtype")]
    call, name = {
        "gathernd": (lambda: run_gathernd(lib, spec, np.zeros((4, 5, 3), dt), idx, 0, None), "GatherND"),
        "gatherelements": (lambda: run_gatherelements(lib, spec, np.zeros((2, dim), dt), idx, 1, None),
                           "GatherElements"),
        "scatternd": (lambda: run_scatternd(lib, spec, np.zeros((4, 5), dt), idx, np.ones(2, dt), None), "ScatterND"),
    }[spec.family]
    expect_raise(lib, call, f"{name} index {bad} out of range [-{dim}, {dim})")


# cumsum

CUMSUM_SHAPES = [(1, 0, 1), (0, 5, 3), (1, 1, 1), (1, 8, 1), (3, 33, 1), (2, 9, 5), (4, 7, 33), (1, 1000, 1),
                 (64, 5, 129)]  # last: 8256 rows > the 4096 grain, so the pool splits it


def cumsum_ref(x, exclusive, reverse):
    v = x.astype(np.float64) if x.dtype == np.float32 else x
    v = v[:, ::-1] if reverse else v
    c = np.cumsum(v, axis=1, dtype=v.dtype)
    if exclusive:
        c = np.concatenate([np.zeros_like(c[:, :1]), c[:, :-1]], axis=1)
    return c[:, ::-1] if reverse else c


@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("spec", of("cumsum"), ids=lambda s: s.name)
def test_cumsum(x86_kernel_lib, x86_pool, spec, exclusive, reverse, rng):
    dt = spec.param("dtype")
    fn = x86_kernel_lib.kernel(spec)
    for shape in CUMSUM_SHAPES + ["in place"]:
        inplace = shape == "in place"
        shape = (3, 33, 5) if inplace else shape
        if dt == "f32":
            x = (rng.standard_normal(shape) * 4 + 1).astype(np.float32)
        else:  # sums of <= 1000 terms stay far from overflow
            big = 2**50 if dt == "i64" else 10**6
            x = rng.integers(-big, big, shape).astype(NP[dt])
        ref = cumsum_ref(x, exclusive, reverse)
        y = x if inplace else np.full_like(x, 99)
        fn(ptr(x), ptr(y), *shape, exclusive, reverse, x86_pool)
        what = f"{spec.name} {shape} exclusive={exclusive} reverse={reverse}{' in place' if inplace else ''}"
        if dt == "f32":  # n*u*sum|x| over each prefix: the fp32 summation bound (docstring)
            assert_within(y, ref, shape[1] * U * cumsum_ref(np.abs(x), exclusive, reverse), what)
        else:
            assert_exact(y, ref, what)


# rope

ROPE_CASES = [  # B, S, H, D, rd
    (1, 1, 1, 2, 2), (2, 3, 4, 8, 8), (1, 33, 2, 16, 8), (2, 5, 3, 64, 32), (3, 1, 2, 6, 4), (2, 33, 2, 32, 32),
    (2, 0, 4, 8, 8), (0, 3, 2, 8, 8),
]
LAYOUTS = {  # physical buffer shape for logical (B, S, H, D), and its (b, s, h, d) view
    "bshd": (lambda B, S, H, D: (B, S, H, D), lambda a: a),
    "bhsd": (lambda B, S, H, D: (B, H, S, D), lambda a: a.transpose(0, 2, 1, 3)),
    "d-stride-2": (lambda B, S, H, D: (B, S, H, 2 * D), lambda a: a[..., ::2]),
}


def rope_ref(x, cos, sin, rows, rd, interleaved):
    """float64 reference and its tolerance (4u of the two product magnitudes, docstring)."""
    half = rd // 2
    i1 = 2 * np.arange(half) if interleaved else np.arange(half)
    i2 = i1 + 1 if interleaved else i1 + half
    c, s = (t.astype(np.float64)[rows][:, :, None, :] for t in (cos, sin))
    x = x.astype(np.float64)
    x1, x2 = x[..., i1], x[..., i2]
    y, tol = x.copy(), np.zeros_like(x)
    y[..., i1], tol[..., i1] = c * x1 - s * x2, 4 * U * (np.abs(c * x1) + np.abs(s * x2))
    y[..., i2], tol[..., i2] = s * x1 + c * x2, 4 * U * (np.abs(s * x1) + np.abs(c * x2))
    return y, tol


def run_rope(lib, spec, x, view, y, cos, sin, pos, rd, max_pos, interleaved, pool):
    B, S, H, D = view.shape
    st = i64([s // 4 for s in view.strides])
    lib.kernel(spec)(ptr(x), ptr(cos), ptr(sin), ptr(pos), ptr(y), B, S, H, D, rd, ptr(st), max_pos, interleaved,
                     pool)


@pytest.mark.parametrize("with_pos", [True, False], ids=["pos", "nopos"])
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("spec", of("rope"), ids=lambda s: s.name)
def test_rope(x86_kernel_lib, x86_pool, spec, interleaved, with_pos, rng):
    lib = x86_kernel_lib
    for (B, S, H, D, rd), (layout, (phys, view_of)) in ((c, l) for c in ROPE_CASES for l in LAYOUTS.items()):
        what = f"{spec.name} {(B, S, H, D, rd)} {layout} interleaved={interleaved} pos={with_pos}"
        x = rng.standard_normal(phys(B, S, H, D)).astype(np.float32)
        max_pos = B * S + 5 if with_pos else B * S
        pos = rng.integers(0, max_pos, B * S) if with_pos else None
        if with_pos and B * S >= 2:
            pos[0], pos[-1] = max_pos - 1, 0  # both ends of the table
        angles = rng.uniform(0, 2 * np.pi, (max_pos, rd // 2))
        cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        y = np.full_like(x, 1234.5)
        run_rope(lib, spec, x, view_of(x), y, cos, sin, pos, rd, max_pos, interleaved, x86_pool)
        no_error(lib, what)
        rows = (pos if with_pos else np.arange(B * S)).reshape(B, S)
        ref, tol = rope_ref(view_of(x), cos, sin, rows, rd, interleaved)
        assert_within(view_of(y), ref, tol, what)
        assert_exact(view_of(y)[..., rd:], view_of(x)[..., rd:], what + " pass-through")
        written = np.zeros(x.shape, bool)
        view_of(written)[...] = True
        assert (y[~written] == 1234.5).all(), what + ": wrote outside the view"
        x0 = x.copy()
        run_rope(lib, spec, x, view_of(x), x, cos, sin, pos, rd, max_pos, interleaved, x86_pool)  # in place
        no_error(lib, what)
        assert_exact(x, np.where(written, y, x0), what + " in place")  # same arithmetic: same bits


@pytest.mark.parametrize("bad", [7, -1, 2**40])
@pytest.mark.parametrize("spec", of("rope"), ids=lambda s: s.name)
def test_rope_position_out_of_range_raises(x86_kernel_lib, x86_pool, spec, bad):
    x = np.ones((2, 3, 1, 4), np.float32)
    y, cos, sin = np.zeros_like(x), np.ones((7, 2), np.float32), np.zeros((7, 2), np.float32)
    pos = i64([0, 6, 1, bad, 2, 3])  # 6 = max_pos - 1 is fine; negatives do not wrap
    expect_raise(x86_kernel_lib, lambda: run_rope(x86_kernel_lib, spec, x, x, y, cos, sin, pos, 4, 7, 0, x86_pool),
                 f"RotaryEmbedding position {bad} out of range [0, 7)")


def test_variant_list():
    """Every family and parameter value this file tests is in VARIANTS, and nothing else is."""
    want = {("rope", (("dtype", "f32"),))}
    want |= {(f, (("esize", e),)) for f in ("gathernd", "gatherelements") for e in (1, 4, 8)}
    want |= {("cumsum", (("dtype", d),)) for d in NP}
    want |= {("scatternd", (("dtype", d), ("op", o))) for d in NP for o in SCATTER_OPS}
    want |= {("qgather", (("bits", b),)) for b in (4, 8)} | {("qgather", (("bits", b), ("layout", "tiles"))) for b in (4, 8)}
    assert {(s.family, s.params) for s in VARIANTS} == want
    assert set(SCATTER_OPS) == set(SCATTER_FNS) and all(s.variant == "scalar" for s in VARIANTS)


# qgather: rows of a quantized table, dequantized. Exact: (q - z) * s is one correctly rounded f32 product
# of small integers and the scale, and the reference's float64 product rounds to the same f32.

QGATHER_CASES = [(1, 32, False), (31, 32, True), (64, 32, False), (70, 64, True), (160, 128, False)]


@pytest.mark.parametrize("spec,k,group,asym", [(s, *c) for s in of("qgather") for c in QGATHER_CASES
                                               if s.param("bits") == 4 or not c[2]],  # int8 tables: symmetric
                         ids=lambda v: v.name if hasattr(v, "name") else str(v))
def test_qgather(x86_kernel_lib, x86_pool, spec, k, group, asym, rng):
    """Row tables (layout rows), and a tied table read out of a QLinear's packed weights (layout tiles: 37
    rows are not a whole number of 8-column tiles, K not of 64-blocks)."""
    from tcc.backends.x86 import packing_quant as pq
    from tcc.codegen.families.packing import pack_f16_scales, pack_q4_rows
    from tcc.ir.quant_arith import dequantize, quantize_int4, quantize_int8

    rows = 37
    table = rng.standard_normal((rows, k)).astype(np.float32)
    tiles = spec.param("layout") == "tiles"
    if spec.param("bits") == 4:
        q, s, z = quantize_int4(table.T, group, symmetric=not asym)
        packed, sc, zp, gs = pack_q4_rows(q), pack_f16_scales(s), z, group
        if tiles:
            packed, sc, zp = pq.pack_q4_quad(q), pq.pack_q4_scales(s), None if z is None else pq.pack_q4_zeros(z)
    else:
        q, s = quantize_int8(table.T)
        z, packed, sc, zp, gs = None, q, np.ascontiguousarray(s[:, 0]), None, k
        if tiles:
            packed, sc = pq.pack_q8(q), pq.pack_q8_scales(s)
    want = dequantize(q, s, z, spec.param("bits"), gs).astype(np.float32)
    fn = x86_kernel_lib.kernel(spec)
    for ids in ([0], [rows - 1, -1, -rows, 5, 5], list(range(-rows, rows)), []):
        idx = i64(ids)
        out = np.full((len(ids), k), np.nan, np.float32)
        fn(ptr(packed), ptr(sc), ptr(zp), ptr(idx), ptr(out), len(ids), rows, k, gs, x86_pool)
        no_error(x86_kernel_lib, spec.name)
        assert_exact(out, want[np.where(idx < 0, idx + rows, idx)].reshape(len(ids), k), f"{spec.name} {ids}")
    bad = i64([1, rows])
    out = np.zeros((2, k), np.float32)
    expect_raise(x86_kernel_lib, lambda: fn(ptr(packed), ptr(sc), ptr(zp), ptr(bad), ptr(out), 2, rows, k, gs,
                                                 None), f"Gather index {rows} out of range [-{rows}, {rows})")
