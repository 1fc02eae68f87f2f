"""Constants that live in files, not in memory: what lets a 7B model compile in a few GB of RSS.

- `MappedFile`: one read-only mapping of an ONNX external-data file; initializers are numpy views of it,
  so importing reads nothing and a weight's pages are only brought in when a pass reads it.
- `Spill`: arrays the passes make (quantized codes, rescaled weights) written to one sparse, unlinked
  temporary file and mapped back read-only, so the graph holds files, not copies.
- `release(arr)`: drops the pages of a mapped array from this process (madvise DONTNEED) once a pass is
  done with it. The pages stay in the page cache (the OS may evict them; reading again faults them back
  in), so this only lowers the RSS; without it every weight read once would stay resident until the
  graph is freed, and the peak RSS would grow with the model.
"""
from __future__ import annotations

import mmap
import os
import tempfile
import threading
import weakref

import numpy as np

PAGE = mmap.PAGESIZE
SPILL_CAPACITY = 1 << 40  # bytes of address space a Spill reserves (sparse: disk is used only as written)
_LOCK = threading.Lock()
_MAPS: list[tuple[int, int, weakref.ref]] = []  # (start address, length, mapping) of every mapping made here


def _register(mm: mmap.mmap, length: int) -> None:
    addr = np.frombuffer(mm, np.uint8, count=1).ctypes.data
    with _LOCK:
        _MAPS[:] = [m for m in _MAPS if m[2]() is not None]
        _MAPS.append((addr, length, weakref.ref(mm)))


def _span(arr: np.ndarray) -> tuple[int, int]:
    """[low, high) addresses of the bytes `arr` (any view) can touch."""
    lo = hi = arr.ctypes.data
    for n, s in zip(arr.shape, arr.strides):
        if n == 0:
            return lo, lo
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + arr.itemsize


def is_mapped(arr) -> bool:
    """Whether `arr` is a view of a mapping made here (its data is in a file, not in memory)."""
    return isinstance(arr, np.ndarray) and arr.dtype != object and _find(arr) is not None


def _find(arr: np.ndarray):
    lo, hi = _span(arr)
    with _LOCK:
        for start, length, ref in _MAPS:
            if start <= lo and hi <= start + length:
                mm = ref()
                if mm is not None:
                    return mm, lo - start, hi - start
    return None


def release(arr) -> None:
    """Drop the resident pages under `arr` if it is a view of a mapping made here; a no-op otherwise.
    Whole pages inside the span only, so a neighbour sharing an edge page keeps it."""
    if not isinstance(arr, np.ndarray) or arr.dtype == object or arr.size == 0:
        return
    found = _find(arr)
    if found is None:
        return
    mm, lo, hi = found
    start = -(-lo // PAGE) * PAGE
    end = hi // PAGE * PAGE
    if end > start:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)


class MappedFile:
    """A whole file mapped read-only; `array` gives views of it."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        if self.mm is not None:
            # Passes read a tensor once, front to back (passes/quantize.py slices by rows): read ahead, not
            # around a fault, so that a file larger than the page cache is read once, not twice.
            self.mm.madvise(mmap.MADV_SEQUENTIAL)
            _register(self.mm, self.size)

    def array(self, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0 or self.mm is None:
            return np.zeros(shape, dtype)
        arr = np.frombuffer(self.mm, dtype, count, offset).reshape(shape)
        return arr


class Spill:
    """Arrays written to one unlinked temporary file and mapped back read-only. The file is removed by the
    OS when the last view of it is freed."""

    def __init__(self):
        f = tempfile.TemporaryFile(prefix="tcc-spill-")
        try:
            os.ftruncate(f.fileno(), SPILL_CAPACITY)
            self.mm = mmap.mmap(f.fileno(), SPILL_CAPACITY, access=mmap.ACCESS_READ)
            self.fd = os.dup(f.fileno())
        finally:
            f.close()
        weakref.finalize(self, os.close, self.fd)
        _register(self.mm, SPILL_CAPACITY)
        self.end = 0
        self.lock = threading.Lock()

    def reserve(self, nbytes: int) -> int:
        """The offset of `nbytes` of the file for the caller alone (page aligned)."""
        with self.lock:
            off = self.end
            self.end = -(-(off + nbytes) // PAGE) * PAGE
            if self.end > SPILL_CAPACITY:
                raise MemoryError(f"spill file over {SPILL_CAPACITY} bytes")
        return off

    def write_at(self, off: int, arr: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], off + done)

    def view(self, off: int, dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.mm, dtype, count, off).reshape(shape)

    def put(self, arr: np.ndarray) -> np.ndarray:
        """A read-only mapped copy of `arr` (numeric); the caller drops its own copy."""
        arr = np.asarray(arr)
        if arr.size == 0 or arr.dtype == object:
            return arr
        off = self.reserve(arr.nbytes)
        self.write_at(off, arr)
        return self.view(off, arr.dtype, arr.shape)

    def rows(self, total: int) -> "RowWriter":
        """A writer of an array's rows, part by part (`total` rows in all): the whole is never in memory."""
        return RowWriter(self, total)


def spill_converted(spill: Spill, arr: np.ndarray, convert, slice_elements: int = 1 << 22) -> np.ndarray:
    """convert(arr) (an elementwise conversion, e.g. bf16 -> f32) written to `spill` a slice of rows at a
    time: the converted tensor is never whole in memory, and the source's mapped pages are released as
    they are read."""
    rows = arr.reshape(arr.shape[0] if arr.ndim else 1, -1)
    out = spill.rows(rows.shape[0])
    step = max(1, slice_elements // max(rows.shape[1], 1))
    for lo in range(0, rows.shape[0], step):
        out.write(convert(rows[lo:lo + step]))
        release(rows[lo:lo + step])
    return out.array().reshape(arr.shape)


class RowWriter:
    def __init__(self, spill: Spill, total: int):
        self.spill, self.total = spill, total
        self.off = self.pos = None
        self.row_bytes, self.tail, self.dtype = 0, (), None

    def write(self, part: np.ndarray) -> None:
        part = np.asarray(part)
        if self.off is None:
            self.tail, self.dtype = part.shape[1:], part.dtype
            self.row_bytes = int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize
            self.off = self.pos = self.spill.reserve(self.total * self.row_bytes)
        if part.shape[1:] != self.tail or part.dtype != self.dtype:
            raise ValueError(f"row part {part.dtype}{list(part.shape)} does not continue {self.dtype}{list(self.tail)}")
        self.spill.write_at(self.pos, part)
        self.pos += part.shape[0] * self.row_bytes

    def array(self) -> np.ndarray:
        if self.off is None or self.pos != self.off + self.total * self.row_bytes:
            raise ValueError(f"{self.total} rows expected, {0 if self.off is None else (self.pos - self.off) // max(self.row_bytes, 1)} written")
        return self.spill.view(self.off, self.dtype, (self.total, *self.tail))
