"""Elementwise and broadcasting ops, with ONNX semantics.

Unary (kind elementwise, in place): Sqrt Reciprocal Neg Exp Log Erf Tanh Sigmoid Relu Abs Floor Ceil Sin
  Cos Sign Not, Gelu {approximate: "none" | "tanh"}.
Clip(x, min?, max?)          min/max stay optional scalar inputs (they may be computed at run time);
                             y = min(max(x, min), max), so min > max gives max (ONNX).
Cast(x) {to}                 `to` is a dtype string ("f32", "i64", ...); float -> int truncates toward
                             zero, anything -> bool is x != 0, f16 rounds to nearest even.
Binary (kind broadcast, in place): Add Sub Mul Div Pow Mod {fmod} And Or Xor, variadic Max Min
  (numpy/ONNX multidirectional broadcasting). Integer Div truncates toward zero; Mod fmod=0 takes the
  divisor's sign (integers only), fmod=1 the dividend's (C fmod). Pow(x, y) has x's dtype.
Comparisons (kind broadcast, bool out): Equal Less LessOrEqual Greater GreaterOrEqual.
Where(cond, x, y)            kind injective; broadcast of all three.

Float math runs in float64 and rounds once to the IR dtype, so f32 results are correctly rounded
(what a careful kernel should approach); f16 is storage only and computes the same way.
Add/Sub/Mul/Div/Equal/Where/Cast also run on symbolic constants (object arrays of ints and Syms).
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import ShapeError, UnsupportedError
from ..core import TensorType
from ..dims import Sym
from ..dtypes import DType
from ..registry import REQUIRED, broadcast_shapes, register_op
from ._common import (ALL, FLOATS, MANY, NUMERIC, check_dtypes, is_obj, objwise, quiet,
                      same_dtype, tidy, to_obj)

# -- unary --------------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """Exact erf in float64 (numpy has none; math.erf is correctly rounded to double)."""
    return _erf(np.asarray(x, dtype=np.float64)).astype(np.float64)


def _gelu(x, attrs):
    if attrs["approximate"] == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _sigmoid(x, attrs):
    # split by sign so exp never overflows: both branches are exact forms of 1/(1+e^-x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_UNARY = {
    # name: (float64 function, accepted dtypes)
    "Sqrt": (lambda x, a: np.sqrt(x), FLOATS),
    "Reciprocal": (lambda x, a: 1.0 / x, FLOATS),
    "Exp": (lambda x, a: np.exp(x), FLOATS),
    "Log": (lambda x, a: np.log(x), FLOATS),
    "Erf": (lambda x, a: erf(x), FLOATS),
    "Tanh": (lambda x, a: np.tanh(x), FLOATS),
    "Sigmoid": (_sigmoid, FLOATS),
    "Floor": (lambda x, a: np.floor(x), FLOATS),
    "Ceil": (lambda x, a: np.ceil(x), FLOATS),
    "Sin": (lambda x, a: np.sin(x), FLOATS),
    "Cos": (lambda x, a: np.cos(x), FLOATS),
    "Gelu": (_gelu, FLOATS),
    # these are exact in the input dtype, so they run there (ints must not go through float64)
    "Neg": (lambda x, a: np.negative(x), FLOATS + (DType.i64, DType.i32, DType.i8)),
    "Abs": (lambda x, a: np.abs(x), NUMERIC),
    "Relu": (lambda x, a: np.maximum(x, np.zeros((), x.dtype)), FLOATS + (DType.i64, DType.i32, DType.i8)),
    "Sign": (lambda x, a: np.sign(x), NUMERIC),
    "Not": (lambda x, a: np.logical_not(x), (DType.bool,)),
}
_EXACT = {"Neg", "Abs", "Relu", "Sign", "Not", "Floor", "Ceil"}


def _unary_infer(name, allowed):
    def infer(ins, attrs):
        check_dtypes(name, ins[:1], allowed)
        if name == "Gelu" and attrs["approximate"] not in ("none", "tanh"):
            raise UnsupportedError(f"Gelu approximate={attrs['approximate']!r} (supported: none, tanh)")
        return [ins[0].type]
    return infer


def _unary_ref(name, fn):
    @quiet
    def ref(xs, attrs):
        x = np.asarray(xs[0])
        if name in _EXACT or x.dtype.kind not in "f":
            return [np.asarray(fn(x, attrs)).astype(x.dtype, copy=False)]
        return [np.asarray(fn(x.astype(np.float64), attrs)).astype(x.dtype)]
    return ref


for _name, (_fn, _allowed) in _UNARY.items():
    register_op(_name, infer=_unary_infer(_name, _allowed), ref=_unary_ref(_name, _fn), kind="elementwise",
                inputs=1, inplace=True, attrs={"approximate": "none"} if _name == "Gelu" else {},
                doc=f"elementwise {_name} (ONNX semantics)")


# -- Clip, Cast ------------------------------------------------------------------------------------

def _clip_infer(ins, attrs):
    check_dtypes("Clip", ins[:1], NUMERIC)
    for b in ins[1:]:
        if b is not None and (b.dtype != ins[0].dtype or b.type.rank not in (0, 1) or b.type.numel != 1):
            raise ShapeError(f"Clip bound %{b.name} must be a scalar {ins[0].dtype}, got {b.type}")
    return [ins[0].type]


@quiet
def _clip_ref(xs, attrs):
    x = np.asarray(xs[0])
    y = x
    if len(xs) > 1 and xs[1] is not None:
        y = np.maximum(y, np.asarray(xs[1]).reshape(()))
    if len(xs) > 2 and xs[2] is not None:
        y = np.minimum(y, np.asarray(xs[2]).reshape(()))
    return [np.asarray(y, dtype=x.dtype)]


register_op("Clip", infer=_clip_infer, ref=_clip_ref, kind="elementwise", inputs=(1, 3), inplace=True,
            doc="y = min(max(x, min), max); bounds are optional scalar inputs")


def _cast_infer(ins, attrs):
    try:
        to = DType(attrs["to"])
    except ValueError:
        raise ShapeError(f"Cast to unknown dtype {attrs['to']!r}") from None
    return [TensorType(to, ins[0].shape)]


@quiet
def _cast_ref(xs, attrs):
    x, to = xs[0], DType(attrs["to"])
    if is_obj(x):  # a symbolic constant: stays symbolic only as i64
        x = tidy(x)
        if is_obj(x):
            if to != DType.i64:
                raise ValueError(f"cannot cast symbolic values to {to}")
            return [x]
    x = np.asarray(x)
    if to == DType.bool:
        return [x != 0]
    if to.is_int and x.dtype.kind == "f":
        x = np.trunc(x.astype(np.float64))  # toward zero, as C casts do
    return [x.astype(to.np)]


register_op("Cast", infer=_cast_infer, ref=_cast_ref, kind="elementwise", inputs=1, attrs={"to": REQUIRED},
            doc="dtype conversion; `to` is a dtype string like 'f32'")


# -- binary -----------------------------------------------------------------------------------------

def _trunc_div_scalar(a, b):
    if isinstance(a, Sym) or isinstance(b, Sym):
        return a // b  # symbolic dims are non-negative: floor = trunc
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _int_div(a, b):
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return np.where(fix, q + 1, q).astype(np.result_type(a, b))


def _div(a, b, attrs):
    if a.dtype.kind in "iu":
        return _int_div(a, b)
    return a / b


def _pow(a, b, attrs):
    # ONNX Pow: output has the base's dtype; compute in float64 (exact enough for ints < 2^53)
    r = np.power(a.astype(np.float64), b.astype(np.float64))
    return np.trunc(r) if a.dtype.kind in "iu" else r


def _mod(a, b, attrs):
    return np.fmod(a, b) if attrs["fmod"] else np.mod(a, b)


_BINARY = {
    # name: (numpy function, accepted dtypes, symbolic scalar function or None)
    "Add": (lambda a, b, t: np.add(a, b), NUMERIC, lambda a, b: a + b),
    "Sub": (lambda a, b, t: np.subtract(a, b), NUMERIC, lambda a, b: a - b),
    "Mul": (lambda a, b, t: np.multiply(a, b), NUMERIC, lambda a, b: a * b),
    "Div": (_div, NUMERIC, _trunc_div_scalar),
    "Pow": (_pow, FLOATS + (DType.i64, DType.i32), None),
    "Mod": (_mod, NUMERIC, None),
    "And": (lambda a, b, t: np.logical_and(a, b), (DType.bool,), None),
    "Or": (lambda a, b, t: np.logical_or(a, b), (DType.bool,), None),
    "Xor": (lambda a, b, t: np.logical_xor(a, b), (DType.bool,), None),
}


def _binary_infer(name, allowed):
    def infer(ins, attrs):
        check_dtypes(name, ins, allowed)
        if name != "Pow":  # Pow's exponent may have another numeric dtype (ONNX T1)
            same_dtype(name, ins)
        if name == "Mod" and ins[0].dtype in FLOATS and not attrs["fmod"]:
            raise UnsupportedError(f"Mod on {ins[0].dtype} needs fmod=1 (ONNX)")
        shape = broadcast_shapes(*[v.shape for v in ins], what=name)
        return [TensorType(ins[0].dtype, shape)]
    return infer


def _binary_ref(name, fn, symfn):
    @quiet
    def ref(xs, attrs):
        a, b = xs
        if is_obj(a) or is_obj(b):
            if symfn is None:
                raise ValueError(f"{name} does not compute on symbolic values")
            return [objwise(symfn, a, b)]
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f" and name not in ("Mod",):
            r = fn(a.astype(np.float64), b.astype(np.float64) if b.dtype.kind == "f" else b, attrs)
        else:
            r = fn(a, b, attrs)
        return [np.asarray(r).astype(a.dtype)]
    return ref


for _name, (_fn, _allowed, _sym) in _BINARY.items():
    register_op(_name, infer=_binary_infer(_name, _allowed), ref=_binary_ref(_name, _fn, _sym),
                kind="broadcast", inputs=2, inplace=True, attrs={"fmod": 0} if _name == "Mod" else {},
                doc=f"broadcasting {_name} (ONNX semantics)")


def _variadic_infer(name):
    def infer(ins, attrs):
        check_dtypes(name, ins, NUMERIC)
        same_dtype(name, ins)
        return [TensorType(ins[0].dtype, broadcast_shapes(*[v.shape for v in ins], what=name))]
    return infer


def _variadic_ref(fn):
    def ref(xs, attrs):
        out = np.asarray(xs[0])
        for x in xs[1:]:
            out = fn(out, x)  # NaN propagates, as in numpy and ONNX
        return [np.asarray(out, dtype=np.asarray(xs[0]).dtype)]
    return ref


register_op("Max", infer=_variadic_infer("Max"), ref=_variadic_ref(np.maximum), kind="broadcast",
            inputs=(1, MANY), inplace=True, doc="elementwise max of all inputs, broadcast")
register_op("Min", infer=_variadic_infer("Min"), ref=_variadic_ref(np.minimum), kind="broadcast",
            inputs=(1, MANY), inplace=True, doc="elementwise min of all inputs, broadcast")


# -- comparisons --------------------------------------------------------------------------------

def _sym_equal(a, b):
    """Equality on dims: decided only where it is provable (symbols are unknown non-negative ints)."""
    if not isinstance(a, Sym) and not isinstance(b, Sym):
        return a == b
    if isinstance(a, Sym) and isinstance(b, Sym) and a == b:
        return True
    other = b if isinstance(a, Sym) else a
    sym = a if isinstance(a, Sym) else b
    if not isinstance(other, Sym) and other < 0 and all(c > 0 for _, c in sym.terms):
        return False  # a polynomial with positive coefficients is never negative
    raise ValueError(f"cannot decide {a} == {b} at compile time")


_COMPARE = {"Equal": np.equal, "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
            "GreaterOrEqual": np.greater_equal}


def _compare_infer(name):
    def infer(ins, attrs):
        check_dtypes(name, ins, ALL)
        same_dtype(name, ins)
        return [TensorType(DType.bool, broadcast_shapes(*[v.shape for v in ins], what=name))]
    return infer


def _compare_ref(name, fn):
    def ref(xs, attrs):
        a, b = xs
        if is_obj(a) or is_obj(b):
            if name != "Equal":
                raise ValueError(f"{name} does not compute on symbolic values")
            return [objwise(_sym_equal, a, b).astype(bool)]
        return [np.asarray(fn(a, b), dtype=bool)]
    return ref


for _name, _fn in _COMPARE.items():
    register_op(_name, infer=_compare_infer(_name), ref=_compare_ref(_name, _fn), kind="broadcast", inputs=2,
                doc=f"broadcasting comparison {_name}, bool output")


# -- Where --------------------------------------------------------------------------------------

def _where_infer(ins, attrs):
    c, x, y = ins
    if c.dtype != DType.bool:
        raise ShapeError(f"Where condition %{c.name} must be bool, got {c.type}")
    dt = same_dtype("Where", [x, y])
    return [TensorType(dt, broadcast_shapes(c.shape, x.shape, y.shape, what="Where"))]


def _where_ref(xs, attrs):
    c, x, y = xs
    if is_obj(x) or is_obj(y):
        out = np.where(np.asarray(c, dtype=bool), to_obj(x), to_obj(y))
        return [tidy(out)]
    return [np.where(c, x, y).astype(np.asarray(x).dtype)]


register_op("Where", infer=_where_infer, ref=_where_ref, kind="injective", inputs=3,
            doc="select x where cond else y, broadcast")
