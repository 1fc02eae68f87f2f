"""Data movement ops (kind injective).

Transpose(x) {perm}                 perm explicit (the frontend fills ONNX's default, reversed axes).
Concat(x...) {axis}                 runs on symbolic constants too (shape vectors).
Slice(x, starts, ends, axes?, steps?)  index inputs stay inputs (they are often computed from Shape) but
                                    must be constant, possibly symbolic. ONNX clamping; against a
                                    symbolic dim d: end >= 2^31-1 means d, a negative start/end means
                                    d + it, and a non-negative constant is taken to lie within d.
Split(x) {axis=0, split=None, num_outputs=0}   `split` lists the sizes (the frontend turns ONNX's split
                                    input or attribute into it; at most one entry symbolic); without it,
                                    num_outputs chunks of ceil(dim / n), the last smaller (ONNX 18's rule,
                                    equal parts when n divides dim); one output per part.
Gather(data, indices) {axis=0}      negative indices count from the end; runs on symbolic constants.
Trilu(x, k?) {upper=1}              k stays an optional scalar input (may be computed at run time).
Tile(x, repeats)                    repeats input, constant.
"""
from __future__ import annotations

import numpy as np

from ...errors import ShapeError, UnsupportedError
from ..core import TensorType
from ..dims import Sym
from ..dtypes import DType
from ..registry import REQUIRED, norm_axis, register_op
from ._common import MANY, const_ints, same_dtype, shape_str, tidy, to_obj

BIG = 2 ** 31 - 1  # ends at or past this (INT32_MAX, INT64_MAX) mean "to the end"


# -- Transpose ------------------------------------------------------------------------------------

def _transpose_infer(ins, attrs):
    shape, perm = ins[0].shape, list(attrs["perm"])
    if sorted(perm) != list(range(len(shape))):
        raise ShapeError(f"Transpose perm {perm} is not a permutation of the axes of {shape_str(shape)}")
    return [ins[0].type.with_shape([shape[p] for p in perm])]


register_op("Transpose", infer=_transpose_infer, ref=lambda xs, a: [np.transpose(xs[0], a["perm"]).copy()],
            kind="injective", inputs=1, attrs={"perm": REQUIRED}, doc="permute axes by perm")


# -- Concat -----------------------------------------------------------------------------------------

def _concat_infer(ins, attrs):
    dt = same_dtype("Concat", ins)
    rank = ins[0].type.rank
    axis = norm_axis(attrs["axis"], rank, "Concat axis")
    out = list(ins[0].shape)
    out[axis] = 0
    for v in ins:
        if v.type.rank != rank:
            raise ShapeError(f"Concat inputs differ in rank: {ins[0].type} and {v.type}")
        for i, d in enumerate(v.shape):
            if i == axis:
                out[i] = out[i] + d
            elif d != out[i]:
                if not isinstance(d, Sym) and not isinstance(out[i], Sym):
                    raise ShapeError(f"Concat on axis {axis}: {ins[0].type} and {v.type} differ on axis {i}")
                if isinstance(out[i], Sym):
                    out[i] = d  # a symbol concatenated with a concrete dim is taken to equal it
    return [TensorType(dt, out)]


def _concat_ref(xs, attrs):
    if any(x.dtype == object for x in xs):
        return [tidy(np.concatenate([to_obj(x) for x in xs], axis=attrs["axis"]))]
    return [np.concatenate(xs, axis=attrs["axis"])]


register_op("Concat", infer=_concat_infer, ref=_concat_ref, kind="injective", inputs=(1, MANY),
            attrs={"axis": REQUIRED}, doc="concatenate along axis")


# -- Slice ------------------------------------------------------------------------------------------

def _clamp(i, d, lo, hi_off):
    """ONNX clamping of one start/end index against dim d into [lo, d + hi_off]."""
    if isinstance(i, Sym):
        return i
    if not isinstance(d, Sym):
        i = i + d if i < 0 else i
        return min(max(i, lo), d + hi_off)
    if i >= BIG:
        return d + hi_off
    if i <= -BIG:
        return lo
    return d + i if i < 0 else i


def slice_plan(shape, starts, ends, axes, steps) -> list[tuple[int, object, object, int]]:
    """[(axis, start, end, step)] normalized and clamped per ONNX (symbolic where dims are)."""
    rank = len(shape)
    axes = list(axes) if axes else list(range(len(starts)))
    steps = list(steps) if steps else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError(f"Slice starts/ends/axes/steps differ in length: {starts}, {ends}, {axes}, {steps}")
    plan, seen = [], set()
    for s, e, a, k in zip(starts, ends, axes, steps):
        a = norm_axis(a, rank, "Slice axis")
        if a in seen or isinstance(k, Sym) or k == 0:
            raise ShapeError(f"Slice: repeated axis {a} or bad step {k}")
        seen.add(a)
        d = shape[a]
        if k > 0:
            plan.append((a, _clamp(s, d, 0, 0), _clamp(e, d, 0, 0), k))
        else:
            plan.append((a, _clamp(s, d, 0, -1), _clamp(e, d, -1, -1), k))
    return plan


def _slice_len(s, e, k):
    span = e - s if k > 0 else s - e
    if isinstance(span, Sym):
        return (span + abs(k) - 1) // abs(k)
    return max(-(-span // abs(k)), 0)


def _slice_inputs(ins):
    return [const_ints(ins[i], f"Slice {w}") if len(ins) > i else []
            for i, w in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]


def _slice_infer(ins, attrs):
    out = list(ins[0].shape)
    for a, s, e, k in slice_plan(ins[0].shape, *_slice_inputs(ins)):
        out[a] = _slice_len(s, e, k)
    return [ins[0].type.with_shape(out)]


def _slice_ref(xs, attrs):
    x = xs[0]
    lists = [[] if len(xs) <= i or xs[i] is None else [int(v) for v in np.asarray(xs[i]).reshape(-1)]
             for i in range(1, 5)]
    index = [slice(None)] * x.ndim
    for a, s, e, k in slice_plan(x.shape, *lists):
        index[a] = slice(s, None if e < 0 else e, k)
    return [np.array(x[tuple(index)])]


register_op("Slice", infer=_slice_infer, ref=_slice_ref, kind="injective", inputs=(3, 5),
            doc="strided slice; starts/ends/axes/steps are constant (possibly symbolic) inputs")


# -- Split ------------------------------------------------------------------------------------------

def split_parts(d, attrs) -> list:
    """The part sizes: `split` when given, else `num_outputs` chunks of ceil(d / n), the last smaller
    (ONNX opset 18; equal parts when n divides d, as opset 13 requires)."""
    if attrs["split"] is not None:
        return list(attrs["split"])
    k = int(attrs["num_outputs"])
    if k < 1:
        raise ShapeError("Split needs `split` or num_outputs >= 1")
    chunk = (d + k - 1) // k if isinstance(d, Sym) else -(-d // k)
    return [chunk] * (k - 1) + [d - chunk * (k - 1)]


def _split_infer(ins, attrs):
    shape = ins[0].shape
    axis = norm_axis(attrs["axis"], len(shape), "Split axis")
    parts = split_parts(shape[axis], attrs)
    if sum(isinstance(p, Sym) for p in parts) > 1 and attrs["split"] is not None:
        raise UnsupportedError(f"Split sizes {parts}: at most one may be symbolic (it is solved at run time "
                               "from the input dim)")
    total = sum(parts[1:], parts[0]) if parts else 0
    if not isinstance(total, Sym) and not isinstance(shape[axis], Sym) and total != shape[axis]:
        raise ShapeError(f"Split {parts} does not add up to dim {shape[axis]} of {shape_str(shape)}")
    return [ins[0].type.with_shape(shape[:axis] + (p,) + shape[axis + 1:]) for p in parts]


def _split_ref(xs, attrs):
    x = xs[0]
    axis = attrs["axis"] % x.ndim
    parts = split_parts(x.shape[axis], attrs)
    sym = [i for i, p in enumerate(parts) if isinstance(p, Sym)]
    if sym:  # the one symbolic size is what the others leave of the (concrete) dim
        parts[sym[0]] = x.shape[axis] - sum(int(p) for i, p in enumerate(parts) if i != sym[0])
    return [np.array(p) for p in np.split(x, np.cumsum(parts)[:-1], axis=axis)]


register_op("Split", infer=_split_infer, ref=_split_ref, kind="injective", inputs=1, outputs=None,
            attrs={"axis": 0, "split": None, "num_outputs": 0},
            doc="split along axis into `split` sizes, or num_outputs chunks of ceil(dim / num_outputs)")


# -- Gather -----------------------------------------------------------------------------------------

def _gather_infer(ins, attrs):
    data, idx = ins
    if idx.dtype not in (DType.i64, DType.i32):
        raise ShapeError(f"Gather indices %{idx.name} must be i32/i64, got {idx.type}")
    axis = norm_axis(attrs["axis"], data.type.rank, "Gather axis")
    return [data.type.with_shape(data.shape[:axis] + idx.shape + data.shape[axis + 1:])]


def _gather_ref(xs, attrs):
    data, idx = xs
    axis = attrs["axis"] % max(np.ndim(data), 1)
    idx = np.asarray(idx).astype(np.int64)
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"Gather index out of range [-{n}, {n})")
    return [np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)]


register_op("Gather", infer=_gather_infer, ref=_gather_ref, kind="injective", inputs=2, attrs={"axis": 0},
            doc="take along axis; negative indices count from the end")


# -- Trilu / Tile -----------------------------------------------------------------------------------

def _trilu_infer(ins, attrs):
    if ins[0].type.rank < 2:
        raise ShapeError(f"Trilu needs rank >= 2, got {ins[0].type}")
    if len(ins) > 1 and ins[1] is not None and (ins[1].dtype != DType.i64 or ins[1].type.numel != 1):
        raise ShapeError(f"Trilu k must be an i64 scalar, got {ins[1].type}")
    return [ins[0].type]


def _trilu_ref(xs, attrs):
    k = int(np.asarray(xs[1]).reshape(-1)[0]) if len(xs) > 1 and xs[1] is not None else 0
    x = xs[0]
    return [np.triu(x, k) if attrs["upper"] else np.tril(x, k)]


register_op("Trilu", infer=_trilu_infer, ref=_trilu_ref, kind="injective", inputs=(1, 2), attrs={"upper": 1},
            doc="keep the upper (j - i >= k) or lower (j - i <= k) triangle of the last two axes")


def _tile_infer(ins, attrs):
    reps = const_ints(ins[1], "Tile repeats")
    if len(reps) != ins[0].type.rank:
        raise ShapeError(f"Tile repeats {reps} do not match rank of {ins[0].type}")
    return [ins[0].type.with_shape([d * r for d, r in zip(ins[0].shape, reps)])]


register_op("Tile", infer=_tile_infer,
            ref=lambda xs, a: [np.tile(xs[0], [int(r) for r in np.asarray(xs[1]).reshape(-1)])],
            kind="injective", inputs=2, doc="repeat x along each axis")
