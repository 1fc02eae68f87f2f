"""The runtime's device interface (runtime/tcc_device.h), CPU implementation: an execution context, device
memory (zeroed, aligned), copies in and out, and kernel errors recorded in the context and read at sync."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
from tcc.driver import compile_model

from tests.conftest import MODELS_DIR


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("device") / "mlp"
    compile_model(os.path.join(MODELS_DIR, "mlp.onnx"), str(out))
    lib = ctypes.CDLL(str(out / "libmodel.so"))
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, args, res in (("tcc_exec_create", [ctypes.c_int], vp), ("tcc_exec_destroy", [vp], None),
                            ("tcc_exec_threads", [vp], ctypes.c_int), ("tcc_exec_sync", [vp], ctypes.c_int),
                            ("tcc_exec_error", [vp], ctypes.c_char_p), ("tcc_exec_clear_error", [vp], None),
                            ("tcc_device_alloc", [vp, i64, ctypes.POINTER(ctypes.c_char_p)], vp),
                            ("tcc_device_free", [vp, vp, i64], None), ("tcc_device_copy_in", [vp, vp, vp, i64], None),
                            ("tcc_device_copy_out", [vp, vp, vp, i64], None),
                            ("tcc_device_host_visible", [], ctypes.c_int), ("tcc_raise", [ctypes.c_char_p], None)):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def test_device_memory_round_trip(lib):
    ex = lib.tcc_exec_create(3)
    try:
        assert lib.tcc_exec_threads(ex) == 3 and lib.tcc_device_host_visible() == 1
        n = 4096 + 12
        p = lib.tcc_device_alloc(ex, n, None)
        assert p and p % 64 == 0
        assert not np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(p)).any()  # zero-filled
        src = np.arange(n, dtype=np.uint8)
        dst = np.zeros(n, dtype=np.uint8)
        lib.tcc_device_copy_in(ex, p, src.ctypes.data, n)
        lib.tcc_device_copy_out(ex, dst.ctypes.data, p, n)
        assert (dst == src).all()
        lib.tcc_device_free(ex, p, n)
        assert lib.tcc_exec_sync(ex) == 0 and lib.tcc_exec_error(ex) == b""
    finally:
        lib.tcc_exec_destroy(ex)


def test_errors_outside_a_run_go_to_the_process_slot_not_a_context(lib):
    ex = lib.tcc_exec_create(1)
    try:
        lib.tcc_raise(b"bad index 7")  # no run in progress on this thread: the process-wide slot
        assert lib.tcc_exec_sync(None) == 1 and lib.tcc_exec_error(None) == b"bad index 7"
        assert lib.tcc_exec_sync(ex) == 0  # the context saw nothing
        lib.tcc_exec_clear_error(None)
        assert lib.tcc_exec_sync(None) == 0
    finally:
        lib.tcc_exec_destroy(ex)
