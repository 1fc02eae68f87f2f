"""A reference interpreter: runs any Graph with the ops' numpy references.

It is the oracle of every pass test (a pass must not change what the interpreter computes) and runs IR
dumps (`tcc ir model.tir --run`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import RuntimeFeedError, ShapeError, TccError
from ..frontend.mapped import release
from .core import Graph, Node, Value
from .dims import Sym, bare_symbol, evaluate, symbols_of
from .registry import node_assumptions, run_ref


def check_feeds(inputs, feeds: dict, bounds: dict[str, int] | None = None) -> dict[str, int]:
    """Check feeds against a model's inputs (anything with .name, .dtype and .shape: graph input Values,
    or a compiled artifact's TensorInfo) and bind each shape symbol from the input shapes.

    One-line RuntimeFeedErrors name the input and say expected vs got: unknown or missing names, dtype,
    rank, inconsistent symbols, a dim over its compiled bound (`bounds`), and the final shapes.
    """
    names = [v.name for v in inputs]
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise RuntimeFeedError(f"unknown input(s) {unknown}; the model's inputs are {names}")
    env: dict[str, int] = {}
    for v in inputs:
        shape = f"[{','.join(map(str, v.shape))}]"
        if v.name not in feeds:
            raise RuntimeFeedError(f"missing input {v.name!r} ({v.dtype}{shape})")
        arr = np.asarray(feeds[v.name])
        if arr.dtype != v.dtype.np:
            raise RuntimeFeedError(f"input {v.name!r}: expected dtype {v.dtype.np}, got {arr.dtype}")
        if arr.ndim != len(v.shape):
            raise RuntimeFeedError(f"input {v.name!r}: expected shape {shape}, got {list(arr.shape)}")
        for d, n in zip(v.shape, arr.shape):
            s = bare_symbol(d)
            if s is None:
                continue
            if env.setdefault(s, n) != n:
                raise RuntimeFeedError(f"input {v.name!r}: dim {s}={n}, but {s}={env[s]} in another input")
            if bounds is not None and n > bounds.get(s, n):
                raise RuntimeFeedError(f"input {v.name!r}: dim {s}={n} exceeds the compiled maximum "
                                       f"{bounds[s]}; recompile with --max-dim {s}={n}")
    for v in inputs:
        arr = np.asarray(feeds[v.name])
        if not all(sym in env for d in v.shape for sym in symbols_of(d)):
            continue  # a symbol no input binds on its own: nothing to check against
        want = tuple(evaluate(d, env) for d in v.shape)
        if tuple(arr.shape) != want:
            raise RuntimeFeedError(f"input {v.name!r}: expected shape {list(want)} "
                                   f"([{','.join(map(str, v.shape))}]), got {list(arr.shape)}")
    return env


def bind_symbols(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Check the feeds of a graph and bind its shape symbols (see check_feeds)."""
    return check_feeds(graph.inputs, feeds)


def concrete(arr: np.ndarray, env: dict[str, int]) -> np.ndarray:
    """Evaluate a symbolic (object) constant under a binding."""
    if arr.dtype != object:
        return arr
    flat = [evaluate(x, env) if isinstance(x, Sym) else int(x) for x in arr.reshape(-1)]
    return np.array(flat, dtype=np.int64).reshape(arr.shape)


class ProgramState:
    """The states of a graph between runs (a language model's KV cache) and the symbols they bind.

    For a graph with `meta["llm"]` (see passes/kv_cache.py): `length` cached tokens bind the `past`
    symbol, and `logits_rows` (0 = all) with the run's sequence length binds `n_logits`. Each run
    appends its tokens: `length` grows by the sequence length.
    """

    def __init__(self, graph: Graph):
        self.arrays = {name: np.zeros(v.type.concrete_shape({}), v.dtype.np) for name, v in graph.states.items()}
        self.length = 0
        self.logits_rows = 0  # all positions, as a plain run returns them; generation asks for 1

    def reset(self) -> None:
        for a in self.arrays.values():
            a[...] = 0
        self.length = 0


def _bind_llm_symbols(graph: Graph, env: dict[str, int], state: ProgramState) -> int:
    """Bind past / n_logits; returns the run's sequence length."""
    llm = graph.meta["llm"]
    seq = env[llm["seq"]]
    rows = state.logits_rows
    env[llm["n_logits"]] = seq if rows <= 0 else min(rows, seq)
    if not llm.get("kv_cache"):
        return 0  # recomputing generation: each run is the whole sequence
    if state.length + seq > llm["capacity"]:
        raise RuntimeFeedError(f"context overflow: {state.length} cached + {seq} new tokens exceed the "
                               f"context of {llm['capacity']} tokens")
    env[llm["past"]] = state.length
    return seq


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], check_types: bool = True,
              keep: bool = False, state: ProgramState | None = None,
              symbols: dict[str, int] | None = None,
              observe: Callable[[Node, list], None] | None = None) -> dict[str, np.ndarray]:
    """Run the graph; returns the outputs by name (every value's array if `keep`).

    `state` carries a stateful graph's states across runs (a fresh, empty one when omitted); `symbols`
    binds shape symbols no input binds (e.g. to evaluate a subgraph of constants); `observe(node, args)`
    sees each node's input arrays before it runs (calibration collects activations with it)."""
    env = bind_symbols(graph, feeds)
    env.update(symbols or {})
    if (graph.states or "llm" in graph.meta) and state is None:
        state = ProgramState(graph)
    seq = _bind_llm_symbols(graph, env, state) if "llm" in graph.meta and state is not None else 0
    vals: dict[int, np.ndarray] = {}
    for v in graph.inputs:
        vals[id(v)] = np.asarray(feeds[v.name])
    for v in graph.constants.values():
        vals[id(v)] = concrete(v.const, env)
    for name, v in graph.states.items():
        vals[id(v)] = state.arrays[name]
    # An intermediate is dropped after its last reader: a 7B decoder's weights are converted to f32 one
    # MatMul at a time (calibration), never all held at once.
    order = _schedule(graph, keep)
    last_use = {} if keep else _last_uses(order, graph)
    for i, node in enumerate(order):
        args = [None if v is None else vals[id(v)] for v in node.inputs]
        if check_types:
            _check_assumptions(node, env)
        if observe is not None:
            observe(node, args)
        results = run_ref(node, args)
        for o, r in zip(node.outputs, results):
            r = np.asarray(r)
            if check_types:
                _check(o, r, env, node)
            vals[id(o)] = r
        for v in node.inputs:
            if v is not None and last_use.get(id(v)) == i:
                dropped = vals.pop(id(v), None)  # (a node may read one value twice)
                if v.const is not None:
                    release(dropped)  # a mapped weight's pages leave this process's RSS (the page cache keeps them)
        del args, results
    if state is not None:
        state.length += seq
    if keep:
        out = {v.name: vals[id(v)] for v in graph.values() if id(v) in vals}
        return out
    return {v.name: vals[id(v)] for v in graph.outputs}


def _schedule(graph: Graph, keep: bool = False) -> list[Node]:
    """The nodes in an order that runs each constant-only node (a weight's Cast or Transpose, which the
    streaming compile leaves unfolded) just before its first reader, not where topological order put it
    (often the start): so a converted weight lives from its production to its use, one layer at a time.
    A constant-only node nothing reads is not run unless it makes a graph output (or `keep` wants every
    value): the calibration passes replace a weight's Cast by a rescaled one and leave the old one for dead
    code elimination, and running those held an f32 copy of every rescaled weight to the end (10 GB at 7B)."""
    constant = {id(v) for v in graph.constants.values()}
    lazy: dict[int, Node] = {}  # value id -> its constant-only producer, not yet scheduled
    for node in graph.nodes:
        if node.inputs and all(v is None or id(v) in constant for v in node.inputs):
            for o in node.outputs:
                constant.add(id(o))
                lazy[id(o)] = node
    order: list[Node] = []

    def place(node: Node) -> None:
        for v in node.inputs:
            producer = lazy.pop(id(v), None) if v is not None else None
            if producer is not None:
                for o in producer.outputs:
                    lazy.pop(id(o), None)
                place(producer)
        order.append(node)

    pending = {id(o) for n in graph.nodes for o in n.outputs if id(o) in lazy}
    for node in graph.nodes:
        if not any(id(o) in pending for o in node.outputs):
            place(node)
    outputs = {id(v) for v in graph.outputs}
    for node in graph.nodes:  # constant-only nodes no scheduled node reads: graph outputs only
        if any(id(o) in lazy for o in node.outputs) and (keep or any(id(o) in outputs for o in node.outputs)):
            for o in node.outputs:
                lazy.pop(id(o), None)
            place(node)
    return order


def _last_uses(order: list[Node], graph: Graph) -> dict[int, int]:
    """The index in `order` of each value's last reading node; graph outputs are never dropped."""
    last: dict[int, int] = {}
    for i, node in enumerate(order):
        for v in node.inputs:
            if v is not None:
                last[id(v)] = i
    for v in graph.outputs:
        last.pop(id(v), None)
    return last


def _check_assumptions(node: Node, env: dict[str, int]) -> None:
    """Refuse a run that breaks a condition the node's types rest on (`past+seq <= 128` where `past+seq`
    broadcasts with `min(past+seq,128)`), as compiled programs do, instead of a numpy broadcast error."""
    try:
        found = node_assumptions(node)
    except TccError:
        return  # a node whose types do not infer: _check reports what its reference produced
    for a in found:
        if symbols_of(a.lhs) | symbols_of(a.rhs) <= set(env) and not a.holds(env):
            said = " and ".join(f"{d} = {evaluate(d, env)}" for d in (a.lhs, a.rhs) if isinstance(d, Sym))
            raise RuntimeFeedError(f"{node.op} node {node.name!r}: its shapes broadcast only when {a}, but {said}")


def _check(v: Value, arr: np.ndarray, env: dict[str, int], node) -> None:
    if arr.dtype != v.dtype.np:
        raise ShapeError(f"{node.op} node {node.name!r}: reference produced {arr.dtype} for %{v.name}, "
                         f"type says {v.type}")
    if v.type.symbols <= set(env):
        want = v.type.concrete_shape(env)
        if tuple(arr.shape) != want:
            raise ShapeError(f"{node.op} node {node.name!r}: reference produced shape {list(arr.shape)} "
                             f"for %{v.name}, type says {v.type} = {list(want)}")
