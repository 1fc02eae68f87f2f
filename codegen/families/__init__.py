"""The kernel families every CPU backend shares, registered on import (one module per group: elementwise,
linalg, kv, llm, quant): each family's C signature, its op domains, the portable (scalar) C expressions
and template context, and the portable kernels every CPU backend emits (`PORTABLE`, rendered from
`codegen/templates/common/`). `packing.py` holds the packed layouts the family contracts name (gemm's f32
panels, qgather's row tables).

A backend adds only its own parts: the variants it emits beyond `PORTABLE`, and per family its vector
expressions, register tiles and packed block sizes, registered with `register_target_context` (usually
`extended_context`: the family's context here plus the target's).
"""
from __future__ import annotations

from ..kernels import KernelSpec
from . import elementwise, kv, linalg, llm, quant

# (family, variant, params) of every portable kernel, in the order backends list them.
PORTABLE: list[tuple[str, str, dict]] = [*linalg.PORTABLE, *elementwise.PORTABLE, *llm.PORTABLE, *kv.PORTABLE,
                                         *quant.PORTABLE]


def specs(target: str, kernels) -> list[KernelSpec]:
    """The specs of `target` for (family, variant, params) entries such as `PORTABLE`."""
    return [KernelSpec.make(target, family, variant, **params) for family, variant, params in kernels]
