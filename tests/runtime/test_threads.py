"""Models shared by threads: a Session serializes its calls (Python lock), and the C API serializes calls on
one model (a mutex inside struct tcc_model), keeps tcc_model_last_error per thread and kernel errors per
model. Every output is compared with the same input's output computed alone; every error with its own
thread's cause."""
from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tcc
from tcc.driver import compile_model
from tcc.runtime.session import _Tensor, bind_c_api
from tests.conftest import MODELS_DIR

MLP = os.path.join(MODELS_DIR, "mlp.onnx")
N_THREADS = 4
RUNS = 300  # per thread: 1,200 outputs, as in the report of wrong results


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("threads") / "mlp"
    compile_model(MLP, str(out), max_dims={"batch": 8})
    return str(out)


@pytest.fixture(scope="module")
def gather_dir(tmp_path_factory):
    """y[n, 4] = table[idx[n]]: indices from the input, so a bad index raises a kernel error at run time."""
    d = tmp_path_factory.mktemp("threads")
    table = np.arange(20, dtype=np.float32).reshape(5, 4)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    g = helper.make_graph([helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)], "g", [idx], [y],
                          [numpy_helper.from_array(table, "table")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(d / "gather.onnx"))
    compile_model(str(d / "gather.onnx"), str(d / "gather"), max_dims={"n": 1 << 16})
    return str(d / "gather")


def _inputs(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(1, 9)), 32)).astype(np.float32) for _ in range(count)]


def _in_threads(fn, n: int = N_THREADS) -> list:
    """Run fn(thread_index) in n threads started together; re-raise the first exception."""
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def body(t):
        try:
            barrier.wait()
            results[t] = fn(t)
        except BaseException as e:  # noqa: BLE001  (reported in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=body, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


def test_session_shared_by_threads(mlp_dir):
    sess = tcc.load(mlp_dir, threads=2)
    inputs = [_inputs(t, RUNS) for t in range(N_THREADS)]
    want = [[sess.run({"x": x})["probs"] for x in xs] for xs in inputs]  # one thread at a time

    def work(t):
        return [sess.run({"x": x})["probs"] for x in inputs[t]]

    got = _in_threads(work)
    wrong = sum(not np.array_equal(g, w) for t in range(N_THREADS) for g, w in zip(got[t], want[t]))
    assert wrong == 0, f"{wrong} of {N_THREADS * RUNS} outputs differ from the same input run alone"


class _Api:
    """The C API of an artifact's libmodel.so, through ctypes (which releases the GIL in every call, so
    the threads below call into C at the same time)."""

    def __init__(self, out_dir: str):
        lib = bind_c_api(ctypes.CDLL(os.path.join(out_dir, "libmodel.so")))
        self.lib, self.weights = lib, os.path.join(out_dir, "weights.bin").encode()

    def load(self, threads: int = 2) -> int:
        m = self.lib.tcc_model_load(self.weights, threads)
        assert m, self.lib.tcc_model_last_error()
        return m

    def run(self, m: int, x: np.ndarray, dtype_code: int) -> tuple[int, np.ndarray | None]:
        """rc and (on success) a copy of the single output, which must be taken before another run."""
        t_in = _Tensor()
        t_in.data, t_in.ndim, t_in.dtype = x.ctypes.data, x.ndim, dtype_code
        for d, s in enumerate(x.shape):
            t_in.shape[d] = s
        t_out = _Tensor()
        rc = self.lib.tcc_model_run(m, ctypes.byref(t_in), 1, ctypes.byref(t_out), 1)
        if rc != 0:
            return rc, None
        shape = tuple(t_out.shape[d] for d in range(t_out.ndim))
        buf = (ctypes.c_float * int(np.prod(shape))).from_address(t_out.data)
        return rc, np.frombuffer(buf, np.float32).reshape(shape).copy()


F32, I64 = 0, 3


def test_c_api_one_model_many_threads(mlp_dir):
    api = _Api(mlp_dir)
    m = api.load(threads=2)
    try:
        inputs = [_inputs(10 + t, RUNS) for t in range(N_THREADS)]
        want = [[api.run(m, x, F32)[1] for x in xs] for xs in inputs]
        api.lib.tcc_model_set_profiling(m, 1)

        def work(t):
            out = []
            for x in inputs[t]:
                api.lib.tcc_model_lock(m)  # the outputs live in the model until its next run
                try:
                    rc, y = api.run(m, x, F32)
                finally:
                    api.lib.tcc_model_unlock(m)
                assert rc == 0, api.lib.tcc_model_last_error()
                out.append(y)
            return out

        got = _in_threads(work)
        wrong = sum(not np.array_equal(g, w) for t in range(N_THREADS) for g, w in zip(got[t], want[t]))
        assert wrong == 0, f"{wrong} of {N_THREADS * RUNS} outputs differ from the same input run alone"
        # the profile counters are updated under the model's lock: no increment lost
        assert api.lib.tcc_model_profile_calls(m, 0) == N_THREADS * RUNS
    finally:
        api.lib.tcc_model_free(m)


def test_c_api_one_model_per_thread(mlp_dir):
    api = _Api(mlp_dir)
    models = [api.load(threads=2) for _ in range(N_THREADS)]
    try:
        inputs = [_inputs(20 + t, RUNS // 2) for t in range(N_THREADS)]
        want = [[api.run(models[0], x, F32)[1] for x in xs] for xs in inputs]
        got = _in_threads(lambda t: [api.run(models[t], x, F32) for x in inputs[t]])
        assert all(rc == 0 for t in range(N_THREADS) for rc, _ in got[t])
        assert all(np.array_equal(y, w) for t in range(N_THREADS) for (_, y), w in zip(got[t], want[t]))
    finally:
        for m in models:
            api.lib.tcc_model_free(m)


def test_kernel_errors_and_last_error_stay_with_their_thread(gather_dir):
    """Threads 0 and 1 run good indices, thread 2 an index out of range (a kernel error, raised on pool
    workers too), thread 3 a feed of the wrong rank (a check error), thread 4 other good indices without
    holding the model's lock: each on its own model of the same library, and on a model shared by all. No
    good run may fail or see another run's output, no bad run may pass, and every error text is the
    thread's own."""
    api = _Api(gather_dir)
    n = 1 << 15
    good = np.arange(n, dtype=np.int64) % 5
    bad = good.copy()
    bad[-1] = 7  # the last chunk: a pool worker's
    wrong_rank = good.reshape(1, n)
    other = good[::-1].copy()
    want = np.arange(20, dtype=np.float32).reshape(5, 4)[good]
    n_threads = 5
    own = [api.load(threads=2) for _ in range(n_threads)]
    shared = api.load(threads=2)
    try:
        def work(t):
            fails = []
            for r in range(150):
                m = shared if r % 2 else own[t]
                if t < 2:
                    api.lib.tcc_model_lock(m)  # the output is read after the run: no other run in between
                    try:
                        rc, y = api.run(m, good, I64)
                    finally:
                        api.lib.tcc_model_unlock(m)
                    if rc != 0 or not np.array_equal(y, want):
                        fails.append(f"good run failed: {api.lib.tcc_model_last_error()!r}")
                    continue
                if t == 4:  # its output may be overwritten before it is copied: only the run must succeed
                    if api.run(m, other, I64)[0] != 0:
                        fails.append(f"other good run failed: {api.lib.tcc_model_last_error()!r}")
                    continue
                rc, _ = api.run(m, bad if t == 2 else wrong_rank, I64)
                msg = api.lib.tcc_model_last_error().decode()
                expect = "Gather index 7 out of range [-5, 5)" if t == 2 else "input 'idx': expected rank 1, got 2"
                if rc == 0 or expect not in msg:
                    fails.append(f"thread {t}: rc {rc}, error {msg!r}")
            return fails

        fails = [f for per_thread in _in_threads(work, n_threads) for f in per_thread]
        assert not fails, f"{len(fails)} wrong: {fails[:3]}"
    finally:
        for m in [*own, shared]:
            api.lib.tcc_model_free(m)
