"""Run many arm kernel calls in one emulated process: the harness for the arm kernel tests.

A `Harness` collects calls (kernel spec + arguments). `build()` renders the kernels and one generated
`harness.cpp` whose main() makes every call in order on buffers laid out in one blob (each array 64-byte
aligned), and cross-compiles it with the production CMake path (`codegen/cmake.py`, the arm toolchain
file, a static executable). `run(cpu)` writes the blob, runs the binary once under qemu-aarch64 (`-cpu
cpu`), and returns every array argument as it is after its call, so one qemu launch covers hundreds of
cases. Pointer arguments are numpy arrays (None: nullptr); scalars are Python ints / floats typed by the
kernel's C signature; `POOL` passes a 2-thread pool, None a null pool.
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import subprocess

import numpy as np
import pytest
from tcc.backends.arm.target import QEMU, SYSROOT, cross_toolchain_missing, host_is_arm, make_target
from tcc.codegen.cmake import build_library
from tcc.codegen.kernels import write_if_changed, write_kernels

# Whole artifacts run under qemu: the cross toolchain is needed, and an arm host runs them natively instead.
MISSING = cross_toolchain_missing()
needs_emulation = pytest.mark.skipif(MISSING is not None or host_is_arm(),
                                     reason=f"arm cross toolchain absent: {MISSING}" if MISSING else
                                     "runs arm artifacts under emulation from a non-arm host")
# qemu's default CPU (dotprod, i8mm) and one without dotprod (the fallback paths).
CPUS = [None, "cortex-a53"]
CPU_IDS = ["qemu-max", "cortex-a53"]

ALIGN = 64
POOL = object()  # marker: the harness's 2-thread pool


class At:
    """An array argument passed as a pointer `offset` elements into it (a view whose first element is
    not the buffer's first, e.g. one with negative strides); its result is the whole array."""

    def __init__(self, array: np.ndarray, offset: int):
        self.array, self.offset = array, int(offset)


@contextlib.contextmanager
def shared_dir(tmp_path_factory, name: str):
    """A directory all pytest-xdist workers of a session share, held under an exclusive lock: the first
    worker builds in it, the others wait and find the build done."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / name
    path.mkdir(exist_ok=True)
    with open(path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def _params(signature: str) -> list[tuple[str, str]]:
    """[(C type, name)] of a C prototype."""
    inner = signature[signature.index("(") + 1: signature.rindex(")")]
    out = []
    for p in filter(None, (x.strip() for x in inner.split(","))):
        m = re.match(r"(.*?)(\w+)$", p)
        out.append((m.group(1).strip(), m.group(2)))
    return out


def _literal(ctype: str, value) -> str:
    if ctype == "float":
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            return "NAN" if math.isnan(v) else ("INFINITY" if v > 0 else "-INFINITY")
        return f"{v.hex()}f"
    if ctype in ("int64_t", "int32_t", "int"):
        return f"({ctype}){int(value)}LL"
    raise TypeError(f"no literal for C type {ctype}")


class Harness:
    def __init__(self):
        self.calls: list[tuple] = []  # (spec, args, [(arg index, blob offset, array, extra byte offset)])
        self.size = 0

    def call(self, spec, *args) -> int:
        """Queue spec(*args); returns the call's index (for `results[index][arg index]`)."""
        params = _params(spec.signature)
        if len(params) != len(args):
            raise TypeError(f"{spec.name} takes {len(params)} arguments, got {len(args)}")
        arrays = []
        for i, ((ctype, _), a) in enumerate(zip(params, args)):
            if isinstance(a, (np.ndarray, At)):
                if "*" not in ctype:
                    raise TypeError(f"{spec.name}: argument {i} ({ctype}) got an array")
                src = a.array if isinstance(a, At) else a
                arr = np.ascontiguousarray(src).reshape(src.shape)  # 0-d stays 0-d
                self.size = -(-self.size // ALIGN) * ALIGN
                arrays.append((i, self.size, arr, a.offset * arr.itemsize if isinstance(a, At) else 0))
                self.size += arr.nbytes
        self.calls.append((spec, args, arrays))
        return len(self.calls) - 1

    def _source(self) -> str:
        lines = ['#include "tcc_kernel.h"', '#include "tcc_arm.h"', "#include <cmath>", "#include <cstdio>", "#include <cstdlib>", "#include <cstring>", ""]
        for spec in sorted({c[0] for c in self.calls}, key=lambda s: s.name):
            lines.append(f'extern "C" {spec.signature};')
        lines += ["", "static void run_all(uint8_t* B, tcc_pool* pool) {"]
        for index, (spec, args, arrays) in enumerate(self.calls):
            offsets = {i: off + extra for i, off, _, extra in arrays}
            params = _params(spec.signature)
            c_args = []
            for i, ((ctype, _), a) in enumerate(zip(params, args)):
                if i in offsets:
                    c_args.append(f"({ctype})(B + {offsets[i]})")
                elif a is POOL:
                    c_args.append("pool")
                elif a is None:
                    c_args.append("nullptr")
                else:
                    c_args.append(_literal(ctype, a))
            lines.append(f"  {spec.name}({', '.join(c_args)});")
            lines.append(f'  if (tcc_error_pending()) {{ std::printf("call {index}: %s\\n", tcc_error_message()); '
                         "tcc_clear_error(); }")
        lines += ["}", "", "int main(int argc, char** argv) {",
                  "  if (argc != 3) return 2;",
                  f"  const size_t n = {max(self.size, 1)};",
                  f"  uint8_t* B = static_cast<uint8_t*>(std::aligned_alloc({ALIGN}, (n + {ALIGN - 1}) / {ALIGN} * {ALIGN}));",
                  '  FILE* f = std::fopen(argv[1], "rb");',
                  "  if (!f || std::fread(B, 1, n, f) != n) return 3;",
                  "  std::fclose(f);",
                  ('  std::printf("features: dotprod=%d i8mm=%d fp16=%d\\n", (int)tcc::arm::has_dotprod(), '
                   "(int)tcc::arm::has_i8mm(), (int)tcc::arm::has_fp16());"),
                  "  tcc_pool* pool = tcc_pool_create(2);",
                  "  run_all(B, pool);",
                  "  tcc_pool_destroy(pool);",
                  '  f = std::fopen(argv[2], "wb");',
                  "  if (!f || std::fwrite(B, 1, n, f) != n) return 4;",
                  "  std::fclose(f);",
                  "  return 0;", "}"]
        return "\n".join(lines) + "\n"

    def build(self, build_dir: str) -> str:
        """Cross-compile the kernels and the harness; returns the harness binary's path."""
        os.makedirs(build_dir, exist_ok=True)
        sources = write_kernels({c[0] for c in self.calls}, os.path.join(build_dir, "kernels"))
        main = os.path.join(build_dir, "harness.cpp")
        write_if_changed(main, self._source())
        build_library(sources, build_dir, make_target(), "arm_kernels", extra_executables={"harness": [main]},
                      jobs=2)
        self.exe = os.path.join(build_dir, "harness")
        self.dir = build_dir
        return self.exe

    def run(self, cpu: str | None = None, timeout: float = 600) -> list[dict[int, np.ndarray]]:
        """Run every call under qemu (`-cpu cpu`); per call, {arg index: the array after the call}."""
        blob = np.zeros(max(self.size, 1), np.uint8)
        for _, _, arrays in self.calls:
            for _, off, a, _ in arrays:
                blob[off:off + a.nbytes] = np.frombuffer(a.tobytes(), np.uint8)
        tag = cpu or "default"
        # per process: pytest-xdist workers share the build directory
        src, dst = (os.path.join(self.dir, f"{d}-{tag}-{os.getpid()}.bin") for d in ("in", "out"))
        blob.tofile(src)
        cmd = [QEMU, *(["-cpu", cpu] if cpu else []), "-L", SYSROOT, self.exe, src, dst]
        proc = subprocess.run(["nice", "-n", "19", *cmd], capture_output=True, text=True, timeout=timeout,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"harness under qemu ({tag}) exited {proc.returncode}: {proc.stderr[-2000:]}")
        self.messages = proc.stdout
        out = np.fromfile(dst, np.uint8)
        os.remove(src)
        os.remove(dst)
        results = []
        for _, _, arrays in self.calls:
            results.append({i: out[off:off + a.nbytes].view(a.dtype).reshape(a.shape) for i, off, a, _ in arrays})
        return results
