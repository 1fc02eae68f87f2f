"""Whole-model benchmarks of compiled language models (`tcc bench`).

`generation_timings(out, prompt_len, gen, threads, repeat)` runs greedy generation from random prompt ids
on a compiled artifact and returns prefill tokens/s, decode ms/token (median and spread over repeats).
`model_ablation(model, qm, ...)` compiles one ONNX model once per quantized-linear kernel variant (naive,
unroll, threads, simd, all: the efficientml lab's steps, `--kernel-variant`) and times each the same way:
the per-technique table for a whole model. Artifacts go to a cache directory and are reused when the
model and options are unchanged (tcc.compile rebuilds only what changed; ccache keeps kernels).
"""
from __future__ import annotations

import hashlib
import os
import statistics

import numpy as np

from ..errors import TccError

VARIANTS = ("naive", "unroll", "threads", "simd", "all")


def generation_timings(out: str, prompt_len: int, gen: int, threads: int | None = None, repeat: int = 3,
                       seed: int = 0) -> dict:
    from .session import load

    rng = np.random.default_rng(seed)
    with load(out, threads=threads) as sess:
        llm = sess.manifest.get("llm") or {}
        if "vocab" not in llm:
            raise TccError(f"{out}: not a language-model artifact (no KV cache or recompute interface)")
        prompt = [int(t) for t in rng.integers(3, llm["vocab"], prompt_len)]
        prefill, decode = [], []
        sess.generate(prompt[:4], max_new_tokens=2, temperature=0, eos_ids=set())  # warm pages and pool
        for _ in range(repeat):
            sess.reset()
            g = sess.generate(prompt, max_new_tokens=gen, temperature=0, eos_ids=set())
            prefill.append(g.prefill_tokens_per_second)
            if g.decode_steps:
                decode.append(1e3 * g.decode_seconds / g.decode_steps)
    return {"prefill_tok_s": statistics.median(prefill), "prefill_tok_s_best": max(prefill),
            "decode_ms": statistics.median(decode) if decode else float("nan"),
            "decode_ms_best": min(decode) if decode else float("nan"),
            "decode_ms_spread": (max(decode) - min(decode)) if decode else float("nan"),
            "weights_bytes": sess.manifest["weights"]["bytes"]}


def _cache_dir(model: str, key: str) -> str:
    from .. import flags

    h = hashlib.sha256((os.path.abspath(model) + key).encode()).hexdigest()[:16]
    return os.path.join(flags.get("cache-dir"), "bench", h)


def model_ablation(model: str, qm: str, prompt_len: int = 32, gen: int = 16, threads: int | None = None,
                   repeat: int = 3, max_context: int | None = None, progress=None) -> list[dict]:
    from ..driver import compile_model

    if qm == "fp32":
        raise TccError("--ablation times the quantized linear kernels: give --qm w4a8, w4a32 or w8a8")
    ctx = max_context or max(prompt_len + gen + 8, 64)
    rows = []
    for variant in VARIANTS:
        out = _cache_dir(model, f"{qm}/{variant}/{ctx}")
        if progress:
            progress(f"compiling {os.path.basename(model)} --qm {qm} --kernel-variant {variant}")
        compile_model(model, out, qm=qm, kernel_variant=variant, max_context=ctx)
        if progress:
            progress(f"timing {variant}")
        rows.append({"variant": variant, **generation_timings(out, prompt_len, gen, threads, repeat)})
    base = rows[0]["decode_ms_best"]
    for r in rows:
        r["decode_speedup"] = base / r["decode_ms_best"] if r["decode_ms_best"] else float("nan")
    return rows


def format_model_table(rows: list[dict], prompt_len: int) -> str:
    lines = [f"| variant | prefill {prompt_len} tok/s | decode ms/token (median ± spread) | decode speedup |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['prefill_tok_s']:.1f} | {r['decode_ms']:.2f} ± {r['decode_ms_spread']:.2f} "
                     f"| {r['decode_speedup']:.1f}x |")
    return "\n".join(lines)
