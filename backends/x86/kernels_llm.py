"""x86 kernels of the LLM families (codegen/families/llm.py): all portable, so the list is the shared one."""
from __future__ import annotations

from ...codegen.families import llm, specs
from ...codegen.kernels import KernelSpec

VARIANTS: list[KernelSpec] = specs("x86", llm.PORTABLE)
