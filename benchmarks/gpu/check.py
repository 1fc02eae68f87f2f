#!/usr/bin/env python
"""Issue 17's check of tcc's CUDA backend on a real GPU, in one call of at most ~9 minutes.

    bash benchmarks/gpu/check.sh [--budget-s 540] [--layers 4] [--stages ...]     # on the GPU machine ($OUT)
    python benchmarks/gpu/check.py --emulate --tiny --out /tmp/gpucheck            # anywhere: the SIMT emulator

What one run does (each stage writes <out>/check.json as it finishes; a stage that would not fit the time
budget is skipped and recorded, so one call never outlives the device tool's 10-minute limit):

- env: GPU, driver, nvcc, torch/transformers/onnx/onnxruntime versions, compute-sanitizer and ncu, whether
  tcc's run-time Python dependencies import.
- build (in the background from the start): random-weight LLaMA models made with transformers (seed 0, no
  hub), saved as an HF checkpoint (fp16 safetensors) and exported to ONNX as users do (TorchScript exporter,
  opset 17, optimum's flat decoder-with-past signature: benchmarks/llm_suite.py's `_flat_past_module`; external
  data over 2 GB), then compiled with `--target cuda --cuda-arch native --qm fp16` and `--qm w4a16`. Models:
  `7b` (LLaMA-2-7B dims: hidden 4096, 32 heads, ffn 11008, vocab 32000, --layers layers), `short` (the same
  with fewer layers: the per-layer slope), `small` (hidden 256: w4a16 against the reference interpreter) and
  `tinyllama` (TinyLlama-1.1B's shape, 22 layers).
- kernels: tests/cuda/test_{linalg,attention,elementwise}.py on the GPU (TCC_CUDA_TEST_DEVICE=gpu, see
  tests/cuda/harness.py), then a subset under `compute-sanitizer --tool memcheck` and `--tool racecheck`.
- correct: tcc fp16 greedy tokens against HF transformers fp16 on the GPU (32 tokens; a divergence shows both
  engines' logit gaps there), tcc w4a16 against the reference interpreter on the same quantized IR (the small
  model: the interpreter is too slow for 7B widths) and w4a16 against fp16 on the 7b model (token agreement).
- speed (nothing else running, the 7b model's figures first, torch.compile last): the HBM bandwidth (a device copy, and a read-only reduction), decode ms/token
  at contexts 16/512/2048 and prefill tok/s at 128/1024 tokens for tcc w4a16 and fp16 (with and without the
  CUDA graph: TCC_CUDA_GRAPH=0), HF fp16 eager and HF with a static cache + torch.compile; the bytes a decode
  step reads (the artifact's weights + the KV cache at that context); the fraction of the roofline for the
  whole model and per layer (the slope between the 7b and short models); the issue's targets, pass or miss.
- profile: Nsight Compute on the 7b w4a16 model's generation (per kernel: time, DRAM and SM % of peak,
  achieved occupancy, registers), to say what bounds a missed target.

The device tool's call (the next session with a GPU; timeout leaves the script time to write its report):
    command: timeout -s TERM 585 bash benchmarks/gpu/check.sh --commit <short sha> --budget-s 540
    timeout_s: 600, carry: none (every package the check needs is on that machine's image)

--emulate --tiny runs the same end to end on a machine without a GPU: tiny models (hidden 64, 2 layers, vocab
256), tcc on the SIMT emulator (`tcc.load(out, emulate=True)`), HF in fp32 on the CPU as the reference and
baseline, small contexts; the GPU-only items (kernel tests on the GPU, sanitizers, the HBM probe, torch.compile)
are recorded as skipped with the reason. Its times are not speed figures. Without torch (CI), --source fixture
takes the repository's exported LLaMA fixture with fp32 ONNX Runtime as the reference and no HF rows.
tests/cuda/test_gpu_check.py runs it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
_spec = importlib.util.spec_from_file_location("llm_suite", os.path.join(REPO, "benchmarks", "llm_suite.py"))
SUITE = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(SUITE)

OPSET = SUITE.OPSET
PROTO_LIMIT = int(1.8e9)  # protobuf's 2 GB, with room for the graph: bigger exports keep weights outside
SEVEN_B = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
               vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
SMALL = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=704, vocab_size=4096, max_position_embeddings=2048, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-5)
# --source fixture (no torch): the repository's exported LLaMA decoder with past, ONNX Runtime as the reference
FIXTURE = os.path.join(REPO, "tests", "models", "llm", "llama_past_dynamo")
KERNEL_TESTS = ["tests/cuda/test_linalg.py", "tests/cuda/test_attention.py", "tests/cuda/test_elementwise.py"]
# The sanitizers' subset: the W4A16 GEMV/GEMM and fp16 GEMM cases, decode and prefill attention with the KV
# cache (the kernels with shared memory, warp shuffles and the split merge), the norms and the gathers.
SANITIZE_TESTS = ["tests/cuda/test_linalg.py", "tests/cuda/test_attention.py"]
SANITIZE_K = "qlinear_w4a16 or gemm_f16 or kvattention or norm or qgather"
TARGETS = {"w4a16_vs_hf": 3.5, "w4a16_vs_fp16": 3.0, "layer_roofline": 0.60, "prefill_vs_fp16": 0.8}
STAGES = ("env", "build", "kernels", "sanitize", "correct", "speed", "profile")
MIB = 2 ** 20


# ------------------------------------------------------------------------------------------------ plan
def plan(a) -> dict:
    """Models, contexts and sizes of this run (full GPU run, or --tiny)."""
    if a.tiny:
        tiny = {"decode_ctx": [16, 48], "prefill": [16, 40], "gen": 6, "greedy": 12, "prompt": 16, "group": 32,
                "max_prefill": 32, "repeat": 1}
        if a.source == "fixture":  # no torch here: the repository's exported fixture plays both roles
            with open(os.path.join(FIXTURE, "config.json")) as f:
                cfg = {k: v for k, v in json.load(f).items() if k in SEVEN_B or k == "num_hidden_layers"}
            return {"models": {"7b": cfg, "small": cfg}, "fixture": FIXTURE, **tiny}
        return {"models": {"7b": {**TINY}, "short": {**TINY, "num_hidden_layers": 1}, "small": {**TINY},
                           "tinyllama": {**TINY, "num_hidden_layers": 3, "num_key_value_heads": 1}}, **tiny}
    layers = a.layers
    return {"models": {"7b": {**SEVEN_B, "num_hidden_layers": layers},
                       "short": {**SEVEN_B, "num_hidden_layers": max(1, layers // 2)},
                       "small": {**SMALL}, "tinyllama": {**SUITE.CONFIGS["tinyllama"]}},
            "decode_ctx": [16, 512, 2048], "prefill": [128, 1024], "gen": 32, "greedy": 32, "prompt": 16,
            "group": 128, "max_prefill": 1024, "repeat": 3}


def model_qms(name: str) -> tuple[str, ...]:
    return {"small": ("w4a16",), "short": ("w4a16", "fp16")}.get(name, ("w4a16", "fp16"))


# ------------------------------------------------------------------------------------------------ runs
class Budget:
    """The run's time budget: stages ask for the seconds they need and are skipped when it is spent."""

    def __init__(self, seconds: float):
        self.t0, self.total = time.monotonic(), seconds

    def left(self) -> float:
        return self.total - (time.monotonic() - self.t0)

    def used(self) -> float:
        return time.monotonic() - self.t0


def log(msg: str) -> None:
    print(f"[check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def child_cmd(kind: str, args: dict) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "_child", kind, json.dumps(args)]


def run_child(kind: str, args: dict, timeout: float, env: dict | None = None) -> dict:
    """One child in a fresh interpreter (its own GPU context and memory); its last stdout line is JSON."""
    if timeout < 5:
        raise TimeoutError("no time left in the budget")
    proc = subprocess.Popen(child_cmd(kind, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"{kind} ran past its {timeout:.0f} s") from None
    except BaseException:  # SIGTERM's SystemExit: the child's group goes too
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.returncode != 0:
        lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
        raise RuntimeError(f"{kind} failed (exit {proc.returncode}): {lines[-1] if lines else '?'}")
    return json.loads(out.strip().splitlines()[-1])


class Background:
    """The model builds, one child per model, started at once so they overlap the kernel tests."""

    def __init__(self):
        self.jobs: dict[str, tuple[subprocess.Popen, str]] = {}
        self.results: dict[str, dict] = {}

    def start(self, name: str, kind: str, args: dict, logfile: str, env: dict | None = None) -> None:
        f = open(logfile, "w")
        proc = subprocess.Popen(child_cmd(kind, args), stdout=subprocess.PIPE, stderr=f, text=True,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.jobs[name] = (proc, logfile)

    def wait(self, name: str, deadline: float) -> dict:
        """The job's JSON; killed (and an error) at the monotonic deadline."""
        if name in self.results:
            return self.results[name]
        if name not in self.jobs:
            raise RuntimeError(f"{name} was not built")
        proc, logfile = self.jobs[name]
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self.results[name] = {"error": "not built within the time budget (killed)"}
            return self.results[name]
        if proc.returncode != 0:
            with open(logfile) as f:
                lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
            self.results[name] = {"error": f"exit {proc.returncode}: {lines[-1] if lines else '?'}"}
        else:
            self.results[name] = json.loads(out.strip().splitlines()[-1])
        return self.results[name]

    def kill_all(self) -> None:
        for name, (proc, _) in self.jobs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                self.results.setdefault(name, {"error": "not built within the time budget (killed)"})


# ------------------------------------------------------------------------------------------------ children
def child_build(a: dict) -> dict:
    """Make the model (HF checkpoint + ONNX export), then compile each qm. Returns paths and timings."""
    t0 = time.perf_counter()
    if a.get("fixture"):
        info = {"onnx": os.path.join(a["fixture"], "model.onnx"), "source": "fixture"}
    else:
        import torch

        torch.set_num_threads(a["threads"])
        info = {"hf": _make_hf(a["cfg"], a["dir"]), "source": "transformers"}
        info["onnx"] = _export(a["cfg"], a["dir"], a["export_dtype"])
    info["export_s"] = round(time.perf_counter() - t0, 1)
    info["artifacts"] = {}
    for qm in a["qms"]:
        t1 = time.perf_counter()
        out = os.path.join(a["dir"], f"cuda-{qm}")
        _compile(info["onnx"], out, qm, a)
        info["artifacts"][qm] = {"out": out, "compile_s": round(time.perf_counter() - t1, 1)}
    return info


def _make_hf(cfg: dict, d: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    config = LlamaConfig(**cfg, use_cache=True, rope_theta=10000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval().half()  # fp16 weights: HF fp16 and tcc fp16 compute with the same
    path = os.path.join(d, "hf")
    model.save_pretrained(path, safe_serialization=True)
    return path


def _export(cfg: dict, d: str, dtype: str) -> str:
    """The checkpoint exported as llm_suite.child_export does (TorchScript, opset 17, flat past). f32 by
    default: the fp16 checkpoint's values exactly, in the form llm_suite exports (a f16 export of these models
    meets a Cast f16 -> f16 in the rotary embedding that the cuda target has no kernel for: --export-dtype f16
    shows it)."""
    import warnings

    import onnx
    import torch
    from transformers import LlamaForCausalLM

    tdt = torch.float16 if dtype == "f16" else torch.float32
    model = LlamaForCausalLM.from_pretrained(os.path.join(d, "hf"), dtype=tdt,
                                             attn_implementation="eager").eval()
    flat = SUITE._flat_past_module(model)
    L = cfg["num_hidden_layers"]
    ins = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{n}" for i in range(L)
                                                             for n in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{n}" for i in range(L) for n in ("key", "value")]
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "past_seq+seq"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dyn.update({n: {0: "batch", 2: "past_seq"} for n in ins[3:]})
    dyn.update({n: {0: "batch", 2: "past_seq+seq"} for n in outs[1:]})
    ex = SUITE._feeds(cfg, 1, 3, 4, seed=1)
    args = tuple(torch.from_numpy(ex[n]).to(tdt) if n.startswith("past") else torch.from_numpy(ex[n]) for n in ins)
    raw_dir = os.path.join(d, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    raw = os.path.join(raw_dir, "model.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(flat, args, raw, dynamo=False, opset_version=OPSET, input_names=ins, output_names=outs,
                          dynamic_axes=dyn, do_constant_folding=True)
    del flat, model
    m = onnx.load(raw)
    m.ir_version = min(m.ir_version, SUITE.MAX_IR_VERSION)
    for n in m.graph.node:
        del n.metadata_props[:]
    del m.metadata_props[:]
    path = os.path.join(d, "model.onnx")
    if sum(len(t.raw_data) for t in m.graph.initializer) > PROTO_LIMIT:
        onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(m, path)
    shutil.rmtree(raw_dir, ignore_errors=True)
    shutil.copy(os.path.join(d, "hf", "config.json"), os.path.join(d, "config.json"))
    return path


def compile_options(qm: str, a: dict):
    from tcc.driver import CompileOptions

    return CompileOptions(target="cuda", cuda_arch=a["arch"], qm=qm, max_context=a["max_context"],
                          max_dims={"seq": a["max_prefill"]}, group_size=a["group"] if qm == "w4a16" else None,
                          round_to_nearest=True)


def _compile(model: str, out: str, qm: str, a: dict) -> dict:
    from tcc.driver import compile_model

    return compile_model(model, out, compile_options(qm, a))


def _prompt(vocab: int, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, vocab, n)]


def child_tcc(a: dict) -> dict:
    """Greedy tokens (and logits) or timings of one artifact, on the GPU or the emulator."""
    from tcc.runtime.session import load

    sess = load(a["out"], emulate=a["emulate"], verify=False)
    llm = sess.manifest["llm"]
    vocab = llm["vocab"]
    res = {"device": "simt emulator" if a["emulate"] else "gpu"}
    greedy = dict(temperature=0.0, repetition_penalty=1.0, eos_ids=set())
    if a["mode"] == "greedy":
        g = sess.generate(_prompt(vocab, a["prompt"]), max_new_tokens=a["n"], keep_logits=True, **greedy)
        np.save(a["logits"], np.array(g.step_logits, np.float32))
        res["tokens"] = g.tokens
    else:
        sess.generate(_prompt(vocab, 4), max_new_tokens=2, **greedy)  # warm: module load, first launches
        res["decode_ms"], res["prefill_tok_s"] = {}, {}
        for ctx in a["decode_ctx"]:
            sess.reset()
            g = sess.generate(_prompt(vocab, ctx, seed=ctx), max_new_tokens=a["gen"], **greedy)
            steps = g.step_seconds[1:] or g.step_seconds  # the first step also syncs the prefill's tail
            res["decode_ms"][str(ctx)] = 1e3 * statistics.median(steps)
        for n in a["prefill"]:
            times = []
            for _ in range(a["repeat"]):
                sess.reset()
                times.append(sess.generate(_prompt(vocab, n, seed=n), max_new_tokens=1, **greedy).prefill_seconds)
            res["prefill_tok_s"][str(n)] = n / statistics.median(times)
    res["graph_replays"] = _graph_replays(sess)
    return res


def _graph_replays(sess):
    import ctypes

    lib = getattr(sess, "_lib", None)
    if lib is None or not hasattr(lib, "tcc_model_graph_replays"):
        return None  # a runtime without CUDA graphs
    lib.tcc_model_graph_replays.restype = ctypes.c_int64
    lib.tcc_model_graph_replays.argtypes = [ctypes.c_void_p]
    return int(lib.tcc_model_graph_replays(sess._model))


def child_reference(a: dict) -> dict:
    """Greedy decoding of the compiled IR (the same options) by the reference interpreter."""
    from tcc.driver import optimize
    from tcc.ir.interpreter import ProgramState, run_graph

    graph, _, _ = optimize(a["onnx"], compile_options(a["qm"], a))
    llm = graph.meta["llm"]
    state = ProgramState(graph)
    state.logits_rows = 1
    new, tokens, logits = _prompt(llm.get("vocab") or graph.outputs[0].shape[-1], a["prompt"]), [], []
    for _ in range(a["n"]):
        out = run_graph(graph, {llm["input_ids"]: np.array([new], np.int64)}, state=state)
        row = np.asarray(out[llm["logits"]][0, -1], np.float32)
        logits.append(row)
        tokens.append(int(np.argmax(row)))
        new = [tokens[-1]]
    np.save(a["logits"], np.array(logits, np.float32))
    return {"tokens": tokens}


def child_ort(a: dict) -> dict:
    """Greedy tokens and logits of fp32 ONNX Runtime on the CPU (the reference where torch is missing)."""
    sys.path.insert(0, REPO)
    from tests.e2e.llm_oracle import OrtDecoder

    tokens, logits = OrtDecoder(a["onnx"]).greedy(_prompt(a["vocab"], a["prompt"]), a["n"])
    np.save(a["logits"], np.array(logits, np.float32))
    return {"tokens": [int(t) for t in tokens], "dtype": "float32", "device": "cpu"}


def _hf_model(a: dict):
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    dev = "cuda" if not a["emulate"] else "cpu"
    dtype = torch.float16 if dev == "cuda" else torch.float32  # the CPU reference in fp32 (fp16 weights)
    model = LlamaForCausalLM.from_pretrained(a["hf"], dtype=dtype).to(dev).eval()
    return model, dev, dtype


def _sync(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def child_hf(a: dict) -> dict:
    """HF transformers: greedy tokens and logits, or eager timings, or static cache + torch.compile timings."""
    import torch

    model, dev, dtype = _hf_model(a)
    vocab = model.config.vocab_size
    res = {"device": dev, "dtype": str(dtype).replace("torch.", ""),
           "attn_implementation": getattr(model.config, "_attn_implementation", None),
           "transformers": __import__("transformers").__version__, "torch": torch.__version__}
    with torch.inference_mode():
        if a["mode"] == "greedy":
            ids = torch.tensor([_prompt(vocab, a["prompt"])], device=dev)
            out = model(input_ids=ids, use_cache=True)
            logits = []
            for _ in range(a["n"]):
                row = out.logits[0, -1].float()
                logits.append(row.cpu().numpy())
                tok = row.argmax().view(1, 1)
                out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            np.save(a["logits"], np.array(logits, np.float32))
            res["tokens"] = [int(np.argmax(r)) for r in logits]
        elif a["mode"] == "eager":
            res.update(_hf_eager_times(model, dev, vocab, a))
        else:
            res.update(_hf_static_times(model, dev, vocab, a))
    return res


def _hf_eager_times(model, dev: str, vocab: int, a: dict) -> dict:
    import torch

    def prefill(n: int, seed: int):
        ids = torch.tensor([_prompt(vocab, n, seed=seed)], device=dev)
        _sync(dev)
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        _sync(dev)
        return out, time.perf_counter() - t

    prefill(4, 4)
    res = {"decode_ms": {}, "prefill_tok_s": {}}
    for ctx in a["decode_ctx"]:
        out, _ = prefill(ctx, ctx)
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)  # one untimed step
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(dev)
        t = time.perf_counter()
        for _ in range(a["gen"]):
            out = model(input_ids=tok, past_key_values=cache, use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(dev)
        res["decode_ms"][str(ctx)] = 1e3 * (time.perf_counter() - t) / a["gen"]
    for n in a["prefill"]:
        res["prefill_tok_s"][str(n)] = n / statistics.median(prefill(n, n)[1] for _ in range(a["repeat"]))
    return res


def _hf_static_times(model, dev: str, vocab: int, a: dict) -> dict:
    """A static KV cache; on a GPU the decode step through torch.compile(mode="reduce-overhead") (CUDA
    graphs), on the CPU without compiling (the code path only). One cache for every context: attention then
    spans the whole static cache at every step, as HF's static cache does."""
    import torch
    from transformers import StaticCache

    warm = 3
    length = max(a["decode_ctx"]) + warm + a["gen"] + 2
    cache = StaticCache(config=model.config, max_cache_len=length)

    def step(tok, pos):
        return model(input_ids=tok, past_key_values=cache, cache_position=pos, use_cache=True).logits

    fn = torch.compile(step, mode="reduce-overhead") if dev == "cuda" else step
    res = {"decode_ms": {}, "compiled": dev == "cuda"}
    t0 = time.perf_counter()
    for ctx in a["decode_ctx"]:
        cache.reset()
        ids = torch.tensor([_prompt(vocab, ctx, seed=ctx)], device=dev)
        logits = model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(ctx, device=dev),
                       use_cache=True).logits
        tok = logits[:, -1:].argmax(-1)
        pos = ctx
        for _ in range(warm):  # compiles on first use; then replays
            tok = fn(tok, torch.tensor([pos], device=dev))[:, -1:].argmax(-1).clone()
            pos += 1
        _sync(dev)
        t = time.perf_counter()
        for _ in range(a["gen"]):
            tok = fn(tok, torch.tensor([pos], device=dev))[:, -1:].argmax(-1).clone()
            pos += 1
        _sync(dev)
        res["decode_ms"][str(ctx)] = 1e3 * (time.perf_counter() - t) / a["gen"]
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def child_bandwidth(a: dict) -> dict:
    """HBM bandwidth through torch: a device-to-device copy (bytes read + written) and a read-only reduction,
    each the median of 20 after 3 warm-ups, on 2 GiB buffers (far above the L2)."""
    import torch

    n = a["bytes"] // 2
    x = torch.randn(n, device="cuda", dtype=torch.float16)
    y = torch.empty_like(x)

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(20):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        return statistics.median(times)

    copy = timed(lambda: y.copy_(x))
    read = timed(lambda: torch.sum(x, dtype=torch.float32))
    props = torch.cuda.get_device_properties(0)
    return {"copy_gbs": 2 * x.numel() * 2 / copy / 1e9, "read_gbs": x.numel() * 2 / read / 1e9,
            "bytes": x.numel() * 2, "gpu": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
            "memory_gib": props.total_memory / 2 ** 30}


CHILDREN = {"build": child_build, "tcc": child_tcc, "reference": child_reference, "hf": child_hf, "ort": child_ort,
            "bandwidth": child_bandwidth}


# ------------------------------------------------------------------------------------------------ stages
def stage_env(a, res: dict) -> None:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
           "mode": "emulate" if a.emulate else "gpu"}
    for tool, args in (("nvidia-smi", ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]),
                       ("nvcc", ["--version"]), ("compute-sanitizer", ["--version"]), ("ncu", ["--version"])):
        path = shutil.which(tool) or (os.path.join("/usr/local/cuda/bin", tool)
                                      if os.path.exists(os.path.join("/usr/local/cuda/bin", tool)) else None)
        if not path:
            env[tool] = None
            continue
        try:
            r = subprocess.run([path, *args], capture_output=True, text=True, timeout=30)
            lines = [ln for ln in (r.stdout + r.stderr).strip().splitlines() if ln.strip()]
            env[tool] = lines[-1] if tool != "nvidia-smi" else "; ".join(lines)
        except (OSError, subprocess.TimeoutExpired) as e:
            env[tool] = f"failed: {e}"
    versions, missing = {}, []
    # tcc's run-time dependencies (pyproject.toml), then what the check itself uses
    for mod in ("numpy", "onnx", "ml_dtypes", "jinja2", "tokenizers", "networkx", "tqdm", "torch", "transformers",
                "onnxruntime", "safetensors", "pytest", "xdist"):
        try:
            versions[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError as e:
            versions[mod] = None
            missing.append(f"{mod} ({e})")
    env["packages"], env["missing"] = versions, missing
    env["cmake"] = shutil.which("cmake")
    import tcc

    env["tcc"] = os.path.dirname(os.path.realpath(tcc.__file__))
    env["commit"] = a.commit
    if not env["commit"]:  # the device machine gets the working tree without .git: pass --commit there
        try:
            env["commit"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True).stdout.strip() or None
        except OSError:
            pass
    res["env"] = env


def start_builds(a, p: dict, res: dict, bg: Background) -> None:
    """Every model's build in the background; build jobs share the cores."""
    names = [n for n in ("7b", "small", "short", "tinyllama") if n in p["models"] and n not in a.skip_models]
    share = {"7b": 6, "short": 4, "tinyllama": 4, "small": 2}  # of 16: the 7b model is on the critical path
    cpus = os.cpu_count() or 2
    max_ctx = max(p["decode_ctx"]) + p["gen"] + 16
    for name in names:
        threads = max(1, cpus * share[name] // 16)
        d = os.path.join(a.work, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        args = {"cfg": p["models"][name], "dir": d, "qms": model_qms(name), "threads": threads,
                "arch": "native" if not a.emulate else "sm_80", "max_context": max_ctx,
                "max_prefill": p["max_prefill"], "group": p["group"], "export_dtype": a.export_dtype,
                "fixture": p.get("fixture")}
        bg.start(name, "build", args, os.path.join(a.work, f"build-{name}.log"),
                 env={"TCC_BUILD_JOBS": str(threads), "OMP_NUM_THREADS": str(threads)})
    res["build"] = {"started": names, "max_context": max_ctx}


def _pytest(cmd_prefix: list[str], files: list[str], extra: list[str], env: dict, timeout: float, log_path: str) -> dict:
    cmd = [*cmd_prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *files]
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env},
                           timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        with open(log_path, "w") as f:
            f.write(out)
        return {"error": f"ran past {timeout:.0f} s", "seconds": round(time.monotonic() - t)}
    out = r.stdout + r.stderr
    with open(log_path, "w") as f:
        f.write(out)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", out)}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    sanitizer = re.findall(r"=+ (?:ERROR SUMMARY|RACECHECK SUMMARY): .*", out)
    return {"exit": r.returncode, "counts": counts, "failed": failed[:20], "sanitizer": sanitizer[-3:],
            "seconds": round(time.monotonic() - t)}


def _sanitizer() -> str:
    return shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"


def stage_kernels(a, res: dict, budget: Budget) -> None:
    """The CUDA kernel tests on the GPU (the nvcc/SASS tests run in CI: not here)."""
    env = {"TCC_CUDA_TEST_DEVICE": "gpu", "PYTHONUNBUFFERED": "1"}
    timeout = min(a.kernel_timeout, a.build_deadline - time.monotonic())
    if timeout < 20:
        res["kernels"] = {"skipped": "no time left before the models must be ready"}
        return
    # one worker per module (loadfile): each module's library is built by nvcc once
    res["kernels"] = _pytest([], KERNEL_TESTS, ["-n", "3", "--dist", "loadfile", "-k", "not nvcc"], env, timeout,
                             os.path.join(a.work, "kernels.log"))


def stage_sanitize(a, res: dict, budget: Budget, bg: Background) -> None:
    """A subset of the kernel tests, then the small w4a16 model's greedy generation, under memcheck and
    racecheck. The kernel tests' arrays are host memory pinned per call (tests/cuda/harness.py), so memcheck's
    bounds there are the host mappings'; the model's buffers are cudaMalloc'd (weights, KV cache, arena)."""
    out = {}
    res["sanitize"] = out
    for check in ("memcheck", "racecheck"):
        timeout = min(a.sanitize_timeout, a.build_deadline - time.monotonic())
        if timeout < 20:
            out[check] = {"skipped": "no time left before the models must be ready"}
            continue
        prefix = [_sanitizer(), "--tool", check, "--error-exitcode", "86", "--print-limit", "20",
                  "--target-processes", "all"]
        out[check] = _pytest(prefix, SANITIZE_TESTS, ["-n", "0", "-k", SANITIZE_K], {"TCC_CUDA_TEST_DEVICE": "gpu"},
                             timeout, os.path.join(a.work, f"{check}.log"))
    small = bg.wait("small", a.build_deadline) if "small" in bg.jobs else {}
    path = (small.get("artifacts") or {}).get("w4a16", {}).get("out")
    for check in ("memcheck", "racecheck"):
        key = f"{check} small model"
        timeout = min(a.sanitize_timeout, a.build_deadline - time.monotonic())
        if not path:
            out[key] = {"skipped": f"no small w4a16 artifact ({small.get('error', 'not built')})"}
            continue
        if timeout < 20:
            out[key] = {"skipped": "no time left before the models must be ready"}
            continue
        args = {"emulate": False, "mode": "greedy", "out": path, "prompt": 16, "n": 4,
                "logits": os.path.join(a.work, f"{check}-small.npy")}
        cmd = [_sanitizer(), "--tool", check, "--error-exitcode", "86", "--print-limit", "20",
               "--target-processes", "all", *child_cmd("tcc", args)]
        t = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)
            text = r.stdout + r.stderr
            with open(os.path.join(a.work, f"{check}-small.log"), "w") as f:
                f.write(text)
            out[key] = {"exit": r.returncode, "counts": {}, "failed": [],
                        "sanitizer": re.findall(r"=+ (?:ERROR SUMMARY|RACECHECK SUMMARY): .*", text)[-3:],
                        "seconds": round(time.monotonic() - t)}
        except subprocess.TimeoutExpired:
            out[key] = {"error": f"ran past {timeout:.0f} s"}


def _artifact(res: dict, model: str, qm: str) -> str | None:
    b = res["build"].get("models", {}).get(model, {})
    return (b.get("artifacts") or {}).get(qm, {}).get("out")


def _child_args(a, p: dict) -> dict:
    return {"emulate": a.emulate, "decode_ctx": p["decode_ctx"], "prefill": p["prefill"], "gen": p["gen"],
            "repeat": p["repeat"], "prompt": p["prompt"], "n": p["greedy"]}


def _divergence(got: list[int], want: list[int], got_logits: np.ndarray, want_logits: np.ndarray) -> dict:
    """Where two greedy runs part, and how close a tie it was in each engine's own logits."""
    n = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), None)
    same = n if n is not None else min(len(got), len(want))
    r = {"equal": got == want, "agree": same, "of": len(want)}
    if same:
        r["max_abs_logit_diff"] = float(np.abs(got_logits[:same] - want_logits[:same]).max())
    if n is not None:
        w, g = want_logits[n], got_logits[n]
        r["at"] = n
        # each engine's margin between its own pick and the other's pick at the first differing step
        r["ref_gap"] = float(w[want[n]] - w[got[n]])
        r["tcc_gap"] = float(g[got[n]] - g[want[n]])
        r["near_tie"] = bool(r["ref_gap"] <= max(0.05, 4 * r.get("max_abs_logit_diff", 0.0)))
    return r


def _limit(a, budget: Budget, cap: float = 240) -> float:
    return min(cap, budget.left() - a.reserve)


def correct_model(a, p: dict, res: dict, budget: Budget, model: str) -> None:
    """tcc fp16 greedy against HF (fp16 on the GPU; fp32 on the CPU when emulating; ORT fp32 without torch),
    and tcc w4a16 against tcc fp16, on one model."""
    out = res.setdefault("correct", {})
    base = _child_args(a, p)
    m = res["build"]["models"][model]
    fp16, w4 = _artifact(res, model, "fp16"), _artifact(res, model, "w4a16")
    logits = {k: os.path.join(a.work, f"greedy-{model}-{k}.npy") for k in ("hf", "fp16", "w4a16")}
    try:
        if not fp16:
            raise RuntimeError(f"no {model} fp16 artifact ({m.get('error', 'not built')})")
        if "hf" in m:
            hf = run_child("hf", {**base, "mode": "greedy", "hf": m["hf"], "logits": logits["hf"]}, _limit(a, budget))
            ref = f"HF transformers {hf['dtype']} on {hf['device']}"
        else:
            hf = run_child("ort", {**base, "onnx": m["onnx"], "vocab": p["models"][model]["vocab_size"],
                                   "logits": logits["hf"]}, _limit(a, budget))
            ref = "ONNX Runtime float32 on cpu (no torch here)"
        t16 = run_child("tcc", {**base, "mode": "greedy", "out": fp16, "logits": logits["fp16"]}, _limit(a, budget))
        out[f"{model} fp16 vs HF"] = {**_divergence(t16["tokens"], hf["tokens"], np.load(logits["fp16"]),
                                                    np.load(logits["hf"])), "reference": ref}
        if w4:
            t4 = run_child("tcc", {**base, "mode": "greedy", "out": w4, "logits": logits["w4a16"]}, _limit(a, budget))
            out[f"{model} w4a16 vs tcc fp16"] = {
                **_divergence(t4["tokens"], t16["tokens"], np.load(logits["w4a16"]), np.load(logits["fp16"])),
                "reference": "tcc fp16 (int4 weights: agreement, not equality, is expected)"}
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as e:
        out[f"{model} fp16 vs HF"] = {"error": str(e)}


def correct_small(a, p: dict, res: dict, budget: Budget) -> None:
    """tcc w4a16 against the reference interpreter on the same quantized IR (the small model)."""
    out = res.setdefault("correct", {})
    base = _child_args(a, p)
    small = res["build"]["models"]["small"]
    try:
        if not _artifact(res, "small", "w4a16"):
            raise RuntimeError(f"no small w4a16 artifact ({small.get('error', 'not built')})")
        n = min(12, p["greedy"])
        ref_path, got_path = os.path.join(a.work, "greedy-small-ref.npy"), os.path.join(a.work, "greedy-small.npy")
        cargs = {**base, "onnx": small["onnx"], "qm": "w4a16", "group": p["group"], "arch": "sm_80",
                 "max_context": res["build"]["max_context"], "max_prefill": p["max_prefill"], "logits": ref_path,
                 "n": n}
        ref = run_child("reference", cargs, _limit(a, budget))
        got = run_child("tcc", {**base, "mode": "greedy", "out": _artifact(res, "small", "w4a16"), "logits": got_path,
                                "n": n}, _limit(a, budget))
        out["small w4a16 vs reference"] = {**_divergence(got["tokens"], ref["tokens"], np.load(got_path),
                                                         np.load(ref_path)),
                                           "reference": "tcc's reference interpreter on the same quantized IR"}
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as e:
        out["small w4a16 vs reference"] = {"error": str(e)}


def _bytes_per_step(out: str, ctx: int) -> dict:
    from tcc.runtime.roofline import decode_bytes_per_token
    from tcc.runtime.session import _read_manifest

    return decode_bytes_per_token(_read_manifest(out), ctx)


# (engine, model, qm, graph): in the order they run; what the budget cannot fit is skipped from the end
SPEED_RUNS = {
    "7b": [("tcc", "7b", "w4a16", True), ("tcc", "7b", "fp16", True), ("hf-eager", "7b", "fp16", None),
           ("tcc", "7b", "w4a16", False), ("tcc", "7b", "fp16", False)],
    "short": [("tcc", "short", "w4a16", True), ("tcc", "short", "fp16", True), ("hf-eager", "short", "fp16", None)],
    "tinyllama": [("tcc", "tinyllama", "w4a16", True), ("tcc", "tinyllama", "fp16", True),
                  ("hf-eager", "tinyllama", "fp16", None)],
    "static": [("hf-static", "7b", "fp16", None)],
}


def speed_init(a, p: dict, res: dict, budget: Budget) -> None:
    """The bandwidth the roofline is taken against: the GPU's HBM (torch), or the CPU's when emulating."""
    out = res["speed"] = {"engines": {}, "skipped": []}
    if a.emulate:
        from tcc.runtime.roofline import measure_bandwidth

        bw = measure_bandwidth(1, nbytes=1 << 28, passes=3)
        out["bandwidth"] = {"read_gbs": bw["best_gbs"], "copy_gbs": None, "gpu": "none: the CPU's read bandwidth "
                            "(1 thread; the emulator's times are not speed figures)"}
    else:
        try:
            out["bandwidth"] = run_child("bandwidth", {"bytes": 2 << 30}, min(60, budget.left()))
        except (RuntimeError, TimeoutError, OSError, ValueError) as e:  # the timings are still worth taking
            out["bandwidth"] = {"read_gbs": None, "copy_gbs": None, "gpu": None, "error": str(e)}


def speed_run(a, p: dict, res: dict, budget: Budget, run: tuple) -> None:
    engine, model, qm, graph = run
    out = res["speed"]
    bw = out["bandwidth"]["read_gbs"]
    key = f"{model}:{engine}" + (f":{qm}:{'graph' if graph else 'nograph'}" if engine == "tcc" else "")
    if model not in res["build"].get("models", {}):
        out["skipped"].append(f"{key}: the {model} model is not part of this run")
        return
    left = budget.left() - a.reserve
    if left < 20:
        out["skipped"].append(f"{key}: no time left in the budget")
        return
    m = res["build"]["models"][model]
    base = _child_args(a, p)
    try:
        if engine == "tcc":
            path = _artifact(res, model, qm)
            if not path:
                raise RuntimeError(f"no {model} {qm} artifact ({m.get('error', 'not built')})")
            r = run_child("tcc", {**base, "mode": "time", "out": path}, min(a.stage_timeout, left),
                          env={"TCC_CUDA_GRAPH": "1" if graph else "0"})
            r["bytes"] = {str(c): _bytes_per_step(path, c) for c in p["decode_ctx"]}
        else:
            if "hf" not in m:
                why = "torch/transformers missing: --source fixture" if m.get("source") == "fixture" else \
                    m.get("error", "not built")
                raise RuntimeError(f"no {model} HF checkpoint ({why})")
            r = run_child("hf", {**base, "mode": engine.split("-")[1], "hf": m["hf"]},
                          min(a.stage_timeout if engine == "hf-eager" else a.compile_timeout, left))
            fp16 = _artifact(res, model, "fp16")
            r["bytes"] = {str(c): _bytes_per_step(fp16, c) for c in p["decode_ctx"]} if fp16 else {}
        r.update(model=model, engine=engine, qm=qm, graph=graph)
        r["roofline"] = {c: (r["bytes"][c]["total"] / (bw * 1e9) * 1e3) / ms
                         for c, ms in r.get("decode_ms", {}).items() if c in r["bytes"] and bw}
        out["engines"][key] = r
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as e:
        out["engines"][key] = {"error": str(e), "model": model, "engine": engine, "qm": qm, "graph": graph}


def speed_finish(a, p: dict, res: dict, budget: Budget) -> None:
    if "speed" in res and "bandwidth" in res["speed"]:
        res["speed"]["per_layer"] = per_layer(res, p, res["speed"]["bandwidth"]["read_gbs"])
        res["speed"]["targets"] = targets(res, p)


NCU_METRICS = ("gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
               "sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm__warps_active.avg.pct_of_peak_sustained_active",
               "launch__registers_per_thread")


def profile_ncu(a, p: dict, res: dict, budget: Budget) -> None:
    """Nsight Compute on the 7b w4a16 model's greedy run (a 16-token prefill, then decode steps; no graph, so
    every launch is its own kernel): per kernel its time, DRAM and SM throughput (% of peak), achieved
    occupancy and registers -- what bounds a step that misses its target (docs/cuda.md)."""
    if a.emulate:
        res["profile"] = {"skipped": "needs a GPU"}
        return
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    path = _artifact(res, "7b", "w4a16")
    if not path or not os.path.exists(ncu):
        res["profile"] = {"skipped": "no 7b w4a16 artifact" if not path else "ncu not found"}
        return
    args = {**_child_args(a, p), "mode": "greedy", "out": path, "n": 4,
            "logits": os.path.join(a.work, "ncu-greedy.npy")}
    cmd = [ncu, "--target-processes", "all", "--csv", "--page", "raw", "--print-units", "base",
           "--print-kernel-base", "function", "--clock-control", "none", "--launch-count", "400",
           "--metrics", ",".join(NCU_METRICS), *child_cmd("tcc", args)]
    timeout = min(a.stage_timeout, budget.left() - a.reserve)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True,
                           env={**os.environ, "TCC_CUDA_GRAPH": "0"})
    except subprocess.TimeoutExpired:
        res["profile"] = {"error": f"ncu ran past {timeout:.0f} s"}
        return
    res["profile"] = {"exit": r.returncode, "kernels": ncu_summary(r.stdout),
                      "tail": (r.stderr.strip().splitlines() or [""])[-1][:300]}


def ncu_summary(text: str) -> list[dict]:
    """Per kernel name (from ncu's raw CSV page): launches, total and mean time, mean % of peak DRAM and SM
    throughput, achieved occupancy, registers; the most expensive first."""
    import csv

    rows = list(csv.reader(ln for ln in text.splitlines() if ln.startswith('"')))
    head = next((r for r in rows if "Kernel Name" in r), None)
    if head is None:
        return []
    col = {name: i for i, name in enumerate(head)}
    agg: dict[str, dict] = {}
    for r in rows:
        if r is head or len(r) != len(head) or not r[col["ID"]].strip().isdigit():
            continue  # the header, the units row

        def num(metric):
            try:
                return float(r[col[metric]].replace(",", ""))
            except (KeyError, ValueError):
                return None

        k = agg.setdefault(r[col["Kernel Name"]], {"kernel": r[col["Kernel Name"]], "launches": 0, "ns": 0.0,
                                                    "dram": [], "sm": [], "occupancy": [], "regs": None})
        k["launches"] += 1
        k["ns"] += num("gpu__time_duration.sum") or 0.0
        for key, metric in (("dram", NCU_METRICS[1]), ("sm", NCU_METRICS[2]), ("occupancy", NCU_METRICS[3])):
            v = num(metric)
            if v is not None:
                k[key].append(v)
        k["regs"] = num("launch__registers_per_thread")
    out = []
    for k in sorted(agg.values(), key=lambda k: -k["ns"]):
        out.append({"kernel": k["kernel"], "launches": k["launches"], "total_us": k["ns"] / 1e3,
                    "mean_us": k["ns"] / 1e3 / k["launches"], "regs": k["regs"],
                    **{key: statistics.mean(k[key]) if k[key] else None for key in ("dram", "sm", "occupancy")}})
    return out


def measure_tasks(stages: list[str], models: dict) -> list[tuple]:
    """The correctness and speed work in priority order: the 7b model's (the targets), then the per-layer slope,
    the small model's w4a16 check, TinyLlama, and last the torch.compile baseline (the slowest to start)."""
    c, s = "correct" in stages, "speed" in stages
    tasks = []
    if s:
        tasks.append(("speed", "bandwidth", speed_init, ()))
    if c and "7b" in models:
        tasks.append(("correct", "7b", correct_model, ("7b",)))
    if s:
        tasks += [("speed", "/".join(map(str, r)), speed_run, (r,)) for r in SPEED_RUNS["7b"] + SPEED_RUNS["short"]]
    if c and "small" in models:
        tasks.append(("correct", "small", correct_small, ()))
    if c and "tinyllama" in models:
        tasks.append(("correct", "tinyllama", correct_model, ("tinyllama",)))
    if s:
        tasks += [("speed", "/".join(map(str, r)), speed_run, (r,)) for r in SPEED_RUNS["tinyllama"]]
    if "profile" in stages and "7b" in models:
        tasks.append(("profile", "ncu", profile_ncu, ()))
    if s:
        tasks += [("speed", "/".join(map(str, r)), speed_run, (r,)) for r in SPEED_RUNS["static"]]
        tasks.append(("speed", "summary", speed_finish, ()))
    return tasks


def per_layer(res: dict, p: dict, bw: float) -> dict:
    """The per-layer figures from the slope between the 7b and short models (same widths, fewer layers)."""
    eng = res["speed"]["engines"]
    models = res["build"].get("models", {})
    out = {}
    if "short" not in p["models"] or "7b" not in p["models"]:
        return out
    L = p["models"]["7b"]["num_hidden_layers"]
    S = p["models"]["short"]["num_hidden_layers"]
    for key, r in eng.items():
        if not key.startswith("7b:") or "decode_ms" not in r:
            continue
        short = eng.get("short:" + key[3:].replace(":nograph", ":graph"))
        if not short or "decode_ms" not in short or L == S:
            continue
        row = {}
        for c in map(str, p["decode_ctx"]):
            ms = (r["decode_ms"][c] - short["decode_ms"][c]) / (L - S)
            nbytes = (r["bytes"][c]["total"] - short["bytes"][c]["total"]) / (L - S) if short.get("bytes") else None
            row[c] = {"ms": ms, "bytes": nbytes,
                      "roofline": (nbytes / (bw * 1e9) * 1e3) / ms if nbytes and bw and ms > 0 else None,
                      "ms_32_layers": r["decode_ms"][c] + (32 - L) * ms}
        if ":nograph" not in key:
            out[key[3:]] = row
    if models:
        out["layers"] = [L, S]
    return out


def targets(res: dict, p: dict) -> list[dict]:
    """The issue's targets against this run's figures (at every decode context; pass when met at all)."""
    eng = res["speed"]["engines"]
    rows = []

    def ms(key, c):
        return eng.get(key, {}).get("decode_ms", {}).get(c)

    for c in map(str, p["decode_ctx"]):
        w4, f16, hf = ms("7b:tcc:w4a16:graph", c), ms("7b:tcc:fp16:graph", c), ms("7b:hf-eager", c)
        rows.append({"target": f"w4a16 decode vs HF fp16 eager, ctx {c}", "value": hf / w4 if w4 and hf else None,
                     "want": TARGETS["w4a16_vs_hf"]})
        rows.append({"target": f"w4a16 decode vs tcc fp16, ctx {c}", "value": f16 / w4 if w4 and f16 else None,
                     "want": TARGETS["w4a16_vs_fp16"]})
        lay = res["speed"]["per_layer"].get("tcc:w4a16:graph", {}).get(c, {})
        rows.append({"target": f"w4a16 decode layer at the HBM roofline, ctx {c}", "value": lay.get("roofline"),
                     "want": TARGETS["layer_roofline"]})
    n = str(max(p["prefill"]))
    pw = eng.get("7b:tcc:w4a16:graph", {}).get("prefill_tok_s", {}).get(n)
    pf = eng.get("7b:tcc:fp16:graph", {}).get("prefill_tok_s", {}).get(n)
    rows.append({"target": f"w4a16 prefill {n} tokens vs tcc fp16", "value": pw / pf if pw and pf else None,
                 "want": TARGETS["prefill_vs_fp16"]})
    for r in rows:
        r["result"] = "n/a" if r["value"] is None else ("pass" if r["value"] >= r["want"] else "miss")
    return rows


# ------------------------------------------------------------------------------------------------ report
def _f(x, fmt=".2f", none="–") -> str:
    return none if x is None else format(x, fmt)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.2g}%"


def markdown(res: dict, p: dict) -> str:
    env = res.get("env", {})
    lines = [f"# tcc CUDA check ({env.get('mode', '?')}): {res.get('gpu') or 'no GPU'}", "",
             f"{env.get('date', '?')}, commit {env.get('commit')}, budget {res.get('budget_s')} s, used "
             f"{_f(res.get('used_s'), '.0f')} s. Models: " + ", ".join(
                 f"{k} (hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, vocab {m['vocab_size']})"
                 for k, m in p["models"].items()) + ".", ""]
    sp = res.get("speed", {})
    bw = sp.get("bandwidth", {})
    if bw.get("error"):
        lines += [f"HBM bandwidth: not measured ({bw['error'][:200]}); no roofline figures.", ""]
    elif bw:
        lines += [f"HBM bandwidth: read {_f(bw.get('read_gbs'), '.0f')} GB/s (reduction), copy "
                  f"{_f(bw.get('copy_gbs'), '.0f')} GB/s (read + written); roofline = bytes per step / read rate.", ""]
    ctx, pre = [str(c) for c in p["decode_ctx"]], [str(n) for n in p["prefill"]]
    head = (["engine", "model"] + [f"decode ms @{c}" for c in ctx] + [f"prefill tok/s @{n}" for n in pre]
            + [f"MiB/step @{ctx[-1]}"] + [f"roofline @{c}" for c in ctx])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in sp.get("engines", {}).items():
        name = key.split(":", 1)[1].replace(":graph", " (graph)").replace(":nograph", " (no graph)")
        if r.get("graph_replays") is not None:
            name += f" [{r['graph_replays']} replays]"
        if "error" in r:
            lines.append(f"| {name} | {r['model']} | " + " | ".join(["–"] * (len(head) - 3)) + f" | {r['error'][:80]} |")
            continue
        b = r.get("bytes", {}).get(ctx[-1], {}).get("total")
        cells = ([_f(r.get("decode_ms", {}).get(c)) for c in ctx] + [_f(r.get("prefill_tok_s", {}).get(n), ".0f")
                 for n in pre] + [_f(b / MIB if b else None, ".0f" if b and b >= 100 * MIB else ".2f")]
                 + [_pct(r.get("roofline", {}).get(c)) for c in ctx])
        lines.append(f"| {name} | {r['model']} | " + " | ".join(cells) + " |")
    lay = sp.get("per_layer", {})
    if any(k != "layers" for k in lay):
        L, S = lay.get("layers", ["?", "?"])
        lines += ["", f"Per layer (slope between {L} and {S} layers; 32-layer decode extrapolated):", "",
                  "| engine | " + " | ".join(f"ms/layer @{c} | roofline @{c} | 32 layers ms @{c}" for c in ctx) + " |",
                  "|---|" + "---|---|---|" * len(ctx)]
        for key, row in lay.items():
            if key == "layers":
                continue
            lines.append(f"| {key.replace(':graph', '')} | " + " | ".join(
                f"{_f(row[c]['ms'], '.3f')} | {_pct(row[c]['roofline'])} | "
                f"{_f(row[c]['ms_32_layers'])}" for c in ctx) + " |")
    if sp.get("targets"):
        lines += ["", "| target | measured | wanted | result |", "|---|---|---|---|"]
        for t in sp["targets"]:
            lines.append(f"| {t['target']} | {_f(t['value'])} | ≥ {t['want']} | {t['result']} |")
    lines += ["", "| check | result |", "|---|---|"]
    for k, v in res.get("correct", {}).items():
        if "error" in v:
            lines.append(f"| {k} | error: {v['error'][:100]} |")
            continue
        txt = f"{v['agree']}/{v['of']} tokens equal"
        if "max_abs_logit_diff" in v:
            txt += f", max |Δlogit| {v['max_abs_logit_diff']:.3g} before any difference"
        if "at" in v:
            txt += (f"; first difference at step {v['at']}: reference margin {v['ref_gap']:.3g}, tcc margin "
                    f"{v['tcc_gap']:.3g} ({'a near-tie' if v['near_tie'] else 'NOT a near-tie'})")
        lines.append(f"| {k} | {txt} (reference: {v.get('reference', 'tcc fp16')}) |")
    for k in ("kernels", "sanitize"):
        v = res.get(k)
        if v is None:
            continue
        items = v.items() if k == "sanitize" else [("on the GPU", v)]
        for name, r in items:
            desc = r.get("skipped") or r.get("error") or (
                f"exit {r['exit']}, {r['counts']}" + (f", failed: {', '.join(r['failed'][:5])}" if r["failed"] else "")
                + (f", {r['sanitizer'][-1]}" if r.get("sanitizer") else ""))
            label = ("kernel tests on the GPU" if k == "kernels" else
                     f"{name.split()[0]}: the small model's generation" if name.endswith("small model") else
                     f"{name}: kernel tests")
            lines.append(f"| {label} | {desc} |")
    for name, m in res.get("build", {}).get("models", {}).items():
        desc = m.get("error") or (f"export {m['export_s']} s; compile " + ", ".join(
            f"{q} {x['compile_s']} s" for q, x in m["artifacts"].items()))
        lines.append(f"| build {name} | {desc} |")
    prof = res.get("profile", {})
    if prof.get("kernels"):
        lines += ["", "Nsight Compute, 7b w4a16 (16-token prefill + decode steps, no graph), by total time:", "",
                  "| kernel | launches | total µs | mean µs | DRAM % peak | SM % peak | occupancy % | regs |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in prof["kernels"][:15]:
            lines.append(f"| {k['kernel'][:60]} | {k['launches']} | {_f(k['total_us'], '.1f')} | "
                         f"{_f(k['mean_us'], '.1f')} | {_f(k['dram'], '.0f')} | {_f(k['sm'], '.0f')} | "
                         f"{_f(k['occupancy'], '.0f')} | {_f(k['regs'], '.0f')} |")
    elif prof:
        lines += ["", f"Nsight Compute: {prof.get('skipped') or prof.get('error') or prof.get('tail')}"]
    if res.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(res["skipped"])]
    if res.get("errors"):
        lines += ["", "Errors: " + "; ".join(res["errors"])]
    if sp.get("skipped"):
        lines += ["", "Skipped timings: " + "; ".join(sp["skipped"])]
    return "\n".join(lines) + "\n"


def write_json(a, res: dict) -> None:
    res["used_s"] = round(time.monotonic() - a.t0, 1)
    tmp = os.path.join(a.out, "check.json.tmp")
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=str)
    os.replace(tmp, os.path.join(a.out, "check.json"))


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "build", "gpucheck"),
                    help="where check.json and check.md go (default: $OUT)")
    ap.add_argument("--work", help="models and artifacts (default: /tmp/tcc-gpucheck)")
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting work after this many seconds")
    ap.add_argument("--reserve", type=float, default=15, help="seconds kept for the report")
    ap.add_argument("--layers", type=int, default=4, help="layers of the 7B-dims model (>= 4; short has half)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--skip-models", default="", help="comma-separated models not to build (e.g. tinyllama)")
    ap.add_argument("--commit", help="the commit checked (recorded; the device's copy has no .git)")
    ap.add_argument("--export-dtype", choices=("f32", "f16"), default="f32", help="the ONNX export's weights")
    ap.add_argument("--emulate", action="store_true", help="no GPU: tcc on the SIMT emulator, HF on the CPU")
    ap.add_argument("--tiny", action="store_true", help="tiny models and contexts (with --emulate)")
    ap.add_argument("--source", choices=("auto", "transformers", "fixture"), default="auto",
                    help="models made with transformers, or (--tiny, no torch) the repository's LLaMA fixture; "
                         "auto: transformers where torch and transformers import")
    ap.add_argument("--measure-s", type=float,
                    help="seconds of the budget kept for the correctness and speed stages (the builds, kernel tests "
                         "and sanitizers end before; default min(220, 0.45 x budget))")
    ap.add_argument("--kernel-timeout", type=float, default=200)
    ap.add_argument("--sanitize-timeout", type=float, default=90)
    ap.add_argument("--stage-timeout", type=float, default=120, help="one timing child's limit")
    ap.add_argument("--compile-timeout", type=float, default=150, help="the torch.compile child's limit")
    a = ap.parse_args(argv)
    if a.layers < 2:
        ap.error("--layers must be at least 2 (the short model has half of them)")
    a.t0 = time.monotonic()
    # `timeout` (or the device tool) sends SIGTERM: unwind, so the builds are killed and the report is written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    a.measure_s = a.measure_s if a.measure_s is not None else min(220.0, 0.45 * a.budget_s)
    a.build_deadline = a.t0 + a.budget_s - a.measure_s  # the builds, kernel tests and sanitizers end by then
    a.skip_models = {s for s in a.skip_models.split(",") if s}
    stages = [s for s in a.stages.split(",") if s]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        ap.error(f"unknown stage(s) {', '.join(bad)}: choose from {', '.join(STAGES)}")
    if a.source == "auto":
        have = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
        a.source = "transformers" if have else "fixture"
    if a.source == "fixture" and not a.tiny:
        ap.error("--source fixture is for --tiny runs (the fixture is a tiny model)")
    a.work = a.work or os.path.join("/tmp", "tcc-gpucheck")
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    budget = Budget(a.budget_s)
    p = plan(a)
    res = {"budget_s": a.budget_s, "plan": {k: v for k, v in p.items()}, "skipped": [], "stages": stages}
    bg = Background()
    try:
        stage_env(a, res)
        log(f"env: {json.dumps({k: res['env'].get(k) for k in ('nvidia-smi', 'nvcc', 'missing')})}")
        write_json(a, res)
        if "build" in stages:
            start_builds(a, p, res, bg)
            log(f"building {', '.join(res['build']['started'])} in the background")
        for name in ("kernels", "sanitize"):
            if name not in stages:
                continue
            if a.emulate:
                res["skipped"].append(f"{name}: needs a GPU (the emulator runs these tests in CI)")
                continue
            log(f"{name} ...")
            try:
                stage_kernels(a, res, budget) if name == "kernels" else stage_sanitize(a, res, budget, bg)
            except Exception as e:
                res[name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{name}: {json.dumps(res[name])[:400]}")
            write_json(a, res)
        if "build" in stages:
            models = res["build"]["models"] = {}
            for n in res["build"]["started"]:
                # the models the targets need wait until the deadline; tinyllama only a little past them
                late = n == "tinyllama" and not a.emulate
                models[n] = bg.wait(n, min(a.build_deadline, time.monotonic() + 30) if late else a.build_deadline)
                log(f"build {n}: {json.dumps(models[n])[:300]}")
            write_json(a, res)
        else:
            res["build"] = {"models": {}, "max_context": 0}
        for stage, what, fn, args in measure_tasks(stages, res["build"]["models"]):
            if fn is not speed_finish and budget.left() < a.reserve + 20:
                res["skipped"].append(f"{stage} {what}: no time left in the budget")
                continue
            if stage == "speed" and fn is not speed_init and "speed" not in res:
                continue  # the bandwidth probe broke: reported in errors
            log(f"{stage} {what} ...")
            try:
                fn(a, p, res, budget, *args)
            except Exception as e:  # one call on the GPU: report what broke and go on
                res.setdefault("errors", []).append(f"{stage} {what}: {type(e).__name__}: {e}")
                log(f"{stage} {what} broke: {type(e).__name__}: {e}")
            write_json(a, res)
        res["gpu"] = (res.get("speed", {}).get("bandwidth", {}).get("gpu") if not a.emulate
                      else "none (SIMT emulator)")
    finally:
        bg.kill_all()
        write_json(a, res)
        md = markdown(res, p)
        with open(os.path.join(a.out, "check.md"), "w") as f:
            f.write(md)
        print(md, flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        r = CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))
        print(json.dumps(r, default=str), flush=True)
        sys.exit(0)
    sys.exit(main())
