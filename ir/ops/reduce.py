"""Reductions and softmax.

ReduceSum/ReduceMean/ReduceMax/ReduceMin/ReduceProd(x) {axes, keepdims=1}
    `axes` is an explicit attribute listing exactly the reduced axes (the frontend turns ONNX's axes
    input/attribute into it, "all axes" when ONNX gives none, and noop_with_empty_axes into Identity).
    An empty reduction gives sum 0, prod 1, max -inf / min +inf (the dtype's lowest/highest integer),
    mean NaN. Float sums and means accumulate in float64 and round once.
Softmax/LogSoftmax(x) {axis=-1}   opset-13 semantics: normalize over the single axis `axis` (kind opaque).
"""
from __future__ import annotations

import numpy as np

from ..core import TensorType
from ..dtypes import DType
from ..registry import REQUIRED, norm_axis, register_op
from ._common import FLOATS, NUMERIC, check_dtypes, quiet


def reduce_axes(axes, rank) -> tuple[int, ...]:
    return tuple(sorted({norm_axis(a, rank, "reduce axis") for a in axes}))


def _reduce_infer(name, allowed):
    def infer(ins, attrs):
        check_dtypes(name, ins, allowed)
        shape = ins[0].shape
        axes = reduce_axes(attrs["axes"], len(shape))
        if attrs["keepdims"]:
            out = [1 if i in axes else d for i, d in enumerate(shape)]
        else:
            out = [d for i, d in enumerate(shape) if i not in axes]
        return [TensorType(ins[0].dtype, out)]
    return infer


def _extreme(x, axes, keep, maximum: bool):
    if x.dtype == bool:
        return (np.any if maximum else np.all)(x, axis=axes, keepdims=keep)
    if x.dtype.kind == "f":
        init = -np.inf if maximum else np.inf
    else:
        init = np.iinfo(x.dtype).min if maximum else np.iinfo(x.dtype).max
    fn = np.max if maximum else np.min
    return fn(x, axis=axes, keepdims=keep, initial=init)


_REDUCE = {
    "ReduceSum": (lambda x, ax, k: np.sum(x, axis=ax, keepdims=k), NUMERIC),
    "ReduceMean": (lambda x, ax, k: np.mean(x, axis=ax, keepdims=k), NUMERIC),
    "ReduceProd": (lambda x, ax, k: np.prod(x, axis=ax, keepdims=k), NUMERIC),
    "ReduceMax": (lambda x, ax, k: _extreme(x, ax, k, True), NUMERIC + (DType.bool,)),
    "ReduceMin": (lambda x, ax, k: _extreme(x, ax, k, False), NUMERIC + (DType.bool,)),
}


def _reduce_ref(name, fn):
    @quiet
    def ref(xs, attrs):
        x = np.asarray(xs[0])
        axes = reduce_axes(attrs["axes"], x.ndim)
        keep = bool(attrs["keepdims"])
        if x.dtype.kind == "f":
            wide = x.astype(np.float64)
        elif name == "ReduceMean":
            wide = x.astype(np.float64)  # integer mean: exact sum / n, truncated below
        else:
            wide = x
        r = np.asarray(fn(wide, axes, keep))
        if x.dtype.kind in "iu" and r.dtype.kind == "f":
            r = np.trunc(r)
        return [r.astype(x.dtype)]
    return ref


for _name, (_fn, _allowed) in _REDUCE.items():
    register_op(_name, infer=_reduce_infer(_name, _allowed), ref=_reduce_ref(_name, _fn), kind="reduction",
                inputs=1, attrs={"axes": REQUIRED, "keepdims": 1}, doc=f"{_name} over the listed axes")


# -- Softmax / LogSoftmax ------------------------------------------------------------------------

def _softmax_infer(name):
    def infer(ins, attrs):
        check_dtypes(name, ins, FLOATS)
        norm_axis(attrs["axis"], ins[0].type.rank, f"{name} axis")
        return [ins[0].type]
    return infer


def _softmax_ref(log: bool):
    @quiet
    def ref(xs, attrs):
        x = np.asarray(xs[0])
        if x.size == 0:
            return [x.copy()]
        axis = norm_axis(attrs["axis"], x.ndim)
        w = x.astype(np.float64)
        z = w - np.max(w, axis=axis, keepdims=True)
        s = np.sum(np.exp(z), axis=axis, keepdims=True)
        return [(z - np.log(s) if log else np.exp(z) / s).astype(x.dtype)]
    return ref


register_op("Softmax", infer=_softmax_infer("Softmax"), ref=_softmax_ref(False), kind="opaque", inputs=1,
            attrs={"axis": -1}, doc="softmax over one axis (opset 13)")
register_op("LogSoftmax", infer=_softmax_infer("LogSoftmax"), ref=_softmax_ref(True), kind="opaque", inputs=1,
            attrs={"axis": -1}, doc="log-softmax over one axis (opset 13)")
