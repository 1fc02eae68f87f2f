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
from ..dims import Sym, _split_minmax, dim_le, dim_max, dim_min, substitute, symbols_of
from ..dtypes import DType
from ..registry import REQUIRED, norm_axis, register_op
from ._common import MANY, const_ints, same_dtype, shape_str, tidy, to_obj

BIG = 2 ** 31 - 1  # ends at or past this (INT32_MAX, INT64_MAX) mean "to the end"
# onnxruntime's rule, which we follow: an end of exactly INT32_MAX or INT64_MAX means "to the end in the
# step's direction", so with a negative step it is -1 (the spec's clamping would make the slice empty).
TO_THE_END = (2 ** 31 - 1, 2 ** 63 - 1)


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

def _positive(d):
    """d with every symbol shifted by one: proving x <= y of it proves it for symbols >= 1."""
    return substitute(d, {n: Sym.symbol(n) + 1 for n in symbols_of(d)})


def _order(a, b, used: list) -> int:
    """-1 when a <= b, 1 when b <= a, provably; else, when `used` starts with "positive", the same for
    symbols of at least 1 (appending to `used`: the program checks that at run time); else 0."""
    if dim_le(a, b):
        return -1
    if dim_le(b, a):
        return 1
    pa, pb = _positive(a), _positive(b)
    if used[:1] == ["positive"] and (dim_le(pa, pb) or dim_le(pb, pa)):
        used.append(True)
        return -1 if dim_le(pa, pb) else 1
    return 0


def _min(a, b, used: list):
    o = _order(a, b, used)
    return a if o < 0 else b if o > 0 else dim_min(a, b)


def _max(a, b, used: list):
    o = _order(a, b, used)
    return b if o < 0 else a if o > 0 else dim_max(a, b)


def _clamp(i, d, lo, hi_off, used: list):
    """ONNX clamping of one start/end index against dim d into [lo, d + hi_off] (min of max, as
    onnxruntime: an empty dim gives d + hi_off). Against a symbolic dim, a constant index gives min/max
    atoms where the order depends on d, except that symbolic dims are taken to be at least 1
    (`x[:, :1]` has 1 row, not min(n,1)); a symbolic index (computed from shapes) is taken to lie in
    [0, dim] unless provable otherwise. Every such assumption is appended to `used`, and the compiled
    program checks it at run time (slice_assumed)."""
    if not isinstance(i, Sym) and not isinstance(d, Sym):
        i = i + d if i < 0 else i
        return min(max(i, lo), d + hi_off)
    if isinstance(i, Sym):
        return i
    if i >= BIG:
        return d + hi_off
    if i <= -BIG:
        return _min(lo, d + hi_off, used)
    return _min(_max(d + i if i < 0 else i, lo, used), d + hi_off, used)


def _plan(shape, starts, ends, axes, steps, assumed: list | None = None):
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
        # Exact where min/max atoms are not needed; where they are, the form for dims of at least 1
        # when that has none (x[:, -1:] has 1 row, not min(n,1)); else exact with the atoms.
        used, (s1, e1, n) = [], _axis(s, e, k, d, [])
        if _has_minmax(n):
            used = ["positive"]
            s2, e2, n2 = _axis(s, e, k, d, used)
            if _has_minmax(n2):
                used = []
            else:
                s1, e1, n = s2, e2, n2
        plan.append((a, s1, e1, k, n))
        if (len(used) > 1 or _index_assumed(s, d) or _index_assumed(e, d)) and assumed is not None:
            assumed.append(a)
    return plan


def _axis(s, e, k, d, used: list):
    if k > 0:
        s, e = _clamp(s, d, 0, 0, used), _clamp(e, d, 0, 0, used)
    else:
        s, e = _clamp(s, d, 0, -1, used), (-1 if _to_the_end(e) else _clamp(e, d, -1, -1, used))
    return s, e, _slice_len(s, e, k, used)


def _to_the_end(i) -> bool:
    return not isinstance(i, Sym) and int(i) in TO_THE_END


def _index_assumed(i, d) -> bool:
    return isinstance(i, Sym) and not (dim_le(0, i) and dim_le(i, d))


def _has_minmax(d) -> bool:
    return isinstance(d, Sym) and ("min(" in str(d) or "max(" in str(d))


def slice_plan(shape, starts, ends, axes, steps) -> list[tuple[int, object, object, int]]:
    """[(axis, start, end, step)] normalized and clamped per ONNX (symbolic where dims are)."""
    return [p[:4] for p in _plan(shape, starts, ends, axes, steps)]


def slice_assumed(shape, starts, ends, axes, steps) -> list[int]:
    """The axes whose inferred length rests on an assumption (a symbolic dim at least 1, a symbolic index
    within the dim) rather than a proof: the program checks each at run time rather than read past the
    data or return a wrong shape."""
    out: list[int] = []
    _plan(shape, starts, ends, axes, steps, out)
    return out


def _span(hi, lo, used: list):
    """hi - lo, with a min/max atom on either side distributed (d - max(d-3,0) = min(d,3))."""
    for x, sign in ((hi, 1), (lo, -1)):
        split = _split_minmax(x)
        if split is not None:
            atom, rest = split
            if sign > 0:
                u, v = _span(atom.a + rest, lo, used), _span(atom.b + rest, lo, used)
            else:
                u, v = _span(hi, atom.a + rest, used), _span(hi, atom.b + rest, used)
            # subtracting a max gives a min (and a min a max); adding keeps the kind
            return _min(u, v, used) if (atom.op == "min") == (sign > 0) else _max(u, v, used)
    return hi - lo


def _slice_len(s, e, k, used: list):
    span = _span(e, s, used) if k > 0 else _span(s, e, used)
    if isinstance(span, Sym):
        span = _max(span, 0, used)
        return span if abs(k) == 1 else (span + abs(k) - 1) // abs(k)
    return max(-(-span // abs(k)), 0)


def _slice_inputs(ins):
    return [const_ints(ins[i], f"Slice {w}") if len(ins) > i else []
            for i, w in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]


def _slice_infer(ins, attrs):
    out = list(ins[0].shape)
    for a, _, _, _, n in _plan(ins[0].shape, *_slice_inputs(ins)):
        out[a] = n
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
