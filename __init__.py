"""tcc: a compiler-style runtime for (quantized) LLMs on edge devices.

ONNX is imported into a small IR, passes fold, fuse, quantize and plan memory, Jinja templates generate
the kernels and the model program, CMake builds them, and `tcc.load` runs the result.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import TccError, UnsupportedError  # noqa: E402

__all__ = ["TccError", "UnsupportedError", "load", "compile", "__version__"]


def __getattr__(name):
    # Heavy submodules load lazily so `import tcc` stays fast for the CLI.
    if name == "load":
        from .runtime.session import load
        return load
    if name == "compile":
        from .driver import compile_model
        return compile_model
    raise AttributeError(name)
