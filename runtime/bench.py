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

from ..backends.x86.kernels_quant import QLINEAR_VARIANTS as VARIANTS  # the ablation's steps: naive .. all
from ..codegen.families.quant import QLINEAR_FAMILIES
from ..errors import TccError

QMS = tuple(f.removeprefix("qlinear_") for f in QLINEAR_FAMILIES)  # the schemes with an ablation: w4a8, ...


def generation_timings(out: str, prompt_len: int, gen: int, threads: int | None = None, repeat: int = 3,
                       seed: int = 0) -> dict:
    """Greedy generation from random prompt ids, `repeat` times from an empty cache: prefill tokens/s,
    time to first token, decode ms/token (median, best, spread over repeats) and the per-step decode
    times of the median run."""
    from .session import load

    rng = np.random.default_rng(seed)
    with load(out, threads=threads) as sess:
        llm = sess.manifest.get("llm") or {}
        if "vocab" not in llm:
            raise TccError(f"{out}: not a language-model artifact (no KV cache or recompute interface)")
        if prompt_len < 1 or gen < 0:
            raise TccError(f"--prompt-len must be >= 1 and --gen >= 0, got {prompt_len} and {gen}")
        if prompt_len + gen > llm["capacity"]:
            raise TccError(f"--prompt-len {prompt_len} + --gen {gen} exceed the artifact's context of "
                           f"{llm['capacity']} tokens")
        prompt = [int(t) for t in rng.integers(3, llm["vocab"], prompt_len)]
        runs = []
        sess.generate(prompt[:4], max_new_tokens=2, temperature=0, eos_ids=set())  # warm pages and pool
        for _ in range(repeat):
            sess.reset()
            runs.append(sess.generate(prompt, max_new_tokens=gen, temperature=0, eos_ids=set()))
    prefill = [g.prefill_tokens_per_second for g in runs]
    decode = [1e3 * g.decode_seconds / g.decode_steps for g in runs if g.decode_steps]
    median_run = sorted(runs, key=lambda g: g.decode_seconds)[len(runs) // 2]
    return {"prefill_tok_s": statistics.median(prefill), "prefill_tok_s_best": max(prefill),
            "ttft_ms": statistics.median(1e3 * g.prefill_seconds for g in runs),
            "decode_ms": statistics.median(decode) if decode else float("nan"),
            "decode_ms_best": min(decode) if decode else float("nan"),
            "decode_ms_spread": (max(decode) - min(decode)) if decode else float("nan"),
            "decode_tok_s": 1e3 / statistics.median(decode) if decode else float("nan"),
            "step_ms": [1e3 * t for t in median_run.step_seconds],
            "weights_bytes": sess.manifest["weights"]["bytes"]}


def _rss_kib(field: str = "VmRSS") -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork + exec, so a child
    started by a big parent would report at least the parent's peak."""
    import resource

    return 1024 * (_rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _child(args_json: str) -> None:
    """Entry point of the measuring subprocess: prints the timings and its memory as one JSON line."""
    import json

    a = json.loads(args_json)
    base = _rss_kib()
    r = generation_timings(a["out"], a["prompt_len"], a["gen"], a["threads"], a["repeat"])
    print(json.dumps({**r, "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": base * 1024}))


def bench_artifact(out: str, prompt_len: int = 128, gen: int = 64, threads: int = 2, repeat: int = 3,
                   bandwidth: bool = True) -> dict:
    """`tcc bench out/`: the timings measured in a fresh process (so its peak RSS is the model's plus a
    bare interpreter's, which is reported separately), the artifact's memory figures, and the decode
    roofline on `threads` threads."""
    import json
    import subprocess
    import sys

    from .roofline import decode_bytes_per_token, measure_bandwidth, roofline
    from .session import _read_manifest

    manifest = _read_manifest(out)
    # The probe runs before and after the timing and the better figure counts: on a shared machine one
    # probe can read low and push the achieved fraction over 100%.
    probes = [measure_bandwidth(threads)] if bandwidth else []
    args = json.dumps({"out": out, "prompt_len": prompt_len, "gen": gen, "threads": threads, "repeat": repeat})
    r = subprocess.run([sys.executable, "-c", "import sys; from tcc.runtime.bench import _child; _child(sys.argv[1])",
                        args], capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit status {r.returncode}"
        raise TccError(msg.removeprefix("tcc.errors.TccError: ").removeprefix("tcc.errors.RuntimeFeedError: "))
    res = json.loads(r.stdout.strip().splitlines()[-1])
    llm = manifest.get("llm") or {}
    res.update(arena_bytes=manifest["memory"]["arena_bytes"], lower_bound_bytes=manifest["memory"]["lower_bound_bytes"],
               kv_cache_bytes=llm.get("kv_cache_bytes", 0), qm=manifest.get("qm"), threads=threads,
               prompt_len=prompt_len, gen=gen, repeat=repeat)
    if manifest.get("tuning"):
        res["tuning"] = manifest["tuning"]
    if bandwidth and res["decode_ms"] == res["decode_ms"]:
        probes.append(measure_bandwidth(threads))
        bw = max(probes, key=lambda p: p["best_gbs"])
        per_token = decode_bytes_per_token(manifest, prompt_len + gen / 2)
        res.update(bandwidth_gbs=bw["best_gbs"], bytes_per_token=per_token,
                   **roofline(per_token["total"], bw["best_gbs"], res["decode_ms"]))
    return res


def format_bench(res: dict) -> str:
    mib = 2 ** 20
    lines = [f"prefill {res['prompt_len']} tokens: {res['prefill_tok_s']:.1f} tok/s (best {res['prefill_tok_s_best']:.1f}); "
             f"time to first token {res['ttft_ms']:.1f} ms",
             f"decode {res['gen']} tokens: {res['decode_ms']:.2f} ms/token (best {res['decode_ms_best']:.2f}, spread "
             f"{res['decode_ms_spread']:.2f} over {res['repeat']} runs) = {res['decode_tok_s']:.1f} tok/s"]
    if "floor_ms" in res:
        b = res["bytes_per_token"]
        lines.append(f"roofline: {res['bandwidth_gbs']:.1f} GB/s read bandwidth on {res['threads']} thread(s) / "
                     f"{b['total'] / mib:.2f} MiB per token ({b['weights'] / mib:.2f} MiB weights + "
                     f"{b['kv_cache'] / mib:.2f} MiB KV) = {res['floor_ms']:.2f} ms/token floor "
                     f"({res['roofline_tok_s']:.1f} tok/s); achieved {100 * res['achieved']:.0f}%")
    lines.append(f"memory: peak RSS {res['peak_rss_bytes'] / mib:.1f} MiB (a bare interpreter: "
                 f"{res['baseline_rss_bytes'] / mib:.1f} MiB), weights {res['weights_bytes'] / mib:.2f} MiB, "
                 f"KV cache {res['kv_cache_bytes'] / mib:.2f} MiB, arena {res['arena_bytes'] / mib:.2f} MiB "
                 f"(planner lower bound {res['lower_bound_bytes'] / mib:.2f} MiB)")
    if res.get("tuning"):
        lines += ["", format_tuning(res["tuning"])]
    return "\n".join(lines)


def format_tuning(tuning: dict) -> str:
    """The --tune choices of an artifact: per Linear problem, the kernel and its default vs tuned time."""
    from ..codegen.tuning import tuned_count

    lines = [f"tuned for {tuning['threads']} thread(s) on {tuning['host']} ({tuning['seconds']:.1f} s): "
             f"{tuned_count(tuning['problems'])} of {len(tuning['problems'])} Linear problems use tuned parameters",
             "| problem | layers | parameters | rows: default -> tuned ms |", "|---|---:|---|---|"]
    for p in tuning["problems"]:
        params = ", ".join(f"{k}={v}" for k, v in sorted(p["choice"].items())) or "defaults"
        if p.get("tried"):
            params += " (tried " + ", ".join(f"{k}={v}" for k, v in sorted(p["tried"].items())) + ": slower)"
        times = "; ".join(f"{m}: {d:.3f} -> {t:.3f} ({d / t:.2f}x)" for m, (d, t) in p["ms"].items() if t > 0)
        lines.append(f"| {p['problem']} | {p['nodes']} | {params} | {times or '-'} |")
    return "\n".join(lines)


def untuned_twin(out: str, progress=None) -> str:
    """The artifact of the same model and options without --tune (compiled once into the cache)."""
    from .. import flags
    from ..compile_cache import compile_cached
    from ..driver import options_from_dict
    from .session import _read_manifest

    manifest = _read_manifest(out)
    if not manifest.get("tuning"):
        raise TccError(f"{out} was compiled without --tune: there is no default to compare with "
                       "(compile with --tune)")
    source = manifest.get("source", "")
    if not os.path.isfile(source):
        raise TccError(f"--vs-default compiles {source or 'the source model'} again without --tune, "
                       "and it is no longer there")
    opts = options_from_dict(manifest.get("options") or {})
    opts.tune, opts.tune_threads = False, None
    twin = os.path.join(flags.get("cache-dir"), "artifacts",
                        "untuned-" + hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:16])
    compile_cached(source, twin, opts, progress)
    return twin


def tuned_vs_default(out: str, prompt_len: int = 128, gen: int = 64, threads: int = 2, repeat: int = 3,
                     bandwidth: bool = True, progress=None) -> dict:
    """`tcc bench out/ --vs-default`: the tuned artifact and its untuned twin, timed in one run."""
    twin = untuned_twin(out, progress)
    default = bench_artifact(twin, prompt_len, gen, threads, repeat, bandwidth=False)
    tuned = bench_artifact(out, prompt_len, gen, threads, repeat, bandwidth=bandwidth)
    return {"tuned": tuned, "default": default, "default_artifact": twin,
            "prefill_speedup": tuned["prefill_tok_s"] / default["prefill_tok_s"],
            "decode_speedup": default["decode_ms"] / tuned["decode_ms"]}


def format_vs_default(res: dict) -> str:
    t, d = res["tuned"], res["default"]
    return "\n".join([
        format_bench(t), "",
        f"tuned vs default kernels ({t['threads']} thread(s), prompt {t['prompt_len']}, {t['gen']} new tokens, "
        f"one run; default artifact {res['default_artifact']}):",
        "| | prefill tok/s | decode ms/token | decode tok/s |", "|---|---:|---:|---:|",
        f"| default | {d['prefill_tok_s']:.1f} | {d['decode_ms']:.2f} | {d['decode_tok_s']:.1f} |",
        f"| tuned | {t['prefill_tok_s']:.1f} | {t['decode_ms']:.2f} | {t['decode_tok_s']:.1f} |",
        f"| tuned / default | {res['prefill_speedup']:.2f}x | {res['decode_speedup']:.2f}x faster | |"])


def plot_steps(res: dict, path: str) -> None:
    """Decode ms per step over the generation, with the roofline floor (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        raise TccError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(1, len(res["step_ms"]) + 1), res["step_ms"], lw=1, label="decode step")
    if "floor_ms" in res:
        ax.axhline(res["floor_ms"], color="k", ls="--", lw=1, label=f"roofline ({res['bandwidth_gbs']:.1f} GB/s)")
    ax.set_xlabel("generated token")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{res.get('qm')}, {res['threads']} thread(s), prompt {res['prompt_len']}")
    ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _cache_dir(model: str, key: str) -> str:
    from .. import flags

    h = hashlib.sha256((os.path.abspath(model) + key).encode()).hexdigest()[:16]
    return os.path.join(flags.get("cache-dir"), "bench", h)


def model_ablation(model: str, qm: str, prompt_len: int = 32, gen: int = 16, threads: int | None = None,
                   repeat: int = 3, max_context: int | None = None, progress=None) -> list[dict]:
    from ..driver import compile_model

    if qm == "fp32":
        raise TccError(f"--ablation times the quantized linear kernels: give --qm {', '.join(QMS[:-1])} or {QMS[-1]}")
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
