"""norm_quantize (every x86 variant): RMSNorm / LayerNorm fused with int8 activation quantization.

The fused kernel runs the norm kernel's row function and then quantize_acts' row function on a per-thread
row buffer, so it must be bit-exact with the unfused pair: its xq, xs and xsum are compared bit for bit
with ir/quant_arith.py: quantize_activations (which quantize_acts matches bit for bit, test_qlinear.py)
applied to the norm kernel's own output. The norm kernel itself is checked against float64 in
test_elementwise.py; no tolerance is involved here. Also: the int8 row padding [K, Kp) is zero, the ldq
padding beyond Kp is never written, bad groups are reported.
"""
from __future__ import annotations

import numpy as np
import pytest
from tcc.backends.x86 import packing_quant as pq
from tcc.backends.x86.kernels import VARIANTS, select
from tcc.ir.quant_arith import quantize_activations

from .conftest import ptr

FUSED = [s for s in VARIANTS if s.family == "norm_quantize"]
# rows, cols, group: K below / at / above a group and not a multiple of 32 or 64 (a short last group),
# several row chunks of the pool (70 rows), a decode row of a 2048-wide model.
CASES = [(1, 1, 32), (1, 32, 32), (3, 33, 32), (2, 100, 32), (5, 64, 64), (17, 300, 128), (1, 2048, 32),
         (70, 1000, 32), (4, 257, 96)]
EPS = 1e-5
LDQ_PAD = 16


def _inputs(rng, rows, cols, affine):
    x = (rng.standard_normal((rows, cols)) * 2 + 3).astype(np.float32)
    x[0, : min(cols, 32)] *= 1e-3  # a quiet first group
    gamma = rng.uniform(0.5, 1.5, cols).astype(np.float32) if "gamma" in affine else None
    beta = rng.standard_normal(cols).astype(np.float32) if "beta" in affine else None
    return x, gamma, beta


def run_fused(lib, spec, x, gamma, beta, group, pool):
    rows, cols = x.shape
    kp, g = pq.padded_k(cols), -(-cols // group)
    xq = np.full((rows, kp + LDQ_PAD), 77, np.int8)
    xs = np.full(rows * g, np.nan, np.float32)
    xsum = np.full(rows * g, -999, np.int32)
    lib.kernel(spec)(ptr(x), ptr(gamma), ptr(beta), ptr(xq), kp + LDQ_PAD, ptr(xs), ptr(xsum), rows, cols, EPS,
                     group, pool)
    assert (xq[:, kp:] == 77).all(), "wrote past Kp into the ldq padding"
    return xq[:, :kp], xs.reshape(rows, g), xsum.reshape(rows, g)


@pytest.mark.parametrize("spec", FUSED, ids=lambda s: s.name.removeprefix("tcc_norm_quantize_"))
@pytest.mark.parametrize("affine", ["gamma_beta", "gamma", "none"])
@pytest.mark.parametrize("rows,cols,group", CASES)
def test_norm_quantize_matches_norm_then_quantize(x86_kernel_lib, x86_pool, spec, affine, rows, cols, group, rng):
    norm = select("norm", variant=spec.variant, op=spec.param("op"), dtype="f32")
    x, gamma, beta = _inputs(rng, rows, cols, affine)
    y = np.zeros_like(x)
    x86_kernel_lib.kernel(norm)(ptr(x), ptr(gamma), ptr(beta), ptr(y), rows, cols, EPS, x86_pool)
    rq, rs, rsum = quantize_activations(y, group, pad_to=pq.KPAD)
    xq, xs, xsum = run_fused(x86_kernel_lib, spec, x, gamma, beta, group, x86_pool)
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(xs.view(np.uint32), np.asarray(rs, np.float32).reshape(rows, -1).view(np.uint32))
    np.testing.assert_array_equal(xsum, rsum.reshape(rows, -1))
    assert not xq[:, cols:].any()


@pytest.mark.parametrize("spec", FUSED, ids=lambda s: s.name.removeprefix("tcc_norm_quantize_"))
def test_norm_quantize_empty_and_bad_group(x86_kernel_lib, spec):
    lib = x86_kernel_lib
    lib.kernel(spec)(None, None, None, None, 64, None, None, 0, 64, EPS, 32, None)  # no rows: nothing touched
    assert not lib.tcc_error_pending()
    x = np.ones((2, 64), np.float32)
    xq, xs, xsum = np.zeros((2, 64), np.int8), np.zeros(8, np.float32), np.zeros(8, np.int32)
    for bad in (0, -32) + ((16, 48) if spec.variant == "avx2" else ()):
        lib.kernel(spec)(ptr(x), None, None, ptr(xq), 64, ptr(xs), ptr(xsum), 2, 64, EPS, bad, None)
        want = b"multiple of 32" if spec.variant == "avx2" else b"not positive"
        assert lib.tcc_error_pending() and want in lib.tcc_error_message(), (spec.name, bad)
        lib.tcc_clear_error()
