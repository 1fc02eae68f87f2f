"""The weights blob: every constant the program reads, laid out once with the target's alignment."""
from __future__ import annotations

import numpy as np

ALIGN = 64  # bytes: one cache line, and the widest vector load any backend issues


class WeightsBuilder:
    """Lays constants out in one 64-byte aligned blob; each (constant, transform) is stored once."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.size = 0
        self.index: dict[tuple, int] = {}
        self.entries: list[dict] = []

    def add(self, key: tuple, data: np.ndarray, name: str) -> int:
        if key in self.index:
            return self.index[key]
        pad = (-self.size) % ALIGN
        if pad:
            self.chunks.append(b"\0" * pad)
            self.size += pad
        off = self.size
        raw = np.ascontiguousarray(data).tobytes()
        self.chunks.append(raw)
        self.size += len(raw)
        self.index[key] = off
        self.entries.append({"name": name, "offset": off, "bytes": len(raw), "dtype": str(data.dtype),
                             "shape": list(data.shape), "layout": key[1]})
        return off

    def blob(self) -> bytes:
        pad = (-self.size) % ALIGN
        return b"".join(self.chunks) + b"\0" * pad
