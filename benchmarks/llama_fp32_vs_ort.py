"""tcc fp32 vs ONNX Runtime on a random-weight LLaMA (no KV cache), one thread each, best of N.

Not part of the test suite. Needs torch==2.13.0, transformers and onnxscript (to export), onnxruntime.

    python benchmarks/llama_fp32_vs_ort.py [--hidden 512 --layers 4 --seq 128 --repeat 7]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def export(path: str, hidden: int, layers: int, vocab: int) -> None:
    import onnx
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                      num_key_value_heads=max(1, hidden // 256), intermediate_size=int(hidden * 2.75),
                      vocab_size=vocab, max_position_embeddings=1024, use_cache=False,
                      attn_implementation="eager", tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, use_cache=False).logits

    seq = torch.export.Dim("seq", max=1024)
    onx = torch.onnx.export(Logits(model), (torch.randint(0, vocab, (1, 16)),), dynamo=True,
                            input_names=["input_ids"], output_names=["logits"], dynamic_shapes={"ids": {1: seq}})
    onx.save(path)
    m = onnx.load(path)
    m.ir_version = 10  # onnx >= 1.23 writes IR 14, which ONNX Runtime 1.31 refuses
    onnx.save(m, path)


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    import onnxruntime as ort

    import tcc

    work = tempfile.mkdtemp(prefix="tcc-bench-")
    path = os.path.join(work, "llama.onnx")
    export(path, args.hidden, args.layers, args.vocab)
    t0 = time.perf_counter()
    manifest = tcc.compile(path, os.path.join(work, "out"), max_dims={"seq": max(args.seq, 1)})
    compile_s = time.perf_counter() - t0
    sess = tcc.load(os.path.join(work, "out"), threads=1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, args.vocab, (1, args.seq)).astype(np.int64)
    diff = np.abs(ref.run(None, {"input_ids": ids})[0] - sess.run({"input_ids": ids})["logits"]).max()
    wbytes = manifest["weights"]["bytes"]
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; weights {wbytes / 2**20:.1f} MiB; "
          f"compile {compile_s:.1f} s; max |tcc - ORT| = {diff:.2e}")
    print("| tokens | ORT ms | tcc ms | tcc speed vs ORT | tcc weight GB/s |")
    print("|---|---|---|---|---|")
    for seq in (1, args.seq):
        x = ids[:, :seq]
        a = best_ms(lambda: ref.run(None, {"input_ids": x}), args.repeat)
        b = best_ms(lambda: sess.run({"input_ids": x}), args.repeat)
        print(f"| {seq} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {wbytes / b / 1e6:.1f} |")


if __name__ == "__main__":
    main()
