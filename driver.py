"""`tcc compile`: ONNX -> IR -> passes -> generated C++ -> CMake -> an artifact directory.

The artifact (`<out>/`) holds `libmodel.so`, the standalone `run` binary, `weights.bin` (mmapped at
load) and `manifest.json`. It is assembled in a temporary directory and renamed into place, so an
existing artifact is never left half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable


from . import __version__, flags
from .errors import TccError
from .ir.core import Graph
from .codegen.manifest import build_manifest
from .ir.dtypes import DType
# how the weights are quantized, from the options (QUANT_METHODS and AWQ_CLIP_DEFAULT re-exported for the CLI)
from .passes.methods import (AWQ_CLIP_DEFAULT, QUANT_METHODS, RESCALING, awq_clip,  # noqa: F401
                             check_budget_option, quant_method)

DEFAULT_MAX_DIM = 256


@dataclass
class CompileOptions:
    target: str = "x86"
    cpu: str | None = None  # --cpu: the CPU baseline of targets that have a choice (arm: cortex-a76, ...)
    cuda_arch: str | None = None  # --cuda-arch: the GPU architectures of the cuda target (sm_80,sm_90)
    qm: str | None = None  # None: the target's baseline (Target.default_qm: fp32 on the CPUs, fp16 on cuda)
    dump_ir: str | None = None
    max_dims: dict[str, int] = field(default_factory=dict)  # upper bounds of dynamic dims
    dims: dict[str, int] = field(default_factory=dict)  # dims fixed to a value
    pipeline: str = "default"
    print_after: tuple[str, ...] = ()
    disable_passes: tuple[str, ...] = ()
    kernel_variant: str | None = None
    build_dir: str | None = None
    max_context: int | None = None  # KV-cache capacity of a decoder with past (default: config.json or 2048)
    tokenizer: str | None = None  # tokenizer.json or its directory (default: beside the ONNX file)
    chat_template: str | None = None  # built-in name, a named template of the config, or Jinja text
    # Quantization (--qm): group size (default: the target's), zero points, Linear layers kept in fp32
    # (fnmatch patterns on node/weight names, or lm_head), calibration data for AWQ / SmoothQuant.
    group_size: int | None = None
    asym: bool = False
    keep_fp32: tuple[str, ...] = ()
    calib: str | None = None  # text file (tokenized with the model's tokenizer) or .npz of inputs
    calib_samples: int = 16
    calib_seq_len: int = 256
    awq_clip: bool | None = None  # AWQ's weight-clipping search (None: AWQ_CLIP_DEFAULT whenever AWQ runs)
    # --budget-bits: which layers of a 4-bit scheme get 8-bit weights (passes/bit_allocation.py): None (the
    # embeddings and LM head), "pure" (every layer 4-bit) or average bits per weight, scales included.
    budget_bits: float | str | None = None
    round_to_nearest: bool = False  # no calibration on purpose (RTN rows of a comparison): no warning
    # How the weights are rounded (QUANT_METHODS; None: the scheme's rescaling, awq or smoothquant, with
    # --calib, else round to nearest).
    quant_method: str | None = None
    # --tune: measure the kernels' free parameters on this machine for `tune_threads` threads (default:
    # the runtime's default thread count) and build the fastest (codegen/tuning.py).
    tune: bool = False
    tune_threads: int | None = None
    # --force: write into an existing folder that holds files tcc did not write (they are kept).
    force: bool = False
    # --require-kv-cache: a decoder with past inputs whose KV cache cannot be built is an error, not a warning.
    require_kv_cache: bool = False


def _say(progress: Callable | None, msg: str) -> None:
    if progress:
        progress(msg)


def symbol_bounds(graph: Graph, opts: CompileOptions) -> dict[str, int]:
    symbols = sorted({s for v in graph.inputs for s in v.type.symbols})
    # Exporters name the same dim differently (optimum: sequence_length, batch_size, past_sequence_length):
    # a name of one alias group means the model's dim of that group when exactly one exists.
    groups = [("seq", "sequence_length", "seq_len"), ("batch", "batch_size"),
              ("past", "past_seq", "past_sequence_length", "past_seq_len", "past_len")]
    for name in [n for n in opts.max_dims if n not in symbols and n != "*"]:
        group = next((g for g in groups if name in g), ())
        hits = [s for s in symbols if s in group]
        if len(hits) == 1 and hits[0] not in opts.max_dims:
            opts.max_dims = {hits[0] if k == name else k: v for k, v in opts.max_dims.items()}
    unknown = sorted(set(opts.max_dims) - set(symbols) - {"*"})
    if unknown:
        raise TccError(f"--max-dim names unknown dim(s) {', '.join(unknown)}; the model's dynamic dims are "
                       f"{', '.join(symbols) or 'none'} (seq, batch and past also name sequence_length, "
                       f"batch_size and past_sequence_length and the like when the model has one of them)")
    default = opts.max_dims.get("*", DEFAULT_MAX_DIM)
    return {s: int(opts.max_dims.get(s, default)) for s in symbols}


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len")


def model_config(model) -> dict | None:
    """The parsed config.json beside an ONNX file, if there is one (and it is a JSON object)."""
    if not isinstance(model, str):
        return None
    from .frontend.side_files import read_side_text

    text = read_side_text(os.path.dirname(os.path.abspath(model)), "config.json")  # inside the folder only
    try:
        config = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def model_config_context(model) -> int | None:
    """The context length in the config.json beside an ONNX file (HF's keys), if there is one."""
    config = model_config(model)
    if config is None:
        return None
    for key in CONTEXT_KEYS:
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None


def resolve_options(opts: CompileOptions) -> CompileOptions:
    """The options with the target's defaults filled in (no --qm: the target's baseline, Target.default_qm),
    as a new object: the caller's is left as it was, so a cache key computed from it stays the same."""
    if opts.qm is not None:
        return opts
    from dataclasses import replace

    from .backends import get_backend

    backend = get_backend(opts.target, cpu=opts.cpu, cuda_arch=opts.cuda_arch)
    return replace(opts, qm=getattr(backend.target, "default_qm", "fp32"))


def check_target(opts: CompileOptions):
    """The backend of resolved options (resolve_options), or a TccError saying why it cannot run them."""
    from .backends import get_backend
    from .passes.schemes import check_scheme, get_scheme

    backend = get_backend(opts.target, cpu=opts.cpu, cuda_arch=opts.cuda_arch)
    get_scheme(opts.qm)
    check_scheme(opts.qm, backend.target, opts.group_size, opts.asym)
    check_budget_option(opts)
    return backend


def warn(message: str) -> None:
    print(f"tcc: warning: {message}", file=sys.stderr, flush=True)


def _calibration(model, opts: CompileOptions):
    """The calibration source for the quantization passes (None: round to nearest, with a warning unless
    asked for)."""
    from .passes.schemes import get_scheme

    scheme = get_scheme(opts.qm)
    if scheme.weight_bits is None:
        if opts.calib:
            warn(f"--calib is ignored for --qm {opts.qm}")
        return None
    if not opts.calib:
        if opts.round_to_nearest or opts.quant_method == "rtn":
            return None
        warn(f"--qm {opts.qm} without --calib: weights are rounded to nearest; {scheme.calibration} needs "
             "calibration data (--calib FILE)")
        return None
    from .frontend.calibration import Calibration

    tok = _tokenizer_files(model, opts).get("tokenizer.json")
    return Calibration(opts.calib, opts.calib_samples, opts.calib_seq_len, tok)


def optimize(model, opts: CompileOptions, progress: Callable | None = None):
    """Import and run the pipeline; returns (graph, ctx)."""
    from .backends import capabilities
    from .frontend.onnx_import import import_onnx
    from .passes.context import PassContext
    from .passes.runner import run_pipeline
    from .passes.schemes import get_scheme

    opts = resolve_options(opts)
    backend = check_target(opts)
    method = quant_method(opts)
    # the rescaling pass the method leaves out does not run (the other one is a no-op for the scheme)
    skip = tuple(p for p in RESCALING if method is None or p not in method.split("+"))
    _say(progress, "importing ONNX")
    # With weights quantized, an fp16 export runs at f32 activations (its weights quantized from fp16). On an
    # fp16 target too: the passes see the graph an fp32 export gives (attention fusion and the KV cache match
    # it), and the float16 pass makes it fp16 again, the widening Casts of the f16 weights then no-ops.
    widen = get_scheme(opts.qm).weight_bits is not None or capabilities(backend.target).activations == "f16"
    graph = import_onnx(model, dims=opts.dims or None, widen_f16=widen)
    # Public output names, kept whatever the passes do to the values behind them.
    graph.meta["output_names"] = [v.name for v in graph.outputs]
    # what the weights take at fp32 (an fp16 or bf16 export's counted at 4 bytes each: the ratios compare to fp32)
    graph.meta["fp32_weight_bytes"] = sum(int(v.const.size) * 4 for v in graph.constants.values()
                                          if v.dtype in (DType.f32, DType.f16, DType.bf16))
    ctx = PassContext(target=backend.target, qm=opts.qm, symbol_bounds=symbol_bounds(graph, opts),
                      options={"max_context": opts.max_context or model_config_context(model),
                               "explicit_bounds": tuple(opts.max_dims), "group_size": opts.group_size,
                               "asym": opts.asym, "keep_fp32": tuple(opts.keep_fp32),
                               "awq_clip": awq_clip(opts, method), "quant_method": method,
                               "budget_bits": opts.budget_bits,
                               "calibration": _calibration(model, opts), "max_plan_bytes": flags.get("max-plan-bytes"),
                               "require_kv_cache": opts.require_kv_cache, "model_config": model_config(model)})
    run_pipeline(graph, opts.pipeline, ctx, dump_dir=opts.dump_ir, print_after=opts.print_after,
                 disable=(*opts.disable_passes, *skip), progress=lambda name: _say(progress, f"pass {name}"))
    return graph, ctx, backend


def compile_model(model: str, out_dir: str, options: CompileOptions | None = None, progress: Callable | None = None,
                  **kwargs) -> dict:
    """Compile an ONNX model into `out_dir`; returns the manifest. kwargs override CompileOptions fields."""
    from .codegen.program import generate
    from .runtime.artifact import plan_replacement

    opts = options or CompileOptions()
    for k, v in kwargs.items():
        if not hasattr(opts, k):
            raise TypeError(f"unknown compile option {k!r}")
        setattr(opts, k, v)
    opts = resolve_options(opts)
    t0 = time.perf_counter()
    plan_replacement(os.path.abspath(out_dir), (), opts.force)  # refuse before the work, not after it
    if opts.tune:
        from .codegen.tuning import refusal

        why = refusal(check_target(opts), opts.target)
        if why:
            raise TccError(why)
    graph, ctx, backend = optimize(model, opts, progress)
    plan = ctx.stats.get("plan-memory")
    if plan is None:
        raise TccError(f"pipeline {opts.pipeline!r} does not plan memory; it cannot be compiled")
    tuning = _tune(graph, ctx, backend, opts, progress) if opts.tune else None
    _say(progress, "generating code")
    program = generate(graph, plan, backend, ctx.symbol_bounds, variant=opts.kernel_variant, tuning=tuning)
    build_dir = opts.build_dir or _default_build_dir(out_dir)
    with _build_lock(build_dir):
        return _build_and_assemble(model, out_dir, opts, graph, ctx, backend, program, tuning, build_dir,
                                   progress, t0)


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (the compile's, from the CLI; C++ builds run in children
    and are not counted). Mapped weights count while resident: frontend/mapped.py releases them."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _build_and_assemble(model, out_dir, opts, graph, ctx, backend, program, tuning, build_dir, progress, t0):
    from .codegen.cmake import build_library
    from .codegen.program import write_sources

    llm = graph.meta.get("llm") or {}
    chat = bool((llm.get("kv_cache") or llm.get("recompute")) and _tokenizer_files(model, opts))
    # The manifest and the tokenizer/chat files first: a bad chat template fails in seconds, not after the build.
    manifest = build_manifest(model, graph, ctx, opts, program, 0.0, options_to_dict(opts))
    if tuning is not None:
        manifest["tuning"] = tuning.manifest()
    manifest["binaries"] = {"run": "run", **({"chat": "chat"} if chat else {})}
    files, texts = {}, {}
    if "llm" in manifest:
        files.update(_tokenizer_files(model, opts))
        texts.update(_llm_texts(manifest, files, opts))
    sources = write_sources(program, os.path.join(build_dir, "src"))
    run_cpp = os.path.join(build_dir, "src", "run_main.cpp")
    _write_template("common/run_main.cpp.j2", run_cpp)
    _say(progress, f"building with CMake ({len(program.kernels)} kernels)")
    executables = {"run": [run_cpp]}
    if chat:
        executables["chat"] = _chat_sources(build_dir)  # needs only the C++ compiler (no JSON library)
    if getattr(backend.target, "builds_here", True):
        lib = build_library(sources, build_dir, backend.target, "model", extra_executables=executables,
                            jobs=flags.get("build-jobs"))
        files.update({"libmodel.so": lib, **{exe: os.path.join(build_dir, exe) for exe in executables}})
    if getattr(backend.target, "emulation", None):
        files.update(_build_emulated(sources, executables, build_dir, backend.target, progress, manifest))
    if not getattr(backend.target, "builds_here", True):
        # (metal) the program for the target's own platform is built there from the artifact's sources and recipe;
        # here only the emulation build exists, which is then the artifact's library.
        from .codegen.metal_host import write_macos_project

        files.update(write_macos_project(sources, executables, build_dir, manifest))
        manifest["library"] = manifest["emulation"]["library"]
        manifest["binaries"] = dict(manifest["emulation"]["binaries"])
    if flags.get("keep-build"):
        files["src"] = os.path.join(build_dir, "src")
    manifest["compile_seconds"] = round(time.perf_counter() - t0, 3)
    manifest["compile_peak_rss_bytes"] = peak_rss_bytes()
    from .runtime.artifact import write_artifact

    write_artifact(out_dir, files, program.weights, manifest, texts, force=opts.force)
    _say(progress, f"wrote {out_dir}")
    return manifest


def _build_emulated(sources, executables, build_dir, target, progress, manifest) -> dict:
    """A GPU artifact also holds its program built for the CPU SIMT emulator (the same kernel sources compiled
    as C++ against runtime/simt/tcc_simt.h), so `tcc run/generate --emulate` runs it on any host: the
    library and binaries named in manifest["emulation"]."""
    from dataclasses import replace

    from .codegen.cmake import build_library

    device = target.emulation
    _say(progress, f"building the {device} emulation")
    emu_dir = os.path.join(build_dir, device)
    if "chat" in executables:
        _chat_sources(emu_dir)  # its generated header beside this build's CMakeLists.txt
    if any(s.endswith(".metal") for s in sources):  # Metal kernels reach the emulator through its Metal bridge
        from .codegen.cmake import RUNTIME_DIR

        sources = [*sources, os.path.join(RUNTIME_DIR, "simt", "metal_bridge.cpp")]
    lib = build_library(sources, emu_dir, replace(target, device=device), "model", extra_executables=executables,
                        jobs=flags.get("build-jobs"))
    names = {"library": f"libmodel-{device}.so", "binaries": {exe: f"{exe}-{device}" for exe in executables}}
    manifest["emulation"] = {"device": device, **names}
    return {names["library"]: lib, **{names["binaries"][exe]: os.path.join(emu_dir, exe) for exe in executables}}


_PATH_OPTIONS = ("calib", "tokenizer")
# Options that say where to write, not what to build: left out of the manifest and the cache key.
_LOCAL_OPTIONS = ("dump_ir", "build_dir", "force")


def options_to_dict(opts: CompileOptions) -> dict:
    """The compile options as JSON (the manifest's "options": enough to compile the model again)."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(opts).items())
           if k not in _LOCAL_OPTIONS}
    for k in _PATH_OPTIONS:  # absolute, so that the options work from any directory
        if isinstance(out.get(k), str) and os.path.exists(out[k]):
            out[k] = os.path.abspath(out[k])
    return out


def options_from_dict(values: dict) -> CompileOptions:
    """CompileOptions from a manifest's "options" (fields this tcc does not know are an error)."""
    known = {f.name: f for f in dataclasses.fields(CompileOptions)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TccError(f"the artifact's compile options name unknown option(s) {', '.join(unknown)} "
                       f"(compiled by another tcc version?)")
    defaults = CompileOptions()
    return CompileOptions(**{k: tuple(v) if isinstance(getattr(defaults, k), tuple) else v
                             for k, v in values.items()})


def tune_threads(opts: CompileOptions) -> int:
    """The thread count --tune measures at: --tune-threads, else the runtime default (flag `threads`)."""
    n = opts.tune_threads or flags.get("threads") or os.cpu_count() or 1
    if n < 1:
        raise TccError(f"--tune-threads must be at least 1, got {n}")
    return int(n)


def _tune(graph: Graph, ctx, backend, opts: CompileOptions, progress: Callable | None):
    from .codegen.tuning import tune, tuned_count

    result = tune(graph, ctx.symbol_bounds, backend, tune_threads(opts), progress, opts.kernel_variant)
    _say(progress, f"tuned {len(result.problems)} kernel problem(s) in {result.seconds:.1f} s: "
                   f"{tuned_count(result.problems)} use tuned parameters")
    return result


def _chat_sources(build_dir: str) -> list[str]:
    """The standalone chat binary: runtime/chat/ plus the generated Unicode tables its tokenizer needs."""
    from .codegen.cmake import RUNTIME_DIR
    from .codegen.unicode_tables import write_unicode_header

    write_unicode_header(os.path.join(build_dir, "tcc_unicode_tables.h"))
    chat = os.path.join(RUNTIME_DIR, "chat")
    return [os.path.join(chat, "chat_main.cpp"), os.path.join(chat, "tokenizer.cpp")]


@contextlib.contextmanager
def _build_lock(build_dir: str):
    """One compile at a time per build tree: two compiles into the same output share it (its key is the
    output path), and CMake runs in one tree must not overlap. The second waits, then builds its own."""
    import fcntl

    try:
        os.makedirs(build_dir, exist_ok=True)
        lock = open(os.path.join(build_dir, ".lock"), "w")
    except OSError as e:
        raise TccError(f"cannot use the build folder {build_dir}: {e.strerror or e} (set TCC_CACHE_DIR to a "
                       "writable folder)") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _default_build_dir(out_dir: str) -> str:
    from .codegen.cmake import sanitizers

    # Sanitized and plain builds of one output keep separate trees (switching would rebuild everything).
    key = hashlib.sha256((os.path.abspath(out_dir) + "|" + ",".join(sanitizers())).encode()).hexdigest()[:16]
    return os.path.join(flags.get("cache-dir"), "build", key)


def _write_template(name: str, path: str) -> None:
    from .codegen.kernels import environment, write_if_changed

    header = f"// Generated by tcc {__version__} from {name}. DO NOT EDIT.\n"
    write_if_changed(path, header + environment().get_template(name).render())


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
                   "config.json")


def _tokenizer_files(model, opts: CompileOptions) -> dict[str, str]:
    """The tokenizer files to copy into a language model's artifact: from --tokenizer (a tokenizer.json
    or its directory), else from beside the ONNX file. None found: no tokenizer (ids only)."""
    from .frontend.side_files import MAX_BYTES, check_file, side_file

    if opts.tokenizer:
        path = os.path.abspath(opts.tokenizer)
        if os.path.isdir(path):
            folder, found = path, {}
        elif os.path.lexists(path):
            check_file(path, MAX_BYTES["tokenizer.json"], f"--tokenizer {opts.tokenizer}")  # regular, bounded
            folder = os.path.dirname(path)
            found = {"tokenizer.json": path}
        else:
            raise TccError(f"--tokenizer {opts.tokenizer}: no such file or directory")
        if "tokenizer.json" not in found and side_file(folder, "tokenizer.json") is None:
            raise TccError(f"--tokenizer {opts.tokenizer}: no tokenizer.json there")
    elif isinstance(model, str):
        folder, found = os.path.dirname(os.path.abspath(model)), {}
    else:
        return {}
    for name in TOKENIZER_FILES:
        # side_file: only from inside the folder (no symlinks out of it), regular files of bounded size
        p = side_file(folder, name) if name not in found else None
        if p is not None:
            found[name] = p
    return found if "tokenizer.json" in found else {}


def _llm_texts(manifest: dict, files: dict, opts: CompileOptions) -> dict[str, str]:
    """chat.json for a language model with a tokenizer (the chat template cut into turn segments), and
    tokenizer.tcc and chat.tcc, what the standalone chat binary reads (runtime/chat_files.py)."""
    from .runtime.chat_files import write_native_chat_files
    from .runtime.tokenizer import Tokenizer, chat_config

    llm = manifest["llm"]
    if "tokenizer.json" not in files or "vocab" not in llm:
        return {}
    tj = files["tokenizer.json"]
    cj = files.get("tokenizer_config.json")
    tok = Tokenizer.from_files(tj, cj)
    if tok.vocab_size > llm["vocab"]:
        raise TccError(f"{tj}: the tokenizer has {tok.vocab_size} tokens, more than the model's vocabulary "
                       f"of {llm['vocab']}")
    cc = chat_config(tok, opts.chat_template, llm["capacity"])
    llm["chat_config"] = cc
    llm["eos_token_ids"] = cc["eos_token_ids"]
    llm["tokenizer"] = "tokenizer.json"
    texts = {"chat.json": json.dumps(cc, indent=2) + "\n"}
    write_native_chat_files(manifest, files, texts)
    return texts


def progress_printer(enabled: bool = True) -> Callable | None:
    if not enabled:
        return None
    start = time.perf_counter()

    def show(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.2f}s] {msg}", file=sys.stderr, flush=True)
    return show
