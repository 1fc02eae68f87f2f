#!/usr/bin/env python
"""Quality of every tcc quantized format against llama.cpp's types, at their bytes (issue 23's table).

    python benchmarks/quality_suite.py [--llama-cpp DIR] [--context 256] [--threads 2]
        [--types Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q4_0-pure] [--formats w8a8-smoothquant,...] [--workdir build/quality]
        [--out benchmarks/results/quality.md] [--model M.onnx --text T.txt --calib C.txt]

What one run does, on the bundled demo model (models/demo) by default:

1. tcc: compiles the model once per format of `tcc eval --compare` (demo.COMPARE_VARIANTS, cached in the
   tcc cache) and scores the held-out text with each.
2. llama.cpp, when a build is found (--llama-cpp DIR, else llama-perplexity on PATH; benchmarks/llama_cpp_peer.py
   says how to build one): writes the same ONNX weights as an F32 GGUF (benchmarks/gguf_export.py), checks
   that llama.cpp's tokenizer gives the text the same ids as tcc's (llama-tokenize), quantizes the GGUF to
   each --types entry with llama-quantize (`Q4_0-pure` is `--pure`: every tensor at Q4_0) and runs
   llama-perplexity on each (KV cache in f32, as tcc's).
3. Prints one table: each format's weight bytes and its perplexity change against its own engine's fp32
   (tcc fp32 / llama.cpp F32), and writes it with the machine and the commands to --out.

Both engines score identical windows: llama-perplexity's (it has no other that scores every token): the
token stream is cut into non-overlapping windows of --context tokens (the tail that fills no window is
dropped), each run from an empty cache, and only each window's second half is scored (the targets after
position context/2). tcc scores those windows with the compiled model's logits (runtime/perplexity.py's
window_nll). The text is the file with one trailing newline removed, as llama.cpp's `-f` reads it.
Without llama.cpp the table has tcc's rows and a line saying how to get a build.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tcc.errors import TccError  # noqa: E402

import gguf_export  # noqa: E402
import llama_cpp_peer as llama_cpp  # noqa: E402

DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q4_0-pure")
DESCRIBE = {"Q4_0-pure": "Q4_0 `--pure`"}
MB = 1e6


def log(msg: str) -> None:
    print(f"[quality {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- windows
def chunk_windows(n: int, context: int) -> list[tuple[int, int, int]]:
    """llama-perplexity's windows over n tokens as (begin, end, first scored target): windows of `context`
    tokens from 0, not overlapping, the tail that fills no window dropped; targets from the one after
    position context // 2 to the window's end (perplexity.cpp: `first = n_ctx/2`, logits of positions
    first .. n_ctx - 2 predict the next token)."""
    if context < 4:
        raise TccError(f"--context must be at least 4 tokens, got {context}")
    if n < 2 * context:
        raise TccError(f"the text has {n} tokens; llama-perplexity's windows need at least 2 x --context "
                       f"({2 * context})")
    return [(b, b + context, b + context // 2 + 1) for b in range(0, n - context + 1, context)]


def score_windows(gen, ids: list[int], spans: list[tuple[int, int, int]]) -> dict:
    """Mean negative log-likelihood of the scored targets with a tcc Generator (each window from an empty
    cache)."""
    from tcc.runtime.perplexity import window_nll

    arr = np.asarray(ids, dtype=np.int64)
    nll, count = 0.0, 0
    try:
        for begin, end, first in spans:
            gen.reset()
            logits = gen.logits_of(ids[begin:end])
            nll += window_nll(logits[first - 1 - begin:end - 1 - begin], arr[first:end])
            count += end - first
    finally:
        gen.reset()
    return {"perplexity": math.exp(nll / count), "nll": nll, "scored": count}


# --------------------------------------------------------------------------------------------- tcc
def select_variants(formats: str | None) -> list:
    """demo.COMPARE_VARIANTS (whatever it holds), or the formats --formats names (those labels, or any
    <qm>-<method>[-pure|-b<bits>]: demo.parse_variant); fp32 always first (every row is measured against it)."""
    from tcc.demo import COMPARE_VARIANTS, parse_variant

    if not formats:
        return list(COMPARE_VARIANTS)
    want = [parse_variant(f.strip()) for f in formats.split(",") if f.strip()]
    return [COMPARE_VARIANTS[0], *dict.fromkeys(v for v in want if v.qm != "fp32")]


def tcc_rows(model: str, text: str, calib: str | None, context: int, threads: int | None,
             variants: list) -> tuple[list, dict]:
    """One row per variant, scored in llama.cpp's windows; and the token ids of the text."""
    from tcc.demo import compile_variant
    from tcc.runtime.perplexity import tokenize
    from tcc.runtime.session import load

    rows, ids, spans = [], None, None
    for v in variants:
        if v.calibrated and not calib:
            rows.append({"engine": "tcc", "format": v.label, "skipped": "needs --calib"})
            continue
        log(f"tcc {v.label}: compiling (cached)")
        art, manifest, _ = compile_variant(model, v, calib)
        with load(art, threads=threads) as sess:
            if sess.tokenizer is None:
                raise TccError(f"{model}: no tokenizer.json beside it (the compiled artifact needs one to score text)")
            if ids is None:
                ids, _ = tokenize(sess.tokenizer, text)
                spans = chunk_windows(len(ids), context)
            if context > sess.generator.capacity:
                raise TccError(f"--context {context} exceeds the artifact's KV capacity of "
                               f"{sess.generator.capacity} tokens")
            log(f"tcc {v.label}: scoring {len(spans)} windows")
            s = score_windows(sess.generator, ids, spans)
        w = manifest["weights"]
        rows.append({"engine": "tcc", "format": v.label, "file_bytes": w["bytes"],
                     "weight_bytes": w["bytes"] - w.get("position_table_bytes", 0), "baseline": v.qm == "fp32", **s})
    return rows, {"ids": ids or [], "windows": len(spans or [])}


# --------------------------------------------------------------------------------------- llama.cpp
def llama_rows(lc, model: str, text_file: str, ids: list[int], context: int, threads: int, types: list[str],
               workdir: str) -> tuple[list, dict]:
    gguf_dir = os.path.join(workdir, "gguf")
    os.makedirs(gguf_dir, exist_ok=True)
    f32 = os.path.join(gguf_dir, "model-F32.gguf")
    log(f"writing {f32}")
    info = gguf_export.export_gguf(model, f32)
    meta = {"gguf": info, "commands": [f"python benchmarks/gguf_export.py {model} {f32}"],
            "version": lc.version()}
    if lc.tool("llama-tokenize"):
        theirs = llama_cpp.tokenize(lc, f32, text_file)
        same = theirs == ids
        first = next((i for i, (a, b) in enumerate(zip(theirs, ids)) if a != b), min(len(theirs), len(ids)))
        meta["tokens"] = {"same": same, "llama_cpp": len(theirs), "tcc": len(ids), "first_difference": None if same
                          else first}
        if not same:  # different windows then: the comparison would not be fair
            raise TccError(f"llama.cpp tokenizes the text to {len(theirs)} ids, tcc to {len(ids)}; they first differ "
                           f"at token {first}")
    else:
        meta["tokens"] = None
    rows = []
    for t in ["F32", *types]:
        path = f32 if t == "F32" else os.path.join(gguf_dir, f"model-{t}.gguf")
        if t != "F32":
            log(f"llama-quantize {t}")
            meta["commands"].append(llama_cpp.quantize(lc, f32, path, t, threads))
        log(f"llama-perplexity {t}")
        p = llama_cpp.perplexity(lc, path, text_file, context, threads)
        meta["commands"].append(p["cmd"])
        rows.append({"engine": "llama.cpp", "format": t, "weight_bytes": gguf_export.tensor_bytes(path),
                     "perplexity": p["perplexity"], "windows": p["chunks"], "baseline": t == "F32",
                     "tensor_types": gguf_export.tensor_types(path)})
    return rows, meta


# ------------------------------------------------------------------------------------------- table
def relative(rows: list[dict]) -> list[dict]:
    """Each row's perplexity change against its own engine's baseline row (fp32 / F32)."""
    base = {r["engine"]: r["perplexity"] for r in rows if r.get("baseline") and "perplexity" in r}
    out = []
    for r in rows:
        r = dict(r)
        if "perplexity" in r and r["engine"] in base:
            r["vs_fp32"] = r["perplexity"] / base[r["engine"]] - 1.0
        out.append(r)
    return out


def format_table(rows: list[dict], parameters: int | None = None) -> str:
    """The quality table: baselines first, then by bytes, largest first."""
    rows = relative(rows)
    done = sorted((r for r in rows if "skipped" not in r), key=lambda r: (not r.get("baseline"), -r["weight_bytes"],
                                                                          r["engine"]))
    lines = ["| engine | format | weights | bits/parameter | perplexity | vs own fp32 | weights.bin |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in done:
        bpw = f"{8 * r['weight_bytes'] / parameters:.2f}" if parameters else ""
        delta = "—" if r.get("baseline") else (f"{100 * r['vs_fp32']:+.2f}%" if "vs_fp32" in r else "")
        name = DESCRIBE.get(r["format"], r["format"]) if r["engine"] == "llama.cpp" else r["format"]
        file = f"{r['file_bytes'] / MB:.2f} MB" if "file_bytes" in r else ""
        lines.append(f"| {r['engine']} | {name} | {r['weight_bytes'] / MB:.2f} MB | {bpw} | {r['perplexity']:.4f} "
                     f"| {delta} | {file} |")
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['engine']} | {r['format']} | | | | ({r['skipped']}) | |")
    typed = [r for r in done if r.get("tensor_types")]
    if typed:
        lines += ["", "What llama-quantize made of each type (matrices per GGML type; the norms stay F32):", ""]
        lines += [f"- {DESCRIBE.get(r['format'], r['format'])}: {r['tensor_types']}" for r in typed]
    return "\n".join(lines)


def header(meta: dict) -> list[str]:
    lines = [f"Model: {meta['model']} ({meta['parameters'] / 1e6:.2f}M parameters); text: {meta['text']} "
             f"({meta['tokens']} tokens). Windows: {meta['windows']} non-overlapping windows of {meta['context']} "
             f"tokens, each from an empty cache, scoring its last {meta['context'] - meta['context'] // 2 - 1} "
             f"tokens ({meta['scored']} scored), identical for both engines (llama-perplexity's layout)."]
    lc = meta.get("llama_cpp")
    if lc is None:
        lines.append(f"No llama.cpp build was found, so only tcc's rows. {llama_cpp.HOW_TO_GET[0].upper()}"
                     f"{llama_cpp.HOW_TO_GET[1:]}.")
        return lines
    tok = lc.get("tokens")
    if tok is None:
        lines.append("Token ids not compared (the llama.cpp build has no llama-tokenize).")
    else:
        lines.append(f"Tokenizer: llama.cpp (GGUF vocabulary written from tokenizer.json) gives the text the same "
                     f"{tok['tcc']} ids as tcc: {'yes' if tok['same'] else 'NO'}.")
    f = meta.get("fp32")
    if f:
        lines.append(f"fp32 agreement: tcc fp32 {f['tcc']:.4f}, llama.cpp F32 {f['llama.cpp']:.4f} "
                     f"({100 * (f['llama.cpp'] / f['tcc'] - 1):+.4f}%).")
    lines.append(f"llama.cpp {lc['version']}, CPU build; KV cache f32 in both engines; each format against its "
                 f"own engine's fp32. Weights: tensor bytes (tcc: weights.bin less its RoPE cos/sin tables, a cache "
                 f"of values derived from the model that llama.cpp computes as it runs; the whole file in the last column); llama.cpp: "
                 f"the GGUF's tensor data, vocabulary and metadata left out); MB = 10^6 bytes; bits/parameter = 8 x bytes / parameters "
                 f"(a tied embedding counted once).")
    return lines


def markdown(meta: dict, table: str) -> str:
    lines = ["# Quality: tcc's formats against llama.cpp's types", "",
             "Generated by `python benchmarks/quality_suite.py` (do not edit by hand).", "", *header(meta), "",
             table, "", f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores "
             f"({', '.join(meta['machine']['isa'])}); {meta['date']}; {meta['threads']} thread(s).", "",
             "Commands:", "", "```", meta["command"]]
    lc = meta.get("llama_cpp")
    if lc:
        lines += lc["commands"]
    lines += ["```", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main
def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise TccError(f"{what} not found: {path}")
    return path


def run_suite(args) -> dict:
    from llm_suite import machine_info

    from tcc.demo import DEMO_CALIB, DEMO_HELDOUT, DEMO_MODEL
    from tcc.runtime.perplexity import read_text

    model = _need_file(args.model or DEMO_MODEL, "--model")
    text_path = _need_file(args.text or DEMO_HELDOUT, "--text")
    calib = None if args.no_calib else _need_file(args.calib or DEMO_CALIB, "--calib")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    if args.threads < 1:
        raise TccError(f"--threads must be at least 1, got {args.threads}")
    variants = select_variants(args.formats)
    lc = llama_cpp.find_llama_cpp(args.llama_cpp, ("llama-perplexity", "llama-quantize"))
    if lc is not None and types:
        gguf_export._gguf()  # the one-line error about the gguf package before any compiling
    text = read_text(text_path)
    text = text[:-1] if text.endswith("\n") else text  # as llama.cpp's -f reads it
    os.makedirs(args.workdir, exist_ok=True)
    text_file = os.path.join(args.workdir, "text.txt")
    with open(text_file, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    rows, tok = tcc_rows(model, text, calib, args.context, args.threads, variants)
    spans = chunk_windows(len(tok["ids"]), args.context)
    base = next(r for r in rows if r.get("baseline"))
    cfg = gguf_export.read_config(os.path.join(os.path.dirname(os.path.abspath(model)), "config.json"))
    params = _parameters(cfg)
    meta = {"model": _shown(model), "text": _shown(text_path), "tokens": len(tok["ids"]),
            "windows": len(spans), "context": args.context, "scored": sum(e - f for _, e, f in spans),
            "parameters": params, "threads": args.threads, "machine": machine_info(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": "python benchmarks/quality_suite.py " + " ".join(args.argv), "llama_cpp": None}
    if lc is not None:
        lrows, lmeta = llama_rows(lc, model, text_file, tok["ids"], args.context, args.threads, types, args.workdir)
        bad = [r["format"] for r in lrows if r["windows"] != len(spans)]
        if bad:
            raise TccError(f"llama-perplexity scored {lrows[0]['windows']} windows, tcc {len(spans)}")
        rows += lrows
        meta["llama_cpp"] = lmeta
        meta["fp32"] = {"tcc": base["perplexity"], "llama.cpp": next(r for r in lrows if r["baseline"])["perplexity"]}
        check_fp32_agreement(meta["fp32"])
    return {"meta": meta, "rows": rows}


def check_fp32_agreement(fp32: dict) -> None:
    """The converter's end-to-end proof (same ids, same windows, so the same fp32 model gives the same
    perplexity): a TccError if llama.cpp's F32 and tcc's fp32 differ by more than FP32_AGREEMENT."""
    gap = abs(fp32["llama.cpp"] / fp32["tcc"] - 1)
    if not gap <= FP32_AGREEMENT:
        raise TccError(f"llama.cpp's F32 perplexity {fp32['llama.cpp']:.4f} differs from tcc's fp32 "
                       f"{fp32['tcc']:.4f} by {gap:.2%}: the GGUF does not reproduce the model")


# tcc fp32 and llama.cpp F32 on the same windows of the same ids: measured 0.0004% apart; more than this means the
# GGUF conversion is wrong, and every llama.cpp row with it.
FP32_AGREEMENT = 2e-4


def _shown(path: str) -> str:
    """A path as the table prints it: the bundled files relative to the repository, others as given."""
    import tcc

    root = os.path.dirname(os.path.abspath(tcc.__file__))
    full = os.path.abspath(path)
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else path


def _parameters(cfg: dict) -> int:
    """Parameters of a LLaMA config (tied embeddings counted once)."""
    H, L, F, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv, hd = cfg.get("num_key_value_heads", heads), cfg.get("head_dim") or H // heads
    layer = H * heads * hd * 2 + 2 * H * kv * hd + 3 * H * F + 2 * H
    return V * H * (1 if cfg.get("tie_word_embeddings") else 2) + L * layer + H


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="quality_suite.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", metavar="DIR", help="a llama.cpp build folder (default: llama-perplexity on PATH)")
    ap.add_argument("--model", help="ONNX LLaMA decoder with config.json and tokenizer.json beside it (default: "
                                    "the demo model)")
    ap.add_argument("--text", help="held-out text (default: models/demo/heldout.txt)")
    ap.add_argument("--calib", help="calibration text for AWQ/SmoothQuant (default: models/demo/calib.txt)")
    ap.add_argument("--no-calib", action="store_true", help="skip the calibrated tcc formats")
    ap.add_argument("--formats", help="comma-separated tcc formats (labels of `tcc eval --compare`, e.g. "
                                      "w4a8-awq; default: all of them; fp32 is always included)")
    ap.add_argument("--context", type=int, default=256,
                    help="window length in tokens (default 256: the demo model was trained on 256-token sequences, "
                         "and positions past its training length score far worse)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES),
                    help="llama.cpp types to quantize to (Q4_0-pure: llama-quantize --pure Q4_0)")
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "build", "quality"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "quality.md"),
                    help="where the markdown goes ('-': print only)")
    ap.add_argument("--json", help="also write the rows and figures as JSON here")
    args = ap.parse_args(argv)
    args.argv = argv
    try:
        res = run_suite(args)
    except TccError as e:
        print(f"quality_suite: error: {e}", file=sys.stderr)
        return 2
    table = format_table(res["rows"], res["meta"]["parameters"])
    md = markdown(res["meta"], table)
    print("\n".join(header(res["meta"])) + "\n\n" + table)
    if args.out != "-":
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(md)
        log(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({**res, "rows": relative(res["rows"])}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
