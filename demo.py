"""The bundled demo LLM: `tcc demo` and the quantization comparison of `tcc eval --compare`.

`models/demo/` holds a small LLaMA-architecture decoder that tcc trained itself on the Python
documentation (tools/train_demo_model.py; model card in models/demo/README.md), exported as users
export (ONNX with past key/values), with its tokenizer, a held-out text and a calibration text.
Artifacts are compiled into the cache directory (`TCC_CACHE_DIR`) and reused while the model, the
options and tcc itself are unchanged (compile_cache.compile_cached).
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import Callable

from . import flags
from .errors import TccError

DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "demo")
DEMO_MODEL = os.path.join(DEMO_DIR, "model.onnx")
DEMO_HELDOUT = os.path.join(DEMO_DIR, "heldout.txt")
DEMO_CALIB = os.path.join(DEMO_DIR, "calib.txt")
DEMO_PROMPT = "The for statement in Python"
DEMO_QM = "w4a8"
# How `tcc demo` / `tcc serve --demo` compile each qm: the best of the quality table (benchmarks/results/quality.md).
# The 4-bit schemes keep the embedding and LM head at 8 bits (passes/bit_allocation.py's default) and round with
# AWQ then GPTQ; w8a8 (int8 activations per row) rounds to nearest within noise of everything else.
DEMO_METHODS = {"fp32": "-", "w8a8": "SmoothQuant", "w4a32": "AWQ+GPTQ", "w4a8": "AWQ+GPTQ"}


def demo_variant(qm: str = DEMO_QM) -> "Variant":
    """How the demo compiles `qm` (DEMO_METHODS)."""
    return Variant(qm, DEMO_METHODS.get(qm, "AWQ"))


def demo_model() -> str:
    if not os.path.isfile(DEMO_MODEL):
        raise TccError(f"the bundled demo model is missing: {DEMO_MODEL} (a partial checkout? "
                       f"tools/train_demo_model.py rebuilds it)")
    return DEMO_MODEL


def host_target() -> str:
    """The backend that runs on this machine."""
    from .backends import get_backend

    machine = platform.machine().lower()
    name = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm", "arm64": "arm"}.get(machine)
    if name is None:
        raise TccError(f"no tcc backend runs on this host ({machine})")
    get_backend(name)  # a one-line error if that backend is not available
    return name


@dataclass(frozen=True)
class Variant:
    """One way to compile a model for the quality table."""

    qm: str
    method: str  # "-" (fp32), "RTN", "AWQ", "SmoothQuant", "GPTQ", "AWQ+GPTQ", "SmoothQuant+GPTQ"
    budget: str | None = None  # 4-bit schemes' --budget-bits: None (embedding and LM head at 8 bits), "pure", "4.8"

    @property
    def calibrated(self) -> bool:
        return self.method not in ("-", "RTN")

    @property
    def quant_method(self) -> str | None:
        """--quant-method (None: the default, the scheme's rescaling when calibrated)."""
        return self.method.lower() if "GPTQ" in self.method else None

    @property
    def label(self) -> str:
        budget = "" if self.budget is None else "-pure" if self.budget == "pure" else f"-b{self.budget}"
        return self.qm if self.method == "-" else f"{self.qm}-{self.method.lower()}{budget}"

    @property
    def row_method(self) -> str:
        """The comparison table's method column: the method, and the bit budget where one is given."""
        if self.budget is None:
            return self.method
        return f"{self.method} {'4-bit only' if self.budget == 'pure' else self.budget + ' bits'}"


METHODS = ("RTN", "AWQ", "SmoothQuant", "GPTQ", "AWQ+GPTQ", "SmoothQuant+GPTQ")


def parse_variant(label: str) -> Variant:
    """The Variant a label names (`Variant.label`'s form: fp32, w8a8-rtn, w4a8-awq+gptq-pure, w4a8-awq-b5.3);
    a one-line TccError otherwise."""
    from .passes.bit_allocation import check_budget
    from .passes.schemes import SCHEMES

    qm, _, rest = label.partition("-")
    if qm == "fp32" and not rest:
        return Variant("fp32", "-")
    method, _, budget = rest.partition("-")
    by_name = {m.lower(): m for m in METHODS}
    if qm not in SCHEMES or qm == "fp32" or method not in by_name:
        raise TccError(f"format {label!r}: expected <qm>-<method>[-pure|-b<bits>] with a qm of "
                       f"{', '.join(q for q in SCHEMES if q != 'fp32')} and a method of {', '.join(by_name)}")
    if budget and budget != "pure":
        try:
            ok = budget.startswith("b") and check_budget(budget[1:]) is not None
        except TccError:
            ok = False
        if not ok:
            raise TccError(f"format {label!r}: the budget is 'pure' or b<bits per weight>, e.g. b5.3")
    return Variant(qm, by_name[method], None if not budget else "pure" if budget == "pure" else budget[1:])


COMPARE_VARIANTS = (Variant("fp32", "-"), Variant("w8a8", "RTN"), Variant("w8a8", "SmoothQuant"),
                    Variant("w8a8", "GPTQ"), Variant("w8a8", "SmoothQuant+GPTQ"),
                    Variant("w4a32", "RTN"), Variant("w4a32", "AWQ"), Variant("w4a8", "RTN"), Variant("w4a8", "AWQ"),
                    Variant("w4a8", "GPTQ"), Variant("w4a8", "AWQ+GPTQ"),
                    # every layer 4-bit, and layers at 8 bits chosen under a budget (passes/bit_allocation.py)
                    Variant("w4a8", "RTN", "pure"), Variant("w4a8", "AWQ", "pure"), Variant("w4a8", "AWQ", "4.8"),
                    Variant("w4a8", "AWQ", "6.0"))


def artifact_dir(model: str, label: str) -> str:
    stem = os.path.splitext(os.path.basename(model))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(model)))
    return os.path.join(flags.get("cache-dir"), "artifacts", f"{parent}-{stem}-{label}")


def compile_variant(model: str, variant: Variant, calib: str | None, max_context: int | None = None,
                    group_size: int | None = None, dump_ir: bool = False, rebuild: bool = False,
                    progress: Callable | None = None, max_batch: int = 1) -> tuple[str, dict, bool]:
    """Compile (or reuse) `model` as `variant` for the host; returns (artifact dir, manifest, reused).
    max_batch > 1: a KV cache of that many independent sequences (`tcc serve --slots N`)."""
    from .compile_cache import compile_cached
    from .driver import CompileOptions
    from .passes.schemes import get_scheme

    if not get_scheme(variant.qm).grouped:
        group_size = None  # per-channel schemes have no groups: --group-size is for the int4 rows
    out = artifact_dir(model, variant.label + (f"-g{group_size}" if group_size else "")
                       + (f"-ctx{max_context}" if max_context else "") + (f"-b{max_batch}" if max_batch > 1 else ""))
    opts = CompileOptions(target=host_target(), qm=variant.qm, max_context=max_context, group_size=group_size,
                          max_dims={"batch": max_batch} if max_batch > 1 else {},
                          calib=calib if variant.calibrated else None, round_to_nearest=not variant.calibrated,
                          quant_method=variant.quant_method,
                          budget_bits=variant.budget if variant.budget in (None, "pure") else float(variant.budget),
                          dump_ir=out + "-ir" if dump_ir else None)
    if variant.calibrated and not calib:
        raise TccError(f"{variant.label} needs calibration text (--calib FILE)")
    # An artifact compiled without dumps (by --compare) is rebuilt once when the dumps are wanted.
    rebuild = rebuild or (dump_ir and not os.path.isdir(out + "-ir"))
    manifest, reused = compile_cached(model, out, opts, progress, rebuild=rebuild)
    return out, manifest, reused


def shown(path: str) -> str:
    """A path as the user can type it from here: relative when under the current directory."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def run_demo(qm: str = DEMO_QM, prompt: str | None = None, max_new_tokens: int = 96, seed: int = 0,
             temperature: float = 0.7, threads: int | None = None, rebuild: bool = False, out=None,
             progress: Callable | None = None) -> dict:
    """Compile the bundled model for the host (cached), generate from `prompt` with streaming output,
    and report speed, size and where the IR dumps are. Returns the figures."""
    from .runtime.session import load

    out = out or sys.stdout
    model = demo_model()
    prompt = prompt or DEMO_PROMPT
    variant = demo_variant(qm)
    art, manifest, reused = compile_variant(model, variant, DEMO_CALIB, dump_ir=True, rebuild=rebuild,
                                            progress=progress)
    q = manifest.get("quantization") or {}
    how = f"{qm}" + (f" ({variant.method}, group {q.get('group_size')})" if qm != "fp32" else "")
    when = "reused from the cache" if reused else f"compiled in {manifest['compile_seconds']:.1f} s"
    print(f"tcc demo: {shown(model)} for {manifest['target']} as {how}, {when}", file=out)
    print(f"prompt: {prompt!r}\n", file=out)
    out.write(prompt)
    out.flush()

    def echo(piece: str) -> None:
        out.write(piece)
        out.flush()

    with load(art, threads=threads) as sess:
        g = sess.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stream=echo)
    print("\n", file=out)
    size = dir_bytes(art)
    weights = manifest["weights"]["bytes"]
    fp32 = q.get("fp32_weight_bytes") or weights
    figures = {"artifact": art, "ir_dumps": art + "-ir", "reused": reused, "text": g.text,
               "prompt_tokens": len(g.prompt_tokens), "generated_tokens": len(g.tokens),
               "prefill_tok_s": g.prefill_tokens_per_second, "decode_tok_s": g.decode_tokens_per_second,
               "artifact_bytes": size, "weight_bytes": weights}
    dec_ms = 1e3 / g.decode_tokens_per_second if g.decode_tokens_per_second else float("nan")
    print(f"prefill {len(g.prompt_tokens)} tokens at {g.prefill_tokens_per_second:.0f} tok/s, "
          f"decode {len(g.tokens)} tokens at {g.decode_tokens_per_second:.0f} tok/s ({dec_ms:.2f} ms/token)", file=out)
    print(f"artifact {art}: {size / 2**20:.1f} MiB on disk, weights {weights / 2**20:.2f} MiB "
          f"({weights / fp32:.2f}x the fp32 weights)", file=out)
    print(f"IR after every pass: {art}-ir/ (000_import.tir ... {_last_dump(art + '-ir')})", file=out)
    print(f"next: tcc chat {art}\n      tcc eval {art} --text {shown(DEMO_HELDOUT)}\n      tcc bench {art}",
          file=out)
    return figures


def _last_dump(d: str) -> str:
    try:
        names = sorted(f for f in os.listdir(d) if f.endswith(".tir"))
    except OSError:
        return "?"
    return names[-1] if names else "?"


def compare_quantization(model: str, text: str, calib: str | None, context: int | None = None,
                         stride: int | None = None, max_tokens: int | None = None, group_size: int | None = None,
                         threads: int | None = None, variants=COMPARE_VARIANTS, progress: Callable | None = None,
                         bar: bool = False) -> list[dict]:
    """Compile `model` once per variant (cached) and evaluate each on `text`: one row per variant with
    perplexity, bits per byte, weight bytes and the change against fp32. Calibrated variants are
    skipped (with a row saying so) when no calibration text is given."""
    from .runtime.perplexity import evaluate
    from .runtime.session import load

    rows = []
    for v in variants:
        if v.calibrated and not calib:
            rows.append({"qm": v.qm, "method": v.row_method, "skipped": "needs --calib FILE"})
            continue
        if progress:
            progress(f"compiling {v.label}")
        art, manifest, reused = compile_variant(model, v, calib, group_size=group_size, progress=None)
        if progress:
            progress(f"evaluating {v.label}" + (" (artifact reused)" if reused else ""))
        with load(art, threads=threads) as sess:
            p = evaluate(sess, text, context=context, stride=stride, max_tokens=max_tokens, progress=bar)
        q = manifest.get("quantization") or {}
        rows.append({"qm": v.qm, "method": v.row_method, "artifact": art, "weight_bytes": manifest["weights"]["bytes"],
                     "group_size": q.get("group_size"), "bit_allocation": q.get("bit_allocation"), **p.as_dict()})
    base = next((r for r in rows if r["qm"] == "fp32" and "perplexity" in r), None)
    for r in rows:
        if base and "perplexity" in r:
            r["ppl_vs_fp32"] = r["perplexity"] / base["perplexity"] - 1.0
    return rows


def format_compare_table(rows: list[dict]) -> str:
    lines = ["| scheme | method | weights | perplexity | vs fp32 | bits/byte | eval tok/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['qm']} | {r['method']} | | | | | ({r['skipped']}) |")
            continue
        delta = f"{100 * r['ppl_vs_fp32']:+.2f}%" if "ppl_vs_fp32" in r else ""
        lines.append(f"| {r['qm']} | {r['method']} | {r['weight_bytes'] / 2**20:.2f} MiB | {r['perplexity']:.3f} "
                     f"| {delta} | {r['bits_per_byte']:.4f} | {r['tokens_per_second']:.0f} |")
    return "\n".join(lines)
