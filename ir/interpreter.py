"""A reference interpreter: runs any Graph with the ops' numpy references.

It is the oracle of every pass test (a pass must not change what the interpreter computes) and runs IR
dumps (`tcc ir model.tir --run`).
"""
from __future__ import annotations

import numpy as np

from ..errors import RuntimeFeedError, ShapeError
from .core import Graph, Value
from .dims import Sym, bare_symbol, evaluate
from .registry import run_ref


def bind_symbols(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Bind each shape symbol from the input shapes, checking names, ranks, dtypes and consistency."""
    env: dict[str, int] = {}
    names = {v.name for v in graph.inputs}
    unknown = set(feeds) - names
    if unknown:
        raise RuntimeFeedError(f"unknown input(s) {sorted(unknown)}; the model's inputs are {sorted(names)}")
    for v in graph.inputs:
        if v.name not in feeds:
            raise RuntimeFeedError(f"missing input {v.name!r} ({v.type})")
        arr = np.asarray(feeds[v.name])
        if arr.dtype != v.dtype.np:
            raise RuntimeFeedError(f"input {v.name!r}: expected dtype {v.dtype.np}, got {arr.dtype}")
        if arr.ndim != v.type.rank:
            raise RuntimeFeedError(f"input {v.name!r}: expected shape {list(map(str, v.shape))}, "
                                   f"got {list(arr.shape)}")
        for d, n in zip(v.shape, arr.shape):
            s = bare_symbol(d)
            if s is not None and env.setdefault(s, n) != n:
                raise RuntimeFeedError(f"input {v.name!r}: dim {s}={n} but {s}={env[s]} elsewhere")
    for v in graph.inputs:
        arr = np.asarray(feeds[v.name])
        want = v.type.concrete_shape(env) if v.type.symbols <= set(env) else None
        if want is not None and tuple(arr.shape) != want:
            raise RuntimeFeedError(f"input {v.name!r}: expected shape {list(want)}, got {list(arr.shape)}")
    return env


def concrete(arr: np.ndarray, env: dict[str, int]) -> np.ndarray:
    """Evaluate a symbolic (object) constant under a binding."""
    if arr.dtype != object:
        return arr
    flat = [evaluate(x, env) if isinstance(x, Sym) else int(x) for x in arr.reshape(-1)]
    return np.array(flat, dtype=np.int64).reshape(arr.shape)


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], check_types: bool = True,
              keep: bool = False) -> dict[str, np.ndarray]:
    """Run the graph; returns the outputs by name (every value's array if `keep`)."""
    env = bind_symbols(graph, feeds)
    vals: dict[int, np.ndarray] = {}
    for v in graph.inputs:
        vals[id(v)] = np.asarray(feeds[v.name])
    for v in graph.constants.values():
        vals[id(v)] = concrete(v.const, env)
    for node in graph.nodes:
        args = [None if v is None else vals[id(v)] for v in node.inputs]
        results = run_ref(node, args)
        for o, r in zip(node.outputs, results):
            r = np.asarray(r)
            if check_types:
                _check(o, r, env, node)
            vals[id(o)] = r
    if keep:
        out = {v.name: vals[id(v)] for v in graph.values() if id(v) in vals}
        return out
    return {v.name: vals[id(v)] for v in graph.outputs}


def _check(v: Value, arr: np.ndarray, env: dict[str, int], node) -> None:
    if arr.dtype != v.dtype.np:
        raise ShapeError(f"{node.op} node {node.name!r}: reference produced {arr.dtype} for %{v.name}, "
                         f"type says {v.type}")
    if v.type.symbols <= set(env):
        want = v.type.concrete_shape(env)
        if tuple(arr.shape) != want:
            raise ShapeError(f"{node.op} node {node.name!r}: reference produced shape {list(arr.shape)} "
                             f"for %{v.name}, type says {v.type} = {list(want)}")
