"""Check and run Metal kernels without a Mac: clang type-checks them through tcc's MSL shim, the SIMT emulator
runs them.

`msl_check(specs)` renders every spec and runs `clang++ -fsyntax-only -std=c++17 -include
runtime/metal/tcc_msl_shim.h` on it (the kernels only: TCC_METAL_HOST_CODE is 0 there); it returns
{kernel name: clang's diagnostics} for the ones that fail. Without clang the test skips with the reason on a
developer's machine and fails in CI (CI=true).

`build_metal(specs, tmpdir)` compiles the rendered .metal files as C++17 with -DTCC_SIMT (kernels, their
emulator entries and launchers) together with runtime/simt/metal_bridge.cpp and runtime/device_simt.cpp into
one shared library, cached by content under `<cache-dir>/simt`; the result is the CUDA harness's `SimtLib`
(`lib.run(name, *args)`, `lib.exec()`, `lib.set_seed`, `lib.order_dependence`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from tests.cuda import harness as cuda_harness

RUNTIME = cuda_harness.RUNTIME
BRIDGE = os.path.join(RUNTIME, "simt", "metal_bridge.cpp")
METAL_FILES = ("metal/tcc_msl.h", "metal/tcc_metal.h", "metal/tcc_metal_host.h", "metal/tcc_msl_shim.h",
               "simt/tcc_simt_metal.h", "simt/metal_bridge.cpp")
FLAGS = (*cuda_harness.SIMT_FLAGS, "-Wno-attributes", "-fsigned-char")  # MSL's char is signed
CLANG_FLAGS = ("-fsyntax-only", "-std=c++17", "-Wall", "-Wno-unknown-attributes", "-Wno-unused-function",
               "-Wno-unused-variable")


def _metal_digest() -> str:
    texts = []
    for rel in METAL_FILES:
        with open(os.path.join(RUNTIME, rel)) as f:
            texts.append(f.read())
    return cuda_harness._digest(cuda_harness._emulator_digest(), *texts)


def require_clang() -> str:
    """clang++'s path; without it the test skips with the reason (tests/conftest.py fails skips in CI)."""
    import pytest

    clang = shutil.which("clang++")
    if clang:
        return clang
    reason = "clang++ not found (install clang: apt-get install clang) to type-check the Metal kernels"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


# The runtime's own Metal sources (fixed kernels, not generated): msl_check checks them with every call.
RUNTIME_METAL = ("metal/select.metal",)


def msl_check(specs, jobs: int = 2, host: bool = False) -> dict[str, str]:
    """{kernel name: diagnostics} for every spec whose rendered source clang rejects through the MSL shim; with
    `host`, the macOS build's host half instead (the launchers without the kernels, neither TCC_SIMT nor the
    shim: what the Objective-C++ compile of the file sees, less Objective-C). The runtime's RUNTIME_METAL files
    are checked too (keyed by their path under runtime/)."""
    from tcc.codegen.kernels import render

    clang = require_clang()
    tmp = tempfile.mkdtemp(prefix="tcc-msl-")
    shim = [] if host else ["-include", os.path.join(RUNTIME, "metal", "tcc_msl_shim.h")]

    def one(spec):
        if isinstance(spec, str):  # a RUNTIME_METAL file, checked where it is
            name, path = spec, os.path.join(RUNTIME, spec)
        else:
            name, path = spec.name, os.path.join(tmp, spec.name + ".metal")
            with open(path, "w") as f:
                f.write(render(spec))
        cmd = [clang, *CLANG_FLAGS, "-I", RUNTIME, *shim, "-x", "c++", path]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return name, (proc.stdout + proc.stderr) if proc.returncode else ""

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return {name: err for name, err in pool.map(one, [*specs, *RUNTIME_METAL]) if err}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bridge_object(cache: str) -> str:
    obj = os.path.join(cache, f"metal_bridge-{_metal_digest()}.o")
    if not os.path.exists(obj):
        tmp = f"{obj}.{os.getpid()}.tmp.o"
        cuda_harness._run([*cuda_harness._compiler(), *FLAGS, "-O2", "-I", RUNTIME, "-c", BRIDGE, "-o", tmp])
        os.replace(tmp, obj)
    return obj


def _source(item, i: int) -> tuple[str, str]:
    """(file name, text) of a KernelSpec (rendered) or of raw MSL source text (kernels and an extern "C"
    launcher: the include and the emulator's entries are added as for a template)."""
    from tcc.backends.metal import msl
    from tcc.codegen.kernels import SOURCE_HEADERS, KernelSpec, render

    if isinstance(item, KernelSpec):
        return item.name + ".metal", render(item)
    if isinstance(item, str):
        return f"source{i}_{cuda_harness._digest(item)[:8]}.metal", msl.finish_source("", SOURCE_HEADERS[".metal"],
                                                                                         None, item)
    raise TypeError(f"cannot build {item!r}: give a KernelSpec or MSL source text")


def build_metal(specs, tmpdir: str | None = None) -> "cuda_harness.SimtLib":
    """Compile Metal kernel specs (or raw MSL sources) for the SIMT emulator into one shared library and load it."""

    tmpdir = str(tmpdir or tempfile.mkdtemp(prefix="tcc-metal-"))
    cache = cuda_harness._cache_dir()
    digest = _metal_digest()
    sources = [_source(item, i) for i, item in enumerate(specs)]
    objects, jobs = [], []
    for name, text in sources:
        obj = os.path.join(cache, f"{name[:-6]}-{cuda_harness._digest(digest, ' '.join(FLAGS), text)}.o")
        objects.append(obj)
        if not os.path.exists(obj):
            path = os.path.join(tmpdir, name)
            with open(path, "w") as f:
                f.write(text)
            jobs.append((obj, [*cuda_harness._compiler(), *FLAGS, "-I", RUNTIME, "-x", "c++", "-c", path, "-o",
                               f"{obj}.{os.getpid()}.tmp.o"]))
    cuda_harness._compile_all(jobs)
    device = cuda_harness._device_object(cache)
    bridge = _bridge_object(cache)
    lib_path = os.path.join(cache, f"metal-{cuda_harness._digest(*objects, device, bridge)}.so")
    if not os.path.exists(lib_path):
        tmp = f"{lib_path}.{os.getpid()}.tmp.so"
        cuda_harness._run([*cuda_harness._compiler(), "-shared", *objects, bridge, device, "-o", tmp, "-lpthread",
                           "-Wl,-Bsymbolic"])
        os.replace(tmp, lib_path)
    protos = {}
    for _, text in sources:
        protos.update(cuda_harness.prototypes(text))
    return cuda_harness.SimtLib(lib_path, protos)
