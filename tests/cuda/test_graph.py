"""CUDA graphs (docs/cuda.md, "CUDA graphs"): a decode step captured once and replayed, with the KV cache's
length read from device memory. On this GPU-less machine the SIMT emulator records the launches issued while
capturing (closures holding copies of their arguments) and replays them, so these tests check what the GPU
path relies on: a replayed step computes exactly what the same step run directly computes (logits bit for
bit, the same tokens), the replays follow the cache length as it grows and after truncation, a program whose
decode launches change with the length says so and runs directly, and the flag turns graphs off. nvcc still
builds the programs for sm_80 and sm_90 (the compile of each fixture below)."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tcc.backends.cuda.kernels import VARIANTS
from tcc.driver import compile_model
from tcc.runtime.session import load
from tests.cuda.harness import build_kernels
from tests.cuda.test_attention import check, estrides, kv_reference, rnd, rope_tables
from tests.cuda.test_program import MODELS, PROMPT, _options

# Decoders whose decode step is captured (positions only in the attention calls; GPT-2's position Range
# reads the length from device memory), at both schemes; and the decoder without past inputs, which is not.
CAPTURED = [("llama_past_dynamo", "fp16"), ("llama_past_dynamo", "w4a16"), ("gpt2_past_dynamo", "fp16"),
            ("gpt2_past_dynamo", "w4a16")]
NOPAST = ("llama_nopast_dynamo", "fp16")
NEW = 10


def _compile(tmp_path_factory, fixture: str, qm: str) -> str:
    out = str(tmp_path_factory.mktemp("graph") / f"{fixture}-{qm}")
    compile_model(os.path.join(MODELS, fixture, "model.onnx"), out, _options(qm))
    return out


@pytest.fixture(scope="module", params=CAPTURED, ids=lambda p: f"{p[0]}-{p[1]}")
def captured(request, tmp_path_factory):
    return _compile(tmp_path_factory, *request.param)


@pytest.fixture(scope="module")
def nopast(tmp_path_factory):
    return _compile(tmp_path_factory, *NOPAST)


def _greedy(sess, new=NEW):
    return sess.generate(PROMPT, max_new_tokens=new, temperature=0.0, repetition_penalty=1.0, eos_ids=(),
                         keep_logits=True)


# Every decoder family of tests/models/llm: whether its decode step is captured, and if not, why.
DECISIONS = {
    "llama_past_dynamo": None, "gpt2_past_dynamo": None, "gptj_past_dynamo": None,
    "llama_tied_past_torchscript": None,
    # positions from a mask of past + 1 ones: ConstantOfShape / CumSum / Slice shapes grow every step
    "opt_past_dynamo": "ConstantOfShape node llm/attention_mask has launch arguments (shapes, offsets) that depend "
                       "on the cache length",
    "llama_nopast_dynamo": "no KV cache",
}


def _program(fixture: str, target: str = "cuda"):
    from tcc.codegen.program import generate
    from tcc.driver import optimize

    opts = _options("fp16")
    opts.target = target
    if target != "cuda":
        opts.qm = "fp32"
    graph, ctx, backend = optimize(os.path.join(MODELS, fixture, "model.onnx"), opts)
    return generate(graph, ctx.stats["plan-memory"], backend, ctx.symbol_bounds)


@pytest.mark.parametrize("fixture", list(DECISIONS), ids=str)
def test_which_programs_are_captured(fixture):
    """Codegen's decision per program (no build): only the attention calls' `past` and a constant equal to
    the length may depend on the cache length in a decode step."""
    program = _program(fixture)
    why = DECISIONS[fixture]
    if why is None:
        assert program.cuda_graph == {"decode": True}
        assert "tcc::device_upload(m," not in program.source  # GPT-2's Range start: the device copy of the length
    else:
        assert program.cuda_graph["decode"] is False and program.cuda_graph["why"].startswith(why)


def test_capture_blockers_on_a_synthetic_launch_list():
    """decode_capture_blocker's other refusals: a host read of a device value, a constant uploaded every run
    that is not the length, a guard on the length; what it accepts: the length as `past` and as a constant."""
    from types import SimpleNamespace

    from tcc.codegen.launch import AssumptionGuard, Buf, Elem, HostArray, Launch, Step, dim
    from tcc.codegen.render_cpu import decode_capture_blocker
    from tcc.ir.dims import parse_dim

    past, seq, var = parse_dim("past_seq"), parse_dim("seq"), "s_past_seq"
    kv = SimpleNamespace(family="kvattention", signature="void kv(const void* q, int64_t S, int64_t past, "
                                                         "tcc_exec* exec)")
    other = SimpleNamespace(family="range", signature="void r(const int64_t* start, void* y, int64_t n, "
                                                      "tcc_exec* exec)")
    x = Buf("device_arena", 0, "void")
    attn = Launch(kv, (x, dim(seq), dim(past)))

    def blocker(*launches, guards=()):
        return decode_capture_blocker([Step("Op", "n", tuple(guards), (attn, *launches))], var)

    assert blocker() is None
    assert blocker(Launch(other, (HostArray((past,), "symc"), x, dim(seq)))) is None
    assert "uploads a run-time constant" in blocker(Launch(other, (HostArray((seq,), "symc"), x, dim(seq))))
    assert "reads a value from device memory" in blocker(Launch(other, (Elem(x), x, dim(seq))))
    assert "launch arguments" in blocker(Launch(other, (HostArray((past,), "symc"), x, dim(past + seq))))
    assert "launch arguments" in blocker(Launch(other, (HostArray((past,), "symc"), x.at(past), dim(seq))))
    guard = AssumptionGuard("Op", "n", SimpleNamespace(op="<=", lhs=past, rhs=parse_dim("64")))
    assert "checks shapes" in blocker(guards=[guard])
    shifted = Launch(kv, (x, dim(seq), dim(past + 1)))
    assert decode_capture_blocker([Step("Op", "n", (), (shifted,))], var) == \
        "an attention call's past is not the cache length"


def test_cpu_programs_have_no_graph_code():
    program = _program("llama_past_dynamo", "x86")
    assert program.cuda_graph is None
    assert "tcc_exec_capture_begin" not in program.source and "kv_len_dev" not in program.source


def test_manifest_says_decode_is_captured(captured):
    with open(os.path.join(captured, "manifest.json")) as f:
        assert json.load(f)["cuda_graph"] == {"decode": True}


def test_replayed_decode_equals_direct_decode(captured):
    """Greedy generation with graphs on and off: the same tokens and bit-identical logits at every step
    (the same launches with the same arguments, only recorded once and replayed)."""
    on = load(captured, emulate=True, cuda_graph=True)
    off = load(captured, emulate=True, cuda_graph=False)
    got_on, got_off = _greedy(on), _greedy(off)
    assert got_on.tokens == got_off.tokens
    np.testing.assert_array_equal(np.array(got_on.step_logits), np.array(got_off.step_logits))
    # every decode step (seq 1) after the prompt's was a replay; none with graphs off
    assert on.graph_replays >= NEW - 1
    assert off.graph_replays == 0


def test_replays_read_the_length_after_truncation(captured):
    """Decode, truncate the cache, decode the same tokens again: the replays must place them at the new
    positions (read from device memory), so the logits repeat the first pass's bit for bit; graphs off
    agrees."""
    results = []
    for graphs in (True, False):
        sess = load(captured, emulate=True, cuda_graph=graphs)
        gen = sess.generator
        gen.reset()
        logits = [gen.feed(PROMPT)[-1]]
        tokens = []
        for _ in range(6):
            tokens.append(int(np.argmax(logits[-1])))
            logits.append(gen.feed([tokens[-1]])[-1])
        before = sess.graph_replays
        gen._truncate(len(PROMPT) + 2)  # keep the first two generated tokens
        again = [gen.feed([t])[-1] for t in tokens[2:]]
        for i, row in enumerate(again):
            np.testing.assert_array_equal(row, logits[i + 3])
        if graphs:
            assert sess.graph_replays - before == len(tokens) - 2
        results.append(np.array(logits + again))
    np.testing.assert_array_equal(results[0], results[1])


def test_graphs_follow_the_switch_and_the_environment(captured, monkeypatch):
    """TCC_CUDA_GRAPH=off is read by the program at load (the C API, without Python's flag); the switch
    turns graphs on and off at any time; Python's default follows the flag."""
    sess = load(captured, emulate=True, cuda_graph=True)
    lib, weights = sess._lib, os.path.join(captured, sess.manifest["weights"]["file"])
    monkeypatch.setenv("TCC_CUDA_GRAPH", "off")
    lib.tcc_model_free(sess._model)
    sess._model = lib.tcc_model_load(weights.encode(), 1)  # graphs as the environment says, nothing else
    assert sess._model
    first = _greedy(sess, 4)
    assert sess.graph_replays == 0
    sess.cuda_graph = True
    second = _greedy(sess, 4)
    replays = sess.graph_replays
    assert replays >= 3 and second.tokens == first.tokens
    sess.cuda_graph = False
    third = _greedy(sess, 4)
    assert sess.graph_replays == replays and third.tokens == first.tokens
    assert load(captured, emulate=True).cuda_graph is False  # the flag reads TCC_CUDA_GRAPH=off
    monkeypatch.setenv("TCC_CUDA_GRAPH", "1")
    assert load(captured, emulate=True).cuda_graph is True


def test_one_graph_per_batch_size(tmp_path):
    """A program compiled for batch <= 2: decode steps of 2 rows and of 1 row are two shape keys (two graphs),
    each replayed with the cache length of its run; bit-identical to graphs off."""
    out = str(tmp_path / "llama-b2")
    opts = _options("fp16")
    opts.max_dims = {"batch": 2}
    compile_model(os.path.join(MODELS, "llama_past_dynamo", "model.onnx"), out, opts)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 256, (2, 5)), rng.integers(0, 256, (1, 3))]
    results = []
    for graphs in (True, False):
        sess = load(out, emulate=True, cuda_graph=graphs)
        name = sess.inputs[0].name
        logits = []
        for prompt in prompts:  # batch 2, then (the cache emptied) batch 1
            sess.generator.reset()
            ids = prompt
            for _ in range(4):
                row = next(iter(sess.run({name: ids.astype(np.int64)}).values()))[:, -1]
                logits.append(row)
                ids = np.argmax(row, axis=-1)[:, None]
        results.append(logits)
        assert sess.graph_replays == (6 if graphs else 0)
        # tcc_model_run_rows (serving) runs directly, each row at its own slot's length (not the device copy
        # of row 0's, which a replay reads): it continues the same two sequences as the batch-2 run above
        sess.generator.reset()
        ids = prompts[0]
        for step in range(4):
            row = sess.run_rows(ids, [0, 1])[:, -1]
            np.testing.assert_allclose(row, logits[step], rtol=0, atol=2e-2)  # fp32 summation order only
            ids = np.argmax(logits[step], axis=-1)[:, None]
        assert sess.graph_replays == (6 if graphs else 0)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_program_without_past_is_not_captured(nopast):
    """Without a KV cache every step runs the whole sequence (its shapes grow): the manifest says why, the
    program runs directly with graphs on, and `tcc info` says so."""
    with open(os.path.join(nopast, "manifest.json")) as f:
        graph = json.load(f)["cuda_graph"]
    assert graph["decode"] is False and "no KV cache" in graph["why"]
    sess = load(nopast, emulate=True, cuda_graph=True)
    got = _greedy(sess, 4)
    assert len(got.tokens) == 4 and sess.graph_replays == 0
    r = subprocess.run([sys.executable, "-m", "tcc.cli", "info", nopast], capture_output=True, text=True)
    assert r.returncode == 0 and "cuda graph decode steps run directly: no KV cache" in r.stdout, r.stdout


def test_cli_no_cuda_graph(captured):
    """`tcc generate --emulate` replays decode steps; --no-cuda-graph (and TCC_CUDA_GRAPH=0) turns that off,
    with the same tokens; `tcc info` says decode steps are captured."""
    tcc = [sys.executable, "-m", "tcc.cli"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TCC_CUDA_GRAPH", None)
    gen = tcc + ["generate", captured, "--emulate", "--prompt-ids", ",".join(map(str, PROMPT)),
                 "--max-new-tokens", "4", "--temperature", "0", "--ids"]
    runs = [subprocess.run(gen + extra, capture_output=True, text=True, env={**env, **e})
            for extra, e in (([], {}), (["--no-cuda-graph"], {}), ([], {"TCC_CUDA_GRAPH": "0"}))]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout and len(runs[0].stdout.split()) == 4
    assert "cuda graph 4 replays" in runs[0].stderr, runs[0].stderr
    assert "cuda graph off" in runs[1].stderr and "cuda graph off" in runs[2].stderr
    r = subprocess.run(tcc + ["info", captured], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "cuda graph decode steps captured and replayed" in r.stdout, r.stdout


# ------------------------------------------------------------------------------ the kernel under capture

@pytest.fixture(scope="module")
def kvlib(tmp_path_factory):
    lib = build_kernels([s for s in VARIANTS if s.family == "kvattention"],
                        str(tmp_path_factory.mktemp("graph_kv")))
    lib.tcc_exec_capture_begin.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tcc_exec_capture_end.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tcc_exec_capture_end.restype = ctypes.c_void_p
    lib.tcc_graph_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tcc_graph_destroy.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tcc_exec_set_kv_length.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib


# (B, Hq, Hkv, D, rd, mode, window, rows, capacity) and the cache lengths replayed, in order
REPLAYED = {
    # capacity 1104: the split is sized for 1104 keys (4 chunks of 276), most of them empty at short lengths
    "split_gqa4": ((1, 4, 1, 64, 64, 1, 0, 1104, 1104), (1100, 0, 1, 300, 829, 1103)),
    "mha_interleaved_b2": ((2, 2, 2, 64, 32, 2, 0, 40, 40), (5, 0, 39, 17)),
    # a ring of 1040 rows under a window of 1000: keys bounded by the window, positions beyond the rows
    "ring_window_split": ((1, 4, 1, 64, 64, 1, 1000, 1040, 4096), (3000, 7, 1039, 4095)),
}


@pytest.mark.parametrize("case", list(REPLAYED), ids=str)
@pytest.mark.parametrize("dt", ["f16", "f32"])
def test_kvattention_replays_with_the_length_in_device_memory(kvlib, case, dt):
    """One decode call captured with the cache length set on the context (nothing runs while capturing),
    then replayed for other lengths written to device memory, with new q/k/v in the same buffers: each
    replay equals the reference at that length (positions, rope rows, window, empty splits)."""
    (B, Hq, Hkv, D, rd, mode, window, rows, capacity), lengths = REPLAYED[case]
    spec = next(s for s in VARIANTS if s.family == "kvattention" and s.param("dtype") == dt)
    T = {"f16": np.float16, "f32": np.float32}[dt]
    rng = np.random.default_rng(len(case))
    cos, sin = rope_tables(capacity, rd, rng)
    cos_d, sin_d = cos.astype(T), sin.astype(T)
    shape_q, shape_kv = (B, Hq, 1, D), (B, Hkv, 1, D)  # (one query position: both layouts are this one)
    q, k, v, out = np.zeros(shape_q, T), np.zeros(shape_kv, T), np.zeros(shape_kv, T), np.zeros(shape_q, T)
    kc, vc = np.zeros((B, Hkv, rows, D), T), np.zeros((B, Hkv, rows, D), T)
    length = np.zeros(1, np.int64)
    scale = 1.0 / np.sqrt(D)
    with kvlib.exec() as ex:
        kvlib.tcc_exec_set_kv_length(ex.handle, length.ctypes.data)
        length[0] = lengths[0]
        assert kvlib.tcc_exec_capture_begin(ex.handle, None) == 0
        # the checks use the argument (equal to the device length at capture); the kernels read the device's
        kvlib.call(ex, spec.name, q, k, v, kc, vc, out, B, Hq, Hkv, 1, lengths[0], capacity, D, D,
                   estrides(q), estrides(k), estrides(v), estrides(out), cos_d, sin_d, rd, mode, scale, window,
                   rows, None, 0.0)
        graph = kvlib.tcc_exec_capture_end(ex.handle, None)
        assert graph and ex.sync() == ""
        assert not kc.any() and not out.any(), "a launch ran while capturing"
        try:
            for past in lengths:
                qn, kn, vn = rnd(rng, shape_q), rnd(rng, shape_kv), rnd(rng, shape_kv)
                kc0, vc0 = rnd(rng, (B, Hkv, rows, D)), rnd(rng, (B, Hkv, rows, D))
                q[...], k[...], v[...], kc[...], vc[...] = qn, kn, vn, kc0, vc0  # same buffers, new data
                length[0] = past
                kc_ref, vc_ref = kc0.astype(T).astype(np.float32), vc0.astype(T).astype(np.float32)
                ref = kv_reference(qn, kn, vn, kc_ref, vc_ref, past, cos, sin, mode, rd, scale, window, None, 0.0,
                                   dt)
                kvlib.tcc_graph_launch(ex.handle, graph)
                assert ex.sync() == ""
                vmax = max(np.abs(vn).max(), np.abs(vc0).max())
                check(out.astype(np.float32), ref, vmax, dt, f"length {past}")
                np.testing.assert_array_equal(vc.astype(np.float32), vc_ref)
        finally:
            kvlib.tcc_graph_destroy(ex.handle, graph)


def test_capture_rules(kvlib):
    """What the device refuses while capturing, as a GPU stream capture would: a second begin, a copy or an
    allocation (then the capture fails and says why, and nothing is recorded)."""
    kvlib.tcc_device_copy_in.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    kvlib.tcc_device_alloc.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    kvlib.tcc_device_alloc.restype = ctypes.c_void_p
    dst, src = np.zeros(4, np.int64), np.arange(4, dtype=np.int64)
    why = ctypes.c_char_p()
    for offence in ("copy", "alloc"):
        with kvlib.exec() as ex:
            assert kvlib.tcc_exec_capture_begin(ex.handle, None) == 0
            assert kvlib.tcc_exec_capture_begin(ex.handle, ctypes.byref(why)) != 0
            assert why.value == b"already capturing"
            if offence == "copy":
                kvlib.tcc_device_copy_in(ex.handle, dst.ctypes.data, src.ctypes.data, dst.nbytes)
            else:
                assert not kvlib.tcc_device_alloc(ex.handle, 64, None)
            assert not kvlib.tcc_exec_capture_end(ex.handle, ctypes.byref(why))
            assert f"{'a copy to the device' if offence == 'copy' else 'an allocation'} while capturing a graph" \
                in why.value.decode()
            assert not dst.any()  # the copy did not happen
            assert not kvlib.tcc_exec_capture_end(ex.handle, ctypes.byref(why)) and why.value == b"not capturing"
