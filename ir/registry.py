"""The op registry: per op, its arity, attributes, kind, shape/type inference and numpy reference.

The numpy reference is the single source of truth for an op's meaning: constant folding calls it, every
pass test uses it as the oracle (through the interpreter), and `tcc ir --run` executes any IR dump with it.

Kinds (for fusion and memory planning, as in TVM): `elementwise` (same shape in and out),
`broadcast`, `injective` (data movement), `reduction`, `view` (output aliases input 0's buffer:
Reshape/Squeeze/Unsqueeze/Identity/Flatten), `shape` (computes on shapes only), `opaque`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import IRError, ShapeError
from .dims import Dim, MinMax, Sym, dim_le, evaluate, substitute, symbols_of, upper_bound
from .dtypes import DType

REQUIRED = object()  # marks an attribute without a default


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Callable[[list, dict], list]  # (inputs: list[Value|None], attrs) -> list[TensorType]
    ref: Callable[[list, dict], list]  # (inputs: list[np.ndarray|None], attrs) -> list[np.ndarray]
    kind: str = "opaque"
    inputs: tuple[int, int] = (1, 1)  # (min, max) number of inputs
    outputs: int | None = 1  # None: variable, given by the node
    attrs: dict[str, Any] = field(default_factory=dict)  # name -> default (or REQUIRED)
    inplace: bool = False  # output 0 may share input 0's buffer when input 0 dies here
    doc: str = ""
    effects: bool = False  # updates a state input in place: never folded, removed or reordered past a use


OPS: dict[str, OpDef] = {}
KINDS = ("elementwise", "broadcast", "injective", "reduction", "view", "shape", "opaque")


def register_op(name: str, *, infer, ref, kind: str = "opaque", inputs: tuple[int, int] | int = 1,
                outputs: int | None = 1, attrs: dict | None = None, inplace: bool = False,
                doc: str = "", effects: bool = False) -> OpDef:
    if name in OPS:
        raise ValueError(f"op {name} registered twice")
    if kind not in KINDS:
        raise ValueError(f"op {name}: unknown kind {kind!r}")
    if isinstance(inputs, int):
        inputs = (inputs, inputs)
    op = OpDef(name, infer, ref, kind, inputs, outputs, dict(attrs or {}), inplace, doc, effects)
    OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return OPS[name]
    except KeyError:
        raise IRError(f"unknown op {name}") from None


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops  # noqa: F401  (registers every op)


def full_attrs(op: OpDef, attrs: dict) -> dict:
    """attrs with defaults filled in."""
    out = {k: v for k, v in op.attrs.items() if v is not REQUIRED}
    out.update(attrs)
    return out


def infer_types(node, num_outputs: int | None = None) -> list:
    op = get_op(node.op)
    _check_arity(op, node)
    try:
        types = op.infer(node.inputs, full_attrs(op, node.attrs))
    except (ShapeError, IRError) as e:
        raise type(e)(f"{node.op} node {node.name!r}: {e}") from None
    if num_outputs is not None and len(types) != num_outputs:
        raise IRError(f"{node.op} node {node.name!r}: inferred {len(types)} outputs, expected {num_outputs}")
    return types


def _check_arity(op: OpDef, node) -> None:
    lo, hi = op.inputs
    n = len(node.inputs)
    if not lo <= n <= hi:
        raise IRError(f"{node.op} node {node.name!r} takes {lo}..{hi} inputs, got {n}")
    for i in range(lo):
        if node.inputs[i] is None:
            raise IRError(f"{node.op} node {node.name!r}: required input {i} is missing")
    for k, v in op.attrs.items():
        if v is REQUIRED and k not in node.attrs:
            raise IRError(f"{node.op} node {node.name!r}: required attribute {k!r} is missing")
    unknown = set(node.attrs) - set(op.attrs)
    if unknown:
        raise IRError(f"{node.op} node {node.name!r}: unknown attributes {sorted(unknown)}")


def check_node(node) -> None:
    """Verify one node: arity, attributes, and that its output types equal the re-inferred ones."""
    op = get_op(node.op)
    if op.outputs is not None and len(node.outputs) != op.outputs:
        raise IRError(f"{node.op} node {node.name!r} must have {op.outputs} outputs, has {len(node.outputs)}")
    types = infer_types(node)
    if len(types) != len(node.outputs):
        raise IRError(f"{node.op} node {node.name!r}: {len(node.outputs)} outputs but {len(types)} inferred")
    for o, t in zip(node.outputs, types):
        if o.type != t:
            raise IRError(f"{node.op} node {node.name!r}: output %{o.name} has type {o.type}, inferred {t}")


def run_ref(node, arrays: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    op = get_op(node.op)
    return op.ref(list(arrays), full_attrs(op, node.attrs))


# -- helpers shared by op definitions ---------------------------------------------------------

@dataclass(frozen=True)
class Assumption:
    """A condition on shape symbols that a node's inferred type rests on (`past+seq <= 128`: broadcasting
    `past+seq` with `min(past+seq,128)` is valid only then). Programs check it on every run unless the
    compiled symbol bounds prove it (see node_assumptions)."""

    lhs: Dim
    op: str  # "<=" or ">="
    rhs: Dim

    def __str__(self) -> str:
        return f"{self.lhs} {self.op} {self.rhs}"

    def holds(self, env: dict) -> bool:
        a, b = evaluate(self.lhs, env), evaluate(self.rhs, env)
        return a <= b if self.op == "<=" else a >= b

    def proven(self, bounds: dict | None = None, ceilings: dict | None = None) -> bool:
        """True when it holds for every binding (within `bounds`, symbol -> maximum, where given, and
        `ceilings`, symbol -> a dim it never exceeds: `past` <= capacity - seq)."""
        lo, hi = (self.lhs, self.rhs) if self.op == "<=" else (self.rhs, self.lhs)
        if dim_le(lo, hi):
            return True
        for s, top in (ceilings or {}).items():
            if _nondecreasing(lo - hi, s):  # then lo - hi is largest where s is
                lo, hi = substitute(lo, {s: top}), substitute(hi, {s: top})
        if dim_le(lo, hi):
            return True
        if bounds is None or not symbols_of(lo - hi) <= set(bounds):
            return False
        diff = lo - hi
        const = diff if not isinstance(diff, Sym) else dict(diff.terms).get((), 0)
        # upper_bound counts negative terms as 0 (still a bound); the constant term is exact
        return upper_bound(diff - const, bounds) + const <= 0


def _nondecreasing(d: Dim, s: str) -> bool:
    """d never decreases as symbol s grows: s occurs only in terms of positive coefficient, through atoms
    that do not decrease in it (min/max/floor division of such)."""
    if not isinstance(d, Sym):
        return True
    for mono, c in d.terms:
        hit = [a for a in mono if s in (symbols_of(Sym({(a,): 1})))]
        if hit and (c < 0 or not all(_atom_nondecreasing(a, s) for a in hit)):
            return False
    return True


def _atom_nondecreasing(a, s: str) -> bool:
    if isinstance(a, str):
        return True
    if isinstance(a, MinMax):
        return _nondecreasing(a.a, s) and _nondecreasing(a.b, s)
    return _nondecreasing(a.num, s)


_local = threading.local()  # .collecting: this thread's stack of assumption collectors (node_assumptions)


def _collectors() -> list[list]:
    if not hasattr(_local, "collecting"):
        _local.collecting = []
    return _local.collecting


def _equal_when(d: Dim, x: Dim):
    """(plain dim, Assumption) when d and x are equal exactly when a condition holds: `n` vs `min(n,c)`
    (n <= c), `n` vs `max(n,c)` (n >= c); else None."""
    for plain, other in ((d, x), (x, d)):
        if not isinstance(other, Sym) or len(other.terms) != 1:
            continue
        (mono, coeff), = other.terms
        if coeff != 1 or len(mono) != 1 or not isinstance(mono[0], MinMax):
            continue
        atom = mono[0]
        for mine, theirs in ((atom.a, atom.b), (atom.b, atom.a)):
            if mine == plain:
                return plain, Assumption(plain, "<=" if atom.op == "min" else ">=", theirs)
    return None


def broadcast_shapes(*shapes: Sequence[Dim], what: str = "") -> tuple[Dim, ...]:
    """numpy/ONNX multidirectional broadcasting over possibly symbolic dims. Two dims equal exactly when a
    condition on the symbols holds (`n` and `min(n,128)`) broadcast to the plain one, and the condition
    is recorded as an assumption (node_assumptions) that compiled programs and the interpreter check."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        d: Dim = 1
        for x in dims:
            if x == 1 or x == d:
                continue
            cond = _equal_when(d, x) if d != 1 else None
            if d == 1:
                d = x
            elif cond is not None:
                d = cond[0]
                if _collectors() and not cond[1].proven():
                    _collectors()[-1].append(cond[1])
            elif isinstance(x, Sym) and not isinstance(d, Sym):
                continue  # a symbol broadcast against a concrete dim is taken to equal it
            elif isinstance(d, Sym) and not isinstance(x, Sym):
                d = x
            else:
                raise ShapeError(f"cannot broadcast {what} shapes "
                                 + " and ".join("[" + ",".join(map(str, s)) + "]" for s in shapes))
        out.append(d)
    return tuple(out)


def node_assumptions(node, bounds: dict | None = None, ceilings: dict | None = None) -> list[Assumption]:
    """The assumptions a node's output types rest on, recomputed from its input types (so passes that
    rebuild nodes keep them), less those the symbol bounds (symbol -> maximum) prove."""
    _collectors().append([])
    try:
        infer_types(node)
    finally:
        found = _collectors().pop()
    out: list[Assumption] = []
    for a in found:
        if a not in out and not a.proven(bounds, ceilings):
            out.append(a)
    return out


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{what} {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def const_value(v) -> np.ndarray | None:
    """The constant data of an input Value (None if the value is computed at run time)."""
    return None if v is None else v.const


def as_ints(arr) -> list:
    """A constant int tensor as a list of Python ints / Syms."""
    return [x if isinstance(x, Sym) else int(x) for x in np.asarray(arr).reshape(-1).tolist()]


def dtype_of(v) -> DType:
    return v.type.dtype
