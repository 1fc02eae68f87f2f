"""Helpers shared by the op definitions (this module registers no ops).

Shape-computing refs must also run on *symbolic constants*: object arrays of Python ints and `Sym`s
(a folded `Shape` of a [batch, seq, 64] tensor is such an array). `objwise` applies a scalar function
element by element there; `tidy` turns an object array without symbols back into int64.
"""
from __future__ import annotations

import functools

import numpy as np

from ...errors import ShapeError, UnsupportedError
from ..dims import Sym
from ..dtypes import DType
from ..registry import as_ints

FLOATS = (DType.f32, DType.f16, DType.f64)
INTS = (DType.i64, DType.i32, DType.i8, DType.u8)
NUMERIC = FLOATS + INTS
ALL = NUMERIC + (DType.bool,)
MANY = 1 << 20  # "unbounded" number of inputs for variadic ops


def check_dtypes(op: str, vals, allowed) -> None:
    """ShapeError if an input's dtype is not one `op` accepts."""
    for v in vals:
        if v is not None and v.dtype not in allowed:
            raise UnsupportedError(f"{op} does not support {v.dtype} input %{v.name} (supported: "
                             + ", ".join(str(d) for d in allowed) + ")")


def same_dtype(op: str, vals) -> DType:
    vals = [v for v in vals if v is not None]
    for v in vals[1:]:
        if v.dtype != vals[0].dtype:
            raise ShapeError(f"{op} inputs must share a dtype, got {vals[0].type} and {v.type}")
    return vals[0].dtype


def const_ints(v, what: str) -> list:
    """A shape-determining input's constant value as ints/Syms; UnsupportedError if it is computed
    at run time (its value would decide an output shape, which tcc must know at compile time)."""
    if v is None:
        return []
    if v.const is None:
        raise UnsupportedError(f"{what} %{v.name} is computed at run time; tcc needs it constant "
                               "(possibly symbolic) to know the output shape")
    return as_ints(v.const)


def shape_str(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def is_obj(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype == object


def tidy(a: np.ndarray) -> np.ndarray:
    """An object array whose elements are all plain ints becomes int64 again."""
    if is_obj(a) and not any(isinstance(x, Sym) for x in a.reshape(-1)):
        return np.array([int(x) for x in a.reshape(-1)], dtype=np.int64).reshape(a.shape)
    return a


def to_obj(a) -> np.ndarray:
    """An int array (or object array) as an object array of Python ints / Syms."""
    a = np.asarray(a)
    out = np.empty(a.shape, dtype=object)
    out.reshape(-1)[:] = [x if isinstance(x, Sym) else int(x) for x in a.reshape(-1)]
    return out


def objwise(fn, *arrays) -> np.ndarray:
    """fn applied elementwise (with broadcasting) over object arrays of ints/Syms."""
    b = np.broadcast_arrays(*[to_obj(a) for a in arrays])
    out = np.empty(b[0].shape, dtype=object)
    out.reshape(-1)[:] = [fn(*xs) for xs in zip(*[x.reshape(-1) for x in b])] if out.size else []
    return tidy(out)


def quiet(fn):
    """Run a ref with numpy floating-point warnings off (inf/nan results are the ONNX semantics)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapped


def div_exact(a, b):
    """a / b for dims known to divide exactly (a Reshape's -1): ints, equal Syms, or a polynomial
    divided by one monomial (batch*seq*768 / (batch*12) = seq*64). None when not provable."""
    if not isinstance(a, Sym) and not isinstance(b, Sym):
        return a // b if b and a % b == 0 else None
    if isinstance(b, Sym) and a == b:
        return 1
    if not isinstance(b, Sym):
        return a // b if all(c % b == 0 for _, c in a.terms) else None
    if len(b.terms) != 1 or not isinstance(a, Sym):
        return None
    (bm, bc), = b.terms
    out: dict = {}
    for m, c in a.terms:
        rest = list(m)
        for atom in bm:
            if atom not in rest:
                return None
            rest.remove(atom)
        if c % bc:
            return None
        out[tuple(rest)] = out.get(tuple(rest), 0) + c // bc
    return Sym(out)._simplify()
