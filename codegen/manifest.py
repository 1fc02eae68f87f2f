"""The artifact's manifest.json, built at the end of a compile from the graph, the pass context and the program:
its interface, weights (with the bytes a decode step reads), memory plan, kernels, pass timings, quantization and
LLM facts. runtime/artifact.py validates and reads it; docs/formats.md describes it."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .. import __version__
from ..ir.core import Graph
from ..runtime.artifact import FORMAT as ARTIFACT_FORMAT

if TYPE_CHECKING:
    from ..driver import CompileOptions


def _io(v, name: str | None = None) -> dict:
    return {"name": name or v.name, "dtype": str(v.dtype),
            "shape": [str(d) if not isinstance(d, int) else d for d in v.shape]}


def build_manifest(model, graph: Graph, ctx, opts: CompileOptions, program, seconds: float, options: dict) -> dict:
    """manifest.json of the artifact `program` makes (runtime/artifact.py reads it); `options` are the compile
    options as the manifest stores them (driver.options_to_dict)."""
    from .cmake import sanitizers
    from .program import output_names

    plan = ctx.stats["plan-memory"]
    manifest = {
        "format": ARTIFACT_FORMAT,
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
                    "decode_bytes": decode_weight_bytes(graph, program.weights_entries),
                    "position_table_bytes": position_table_bytes(graph, program.weights_entries),
                    "sha256": program.weights.sha256},
        "memory": {"arena_bytes": plan.arena_bytes, "intermediates_bytes": plan.total_bytes,
                   "lower_bound_bytes": plan.lower_bound},
        "kernels": [s.name for s in program.kernels],
        "ops": graph.ops(),
        "passes": [[name, round(dt, 6)] for name, dt in ctx.timings],
        "compile_seconds": round(seconds, 3),
        "sanitize": list(sanitizers()),
        "options": options,
    }
    manifest["quantization"] = _quant_manifest(graph, ctx, opts, len(program.weights))
    if getattr(program, "cuda_graph", None) is not None:  # whether decode steps are captured (docs/cuda.md)
        manifest["cuda_graph"] = program.cuda_graph
    llm = graph.meta.get("llm")
    if llm:
        manifest["llm"] = _llm_manifest(llm, graph, ctx, plan)
    return manifest


# Input slots of per-position tables (RoPE cos/sin, [positions, rotary_dim/2]): values derived from the model's
# constants (passes/rope_tables.py), read a row per position.
POSITION_SLOTS = {"KVAttention": (6, 7), "RotaryEmbedding": (1, 2)}
# Input slots through which a node reads only the rows its indices select (embedding and position tables).
GATHERED_SLOTS = {"Gather": (0,), "QGather": (1, 2, 3), **POSITION_SLOTS}


def _read_only_through(graph: Graph, slots: dict) -> set[str]:
    """Names of the constants every use of which is one of `slots`."""
    users = graph.users()
    return {v.name for v in graph.constants.values()
            if users.get(v) and all(slot in slots.get(n.op, ()) for n, slot in users[v])}


def decode_weight_bytes(graph: Graph, entries: list[dict]) -> int:
    """Bytes of weights one decode step reads in full: every stored constant except tables that are only
    gathered from (one row per token). The decode roofline's numerator (runtime/roofline.py)."""
    gathered = _read_only_through(graph, GATHERED_SLOTS)
    return sum(e["bytes"] for e in entries if e["name"] not in gathered)


def position_table_bytes(graph: Graph, entries: list[dict]) -> int:
    """Bytes of weights.bin that are position tables, not parameters (a RoPE cos/sin cache: llama.cpp
    computes these values as it runs); the quality suite compares formats on the bytes of the rest."""
    tables = _read_only_through(graph, POSITION_SLOTS)
    return sum(e["bytes"] for e in entries if e["name"] in tables)


def _quant_manifest(graph: Graph, ctx, opts: CompileOptions, weight_bytes: int) -> dict:
    from ..passes.schemes import get_scheme

    scheme = get_scheme(opts.qm)
    fp32 = int(graph.meta.get("fp32_weight_bytes") or 0)
    out = {"scheme": scheme.name, "summary": scheme.summary, "weight_bytes": weight_bytes,
           "fp32_weight_bytes": fp32, "ratio_to_fp32": round(weight_bytes / fp32, 4) if fp32 else None}
    if scheme.weight_bits is not None:
        q = ctx.stats.get("quantize") or {}
        ran = [m for m in ("awq", "smoothquant", "gptq") if m in ctx.stats]
        gptq = ctx.stats.get("gptq") or {}
        out.update(group_size=(opts.group_size or ctx.target.default_group_size) if scheme.grouped else "per-channel",
                   zero_points=bool(opts.asym), calibration="+".join(ran) or "round-to-nearest",
                   quantized_linears=q.get("linears", 0) + gptq.get("linears", 0), kept_fp32=q.get("kept_fp32", []))
        for m in ran:
            out[m] = ctx.stats[m]
        if "tie-tables" in ctx.stats:  # tables read out of their LM head's weights, stored once
            out["tied_tables"] = ctx.stats["tie-tables"]
        alloc = ctx.stats.get("bit-allocation")
        if alloc:  # per layer weight bits of a 4-bit scheme (passes/bit_allocation.py)
            out["bit_allocation"] = {k: alloc[k] for k in ("criterion", "budget_bits", "bits_per_weight",
                                                             "weight_bytes", "weights", "eight_bit", "eight_bit_act",
                                                             "tied", "layers")}
    return out


def _llm_manifest(llm: dict, graph: Graph, ctx, plan) -> dict:
    out = dict(llm)
    if llm.get("kv_cache") or llm.get("recompute"):
        out.update(vocab=graph.outputs[0].shape[-1], max_prefill=ctx.symbol_bounds[llm["seq"]],
                   max_batch=ctx.symbol_bounds[llm["batch"]], kv_cache_bytes=sum(plan.state_bytes.values()))
    return out
