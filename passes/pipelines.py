"""Named pipelines: the one place that says which passes run, in which order."""
from __future__ import annotations

PIPELINES: dict[str, list[str]] = {
    # Target-independent cleanup and fusion, then memory planning. Folding runs again after the
    # fusions because they leave constant subgraphs (e.g. scales) behind.
    "default": [
        "fold-constants",
        "eliminate-dead-code",
        "canonicalize",
        "fuse-norms",
        "fuse-attention",
        "fuse-activations",
        "fold-constants",
        "eliminate-dead-code",
        "lower-ops",
        "eliminate-dead-code",
        "plan-memory",
    ],
    # What `tcc ir` shows by default: everything but memory planning.
    "optimize": [
        "fold-constants",
        "eliminate-dead-code",
        "canonicalize",
        "fuse-norms",
        "fuse-attention",
        "fuse-activations",
        "fold-constants",
        "eliminate-dead-code",
    ],
    "cleanup": ["fold-constants", "eliminate-dead-code"],
}


def get_pipeline(name: str) -> list[str]:
    from ..errors import TccError

    if name not in PIPELINES:
        raise TccError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return list(PIPELINES[name])
