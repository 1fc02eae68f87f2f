"""Backends: one package per target holding its description, kernel list and selection, weight packing
and toolchain flags. Generic passes never test the target; they ask the backend."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TccError

TARGETS = ("x86", "arm", "cuda", "metal")


@dataclass(frozen=True)
class Backend:
    name: str
    target: Any  # the target description (flags, features, toolchain)
    select: Callable  # select(family, variant=None, **params) -> KernelSpec | None
    pack: Callable  # pack(kind, array) -> (layout name, packed array)
    variants: tuple  # every KernelSpec this backend can emit


def get_backend(name: str) -> Backend:
    if name not in TARGETS:
        raise TccError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    module = importlib.import_module(f"{__package__}.{name}")
    make = getattr(module, "backend", None)
    if make is None:
        raise TccError(f"target {name!r} is not implemented yet; available now: x86")
    return make()
