"""tools/make_llama_onnx.py as a module, for the tests that export random-weight LLaMA decoders with it (the
tool is a script, not part of the package)."""
from __future__ import annotations

import importlib.util
import os

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "make_llama_onnx.py")


def make_llama_onnx():
    spec = importlib.util.spec_from_file_location("make_llama_onnx", TOOL)
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    return mk
