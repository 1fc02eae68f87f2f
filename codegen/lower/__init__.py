"""Lowering: each IR node becomes a step of the launch list (codegen/launch.py): kernel launches with
buffer references by memory space, scalar and shape arguments by value, and the run-time checks its
shapes rest on. The Emitter and registry are in `emitter.py`; one module per family group registers its
lowering functions (linalg, attention, elementwise, movement, indexing). A backend renders the steps into
its host program (codegen/render_cpu.py for the CPU targets)."""
from __future__ import annotations

from . import attention, elementwise, indexing, linalg, movement  # noqa: F401 (they register their lowerings)
from .emitter import (DTYPE_CODE, LOWERINGS, Emitter, assumption_guards, broadcast_strides, c_dim,  # noqa: F401
                      dense_strides, kv_ceilings, lower_node, lowering, sym_var)


def assumption_checks(node, bounds: dict[str, int], ceilings: dict | None = None) -> list[str]:
    """C statements of the node's assumption guards, as the CPU program checks them (see assumption_guards)."""
    from ..render_cpu import assumption_check

    return [assumption_check(g) for g in assumption_guards(node, bounds, ceilings)]
