"""Kernel auto-tuning (`tcc compile --tune`): choose the kernel templates' free parameters for the model's
shapes on this machine, cache the choices, and hand them to code generation.

The backend measures (`backends/<target>/tuning.py`: its problems, search space and timing harness);
this module groups the graph's nodes into distinct problems, looks each up in the tuning cache
(`<cache-dir>/tuning.json`, keyed by host CPU, thread count, kernel sources and problem), measures the
misses with two library builds (every candidate, then the chosen combinations against the defaults),
and returns, per node, the tuned kernel spec codegen emits instead of the default one. A problem whose
chosen combination is not faster than the default keeps the default kernel.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import TccError


@dataclass
class Tuning:
    """What --tune decided: per node name, (default kernel name, tuned values); and the report."""

    per_node: dict[str, tuple[str, dict]] = field(default_factory=dict)
    problems: list[dict] = field(default_factory=list)
    threads: int = 1
    seconds: float = 0.0

    def apply(self, node_name: str, spec):
        """The spec to emit for a node: the tuned one when this node was tuned for exactly `spec`."""
        entry = self.per_node.get(node_name)
        if entry is None or entry[0] != spec.name or not entry[1]:
            return spec
        return spec.tuned(**entry[1])

    def manifest(self) -> dict:
        return {"threads": self.threads, "seconds": round(self.seconds, 2), "host": host_id()[0],
                "problems": self.problems}


def tuned_count(problems: list[dict]) -> int:
    """How many of a manifest's tuning problems use non-default parameters."""
    return sum(1 for p in problems if p["choice"])


def refusal(backend, target_name: str) -> str | None:
    """Why --tune cannot run for this target on this host (None when it can)."""
    from ..backends import foreign_target

    foreign = foreign_target(target_name)
    if foreign:
        return (f"--tune measures kernels on the machine that runs them, but target {target_name} runs on this "
                f"{platform.machine()} host only under emulation, whose timings say nothing about a real "
                f"{target_name} CPU; compile without --tune (default tile sizes), or with --tune on the "
                f"{target_name} machine itself")
    if getattr(backend, "tuner", None) is None:
        return f"--tune is not implemented for target {target_name} yet (x86 only); compile without --tune"
    return None


def host_id() -> tuple[str, str]:
    """(CPU model name, a digest of the model, flags and core count): tuning results are per machine kind."""
    model, flags_line = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.partition(":")[2].strip()
                elif line.startswith(("flags", "Features")) and not flags_line:
                    flags_line = line.partition(":")[2].strip()
    except OSError:
        pass
    digest = hashlib.sha256(f"{model}|{flags_line}|{os.cpu_count()}".encode()).hexdigest()[:16]
    return model, digest


def _sources_digest(tuner) -> str:
    h = hashlib.sha256()
    for path in tuner.source_files():
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def cache_path() -> str:
    from .. import flags

    return os.path.join(flags.get("cache-dir"), "tuning.json")


def _read_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only costs a re-measurement


def _write_cache(path: str, updates: dict) -> None:
    data = _read_cache(path)  # re-read: another compile may have added entries meanwhile
    data.update(updates)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def tune(graph, bounds: dict[str, int], backend, threads: int, progress: Callable | None = None,
         kernel_variant: str | None = None) -> Tuning:
    """Tune every Linear problem of a lowered graph for `threads` threads on this machine."""
    why = refusal(backend, backend.name)
    if why:
        raise TccError(why)
    tuner = backend.tuner
    t0 = time.perf_counter()
    nodes: dict = {}
    for node in graph.nodes:
        problem = tuner.linear_problem(node, bounds)
        if problem is not None:
            nodes.setdefault(problem, []).append(node.name)
    bases = {}
    for problem in nodes:
        base = backend.select(problem.family, variant=kernel_variant, **tuner.KERNEL_PARAMS.get(problem.family, {}))
        if base is not None and base.variant == tuner.TUNED_VARIANTS.get(problem.family):
            bases[problem] = base
    prefix = f"{host_id()[1]}|t{threads}|{_sources_digest(tuner)}|"
    path = cache_path()
    cache = _read_cache(path)
    results = {p: cache[prefix + p.key] for p in bases if prefix + p.key in cache}
    missing = [p for p in bases if p not in results]
    if missing:
        _say(progress, f"tuning {len(missing)} kernel problem(s) on {threads} thread(s)"
                       f"{f' ({len(results)} cached)' if results else ''}")
        fresh = _measure(tuner, {p: bases[p] for p in missing}, threads, progress)
        _write_cache(path, {prefix + p.key: r for p, r in fresh.items()})
        results.update(fresh)
    out = Tuning(threads=threads)
    for problem, base in bases.items():
        r = results[problem]
        for name in nodes[problem]:
            out.per_node[name] = (base.name, dict(r["choice"]))
        out.problems.append({"problem": problem.key, "nodes": len(nodes[problem]), "default": base.name,
                             "kernel": base.tuned(**r["choice"]).name, "choice": r["choice"], "ms": r["ms"],
                             "cached": problem not in missing, **({"tried": r["tried"]} if "tried" in r else {})})
    out.seconds = time.perf_counter() - t0
    return out


def _measure(tuner, bases: dict, threads: int, progress: Callable | None) -> dict:
    """Search, then confirm: {problem: {"choice": {...}, "ms": {m: [default, tuned]}}}."""
    from ..runtime.kernel_bench import load_kernels

    lib = load_kernels([s for p, b in bases.items() for s in tuner.candidate_specs(b, p)], tuner.build_dir())
    choices = {}
    for i, (problem, base) in enumerate(bases.items()):
        _say(progress, f"tuning {problem.key} [{i + 1}/{len(bases)}]")
        choices[problem] = tuner.search(lib, base, problem, threads)
    tuned = {p: bases[p].tuned(**c) for p, c in choices.items() if c}
    if tuned:
        lib = load_kernels([*bases.values(), *tuned.values()], tuner.build_dir())
    out = {}
    for problem, base in bases.items():
        if problem not in tuned:
            out[problem] = {"choice": {}, "ms": {}}
            continue
        ms = tuner.compare(lib, base, tuned[problem], problem, threads)
        ratios = [t / d for d, t in ms.values() if d > 0]
        keep = sum(ratios) <= len(ratios)  # not slower on average over the row counts the model runs
        out[problem] = {"choice": choices[problem] if keep else {}, "ms": {str(m): list(v) for m, v in ms.items()}}
        if not keep:
            out[problem]["tried"] = choices[problem]
    return out


def _say(progress: Callable | None, msg: str) -> None:
    if progress:
        progress(msg)
