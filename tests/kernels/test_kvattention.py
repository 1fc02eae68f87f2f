"""kvattention kernels (every x86 variant): rotary embedding + KV-cache append + causal attention, against a
float64 numpy reference that builds the whole cache, rotates, masks the scores above the causal diagonal
with -inf and takes a plain softmax.

Tolerance. Inputs are exact float32 values and the reference is float64, so all error is the kernel's
fp32 rounding. Per query row, with u = 2^-24:
- a score q·k_j gets rounding from the rotation (each rotated element is c*x1 -+ s*x2 in fp32: <= ~2u of
  |c x1| + |s x2|), from the scale (1u) and from the dot over D (~sqrt(D) u of sum |q_d k_d| for
  randomly signed roundings): |δ_j| <= ~(sqrt(D) + 4) u * sabs_j, where sabs_j = scale * sum_d |q|_d |k|_d
  with |q|, |k| the magnitudes of the rotation terms (`rope_ref(..., magnitude=True)`);
- the AVX2 exp is accurate to 1.18e-7 = 2u relative (measured over every float in [-87, 0], the range
  softmax feeds it; exp(-inf) is exactly 0); the scalar variant uses libm (0.5u);
- a relative error ε on every weight moves the output (a convex combination of value rows) by at most
  2ε max|v|; summing n weights and n weighted values adds ~sqrt(n) u max|v|, and the per-block
  rescales and the split merge a few u more.
So each output element is checked against FP32_TOL * ((sqrt(D+1) + 4) * max_j sabs_j + sqrt(n+1) + 4) * max|v|
with FP32_TOL = 8u, as for the attention family in test_linalg.py. That bound is worst case (all roundings
one way); the largest error measured over the cases below is 0.7% of it (the roundings cancel), yet a
rope position off by one exceeds it ~100x and a 1% scale error exceeds it in every row
(`test_tolerance_is_tight_enough`); a wrong index or a dropped key errs by O(0.1 max|v|). The cache rows the kernel writes are checked to 4u of |c x1| + |s x2|
(rotated k; 2u is the analytic bound) and exactly (raw v, everything the kernel must not touch).
"""
from __future__ import annotations

import numpy as np
import pytest
from tcc.backends.x86.kernels import VARIANTS

from .conftest import elem_strides, i64, ptr

U = 2.0 ** -24
FP32_TOL = 8 * U

KV = [s for s in VARIANTS if s.family == "kvattention"]
IDS = lambda spec: spec.variant  # noqa: E731
NONE, HALF, INTERLEAVED = 0, 1, 2


# ---------------------------------------------------------------------------------------- reference

def rope_tables(capacity: int, rd: int, base: float = 10000.0):
    """cos/sin [capacity, rd/2] float32 tables of the usual RoPE angles p * base^(-2i/rd)."""
    if rd == 0:
        return None, None
    inv = base ** (-np.arange(0, rd, 2, dtype=np.float64) / rd)
    ang = np.arange(capacity, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope_ref(x, positions, cos, sin, mode, rd, magnitude=False):
    """float64 rope of x [..., S, D] at `positions` [S]. With `magnitude`, |c x1| + |s x2| per element
    instead (the size of the terms the kernel rounds), for the tolerance."""
    x = np.asarray(x, np.float64)
    y = np.abs(x) if magnitude else x.copy()
    if mode == NONE or rd == 0:
        return y
    h = rd // 2
    c = cos[positions].astype(np.float64)
    s = sin[positions].astype(np.float64)
    if mode == HALF:
        i1, i2 = slice(0, h), slice(h, rd)
    else:
        i1, i2 = slice(0, rd, 2), slice(1, rd, 2)
    a, b = x[..., i1], x[..., i2]
    if magnitude:
        y[..., i1] = np.abs(a * c) + np.abs(b * s)
        y[..., i2] = np.abs(b * c) + np.abs(a * s)
    else:
        y[..., i1] = a * c - b * s
        y[..., i2] = b * c + a * s
    return y


def kvattention_ref(q, k, v, kc, vc, past, cos, sin, mode, rd, scale):
    """Returns (out [B,Hq,S,Dv], rotated new keys [B,Hkv,S,D], per-row tolerance [B,Hq,S,1]); float64.
    kc / vc are the caches before the call (only positions < past are used)."""
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    n = past + S
    pos = np.arange(past, past + S)
    knew = rope_ref(k, pos, cos, sin, mode, rd)
    K = np.concatenate([kc[:B, :, :past].astype(np.float64), knew], axis=2)  # the full cache [B, Hkv, n, D]
    V = np.concatenate([vc[:B, :, :past].astype(np.float64), v.astype(np.float64)], axis=2)
    Kmag = np.concatenate([np.abs(kc[:B, :, :past].astype(np.float64)),
                           rope_ref(k, pos, cos, sin, mode, rd, magnitude=True)], axis=2)
    qr = rope_ref(q, pos, cos, sin, mode, rd)
    qmag = rope_ref(q, pos, cos, sin, mode, rd, magnitude=True)
    group = Hq // Hkv
    # The reference may repeat the kv heads for its matmuls; the kernel must not.
    Kq, Vq, Kmq = (np.repeat(a, group, axis=1) for a in (K, V, Kmag))
    above = np.arange(n)[None, :] > (past + np.arange(S))[:, None]  # [S, n]: key after the query
    scores = scale * qr @ np.swapaxes(Kq, 2, 3)
    scores[..., above] = -np.inf
    w = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out = (w / w.sum(axis=-1, keepdims=True)) @ Vq

    sabs = abs(scale) * qmag @ np.swapaxes(Kmq, 2, 3)
    sabs[..., above] = 0.0
    smax = sabs.max(axis=-1, keepdims=True)
    vmax = np.abs(Vq).max(axis=(2, 3), keepdims=True)
    tol = FP32_TOL * ((np.sqrt(D + 1) + 4) * smax + np.sqrt(n + 1) + 4) * vmax + 1e-30
    return out, knew, tol


# ---------------------------------------------------------------------------------------- running

def strided(rng, B, H, S, D, layout, fill=None):
    """A [B, H, S, D] float32 view stored as `layout`: 'bhsd', 'bshd' or 'dimstride' (dim stride 2)."""
    if layout == "bshd":
        shape = (B, S, H, D)
    elif layout == "dimstride":
        shape = (B, H, S, 2 * D)
    else:
        shape = (B, H, S, D)
    buf = np.full(shape, fill, np.float32) if fill is not None else rng.standard_normal(shape).astype(np.float32)
    if layout == "bshd":
        return np.swapaxes(buf, 1, 2)
    if layout == "dimstride":
        return buf[..., ::2]
    return buf


def run_kv(lib, spec, q, k, v, kc, vc, past, cos, sin, mode, rd, scale, pool, layout="bhsd", rng=None):
    """Call the kernel; returns out as a [B, Hq, S, Dv] view of a NaN-prefilled buffer in `layout`."""
    B, Hq, S, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    out = strided(rng, B, Hq, S, Dv, layout, fill=np.nan)
    strides = [i64(elem_strides(a)) for a in (q, k, v, out)]  # kept alive across the call
    lib.kernel(spec)(ptr(q), ptr(k), ptr(v), ptr(kc), ptr(vc), ptr(out), B, Hq, Hkv, S, past, kc.shape[2], D, Dv,
                     *(ptr(s) for s in strides), ptr(cos), ptr(sin), rd, mode, scale, 0, kc.shape[2], None, 0.0, pool)
    assert not lib.tcc_error_pending(), lib.tcc_error_message().decode()
    return out


def check_out(got, ref, tol, what):
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)  # NaN (a row never written, or a NaN read from the cache tail) fails too
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{what}: {bad.sum()}/{bad.size} outputs off; first at {idx}: got {got[idx]!r}, "
                    f"want {ref[idx]!r}, |err| {err[idx]:.3g} > tol {np.broadcast_to(tol, err.shape)[idx]:.3g}")
    return float((err / tol).max())


def check_cache(kc, vc, kc0, vc0, k, v, past, cos, sin, mode, rd, what):
    """Positions past..past+S-1 hold rotated k / raw v; every other position, and cache batches >= B, is
    bit-identical to before (NaN included)."""
    B, _, S, _ = k.shape
    pos = np.arange(past, past + S)
    want = rope_ref(k, pos, cos, sin, mode, rd)
    mag = rope_ref(k, pos, cos, sin, mode, rd, magnitude=True)
    new = kc[:B, :, past:past + S].astype(np.float64)
    bad = ~(np.abs(new - want) <= 4 * U * mag)
    assert not bad.any(), f"{what}: rotated k written to the cache is off at {tuple(np.argwhere(bad)[0])}"
    assert np.array_equal(vc[:B, :, past:past + S], v), f"{what}: v_cache rows differ from v"
    for name, now, before in (("k_cache", kc, kc0), ("v_cache", vc, vc0)):
        untouched = np.ones(now.shape[:3], bool)
        untouched[:B, :, past:past + S] = False
        assert np.array_equal(now[untouched], before[untouched], equal_nan=True), \
            f"{what}: {name} changed outside positions {past}..{past + S - 1}"


# B, Hq, Hkv, S, past, D, Dv, rotary_dim, rope mode, layout, spare capacity, spare cache batches
CASES = {
    # decode
    "decode_past0_mqa": (1, 4, 1, 1, 0, 64, 64, 64, HALF, "bhsd", 3, 0),
    "decode_past1_gqa_partial": (1, 8, 2, 1, 1, 16, 16, 8, INTERLEAVED, "bhsd", 2, 0),
    "decode_past7_mha_d12": (2, 4, 4, 1, 7, 12, 12, 12, HALF, "bshd", 5, 1),
    "decode_past1000_gqa": (1, 8, 2, 1, 1000, 128, 128, 64, HALF, "bhsd", 7, 0),
    "decode_past1000_split": (1, 2, 1, 1, 1000, 64, 64, 64, INTERLEAVED, "bshd", 0, 0),
    "decode_past1000_b2_d80": (2, 4, 1, 1, 1000, 80, 80, 80, INTERLEAVED, "bshd", 1, 0),
    "decode_past700_dv_odd": (1, 3, 1, 1, 700, 12, 20, 12, HALF, "bhsd", 4, 0),
    # prefill from an empty cache and chunked-prefill continuations
    "prefill2_p0": (1, 4, 4, 2, 0, 8, 8, 8, HALF, "bhsd", 1, 0),
    "prefill2_p9_mqa": (1, 4, 1, 2, 9, 16, 16, 16, INTERLEAVED, "bshd", 0, 0),
    "prefill5_p0_gqa": (2, 8, 2, 5, 0, 64, 64, 32, INTERLEAVED, "bshd", 3, 1),
    "prefill5_p3_gqa": (2, 8, 2, 5, 3, 64, 64, 32, INTERLEAVED, "bshd", 3, 0),
    "prefill17_p0_mqa": (1, 4, 1, 17, 0, 80, 80, 80, HALF, "bhsd", 2, 0),
    "prefill17_p40_d12": (1, 8, 2, 17, 40, 12, 12, 8, INTERLEAVED, "bshd", 6, 0),
    "prefill64_p0": (1, 8, 2, 64, 0, 64, 64, 64, HALF, "bshd", 1, 0),
    "prefill64_p100_norope": (2, 4, 4, 64, 100, 128, 128, 0, NONE, "bhsd", 9, 0),
    "prefill300_p0": (1, 4, 1, 300, 0, 64, 64, 64, HALF, "bhsd", 5, 0),
    "prefill300_p77": (1, 2, 2, 300, 77, 16, 16, 16, INTERLEAVED, "bshd", 0, 0),
    # head sizes, partial rotation, strides
    "dv_ne_d": (2, 4, 2, 9, 5, 64, 40, 48, HALF, "bhsd", 3, 0),
    "d8_partial": (1, 6, 3, 7, 11, 8, 8, 4, HALF, "bhsd", 2, 0),
    "d12_dv20_mha": (1, 3, 3, 13, 70, 12, 20, 12, INTERLEAVED, "bhsd", 2, 0),
    "d128_full_rotation": (1, 4, 2, 6, 30, 128, 128, 128, INTERLEAVED, "bshd", 2, 0),
    "rope_none_tables_null": (1, 4, 2, 5, 4, 16, 16, 16, NONE, "bhsd", 2, 0),
    "rotary_dim0": (1, 4, 2, 5, 4, 16, 16, 0, HALF, "bhsd", 2, 0),
    "dimstride": (2, 4, 2, 6, 10, 16, 24, 8, HALF, "dimstride", 3, 0),
    "dimstride_decode": (1, 4, 2, 1, 300, 12, 12, 12, INTERLEAVED, "dimstride", 3, 0),
}


def make_case(rng, B, Hq, Hkv, S, past, D, Dv, rd, mode, layout, spare, spare_b):
    capacity = past + S + spare
    q = strided(rng, B, Hq, S, D, layout)
    k = strided(rng, B, Hkv, S, D, layout)
    v = strided(rng, B, Hkv, S, Dv, layout)
    # Cache positions < past hold earlier (already rotated) tokens; the rest is NaN garbage that must never
    # be read, and spare cache batches (a cache allocated for a larger batch) must stay NaN.
    kc = np.full((B + spare_b, Hkv, capacity, D), np.nan, np.float32)
    vc = np.full((B + spare_b, Hkv, capacity, Dv), np.nan, np.float32)
    kc[:B, :, :past] = rng.standard_normal((B, Hkv, past, D))
    vc[:B, :, :past] = rng.standard_normal((B, Hkv, past, Dv))
    cos, sin = rope_tables(capacity, rd) if mode != NONE else (None, None)
    return q, k, v, kc, vc, cos, sin


@pytest.mark.parametrize("spec", KV, ids=IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_kvattention(x86_kernel_lib, spec, case, x86_pool, rng):
    B, Hq, Hkv, S, past, D, Dv, rd, mode, layout, spare, spare_b = CASES[case]
    q, k, v, kc, vc, cos, sin = make_case(rng, B, Hq, Hkv, S, past, D, Dv, rd, mode, layout, spare, spare_b)
    kc0, vc0 = kc.copy(), vc.copy()
    scale = 1.0 / np.sqrt(D)
    ref, _, tol = kvattention_ref(q, k, v, kc0, vc0, past, cos, sin, mode, rd, scale)
    out = run_kv(x86_kernel_lib, spec, q, k, v, kc, vc, past, cos, sin, mode, rd, scale, x86_pool, layout, rng)
    check_out(out, ref, tol, f"{spec.name} {case}")
    check_cache(kc, vc, kc0, vc0, k, v, past, cos, sin, mode, rd, f"{spec.name} {case}")
    if layout == "dimstride":  # the output's odd (stride-skipped) elements must not be written
        assert np.isnan(out.base[..., 1::2]).all(), "wrote between the output's strided elements"


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_rope_mode0_ignores_rotary_dim(x86_kernel_lib, spec, x86_pool, rng):
    """rope_mode 0 means no rotation whatever rotary_dim says, and the (null) tables are never read."""
    B, Hq, Hkv, S, past, D = 1, 4, 2, 3, 5, 16
    q, k, v, kc, vc, _, _ = make_case(rng, B, Hq, Hkv, S, past, D, D, 0, NONE, "bhsd", 2, 0)
    kc0, vc0 = kc.copy(), vc.copy()
    ref, _, tol = kvattention_ref(q, k, v, kc0, vc0, past, None, None, NONE, 0, 0.25)
    out = run_kv(x86_kernel_lib, spec, q, k, v, kc, vc, past, None, None, NONE, 16, 0.25, x86_pool)
    check_out(out, ref, tol, spec.name)
    check_cache(kc, vc, kc0, vc0, k, v, past, None, None, NONE, 0, spec.name)


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_sequence_matches_one_full_pass(x86_kernel_lib, spec, x86_pool, rng):
    """Prefill 5 tokens, then decode 1, 1, 1 into the same caches: every step's output equals the matching
    rows of one float64 reference over all 8 tokens, and the final caches hold all 8 rotated keys."""
    B, Hq, Hkv, D, Dv, rd, mode, total = 2, 8, 2, 64, 64, 32, HALF, 8
    capacity = 12
    q = rng.standard_normal((B, Hq, total, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, total, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, total, Dv)).astype(np.float32)
    cos, sin = rope_tables(capacity, rd)
    kc = np.full((B, Hkv, capacity, D), np.nan, np.float32)
    vc = np.full((B, Hkv, capacity, Dv), np.nan, np.float32)
    scale = 0.125
    ref, knew, tol = kvattention_ref(q, k, v, kc, vc, 0, cos, sin, mode, rd, scale)
    past = 0
    for S in (5, 1, 1, 1):
        sl = slice(past, past + S)
        qs, ks, vs = (np.ascontiguousarray(a[:, :, sl]) for a in (q, k, v))
        out = run_kv(x86_kernel_lib, spec, qs, ks, vs, kc, vc, past, cos, sin, mode, rd, scale, x86_pool)
        check_out(out, ref[:, :, sl], tol[:, :, sl], f"{spec.name} step past={past} S={S}")
        past += S
    assert np.all(np.abs(kc[:, :, :total] - knew) <= 4 * U * rope_ref(k, np.arange(total), cos, sin, mode, rd,
                                                                       magnitude=True))
    assert np.array_equal(vc[:, :, :total], v)
    assert np.isnan(kc[:, :, total:]).all() and np.isnan(vc[:, :, total:]).all()


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_split_and_serial_agree(x86_kernel_lib, spec, x86_pool2, rng):
    """A long single-sequence decode with 2 threads (keys split over threads and merged) gives what the
    serial kernel gives, to fp32 rounding."""
    B, Hq, Hkv, past, D = 1, 1, 1, 4000, 64
    args = make_case(rng, B, Hq, Hkv, 1, past, D, D, D, HALF, "bhsd", 0, 0)
    q, k, v, kc, vc, cos, sin = args
    ref, _, tol = kvattention_ref(q, k, v, kc, vc, past, cos, sin, HALF, D, 0.125)
    outs = []
    for pool in (None, x86_pool2):
        kcc, vcc = kc.copy(), vc.copy()
        outs.append(run_kv(x86_kernel_lib, spec, q, k, v, kcc, vcc, past, cos, sin, HALF, D, 0.125, pool))
        check_out(outs[-1], ref, tol, f"{spec.name} pool={pool}")
    assert np.allclose(outs[0], outs[1], rtol=0, atol=float(tol.max()))


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_tolerance_is_tight_enough(x86_kernel_lib, spec, rng):
    """The bound is worst case (every rounding the same way); random roundings cancel, so the kernels sit far
    inside it. It must still catch the bugs that matter: in every query row, a rope position off by one
    and a 1% error in the scale exceed it, and the kernel itself stays under 5% of it."""
    B, Hq, Hkv, S, past, D, rd = 1, 4, 2, 40, 60, 64, 32
    q, k, v, kc, vc, cos, sin = make_case(rng, B, Hq, Hkv, S, past, D, D, rd, HALF, "bhsd", 2, 0)
    kc0, vc0 = kc.copy(), vc.copy()
    ref, _, tol = kvattention_ref(q, k, v, kc0, vc0, past, cos, sin, HALF, rd, 0.125)
    out = run_kv(x86_kernel_lib, spec, q, k, v, kc, vc, past, cos, sin, HALF, rd, 0.125, None)
    ratio = check_out(out, ref, tol, spec.name)
    assert ratio < 0.05, f"largest error is {ratio:.3f} of the tolerance"
    shifted, _, _ = kvattention_ref(q, k, v, kc0, vc0, past, np.roll(cos, -1, 0), np.roll(sin, -1, 0), HALF, rd,
                                    0.125)
    rescaled, _, _ = kvattention_ref(q, k, v, kc0, vc0, past, cos, sin, HALF, rd, 0.125 * 1.01)
    for what, wrong in (("rope position + 1", shifted), ("scale * 1.01", rescaled)):
        caught = (np.abs(wrong - ref) > tol).any(axis=-1)
        assert caught.all(), f"the tolerance misses {what} in {np.sum(~caught)} rows"


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_bad_arguments_raise(x86_kernel_lib, spec):
    lib = x86_kernel_lib
    q = np.zeros((1, 3, 1, 8), np.float32)
    k = np.zeros((1, 2, 1, 8), np.float32)
    kc = np.zeros((1, 2, 4, 8), np.float32)
    st_arr, kst_arr = i64([24, 8, 8, 1]), i64([16, 8, 8, 1])  # kept alive across the calls
    st, kst = ptr(st_arr), ptr(kst_arr)
    out = np.zeros((1, 3, 1, 8), np.float32)
    fn = lib.kernel(spec)
    cases = [
        ("query heads", dict(Hq=3, Hkv=2, past=0)),
        ("capacity", dict(Hq=2, Hkv=2, past=4)),
        ("rotary", dict(Hq=2, Hkv=2, past=0, rd=8, mode=HALF)),  # tables missing
        ("rotary", dict(Hq=2, Hkv=2, past=0, rd=3, mode=HALF, tables=True)),  # odd rotary_dim
        ("rotary", dict(Hq=2, Hkv=2, past=0, rd=0, mode=3)),
    ]
    cos = np.zeros((4, 4), np.float32)
    try:
        for words, c in cases:
            lib.tcc_clear_error()
            kc_before = kc.copy()
            tab = ptr(cos) if c.get("tables") else None
            fn(ptr(q), ptr(k), ptr(k), ptr(kc), ptr(kc), ptr(out), 1, c["Hq"], c["Hkv"], 1, c["past"], 4, 8, 8,
               st, kst, kst, st, tab, tab, c.get("rd", 0), c.get("mode", NONE), 1.0, 0, 4, None, 0.0, None)
            assert lib.tcc_error_pending(), f"no error for {c}"
            assert words in lib.tcc_error_message().decode()
            assert np.array_equal(kc, kc_before), "a rejected call must not touch the cache"
    finally:
        lib.tcc_clear_error()
