"""CUDA attention, norm, softmax and rope kernels (backends/cuda/kernels_attention.py): every variant under
the CPU SIMT emulator against the repository's numpy references (ir/ops/kv.py, ir/ops/fused.py), and every
variant compiled by nvcc for sm_80 and sm_90.

Tolerances. The inputs are fp16 values (also for the f32 variants, so one reference serves both) and the
references compute in fp32 (float64 for norms / softmax) from the same values; where the kernel rounds an
intermediate to fp16 (the rotated keys it stores in the f16 cache) the reference rounds it too. What is left:
- the output's rounding to fp16: at most 2^-11 (unit roundoff) of the output, and an attention output is a
  convex combination of value rows, so |out| <= max|v|: OUT_F16 = 2^-11 of max|v|;
- fp32 differences between the kernel and the reference (summation order of a D-term dot over scores of
  size ~|q||k|scale <= ~10, expf accuracy, the split merge): ~sqrt(D) * 2^-24 * 10 ~ 1e-5 relative on a
  weight, so FP32 = 2^-14 (6.1e-5) of max|v| bounds it with margin.
A wrong key, position, head or split merge errs by O(0.1 max|v|), three orders above the bound.
The kv caches are checked exactly except the rotated keys, whose fp16 rounding may differ by one ulp where
the fp32 rotation lands near a rounding boundary (2^-10 of |c x1| + |s x2|).
"""
from __future__ import annotations

import numpy as np
import pytest

from tcc.backends.cuda.kernels_attention import VARIANTS
from tcc.ir.ops.fused import attention_reference
from tcc.ir.ops.kv import apply_rope

from .harness import build_kernels, nvcc_compile, sass

OUT_F16 = 2.0 ** -11
FP32 = 2.0 ** -14
NP = {"f16": np.float16, "f32": np.float32}
IDS = lambda spec: spec.name  # noqa: E731


def by_family(family):
    return [s for s in VARIANTS if s.family == family]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = build_kernels(VARIANTS, str(tmp_path_factory.mktemp("cuda_attention")))
    lib.set_seed(7)  # threads in a shuffled order between barriers: a missing barrier shows as a wrong result
    return lib


def call(lib, spec, *args):
    """Call the spec's launcher (args without the trailing exec: numpy arrays, strided views included, go
    by the address of their first element) on a fresh context, sync; returns the error message or ''."""
    conv = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
    with lib.exec() as ex:
        lib.fn(spec.name)(*conv, ex.handle)
        return ex.sync()


def i64(values):
    return np.ascontiguousarray(values, dtype=np.int64)


def estrides(a):
    return i64([s // a.itemsize for s in a.strides])


def rnd(rng, shape, scale=1.0):
    """fp16-representable float32 values."""
    return (rng.standard_normal(shape) * scale).astype(np.float16).astype(np.float32)


def layout(x, order, dt):
    """x [B, H, S, D] stored in `order` ('bhsd' or 'bshd') as dtype dt, returned as a [B, H, S, D] view."""
    if order == "bhsd":
        return np.ascontiguousarray(x).astype(dt)
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).astype(dt).transpose(0, 2, 1, 3)


def check(got, ref, vmax, dt, what):
    tol = ((OUT_F16 if dt == "f16" else 0.0) + FP32) * vmax
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert np.all(np.isfinite(got)), what
    where = np.unravel_index(err.argmax(), err.shape)
    assert err.max() <= tol, f"{what}: max error {err.max():.3g} > {tol:.3g} at {where}"


# ------------------------------------------------------------------------------------------- kvattention

def rope_tables(capacity, rd, rng):
    if rd == 0:
        return None, None
    ang = np.arange(capacity)[:, None] * (10000.0 ** (-np.arange(0, rd, 2) / rd))[None, :]
    return np.cos(ang).astype(np.float16).astype(np.float32), np.sin(ang).astype(np.float16).astype(np.float32)


def kv_reference(q, k, v, kc, vc, past, cos, sin, mode, rd, scale, window, slopes, softcap, dt):
    """ir/ops/kv.py's reference with the rotated keys rounded to the cache's dtype (as the kernel stores
    them). Updates kc / vc (float32 copies) and returns the output."""
    S, rows = q.shape[2], kc.shape[2]
    pos = np.arange(past, past + S)
    knew = apply_rope(k, pos, cos, sin, mode, rd).astype(NP[dt]).astype(np.float32)
    lo = max(0, past - window + 1) if window else 0
    old = np.arange(lo, past) % rows
    keys = np.concatenate([kc[:, :, old], knew], axis=2)
    vals = np.concatenate([vc[:, :, old], v], axis=2)
    for i, p in enumerate(pos[-rows:] if S > rows else pos):
        kc[:, :, p % rows] = knew[:, :, i + max(0, S - rows)]
        vc[:, :, p % rows] = v[:, :, i + max(0, S - rows)]
    qr = apply_rope(q, pos, cos, sin, mode, rd)
    return attention_reference(qr, keys, vals, None, scale, True, window, slopes, softcap,
                               key_pos=np.arange(lo, past + S) - past)


# (B, Hq, Hkv, S, past, D, Dv, rd, mode, window, rows, capacity, alibi, softcap, layout)
KV_CASES = {
    "ctx1_gqa4": (1, 4, 1, 1, 0, 64, 64, 64, 1, 0, 8, 8, False, 0.0, "bhsd"),
    "ctx2_mha_interleaved": (2, 2, 2, 1, 1, 64, 64, 32, 2, 0, 4, 4, False, 0.0, "bshd"),
    "ctx41_gqa16_two_query_tiles": (1, 16, 1, 1, 40, 64, 64, 64, 1, 0, 48, 48, False, 0.0, "bhsd"),
    "ctx255_gqa8_d128": (1, 8, 1, 1, 254, 128, 128, 128, 1, 0, 256, 256, False, 0.0, "bhsd"),
    "ctx1101_split_gqa4": (1, 4, 1, 1, 1100, 64, 64, 64, 1, 0, 1104, 1104, False, 0.0, "bhsd"),
    "ctx1031_split_gqa8_d128_window": (1, 8, 1, 1, 1030, 128, 128, 128, 1, 600, 1040, 1040, False, 0.0, "bshd"),
    "prefill2_odd_half_rd": (1, 4, 4, 2, 3, 64, 64, 38, 1, 0, 8, 8, False, 0.0, "bhsd"),
    "prefill17_gqa4_d128": (2, 8, 2, 17, 5, 128, 128, 64, 2, 0, 24, 24, False, 0.0, "bshd"),
    "prefill64_gqa8": (1, 8, 1, 64, 0, 64, 64, 64, 1, 0, 64, 64, False, 0.0, "bhsd"),
    "prefill17_ctx1047": (1, 2, 1, 17, 1030, 64, 64, 64, 1, 0, 1047, 1047, False, 0.0, "bhsd"),
    "norope_d60_dv34_scalar_loads": (1, 2, 1, 3, 4, 60, 34, 0, 0, 0, 8, 8, False, 0.0, "bhsd"),
    "ring_window": (1, 4, 2, 20, 30, 64, 64, 64, 1, 8, 16, 64, False, 0.0, "bhsd"),
    "ring_window_split_decode": (1, 4, 1, 1, 3000, 64, 64, 64, 1, 1000, 1040, 4096, False, 0.0, "bhsd"),
    "alibi": (1, 4, 2, 3, 40, 64, 64, 0, 0, 0, 48, 48, True, 0.0, "bhsd"),
    "softcap": (1, 2, 1, 5, 7, 64, 64, 64, 2, 0, 12, 12, False, 0.5, "bhsd"),
}


@pytest.mark.parametrize("case", list(KV_CASES), ids=str)
@pytest.mark.parametrize("spec", by_family("kvattention"), ids=IDS)
def test_kvattention(lib, spec, case):
    B, Hq, Hkv, S, past, D, Dv, rd, mode, window, rows, capacity, alibi, softcap, order = KV_CASES[case]
    dt = spec.param("dtype")
    rng = np.random.default_rng(hash(case) % 2**32)
    q, k, v = rnd(rng, (B, Hq, S, D)), rnd(rng, (B, Hkv, S, D)), rnd(rng, (B, Hkv, S, Dv))
    kc0, vc0 = rnd(rng, (B, Hkv, rows, D)), rnd(rng, (B, Hkv, rows, Dv))
    cos, sin = rope_tables(capacity, rd, rng)
    slopes = (-np.abs(rnd(rng, (Hq,), 0.1))) if alibi else None
    scale = 8.0 / np.sqrt(D) if softcap else 1.0 / np.sqrt(D)  # softcap: scores well beyond the cap
    kc_ref, vc_ref = kc0.copy(), vc0.copy()
    ref = kv_reference(q, k, v, kc_ref, vc_ref, past, cos, sin, mode, rd, scale, window, slopes, softcap, dt)

    T = NP[dt]
    qd, kd, vd = layout(q, order, T), layout(k, order, T), layout(v, order, T)
    kc, vc = kc0.astype(T), vc0.astype(T)
    out = layout(np.full((B, Hq, S, Dv), np.nan, np.float32), order, T)
    tab = lambda t: None if t is None else t.astype(T)  # noqa: E731
    cos_d, sin_d, sl = tab(cos), tab(sin), tab(slopes)
    err = call(lib, spec, qd, kd, vd, kc, vc, out, B, Hq, Hkv, S, past, capacity, D, Dv,
               estrides(qd), estrides(kd), estrides(vd), estrides(out), cos_d, sin_d, rd, mode, scale, window, rows,
               sl, softcap)
    assert err == ""
    check(out, ref, np.abs(v).max() if past == 0 else max(np.abs(v).max(), np.abs(vc0).max()), dt, "out")
    np.testing.assert_array_equal(vc.astype(np.float32), vc_ref)
    mag = np.abs(kc_ref) + np.abs(k).max()  # |c x1| + |s x2| <= |x1| + |x2|
    assert np.all(np.abs(kc.astype(np.float32) - kc_ref) <= (2.0 ** -10 if dt == "f16" else 2.0 ** -22) * mag)


# (Hq, Hkv, S, past, capacity, rope_mode, rotary_dim, tables, window, cache_rows) -> the refused value
BAD_KV = {
    "past_plus_s_over_capacity": ((2, 1, 2, 3, 4, 0, 0, False, 0, 4), "index 5 out of range [2, 5)"),
    "hq_not_multiple": ((3, 2, 1, 0, 4, 0, 0, False, 0, 4), "index 3 out of range [2, 2)"),
    "odd_rotary_dim": ((2, 1, 1, 0, 4, 1, 3, True, 0, 4), "index 3 out of range [0, 9)"),
    "rope_without_tables": ((2, 1, 1, 0, 4, 2, 4, False, 0, 4), "index 4 out of range [0, 9)"),
    "ring_without_window": ((2, 1, 1, 0, 4, 0, 0, False, 0, 2), "index 2 out of range [4, 5)"),
    "ring_shorter_than_window": ((2, 1, 1, 0, 4, 0, 0, False, 3, 2), "index 2 out of range [3, 5)"),
}


@pytest.mark.parametrize("case", list(BAD_KV), ids=str)
@pytest.mark.parametrize("spec", by_family("kvattention"), ids=IDS)
def test_kvattention_refuses_bad_arguments(lib, spec, case):
    """A refused call is a one-line device error naming the value, and writes nothing."""
    (Hq, Hkv, S, past, capacity, mode, rd, tables, window, rows), message = BAD_KV[case]
    T = NP[spec.param("dtype")]
    D = 8
    rng = np.random.default_rng(1)
    q, k = rnd(rng, (1, Hq, S, D)).astype(T), rnd(rng, (1, Hkv, S, D)).astype(T)
    kc, vc = rnd(rng, (1, Hkv, rows, D)).astype(T), rnd(rng, (1, Hkv, rows, D)).astype(T)
    kc0, vc0 = kc.copy(), vc.copy()
    out = np.zeros((1, Hq, S, D), T)
    tab = np.ones((capacity, max(rd // 2, 1)), T) if tables else None
    err = call(lib, spec, q, k, k, kc, vc, out, 1, Hq, Hkv, S, past, capacity, D, D, estrides(q), estrides(k),
               estrides(k), estrides(out), tab, tab, rd, mode, 1.0, window, rows, None, 0.0)
    assert f"kvattention_bad_arguments: {message}" in err, err
    np.testing.assert_array_equal(kc, kc0)
    np.testing.assert_array_equal(vc, vc0)
    assert not out.any()


# --------------------------------------------------------------------------------------------- attention

# (B, Hq, Hkv, Sq, Skv, D, Dv, causal, window, mask, alibi, softcap, q layout)
ATT_CASES = {
    "causal17_gqa4": (1, 4, 1, 17, 17, 64, 64, True, 0, None, False, 0.0, "bhsd"),
    "mask_bcast_dv32": (2, 2, 2, 3, 40, 128, 32, False, 0, "bcast", False, 0.0, "bshd"),
    "decode1100_split_gqa8": (1, 8, 1, 1, 1100, 64, 64, True, 0, None, False, 0.0, "bhsd"),
    "window_alibi_softcap": (1, 4, 2, 9, 20, 64, 64, True, 5, "full", True, 0.5, "bhsd"),
    "noncausal_window": (1, 2, 2, 4, 12, 64, 64, False, 3, None, False, 0.0, "bhsd"),
    "sq_gt_skv": (1, 2, 1, 5, 3, 64, 64, True, 0, None, False, 0.0, "bhsd"),
    "d36_dv18_scalar_loads": (2, 4, 2, 6, 11, 36, 18, True, 0, None, False, 0.0, "bshd"),
}


@pytest.mark.parametrize("case", list(ATT_CASES), ids=str)
@pytest.mark.parametrize("spec", by_family("attention"), ids=IDS)
def test_attention(lib, spec, case):
    B, Hq, Hkv, Sq, Skv, D, Dv, causal, window, mask_kind, alibi, softcap, order = ATT_CASES[case]
    dt = spec.param("dtype")
    T = NP[dt]
    rng = np.random.default_rng(hash(case) % 2**32)
    q, k, v = rnd(rng, (B, Hq, Sq, D)), rnd(rng, (B, Hkv, Skv, D)), rnd(rng, (B, Hkv, Skv, Dv))
    mask = None
    if mask_kind == "bcast":  # [1, 1, Sq, Skv] with fully masked keys
        mask = rnd(rng, (1, 1, Sq, Skv))
        mask[..., ::3] = -np.inf
    elif mask_kind == "full":
        mask = rnd(rng, (B, Hq, Sq, Skv))
    slopes = (-np.abs(rnd(rng, (Hq,), 0.1))) if alibi else None
    scale = 8.0 / np.sqrt(D) if softcap else 1.0 / np.sqrt(D)
    ref = attention_reference(q, k, v, mask, scale, causal, window, slopes, softcap)
    qd, kd, vd = layout(q, order, T), layout(k, "bhsd", T), layout(v, "bshd", T)
    out = layout(np.full((B, Hq, Sq, Dv), np.nan, np.float32), order, T)
    md = None if mask is None else mask.astype(T)
    mstr = i64([0, 0, 0, 0]) if md is None else i64([0 if md.shape[i] == 1 else s // md.itemsize
                                                      for i, s in enumerate(md.strides)])
    err = call(lib, spec, qd, kd, vd, md, out, B, Hq, Hkv, Sq, Skv, D, Dv, estrides(qd), estrides(kd),
               estrides(vd), mstr, estrides(out), scale, int(causal), window,
               None if slopes is None else slopes.astype(T), softcap)
    assert err == ""
    check(out, ref, np.abs(v).max(), dt, "out")


# ------------------------------------------------------------------------------------ norm, softmax, rope
# Element-wise bounds: the output's rounding (out_rounding) plus the fp32 arithmetic before it, FP32 of the
# magnitude of the terms it combined (norms: |x - mean| * rstd * |gamma| and |gamma|; softmax: the exponent's
# argument; rope: |x1| + |x2|).


def out_rounding(ref, dt):
    """Rounding of a result to the output dtype: half an ulp, 2^-11 (f16) or 2^-24 (f32) relative, and half
    the f16 subnormal spacing (2^-25) near zero; doubled for the last fp32 operation before it."""
    if dt == "f16":
        return np.abs(ref) * OUT_F16 + 2.0 ** -25
    return np.abs(ref) * 2.0 ** -22 + 2.0 ** -140

ROW_LENGTHS = (1, 7, 64, 4096, 4099)  # 64, 4096: the 16-byte path


@pytest.mark.parametrize("cols", ROW_LENGTHS)
@pytest.mark.parametrize("spec", by_family("norm"), ids=IDS)
def test_norm(lib, spec, cols):
    dt, rms = spec.param("dtype"), spec.param("op") == "rmsnorm"
    T = NP[dt]
    rng = np.random.default_rng(cols)
    rows = 3
    x = (rnd(rng, (rows, cols), 2.0) + 0.5).astype(np.float16).astype(np.float32)
    gamma, beta = rnd(rng, (cols,)), (None if rms or cols == 7 else rnd(rng, (cols,)))
    x64, eps = x.astype(np.float64), 1e-5
    if rms:
        ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps) * gamma
    else:
        c = x64 - x64.mean(-1, keepdims=True)
        ref = c / np.sqrt((c ** 2).mean(-1, keepdims=True) + eps) * gamma + (0 if beta is None else beta)
    xd = x.astype(T)
    y = xd if cols >= 4096 else np.full_like(xd, np.nan)  # the long rows run in place (y == x)
    err = call(lib, spec, xd, gamma.astype(T), None if beta is None else beta.astype(T), y, rows, cols, eps)
    assert err == ""
    bound = out_rounding(ref, dt) + FP32 * (np.abs(x64) / np.sqrt(
        (x64 ** 2).mean(-1, keepdims=True) if rms else (c ** 2).mean(-1, keepdims=True) + eps) + 1) * np.abs(gamma)
    bad = np.abs(y.astype(np.float64) - ref) > bound
    assert not bad.any(), (y[bad][:5], ref[bad][:5], np.argwhere(bad)[:5])


SOFTMAX_SHAPES = [(3, 1, 1), (3, 7, 1), (2, 4099, 1), (2, 4096, 1), (2, 64, 1), (2, 7, 3), (1, 1, 5)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
@pytest.mark.parametrize("spec", by_family("softmax"), ids=IDS)
def test_softmax(lib, spec, shape):
    dt, log = spec.param("dtype"), spec.param("op") == "logsoftmax"
    T = NP[dt]
    outer, n, inner = shape
    rng = np.random.default_rng(n * 10 + inner)
    x = rnd(rng, shape, 3.0)
    x64 = x.astype(np.float64)
    z = x64 - x64.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1, keepdims=True))
    ref = z - lse if log else np.exp(z - lse)
    xd = x.astype(T)
    y = np.full_like(xd, np.nan)
    assert call(lib, spec, xd, y, outer, n, inner) == ""
    # softmax: values <= 1, fp16 rounding 2^-11 relative, fp32 exp / sum ~2^-14 relative.
    # logsoftmax: |x - m - lse| rounds to 2^-11 relative; fp32 terms are ~2^-14 of |z| + lse.
    scale = (np.abs(z) + np.abs(lse)) if log else np.abs(ref)
    bound = out_rounding(ref, dt) + FP32 * scale
    assert np.all(np.abs(y.astype(np.float64) - ref) <= bound)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("spec", by_family("rope"), ids=IDS)
def test_rope(lib, spec, interleaved):
    dt = spec.param("dtype")
    T = NP[dt]
    B, S, H, D, rd, max_pos = 2, 3, 2, 10, 6, 16
    rng = np.random.default_rng(interleaved)
    x = rnd(rng, (B, S, H, D))
    cos, sin = rope_tables(max_pos, rd, rng)
    for pos in (None, np.array([[5, 0, 15], [2, 2, 9]], np.int64)):
        p = np.arange(B * S).reshape(B, S) if pos is None else pos
        # apply_rope rotates [..., S, D] at positions [S]: one batch row at a time, heads leading.
        ref = np.stack([apply_rope(x[b].transpose(1, 0, 2), p[b], cos, sin, 2 if interleaved else 1, rd)
                        .transpose(1, 0, 2) for b in range(B)])
        for inplace in (False, True):
            xd = x.astype(T)
            y = xd if inplace else np.full_like(xd, np.nan)
            err = call(lib, spec, xd, cos.astype(T), sin.astype(T), pos, y, B, S, H, D, rd, estrides(xd),
                       max_pos, interleaved)
            assert err == ""
            bound = out_rounding(ref, dt) + FP32 * 2 * np.abs(x).max()
            assert np.all(np.abs(y.astype(np.float64) - ref) <= bound)


@pytest.mark.parametrize("spec", by_family("rope"), ids=IDS)
def test_rope_position_out_of_range(lib, spec):
    T = NP[spec.param("dtype")]
    x = np.zeros((1, 2, 1, 4), T)
    tab = np.zeros((4, 2), T)
    err = call(lib, spec, x, tab, tab, np.array([1, 4], np.int64), x.copy(), 1, 2, 1, 4, 4,
               estrides(x), 4, 0)
    assert "index 4 out of range [0, 4)" in err, err


def test_nvcc_sm80_sm90(tmp_path):
    """Every variant compiles to SASS for sm_80 and sm_90; the f16 attention, norm and softmax kernels keep their
    16-byte global loads (LDG.E.128)."""
    objects = nvcc_compile(VARIANTS, archs=("sm_80", "sm_90"), tmpdir=str(tmp_path))
    assert len(objects) == len(VARIANTS)
    for name, obj in objects.items():
        if "f16" in name and not name.startswith("tcc_rope"):
            assert "LDG.E.128" in sass(obj), name
