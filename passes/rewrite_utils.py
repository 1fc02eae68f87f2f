"""Helpers shared by the rewrite passes (this module registers no pass).

Matching walks parents by (op, input slot) from one anchor node and reads constants; nothing here
mutates the graph except `replace_value`, which the passes call only when committing.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.dims import Sym
from ..ir.registry import full_attrs, get_op


def producer(v: Value | None, op: str | tuple[str, ...] | None = None) -> Node | None:
    """v's producing node, if it exists (and has op `op`, a name or a tuple of names)."""
    if v is None or v.producer is None:
        return None
    n = v.producer
    if op is None:
        return n
    if isinstance(op, str):
        return n if n.op == op else None
    return n if n.op in op else None


def attrs(n: Node) -> dict:
    return full_attrs(get_op(n.op), n.attrs)


def scalar(v: Value | None) -> float | None:
    """The value of a constant with one element (any shape), as a Python float; None otherwise."""
    if v is None or v.const is None or v.const.dtype == object or v.const.size != 1:
        return None
    return float(v.const.reshape(-1)[0])


def is_scalar_const(v: Value | None, x: float, tol: float = 0.0) -> bool:
    s = scalar(v)
    return s is not None and abs(s - x) <= tol


def other_input(n: Node, v: Value) -> Value | None:
    """For a binary node with `v` in one slot, the value in the other slot."""
    a, b = n.inputs[0], n.inputs[1]
    if a is v:
        return b
    if b is v:
        return a
    return None


def consumers(users: dict, v: Value) -> list[tuple[Node, int]]:
    return users.get(v, [])


def only_consumer(users: dict, graph: Graph, v: Value) -> Node | None:
    """The single node reading `v` (and `v` is not a graph output), else None."""
    us = users.get(v, [])
    if len({id(n) for n, _ in us}) != 1 or is_graph_output(graph, v):
        return None
    return us[0][0]


def is_graph_output(graph: Graph, v: Value) -> bool:
    return any(o is v for o in graph.outputs)


def outside_consumers(graph: Graph, users: dict, inner: Iterable[Node], exclude: Value | None = None
                      ) -> Value | None:
    """An output of an inner node (other than `exclude`, the pattern's result) that is read outside the
    pattern or is a graph output; None when the pattern is closed."""
    inner_ids = {id(n) for n in inner}
    for n in inner:
        for o in n.outputs:
            if o is exclude:
                continue
            if is_graph_output(graph, o):
                return o
            for u, _ in users.get(o, []):
                if id(u) not in inner_ids:
                    return o
    return None


def replace_value(graph: Graph, old: Value, new: Value) -> None:
    """Every use of `old` reads `new`; `new` takes over `old`'s name (a graph output keeps its name)."""
    name = old.name
    was_output = is_graph_output(graph, old)
    graph.replace_uses(old, new)
    if was_output or new.producer is None or new in graph.inputs or is_graph_output(graph, new):
        return
    graph._names.discard(name)
    old.name = graph.unique_name(name + ".dead")
    graph._names.discard(new.name)
    new.name = name
    graph._names.add(name)


def neg_axes(axes, rank: int) -> list[int] | None:
    """Axes normalized to negative form, sorted; None if out of range."""
    out = []
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            return None
        out.append(a - rank if a >= 0 else a)
    return sorted(out)


def same_dims(a, b) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


def is_sym(d) -> bool:
    return isinstance(d, Sym)


def as_f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))
