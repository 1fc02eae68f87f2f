"""Shape ops and views.

Shape(x) {start=0, end=None}        kind shape; i64 dims of x[start:end] (ONNX clamping). The frontend
                                    folds it to a constant, symbolic where x's dims are.
Reshape(x, shape) {allowzero=0}     kind view; `shape` stays an input (it is often computed from Shape)
                                    but must be constant, possibly symbolic; 0 copies the input dim
                                    (unless allowzero), -1 is inferred (also symbolically).
Squeeze(x) {axes}                   kind view; `axes` explicit (the frontend fills "all static 1 dims").
Unsqueeze(x) {axes}                 kind view; axes index the output.
Flatten(x) {axis=1}                 kind view; [prod(dims[:axis]), prod(dims[axis:])].
Identity(x)                         kind view.
Expand(x, shape)                    kind injective; shape input, constant (possibly symbolic); output is
                                    the broadcast of x's shape and `shape` (ONNX bidirectional).
ConstantOfShape(shape) {value=0.0, dtype="f32"}   kind injective; shape input, constant (maybe symbolic).
Range(start, limit, delta)          kind injective; scalar inputs; they must be constants (symbolic
                                    allowed with a constant integer delta: Range(0, seq, 1) -> [seq]),
                                    since the output length depends on their values.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError, UnsupportedError
from ..core import TensorType
from ..dims import Sym, product
from ..dtypes import DType
from ..registry import REQUIRED, broadcast_shapes, norm_axis, register_op
from ._common import check_dtypes, const_ints, div_exact, is_obj, shape_str, tidy, to_obj


# -- Shape ------------------------------------------------------------------------------------

def shape_bounds(rank: int, attrs) -> tuple[int, int]:
    """ONNX Shape's start/end, normalized and clamped to [0, rank]."""
    def clamp(i):
        return min(max(i + rank if i < 0 else i, 0), rank)
    start = clamp(attrs.get("start", 0))
    end = rank if attrs.get("end") is None else clamp(attrs["end"])
    return start, max(end, start)


def shape_constant(t: TensorType, attrs) -> np.ndarray:
    """The value of Shape(x) from x's type: int64, or an object array where dims are symbolic."""
    s, e = shape_bounds(t.rank, attrs)
    return tidy(to_obj(np.array(list(t.shape[s:e]) or [], dtype=object)))


def _shape_infer(ins, attrs):
    s, e = shape_bounds(ins[0].type.rank, attrs)
    return [TensorType(DType.i64, (e - s,))]


def _shape_ref(xs, attrs):
    x = np.asarray(xs[0])
    s, e = shape_bounds(x.ndim, attrs)
    return [np.array(x.shape[s:e], dtype=np.int64)]


register_op("Shape", infer=_shape_infer, ref=_shape_ref, kind="shape", inputs=1,
            attrs={"start": 0, "end": None}, doc="the dims of x[start:end] as i64")


# -- Reshape ----------------------------------------------------------------------------------

def _reshape_dims(in_shape, target, allowzero: int) -> list:
    out = []
    for i, d in enumerate(target):
        if not isinstance(d, Sym) and d == 0 and not allowzero:
            if i >= len(in_shape):
                raise ShapeError(f"Reshape: 0 at position {i} but the input {shape_str(in_shape)} has rank "
                                 f"{len(in_shape)}")
            d = in_shape[i]
        out.append(d)
    holes = [i for i, d in enumerate(out) if not isinstance(d, Sym) and d == -1]
    if len(holes) > 1 or any(not isinstance(d, Sym) and d < -1 for d in out):
        raise ShapeError(f"Reshape: bad target shape {shape_str(target)}")
    if holes:
        out[holes[0]] = _infer_hole(in_shape, [d for i, d in enumerate(out) if i != holes[0]], target)
    if all(not isinstance(d, Sym) for d in list(in_shape) + out) and product(in_shape) != product(out):
        raise ShapeError(f"Reshape: cannot reshape {shape_str(in_shape)} to {shape_str(target)}")
    return out


def _infer_hole(in_shape, known, target):
    """The -1 dim: numel(in) / product(known), cancelling equal dims first so symbols divide out."""
    rest_in, rest_known = list(in_shape), []
    for d in known:
        if d in rest_in:
            rest_in.remove(d)
        else:
            rest_known.append(d)
    num, den = product(rest_in), product(rest_known)
    if den == 0:
        raise ShapeError(f"Reshape: cannot infer -1 in {shape_str(target)} with a zero dim")
    q = div_exact(num, den)
    if q is None:
        what = ShapeError if not isinstance(num, Sym) and not isinstance(den, Sym) else UnsupportedError
        raise what(f"Reshape: cannot infer -1 reshaping {shape_str(in_shape)} to {shape_str(target)} "
                   f"({num} is not provably divisible by {den})")
    return q


def _reshape_infer(ins, attrs):
    target = const_ints(ins[1], "Reshape shape")
    return [ins[0].type.with_shape(_reshape_dims(ins[0].shape, target, attrs["allowzero"]))]


def _reshape_ref(xs, attrs):
    x, target = xs[0], [int(d) for d in np.asarray(xs[1]).reshape(-1)]
    if not attrs["allowzero"]:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [np.reshape(x, target)]


register_op("Reshape", infer=_reshape_infer, ref=_reshape_ref, kind="view", inputs=2, attrs={"allowzero": 0},
            doc="reshape to a constant (possibly symbolic) shape input; 0 copies, -1 infers")


# -- Squeeze / Unsqueeze / Flatten / Identity ---------------------------------------------------

def _squeeze_infer(ins, attrs):
    shape = ins[0].shape
    axes = {norm_axis(a, len(shape), "Squeeze axis") for a in attrs["axes"]}
    for a in axes:
        if not isinstance(shape[a], Sym) and shape[a] != 1:
            raise ShapeError(f"Squeeze axis {a} of {shape_str(shape)} is not 1")
    return [ins[0].type.with_shape([d for i, d in enumerate(shape) if i not in axes])]


def _squeeze_ref(xs, attrs):
    x = np.asarray(xs[0])
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in attrs["axes"])) if attrs["axes"] else x]


register_op("Squeeze", infer=_squeeze_infer, ref=_squeeze_ref, kind="view", inputs=1,
            attrs={"axes": REQUIRED}, doc="drop the listed size-1 axes")


def _unsqueeze_axes(axes, rank_out) -> list:
    out = sorted(norm_axis(a, rank_out, "Unsqueeze axis") for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"Unsqueeze axes {list(axes)} repeat an axis")
    return out


def _unsqueeze_infer(ins, attrs):
    shape = list(ins[0].shape)
    for a in _unsqueeze_axes(attrs["axes"], len(shape) + len(attrs["axes"])):
        shape.insert(a, 1)
    return [ins[0].type.with_shape(shape)]


def _unsqueeze_ref(xs, attrs):
    x = np.asarray(xs[0])
    return [np.expand_dims(x, tuple(_unsqueeze_axes(attrs["axes"], x.ndim + len(attrs["axes"]))))]


register_op("Unsqueeze", infer=_unsqueeze_infer, ref=_unsqueeze_ref, kind="view", inputs=1,
            attrs={"axes": REQUIRED}, doc="insert size-1 axes at the listed output positions")


def _flatten_axis(axis, rank):
    if not -rank <= axis <= rank:
        raise ShapeError(f"Flatten axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _flatten_infer(ins, attrs):
    shape = ins[0].shape
    a = _flatten_axis(attrs["axis"], len(shape))
    return [ins[0].type.with_shape((product(shape[:a]), product(shape[a:])))]


def _flatten_ref(xs, attrs):
    x = np.asarray(xs[0])
    a = _flatten_axis(attrs["axis"], x.ndim)
    return [x.reshape(int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:])))]


register_op("Flatten", infer=_flatten_infer, ref=_flatten_ref, kind="view", inputs=1, attrs={"axis": 1},
            doc="2-D view [prod(dims[:axis]), prod(dims[axis:])]")

register_op("Identity", infer=lambda ins, attrs: [ins[0].type], ref=lambda xs, attrs: [xs[0]], kind="view",
            inputs=1, doc="the input itself")


# -- Expand / ConstantOfShape ---------------------------------------------------------------------

def _expand_infer(ins, attrs):
    shape = const_ints(ins[1], "Expand shape")
    return [ins[0].type.with_shape(broadcast_shapes(ins[0].shape, shape, what="Expand"))]


def _expand_ref(xs, attrs):
    x = xs[0]
    shape = np.broadcast_shapes(x.shape, tuple(int(d) for d in np.asarray(xs[1]).reshape(-1)))
    return [np.array(np.broadcast_to(x, shape))]


register_op("Expand", infer=_expand_infer, ref=_expand_ref, kind="injective", inputs=2,
            doc="broadcast x against a constant (possibly symbolic) shape input")


def _cos_infer(ins, attrs):
    shape = const_ints(ins[0], "ConstantOfShape shape")
    if any(not isinstance(d, Sym) and d < 0 for d in shape):
        raise ShapeError(f"ConstantOfShape: negative dim in {shape_str(shape)}")
    return [TensorType(DType(attrs["dtype"]), shape)]


def _cos_ref(xs, attrs):
    shape = tuple(int(d) for d in np.asarray(xs[0]).reshape(-1))
    return [np.full(shape, attrs["value"], dtype=DType(attrs["dtype"]).np)]


register_op("ConstantOfShape", infer=_cos_infer, ref=_cos_ref, kind="injective", inputs=1,
            attrs={"value": 0.0, "dtype": "f32"}, doc="a tensor of `shape` filled with scalar `value`")


# -- Range ------------------------------------------------------------------------------------------

def range_length(start, limit, delta):
    """max(ceil((limit - start) / delta), 0); symbolic when start/limit are (delta must be an int)."""
    if isinstance(delta, Sym):
        raise UnsupportedError("Range with a symbolic delta")
    if isinstance(start, Sym) or isinstance(limit, Sym):
        if delta == 0 or delta != int(delta):
            raise UnsupportedError(f"Range over symbolic bounds needs a non-zero integer delta, got {delta}")
        d = int(delta)
        span = limit - start if d > 0 else start - limit
        return (span + abs(d) - 1) // abs(d)  # taken as non-negative: symbols bound real lengths
    if delta == 0:
        raise ShapeError("Range delta is 0")
    if all(isinstance(x, (int, np.integer)) for x in (start, limit, delta)):
        n = -(-(int(limit) - int(start)) // int(delta))
    else:
        n = math.ceil((float(limit) - float(start)) / float(delta))
    return max(int(n), 0)


def _scalar(v, what):
    if v.type.numel != 1:
        raise ShapeError(f"Range {what} %{v.name} must be a scalar, got {v.type}")
    if v.const is None:
        raise UnsupportedError(f"Range {what} %{v.name} is computed at run time; the output length "
                               "would be data dependent")
    x = np.asarray(v.const).reshape(-1)[0]
    return x if isinstance(x, Sym) else (float(x) if v.dtype.is_float else int(x))


def _range_infer(ins, attrs):
    check_dtypes("Range", ins, (DType.f32, DType.i64, DType.i32))
    start, limit, delta = (_scalar(v, w) for v, w in zip(ins, ("start", "limit", "delta")))
    return [TensorType(ins[0].dtype, (range_length(start, limit, delta),))]


def _range_ref(xs, attrs):
    if any(is_obj(x) for x in xs):
        raise ValueError("Range over symbolic bounds is not a constant")
    dt = np.asarray(xs[0]).dtype
    start, limit, delta = (np.asarray(x).reshape(-1)[0] for x in xs)
    if dt.kind == "f":
        start, limit, delta = float(start), float(limit), float(delta)
    else:
        start, limit, delta = int(start), int(limit), int(delta)
    n = range_length(start, limit, delta)
    if dt.kind == "f":
        return [(start + np.arange(n, dtype=np.float64) * delta).astype(dt)]
    return [(start + np.arange(n, dtype=np.int64) * delta).astype(dt)]


register_op("Range", infer=_range_infer, ref=_range_ref, kind="injective", inputs=3,
            doc="start + i * delta for i < max(ceil((limit - start) / delta), 0)")
