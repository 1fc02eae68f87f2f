"""The op registry: per op, its arity, attributes, kind, shape/type inference and numpy reference.

The numpy reference is the single source of truth for an op's meaning: constant folding calls it, every
pass test uses it as the oracle (through the interpreter), and `tcc ir --run` executes any IR dump with it.

Kinds (for fusion and memory planning, as in TVM): `elementwise` (same shape in and out),
`broadcast`, `injective` (data movement), `reduction`, `view` (output aliases input 0's buffer:
Reshape/Squeeze/Unsqueeze/Identity/Flatten), `shape` (computes on shapes only), `opaque`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import IRError, ShapeError
from .dims import Dim, Sym
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

def broadcast_shapes(*shapes: Sequence[Dim], what: str = "") -> tuple[Dim, ...]:
    """numpy/ONNX multidirectional broadcasting over possibly symbolic dims."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        d: Dim = 1
        for x in dims:
            if x == 1 or x == d:
                continue
            if d == 1:
                d = x
            elif isinstance(x, Sym) and not isinstance(d, Sym):
                continue  # a symbol broadcast against a concrete dim is taken to equal it
            elif isinstance(d, Sym) and not isinstance(x, Sym):
                d = x
            else:
                raise ShapeError(f"cannot broadcast {what} shapes "
                                 + " and ".join("[" + ",".join(map(str, s)) + "]" for s in shapes))
        out.append(d)
    return tuple(out)


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
