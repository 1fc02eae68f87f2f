"""`tcc compile`: ONNX -> IR -> passes -> generated C++ -> CMake -> an artifact directory.

The artifact (`<out>/`) holds `libmodel.so`, the standalone `run` binary, `weights.bin` (mmapped at
load) and `manifest.json`. It is assembled in a temporary directory and renamed into place, so an
existing artifact is never left half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from . import __version__, flags
from .errors import TccError
from .ir.core import Graph

DEFAULT_MAX_DIM = 256
QMS = ("fp32", "w8a8", "w4a32", "w4a16", "w4a8")
SUPPORTED_QMS = {"x86": ("fp32",)}


@dataclass
class CompileOptions:
    target: str = "x86"
    qm: str = "fp32"
    dump_ir: str | None = None
    max_dims: dict[str, int] = field(default_factory=dict)  # upper bounds of dynamic dims
    dims: dict[str, int] = field(default_factory=dict)  # dims fixed to a value
    pipeline: str = "default"
    print_after: tuple[str, ...] = ()
    disable_passes: tuple[str, ...] = ()
    kernel_variant: str | None = None
    build_dir: str | None = None


def _say(progress: Callable | None, msg: str) -> None:
    if progress:
        progress(msg)


def symbol_bounds(graph: Graph, opts: CompileOptions) -> dict[str, int]:
    symbols = sorted({s for v in graph.inputs for s in v.type.symbols})
    unknown = sorted(set(opts.max_dims) - set(symbols) - {"*"})
    if unknown:
        raise TccError(f"--max-dim names unknown dim(s) {', '.join(unknown)}; the model's dynamic dims are "
                       f"{', '.join(symbols) or 'none'}")
    default = opts.max_dims.get("*", DEFAULT_MAX_DIM)
    return {s: int(opts.max_dims.get(s, default)) for s in symbols}


def check_target(opts: CompileOptions):
    from .backends import get_backend

    if opts.qm not in QMS:
        raise TccError(f"unknown --qm {opts.qm!r}; known: {', '.join(QMS)}")
    backend = get_backend(opts.target)
    can = SUPPORTED_QMS.get(opts.target, ())
    if opts.qm not in can:
        raise TccError(f"target {opts.target} cannot run --qm {opts.qm}; it supports: {', '.join(can)}")
    return backend


def optimize(model, opts: CompileOptions, progress: Callable | None = None):
    """Import and run the pipeline; returns (graph, ctx)."""
    from .frontend.onnx_import import import_onnx
    from .passes.context import PassContext
    from .passes.runner import run_pipeline

    backend = check_target(opts)
    _say(progress, "importing ONNX")
    graph = import_onnx(model, dims=opts.dims or None)
    # Public output names, kept whatever the passes do to the values behind them.
    graph.meta["output_names"] = [v.name for v in graph.outputs]
    ctx = PassContext(target=backend.target, qm=opts.qm, symbol_bounds=symbol_bounds(graph, opts))
    run_pipeline(graph, opts.pipeline, ctx, dump_dir=opts.dump_ir, print_after=opts.print_after,
                 disable=opts.disable_passes, progress=lambda name: _say(progress, f"pass {name}"))
    return graph, ctx, backend


def compile_model(model: str, out_dir: str, options: CompileOptions | None = None, progress: Callable | None = None,
                  **kwargs) -> dict:
    """Compile an ONNX model into `out_dir`; returns the manifest. kwargs override CompileOptions fields."""
    from .codegen.cmake import build_library
    from .codegen.program import generate, write_sources

    opts = options or CompileOptions()
    for k, v in kwargs.items():
        if not hasattr(opts, k):
            raise TypeError(f"unknown compile option {k!r}")
        setattr(opts, k, v)
    t0 = time.perf_counter()
    graph, ctx, backend = optimize(model, opts, progress)
    plan = ctx.stats.get("plan-memory")
    if plan is None:
        raise TccError(f"pipeline {opts.pipeline!r} does not plan memory; it cannot be compiled")
    _say(progress, "generating code")
    program = generate(graph, plan, backend, ctx.symbol_bounds, variant=opts.kernel_variant)
    build_dir = opts.build_dir or _default_build_dir(out_dir)
    sources = write_sources(program, os.path.join(build_dir, "src"))
    run_cpp = os.path.join(build_dir, "src", "run_main.cpp")
    _write_template("common/run_main.cpp.j2", run_cpp)
    _say(progress, f"building with CMake ({len(program.kernels)} kernels)")
    lib = build_library(sources, build_dir, backend.target, "model", extra_executables={"run": [run_cpp]},
                        jobs=flags.get("build-jobs"))
    manifest = _manifest(model, graph, ctx, opts, program, time.perf_counter() - t0)
    keep_src = os.path.join(build_dir, "src") if flags.get("keep-build") else None
    _assemble(out_dir, lib, os.path.join(build_dir, "run"), program.weights, manifest, keep_src)
    _say(progress, f"wrote {out_dir}")
    return manifest


def _default_build_dir(out_dir: str) -> str:
    key = hashlib.sha256(os.path.abspath(out_dir).encode()).hexdigest()[:16]
    return os.path.join(flags.get("cache-dir"), "build", key)


def _write_template(name: str, path: str) -> None:
    from .codegen.kernels import environment, write_if_changed

    header = f"// Generated by tcc {__version__} from {name}. DO NOT EDIT.\n"
    write_if_changed(path, header + environment().get_template(name).render())


def _io(v, name: str | None = None) -> dict:
    return {"name": name or v.name, "dtype": str(v.dtype),
            "shape": [str(d) if not isinstance(d, int) else d for d in v.shape]}


def _manifest(model, graph: Graph, ctx, opts: CompileOptions, program, seconds: float) -> dict:
    from .codegen.program import output_names

    plan = ctx.stats["plan-memory"]
    return {
        "format": "tcc-artifact-1",
        "tcc_version": __version__,
        "source": os.path.abspath(model) if isinstance(model, str) else "<in-memory model>",
        "target": opts.target,
        "qm": opts.qm,
        "inputs": [_io(v) for v in graph.inputs],
        "outputs": [_io(v, name) for v, name in zip(graph.outputs, output_names(graph))],
        "symbols": ctx.symbol_bounds,
        "library": "libmodel.so",
        "binaries": {"run": "run"},
        "weights": {"file": "weights.bin", "bytes": len(program.weights),
                    "sha256": hashlib.sha256(program.weights).hexdigest()},
        "memory": {"arena_bytes": plan.arena_bytes, "intermediates_bytes": plan.total_bytes,
                   "lower_bound_bytes": plan.lower_bound},
        "kernels": [s.name for s in program.kernels],
        "ops": graph.ops(),
        "passes": [[name, round(dt, 6)] for name, dt in ctx.timings],
        "compile_seconds": round(seconds, 3),
    }


def _assemble(out_dir: str, lib: str, run_bin: str, weights: bytes, manifest: dict,
              src_dir: str | None = None) -> None:
    """Write the artifact into a temp dir beside `out_dir`, then swap it in."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TccError(f"output path {out_dir} exists and is not a directory")
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        shutil.copy2(lib, os.path.join(tmp, "libmodel.so"))
        shutil.copy2(run_bin, os.path.join(tmp, "run"))
        with open(os.path.join(tmp, "weights.bin"), "wb") as f:
            f.write(weights)
        if src_dir:
            shutil.copytree(src_dir, os.path.join(tmp, "src"))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        old = f"{out_dir}.old-{os.getpid()}"
        if os.path.exists(out_dir):
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def progress_printer(enabled: bool = True) -> Callable | None:
    if not enabled:
        return None
    start = time.perf_counter()

    def show(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.2f}s] {msg}", file=sys.stderr, flush=True)
    return show
