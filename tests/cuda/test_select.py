"""Token selection on the device (runtime/select_cuda.cu: tcc_device_select) under the SIMT emulator, against
tcc_sample (runtime/sampling.cpp, compiled into the same library) on the same logits, parameters and seed:
the same ids, and the generator state advanced alike (one draw per sampled row, in row order)."""
from __future__ import annotations

import ctypes
import dataclasses
import os

import numpy as np
import pytest

from tests.cuda.harness import RUNTIME, build_kernels, nvcc_compile

MODELS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "llm")
BATCH = 2


class _Sampling(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_float), ("top_k", ctypes.c_int32), ("top_p", ctypes.c_float),
                ("repetition_penalty", ctypes.c_float)]


def _text(name: str) -> str:
    with open(os.path.join(RUNTIME, name)) as f:
        return f.read()


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    # the headers' text rides along in a comment so that the build cache sees their changes
    headers = "".join(f"// {line}\n" for h in ("tcc_select.h", "tcc_model.h") for line in _text(h).splitlines())
    lib = build_kernels([_text("select_cuda.cu") + headers, _text("sampling.cpp") + headers],
                        str(tmp_path_factory.mktemp("select")))
    p = ctypes.c_void_p
    lib.tcc_device_select.argtypes = [p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(_Sampling),
                                      p, ctypes.c_int64, ctypes.POINTER(ctypes.c_uint64), p,
                                      ctypes.POINTER(ctypes.c_char_p)]
    lib.tcc_device_select.restype = ctypes.c_int
    lib.tcc_device_select_release.argtypes = [p]
    lib.tcc_sample.argtypes = [p, ctypes.c_int64, ctypes.POINTER(_Sampling), p, ctypes.c_int64,
                               ctypes.POINTER(ctypes.c_uint64)]
    lib.tcc_sample.restype = ctypes.c_int64
    lib.tcc_rng_seed.argtypes = [ctypes.c_uint64]
    lib.tcc_rng_seed.restype = ctypes.c_uint64
    return lib


@pytest.fixture(scope="module")
def ex(lib):
    handle = lib.tcc_exec_create(1)
    yield handle
    lib.tcc_device_select_release(handle)
    lib.tcc_exec_destroy(handle)


def _recent(recent):
    arr = np.asarray(recent if recent is not None else [], dtype=np.int64)
    return arr, (arr.ctypes.data if recent is not None and len(arr) else None), len(arr)


def cpu_select(lib, logits: np.ndarray, params: _Sampling, recent, seed: int) -> tuple[list[int], int]:
    """tcc_sample on each row of logits [rows, vocab], in row order; the ids and the final generator state."""
    rng = ctypes.c_uint64(lib.tcc_rng_seed(seed))
    arr, ptr, n = _recent(recent)
    ids = [int(lib.tcc_sample(row.ctypes.data, logits.shape[1], ctypes.byref(params), ptr, n, ctypes.byref(rng)))
           for row in logits]
    return ids, rng.value


def device_select(lib, ex, logits: np.ndarray, params: _Sampling, recent, seed: int,
                  row_stride: int | None = None) -> tuple[list[int], int]:
    rows, vocab = logits.shape[0], logits.shape[-1]
    rng = ctypes.c_uint64(lib.tcc_rng_seed(seed))
    arr, ptr, n = _recent(recent)
    out = np.full(rows, -7, dtype=np.int64)
    why = ctypes.c_char_p()
    rc = lib.tcc_device_select(ex, logits.ctypes.data, rows, row_stride or vocab, vocab, ctypes.byref(params), ptr, n,
                               ctypes.byref(rng), out.ctypes.data, ctypes.byref(why))
    assert rc == 0, why.value
    return [int(i) for i in out], rng.value


def _same(lib, ex, logits, params, recent=None, seeds=(1,)):
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    if logits.ndim == 1:
        logits = logits[None]
    for seed in seeds:
        want = cpu_select(lib, logits, params, recent, seed)
        got = device_select(lib, ex, logits, params, recent, seed)
        assert got == want, (seed, got, want)


GREEDY = _Sampling(0.0, 0, 1.0, 1.0)
TEMP = _Sampling(0.8, 0, 1.0, 1.0)
DEFAULT = _Sampling(0.7, 40, 0.9, 1.1)


@pytest.mark.parametrize("vocab", [1, 2, 1000])
def test_vocab_sizes_every_mode(lib, ex, vocab):
    rng = np.random.default_rng(vocab)
    logits = (rng.standard_normal((3, vocab)) * 3).astype(np.float32)
    recent = list(rng.integers(0, vocab, size=10))
    for params in (GREEDY, TEMP, DEFAULT, _Sampling(1.3, 5, 1.0, 1.0), _Sampling(1.0, 0, 0.5, 1.0),
                   _Sampling(0.5, 3, 0.7, 1.5)):
        _same(lib, ex, logits, params, recent, seeds=(1, 2, 3))


def test_large_vocab_default_and_temperature(lib, ex):
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((1, 32003)) * 4).astype(np.float32)
    recent = list(rng.integers(0, 32003, size=50))
    for params in (GREEDY, TEMP, DEFAULT, _Sampling(1.0, 0, 0.95, 1.2)):
        _same(lib, ex, logits, params, recent, seeds=(11, 12))


def test_many_seeds_identical(lib, ex):
    rng = np.random.default_rng(3)
    # a flat distribution: the draws spread over many candidates, so the seeds exercise the whole walk
    logits = (rng.standard_normal((2, 1000)) * 0.5).astype(np.float32)
    for params in (TEMP, DEFAULT, _Sampling(1.0, 100, 1.0, 1.0), _Sampling(1.0, 0, 0.8, 1.0)):
        _same(lib, ex, logits, params, list(range(0, 2000, 7)), seeds=range(40))
    ids, _ = device_select(lib, ex, np.ascontiguousarray(logits[:1]), TEMP, None, 5)
    seen = {device_select(lib, ex, np.ascontiguousarray(logits[:1]), TEMP, None, s)[0][0] for s in range(40)}
    assert len(seen) > 10, seen  # the seeds really choose different tokens (the comparison above means something)


def test_ties_and_all_equal(lib, ex):
    flat = np.zeros((1, 300), dtype=np.float32)
    ties = np.tile(np.array([1.0, 3.0, 3.0, 2.0, 3.0, -1.0], dtype=np.float32), 50)[None]
    signed_zero = np.array([[-0.0, 0.0, -0.0, -1.0]], dtype=np.float32)
    for logits in (flat, ties, signed_zero):
        for params in (GREEDY, TEMP, _Sampling(1.0, 2, 1.0, 1.0), _Sampling(1.0, 0, 0.3, 1.0), DEFAULT):
            _same(lib, ex, logits, params, seeds=range(8))
    assert device_select(lib, ex, ties, GREEDY, None, 0)[0] == [1]  # the lowest id of the maximum
    assert device_select(lib, ex, ties, _Sampling(1.0, 1, 1.0, 1.0), None, 0)[0] == [1]


def test_nan_and_infinities(lib, ex):
    nan, inf = np.float32("nan"), np.float32("inf")
    cases = [
        [nan, 1.0, 2.0, nan, 2.0],
        [nan, nan, nan],
        [1.0, inf, 3.0, inf],
        [-inf, -inf, -inf],
        [-inf, nan, -inf, 0.5],
        [inf, nan, -inf, 0.0],
        [nan, -inf],
    ]
    for row in cases:
        logits = np.array([row], dtype=np.float32)
        for params in (GREEDY, TEMP, _Sampling(1.0, 2, 1.0, 1.0), _Sampling(1.0, 0, 0.5, 1.0), DEFAULT,
                       _Sampling(1e-30, 0, 1.0, 1.0)):
            _same(lib, ex, logits, params, [0, 1, 2], seeds=range(6))
    assert device_select(lib, ex, np.array([[nan, nan, nan]], np.float32), TEMP, None, 0)[0] == [0]
    assert device_select(lib, ex, np.array([[nan, 1.0, 2.0, nan, 2.0]], np.float32), GREEDY, None, 0)[0] == [2]
    assert device_select(lib, ex, np.array([[1.0, inf, 3.0, inf]], np.float32), TEMP, None, 0)[0][0] in (1, 3)


def test_top_k_edges(lib, ex):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((1, 500)).astype(np.float32)
    for k in (1, 2, 499, 500, 501, 10**6):
        _same(lib, ex, logits, _Sampling(1.0, k, 1.0, 1.0), seeds=range(6))
        _same(lib, ex, logits, _Sampling(1.0, k, 0.6, 1.0), seeds=range(3))
    # k = 1 is greedy whatever the seed
    assert {device_select(lib, ex, logits, _Sampling(1.0, 1, 1.0, 1.0), None, s)[0][0] for s in range(5)} == \
        {int(np.argmax(logits))}


def test_top_p_edges(lib, ex):
    rng = np.random.default_rng(6)
    logits = (rng.standard_normal((1, 800)) * 2).astype(np.float32)
    for p in (1e-6, 0.1, 0.5, 0.999, 1.0):
        _same(lib, ex, logits, _Sampling(0.9, 0, p, 1.0), seeds=range(6))
    # a tiny top_p keeps only the top candidate
    assert device_select(lib, ex, logits, _Sampling(0.9, 0, 1e-6, 1.0), None, 3)[0] == [int(np.argmax(logits))]


def test_repetition_penalty_duplicates_and_out_of_range(lib, ex):
    logits = np.array([[2.0, -1.0, 0.5, 3.0, -2.0, 0.0, 2.9]], dtype=np.float32)
    recent = [3, 3, 3, -1, 7, 100, 1, 1, 6, -5]
    for pen in (0.5, 1.0, 1.3, 5.0):
        for params in (_Sampling(0.0, 0, 1.0, pen), _Sampling(1.0, 0, 1.0, pen), _Sampling(0.7, 3, 0.9, pen)):
            _same(lib, ex, logits, params, recent, seeds=range(6))
    # id 3 (three times in recent) is penalized once: 3.0 / 1.4 = 2.14 still beats 2.0 (twice: 1.53 would not)
    assert device_select(lib, ex, logits, _Sampling(0.0, 0, 1.0, 1.4), recent, 0)[0] == [3]
    assert device_select(lib, ex, logits, _Sampling(0.0, 0, 1.0, 2.0), recent, 0)[0] == [0]


def test_batch_rows_advance_the_generator_in_row_order(lib, ex):
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((5, 700)).astype(np.float32)
    for params in (GREEDY, TEMP, DEFAULT):
        for seed in range(5):
            want = cpu_select(lib, logits, params, [1, 2, 3], seed)
            got = device_select(lib, ex, logits, params, [1, 2, 3], seed)
            assert got == want
    # greedy draws nothing; a sampled row draws once
    start = lib.tcc_rng_seed(4)
    assert device_select(lib, ex, logits, GREEDY, None, 4)[1] == start
    assert device_select(lib, ex, logits, TEMP, None, 4)[1] != start


def test_row_stride(lib, ex):
    """Rows apart in memory (the last logits row of each batch row of [batch, n, vocab])."""
    rng = np.random.default_rng(10)
    full = rng.standard_normal((3, 4, 50)).astype(np.float32)
    last = np.ascontiguousarray(full[:, -1, :])
    for params in (GREEDY, DEFAULT):
        want = cpu_select(lib, last, params, None, 2)
        rows, vocab = 3, 50
        rng_state = ctypes.c_uint64(lib.tcc_rng_seed(2))
        out = np.zeros(rows, dtype=np.int64)
        why = ctypes.c_char_p()
        rc = lib.tcc_device_select(ex, full.ctypes.data + 3 * vocab * 4, rows, 4 * vocab, vocab, ctypes.byref(params),
                                   None, 0, ctypes.byref(rng_state), out.ctypes.data, ctypes.byref(why))
        assert rc == 0, why.value
        assert (list(out), rng_state.value) == (want[0], want[1])


def test_bad_arguments(lib, ex):
    logits = np.zeros((1, 4), dtype=np.float32)
    out = np.zeros(2, dtype=np.int64)
    rng = ctypes.c_uint64(1)
    params = TEMP

    def call(**kw):
        a = dict(logits=logits.ctypes.data, rows=1, stride=4, vocab=4, params=ctypes.byref(params), recent=None,
                 n=0, rng=ctypes.byref(rng), out=out.ctypes.data)
        a.update(kw)
        why = ctypes.c_char_p()
        rc = lib.tcc_device_select(ex, a["logits"], a["rows"], a["stride"], a["vocab"], a["params"], a["recent"],
                                   a["n"], a["rng"], a["out"], ctypes.byref(why))
        return rc, (why.value or b"").decode()

    for kw, words in [(dict(logits=None), "no logits"), (dict(vocab=0), "vocabulary of 0"),
                      (dict(params=None), "no sampling parameters"), (dict(rng=None), "no generator state"),
                      (dict(out=None), "no buffer for the ids"), (dict(n=3), "no recent ids"),
                      (dict(rows=0), "0 rows"), (dict(rows=2, stride=3), "2 rows 3 floats apart")]:
        rc, why = call(**kw)
        assert rc != 0 and words in why and "\n" not in why, (kw, why)
    assert call() == (0, "")


def test_no_race(lib, ex):
    """Shuffled schedules give the same ids (no read of memory another thread writes without a barrier)."""
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((2, 3000)).astype(np.float32)
    base = [device_select(lib, ex, logits, p, [5, 5, 9], 3) for p in (GREEDY, TEMP, DEFAULT)]
    try:
        for seed in (1, 2):
            lib.set_seed(seed)
            assert [device_select(lib, ex, logits, p, [5, 5, 9], 3) for p in (GREEDY, TEMP, DEFAULT)] == base
    finally:
        lib.set_seed(0)


def test_nvcc_builds_sm80_and_sm90(tmp_path):
    """The same source through nvcc: SASS for both architectures (nvcc_compile checks the listing)."""
    headers = "".join(f"// {line}\n" for h in ("tcc_select.h", "tcc_model.h") for line in _text(h).splitlines())
    objects = nvcc_compile([_text("select_cuda.cu") + headers], archs=("sm_80", "sm_90"), tmpdir=str(tmp_path))
    assert len(objects) == 1


# -- a whole program: the selection linked into a CUDA artifact's emulation build ---------------------------
@pytest.fixture(scope="module")
def w4a16_llama(tmp_path_factory):
    from tcc.driver import compile_model
    from tests.cuda.test_program import _options

    model = os.path.join(MODELS, "llama_past_dynamo", "model.onnx")
    out = str(tmp_path_factory.mktemp("select-program") / "llama-w4a16")
    # batch bound 2: also a two-row run_select (the rows' last logits rows apart in device memory)
    compile_model(model, out, dataclasses.replace(_options("w4a16"), max_dims={"batch": BATCH}))
    return model, out


def test_program_greedy_on_the_device_equals_the_reference(w4a16_llama):
    from tcc.runtime.session import load
    from tests.cuda.test_program import NEW, PROMPT, _reference_greedy

    model, out = w4a16_llama
    want, _ = _reference_greedy(model, "w4a16")
    sess = load(out, emulate=True)
    from tcc.runtime.generate import Generator

    assert Generator(sess)._run_select is not None  # the decode steps below select on the (emulated) device
    got = sess.generate(PROMPT, max_new_tokens=NEW, temperature=0.0, repetition_penalty=1.0, eos_ids=())
    assert got.tokens == want


def test_program_sampling_on_the_device_equals_the_logits_path(w4a16_llama):
    """Sampled decoding with a seed: run_select in the emulated program picks what tcc_sample picks on the
    copied logits (keep_logits=True takes that path), step after step."""
    from tcc.runtime.session import load
    from tests.cuda.test_program import PROMPT

    _, out = w4a16_llama
    sess = load(out, emulate=True)
    outcomes = set()
    for seed in (1, 2, 3):
        for kw in (dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
                   dict(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2)):
            on_device = sess.generate(PROMPT, max_new_tokens=8, seed=seed, eos_ids=(), **kw)
            via_logits = sess.generate(PROMPT, max_new_tokens=8, seed=seed, eos_ids=(), keep_logits=True, **kw)
            assert on_device.tokens == via_logits.tokens, (seed, kw)
            outcomes.add(tuple(on_device.tokens))
    assert len(outcomes) > 1  # the seeds lead to different continuations: the comparison is not vacuous


def test_program_two_rows_equal_run_then_sample(w4a16_llama):
    """tcc_model_run_select on a [2, seq] batch of the emulated program: each row's id is tcc_sample's on that
    row's last logits row (from tcc_model_run), rows drawn in order; the same generator state afterwards."""
    from tcc.runtime.session import _Tensor, load

    _, out = w4a16_llama
    sa, sb = load(out, emulate=True), load(out, emulate=True)
    p = ctypes.c_void_p
    for s in (sa, sb):
        s._lib.tcc_model_run_select.argtypes = [p, p, ctypes.c_int, p, p, ctypes.c_int64, p, p]
        s._lib.tcc_model_set_logits_rows.argtypes = [p, ctypes.c_int64]
        s._lib.tcc_model_set_logits_rows(s._model, 1)
    lib = sa._lib
    lib.tcc_sample.argtypes = [p, ctypes.c_int64, p, p, ctypes.c_int64, p]
    lib.tcc_sample.restype = ctypes.c_int64
    lib.tcc_rng_seed.argtypes = [ctypes.c_uint64]
    lib.tcc_rng_seed.restype = ctypes.c_uint64
    params = _Sampling(0.9, 20, 0.95, 1.2)
    ra, rb = ctypes.c_uint64(lib.tcc_rng_seed(9)), ctypes.c_uint64(lib.tcc_rng_seed(9))
    ids = np.array([[5, 17, 99, 3], [42, 250, 7, 1]], dtype=np.int64)
    recent = np.array([5, 17, 99, 3, 3, 99], dtype=np.int64)
    for _ in range(3):
        t = _Tensor()
        t.data = ids.ctypes.data
        t.shape[0], t.shape[1] = ids.shape
        t.ndim, t.dtype = 2, 3
        got = np.full(BATCH, -1, dtype=np.int64)
        assert lib.tcc_model_run_select(sa._model, ctypes.byref(t), 1, ctypes.byref(params), recent.ctypes.data,
                                        len(recent), ctypes.byref(ra), got.ctypes.data) == 0, \
            lib.tcc_model_last_error().decode()
        logits = next(iter(sb.run({sb.inputs[0].name: ids}).values()))
        want = [lib.tcc_sample(np.ascontiguousarray(row[-1]).ctypes.data, row.shape[-1], ctypes.byref(params),
                               recent.ctypes.data, len(recent), ctypes.byref(rb)) for row in logits]
        assert list(got) == want and ra.value == rb.value
        ids = got.reshape(BATCH, 1).copy()
