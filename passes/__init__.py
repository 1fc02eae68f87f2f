"""Passes: one file each, a registered function `(graph, ctx) -> None`.

`register_pass(name)` adds a pass to the registry; `pipelines.py` names the lists of passes;
`runner.run_pipeline` verifies, times and dumps around every pass.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

PASSES: dict[str, Callable] = {}


def register_pass(name: str):
    def deco(fn):
        if name in PASSES:
            raise ValueError(f"pass {name} registered twice")
        fn.pass_name = name
        PASSES[name] = fn
        return fn
    return deco


def load_all() -> None:
    """Import every pass module so its passes register."""
    for m in pkgutil.iter_modules(__path__):
        if m.name not in ("runner", "pipelines", "context"):
            importlib.import_module(f"{__name__}.{m.name}")
