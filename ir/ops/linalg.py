"""Matrix products (kind opaque).

MatMul(a, b)                 numpy matmul semantics: 1-D operands are promoted and the added axis
                             dropped; batch dims broadcast.
Gemm(a, b, c?) {alpha=1.0, beta=1.0, transA=0, transB=0}
                             y = alpha * op(a) @ op(b) + beta * c, a/b 2-D, c broadcast to [M, N].
                             Kept as ONNX's Gemm; a pass turns it into Linear.
f32 products accumulate in float32 (as Linear's reference and the kernels do); f16 computes in float32.
"""
from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from ..core import TensorType
from ..dtypes import DType
from ..registry import broadcast_shapes, register_op
from ._common import check_dtypes, same_dtype, shape_str

_MM_DTYPES = (DType.f32, DType.f16, DType.i64, DType.i32)


def _matmul_infer(ins, attrs):
    a, b = ins
    check_dtypes("MatMul", ins, _MM_DTYPES)
    dt = same_dtype("MatMul", ins)
    sa, sb = list(a.shape), list(b.shape)
    if not sa or not sb:
        raise ShapeError(f"MatMul operands must have rank >= 1, got {a.type} and {b.type}")
    va, vb = len(sa) == 1, len(sb) == 1
    sa = [1] + sa if va else sa
    sb = sb + [1] if vb else sb
    if sa[-1] != sb[-2]:
        raise ShapeError(f"MatMul inner dims differ: {shape_str(a.shape)} @ {shape_str(b.shape)}")
    batch = broadcast_shapes(sa[:-2], sb[:-2], what="MatMul batch")
    out = list(batch) + ([] if va else [sa[-2]]) + ([] if vb else [sb[-1]])
    return [TensorType(dt, out)]


def _compute(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _matmul_ref(xs, attrs):
    a, b = xs
    return [np.matmul(_compute(a), _compute(b)).astype(a.dtype)]


register_op("MatMul", infer=_matmul_infer, ref=_matmul_ref, kind="opaque", inputs=2,
            doc="matrix product with numpy semantics")


def _gemm_infer(ins, attrs):
    a, b = ins[0], ins[1]
    check_dtypes("Gemm", ins, _MM_DTYPES)
    dt = same_dtype("Gemm", ins)
    if a.type.rank != 2 or b.type.rank != 2:
        raise ShapeError(f"Gemm operands must be 2-D, got {a.type} and {b.type}")
    m, k = a.shape[::-1] if attrs["transA"] else a.shape
    k2, n = b.shape[::-1] if attrs["transB"] else b.shape
    if k != k2:
        raise ShapeError(f"Gemm inner dims differ: A {a.type} (transA={attrs['transA']}), "
                         f"B {b.type} (transB={attrs['transB']})")
    if len(ins) > 2 and ins[2] is not None and broadcast_shapes((m, n), ins[2].shape, what="Gemm C") != (m, n):
        raise ShapeError(f"Gemm C {ins[2].type} does not broadcast to [{m},{n}]")
    return [TensorType(dt, (m, n))]


def _gemm_ref(xs, attrs):
    a, b = _compute(xs[0]), _compute(xs[1])
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = np.matmul(a, b)
    if attrs["alpha"] != 1.0:
        y = y * np.asarray(attrs["alpha"], dtype=y.dtype)
    if len(xs) > 2 and xs[2] is not None:
        c = _compute(xs[2])
        y = y + (c * np.asarray(attrs["beta"], dtype=c.dtype) if attrs["beta"] != 1.0 else c)
    return [np.asarray(y).astype(xs[0].dtype)]


register_op("Gemm", infer=_gemm_infer, ref=_gemm_ref, kind="opaque", inputs=(2, 3),
            attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
            doc="alpha * op(A) @ op(B) + beta * C")
