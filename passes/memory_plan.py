"""The memory plan's data structures (made by `plan_memory.py`, read by the code generator).

Every value of the graph gets a `Placement`:

    kind "input"   the caller's buffer of graph input `index` (a view of an input too)
    kind "output"  the caller's buffer of graph output `index` (and every view of / in-place into it)
    kind "const"   the constant's own data (a view of a constant too)
    kind "state"   state `index` (in graph.states order): a buffer the program allocates at load
    kind "arena"   `offset` bytes into the one intermediate arena (aligned to the target's alignment,
                   backends.Capabilities.alignment: 64 bytes on the CPUs)

Each kind lives in a memory space (`SPACES`, `Placement.space`): the caller's I/O buffers, the weights, the
KV state and the device arena, plus the host arena (host-side scratch of the program, such as the shape
arrays a kernel reads; the CPU program keeps those on its stack). A backend allocates each space where its
kernels can reach it: on the CPU the device arena is host memory; a GPU backend puts the device arena, the
weights and the KV state in device memory and copies the I/O in and out.

`root` names the value that owns the storage: the value itself, unless it is a view (then the root of its
input) or written in place into an input's storage (then that input's root).
"""
from __future__ import annotations

from dataclasses import dataclass, field

ALIGN = 64  # the default alignment (the CPU targets'); a plan records the one it used

# Memory space of each placement kind.
SPACES = {"input": "io", "output": "io", "const": "weights", "state": "kv_state", "arena": "device_arena"}
HOST_ARENA = "host_arena"  # host-side scratch (run-time shape and stride arrays); no placement lives there


@dataclass
class Placement:
    kind: str  # "input" | "output" | "const" | "state" | "arena"
    index: int | None  # graph input / output / state index for kind input/output/state, else None
    offset: int  # byte offset in the arena (kind "arena"), else 0
    root: str  # name of the value that owns the storage (itself unless view / in-place)

    @property
    def space(self) -> str:
        """The memory space the storage lives in (see SPACES)."""
        return SPACES[self.kind]


@dataclass(repr=False)
class MemoryPlan:
    placements: dict[str, Placement]  # EVERY value name (inputs, constants, node outputs)
    arena_bytes: int  # size of the device arena (a multiple of the alignment)
    total_bytes: int  # sum of the sizes of every intermediate that would own a buffer without planning
    lower_bound: int  # the largest set of arena storages alive at one node (aligned sizes)
    # Details for comments and tests (not needed by the code generator):
    sizes: dict[str, int] = field(default_factory=dict)  # storage root name -> bytes (upper bound)
    live: dict[str, tuple[int, int]] = field(default_factory=dict)  # arena root -> (first, last) node index
    inplace_of: dict[str, str] = field(default_factory=dict)  # value -> the input value whose storage it reuses
    view_of: dict[str, str] = field(default_factory=dict)  # value -> the input value it is a view of
    strategy: str = ""  # the ordering heuristic that gave the smallest arena
    state_bytes: dict[str, int] = field(default_factory=dict)  # state name -> bytes
    alignment: int = ALIGN  # bytes: the target's (backends.Capabilities.alignment); arena offsets are multiples

    def __repr__(self) -> str:
        return (f"MemoryPlan({len(self.placements)} values, arena={self.arena_bytes}, "
                f"total={self.total_bytes}, lower_bound={self.lower_bound})")

    def comments(self, graph) -> dict[int, list[str]]:
        """Node index -> comment lines describing where the node's outputs live."""
        out: dict[int, list[str]] = {}
        for i, n in enumerate(graph.nodes):
            lines = []
            for o in n.outputs:
                p = self.placements.get(o.name)
                if p is None:
                    continue
                lines.append("plan: " + self.describe(o.name))
            if lines:
                out[i] = lines
        return out

    def describe(self, name: str) -> str:
        p = self.placements[name]
        if name in self.inplace_of:
            text = f"%{name} in-place of %{self.inplace_of[name]}"
        elif name in self.view_of:
            text = f"%{name} view of %{self.view_of[name]}"
        else:
            text = f"%{name}"
        if p.kind == "arena":
            where = f"arena+{p.offset}"
            if p.root == name:
                return f"{text} @ {where} ({format_bytes(self.sizes.get(p.root, 0))})"
            return f"{text} (@ {where})"
        if p.kind in ("input", "output", "state"):
            return f"{text} -> {p.kind} {p.index}"
        return f"{text} -> const"

    def summary_lines(self) -> list[str]:
        states = [p for p in self.placements.values() if p.kind == "state" and p.root in self.state_bytes]
        extra = [f"plan: states (KV cache) {format_bytes(sum(self.state_bytes.values()))} in {len(states)} buffers, "
                 f"allocated at load"] if self.state_bytes else []
        return extra + [f"plan: arena {format_bytes(self.arena_bytes)} (sum of intermediates "
                f"{format_bytes(self.total_bytes)}, lower bound {format_bytes(self.lower_bound)})"]

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of arena storages alive at the same node whose byte ranges intersect (must be empty)."""
        roots = [r for r in self.live if self.sizes.get(r, 0) > 0]
        bad = []
        for i, a in enumerate(roots):
            sa, ea = self.live[a]
            oa = self.placements[a].offset
            for b in roots[i + 1:]:
                sb, eb = self.live[b]
                if sa > eb or sb > ea:
                    continue
                ob = self.placements[b].offset
                if oa < ob + self.sizes[b] and ob < oa + self.sizes[a]:
                    bad.append((a, b))
        return bad


def format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit, scale in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)):
        if n < scale * 1024 or unit == "TiB":
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"  # pragma: no cover


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align
