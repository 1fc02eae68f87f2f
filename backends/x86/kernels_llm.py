"""x86 kernels of the LLM families (codegen/families/llm.py): the portable list, and the qgather kernels that
read a tied table from a QLinear's packed weights (the target has `tied_tables`), in this backend's layout."""
from __future__ import annotations

from ...codegen.families import llm, specs
from ...codegen.kernels import KernelSpec, extended_context, register_target_context
from .kernels_quant import packed_layout

register_target_context("x86", "qgather", extended_context("qgather", lambda spec: packed_layout()))

VARIANTS: list[KernelSpec] = specs("x86", llm.PORTABLE + llm.TIED_TABLES)
