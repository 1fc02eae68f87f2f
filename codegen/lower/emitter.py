"""Lowering's core: the Emitter that turns one IR node into launches (codegen/launch.py), and the registry
of lowering functions (one module per family group: linalg, attention, elementwise, movement, indexing).

The decisions (which kernel, which strides, which sizes) are made here in Python; a backend's renderer
(codegen/render_cpu.py for the CPUs) only turns the launches into its program. Sizes are Dim expressions
over the shape symbols bound at run time, so one compiled program serves every shape up to the compiled
bounds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from ...backends import capabilities
from ...errors import TccError, UnsupportedError
from ...frontend.mapped import release
from ...ir.core import Graph, Node, Value
from ...ir.dims import Dim, Sym, to_c
from ...ir.dtypes import DType
from ..launch import AssumptionGuard, Buf, HostArray, Launch, Step
from ..weights import WeightsBuilder


def sym_var(name: str) -> str:
    return "s_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def c_dim(d: Dim) -> str:
    return to_c(d, sym_var)


def dense_strides(shape) -> list[Dim]:
    strides: list[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * d
    return strides[::-1]


def broadcast_strides(shape, out_shape) -> list[Dim]:
    """Element strides that read a dense tensor of `shape` broadcast to `out_shape` (0 on broadcast axes)."""
    dense = dense_strides(shape)
    pad = len(out_shape) - len(shape)
    out: list[Dim] = []
    for i, od in enumerate(out_shape):
        j = i - pad
        if j < 0 or (shape[j] == 1 and od != 1):
            out.append(0)
        else:
            out.append(dense[j])
    return out


DTYPE_CODE = {DType.f32: "f32", DType.i64: "i64", DType.i32: "i32", DType.bool: "bool", DType.f16: "f16",
              DType.i8: "i8", DType.u8: "u8"}



def activation_dtype(v: Value) -> dict:
    """The `dtype` param of a family whose CPU kernels have none (qlinear, qgather: f32 activations): given
    only for other activation types (f16 on the GPUs), so the CPU kernels keep their names."""
    return {} if v.dtype == DType.f32 else {"dtype": DTYPE_CODE[v.dtype]}


# Placement kinds (passes/memory_plan.py) -> the Buf space of their storage.
_BUF_SPACE = {"input": "input", "output": "output", "arena": "device_arena", "state": "kv_state"}


@dataclass
class Emitter:
    graph: Graph
    plan: object  # passes.memory_plan.MemoryPlan
    select: Callable  # backend kernel selection: select(family, **params) -> KernelSpec | None
    pack: Callable  # backend weight packing: pack(kind, array) -> (layout name, packed array)
    weights: WeightsBuilder = field(default_factory=WeightsBuilder)
    body: list = field(default_factory=list)  # the current node's launches and in-line guards
    kernels: set = field(default_factory=set)
    variant: str | None = None
    tuning: object = None  # codegen.tuning.Tuning from --tune: per-node kernel parameters
    caps: object = None  # backends.Capabilities: which dtypes each family computes in (None: the CPU's)

    # -- operands ---------------------------------------------------------------------------------
    def array(self, hint: str, values, ctype: str = "int64_t") -> HostArray | None:
        """An int64 array passed by value (None, i.e. nullptr, if empty)."""
        values = tuple(values)
        return HostArray(values, hint, ctype) if values else None

    def ptr(self, v: Value | None, ctype: str | None = None):
        """The storage of `v` as a Buf (a HostArray for a symbolic constant; None for no value)."""
        if v is None:
            return None
        ctype = ctype or v.dtype.ctype
        if v.const is not None:
            return self._const_ptr(v, ctype)
        p = self.plan.placements[v.name]
        root = self.plan.placements[p.root]
        if root.kind == "const":  # a view of a constant (when folding was disabled)
            return self._const_ptr(self.graph.constants[p.root], ctype)
        space = _BUF_SPACE.get(root.kind)
        if space is None:
            raise TccError(f"value %{v.name} has no storage (placement {p})")
        return Buf(space, root.offset if root.kind == "arena" else root.index, ctype)

    def _const_ptr(self, v: Value, ctype: str):
        arr = v.const
        if arr.dtype == object:
            # A symbolic constant (e.g. [batch, seq]) is evaluated at run time into a host array.
            return HostArray(tuple(x if isinstance(x, Sym) else int(x) for x in arr.reshape(-1)), "symc", ctype)
        return Buf("weights", self.weights.add((v.name, "dense"), arr, v.name), ctype)

    def packed_ptr(self, v: Value | None, kind: str, ctype: str = "float") -> Buf | None:
        """A constant reordered by the backend's packer for the kernel that reads it."""
        if v is None:
            return None
        layout, packed = self.pack(kind, v.const)
        release(v.const)  # a mapped source's pages (frontend/mapped.py): packed, it is not read again
        return Buf("weights", self.weights.add((v.name, layout), packed, v.name), f"const {ctype}")

    # -- kernel launches --------------------------------------------------------------------------
    def kernel(self, node: Node, family: str, **params):
        """The backend's kernel of `family` for these params (after --variant and --tune)."""
        caps = self.caps or capabilities(None)
        for v in [*node.inputs, *node.outputs]:
            if v is not None and v.dtype.is_float and not caps.computes(family, v.dtype):
                raise UnsupportedError(f"{node.op} node {node.name!r}: {v.dtype} tensor %{v.name} is not "
                                       f"supported by the {family} kernels (f32 only)")
        spec = self.select(family, variant=self.variant, **params) if self.variant else None
        spec = spec or self.select(family, **params)
        if spec is None:
            raise UnsupportedError(f"{node.op} node {node.name!r}: no {family} kernel for "
                                   + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
        if self.tuning is not None:
            spec = self.tuning.apply(node.name, spec)
        self.kernels.add(spec)
        return spec

    def call(self, node: Node, family: str, args: list, check_error: bool = False, mode: str = "",
             rows: Dim = 1, **params) -> None:
        spec = self.kernel(node, family, **params)
        self.body.append(Launch(spec, tuple(args), check_error, mode, rows))


LOWERINGS: dict[str, Callable[[Node, Emitter], None]] = {}


def lowering(*ops: str):
    def deco(fn):
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return deco


def lower_node(node: Node, em: Emitter, guards: tuple = ()) -> Step:
    """The node's step: its guards, then the launches its lowering function makes."""
    fn = LOWERINGS.get(node.op)
    if fn is None:
        raise UnsupportedError(f"op {node.op} (node {node.name!r}) has no code generator for this target")
    em.body = []
    fn(node, em)
    return Step(node.op, node.name, tuple(guards), tuple(em.body))


def kv_ceilings(graph: Graph) -> dict:
    """A KV-cache program refuses runs past its capacity (`past + seq <= capacity`, program.llm_bind_lines):
    `past` is at most capacity - seq, which proves assumptions such as `past+seq <= 128` at capacity 128."""
    llm = graph.meta.get("llm") or {}
    if not llm.get("kv_cache"):
        return {}
    return {llm["past"]: int(llm["capacity"]) - Sym.symbol(llm["seq"])}


def assumption_guards(node: Node, bounds: dict[str, int], ceilings: dict | None = None) -> tuple:
    """Each condition the node's types rest on (ir.registry.node_assumptions: `past+seq <= 128` for
    `past+seq` broadcast with `min(past+seq,128)`) that the bounds do not prove: checked at run time."""
    from ...ir.registry import node_assumptions
    return tuple(AssumptionGuard(node.op, node.name, a) for a in node_assumptions(node, bounds, ceilings))


def const_ints(node: Node, v: Value | None, what: str) -> list:
    if v is None or v.const is None:
        raise UnsupportedError(f"{node.op} node {node.name!r}: {what} must be constant")
    return [x if isinstance(x, Sym) else int(x) for x in v.const.reshape(-1).tolist()]
