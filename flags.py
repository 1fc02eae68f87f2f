"""The one registry of debug switches.

Every switch is declared here with its environment variable, type, default and meaning; code reads
`flags.get("name")` and never `os.environ` directly. `tcc flags` lists them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Flag:
    name: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str


def _bool(s: str) -> bool:
    return s.strip().lower() not in ("", "0", "false", "no", "off")


FLAGS: dict[str, Flag] = {}
_overrides: dict[str, Any] = {}


def declare(name: str, default: Any, parse: Callable[[str], Any], help: str) -> Flag:
    flag = Flag(name, "TCC_" + name.upper().replace("-", "_"), default, parse, help)
    FLAGS[name] = flag
    return flag


def get(name: str) -> Any:
    flag = FLAGS[name]
    if name in _overrides:
        return _overrides[name]
    raw = os.environ.get(flag.env)
    return flag.default if raw is None else flag.parse(raw)


@contextlib.contextmanager
def overridden(name: str, value: Any):
    """Override a flag for the duration of a with-block (a CLI option that maps onto a flag)."""
    had, old = name in _overrides, _overrides.get(name)
    set_flag(name, value)
    try:
        yield
    finally:
        if had:
            _overrides[name] = old
        else:
            _overrides.pop(name, None)


def set_flag(name: str, value: Any) -> None:
    """Override a flag for this process (tests, CLI options)."""
    if name not in FLAGS:
        raise KeyError(f"unknown flag {name!r}; known: {', '.join(sorted(FLAGS))}")
    _overrides[name] = value


declare("debug", 0, int, "0 quiet; 1 pass timings; 2 + applied rewrites and refusals; 3 + IR after every pass")
declare("verify-each", True, _bool, "verify the IR after every pass (cheap; turn off only to profile the compiler)")
declare("keep-build", False, _bool, "copy the generated sources (model.cpp, kernels/) into <artifact>/src for inspection")
declare("cache-dir", os.path.join(os.path.expanduser("~"), ".cache", "tcc"), str,
        "where tcc keeps its build trees (one per artifact path)")
declare("cxx", "", str, "C++ compiler to use (default: CMake's choice)")
declare("nvcc", "", str, "nvcc for --target cuda (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)")
declare("build-jobs", os.cpu_count() or 1, int, "parallel jobs for the C++ build")
declare("threads", 0, int, "default number of runtime threads (0: all cores)")
declare("sanitize", "", lambda s: s.strip(),
        "build runtime, kernels and binaries with these sanitizers, e.g. address,undefined (testing only; a "
        "sanitized libmodel.so loads into Python only with LD_PRELOAD=$(c++ -print-file-name=libasan.so))")
declare("verify", True, _bool, "verify an artifact's files (sizes and SHA-256) when it is loaded; 0 checks sizes only "
        "(the CLI's --no-verify)")
declare("cuda-graph", True, _bool, "capture a CUDA artifact's decode step as a CUDA graph and replay it (read by "
        "the program at load; 0 runs every launch directly, for debugging: the CLI's --no-cuda-graph)")
declare("max-plan-bytes", 1 << 40, int, "the largest buffer or arena plan-memory accepts, in bytes (a bound on "
        "--max-dim mistakes)")
