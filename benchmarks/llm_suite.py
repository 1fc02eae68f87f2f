#!/usr/bin/env python
"""tcc side by side with ONNX Runtime on random-weight LLaMA decoders (not part of the test suite).

    python benchmarks/llm_suite.py [--config 110m|tinyllama|tiny] [--qm fp32,w8a8,w4a32,w4a8]
        [--threads 1,2] [--prompt-len 128] [--gen 32] [--repeat 3] [--workdir build/bench]
        [--out benchmarks/results] [--ort-io iobinding|plain] [--external-data auto|always|never]
        [--llama-cpp DIR | --no-llama-cpp]

What one run does (docs/benchmarks.md explains how to read the result):

1. Builds `transformers.LlamaForCausalLM` from a config (random init, seed 0) in a subprocess and exports
   it with the TorchScript exporter (opset 17) as an optimum-style decoder with past: input_ids,
   attention_mask, position_ids, past_key_values.{i}.key/value -> logits, present.{i}.key/value.
   Models over 2 GB (TinyLlama) are written with their weights in one external-data file. The export is
   checked against torch at two shapes with ONNX Runtime, and cached in the workdir (keyed by config).
2. Makes ONNX Runtime's quantized versions of the same ONNX (cached too): int4 with
   `MatMulNBitsQuantizer` (block 32, symmetric) at accuracy_level 4 (int8 activations: the w4a8
   equivalent) and 0 (unset: fp32 activations, the w4a32 equivalent), and int8 with `quantize_dynamic`
   (QInt8 weights per output channel, dynamic uint8 activations per tensor: the w8a8 equivalent).
3. Compiles the ONNX with tcc at each --qm (round to nearest, no calibration), in a subprocess, timing it.
4. Times each (qm, threads) pair, tcc and ORT one after the other, each in a fresh process:
   tcc as `tcc.runtime.bench.bench_artifact` does (prefill, decode, peak RSS, arena, bandwidth roofline);
   ORT by prefilling the prompt with an empty past, then one token per step with the presents fed back
   (IOBinding by default: presents stay ORT-owned OrtValues; `--ort-io plain` uses `InferenceSession.run`
   with numpy feeds), greedy argmax, `intra_op_num_threads` = threads, all graph optimizations.
5. Checks that tcc fp32 and ORT fp32 pick the same first greedy tokens for the same prompt.
6. When a llama.cpp build is found (--llama-cpp DIR, else llama-bench on PATH; benchmarks/llama_cpp_peer.py
   says how to build one), adds it as the third engine: the same ONNX written as an F32 GGUF
   (benchmarks/gguf_export.py), quantized with llama-quantize to the type of each qm (LLAMA_CPP_EQUIV:
   Q8_0 for w8a8, Q4_0 for w4a8 and w4a32), timed with llama-bench at the same lengths: prefill as its
   `pp<prompt-len>` test, decode as `tg<gen>` at a depth of prompt-len tokens (the KV cache holding the
   prompt, as tcc's and ORT's decode steps do); medians of --repeat samples, llama.cpp's defaults otherwise.
7. Writes `<out>/<config>.md`, `<config>.json` and (with matplotlib) `<config>.png`.

Run it under `nice` on a shared machine and only trust 2-thread figures taken with the machine idle.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXPORT_VERSION = 1          # bump when the export below changes (invalidates cached ONNX files)
OPSET = 17
MAX_IR_VERSION = 10         # onnxruntime 1.31 refuses the IR 14 that onnx >= 1.23 writes
PROTO_LIMIT = 2 * 10 ** 9   # protobuf's 2 GB: bigger models keep their weights in external data
CHECK_TOKENS = 8            # greedy tokens compared between tcc fp32 and ORT fp32
MIB = 2 ** 20

# Shapes users run. 110m: llama2.c's stories110M (MHA, tied embeddings); tinyllama: TinyLlama-1.1B.
CONFIGS = {
    "tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=704, vocab_size=4096, max_position_embeddings=1024, tie_word_embeddings=False,
                 rms_norm_eps=1e-5),
    "110m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, vocab_size=32000, max_position_embeddings=1024, tie_word_embeddings=True,
                 rms_norm_eps=1e-5),
    "tinyllama": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048,
                      tie_word_embeddings=False, rms_norm_eps=1e-5),
    # Not a shape users run: TinyLlama's layer with a 140k vocabulary, 2.5 GB of fp32 weights in 1 layer.
    # It checks the over-2 GB path (torch's per-tensor external files, model.onnx.data, ORT's quantizers
    # and tcc's importer on external data) in minutes instead of the tinyllama run's hour.
    "over2g": dict(hidden_size=2048, num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=4,
                   intermediate_size=5632, vocab_size=140000, max_position_embeddings=2048,
                   tie_word_embeddings=False, rms_norm_eps=1e-5),
}
QMS = ("fp32", "w8a8", "w4a32", "w4a8")
# tcc qm -> (ORT variant file stem, how it is made)
ORT_EQUIV = {
    "fp32": ("fp32", "ORT fp32 (same ONNX)"),
    "w8a8": ("int8_dynamic", "ORT quantize_dynamic QInt8 (per channel)"),
    "w4a32": ("int4_acc0", "ORT MatMulNBits int4 b32 sym, accuracy_level 0"),
    "w4a8": ("int4_acc4", "ORT MatMulNBits int4 b32 sym, accuracy_level 4"),
}

# tcc qm -> the llama.cpp type it is timed against (llama.cpp has no int4 path with fp32 activations: its Q4_0
# kernels quantize activations to 8 bits, so w4a32 meets the same Q4_0 as w4a8)
LLAMA_CPP_EQUIV = {"fp32": "F32", "w8a8": "Q8_0", "w4a32": "Q4_0", "w4a8": "Q4_0"}


def log(msg: str) -> None:
    print(f"[llm-suite {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _rss_kib(field: str) -> int:
    from tcc.runtime.bench import _rss_kib as rss

    return rss(field)


def _peak_rss_bytes() -> int:
    from tcc.runtime.bench import peak_rss_bytes

    return peak_rss_bytes()


def _write_atomic(path: str, data: str | bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(data, bytes) else "utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def _prompt(vocab: int, n: int) -> list[int]:
    """The prompt tcc.runtime.bench.generation_timings draws (same seed and range), so both engines see it."""
    rng = np.random.default_rng(0)
    return [int(t) for t in rng.integers(3, vocab, n)]


def _run_child(kind: str, args: dict, capture: bool = True) -> dict:
    """Run `kind` of this script's children in a fresh interpreter; the last stdout line is its JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), "_child", kind, json.dumps(args)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture else None, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or "").strip().splitlines()[-15:])
        raise RuntimeError(f"child {kind} failed (exit {r.returncode}):\n{tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- export
def onnx_dir(workdir: str, config: str, external: str) -> str:
    key = json.dumps({"cfg": CONFIGS[config], "v": EXPORT_VERSION, "opset": OPSET, "seed": 0,
                      "external": external}, sort_keys=True)
    return os.path.join(os.path.abspath(workdir), "onnx", f"{config}-{hashlib.sha256(key.encode()).hexdigest()[:10]}")


def _flat_past_module(model):
    """A subclass of the model's class whose forward takes flat tensors (input_ids, attention_mask,
    position_ids, k0, v0, k1, v1, ...) and returns (logits, present k0, v0, ...): optimum's signature.
    Parameter names stay the checkpoint's."""
    from transformers import DynamicCache

    base_cls = type(model)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)], config=self.config)
        out = base_cls.forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=cache, use_cache=True)
        return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    model.__class__ = type(f"{base_cls.__name__}WithPast", (base_cls,), {"forward": forward})  # no copy
    return model.eval()


def _feeds(cfg: dict, batch: int, past: int, seq: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    kv, hd = cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
    f = {"input_ids": rng.integers(0, cfg["vocab_size"], (batch, seq)).astype(np.int64),
         "attention_mask": np.ones((batch, past + seq), np.int64),
         "position_ids": np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1))}
    for i in range(cfg["num_hidden_layers"]):
        for n in ("key", "value"):
            f[f"past_key_values.{i}.{n}"] = rng.standard_normal((batch, kv, past, hd)).astype(np.float32)
    return f


def child_export(a: dict) -> dict:
    """Build, export, save (external data when big or asked), and check the ONNX against torch."""
    import warnings

    import onnx
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(a["threads"])
    cfg, out_dir = a["cfg"], a["dir"]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    config = LlamaConfig(**cfg, attn_implementation="eager", use_cache=True, rope_theta=10000.0)
    model = LlamaForCausalLM(config).eval()
    n_params = sum(p.numel() for p in model.parameters())  # tied tables count once
    flat = _flat_past_module(model)
    L = cfg["num_hidden_layers"]
    ins = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{n}" for i in range(L)
                                                             for n in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{n}" for i in range(L) for n in ("key", "value")]
    checks = [(1, 0, 7), (1, 5, 1)]
    refs = []
    with torch.no_grad():
        for b, p, s in checks:
            f = _feeds(cfg, b, p, s, seed=p + s)
            refs.append((f, [t.numpy() for t in flat(*(torch.from_numpy(f[n]) for n in ins))]))
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "past_seq+seq"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dyn.update({n: {0: "batch", 2: "past_seq"} for n in ins[3:]})
    dyn.update({n: {0: "batch", 2: "past_seq+seq"} for n in outs[1:]})
    example = _feeds(cfg, 2, 3, 4, seed=1)
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix="export-", dir=out_dir)
    raw = os.path.join(tmp_dir, "model.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(flat, tuple(torch.from_numpy(example[n]) for n in ins), raw, dynamo=False,
                          opset_version=OPSET, input_names=ins, output_names=outs, dynamic_axes=dyn,
                          do_constant_folding=True)
    config.save_pretrained(out_dir)
    del flat, model
    gc.collect()
    t_export = time.perf_counter() - t0
    export_peak = _peak_rss_bytes()

    m = onnx.load(raw)  # loads the per-tensor files torch writes for > 2 GB models
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    for n in m.graph.node:
        del n.metadata_props[:]
    del m.metadata_props[:]
    init_bytes = sum(len(t.raw_data) for t in m.graph.initializer)
    external = a["external"] == "always" or (a["external"] == "auto" and init_bytes > PROTO_LIMIT * 0.9)
    path = os.path.join(out_dir, "model.onnx")
    if external:
        onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(m, path)
    n_nodes = len(m.graph.node)
    del m
    gc.collect()
    shutil.rmtree(tmp_dir, ignore_errors=True)
    onnx.checker.check_model(path)  # by path: works for external data too

    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = a["threads"]
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for f, ref in refs:
        got = sess.run(outs, f)
        for g, r in zip(got, ref):
            if g.shape != r.shape:
                raise AssertionError(f"ORT shape {g.shape} != torch {r.shape}")
            worst = max(worst, float(np.abs(g - r).max()))
    scale = max(float(np.abs(r[0]).max()) for _, r in refs)
    if not worst <= 1e-4 * max(1.0, scale):
        raise AssertionError(f"exported ONNX differs from torch by {worst:.3g} (logits up to {scale:.3g})")
    files = {f: os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)}
    info = {"params": n_params, "nodes": n_nodes, "initializer_bytes": init_bytes, "external_data": external,
            "files": files, "max_abs_diff_vs_torch": worst, "export_seconds": round(t_export, 1),
            "seconds": round(time.perf_counter() - t0, 1), "export_peak_rss_bytes": export_peak,
            "peak_rss_bytes": _peak_rss_bytes()}
    _write_atomic(os.path.join(out_dir, "export.json"), json.dumps(info, indent=1))
    return info


def ensure_onnx(workdir: str, config: str, external: str, threads: int) -> tuple[str, dict]:
    d = onnx_dir(workdir, config, external)
    meta = os.path.join(d, "export.json")
    if os.path.isfile(meta) and os.path.isfile(os.path.join(d, "model.onnx")):
        with open(meta) as f:
            return os.path.join(d, "model.onnx"), json.load(f)
    if os.path.isdir(d):
        shutil.rmtree(d)
    log(f"exporting the {config} model to ONNX (TorchScript exporter, opset {OPSET}) in {d}")
    info = _run_child("export", {"cfg": CONFIGS[config], "dir": d, "external": external, "threads": threads})
    log(f"  {info['params'] / 1e6:.1f}M parameters, {info['nodes']} nodes, "
        f"{info['initializer_bytes'] / MIB:.0f} MiB of weights{' (external data)' if info['external_data'] else ''}, "
        f"{info['seconds']} s, peak RSS {info['peak_rss_bytes'] / MIB:.0f} MiB; "
        f"ORT vs torch max |diff| {info['max_abs_diff_vs_torch']:.2e}")
    return os.path.join(d, "model.onnx"), info


# ------------------------------------------------------------------------------ ORT quantization
def child_ort_quantize(a: dict) -> dict:
    import onnx

    t0 = time.perf_counter()
    src, dst, variant, external = a["src"], a["dst"], a["variant"], a["external"]
    # Written in place: ensure_ort_variant trusts only a model whose .json was written after this returned.
    # With external data, both quantizers name the data file <dst>.data.
    if variant.startswith("int4_acc"):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        acc = int(variant.removeprefix("int4_acc"))
        q = MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=32, is_symmetric=True,
                                 accuracy_level=acc or None)
        q.process()
        q.model.model.ir_version = min(q.model.model.ir_version, MAX_IR_VERSION)
        q.model.save_model_to_file(dst, use_external_data_format=external)
    elif variant == "int8_dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=external)
    else:
        raise ValueError(variant)
    ops = {}
    for n in onnx.load(dst, load_external_data=False).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    size = sum(os.path.getsize(p) for p in (dst, dst + ".data") if os.path.exists(p))
    return {"variant": variant, "bytes": size, "ops": ops, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_bytes": _peak_rss_bytes()}


def ensure_ort_variant(src: str, variant: str, external: bool) -> tuple[str, dict]:
    if variant == "fp32":
        return src, {"variant": "fp32", "bytes": sum(os.path.getsize(p) for p in (src, src + ".data")
                                                     if os.path.exists(p))}
    d = os.path.join(os.path.dirname(src), "ort")
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, f"{variant}.onnx")
    meta = dst + ".json"
    if os.path.isfile(meta) and os.path.isfile(dst):
        with open(meta) as f:
            return dst, json.load(f)
    for stale in (dst, dst + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    log(f"quantizing for ONNX Runtime: {variant}")
    info = _run_child("ort_quantize", {"src": src, "dst": dst, "variant": variant, "external": external})
    log(f"  {variant}: {info['bytes'] / MIB:.1f} MiB, {info['seconds']} s; ops {info['ops']}")
    _write_atomic(meta, json.dumps(info, indent=1))
    return dst, info


# ----------------------------------------------------------------------------------- tcc compile
def child_compile(a: dict) -> dict:
    from tcc.compile_cache import compile_cached
    from tcc.driver import CompileOptions

    opts = CompileOptions(qm=a["qm"], max_context=a["max_context"], max_dims={"seq": a["max_seq"]},
                          round_to_nearest=a["qm"] != "fp32")
    t0 = time.perf_counter()
    manifest, reused = compile_cached(a["model"], a["out"], opts)
    seconds = time.perf_counter() - t0
    return {"reused": reused, "compile_seconds": manifest.get("compile_seconds") if reused else round(seconds, 2),
            "weights_bytes": manifest["weights"]["bytes"], "peak_rss_bytes": None if reused else _peak_rss_bytes()}


def compile_tcc(model: str, workdir: str, qm: str, max_context: int, max_seq: int) -> tuple[str, dict]:
    src = os.path.basename(os.path.dirname(model))  # <config>-<export key>
    out = os.path.join(os.path.abspath(workdir), "tcc", f"{src}-{qm}-ctx{max_context}-seq{max_seq}")
    log(f"tcc compile --qm {qm} --max-context {max_context} -> {out}")
    info = _run_child("compile", {"model": model, "out": out, "qm": qm, "max_context": max_context,
                                  "max_seq": max_seq})
    cache_note = " (cached; the time of the compile that made it)" if info["reused"] else ""
    rss = f", peak RSS {info['peak_rss_bytes'] / MIB:.0f} MiB" if info["peak_rss_bytes"] else ""
    log(f"  {qm}: {info['compile_seconds']:.1f} s{cache_note}{rss}, weights {info['weights_bytes'] / MIB:.1f} MiB")
    return out, info


# ----------------------------------------------------------------------------------- llama.cpp
def _peer_modules():
    """benchmarks/gguf_export.py and llama_cpp_peer.py (shared with quality_suite.py), also when this file is
    loaded by path (tools/make_llama_onnx.py)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import gguf_export
    import llama_cpp_peer

    return gguf_export, llama_cpp_peer


def ensure_gguf(lc, model: str, qtype: str, threads: int) -> tuple[str, dict]:
    """The ONNX as a GGUF of `qtype` (cached beside the export: <onnx dir>/gguf/model-<type>.gguf)."""
    gguf_export, llama_cpp_peer = _peer_modules()
    d = os.path.join(os.path.dirname(model), "gguf")
    os.makedirs(d, exist_ok=True)
    f32 = os.path.join(d, "model-F32.gguf")
    if not os.path.isfile(f32):
        log(f"writing the ONNX as GGUF: {f32}")
        gguf_export.export_gguf(model, f32)
    path = f32 if qtype == "F32" else os.path.join(d, f"model-{qtype}.gguf")
    if not os.path.isfile(path):
        log(f"llama-quantize {qtype}")
        tmp = f"{path}.tmp-{os.getpid()}.gguf"
        llama_cpp_peer.quantize(lc, f32, tmp, qtype, threads)
        os.replace(tmp, path)
    return path, {"type": qtype, "bytes": gguf_export.tensor_bytes(path)}


def bench_llama_cpp(lc, gguf_path: str, prompt_len: int, gen: int, threads: int, repeat: int) -> dict:
    """llama-bench: prefill as pp<prompt_len> from an empty cache, decode as tg<gen> after prompt_len tokens
    (-d), medians of the samples."""
    _, llama_cpp_peer = _peer_modules()
    exe = lc.need("llama-bench")
    res = {}
    for what, args in (("prefill", ["-p", str(prompt_len), "-n", "0", "-d", "0"]),
                       ("decode", ["-p", "0", "-n", str(gen), "-d", str(prompt_len)])):
        out = llama_cpp_peer.run([exe, "-m", gguf_path, *args, "-t", str(threads), "-r", str(repeat), "-o", "json"],
                                 f"llama-bench {what}")
        start = out.find("[")
        try:
            tests = json.loads(out[start:out.rindex("]") + 1])
        except ValueError:
            raise RuntimeError(f"llama-bench {what}: no JSON in its output") from None
        samples = tests[0]["samples_ts"]
        res[what] = statistics.median(samples)
        res[f"{what}_samples_ts"] = samples
    return {"prefill_tok_s": res["prefill"], "decode_ms": 1e3 / res["decode"],
            "samples": {k: v for k, v in res.items() if k.endswith("_samples_ts")}}


# ----------------------------------------------------------------------------------- ORT timing
class OrtDecoder:
    """Drives an optimum-style decoder-with-past the way a user does: prompt with an empty past, then
    one token per step, feeding the presents back as the pasts."""

    def __init__(self, path: str, threads: int, io: str):
        import onnxruntime as ort

        self.ort = ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.io = io
        self.past_names = [i.name for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.out_names = [o.name for o in self.sess.get_outputs()]
        shape = next(i.shape for i in self.sess.get_inputs() if i.name == self.past_names[0])
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.reset()

    def reset(self) -> None:
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        if self.io == "iobinding":
            self.past = [self.ort.OrtValue.ortvalue_from_numpy(empty) for _ in self.past_names]
        else:
            self.past = [empty for _ in self.past_names]
        self.length = 0

    def feed(self, ids: list[int]) -> np.ndarray:
        """Append ids; returns the last position's logits."""
        n = len(ids)
        fixed = {"input_ids": np.array([ids], np.int64),
                 "attention_mask": np.ones((1, self.length + n), np.int64),
                 "position_ids": np.arange(self.length, self.length + n, dtype=np.int64)[None]}
        if self.io == "iobinding":
            b = self.sess.io_binding()
            for k, v in fixed.items():
                b.bind_cpu_input(k, v)
            for k, v in zip(self.past_names, self.past):
                b.bind_ortvalue_input(k, v)
            for k in self.out_names:
                b.bind_output(k)
            self.sess.run_with_iobinding(b)
            outs = b.get_outputs()
            logits = outs[0].numpy()[0, -1]
            self.past = list(outs[1:])
        else:
            res = self.sess.run(self.out_names, {**fixed, **dict(zip(self.past_names, self.past))})
            logits = res[0][0, -1]
            self.past = res[1:]
        self.length += n
        return logits


def child_ort(a: dict) -> dict:
    base = _rss_kib("VmRSS") * 1024
    dec = OrtDecoder(a["model"], a["threads"], a["io"])
    load_peak = _peak_rss_bytes()
    prompt, gen = a["prompt"], a["gen"]
    dec.feed(prompt[:4])  # warm the pages and the thread pool, as tcc's bench does
    dec.feed([prompt[4 % len(prompt)]])
    prefill, decode, tokens, kept = [], [], None, []
    for r in range(a["repeat"]):
        dec.reset()
        t0 = time.perf_counter()
        logits = dec.feed(prompt)
        t1 = time.perf_counter()
        out = []
        for i in range(gen):
            if r == 0 and i < a["check_tokens"]:
                kept.append(logits.copy())
            tok = int(np.argmax(logits))
            out.append(tok)
            if i + 1 == gen:
                break
            logits = dec.feed([tok])
        t2 = time.perf_counter()
        prefill.append(len(prompt) / (t1 - t0))
        if gen > 1:
            decode.append(1e3 * (t2 - t1) / (gen - 1))
        if tokens is None:
            tokens = out
    if a.get("save_logits") and kept:
        np.save(a["save_logits"], np.stack(kept))
    return {"prefill_tok_s": statistics.median(prefill), "prefill_tok_s_best": max(prefill),
            "decode_ms": statistics.median(decode) if decode else float("nan"),
            "decode_ms_best": min(decode) if decode else float("nan"),
            "decode_ms_spread": (max(decode) - min(decode)) if decode else float("nan"),
            "tokens": tokens, "peak_rss_bytes": _peak_rss_bytes(), "load_peak_rss_bytes": load_peak,
            "baseline_rss_bytes": base}


def child_tcc_bench(a: dict) -> dict:
    """tcc.runtime.bench's measuring child, with the peak RSS taken from VmHWM only (see _peak_rss_bytes)."""
    from tcc.runtime.bench import generation_timings

    base = _rss_kib("VmRSS") * 1024
    r = generation_timings(a["out"], a["prompt_len"], a["gen"], a["threads"], a["repeat"])
    r.pop("step_ms", None)
    return {**r, "peak_rss_bytes": _peak_rss_bytes(), "baseline_rss_bytes": base}


def bench_tcc(out: str, prompt_len: int, gen: int, threads: int, repeat: int) -> dict:
    """What tcc.runtime.bench.bench_artifact returns (timings in a fresh process, the artifact's memory
    figures, the decode roofline at `threads` threads), with a peak RSS that the caller's size does not
    inflate: bench_artifact's child takes max(VmHWM, ru_maxrss), and ru_maxrss inherits this process's."""
    from tcc.runtime.roofline import decode_bytes_per_token, measure_bandwidth, roofline
    from tcc.runtime.session import _read_manifest

    manifest = _read_manifest(out)
    res = _run_child("tcc_bench", {"out": out, "prompt_len": prompt_len, "gen": gen, "threads": threads,
                                   "repeat": repeat})
    llm = manifest.get("llm") or {}
    res.update(arena_bytes=manifest["memory"]["arena_bytes"], lower_bound_bytes=manifest["memory"]["lower_bound_bytes"],
               kv_cache_bytes=llm.get("kv_cache_bytes", 0), qm=manifest.get("qm"), threads=threads,
               prompt_len=prompt_len, gen=gen, repeat=repeat)
    if res["decode_ms"] == res["decode_ms"]:
        bw = measure_bandwidth(threads)
        per_token = decode_bytes_per_token(manifest, prompt_len + gen / 2)
        res.update(bandwidth_gbs=bw["best_gbs"], bytes_per_token=per_token,
                   **roofline(per_token["total"], bw["best_gbs"], res["decode_ms"]))
    return res


def child_tcc_greedy(a: dict) -> dict:
    import tcc

    with tcc.load(a["out"], threads=a["threads"]) as s:
        g = s.generate(a["prompt"], max_new_tokens=a["n"], temperature=0, repetition_penalty=1.0, eos_ids=set(),
                       keep_logits=True)
    np.save(a["save_logits"], np.stack(g.step_logits))
    return {"tokens": [int(t) for t in g.tokens]}


def greedy_check(tcc_tokens: list[int], ort_tokens: list[int], tcc_logits: np.ndarray, ort_logits: np.ndarray) -> dict:
    """Same first tokens? A first difference where ORT's two candidates are within float noise of
    each other is a tie (≈), not a failure."""
    n = min(len(tcc_tokens), len(ort_tokens), len(tcc_logits), len(ort_logits))
    first = next((i for i in range(n) if tcc_tokens[i] != ort_tokens[i]), None)
    diff = float(np.abs(tcc_logits[:1] - ort_logits[:1]).max())  # the prefill's logits: same inputs for both
    res = {"n": n, "first_difference": first, "prefill_logits_max_abs_diff": diff,
           "tcc": tcc_tokens[:n], "ort": ort_tokens[:n]}
    if first is None:
        res["mark"] = "✓"
    else:
        row = ort_logits[first]
        gap = float(row[ort_tokens[first]] - row[tcc_tokens[first]])
        res["gap_at_difference"] = gap
        res["mark"] = "≈" if gap <= 1e-3 * max(1.0, float(np.abs(row).max())) else "✗"
    return res


# -------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in (platform.processor(), platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [x for x in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni") if x in flags]
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem = 0
    vers = {"python": platform.python_version()}
    from importlib import metadata

    for mod in ("tcc", "onnxruntime", "onnx", "torch", "transformers"):  # not imported: keeps this process small
        try:
            vers[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            vers[mod] = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "memory_bytes": mem, "versions": vers,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------------------- report
def _f(x, fmt: str = ".1f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def row_figures(r: dict) -> dict:
    t, o, lc = r["tcc"], r.get("ort") or {}, r.get("llama_cpp") or {}
    budget = (t["weights_bytes"] + t["kv_cache_bytes"]) * 1.10 + 50 * MIB
    return {
        "prefill_ratio": t["prefill_tok_s"] / o["prefill_tok_s"] if o.get("prefill_tok_s") else None,
        "decode_ratio": o["decode_ms"] / t["decode_ms"] if o.get("decode_ms") and t.get("decode_ms") else None,
        "prefill_ratio_llama_cpp": t["prefill_tok_s"] / lc["prefill_tok_s"] if lc.get("prefill_tok_s") else None,
        "decode_ratio_llama_cpp": (lc["decode_ms"] / t["decode_ms"] if lc.get("decode_ms") and t.get("decode_ms")
                                   else None),
        "rss_budget_bytes": budget, "rss_ok": t["peak_rss_bytes"] <= budget,
        "arena_ratio": t["arena_bytes"] / t["lower_bound_bytes"] if t["lower_bound_bytes"] else 1.0,
    }


def targets(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, judged on the rows of this run (meant for the tinyllama config, 2 threads)."""
    out = []
    by = {(r["qm"], r["threads"]): r for r in rows}
    th = max(r["threads"] for r in rows)
    w4a8, fp32 = by.get(("w4a8", th)), by.get(("fp32", th))
    if w4a8:
        f = w4a8["fig"]
        a = w4a8["tcc"].get("achieved")
        out.append((f"w4a8 decode ≥ 85% of the bandwidth roofline ({th} thread(s))", None if a is None else a >= 0.85,
                    f"{_f(100 * a if a is not None else None, '.0f')}%"))
        out.append(("w4a8 decode ≥ 2× ORT MatMulNBits int4 (acc 4)", None if f["decode_ratio"] is None
                    else f["decode_ratio"] >= 2, f"{_f(f['decode_ratio'], '.2f')}×"))
        out.append((f"w4a8 prefill of {w4a8['tcc']['prompt_len']} tokens ≥ 2× ORT int4", None
                    if f["prefill_ratio"] is None else f["prefill_ratio"] >= 2, f"{_f(f['prefill_ratio'], '.2f')}×"))
    if fp32:
        a = fp32["tcc"].get("achieved")
        out.append((f"fp32 decode ≥ 85% of its roofline ({th} thread(s))", None if a is None else a >= 0.85,
                    f"{_f(100 * a if a is not None else None, '.0f')}%"))
    for qm in ("w8a8", "w4a32"):
        r = by.get((qm, th))
        if r:
            f = r["fig"]
            ok = None if f["decode_ratio"] is None else (f["decode_ratio"] > 1 and (f["prefill_ratio"] or 0) > 1)
            out.append((f"{qm} ahead of {ORT_EQUIV[qm][1]} (decode and prefill)", ok,
                        f"decode {_f(f['decode_ratio'], '.2f')}×, prefill {_f(f['prefill_ratio'], '.2f')}×"))
    rss = [r for r in rows]
    out.append(("peak RSS ≤ weights + KV cache + 10% + 50 MB (every tcc row)", all(r["fig"]["rss_ok"] for r in rss),
                ", ".join(f"{r['qm']}/{r['threads']}t {r['tcc']['peak_rss_bytes'] / MIB:.0f}/"
                          f"{r['fig']['rss_budget_bytes'] / MIB:.0f} MiB" for r in rss)))
    worst = max(r["fig"]["arena_ratio"] for r in rows)
    out.append(("arena ≤ 1.05× the planner's lower bound", worst <= 1.05, f"worst {worst:.3f}×"))
    c = next((r for r in rows if r["qm"] == "w4a8"), None)
    if c:
        s = c["compile"]["compile_seconds"]
        out.append(("compile at w4a8 without calibration ≤ 60 s", s <= 60, f"{s:.1f} s"))
    return out


def _llama_cells(r: dict) -> str:
    lc, f = r.get("llama_cpp") or {}, r["fig"]
    return (f" {LLAMA_CPP_EQUIV[r['qm']]} | {_f(lc.get('prefill_tok_s'))} | {_f(f.get('prefill_ratio_llama_cpp'), '.2f')} | "
            f"{_f(lc.get('decode_ms'), '.2f')} | {_f(f.get('decode_ratio_llama_cpp'), '.2f')} |")


def markdown(res: dict) -> str:
    m, a, rows = res["machine"], res["args"], res["rows"]
    lcpp = res.get("llama_cpp")
    cfg = CONFIGS[a["config"]]
    exp = res["export"]
    bw = ", ".join(f"{t} thread(s) {g:.1f} GB/s" for t, g in sorted(res["bandwidth_gbs"].items(), key=lambda x: int(x[0])))
    lines = [f"# tcc vs ONNX Runtime{' and llama.cpp' if lcpp else ''}: `{a['config']}`", "",
             f"LLaMA, random weights (seed 0): hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
             f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} KV heads, intermediate "
             f"{cfg['intermediate_size']}, vocab {cfg['vocab_size']}"
             f"{', tied embeddings' if cfg['tie_word_embeddings'] else ''}; {exp['params'] / 1e6:.1f}M parameters. "
             f"Exported with past key/values (TorchScript exporter, opset {OPSET}, {exp['nodes']} nodes"
             f"{', external data' if exp['external_data'] else ''}).",
             f"Prompt {a['prompt_len']} random tokens, then {a['gen']} greedy tokens; median of {a['repeat']} runs, "
             f"each engine in a fresh process. ORT: {a['ort_io']} ({'presents fed back as ORT-owned OrtValues' if a['ort_io'] == 'iobinding' else 'InferenceSession.run with numpy feeds'}), "
             f"intra_op_num_threads = threads, all graph optimizations.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['memory_bytes'] / 2 ** 30:.0f} GiB; "
             f"measured read bandwidth {bw}. {m['date']}. Load average before / after: {res['load_before']} / "
             f"{res['load_after']}{' — ' + a['note'] if a.get('note') else ''}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
             "| tcc qm / ORT equivalent | threads | prefill tok/s tcc | ORT | ×ORT | decode ms/token tcc | ORT | ×ORT "
             "| tcc roofline achieved | tcc peak RSS / budget MiB | arena / lower bound | compile s | greedy = ORT fp32 |"
             + (" llama.cpp type | prefill tok/s llama.cpp | ×llama.cpp | decode ms/token llama.cpp | ×llama.cpp |"
                if lcpp else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|" + ("---|---:|---:|---:|---:|" if lcpp else "")]
    for r in rows:
        t, o, f = r["tcc"], r.get("ort") or {}, r["fig"]
        ach = t.get("achieved")
        roof = (f"{100 * ach:.0f}% ({t['floor_ms']:.2f} ms floor)" if ach is not None else "–")
        check = r.get("check", {}).get("mark", "") if r["qm"] == "fp32" else ""
        lines.append(
            f"| {r['qm']} / {ORT_EQUIV[r['qm']][1]} | {r['threads']} | {_f(t['prefill_tok_s'])} | "
            f"{_f(o.get('prefill_tok_s'))} | {_f(f['prefill_ratio'], '.2f')} | {_f(t['decode_ms'], '.2f')} | "
            f"{_f(o.get('decode_ms'), '.2f')} | {_f(f['decode_ratio'], '.2f')} | {roof} | "
            f"{t['peak_rss_bytes'] / MIB:.0f} / {f['rss_budget_bytes'] / MIB:.0f} {'✓' if f['rss_ok'] else '✗'} | "
            f"{f['arena_ratio']:.3f} | {r['compile']['compile_seconds']:.1f} | {check} |" + (_llama_cells(r) if lcpp else ""))
    lines += ["", "×ORT is tcc's speed over ORT's (prefill tok/s ratio; decode ORT ms / tcc ms). The roofline is "
              "the measured read bandwidth over the bytes a decode step reads (weights, less gathered embedding "
              "rows, plus the KV cache at the mean context). The RSS budget is weights + KV cache + 10% + 50 MiB; "
              "peak RSS includes the Python interpreter and numpy "
              f"(~{statistics.median(r['tcc']['baseline_rss_bytes'] for r in rows) / MIB:.0f} MiB). "
              "Compile times are those of the compile that made each artifact (round to nearest, no calibration).",
              "", ("ORT models: " if res["ort_models"] else "") + "; ".join(
                  f"{ORT_EQUIV[q][1]}: {res['ort_models'][ORT_EQUIV[q][0]]['bytes'] / MIB:.1f} MiB"
                  for q in dict.fromkeys(r["qm"] for r in rows) if ORT_EQUIV[q][0] in res["ort_models"])
              + ("; " if res["ort_models"] else "") + "tcc weights: " + "; ".join(
                  f"{r['qm']} {r['tcc']['weights_bytes'] / MIB:.1f} MiB"
                  for r in {r['qm']: r for r in rows}.values()) + ".", ""]
    if lcpp:
        lines += [f"llama.cpp {lcpp['version']} (CPU build), timed with llama-bench: prefill is its pp{a['prompt_len']} "
                  f"test (random tokens, empty cache), decode its tg{a['gen']} test after {a['prompt_len']} tokens "
                  f"(`-d {a['prompt_len']}`); medians of {a['repeat']} samples; its defaults otherwise (f16 KV cache). "
                  "×llama.cpp is tcc's speed over llama.cpp's. GGUF from the same ONNX (benchmarks/gguf_export.py), "
                  "quantized with llama-quantize: " + "; ".join(
                      f"{t} {v['bytes'] / MIB:.1f} MiB" for t, v in lcpp["models"].items()) + ".", ""]
    elif not a.get("no_llama_cpp"):
        lines += [f"No llama.cpp rows (no build found): {_peer_modules()[1].HOW_TO_GET}.", ""]
    chk = next((r.get("check") for r in rows if r["qm"] == "fp32" and r.get("check")), None)
    if chk:
        lines += [f"Greedy check (fp32): the first {chk['n']} tokens of tcc {chk['tcc']} and ORT {chk['ort']}: "
                  f"{chk['mark']}; the prefill logits differ by at most {chk['prefill_logits_max_abs_diff']:.2e}.", ""]
    lines += ["Targets (issue 7; meant for the tinyllama config at 2 threads on an idle machine):", ""]
    for name, ok, val in targets(rows):
        lines.append(f"- {'✓' if ok else ('✗' if ok is not None else '?')} {name}: {val}")
    lines.append("")
    if res.get("plot_note"):
        lines += [res["plot_note"], ""]
    return "\n".join(lines)


def plot(res: dict, path: str) -> str | None:
    try:
        import matplotlib
    except ImportError:
        return "No plot: matplotlib is not installed (pip install matplotlib)."
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(len(threads), 2, figsize=(11, 3.4 * len(threads)), squeeze=False)
    for ti, th in enumerate(threads):
        sub = [r for r in rows if r["threads"] == th]
        x = np.arange(len(sub))
        labels = [r["qm"] for r in sub]
        for ci, (what, key, unit) in enumerate((("prefill", "prefill_tok_s", "tokens/s"),
                                                  ("decode", "decode_ms", "tokens/s"))):
            ax = axes[ti][ci]
            conv = (lambda v: v) if key == "prefill_tok_s" else (lambda v: 1e3 / v if v else 0.0)
            tv = [conv(r["tcc"][key]) for r in sub]
            ov = [conv((r.get("ort") or {}).get(key) or float("nan")) for r in sub]
            ax.bar(x - 0.2, tv, 0.4, label="tcc")
            ax.bar(x + 0.2, ov, 0.4, label="ONNX Runtime")
            if key == "decode_ms":
                for i, r in enumerate(sub):
                    if r["tcc"].get("floor_ms"):
                        ax.plot([i - 0.4, i + 0.4], [1e3 / r["tcc"]["floor_ms"]] * 2, "k--", lw=1,
                                label="bandwidth roofline" if i == 0 else None)
            ax.set_xticks(x, labels)
            ax.set_ylabel(unit)
            ax.set_title(f"{res['args']['config']}: {what}, {th} thread(s)"
                         + (f", prompt {res['args']['prompt_len']}" if key == "prefill_tok_s" else ""))
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return None


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="110m")
    ap.add_argument("--qm", default=",".join(QMS), help="comma-separated: fp32,w8a8,w4a32,w4a8")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(REPO, "build", "bench"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--ort-io", choices=("iobinding", "plain"), default="iobinding")
    ap.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                    help="ONNX weights in an external file: when over 2 GB (auto), always, or never")
    ap.add_argument("--no-ort", action="store_true", help="time tcc only")
    ap.add_argument("--llama-cpp", metavar="DIR", help="a llama.cpp build folder (default: llama-bench on PATH)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out even when a build is found")
    ap.add_argument("--note", default="", help="a remark printed under the machine line (e.g. 'machine busy')")
    args = ap.parse_args(argv)
    qms = [q.strip() for q in args.qm.split(",") if q.strip()]
    bad = [q for q in qms if q not in QMS]
    if bad:
        ap.error(f"unknown --qm {bad}; choose from {','.join(QMS)}")
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if args.prompt_len < 5 or args.gen < 2:
        ap.error("--prompt-len must be >= 5 and --gen >= 2")
    lc = None
    if not args.no_llama_cpp:
        from tcc.errors import TccError

        try:
            lc = _peer_modules()[1].find_llama_cpp(args.llama_cpp, ("llama-bench", "llama-quantize"))
            if lc is not None:
                _peer_modules()[0]._gguf()  # the one-line error about the gguf package before any work
        except TccError as e:
            ap.error(str(e))
    os.makedirs(args.workdir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    load_before = _load()
    machine = machine_info()
    cfg = CONFIGS[args.config]
    model, export = ensure_onnx(args.workdir, args.config, args.external_data, max(threads))
    big = export["external_data"]
    max_context = -(-(args.prompt_len + args.gen) // 64) * 64
    max_seq = max(64, -(-args.prompt_len // 64) * 64)
    compiled = {q: compile_tcc(model, args.workdir, q, max_context, max_seq) for q in qms}
    ort_models = {}
    if not args.no_ort:
        for q in qms:
            v = ORT_EQUIV[q][0]
            ort_models[v] = ensure_ort_variant(model, v, big)
    lc_models = {}
    if lc is not None:
        from tcc.errors import TccError

        try:
            for q in qms:
                t = LLAMA_CPP_EQUIV[q]
                if t not in lc_models:
                    lc_models[t] = ensure_gguf(lc, model, t, max(threads))
        except TccError as e:
            print(f"llm_suite: error: {e}", file=sys.stderr)
            return 2
    prompt = _prompt(cfg["vocab_size"], args.prompt_len)
    check_dir = os.path.join(os.path.abspath(args.workdir), "check")
    os.makedirs(check_dir, exist_ok=True)
    from tcc.runtime.roofline import measure_bandwidth, roofline

    rows, bandwidth = [], {}
    for th in threads:
        bandwidth[str(th)] = measure_bandwidth(th)["best_gbs"]
    for th in threads:
        for q in qms:
            out, cinfo = compiled[q]
            log(f"timing tcc {q}, {th} thread(s)")
            t = bench_tcc(out, args.prompt_len, args.gen, th, args.repeat)
            bandwidth[str(th)] = max(bandwidth.get(str(th), 0.0), t.get("bandwidth_gbs", 0.0))
            row = {"qm": q, "threads": th, "tcc": t, "compile": cinfo}
            log(f"  tcc: prefill {t['prefill_tok_s']:.1f} tok/s, decode {t['decode_ms']:.2f} ms/token, "
                f"roofline {100 * t.get('achieved', float('nan')):.0f}%, peak RSS {t['peak_rss_bytes'] / MIB:.0f} MiB")
            if not args.no_ort:
                variant = ORT_EQUIV[q][0]
                log(f"timing ORT {variant}, {th} thread(s)")
                save = os.path.join(check_dir, f"{args.config}-ort-fp32.npy") if q == "fp32" and th == threads[0] else None
                o = _run_child("ort", {"model": ort_models[variant][0], "threads": th, "io": args.ort_io,
                                       "prompt": prompt, "gen": args.gen, "repeat": args.repeat,
                                       "check_tokens": CHECK_TOKENS, "save_logits": save})
                row["ort"] = o
                log(f"  ORT: prefill {o['prefill_tok_s']:.1f} tok/s, decode {o['decode_ms']:.2f} ms/token, "
                    f"peak RSS {o['peak_rss_bytes'] / MIB:.0f} MiB")
                if save:
                    tsave = os.path.join(check_dir, f"{args.config}-tcc-fp32.npy")
                    g = _run_child("tcc_greedy", {"out": out, "threads": th, "prompt": prompt, "n": CHECK_TOKENS,
                                                  "save_logits": tsave})
                    row["check"] = greedy_check(g["tokens"], o["tokens"][:CHECK_TOKENS], np.load(tsave), np.load(save))
                    log(f"  greedy check: {row['check']['mark']} (tcc {g['tokens']}, ORT {o['tokens'][:CHECK_TOKENS]})")
            if lc is not None:
                t = LLAMA_CPP_EQUIV[q]
                log(f"timing llama.cpp {t}, {th} thread(s)")
                row["llama_cpp"] = {"type": t, **bench_llama_cpp(lc, lc_models[t][0], args.prompt_len, args.gen, th,
                                                                  args.repeat)}
                log(f"  llama.cpp: prefill {row['llama_cpp']['prefill_tok_s']:.1f} tok/s, "
                    f"decode {row['llama_cpp']['decode_ms']:.2f} ms/token")
            rows.append(row)
    # One bandwidth per thread count, the best the probe saw in the run (a probe that ran while the machine
    # was busy reads low and would put decode above its roofline).
    for row in rows:
        t = row["tcc"]
        bw = bandwidth.get(str(row["threads"]))
        if "floor_ms" in t and bw:
            t["bandwidth_gbs_this_row"] = t["bandwidth_gbs"]
            t.update(bandwidth_gbs=bw, **roofline(t["bytes_per_token"]["total"], bw, t["decode_ms"]))
        row["fig"] = row_figures(row)
    res = {"args": {**vars(args), "config": args.config}, "machine": machine, "config": cfg, "export": export,
           "max_context": max_context, "bandwidth_gbs": bandwidth, "load_before": load_before,
           "load_after": _load(), "rows": rows,
           "ort_models": {k: v[1] for k, v in ort_models.items()},
           "llama_cpp": None if lc is None else {"version": lc.version(), "bin_dir": lc.bin_dir,
                                                 "models": {k: v[1] for k, v in lc_models.items()}}}
    res["args"].pop("workdir", None)
    res["args"].pop("out", None)
    res["targets"] = [{"target": n, "ok": ok, "value": v} for n, ok, v in targets(rows)]
    base = os.path.join(args.out, args.config)
    res["plot_note"] = plot(res, base + ".png")
    _write_atomic(base + ".json", json.dumps(res, indent=1, default=float) + "\n")
    md = markdown(res)
    _write_atomic(base + ".md", md)
    print(md)
    log(f"wrote {base}.md, {base}.json" + ("" if res["plot_note"] else f", {base}.png"))
    return 0


def child_main(kind: str, arg: str) -> None:
    a = json.loads(arg)
    fn = {"export": child_export, "ort_quantize": child_ort_quantize, "compile": child_compile, "ort": child_ort,
          "tcc_bench": child_tcc_bench, "tcc_greedy": child_tcc_greedy}[kind]
    print(json.dumps(fn(a), default=float))


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
