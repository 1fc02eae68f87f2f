"""The attention variants in every x86 attention and kvattention kernel (avx2, scalar): a sliding window
(keys more than `window - 1` positions behind the query dropped), a ring KV cache of fewer rows than the
context (position p in row p % cache_rows, chunked so a call's writes never clobber what its queries read),
ALiBi (score += slope[head] * (key - query), computed in the kernel from per-head slopes) and soft-capping
(score = cap * tanh(score / cap) on the scaled scores), alone and combined, on edge shapes: windows of 1,
below/at/above a key block (64) and wider than the context, rings that wrap inside a block and inside one
call, decode splits over threads, prefill chunks longer than the ring.

The reference is float64 numpy over the whole sequence. Tolerance: test_kvattention's bound (its docstring
derives it) plus the variants' own roundings: the bias slope * (j - i) is one fp32 product (1u of
|slope (j - i)|) and tanh is libm's std::tanh (1u of cap; its derivative is <= 1, so earlier score errors do
not grow), each counted 4u like the scores. A window off by one key, a slope applied to the wrong head or a
missing cap errs by O(0.1 max|v|), far beyond it (`test_variants_are_not_no_ops` checks each is caught).
"""
from __future__ import annotations

import numpy as np
import pytest
from tcc.backends.x86.kernels import VARIANTS

from .conftest import elem_strides, i64, ptr
from .test_kvattention import FP32_TOL, HALF, INTERLEAVED, NONE, U, rope_ref, rope_tables

KV = [s for s in VARIANTS if s.family == "kvattention"]
ATTN = [s for s in VARIANTS if s.family == "attention"]
IDS = lambda spec: spec.variant  # noqa: E731


def alibi_slopes(h: int) -> np.ndarray:
    """MPT / Bloom slopes for h heads: 2^(-8 i / h') for the closest power of two h' >= h, interleaved."""
    n = 1 << (h - 1).bit_length()
    s = 2.0 ** (-8.0 * np.arange(1, n + 1) / n)
    if n != h:
        s = np.concatenate([s[1::2], s[::2]])[:h]
    return s.astype(np.float32)


def scores_ref(qr, K, qmag, Kmag, scale, qpos, kpos, window, slopes, cap, causal=True):
    """float64 scores [B,H,Sq,Skv] with every variant applied, and the per-row rounding bound of the
    scores (the `sabs` term of the tolerance, the bias and the cap included)."""
    s = scale * qr @ np.swapaxes(K, -1, -2)
    sabs = abs(scale) * qmag @ np.swapaxes(Kmag, -1, -2)
    rel = kpos[None, :] - qpos[:, None]
    if cap:
        s = cap * np.tanh(s / cap)
        sabs = np.minimum(sabs, 1e30) + cap
    if slopes is not None:
        bias = slopes.astype(np.float64)[:, None, None] * rel
        s = s + bias
        sabs = sabs + np.abs(bias)
    allowed = np.ones(rel.shape, bool)
    if causal:
        allowed &= rel <= 0
    if window:
        allowed &= rel > -window
    return np.where(allowed, s, -np.inf), np.where(allowed, sabs, 0.0)


def softmax_out(s, sabs, V, D):
    m = s.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(m)
    w = np.exp(s - np.where(dead, 0, m))
    den = w.sum(axis=-1, keepdims=True)
    out = np.where(dead, 0, w / np.where(den == 0, 1, den)) @ V
    n = s.shape[-1]
    vmax = np.abs(V).max(axis=(-2, -1), keepdims=True)
    tol = FP32_TOL * ((np.sqrt(D + 1) + 4) * sabs.max(axis=-1, keepdims=True) + np.sqrt(n + 1) + 4) * vmax
    return out, tol + 1e-30


def check(got, ref, tol, what):
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{what}: {bad.sum()}/{bad.size} outputs off; first at {idx}: got {got[idx]!r}, "
                    f"want {ref[idx]!r}, |err| {err[idx]:.3g} > tol {np.broadcast_to(tol, err.shape)[idx]:.3g}")


# ------------------------------------------------------------------------------------------ kvattention

# B, Hq, Hkv, S, past, D, Dv, rd, mode, window, cache rows (0: the capacity), alibi, softcap, spare capacity
KV_CASES = {
    "window1_decode": (1, 4, 2, 1, 9, 16, 16, 16, HALF, 1, 0, False, 0.0, 3),
    "window5_decode_mqa": (1, 4, 1, 1, 30, 64, 64, 64, HALF, 5, 0, False, 0.0, 0),
    "window_wider_than_context": (1, 4, 2, 7, 3, 16, 16, 8, INTERLEAVED, 100, 0, False, 0.0, 90),
    "window7_prefill20_p0": (2, 8, 2, 20, 0, 16, 12, 16, HALF, 7, 0, False, 0.0, 2),
    "window64_prefill100_p30": (1, 4, 2, 100, 30, 32, 32, 32, HALF, 64, 0, False, 0.0, 1),
    "window65_decode_p700": (1, 8, 2, 1, 700, 64, 64, 64, HALF, 65, 0, False, 0.0, 0),
    "window300_decode_p2000_split": (1, 1, 1, 1, 2000, 64, 64, 64, INTERLEAVED, 300, 0, False, 0.0, 0),
    "ring_decode_wrap": (1, 4, 2, 1, 37, 16, 16, 16, HALF, 8, 10, False, 0.0, 20),
    "ring_decode_rows_eq_window": (2, 4, 4, 1, 50, 12, 20, 12, INTERLEAVED, 6, 6, False, 0.0, 10),
    "ring_prefill_longer_than_ring": (1, 8, 2, 45, 0, 16, 16, 16, HALF, 8, 12, False, 0.0, 5),
    "ring_prefill_chunk1": (1, 4, 1, 9, 20, 16, 16, 16, HALF, 5, 5, False, 0.0, 4),
    "ring_block_wrap": (1, 4, 2, 70, 150, 64, 64, 64, HALF, 64, 80, False, 0.0, 3),
    "ring_decode_split": (1, 1, 1, 1, 3000, 64, 64, 64, HALF, 600, 700, False, 0.0, 0),
    "alibi_decode": (1, 8, 8, 1, 40, 16, 16, 0, NONE, 0, 0, True, 0.0, 2),
    "alibi_prefill_gqa": (2, 6, 3, 13, 5, 16, 16, 0, NONE, 0, 0, True, 0.0, 1),
    "alibi_prefill70": (1, 4, 4, 70, 0, 32, 32, 0, NONE, 0, 0, True, 0.0, 0),
    "alibi_decode_split": (1, 2, 2, 1, 1500, 64, 64, 0, NONE, 0, 0, True, 0.0, 0),
    "softcap_decode": (1, 4, 2, 1, 33, 32, 32, 32, HALF, 0, 0, False, 5.0, 2),
    "softcap_prefill": (1, 8, 2, 19, 4, 64, 64, 64, HALF, 0, 0, False, 2.0, 0),
    "softcap_small_window_ring": (1, 4, 2, 11, 25, 16, 16, 16, HALF, 4, 9, False, 1.5, 3),
    "all_three": (2, 4, 2, 9, 40, 16, 16, 16, INTERLEAVED, 10, 14, True, 3.0, 6),
}


def make_kv(rng, B, Hq, Hkv, S, past, D, Dv, rd, mode, window, rows, alibi, cap, spare):
    """Inputs, a cache holding the rotated keys of positions past - rows .. past - 1 (NaN elsewhere: never
    read) and the float64 reference of the call."""
    capacity = past + S + spare
    rows = rows or capacity
    T = past + S
    cos, sin = rope_tables(capacity, rd) if mode != NONE else (None, None)
    q = rng.standard_normal((B, Hq, S, D)).astype(np.float32)
    k_all = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
    v_all = rng.standard_normal((B, Hkv, T, Dv)).astype(np.float32)
    kc = np.full((B, Hkv, rows, D), np.nan, np.float32)
    vc = np.full((B, Hkv, rows, Dv), np.nan, np.float32)
    krot = rope_ref(k_all, np.arange(T), cos, sin, mode, rd)
    kmag = rope_ref(k_all, np.arange(T), cos, sin, mode, rd, magnitude=True)
    old = np.arange(max(0, past - rows), past)
    kc[:, :, old % rows] = krot[:, :, old]
    vc[:, :, old % rows] = v_all[:, :, old]
    krot[:, :, old], kmag[:, :, old] = kc[:, :, old % rows], np.abs(kc[:, :, old % rows])  # what the cache holds
    slopes = alibi_slopes(Hq) if alibi else None
    lo = max(0, past - window + 1) if window else 0
    assert lo >= past - rows, "the case reads positions the ring no longer holds"
    pos = np.arange(past, T)
    group = Hq // Hkv
    K, Km, V = (np.repeat(a[:, :, lo:T].astype(np.float64), group, axis=1) for a in (krot, kmag, v_all))
    qr = rope_ref(q, pos, cos, sin, mode, rd)
    qm = rope_ref(q, pos, cos, sin, mode, rd, magnitude=True)
    scale = 1.0 / np.sqrt(D)
    s, sabs = scores_ref(qr, K, qm, Km, scale, pos, np.arange(lo, T), window, slopes, cap)
    ref, tol = softmax_out(s, sabs, V, D)
    k, v = np.ascontiguousarray(k_all[:, :, past:]), np.ascontiguousarray(v_all[:, :, past:])
    return dict(q=q, k=k, v=v, kc=kc, vc=vc, cos=cos, sin=sin, capacity=capacity, rows=rows, slopes=slopes,
                scale=scale, ref=ref, tol=tol, krot=krot, kmag=kmag, v_all=v_all, past=past, rd=rd, mode=mode,
                window=window, cap=cap)


def kv_args(c, out):
    """The kernel's arguments (arrays where it takes pointers) for case dict c writing to out."""
    B, Hq, S, D = c["q"].shape
    Hkv, Dv = c["k"].shape[1], c["v"].shape[3]
    strides = [i64(elem_strides(a)) for a in (c["q"], c["k"], c["v"], out)]
    return (c["q"], c["k"], c["v"], c["kc"], c["vc"], out, B, Hq, Hkv, S, c["past"], c["capacity"], D, Dv,
            *strides, c["cos"], c["sin"], c["rd"], c["mode"], c["scale"], c["window"], c["rows"], c["slopes"],
            c["cap"])


def check_kv_cache(c, kc, vc, kc0, vc0, what):
    """Row p % rows holds position p's rotated k / raw v for the last positions written; every other row is
    bit-identical to before (NaN included)."""
    rows, past, S = c["rows"], c["past"], c["q"].shape[2]
    want_k, want_v, written = kc0.astype(np.float64), vc0.copy(), np.zeros(rows, bool)
    mag = np.zeros_like(want_k)
    for p in range(past, past + S):
        want_k[:, :, p % rows], mag[:, :, p % rows] = c["krot"][:, :, p], c["kmag"][:, :, p]
        want_v[:, :, p % rows] = c["v_all"][:, :, p]
        written[p % rows] = True
    assert np.all(np.abs(kc[:, :, written] - want_k[:, :, written]) <= 4 * U * mag[:, :, written]), \
        f"{what}: rotated k in the cache is off"
    assert np.array_equal(vc[:, :, written], want_v[:, :, written]), f"{what}: v rows differ"
    assert np.array_equal(kc[:, :, ~written], kc0[:, :, ~written], equal_nan=True), f"{what}: k rows clobbered"
    assert np.array_equal(vc[:, :, ~written], vc0[:, :, ~written], equal_nan=True), f"{what}: v rows clobbered"


def call(lib, spec, args, pool):
    lib.kernel(spec)(*[ptr(a) if isinstance(a, np.ndarray) or a is None else a for a in args], pool)
    assert not lib.tcc_error_pending(), lib.tcc_error_message().decode()


@pytest.mark.parametrize("spec", KV, ids=IDS)
@pytest.mark.parametrize("case", list(KV_CASES))
def test_kvattention_variants(x86_kernel_lib, spec, case, x86_pool, rng):
    c = make_kv(rng, *KV_CASES[case])
    kc0, vc0 = c["kc"].copy(), c["vc"].copy()
    out = np.full(c["ref"].shape, np.nan, np.float32)
    call(x86_kernel_lib, spec, kv_args(c, out), x86_pool)
    check(out, c["ref"], c["tol"], f"{spec.name} {case}")
    check_kv_cache(c, c["kc"], c["vc"], kc0, vc0, f"{spec.name} {case}")


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_ring_decodes_far_past_the_window(x86_kernel_lib, spec, x86_pool2, rng):
    """A ring of 12 rows, window 9: prefill 23 tokens, then chunks of 5 and 1, then decode to 80 tokens;
    every step equals the float64 reference over the whole sequence, and the ring ends holding the last 12."""
    B, Hq, Hkv, D, rd, W, R, total = 1, 4, 2, 16, 16, 9, 12, 80
    capacity = 96
    cos, sin = rope_tables(capacity, rd)
    q = rng.standard_normal((B, Hq, total, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, total, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, total, D)).astype(np.float32)
    slopes = alibi_slopes(Hq)
    pos = np.arange(total)
    krot, kmag = rope_ref(k, pos, cos, sin, HALF, rd), rope_ref(k, pos, cos, sin, HALF, rd, magnitude=True)
    s, sabs = scores_ref(rope_ref(q, pos, cos, sin, HALF, rd), np.repeat(krot, 2, 1),
                         rope_ref(q, pos, cos, sin, HALF, rd, magnitude=True), np.repeat(kmag, 2, 1), 0.25, pos,
                         pos, W, slopes, 4.0)
    ref, tol = softmax_out(s, sabs, np.repeat(v.astype(np.float64), 2, 1), D)
    kc = np.full((B, Hkv, R, D), np.nan, np.float32)
    vc = np.full((B, Hkv, R, D), np.nan, np.float32)
    past, steps = 0, [23, 5, 1, 5] + [1] * (total - 34)
    for S in steps:
        sl = slice(past, past + S)
        qs, ks, vs = (np.ascontiguousarray(a[:, :, sl]) for a in (q, k, v))
        out = np.full((B, Hq, S, D), np.nan, np.float32)
        strides = [i64(elem_strides(a)) for a in (qs, ks, vs, out)]
        call(x86_kernel_lib, spec, (qs, ks, vs, kc, vc, out, B, Hq, Hkv, S, past, capacity, D, D, *strides, cos,
                                    sin, rd, HALF, 0.25, W, R, slopes, 4.0), x86_pool2)
        check(out, ref[:, :, sl], tol[:, :, sl], f"{spec.name} past={past} S={S}")
        past += S
    last = np.arange(total - R, total)
    assert np.all(np.abs(kc[:, :, last % R] - krot[:, :, last]) <= 4 * U * kmag[:, :, last])
    assert np.array_equal(vc[:, :, last % R], v[:, :, last])


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_variants_are_not_no_ops(x86_kernel_lib, spec, rng):
    """Each variant moves the output well beyond the tolerance: the kernel honours the argument, and the
    tolerance would catch it being ignored (or a window one key too wide)."""
    base = (1, 4, 2, 6, 20, 16, 16, 16, HALF)
    for window, alibi, cap, wider in ((5, False, 0.0, 6), (0, True, 0.0, 0), (0, False, 0.5, 0)):
        c = make_kv(rng, *base, window, 0, alibi, cap, 2)
        out = np.full(c["ref"].shape, np.nan, np.float32)
        call(x86_kernel_lib, spec, kv_args(c, out), None)
        check(out, c["ref"], c["tol"], f"{spec.name} w={window} alibi={alibi} cap={cap}")
        plain = make_kv(np.random.default_rng(0), *base, wider, 0, False, 0.0, 2)
        c2 = make_kv(np.random.default_rng(0), *base, window, 0, alibi, cap, 2)
        assert (np.abs(plain["ref"] - c2["ref"]) > c2["tol"]).any(axis=-1).mean() > 0.5, (window, alibi, cap)


@pytest.mark.parametrize("spec", KV, ids=IDS)
def test_bad_ring_raises_without_writing(x86_kernel_lib, spec, rng):
    lib = x86_kernel_lib
    for window, rows, capacity, words in ((0, 8, 16, "cannot serve"), (10, 8, 16, "cannot serve"),
                                          (4, 20, 16, "cannot serve"), (-1, 16, 16, "cannot serve")):
        c = make_kv(rng, 1, 2, 1, 1, 3, 8, 8, 0, NONE, 0, 0, False, 0.0, 0)
        kc = np.zeros((1, 1, rows, 8), np.float32)
        out = np.zeros((1, 2, 1, 8), np.float32)
        args = list(kv_args(c, out))
        args[3] = args[4] = kc
        args[11], args[-4], args[-3] = capacity, window, rows
        lib.tcc_clear_error()
        lib.kernel(spec)(*[ptr(a) if isinstance(a, np.ndarray) or a is None else a for a in args], None)
        try:
            assert lib.tcc_error_pending(), (window, rows, capacity)
            assert words in lib.tcc_error_message().decode()
            assert not kc.any(), "a rejected call must not touch the cache"
        finally:
            lib.tcc_clear_error()


# ------------------------------------------------------------------------------------------ attention

# B, Hq, Hkv, Sq, Skv, D, Dv, causal, window, alibi, softcap, additive mask
ATTN_CASES = {
    "window1_causal": (1, 4, 2, 5, 5, 16, 16, 1, 1, False, 0.0, False),
    "window3_offset": (2, 4, 4, 4, 11, 8, 8, 1, 3, False, 0.0, False),
    "window70_long": (1, 2, 1, 130, 130, 32, 32, 1, 70, False, 0.0, False),
    "window_not_causal": (1, 2, 2, 6, 9, 16, 16, 0, 4, False, 0.0, False),
    "alibi_causal_gqa": (1, 8, 2, 9, 9, 16, 16, 1, 0, True, 0.0, False),
    "alibi_decode_mask": (2, 4, 4, 1, 77, 16, 24, 0, 0, True, 0.0, True),
    "alibi_long": (1, 4, 1, 100, 100, 64, 64, 1, 0, True, 0.0, False),
    "softcap_causal": (1, 4, 2, 12, 12, 64, 64, 1, 0, False, 3.0, False),
    "softcap_mask": (2, 2, 1, 7, 9, 12, 12, 0, 0, False, 1.0, True),
    "all_three_d7": (1, 6, 3, 10, 19, 7, 5, 1, 6, True, 2.5, True),
}


def make_attn(rng, B, Hq, Hkv, Sq, Skv, D, Dv, causal, window, alibi, cap, with_mask):
    q = rng.standard_normal((B, Hq, Sq, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Skv, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Skv, Dv)).astype(np.float32)
    mask = rng.standard_normal((B, 1, Sq, Skv)).astype(np.float32) if with_mask else None
    slopes = alibi_slopes(Hq) if alibi else None
    scale = 1.0 / np.sqrt(D)
    g = Hq // Hkv
    K, V = (np.repeat(a.astype(np.float64), g, axis=1) for a in (k, v))
    qpos = np.arange(Sq) + (Skv - Sq)
    s, sabs = scores_ref(q.astype(np.float64), K, np.abs(q.astype(np.float64)), np.abs(K), scale, qpos,
                         np.arange(Skv), window, slopes, cap, causal=bool(causal))
    if mask is not None:
        s = s + mask
        sabs = sabs + np.where(np.isfinite(s), np.abs(mask), 0)
    ref, tol = softmax_out(s, sabs, V, D)
    return dict(q=q, k=k, v=v, mask=mask, slopes=slopes, scale=scale, causal=causal, window=window, cap=cap,
                ref=ref, tol=tol)


def attn_args(c, out):
    q, k, v, mask = c["q"], c["k"], c["v"], c["mask"]
    B, Hq, Sq, D = q.shape
    Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
    ms = [0, 0, 0, 0] if mask is None else elem_strides(np.broadcast_to(mask, (B, Hq, Sq, Skv)))
    return (q, k, v, mask, out, B, Hq, Hkv, Sq, Skv, D, Dv, *[i64(elem_strides(a)) for a in (q, k, v)], i64(ms),
            i64(elem_strides(out)), c["scale"], c["causal"], c["window"], c["slopes"], c["cap"])


@pytest.mark.parametrize("spec", ATTN, ids=IDS)
@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_attention_variants(x86_kernel_lib, spec, case, x86_pool, rng):
    c = make_attn(rng, *ATTN_CASES[case])
    out = np.full(c["ref"].shape, np.nan, np.float32)
    call(x86_kernel_lib, spec, attn_args(c, out), x86_pool)
    check(out, c["ref"], c["tol"], f"{spec.name} {case}")
