"""Backend capabilities (backends.Capabilities) steer the generic passes: lower-ops computes f16 in f32 only
where the target lacks native f16 arithmetic, and plan-memory aligns the arena to the target's alignment and
places every value in a memory space."""
from __future__ import annotations

from dataclasses import replace

from tcc.backends import Capabilities, capabilities, cpu_capabilities, get_backend
from tcc.ir.core import Graph
from tcc.ir.dtypes import DType
from tcc.passes.context import PassContext
from tcc.passes.lower_ops import lower_ops
from tcc.passes.memory_plan import SPACES
from tcc.passes.plan_memory import plan_memory

from .helpers import t


class _Target:
    """A target description with chosen capabilities (what a GPU backend's target would state)."""

    def __init__(self, caps: Capabilities):
        self._caps = caps
        self.name = "test"

    def capabilities(self) -> Capabilities:
        return self._caps


def _f16_add() -> Graph:
    g = Graph()
    a = g.add_input("a", t("f16", 4))
    b = g.add_input("b", t("f16", 4))
    g.outputs.append(g.add_node("Add", [a, b]).output)
    return g


def test_cpu_targets_state_the_cpu_facts():
    for name in ("x86", "arm"):
        caps = get_backend(name).caps
        assert not caps.f16_arithmetic and caps.alignment == 64
        assert not caps.computes("gemm", DType.f16) and caps.computes("gemm", DType.f32)
        assert caps.computes("binary", DType.f16)  # lower-ops casts around it; the family itself is generic
    assert get_backend("x86").caps.vector_bytes == 32 and get_backend("arm").caps.vector_bytes == 16
    assert capabilities(None) == cpu_capabilities()


def test_lower_ops_asks_the_target_about_f16():
    g = _f16_add()
    lower_ops(g, PassContext(target=None))
    assert [n.op for n in g.nodes] == ["Cast", "Cast", "Add", "Cast"]  # the CPU: f16 computed in f32
    g = _f16_add()
    lower_ops(g, PassContext(target=_Target(replace(cpu_capabilities(), f16_arithmetic=True))))
    assert [n.op for n in g.nodes] == ["Add"]  # native f16: left as is


def _chain(n: int) -> Graph:
    g = Graph()
    x = g.add_input("x", t("f32", 3))
    for _ in range(n):
        x = g.add_node("Neg", [g.add_node("Exp", [x]).output]).output
    g.outputs.append(x)
    return g


def test_plan_memory_uses_the_target_alignment_and_spaces():
    for align in (64, 256):
        g = _chain(3)
        plan = plan_memory(g, PassContext(target=_Target(cpu_capabilities(alignment=align)), symbol_bounds={}))
        assert plan.alignment == align
        arena = [p for p in plan.placements.values() if p.kind == "arena"]
        assert arena and all(p.offset % align == 0 for p in arena)
        assert plan.arena_bytes == align  # one 12-byte buffer (the ops run in place), padded to the alignment
        assert {p.space for p in plan.placements.values()} == {"io", "device_arena"}
    assert set(SPACES.values()) == {"io", "weights", "kv_state", "device_arena"}
