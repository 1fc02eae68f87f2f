"""Run CUDA kernels without a GPU: build them with the SIMT emulator, call their launchers, compile with nvcc.

`build_kernels(items, tmpdir)` compiles rendered kernel specs (`codegen.kernels.render`) or raw `.cu` sources
(text, or paths of `.cu` files) as C++17 with `-DTCC_SIMT` (runtime/simt/tcc_simt.h) together with the
emulated device runtime (runtime/device_simt.cpp) into one shared library, cached by content hash under
`<cache-dir>/simt`. The result is a `SimtLib`: `lib.fn(name)` is a launcher with ctypes argtypes taken from its
`extern "C"` prototype (pointers are `c_void_p`: pass numpy arrays, the emulated device memory is host memory);
`lib.run(name, *args)` creates an execution context, calls the launcher with it as the last argument, syncs
and returns the context's error message ("" when none); `lib.set_seed(s)` turns on the shuffled schedule.

`nvcc_compile(items, archs)` compiles the same sources with nvcc for real GPUs and checks with
`cuobjdump --list-elf` that every object holds SASS for every arch. Without nvcc it skips with the reason on a
developer's machine and fails in CI (CI=true).

On a GPU host, `TCC_CUDA_TEST_DEVICE=gpu` runs the same tests on the GPU (benchmarks/gpu/check.py does): the
library is built by nvcc (`-arch=native`, or TCC_CUDA_TEST_ARCH) with runtime/device_cuda.cu, and each launcher
call lets the GPU read and write the callers' numpy arrays in place: directly where the GPU can access pageable
host memory (HMM/ATS), else by pinning (cudaHostRegister) the host mappings that hold the call's pointer
arguments for the call and synchronizing before releasing them. The emulator's knobs (set_seed, ...) are
no-ops there. A test-only switch (an environment variable, like CI): the default stays the emulator.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from tests.ctypes_abi import param_argtypes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNTIME = os.path.join(REPO, "runtime")
DEVICE_SIMT = os.path.join(RUNTIME, "device_simt.cpp")
# Every file an emulated build depends on besides the kernels themselves (the cache key).
EMULATOR_FILES = ("tcc_cuda.h", "tcc_cuda_ptx.h", "tcc_device.h", "device_simt.cpp", "simt/tcc_simt.h")
SIMT_FLAGS = ("-std=c++17", "-O1", "-fPIC", "-DTCC_SIMT", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
              "-Wno-unused-variable", "-Wno-unused-but-set-variable")
NVCC_FLAGS = ("-std=c++17", "-O3", "--expt-relaxed-constexpr")
DEVICE = os.environ.get("TCC_CUDA_TEST_DEVICE", "simt")  # "gpu": nvcc-built kernels on this host's GPU

_PROTOTYPE = re.compile(r'extern\s+"C"\s+([\w\s\*]+?)\s*\b(\w+)\s*\(([^)]*)\)\s*[;{]')


class SimtError(RuntimeError):
    """A build of emulated kernels failed (the compiler's output is in the message)."""


def prototypes(source: str) -> dict[str, list]:
    """The `extern "C"` functions a source declares or defines: name -> argtypes."""
    return {name: param_argtypes(params) for _, name, params in _PROTOTYPE.findall(source)}


def _sources(items, tmpdir: str) -> list[tuple[str, str]]:
    """(file name, text) for each item: a KernelSpec (rendered), a path to a .cu file, or .cu source text."""
    from tcc.codegen.kernels import KernelSpec, render

    out = []
    for i, item in enumerate(items):
        if isinstance(item, KernelSpec):
            out.append((item.name + ".cu", render(item)))
        elif isinstance(item, str) and "\n" not in item and item.endswith(".cu") and os.path.exists(item):
            with open(item) as f:
                out.append((os.path.basename(item), f.read()))
        elif isinstance(item, str):
            out.append((f"source{i}.cu", item))
        else:
            raise TypeError(f"cannot build {item!r}: give a KernelSpec, a .cu path or .cu source text")
    return out


def _cache_dir() -> str:
    from tcc import flags

    path = os.path.join(flags.get("cache-dir"), "simt")
    os.makedirs(path, exist_ok=True)
    return path


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _emulator_digest() -> str:
    texts = []
    for rel in EMULATOR_FILES:
        with open(os.path.join(RUNTIME, rel)) as f:
            texts.append(f.read())
    return _digest(*texts)


def _compiler() -> list[str]:
    from tcc import flags

    cxx = flags.get("cxx") or os.environ.get("CXX") or "g++"
    launcher = shutil.which("ccache")
    return [launcher, cxx] if launcher else [cxx]


def _run(cmd: list[str], cwd: str | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SimtError(f"{' '.join(cmd[:3])} ... failed:\n{proc.stdout}{proc.stderr}")


def _device_object(cache: str) -> str:
    """runtime/device_simt.cpp compiled once per content (every emulated library links it)."""
    obj = os.path.join(cache, f"device_simt-{_emulator_digest()}.o")
    if not os.path.exists(obj):
        tmp = f"{obj}.{os.getpid()}.tmp.o"
        _run([*_compiler(), *SIMT_FLAGS, "-O2", "-I", RUNTIME, "-c", DEVICE_SIMT, "-o", tmp])
        os.replace(tmp, obj)
    return obj


def _kernel_object(cache: str, emulator: str, name: str, text: str, src_dir: str) -> tuple[str, list[str] | None]:
    """The cached object of one source, and the command that builds it when it is not there yet."""
    obj = os.path.join(cache, f"{os.path.splitext(name)[0]}-{_digest(emulator, ' '.join(SIMT_FLAGS), name, text)}.o")
    if os.path.exists(obj):
        return obj, None
    path = os.path.join(src_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return obj, [*_compiler(), *SIMT_FLAGS, "-I", RUNTIME, "-x", "c++", "-c", path, "-o", f"{obj}.{os.getpid()}.tmp.o"]


def _compile_all(jobs: list[tuple[str, list[str]]]) -> None:
    """Run the compiles a few at a time (each source is its own translation unit, cached on its own)."""
    from concurrent.futures import ThreadPoolExecutor

    from tcc import flags

    def one(job):
        obj, cmd = job
        _run(cmd)
        os.replace(cmd[-1], obj)

    with ThreadPoolExecutor(max_workers=max(1, int(flags.get("build-jobs")))) as pool:
        list(pool.map(one, jobs))


def build_kernels(items, tmpdir: str | None = None) -> "SimtLib":
    """Compile CUDA kernel specs or sources with the SIMT emulator into one shared library and load it
    (with TCC_CUDA_TEST_DEVICE=gpu: with nvcc, for this host's GPU)."""
    tmpdir = tmpdir or tempfile.mkdtemp(prefix="tcc-simt-")
    sources = _sources(items, str(tmpdir))
    if DEVICE == "gpu":
        return _build_gpu(sources, str(tmpdir))
    if DEVICE != "simt":
        raise SimtError(f"TCC_CUDA_TEST_DEVICE={DEVICE!r}: use simt (the default) or gpu")
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise SimtError(f"two sources named alike in one build: {sorted(n for n in names if names.count(n) > 1)}")
    cache = _cache_dir()
    emulator = _emulator_digest()
    src_dir = os.path.join(str(tmpdir), "simt-src")
    os.makedirs(src_dir, exist_ok=True)
    objects, jobs = [], []
    for name, text in sources:
        obj, cmd = _kernel_object(cache, emulator, name, text, src_dir)
        objects.append(obj)
        if cmd:
            jobs.append((obj, cmd))
    _compile_all(jobs)
    device = _device_object(cache)
    lib_path = os.path.join(cache, f"kernels-{_digest(*objects, device)}.so")
    if not os.path.exists(lib_path):
        tmp = f"{lib_path}.{os.getpid()}.tmp.so"
        # -Bsymbolic: the library's own runtime, even if another loaded library exports tcc_exec_create & co.
        _run([*_compiler(), "-shared", *objects, device, "-o", tmp, "-lpthread", "-Wl,-Bsymbolic"])
        os.replace(tmp, lib_path)
    protos = {}
    for _, text in sources:
        protos.update(prototypes(text))
    return SimtLib(lib_path, protos)


class Exec:
    """An emulated execution context (tcc_exec*)."""

    def __init__(self, lib: "SimtLib"):
        self.lib = lib
        self.handle = lib.tcc_exec_create(1)

    def sync(self) -> str:
        """tcc_exec_sync: the error message since the last clear ("" when none)."""
        if self.lib.tcc_exec_sync(self.handle) == 0:
            return ""
        return self.lib.tcc_exec_error(self.handle).decode()

    def clear(self) -> None:
        self.lib.tcc_exec_clear_error(self.handle)

    def close(self) -> None:
        if self.handle:
            self.lib.tcc_exec_destroy(self.handle)
            self.handle = None


def _arg(a):
    if isinstance(a, np.ndarray):
        if not a.flags.c_contiguous:
            raise ValueError("pass C-contiguous arrays to emulated kernels")
        return a.ctypes.data
    return a


class SimtLib(ctypes.CDLL):
    """A library of emulated CUDA launchers plus the emulated device runtime."""

    def __init__(self, path: str, protos: dict[str, list]):
        super().__init__(path)
        self.protos = protos
        self.tcc_exec_create.restype = ctypes.c_void_p
        self.tcc_exec_create.argtypes = [ctypes.c_int]
        for name in ("tcc_exec_destroy", "tcc_exec_clear_error"):
            getattr(self, name).argtypes = [ctypes.c_void_p]
        self.tcc_exec_sync.argtypes = [ctypes.c_void_p]
        self.tcc_exec_error.argtypes = [ctypes.c_void_p]
        self.tcc_exec_error.restype = ctypes.c_char_p
        self.tcc_simt_set_seed.argtypes = [ctypes.c_uint64]
        self.tcc_simt_set_fast_fragments.argtypes = [ctypes.c_int]
        self.tcc_simt_set_watchdog.argtypes = [ctypes.c_int]

    def fn(self, name: str):
        """The launcher `name` with argtypes from its prototype (the exec is its last argument)."""
        if name not in self.protos:
            raise KeyError(f"no extern \"C\" launcher {name} in the built sources")
        f = getattr(self, name)
        f.argtypes = self.protos[name]
        f.restype = None
        return f

    @contextlib.contextmanager
    def exec(self):
        ex = Exec(self)
        try:
            yield ex
        finally:
            ex.close()

    def call(self, ex: Exec, name: str, *args) -> None:
        """Call launcher `name` on context `ex` (numpy arrays are passed as device pointers)."""
        self.fn(name)(*(_arg(a) for a in args), ex.handle)

    def run(self, name: str, *args) -> str:
        """Call launcher `name` on a fresh context, sync, and return its error message ("" when none)."""
        with self.exec() as ex:
            self.call(ex, name, *args)
            return ex.sync()

    def order_dependence(self, name: str, *args, seeds=(0, 1, 2)) -> str:
        """Run launcher `name` once per seed (0: in order, others: shuffled schedules) on fresh copies of the
        array arguments; "" when every run succeeds with bitwise-equal arrays, else what differs. A difference
        is a race (a read of memory another thread writes without a barrier between) or an order-dependent
        reduction (float atomics): either way the GPU's result would vary from run to run."""
        results = []
        try:
            for seed in seeds:
                self.set_seed(seed)
                copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
                err = self.run(name, *copies)
                if err:
                    return f"seed {seed}: {err}"
                results.append([c for c in copies if isinstance(c, np.ndarray)])
        finally:
            self.set_seed(0)
        for seed, arrays in zip(seeds[1:], results[1:]):
            for i, (a, b) in enumerate(zip(results[0], arrays)):
                if a.tobytes() != b.tobytes():
                    return (f"{name}: array argument {i} differs between seed {seeds[0]} and seed {seed} "
                            f"({int((a != b).sum())} elements)")
        return ""

    def set_fast_fragments(self, on: bool) -> None:
        """Whether the mma fallback reads the other lanes' registers in one exchange (default) or by shuffles."""
        self.tcc_simt_set_fast_fragments(int(on))

    def set_watchdog(self, seconds: int) -> None:
        """Fail a launch after this many seconds without a fiber switch (a spin-wait; default 30)."""
        self.tcc_simt_set_watchdog(seconds)

    def set_seed(self, seed: int) -> None:
        """0: threads run in order between barriers; otherwise a shuffled order drawn from the seed."""
        self.tcc_simt_set_seed(seed)


# -- the same tests on a real GPU (TCC_CUDA_TEST_DEVICE=gpu) ----------------------------------------------
# Built into every GPU test library: no-op stand-ins for the emulator's knobs, and the host-memory helpers.
GPU_HELPERS = r"""
#include <cuda_runtime.h>
#include <stdint.h>
extern "C" {
void tcc_simt_set_seed(uint64_t) {}
void tcc_simt_set_fast_fragments(int) {}
void tcc_simt_set_watchdog(int) {}
int tcc_test_pageable_access(void) {
  int dev = 0, on = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  return cudaDeviceGetAttribute(&on, cudaDevAttrPageableMemoryAccess, dev) == cudaSuccess ? on : 0;
}
// 0 registered, 1 already registered (leave it), else the CUDA error code.
int tcc_test_host_register(void* p, size_t n) {
  cudaError_t e = cudaHostRegister(p, n, cudaHostRegisterMapped | cudaHostRegisterPortable);
  if (e == cudaErrorInvalidValue || e == cudaErrorNotSupported) {
    cudaGetLastError();
    e = cudaHostRegister(p, n, cudaHostRegisterMapped | cudaHostRegisterPortable | cudaHostRegisterReadOnly);
  }
  if (e == cudaErrorHostMemoryAlreadyRegistered) { cudaGetLastError(); return 1; }
  return e == cudaSuccess ? 0 : int(e);
}
void tcc_test_host_unregister(void* p) { cudaHostUnregister(p); cudaGetLastError(); }
int tcc_test_device_sync(void) { return int(cudaDeviceSynchronize()); }
}
"""


def _build_gpu(sources: list[tuple[str, str]], tmpdir: str) -> "GpuLib":
    """nvcc objects (cached by content and arch) of the sources, runtime/device_cuda.cu and the helpers, linked
    into one shared library for this host's GPU."""
    nvcc = require_nvcc()
    arch = os.environ.get("TCC_CUDA_TEST_ARCH", "native")
    flags = [*NVCC_FLAGS, f"-arch={arch}", "-Xcompiler", "-fPIC", "-I", RUNTIME]
    cache = _cache_dir()
    headers = _emulator_digest()
    with open(os.path.join(RUNTIME, "device_cuda.cu")) as f:
        items = [*sources, ("device_cuda.cu", f.read()), ("gpu_helpers.cu", GPU_HELPERS)]
    objects, pending = [], []
    for name, text in items:
        obj = os.path.join(cache, f"gpu-{_digest(headers, ' '.join(flags), name, text)}.o")
        objects.append(obj)
        if not os.path.exists(obj):
            path = os.path.join(tmpdir, name)
            with open(path, "w") as f:
                f.write(text)
            pending.append((obj, [nvcc, *flags, "-c", path, "-o", f"{obj}.{os.getpid()}.tmp.o"]))
    _compile_all(pending)
    lib_path = os.path.join(cache, f"gpu-kernels-{_digest(*objects)}.so")
    if not os.path.exists(lib_path):
        tmp = f"{lib_path}.{os.getpid()}.tmp.so"
        _run([nvcc, "-shared", f"-arch={arch}", *objects, "-o", tmp])
        os.replace(tmp, lib_path)
    protos = {}
    for _, text in sources:
        protos.update(prototypes(text))
    return GpuLib(lib_path, protos)


def _host_mappings(pointers) -> list[tuple[int, int]]:
    """The (start, size) of each /proc/self/maps mapping holding one of the pointers."""
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            if any(lo <= p < hi for p in pointers):
                spans.append((lo, hi - lo))
    return spans


class _GpuLauncher:
    """A launcher of a GpuLib: the call's pointer arguments made visible to the GPU for the call (pinned
    where the GPU cannot read pageable memory), then a device-wide sync so the arrays hold the results."""

    def __init__(self, lib: "GpuLib", func):
        object.__setattr__(self, "_lib", lib)
        object.__setattr__(self, "_func", func)

    def __getattr__(self, name):
        return getattr(self._func, name)

    def __setattr__(self, name, value):  # argtypes / restype go to the ctypes function
        setattr(self._func, name, value)

    def __call__(self, *args):
        lib, func = self._lib, self._func
        types = func.argtypes or []
        ptrs = {int(a) for i, a in enumerate(args)
                if isinstance(a, int) and a and (types[i] is ctypes.c_void_p if i < len(types) else a >= 1 << 16)}
        pinned = []
        if not lib.pageable:
            for start, size in _host_mappings(ptrs):
                err = lib.tcc_test_host_register(ctypes.c_void_p(start), ctypes.c_size_t(size))
                if err not in (0, 1):
                    raise SimtError(f"cudaHostRegister of a {size}-byte host mapping failed (CUDA error {err})")
                if err == 0:
                    pinned.append(start)
        try:
            result = func(*args)
        finally:
            lib.tcc_test_device_sync()
            for start in pinned:
                lib.tcc_test_host_unregister(ctypes.c_void_p(start))
        return result


class GpuLib(SimtLib):
    """The kernels built by nvcc for this host's GPU behind SimtLib's interface (the launchers wrapped)."""

    def __init__(self, path: str, protos: dict[str, list]):
        super().__init__(path, protos)
        self.tcc_test_host_register.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.tcc_test_host_unregister.argtypes = [ctypes.c_void_p]
        self.pageable = bool(self.tcc_test_pageable_access())

    def __getattr__(self, name):
        func = super().__getattr__(name)
        if name in self.protos:
            func = _GpuLauncher(self, func)
            setattr(self, name, func)
        return func


# -- nvcc ----------------------------------------------------------------------------------------------------
def nvcc_path() -> str | None:
    from tcc.backends.cuda.target import find_nvcc

    return find_nvcc()


def require_nvcc() -> str:
    """nvcc's path; without it the test skips with the reason (tests/conftest.py fails skips in CI)."""
    import pytest

    nvcc = nvcc_path()
    if nvcc:
        return nvcc
    reason = "nvcc not found (install the CUDA toolkit to compile the kernels for sm_80/sm_90)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def cuobjdump_path(nvcc: str) -> str | None:
    """cuobjdump: on PATH, beside nvcc, or from the `nvidia-cuda-cuobjdump` wheel (nvidia/cu*/bin)."""
    candidates = [shutil.which("cuobjdump"), os.path.join(os.path.dirname(os.path.realpath(nvcc)), "cuobjdump")]
    with open(nvcc, "rb") as f:  # /usr/local/bin/nvcc may be a wrapper script naming the real toolkit
        head = f.read(4096)
    for real in re.findall(rb"(/[\w./+-]+)/nvcc\b", head):
        candidates.append(os.path.join(real.decode(), "cuobjdump"))
    try:
        import nvidia

        for root in nvidia.__path__:
            candidates += [os.path.join(root, d, "bin", "cuobjdump") for d in sorted(os.listdir(root))]
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def cuobjdump(args: list[str], nvcc: str) -> str:
    tool = cuobjdump_path(nvcc)
    if tool is None:
        raise SimtError("cuobjdump not found (it checks the SASS in nvcc's objects): pip install nvidia-cuda-cuobjdump")
    env = dict(os.environ)
    nvdisasm = os.path.join(os.path.dirname(tool), "nvdisasm")  # -sass runs nvdisasm (nvidia-cuda-nvdisasm)
    if os.path.isfile(nvdisasm):
        env["NVDISASM_PATH"] = os.path.dirname(tool)
    proc = subprocess.run([tool, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SimtError(f"cuobjdump {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def nvcc_compile(items, archs=("sm_80", "sm_90"), tmpdir: str | None = None, jobs: int = 2) -> dict[str, str]:
    """Compile each source with nvcc (`-c`, SASS for every arch, cached by content); check the SASS is there.

    Returns {source file name: object path}. Raises SimtError when nvcc fails or an arch's SASS is missing."""
    nvcc = require_nvcc()
    tmpdir = tmpdir or tempfile.mkdtemp(prefix="tcc-nvcc-")
    sources = _sources(items, str(tmpdir))
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in archs]
    cache = _cache_dir()
    headers = _emulator_digest()
    objects, pending = {}, []
    for name, text in sources:
        obj = os.path.join(cache, f"nvcc-{_digest(headers, ' '.join(gencode), text)}.o")
        objects[name] = obj
        if not os.path.exists(obj):
            path = os.path.join(str(tmpdir), name)
            with open(path, "w") as f:
                f.write(text)
            pending.append((path, obj))
    procs = []
    for i in range(0, len(pending), max(1, jobs)):
        batch = pending[i:i + max(1, jobs)]
        procs = [(subprocess.Popen([nvcc, *NVCC_FLAGS, *gencode, "-I", RUNTIME, "-c", path, "-o", obj + ".tmp"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), path, obj)
                 for path, obj in batch]
        for proc, path, obj in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SimtError(f"nvcc failed on {os.path.basename(path)}:\n{out}")
            os.replace(obj + ".tmp", obj)
    for name, obj in objects.items():
        listing = cuobjdump(["--list-elf", obj], nvcc)
        missing = [a for a in archs if f".{a}." not in listing]
        if missing:
            raise SimtError(f"{name}: no SASS for {', '.join(missing)} in the object:\n{listing}")
    return objects


def sass(obj: str) -> str:
    """The disassembled machine code of an nvcc object (look for HMMA, LDSM, LDGSTS in tensor-core kernels)."""
    return cuobjdump(["-sass", obj], require_nvcc())
