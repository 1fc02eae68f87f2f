"""The weights blob: every constant the program reads, laid out once with the target's alignment.

Written as it is built, to an unlinked temporary file with a running sha256, so a 7B model's 4 GB blob is
never in memory: each constant is copied out, and a mapped one's pages are released (frontend/mapped.py)."""
from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np

from ..frontend.mapped import release

ALIGN = 64  # bytes: one cache line, and the widest vector load any backend issues
_BLOCK = 16 << 20  # bytes copied at a time from a mapped constant: bounds the pages resident at once


class WeightsBlob:
    """The finished blob: its size, sha256 and the file holding it (freed with this object)."""

    def __init__(self, file, size: int, sha256: str):
        self.file, self.size, self.sha256 = file, size, sha256

    def __len__(self) -> int:
        return self.size

    def write_to(self, path: str) -> None:
        """Copy to `path` in the kernel (sendfile): no buffer of the blob's size in this process."""
        self.file.flush()
        with open(path, "wb") as out:
            done = 0
            while done < self.size:
                sent = os.sendfile(out.fileno(), self.file.fileno(), done, self.size - done)
                if sent <= 0:
                    raise OSError(f"weights.bin: short copy ({done} of {self.size} bytes)")
                done += sent

    def read(self) -> bytes:
        """All of it in memory (tests and small models only)."""
        self.file.seek(0)
        return self.file.read()


class WeightsBuilder:
    """Lays constants out in one 64-byte aligned blob; each (constant, transform) is stored once."""

    def __init__(self):
        self.file = tempfile.TemporaryFile(prefix="tcc-weights-")
        self.hash = hashlib.sha256()
        self.size = 0
        self.index: dict[tuple, int] = {}
        self.entries: list[dict] = []

    def _write(self, data) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def add(self, key: tuple, data: np.ndarray, name: str) -> int:
        if key in self.index:
            return self.index[key]
        pad = (-self.size) % ALIGN
        if pad:
            self._write(b"\0" * pad)
        off = self.size
        data = np.asarray(data)
        flat = np.ascontiguousarray(data).reshape(-1)
        step = max(1, _BLOCK // max(flat.itemsize, 1))
        for i in range(0, flat.size, step):  # a block at a time, releasing a mapped constant's pages as it goes
            part = flat[i:i + step]
            self._write(memoryview(part.view(np.uint8)))
            release(part)
        release(data)
        self.index[key] = off
        self.entries.append({"name": name, "offset": off, "bytes": int(data.nbytes), "dtype": str(data.dtype),
                             "shape": list(data.shape), "layout": key[1]})
        return off

    def blob(self) -> WeightsBlob:
        """Pad to the alignment and finish; the builder takes no more constants."""
        pad = (-self.size) % ALIGN
        if pad:
            self._write(b"\0" * pad)
        self.file.flush()
        return WeightsBlob(self.file, self.size, self.hash.hexdigest())
