"""plan-memory: place every intermediate in one arena (liveness + best fit), with views and in-place reuse.

1. Every graph output must own a buffer: an output that is (a view of) a graph input or a constant, or that
   shares storage with another output, gets a `Copy` node first.
2. Storage: a view op (kind "view") shares its input's storage; an op with `OpDef.inplace` may write output 0
   into an input's storage when that input has the output's shape and itemsize, lives in the arena, and its
   storage dies at this node (input 0 first; other inputs only for elementwise/broadcast ops, whose kernels
   support any aliased operand). A storage whose value (or a view of it) is graph output `j` is output `j`'s
   buffer; graph inputs, constants and states (the KV cache, allocated once at load) keep their own.
3. Liveness over the final node order: a storage lives from the node that creates it to the last use of
   any of its aliases (inclusive). Sizes are `TensorType.nbytes_bound(ctx.symbol_bounds)`.
4. Offsets: best fit (smallest gap that fits among the storages alive at the same time), 64-byte aligned,
   tried with a few orderings; the smallest arena wins.

Result: `ctx.stats["plan-memory"]`, a `MemoryPlan` (see memory_plan.py).

Bounds: a buffer (graph input, output, intermediate, state) or the arena larger than
`ctx.options["max_plan_bytes"]` (default MAX_PLAN_BYTES, 1 TiB) at the symbols' bounds is refused with an
error naming it, its bytes, the dim bounds it was sized at and the limit, before code is generated: beyond
that, sizes stop being plausible memory (a 2^62 `--max-dim`, a 2^40-long KV cache) and byte offsets
approach the generated code's integer limits. A 7B model at fp16 (13.5 GB of weights, constants are
not planned) with a few GB of KV cache and a 4096-token prefill is far below it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..backends import capabilities
from ..errors import ShapeError, TccError
from ..ir.core import Graph, Node, Value
from ..ir.registry import get_op
from . import register_pass
from .arena_layout import layout, max_live
from .memory_plan import MemoryPlan, Placement, align_up, format_bytes
from .output_copies import insert_output_copies, is_view, view_root

NAME = "plan-memory"
INF = 1 << 62
MAX_PLAN_BYTES = 1 << 40  # 1 TiB: the default largest planned buffer or arena (see the module doc)


@dataclass
class _Storage:
    root: Value
    kind: str  # input | output | const | state | arena
    index: int | None
    first: int
    last: int
    members: list[Value] = field(default_factory=list)
    size: int = 0
    asize: int = 0
    offset: int = 0


def _last_uses(graph: Graph) -> dict[int, int]:
    """id(value) -> index of the last node that reads it or any view of it (INF for graph outputs)."""
    last: dict[int, int] = {}
    for v in graph.inputs:
        last[id(v)] = -1
    for v in graph.constants.values():
        last[id(v)] = -1
    for v in graph.states.values():
        last[id(v)] = INF
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            last[id(o)] = i
        for v in n.inputs:
            if v is not None:
                last[id(v)] = max(last.get(id(v), -1), i)
    for v in graph.outputs:
        last[id(v)] = INF
    for n in reversed(graph.nodes):
        if is_view(n):
            src = n.inputs[0]
            last[id(src)] = max(last[id(src)], last[id(n.outputs[0])])
    return last


def plan_memory(graph: Graph, ctx) -> MemoryPlan:
    copies = insert_output_copies(graph, ctx)
    if copies:
        graph.rename_names()
    nodes = graph.nodes
    last = _last_uses(graph)
    out_index: dict[int, int] = {id(view_root(v)): j for j, v in enumerate(graph.outputs)}

    root_of: dict[int, _Storage] = {}
    storages: list[_Storage] = []
    inplace_of: dict[str, str] = {}
    view_of: dict[str, str] = {}

    def new_storage(v: Value, kind: str, index, first: int) -> _Storage:
        s = _Storage(v, kind, index, first, last.get(id(v), first), [v])
        storages.append(s)
        root_of[id(v)] = s
        return s

    for i, v in enumerate(graph.inputs):
        new_storage(v, "input", i, -1)
    for v in graph.constants.values():
        new_storage(v, "const", None, -1)
    for i, v in enumerate(graph.states.values()):
        new_storage(v, "state", i, -1)

    for i, n in enumerate(nodes):
        if is_view(n):
            o, src = n.outputs[0], n.inputs[0]
            s = root_of[id(src)]
            s.members.append(o)
            s.last = max(s.last, last[id(o)])
            root_of[id(o)] = s
            view_of[o.name] = src.name
            continue
        op = get_op(n.op)
        reused: set[int] = set()
        for k, o in enumerate(n.outputs):
            if k == 0 and op.inplace and id(o) not in out_index:
                s = _inplace_candidate(n, o, i, root_of, op.kind, reused)
                if s is not None:
                    src = s[1]
                    s = s[0]
                    reused.add(id(s))
                    s.members.append(o)
                    s.last = max(s.last, last[id(o)])
                    root_of[id(o)] = s
                    inplace_of[o.name] = src.name
                    continue
            if id(o) in out_index:
                new_storage(o, "output", out_index[id(o)], i)
            else:
                new_storage(o, "arena", None, i)

    arena = [s for s in storages if s.kind == "arena"]
    bounds = ctx.symbol_bounds
    missing: dict[str, Value] = {}
    for s in arena:
        for m in s.members:
            for sym in m.type.symbols - set(bounds):
                missing.setdefault(sym, m)
    if missing:
        example = next(iter(missing.values()))
        raise TccError(f"plan-memory: no upper bound for shape symbol(s) {', '.join(sorted(missing))} "
                       f"(needed to size intermediates such as %{example.name} : {example.type}); "
                       f"give one for each in symbol_bounds")
    align = capabilities(ctx.target).alignment  # the target's: on the CPU a cache line
    for s in arena:
        s.size = max(m.type.nbytes_bound(bounds) for m in s.members)
        s.asize = align_up(s.size, align)
    limit = int(ctx.options.get("max_plan_bytes") or MAX_PLAN_BYTES)
    _check_buffers([s for s in storages if s.kind != "const"], bounds, limit)

    live = [s for s in arena if s.asize > 0]
    best_name, arena_bytes = layout(live)
    for s in arena:
        if s.asize == 0:
            s.offset = 0
    if arena_bytes > limit:
        raise ShapeError(f"plan-memory: the arena needs {arena_bytes} bytes ({format_bytes(arena_bytes)}) "
                         f"{_at(bounds, None)}, over the limit of {limit} bytes ({format_bytes(limit)}); "
                         f"lower --max-dim")

    lower = max_live(live)
    total = 0
    for n in nodes:
        if is_view(n):
            continue
        for o in n.outputs:
            if id(o) not in out_index:
                total += align_up(o.type.nbytes_bound(bounds), align)

    placements: dict[str, Placement] = {}
    for s in storages:
        for m in s.members:
            if s.kind == "arena":
                placements[m.name] = Placement("arena", None, s.offset, s.root.name)
            else:
                placements[m.name] = Placement(s.kind, s.index, 0, s.root.name)
    plan = MemoryPlan(placements, arena_bytes, total, lower,
                      sizes={s.root.name: s.size for s in storages if s.kind == "arena"},
                      live={s.root.name: (s.first, s.last) for s in arena},
                      inplace_of=inplace_of, view_of=view_of, strategy=best_name, alignment=align,
                      state_bytes={n: v.type.nbytes_bound(bounds) for n, v in graph.states.items()})
    return plan


def _at(bounds: dict[str, int], v: Value | None) -> str:
    """'at the dim bounds batch=256, seq=256' (only v's symbols when given)."""
    names = sorted(v.type.symbols if v is not None else bounds)
    return f"at the dim bounds {', '.join(f'{k}={bounds[k]}' for k in names)}" if names else "(static shape)"


def _check_buffers(storages: list[_Storage], bounds: dict[str, int], limit: int) -> None:
    """Refuse any planned buffer over `limit` bytes at the dim bounds, naming it (see the module doc)."""
    for s in storages:
        for m in s.members:
            if m.type.symbols - set(bounds):
                continue  # an input or output whose symbol has no bound is sized at run time
            n = m.type.nbytes_bound(bounds)
            if n > limit:
                what = {"input": "graph input", "output": "graph output", "state": "state"}.get(s.kind, "intermediate")
                raise ShapeError(f"plan-memory: {what} %{m.name} : {m.type} needs {n} bytes ({format_bytes(n)}) "
                                 f"{_at(bounds, m)}, over the limit of {limit} bytes ({format_bytes(limit)}); "
                                 f"lower --max-dim")


def _inplace_candidate(n: Node, o: Value, i: int, root_of: dict, kind: str, reused: set):
    slots = range(len(n.inputs)) if kind in ("elementwise", "broadcast") else range(min(1, len(n.inputs)))
    for k in slots:
        x = n.inputs[k]
        if x is None:
            continue
        s = root_of[id(x)]
        if s.kind != "arena" or id(s) in reused or s.last != i:
            continue
        if tuple(x.shape) != tuple(o.shape) or x.dtype.itemsize != o.dtype.itemsize:
            continue
        # Another operand reading the same storage through a different value could see a partly
        # overwritten buffer in another layout: only the same value (read elementwise) is safe.
        if any(y is not None and y is not x and root_of[id(y)] is s for y in n.inputs):
            continue
        return s, x
    return None


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    plan = plan_memory(graph, ctx)
    ctx.stats[NAME] = plan
    for line in plan.summary_lines():
        ctx.log(NAME, line)
