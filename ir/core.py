"""The IR: TensorType, Value, Node, Graph.

A Graph is a list of Nodes kept in topological order, with ordered graph inputs and outputs. A Value has
exactly one definition: a graph input, a constant (`Value.const` holds its numpy data; an object array of
dims for a symbolic integer constant such as a folded `Shape`), a state, or one output of one Node.
A state is a buffer the program owns across runs (a language model's KV cache): allocated and zeroed
once at load, read and updated in place by the ops that take it (they declare `effects` in the registry).
Node inputs are ordered; an absent optional input is `None`.

Passes mutate graphs through the helpers here (`add_node`, `replace_uses`, `remove_nodes`) so types are
inferred on creation and names stay unique. `verify()` checks the invariants after every pass.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import IRError
from .dims import Dim, Sym, evaluate, product, symbols_of, upper_bound
from .dtypes import DType


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(d if isinstance(d, Sym) else int(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> Dim:
        return product(self.shape)

    @property
    def is_static(self) -> bool:
        return not any(isinstance(d, Sym) for d in self.shape)

    @property
    def symbols(self) -> set[str]:
        out: set[str] = set()
        for d in self.shape:
            out |= symbols_of(d)
        return out

    def concrete_shape(self, env: dict[str, int]) -> tuple[int, ...]:
        return tuple(evaluate(d, env) for d in self.shape)

    def nbytes_bound(self, bounds: dict[str, int]) -> int:
        n = 1
        for d in self.shape:
            n *= upper_bound(d, bounds)
        return n * self.dtype.itemsize

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


class Value:
    """One tensor in the graph. Identity is object identity; `name` is unique within a graph."""

    __slots__ = ("name", "type", "producer", "const")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None,
                 const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.const = const

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    @property
    def output(self) -> Value:
        return self.outputs[0]

    def __repr__(self) -> str:
        ins = ", ".join("none" if v is None else f"%{v.name}" for v in self.inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"{outs} = {self.op}({ins})" + (f" {self.attrs}" if self.attrs else "")


class Graph:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, Value] = {}
        self.states: dict[str, Value] = {}
        self.meta: dict[str, Any] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- naming -------------------------------------------------------------------------------
    def unique_name(self, hint: str = "v") -> str:
        hint = hint or "v"
        if hint not in self._names:
            self._names.add(hint)
            return hint
        while True:
            name = f"{hint}.{next(self._counter)}"
            if name not in self._names:
                self._names.add(name)
                return name

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise IRError(f"value name %{name} defined twice")
        self._names.add(name)
        return name

    # -- construction --------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(name), type)
        self.inputs.append(v)
        return v

    def add_const(self, data: np.ndarray, name: str = "const", exact_name: bool = False) -> Value:
        data = np.asarray(data)
        if data.dtype == object:
            dtype = DType.i64
        else:
            dtype = DType.from_numpy(data.dtype)
        nm = self._claim(name) if exact_name else self.unique_name(name)
        v = Value(nm, TensorType(dtype, data.shape), const=data)
        self.constants[v.name] = v
        return v

    def add_state(self, name: str, type: TensorType) -> Value:
        v = Value(self.unique_name(name), type)
        self.states[v.name] = v
        return v

    def add_node(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None,
                 name: str = "", out_names: Sequence[str] | None = None, before: Node | None = None,
                 out_types: Sequence[TensorType] | None = None, num_outputs: int | None = None) -> Node:
        """Create a node, infer its output types (unless given), and insert it before `before`
        (or at the end). Returns the node; its outputs are fresh Values."""
        from .registry import infer_types

        node = Node(op, list(inputs), [], dict(attrs or {}), name)
        types = list(out_types) if out_types is not None else infer_types(node, num_outputs)
        hints = list(out_names) if out_names else [name or op.lower()] * len(types)
        node.outputs = [Value(self.unique_name(h), t, producer=node) for h, t in zip(hints, types)]
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    # -- queries --------------------------------------------------------------------------------
    def users(self) -> dict[Value, list[tuple[Node, int]]]:
        out: dict[Value, list[tuple[Node, int]]] = {}
        for n in self.nodes:
            for i, v in enumerate(n.inputs):
                if v is not None:
                    out.setdefault(v, []).append((n, i))
        return out

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.constants.values()
        yield from self.states.values()
        for n in self.nodes:
            yield from n.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def ops(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def symbols(self) -> list[str]:
        seen: list[str] = []
        for v in self.inputs:
            for d in v.shape:
                for s in sorted(symbols_of(d)):
                    if s not in seen:
                        seen.append(s)
        return seen

    # -- mutation -------------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value, *, outputs: bool = True) -> None:
        """Point every use of `old` (node inputs, and graph outputs if `outputs`) at `new`."""
        for n in self.nodes:
            n.inputs = [new if v is old else v for v in n.inputs]
        if not outputs or not any(v is old for v in self.outputs):
            return
        # A graph output keeps its public name. Rename `new` when it is a plain intermediate;
        # otherwise (an input, a constant, another output) keep the interface through an Identity.
        public = old.name
        if new.producer is not None and not any(v is new for v in self.outputs) and new not in self.inputs:
            self._names.discard(new.name)
            old.name = self.unique_name(public + ".replaced")
            new.name = public
            self._names.add(public)
            self.outputs = [new if v is old else v for v in self.outputs]
            return
        self._names.discard(public)
        old.name = self.unique_name(public + ".replaced")
        ident = self.add_node("Identity", [new], out_names=[public])
        self.outputs = [ident.outputs[0] if v is old else v for v in self.outputs]

    def substitute_symbols(self, mapping: dict[str, Dim]) -> None:
        """Replace shape symbols everywhere: value types and symbolic constants (e.g. an input dim named
        `total` that is really `past+seq`)."""
        from .dims import substitute

        for v in self.values():
            v.type = v.type.with_shape([substitute(d, mapping) for d in v.shape])
            if v.const is not None and v.const.dtype == object:
                flat = [substitute(x, mapping) if isinstance(x, Sym) else x for x in v.const.reshape(-1)]
                v.const = np.array(flat, dtype=object).reshape(v.const.shape)

    def remove_nodes(self, nodes: Iterable[Node]) -> None:
        dead = set(map(id, nodes))
        self.nodes = [n for n in self.nodes if id(n) not in dead]

    def remove_unused_constants(self) -> None:
        used = {id(v) for n in self.nodes for v in n.inputs if v is not None}
        used |= {id(v) for v in self.outputs}
        self.constants = {k: v for k, v in self.constants.items() if id(v) in used}

    def toposort(self) -> None:
        """Reorder nodes topologically, keeping the current order where it is already valid."""
        index = {id(n): i for i, n in enumerate(self.nodes)}
        producer_of = {id(o): n for n in self.nodes for o in n.outputs}
        deps: dict[int, set[int]] = {}
        for n in self.nodes:
            deps[id(n)] = {id(producer_of[id(v)]) for v in n.inputs
                           if v is not None and id(v) in producer_of}
        import heapq

        dependents: dict[int, list[Node]] = {}
        for n in self.nodes:
            for d in deps[id(n)]:
                dependents.setdefault(d, []).append(n)
        pending = {id(n): len(deps[id(n)]) for n in self.nodes}
        ready = [(index[id(n)], n) for n in self.nodes if pending[id(n)] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            _, n = heapq.heappop(ready)
            order.append(n)
            for m in dependents.get(id(n), []):
                pending[id(m)] -= 1
                if pending[id(m)] == 0:
                    heapq.heappush(ready, (index[id(m)], m))
        if len(order) != len(self.nodes):
            stuck = [n for n in self.nodes if pending[id(n)] > 0][0]
            raise IRError(f"graph has a cycle through node {stuck.op} {stuck.name!r}")
        self.nodes = order

    def rename_names(self) -> None:
        """Rebuild the set of claimed names (after bulk edits that created Values directly)."""
        self._names = {v.name for v in self.values()}

    def copy(self) -> "Graph":
        """A structural copy: new Values and Nodes, constant arrays shared (they are never mutated)."""
        g = Graph(self.name)
        g.meta = dict(self.meta)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.name, v.type)
        for name, v in self.constants.items():
            nv = Value(g._claim(name), v.type, const=v.const)
            g.constants[name] = nv
            vmap[id(v)] = nv
        for name, v in self.states.items():
            nv = Value(g._claim(name), v.type)
            g.states[name] = nv
            vmap[id(v)] = nv
        for n in self.nodes:
            nn = Node(n.op, [None if v is None else vmap[id(v)] for v in n.inputs], [], dict(n.attrs), n.name)
            for o in n.outputs:
                no = Value(g._claim(o.name), o.type, producer=nn)
                vmap[id(o)] = no
                nn.outputs.append(no)
            g.nodes.append(nn)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    # -- verification ---------------------------------------------------------------------------
    def verify(self) -> None:
        """Check: single definition, definition before use, registered ops with valid arity and
        attributes, output types equal to re-inferred types, graph outputs defined."""
        from .registry import OPS, check_node

        defined: set[int] = set()
        names: set[str] = set()

        def define(v: Value, where: str) -> None:
            if id(v) in defined:
                raise IRError(f"value %{v.name} defined twice ({where})")
            if v.name in names:
                raise IRError(f"value name %{v.name} used by two values ({where})")
            defined.add(id(v))
            names.add(v.name)

        for v in self.inputs:
            if v.producer is not None or v.const is not None:
                raise IRError(f"graph input %{v.name} has a producer or constant data")
            define(v, "graph input")
        for name, v in self.constants.items():
            if v.const is None or v.name != name:
                raise IRError(f"constant %{name} has no data or a mismatched name")
            if tuple(v.const.shape) != v.shape:
                raise IRError(f"constant %{name}: data shape {v.const.shape} != type {v.type}")
            define(v, "constant")
        for name, v in self.states.items():
            if v.const is not None or v.producer is not None or v.name != name:
                raise IRError(f"state %{name} has constant data, a producer or a mismatched name")
            define(v, "state")
        for n in self.nodes:
            if n.op not in OPS:
                raise IRError(f"unknown op {n.op} in node {n.name!r}")
            for i, v in enumerate(n.inputs):
                if v is not None and id(v) not in defined:
                    raise IRError(f"{n.op} node {n.name!r} input {i} %{v.name} is used before it is defined")
            for o in n.outputs:
                if o.producer is not n:
                    raise IRError(f"output %{o.name} of {n.op} node {n.name!r} has the wrong producer")
                define(o, f"output of {n.op} {n.name!r}")
            check_node(n)
        for v in self.outputs:
            if id(v) not in defined:
                raise IRError(f"graph output %{v.name} is not defined")

    def __str__(self) -> str:
        from .text import print_graph

        return print_graph(self)
