"""tcc_model_run_select on a CPU (x86) artifact: a run plus the choice of each batch row's next token from its
last logits row. It must give exactly what tcc_model_run followed by tcc_sample on the copied logits gives
(same ids, same generator state afterwards), for greedy and sampled settings and batch rows > 1; Generator
uses it for decode steps and picks the same tokens as the logits path; bad arguments and programs without a
KV cache fail in one line (tcc_model_last_error)."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

import tcc
from tcc.driver import CompileOptions
from tcc.runtime.generate import Generator, _Sampling
from tcc.runtime.session import _Tensor
from tests.serve.conftest import MODEL

BATCH = 2
PROMPT = [[5, 17, 99, 3, 42], [7, 7, 250, 1, 33]]
PARAMS = [_Sampling(0.0, 0, 1.0, 1.0), _Sampling(0.8, 0, 1.0, 1.0), _Sampling(0.7, 40, 0.9, 1.1),
          _Sampling(1.5, 5, 1.0, 1.3), _Sampling(1.0, 0, 0.5, 1.0)]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("select") / "llama-b2")
    tcc.compile(MODEL, out, CompileOptions(max_context=64, max_dims={"batch": BATCH}))
    return out


def _bind(lib):
    lib.tcc_model_run_select.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.tcc_model_run_select.restype = ctypes.c_int
    lib.tcc_sample.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_void_p]
    lib.tcc_sample.restype = ctypes.c_int64
    lib.tcc_rng_seed.argtypes = [ctypes.c_uint64]
    lib.tcc_rng_seed.restype = ctypes.c_uint64
    lib.tcc_model_set_logits_rows.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.tcc_model_kv_truncate.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    return lib


def _tensor(ids: np.ndarray) -> _Tensor:
    t = _Tensor()
    t.data = ids.ctypes.data
    t.shape[0], t.shape[1] = ids.shape
    t.ndim = 2
    t.dtype = 3  # TCC_I64
    return t


def _select(sess, ids: np.ndarray, params, recent: np.ndarray, rng: ctypes.c_uint64) -> list[int]:
    lib = sess._lib
    out = np.full(ids.shape[0], -1, dtype=np.int64)
    t = _tensor(ids)
    rc = lib.tcc_model_run_select(sess._model, ctypes.byref(t), 1, ctypes.byref(params),
                                  recent.ctypes.data if len(recent) else None, len(recent), ctypes.byref(rng),
                                  out.ctypes.data)
    assert rc == 0, lib.tcc_model_last_error().decode()
    return [int(i) for i in out]


def _run_then_sample(sess, ids: np.ndarray, params, recent: np.ndarray, rng: ctypes.c_uint64) -> list[int]:
    logits = next(iter(sess.run({sess.inputs[0].name: ids}).values()))  # [batch, n, vocab]
    lib = sess._lib
    picked = []
    for row in logits:
        last = np.ascontiguousarray(row[-1], dtype=np.float32)
        picked.append(int(lib.tcc_sample(last.ctypes.data, last.shape[0], ctypes.byref(params),
                                         recent.ctypes.data if len(recent) else None, len(recent),
                                         ctypes.byref(rng))))
    return picked


@pytest.mark.parametrize("pi", range(len(PARAMS)))
def test_run_select_equals_run_then_sample(art, pi):
    """Two sessions of one artifact decode 6 steps of a 2-row batch, one with run_select, one with run +
    tcc_sample: the same ids at every step and the same generator state."""
    params = PARAMS[pi]
    sa, sb = tcc.load(art, threads=1), tcc.load(art, threads=1)
    for s in (sa, sb):
        _bind(s._lib)
        s._lib.tcc_model_set_logits_rows(s._model, 1)
    for seed in (1, 2):
        for s in (sa, sb):
            s._lib.tcc_model_kv_truncate(s._model, 0)
        ra, rb = (ctypes.c_uint64(sa._lib.tcc_rng_seed(seed)) for _ in range(2))
        ids = np.array(PROMPT, dtype=np.int64)
        context = list(PROMPT[0])
        for step in range(6):
            recent = np.array(context, dtype=np.int64)
            got = _select(sa, ids, params, recent, ra)
            want = _run_then_sample(sb, ids, params, recent, rb)
            assert got == want, (seed, step)
            assert ra.value == rb.value
            ids = np.array([[t] for t in got], dtype=np.int64)
            context.append(got[0])
    sa.close()
    sb.close()


def test_generator_uses_run_select_and_picks_the_same_tokens(art):
    sess = tcc.load(art, threads=1)
    g = Generator(sess)
    assert g._run_select is not None
    for kw in (dict(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2), dict(temperature=0)):
        g.reset()
        on_device = g.run(PROMPT[0], max_new_tokens=10, seed=5, **kw)
        g.reset()
        via_logits = g.run(PROMPT[0], max_new_tokens=10, seed=5, keep_logits=True, **kw)  # tcc_sample path
        assert on_device.tokens == via_logits.tokens and len(on_device.tokens) == 10
        assert on_device.decode_steps == via_logits.decode_steps
    # the greedy tokens are the argmax of the kept logits (the comparison is not vacuous)
    assert via_logits.tokens == [int(np.argmax(x)) for x in via_logits.step_logits]
    sess.close()


def test_bad_arguments_fail_in_one_line(art):
    sess = tcc.load(art, threads=1)
    lib = _bind(sess._lib)
    ids = np.array([[5]], dtype=np.int64)
    t = _tensor(ids)
    params = PARAMS[1]
    rng = ctypes.c_uint64(1)
    out = np.zeros(1, dtype=np.int64)
    good = dict(model=sess._model, inputs=ctypes.byref(t), n=1, params=ctypes.byref(params), recent=None,
                n_recent=0, rng=ctypes.byref(rng), out=out.ctypes.data)

    def call(**kw):
        a = {**good, **kw}
        rc = lib.tcc_model_run_select(a["model"], a["inputs"], a["n"], a["params"], a["recent"], a["n_recent"],
                                      a["rng"], a["out"])
        return rc, lib.tcc_model_last_error().decode()

    for kw, words in [(dict(model=None), "model is not loaded"), (dict(params=None), "no sampling parameters"),
                      (dict(rng=None), "no generator state"), (dict(out=None), "no buffer for the ids"),
                      (dict(n_recent=4), "no recent ids"), (dict(n=0), "expected 1 inputs, got 0"),
                      (dict(inputs=None), "no input tensors")]:
        rc, why = call(**kw)
        assert rc != 0 and words in why and "\n" not in why, (kw, why)
    assert call()[0] == 0
    sess.close()


def test_program_without_kv_cache_refuses(tmp_path):
    model = os.path.join(os.path.dirname(MODEL), "..", "llama_nopast_dynamo", "model.onnx")
    out = str(tmp_path / "nopast")
    tcc.compile(model, out, CompileOptions(max_context=16))
    sess = tcc.load(out, threads=1)
    lib = _bind(sess._lib)
    ids = np.array([[5, 6]], dtype=np.int64)
    t = _tensor(ids)
    out_ids = np.zeros(1, dtype=np.int64)
    rng = ctypes.c_uint64(1)
    rc = lib.tcc_model_run_select(sess._model, ctypes.byref(t), 1, ctypes.byref(PARAMS[0]), None, 0,
                                  ctypes.byref(rng), out_ids.ctypes.data)
    assert rc != 0
    assert "has no KV cache" in lib.tcc_model_last_error().decode()
    assert Generator(sess)._run_select is None  # generation recomputes through the logits path
    sess.close()
