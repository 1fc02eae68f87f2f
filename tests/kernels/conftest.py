"""Fixtures for the x86 kernel tests: every x86 kernel variant built once into one shared library.

`x86_kernel_lib` renders all of `tcc.backends.x86.kernels.VARIANTS`, builds them with the tcc runtime
linked in (`codegen/cmake.py: build_library`) and loads the result as a ctypes.CDLL subclass:
`lib.kernel(spec)` returns the kernel with argtypes derived from the family's C signature (pointers
are c_void_p: pass `array.ctypes.data`, and keep the arrays alive across the call); `lib.pool(n)` is
a context manager around tcc_pool_create/tcc_pool_destroy; `x86_pool` runs a test serially (null
pool) and with a 2-thread pool.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

import numpy as np
import pytest

from tcc.backends.x86.target import TARGET, host_supports
from tcc.codegen.cmake import build_library
from tcc.codegen.kernels import KernelSpec, write_kernels
from tests.ctypes_abi import argtypes_of

def cap_isa(lib, spec: KernelSpec, level: int) -> int:
    """Cap a run-time dispatched x86 kernel's ISA path through its <name>_isa (x86/_isa_dispatch.inc.j2: 0 AVX2,
    1 AVX-VNNI, 2 AVX-512; a large level: the best); returns the path in use."""
    fn = getattr(lib, spec.name + "_isa")
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn(level)


def ptr(a) -> int | None:
    """The address of a numpy array's first element (None for None), for c_void_p arguments."""
    return None if a is None else a.ctypes.data


def i64(values) -> np.ndarray:
    """A contiguous int64 array (shape / stride arguments)."""
    return np.ascontiguousarray(values, dtype=np.int64)


def elem_strides(a: np.ndarray) -> list[int]:
    """numpy byte strides as element strides (the kernel ABI's unit)."""
    assert all(s % a.itemsize == 0 for s in a.strides)
    return [s // a.itemsize for s in a.strides]


class KernelLib(ctypes.CDLL):
    """A loaded kernel library (a ctypes.CDLL): kernels by spec, plus the tcc runtime API with its
    argtypes declared (lib.tcc_pool_create, lib.tcc_error_message, ...)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path
        self.tcc_pool_create.argtypes, self.tcc_pool_create.restype = [ctypes.c_int], ctypes.c_void_p
        self.tcc_pool_destroy.argtypes, self.tcc_pool_destroy.restype = [ctypes.c_void_p], None
        self.tcc_pool_threads.argtypes, self.tcc_pool_threads.restype = [ctypes.c_void_p], ctypes.c_int
        self.tcc_parallel_for.restype = None
        self.tcc_error_pending.argtypes, self.tcc_error_pending.restype = [], ctypes.c_int
        self.tcc_error_message.argtypes, self.tcc_error_message.restype = [], ctypes.c_char_p
        self.tcc_clear_error.argtypes, self.tcc_clear_error.restype = [], None
        self._kernels: dict[str, ctypes._CFuncPtr] = {}

    @property
    def cdll(self) -> "KernelLib":
        return self

    def kernel(self, spec: KernelSpec):
        fn = self._kernels.get(spec.name)
        if fn is None:
            fn = getattr(self, spec.name)
            fn.argtypes = argtypes_of(spec.signature)
            fn.restype = None
            self._kernels[spec.name] = fn
        return fn

    def pool_create(self, n_threads: int) -> int:
        return self.tcc_pool_create(n_threads)

    def pool_destroy(self, pool: int | None) -> None:
        self.tcc_pool_destroy(pool)

    @contextlib.contextmanager
    def pool(self, n_threads: int):
        handle = self.pool_create(n_threads)
        try:
            yield handle
        finally:
            self.pool_destroy(handle)


@pytest.fixture(scope="session")
def x86_kernel_lib(tmp_path_factory) -> KernelLib:
    ok, reason = host_supports(TARGET)
    if not ok:
        pytest.skip(f"x86 kernels need AVX2/FMA: {reason}")
    from tcc.backends.x86.kernels import VARIANTS as DEFAULT_VARIANTS
    from tcc.backends.x86.tuning import corner_specs
    from tcc.codegen.kernels import TEMPLATE_DIR

    VARIANTS = [*DEFAULT_VARIANTS, *corner_specs()]  # and the extremes --tune may choose

    missing = sorted({s.template for s in VARIANTS if not os.path.exists(os.path.join(TEMPLATE_DIR, s.template))})
    if missing:  # one clear error instead of a Jinja traceback from deep inside the fixture
        raise FileNotFoundError(f"x86 VARIANTS use templates that do not exist: {', '.join(missing)}")
    # One build for all pytest-xdist workers: the first takes the lock and builds, the others wait and
    # load the same library (building 200+ kernels twice would double the cold CI time).
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    build_dir = shared / "x86_kernels"
    build_dir.mkdir(exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sources = write_kernels(VARIANTS, str(build_dir / "kernels"))
        path = build_library(sources, str(build_dir), TARGET, "tcc_x86_kernels")
    return KernelLib(path)


@pytest.fixture(scope="session")
def x86_pool2(x86_kernel_lib):
    """A 2-thread pool shared by the session (the machine under test has 2 cores)."""
    with x86_kernel_lib.pool(2) as pool:
        yield pool


@pytest.fixture(params=["serial", "pool2"])
def x86_pool(request, x86_kernel_lib):
    """Each test runs with a null pool and with the 2-thread pool."""
    return None if request.param == "serial" else request.getfixturevalue("x86_pool2")


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)
