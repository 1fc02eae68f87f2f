"""The quantize pass works a slice of a weight at a time (passes/quantize.py): row bands of a [K, N] Linear
weight (whole quantization groups, so each band is a contiguous part of a mapped file, read once), rows of
an embedding table. Oracle: the whole-tensor quantize_int4 / quantize_int8 of ir/ops/quant.py; the codes,
scales and zero points must be bitwise equal whatever the slicing (CHUNK_ELEMENTS made small here so that
a weight spans several bands, the last one partial and the last group short, and the results are assembled
several output rows at a time)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from tcc.ir.core import Graph
from tcc.ir.dtypes import DType
from tcc.ir.quant_arith import quantize_int4, quantize_int8
from tcc.passes import quantize as qpass

from .helpers import run_pass, t
from .test_quantize import ctx_for

K, N = 200, 37  # 200 = 6 groups of 32 + 8: the last group is short


def _linear(w: np.ndarray) -> Graph:
    g = Graph()
    x = g.add_input("x", t("f32", 3, w.shape[0]))
    wv = g.add_const(w, "w")
    if w.dtype != np.float32:  # an fp16/bf16 export's weight, as import_onnx(widen_f16=True) leaves it
        wv = g.add_node("Cast", [wv], {"to": "f32"}).output
        g.outputs = [g.add_node("MatMul", [x, wv], name="fc").output]
    else:
        g.outputs = [g.add_node("Linear", [x, wv], name="fc").output]
    return g


@pytest.mark.parametrize("qm,asym,dtype", [("w4a8", False, np.float32), ("w4a8", True, np.float32),
                                           ("w4a32", False, np.float16), ("w8a8", False, np.float32),
                                           ("w8a8", False, np.float16), ("w4a8", True, ml_dtypes.bfloat16),
                                           ("w8a8", False, ml_dtypes.bfloat16)])
@pytest.mark.parametrize("chunk", [32 * N, 3 * 32 * N + 5, 1 << 22])
@pytest.mark.parametrize("staged", [False, True])  # the bands' outputs kept in memory / in a staging file
def test_row_bands_quantize_bit_identically(monkeypatch, qm, asym, dtype, chunk, staged):
    monkeypatch.setattr(qpass, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(qpass, "STAGE_ELEMENTS", 0 if staged else K * N)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((K, N)).astype(dtype)
    w[40:72, 5] = 0  # an all-zero group (scale 0)
    w[10, 7], w[11, 7] = 2.5, -2.5  # a |max| == |min| tie: the first one sets the sign
    g = _linear(w)
    run_pass("quantize", g, ctx_for(qm, asym=asym, group_size=32))
    (n,) = [n for n in g.nodes if n.op == "QLinear"]
    if qm == "w8a8":
        (q, s), z = quantize_int8(w.astype(np.float32)), None
    else:
        q, s, z = quantize_int4(w.astype(np.float32), 32, symmetric=not asym)
    np.testing.assert_array_equal(n.inputs[1].const, q)
    np.testing.assert_array_equal(n.inputs[2].const, s)
    assert n.inputs[2].const.dtype == s.dtype and n.inputs[1].const.dtype == q.dtype
    if z is None:
        assert n.input(3) is None
    else:
        np.testing.assert_array_equal(n.inputs[3].const, z)


def test_bands_are_contiguous_whole_groups():
    """Every row of the weight is in exactly one band, in order; a band is whole groups of `align` rows
    (only the last may be short) and about CHUNK_ELEMENTS weights."""
    for k, n, align in [(4096, 11008, 128), (11008, 4096, 128), (200, 37, 32), (5, 1 << 23, 32), (4096, 4096, 1)]:
        bands = qpass.band_ranges(k, n, align)
        assert bands[0][0] == 0 and bands[-1][1] == k
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
        assert all((hi - lo) % align == 0 for lo, hi in bands[:-1])
        assert all((hi - lo) * n <= max(qpass.CHUNK_ELEMENTS, align * n) for lo, hi in bands)


@pytest.mark.parametrize("qm", ["w4a8", "w8a8"])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_embedding_rows_quantize_bit_identically(monkeypatch, qm, dtype):
    monkeypatch.setattr(qpass, "CHUNK_ELEMENTS", 7 * 64)
    table = np.random.default_rng(4).standard_normal((50, 64)).astype(dtype)
    g = Graph()
    ids = g.add_input("ids", t("i64", 4))
    g.outputs = [g.add_node("Gather", [g.add_const(table, "embed"), ids], {"axis": 0}, name="embed").output]
    run_pass("quantize", g, ctx_for(qm))
    (n,) = [n for n in g.nodes if n.op == "QGather"]
    want = quantize_int8(table.T.astype(np.float32)) if qm == "w8a8" else quantize_int4(table.T.astype(np.float32), 32)
    for got, ref in zip(n.inputs[1:], want):
        if ref is not None:
            np.testing.assert_array_equal(got.const, ref)
    assert n.inputs[0].dtype == DType.i64


def test_unquantized_bf16_weights_become_f32(monkeypatch):
    """A bf16 weight --keep-fp32 leaves is converted to f32 (exactly, a slice at a time): no backend
    computes in bf16."""
    monkeypatch.setattr(qpass, "CHUNK_ELEMENTS", 5 * N)
    w = np.random.default_rng(5).standard_normal((K, N)).astype(ml_dtypes.bfloat16)
    g = _linear(w)
    run_pass("quantize", g, ctx_for("w4a8", keep_fp32=("fc",)))
    assert g.ops() == {"MatMul": 1}
    (mm,) = g.nodes
    assert mm.inputs[1].is_const and mm.inputs[1].dtype == DType.f32
    np.testing.assert_array_equal(mm.inputs[1].const, w.astype(np.float32))
