"""tcc's user-facing errors.

Every error a user can provoke with bad input is a `TccError` whose message is one line naming the
problem (op type and node, tensor name, expected vs got shape, file and offset). The CLI prints it as
`tcc: error: <message>` and exits with `exit_code`; the Python API raises it unchanged.
"""
from __future__ import annotations


class TccError(Exception):
    """A clear, one-line error caused by the user's input or environment."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


class UnsupportedError(TccError):
    """The model uses an op, attribute or dtype tcc does not support (exit code 2)."""

    exit_code = 2


class ModelFormatError(TccError):
    """The model file is malformed or truncated (exit code 2)."""

    exit_code = 2


class IRError(TccError):
    """The IR is ill-formed: raised by `Graph.verify()` and by the IR text parser."""

    exit_code = 3


class ShapeError(TccError):
    """Shapes or dtypes do not fit an op (expected vs got)."""

    exit_code = 2


class BuildError(TccError):
    """The C++ toolchain or CMake failed or is missing."""

    exit_code = 4


class RuntimeFeedError(TccError):
    """Wrong input names, shapes or dtypes given to a compiled model."""

    exit_code = 2
