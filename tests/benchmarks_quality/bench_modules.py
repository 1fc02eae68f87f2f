"""The benchmark scripts' shared modules (benchmarks/ is a folder of scripts, not a package): importable
with benchmarks/ on sys.path, as the scripts themselves import them."""
from __future__ import annotations

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, os.path.abspath(BENCH))

import gguf_export  # noqa: E402
import llama_cpp_peer  # noqa: E402
import llm_suite  # noqa: E402
import quality_suite  # noqa: E402

__all__ = ["gguf_export", "llama_cpp_peer", "llm_suite", "quality_suite"]
