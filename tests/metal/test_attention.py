"""Metal kvattention, attention and rope (backends/metal/kernels.py) on the SIMT emulator against ir/ops/kv.py's reference, on the
CUDA tests' cases (tests/cuda/test_attention.py: contexts 1, 2, 41, 255 and > 1024, GQA ratios 1/4/8/16,
prefill, ring caches with a sliding window, ALiBi, softcap, odd head sizes) and with their tolerances."""
from __future__ import annotations

import numpy as np
import pytest

from tcc.backends.metal import kernels as mk
from tcc.ir.ops.fused import attention_reference
from tcc.ir.ops.kv import apply_rope
from tests.cuda.test_attention import (ATT_CASES, BAD_KV, KV_CASES, NP, check, estrides, i64, kv_reference, layout, rnd,
                                       rope_tables)

from .harness import build_metal

SPECS = [s for s in mk.VARIANTS if s.family == "kvattention"]
ATT_SPECS = [s for s in mk.VARIANTS if s.family == "attention"]
ROPE_SPECS = [s for s in mk.VARIANTS if s.family == "rope"]
FP32 = 2.0 ** -14
IDS = lambda spec: spec.name  # noqa: E731


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = build_metal(SPECS + ATT_SPECS + ROPE_SPECS, str(tmp_path_factory.mktemp("metal_attention")))
    lib.set_seed(7)
    return lib


def call(lib, spec, *args):
    conv = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
    with lib.exec() as ex:
        lib.fn(spec.name)(*conv, ex.handle)
        return ex.sync()


CASES = [(spec, case) for spec in SPECS for case in KV_CASES]


@pytest.mark.parametrize("spec,case", CASES, ids=lambda v: v if isinstance(v, str) else v.param("dtype"))
def test_kvattention(lib, spec, case):
    B, Hq, Hkv, S, past, D, Dv, rd, mode, window, rows, capacity, alibi, softcap, order = KV_CASES[case]
    dt = spec.param("dtype")
    rng = np.random.default_rng(sum(map(ord, case)))
    q, k, v = rnd(rng, (B, Hq, S, D)), rnd(rng, (B, Hkv, S, D)), rnd(rng, (B, Hkv, S, Dv))
    kc0, vc0 = rnd(rng, (B, Hkv, rows, D)), rnd(rng, (B, Hkv, rows, Dv))
    cos, sin = rope_tables(capacity, rd, rng)
    slopes = (-np.abs(rnd(rng, (Hq,), 0.1))) if alibi else None
    scale = 8.0 / np.sqrt(D) if softcap else 1.0 / np.sqrt(D)
    kc_ref, vc_ref = kc0.copy(), vc0.copy()
    ref = kv_reference(q, k, v, kc_ref, vc_ref, past, cos, sin, mode, rd, scale, window, slopes, softcap, dt)
    T = NP[dt]
    qd, kd, vd = layout(q, order, T), layout(k, order, T), layout(v, order, T)
    kc, vc = kc0.astype(T), vc0.astype(T)
    out = layout(np.full((B, Hq, S, Dv), np.nan, np.float32), order, T)
    tab = lambda t: None if t is None else t.astype(T)  # noqa: E731
    err = call(lib, spec, qd, kd, vd, kc, vc, out, B, Hq, Hkv, S, past, capacity, D, Dv, estrides(qd), estrides(kd),
               estrides(vd), estrides(out), tab(cos), tab(sin), rd, mode, scale, window, rows, tab(slopes), softcap)
    assert err == ""
    check(out, ref, np.abs(v).max() if past == 0 else max(np.abs(v).max(), np.abs(vc0).max()), dt, "out")
    np.testing.assert_array_equal(vc.astype(np.float32), vc_ref)
    mag = np.abs(kc_ref) + np.abs(k).max()
    assert np.all(np.abs(kc.astype(np.float32) - kc_ref) <= (2.0 ** -10 if dt == "f16" else 2.0 ** -22) * mag)


@pytest.mark.parametrize("case", list(BAD_KV), ids=str)
def test_kvattention_refuses_bad_arguments(lib, case):
    """A refused call is a one-line device error naming the value (as the CPU and CUDA kernels), and writes
    nothing."""
    spec = SPECS[0]
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
    assert f"{spec.name}_refuse: {message}" in err, err
    np.testing.assert_array_equal(kc, kc0)
    np.testing.assert_array_equal(vc, vc0)
    assert not out.any()


@pytest.mark.parametrize("case", list(ATT_CASES), ids=str)
@pytest.mark.parametrize("spec", ATT_SPECS, ids=IDS)
def test_attention(lib, spec, case):
    """tests/cuda/test_attention.py's cases: causal with Sq = Skv and Sq > Skv, a broadcast mask with fully masked
    keys, a long decode row, window + ALiBi + softcap, a non-causal window, odd head sizes."""
    B, Hq, Hkv, Sq, Skv, D, Dv, causal, window, mask_kind, alibi, softcap, order = ATT_CASES[case]
    dt = spec.param("dtype")
    T = NP[dt]
    rng = np.random.default_rng(sum(map(ord, case)))
    q, k, v = rnd(rng, (B, Hq, Sq, D)), rnd(rng, (B, Hkv, Skv, D)), rnd(rng, (B, Hkv, Skv, Dv))
    mask = None
    if mask_kind == "bcast":
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


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("spec", ROPE_SPECS, ids=IDS)
def test_rope(lib, spec, interleaved):
    """tests/cuda/test_attention.py's rope case: positions given or implied, in place or not, pass-through dims."""
    dt = spec.param("dtype")
    T = NP[dt]
    B, S, H, D, rd, max_pos = 2, 3, 2, 10, 6, 16
    rng = np.random.default_rng(interleaved)
    x = rnd(rng, (B, S, H, D))
    cos, sin = rope_tables(max_pos, rd, rng)
    for pos in (None, np.array([[5, 0, 15], [2, 2, 9]], np.int64)):
        p = np.arange(B * S).reshape(B, S) if pos is None else pos
        ref = np.stack([apply_rope(x[b].transpose(1, 0, 2), p[b], cos, sin, 2 if interleaved else 1, rd)
                        .transpose(1, 0, 2) for b in range(B)])
        for inplace in (False, True):
            xd = x.astype(T)
            y = xd if inplace else np.full_like(xd, np.nan)
            err = call(lib, spec, xd, cos.astype(T), sin.astype(T), pos, y, B, S, H, D, rd, estrides(xd),
                       max_pos, interleaved)
            assert err == ""
            rounding = np.abs(ref) * (2.0 ** -11 if dt == "f16" else 2.0 ** -22) + 2.0 ** -25
            assert np.all(np.abs(y.astype(np.float64) - ref) <= rounding + FP32 * 2 * np.abs(x).max())


@pytest.mark.parametrize("spec", ROPE_SPECS, ids=IDS)
def test_rope_position_out_of_range(lib, spec):
    T = NP[spec.param("dtype")]
    x, tab, pos = np.zeros((1, 2, 1, 4), T), np.zeros((4, 2), T), np.array([1, 4], np.int64)
    y = x.copy()
    assert "index 4 out of range [0, 4)" in call(lib, spec, x, tab, tab, pos, y, 1, 2, 1, 4, 4, estrides(x), 4, 0)
