"""GatherND and CumSum, in ONNX form (exported LLaMA graphs build their attention masks with them).

GatherND(data, indices) {batch_dims}: ONNX GatherND (indices i64, last axis indexes data).
CumSum(x, axis) {exclusive, reverse}: axis is a constant scalar input, as in ONNX.
"""
from __future__ import annotations

import numpy as np

from ...errors import ShapeError, UnsupportedError
from ..core import TensorType
from ..dtypes import DType
from ..registry import as_ints, norm_axis, register_op


def _gathernd_infer(ins, attrs):
    data, idx = ins
    b = int(attrs["batch_dims"])
    if idx.type.rank < 1:
        raise ShapeError("GatherND indices must have rank >= 1")
    k = idx.shape[-1]
    if not isinstance(k, int):
        raise UnsupportedError("GatherND indices with a symbolic last dim")
    if b + k > data.type.rank:
        raise ShapeError(f"GatherND: batch_dims {b} + index depth {k} exceeds data rank {data.type.rank}")
    shape = tuple(idx.shape[:-1]) + tuple(data.shape[b + k:])
    return [TensorType(data.dtype, shape)]


def _gathernd_ref(xs, attrs):
    data, idx = xs
    b = int(attrs["batch_dims"])
    k = idx.shape[-1]
    bshape = data.shape[:b]
    nb = int(np.prod(bshape, dtype=np.int64))
    d = data.reshape((nb,) + data.shape[b:])
    ix = idx.reshape((nb, -1, k))
    out = []
    for bi in range(nb):
        rows = []
        for row in ix[bi]:
            row = [int(r) + (data.shape[b + j] if r < 0 else 0) for j, r in enumerate(row)]
            for j, r in enumerate(row):
                if not 0 <= r < data.shape[b + j]:
                    raise IndexError(f"GatherND index {r} out of range")
            rows.append(d[bi][tuple(row)])
        out.append(np.stack(rows) if rows else np.zeros((0,) + data.shape[b + k:], data.dtype))
    res = np.stack(out) if out else np.zeros((0,), data.dtype)
    return [res.reshape(idx.shape[:-1] + data.shape[b + k:]).astype(data.dtype)]


register_op("GatherND", infer=_gathernd_infer, ref=_gathernd_ref, kind="injective", inputs=2,
            attrs={"batch_dims": 0}, doc="ONNX GatherND")


def _cumsum_axis(v, rank):
    if v.const is None:
        raise UnsupportedError("CumSum with a run-time axis")
    return norm_axis(as_ints(v.const)[0], rank)


def _cumsum_infer(ins, attrs):
    _cumsum_axis(ins[1], ins[0].type.rank)
    return [ins[0].type]


def _cumsum_ref(xs, attrs):
    x = xs[0]
    axis = norm_axis(int(np.asarray(xs[1]).reshape(-1)[0]), x.ndim)
    y = np.flip(x, axis) if attrs["reverse"] else x
    c = np.cumsum(y, axis=axis, dtype=x.dtype)
    if attrs["exclusive"]:
        c = c - y
    if attrs["reverse"]:
        c = np.flip(c, axis)
    return [np.ascontiguousarray(c).astype(x.dtype)]


register_op("CumSum", infer=_cumsum_infer, ref=_cumsum_ref, kind="opaque", inputs=2,
            attrs={"exclusive": 0, "reverse": 0}, doc="ONNX CumSum (axis is a constant input)")


def _rope_dims(x, attrs):
    """(B, S, H, D) of RotaryEmbedding's input: 4-D is [B, H, S, D]; 3-D is [B, S, H*D] with num_heads."""
    if x.type.rank == 4:
        b, h, s, d = x.shape
        return b, s, h, d
    if x.type.rank == 3:
        nh = int(attrs["num_heads"])
        if nh <= 0:
            raise ShapeError("RotaryEmbedding on a 3-D input needs num_heads")
        b, s, hidden = x.shape
        return b, s, nh, hidden // nh
    raise ShapeError(f"RotaryEmbedding input must be 3-D or 4-D, got {x.type}")


def _rope_infer(ins, attrs):
    x, cos, sin = ins[0], ins[1], ins[2]
    _, _, _, d = _rope_dims(x, attrs)
    rd = int(attrs["rotary_embedding_dim"]) or d
    if not isinstance(d, int) or rd % 2 or (isinstance(d, int) and rd > d):
        raise ShapeError(f"RotaryEmbedding: rotary_embedding_dim {rd} must be even and <= head size {d}")
    for c in (cos, sin):
        if c.shape[-1] != rd // 2:
            raise ShapeError(f"RotaryEmbedding cache {c.name!r} {c.type}: last dim must be {rd // 2}")
    return [x.type]


def rope_reference(x, cos, sin, pos, interleaved: bool, num_heads: int, rd: int) -> np.ndarray:
    """RoPE on [B,H,S,D] (4-D) or [B,S,H*D] (3-D) input; cos/sin rows picked by pos (or per (b, s))."""
    four_d = x.ndim == 4
    xt = np.transpose(x, (0, 2, 1, 3)) if four_d else x.reshape(x.shape[0], x.shape[1], num_heads, -1)
    rd = rd or xt.shape[-1]
    if pos is not None:
        cos, sin = cos[pos], sin[pos]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    rot = xt[..., :rd]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., :rd // 2], rot[..., rd // 2:])
    r1, r2 = c * x1 - s * x2, s * x1 + c * x2
    out = xt.copy()
    if interleaved:
        out[..., 0:rd:2], out[..., 1:rd:2] = r1, r2
    else:
        out[..., :rd // 2], out[..., rd // 2:rd] = r1, r2
    out = np.transpose(out, (0, 2, 1, 3)) if four_d else out.reshape(x.shape)
    return np.ascontiguousarray(out).astype(x.dtype)


def _rope_ref(xs, attrs):
    pos = xs[3] if len(xs) > 3 else None
    return [rope_reference(xs[0], xs[1], xs[2], pos, bool(attrs["interleaved"]), int(attrs["num_heads"]),
                           int(attrs["rotary_embedding_dim"]))]


register_op("RotaryEmbedding", infer=_rope_infer, ref=_rope_ref, kind="opaque", inputs=(3, 4),
            attrs={"interleaved": 0, "num_heads": 0, "rotary_embedding_dim": 0},
            doc="ONNX RotaryEmbedding (opset 23): 4-D input [B,H,S,D] or 3-D [B,S,H*D]")


# ScatterND(data, indices, updates) {reduction}: ONNX ScatterND (OPT's exported attention-mask code uses it).
_SCATTER_REDUCE = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatternd_infer(ins, attrs):
    data, idx, upd = ins
    if idx.dtype not in (DType.i64, DType.i32):
        raise ShapeError(f"ScatterND indices must be integers, got {idx.type}")
    if upd.dtype != data.dtype:
        raise ShapeError(f"ScatterND updates {upd.type} and data {data.type} differ in dtype")
    if attrs["reduction"] not in _SCATTER_REDUCE:
        raise UnsupportedError(f"ScatterND reduction {attrs['reduction']!r}")
    return [data.type]


def _scatternd_ref(xs, attrs):
    data, idx, upd = xs
    out = np.array(data, copy=True)
    k = idx.shape[-1]
    flat_idx = idx.reshape(-1, k)
    flat_upd = upd.reshape((flat_idx.shape[0],) + data.shape[k:])
    op = _SCATTER_REDUCE[attrs["reduction"]]
    for i, ind in enumerate(flat_idx):
        pos = tuple(int(j) for j in ind)
        out[pos] = flat_upd[i] if op is None else op(out[pos], flat_upd[i])
    return [out]


register_op("ScatterND", infer=_scatternd_infer, ref=_scatternd_ref, kind="injective", inputs=3,
            attrs={"reduction": "none"}, doc="ONNX ScatterND")


# GatherElements(data, indices) {axis}: ONNX GatherElements (GPT-J gathers its sin/cos rows with it).
def _gather_elements_infer(ins, attrs):
    data, idx = ins
    if idx.type.rank != data.type.rank:
        raise ShapeError(f"GatherElements indices {idx.type} and data {data.type} differ in rank")
    norm_axis(attrs["axis"], data.type.rank)
    return [TensorType(data.dtype, idx.shape)]


def _gather_elements_ref(xs, attrs):
    data, idx = xs
    axis = norm_axis(attrs["axis"], data.ndim)
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"GatherElements index out of range for axis of {n}")
    return [np.take_along_axis(data, np.where(idx < 0, idx + n, idx).astype(np.int64), axis=axis)]


register_op("GatherElements", infer=_gather_elements_infer, ref=_gather_elements_ref, kind="injective", inputs=2,
            attrs={"axis": 0}, doc="ONNX GatherElements")
