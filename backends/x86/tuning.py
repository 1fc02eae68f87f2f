"""`tcc compile --tune` on x86: measure the free parameters of the Linear kernels on the model's shapes.

What is tuned (`SPACE`): each family's template constants that do not change the packed weight layout
or the register budget, so any value is correct and only speed differs:
- qlinear_w4a8 / qlinear_w8a8 / qlinear_w4a32 `all`: PREFETCH_BYTES (how far ahead the decode GEMV
  prefetches its weight stream), GEMM_MC (rows per prefill task: the activation block kept in L2),
  GEMV_MAX_M (the row count up to which the GEMV path beats the GEMM path) and, for w4a32, W32_KC (the
  K block dequantized into L1) and, for w4a8, MR512 (rows of the AVX-512 GEMM register tile).
- gemm f32 `avx2`: GEMV_KU (K unroll of the decode GEMV), GEMV_PF (its prefetch distance), MC, KC and PB
  (the prefill blocking).

How (`measure_problem`): for each distinct Linear problem (family, N, K, group, the row counts it runs
at), one knob at a time is varied around the defaults (the knobs act on separate code paths: decode
knobs are timed at M = 1, prefill knobs at the prefill rows), every candidate of a knob is timed in
interleaved rounds (so that a noisy neighbour slows all of them alike) and the median wins if it beats
the default by more than NOISE. The combination is then timed against the default kernel at every row
count the model runs, in one more interleaved set; it is kept only where it is not slower. Decode
operands rotate through copies of the weights larger than the last-level cache, so the GEMV streams
from memory as it does in a model.

Results are cached per host, thread count, problem and kernel sources (codegen/tuning.py), so a
recompile of the same model, or of another model with the same layer shapes, measures nothing.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from ...ir.dims import product, upper_bound


@dataclass(frozen=True)
class Knob:
    key: str  # the template context key (backends/x86/kernels_quant.py, kernels_linalg.py)
    candidates: tuple[int, ...]
    phase: str  # "decode": timed at M = 1; "prefill": at the prefill rows; "crossover": GEMV vs GEMM rows


_PREFETCH = Knob("PREFETCH_BYTES", (0, 512, 1024, 2048, 4096), "decode")
_QMC = Knob("GEMM_MC", (32, 48, 64, 96, 128, 192), "prefill")
_CROSSOVER = Knob("GEMV_MAX_M", (1, 2, 3, 4, 5, 6), "crossover")
SPACE: dict[str, tuple[Knob, ...]] = {
    # MR512: rows of the AVX-512 GEMM register tile (MR512 x 4 accumulators + 4 weight vectors + a broadcast in
    # 32 zmm).
    "qlinear_w4a8": (_PREFETCH, _QMC, Knob("MR512", (4, 5, 6), "prefill"), _CROSSOVER),
    "qlinear_w8a8": (_PREFETCH, _QMC, _CROSSOVER),
    "qlinear_w4a32": (_PREFETCH, _QMC, Knob("W32_KC", (128, 256, 512), "prefill"), _CROSSOVER),
    # MC candidates are multiples of the 6-row register tile; GEMV_KU keeps 2 * KU accumulators in 16 ymm.
    "gemm": (Knob("GEMV_KU", (2, 4, 6), "decode"), Knob("GEMV_PF", (0, 1024, 2048, 4096), "decode"),
             Knob("MC", (48, 96, 144, 192, 288), "prefill"),
             Knob("KC", (128, 256, 384, 512), "prefill"), Knob("PB", (8, 16, 32, 64), "prefill")),
}
# The kernel each family's problems are tuned for: select(family, **KERNEL_PARAMS[family]), which must be
# the TUNED_VARIANTS one (a model compiled with --kernel-variant naive has nothing to tune).
KERNEL_PARAMS = {"gemm": {"dtype": "f32"}}
TUNED_VARIANTS = {"qlinear_w4a8": "all", "qlinear_w8a8": "all", "qlinear_w4a32": "all", "gemm": "avx2"}
OPERANDS = {"qlinear_w4a8": "w4a8", "qlinear_w8a8": "w8a8", "qlinear_w4a32": "w4a32", "gemm": "f32"}

# A candidate replaces the default only when its median time is this much lower: shared machines
# drift by a few percent between rounds, and a wrong "win" inside the noise costs a rebuild for nothing.
NOISE = 0.03
# Decode operands: copies of the weights until this many bytes, beyond a server's last-level cache.
STREAM_BYTES = 256 << 20
# Seconds of timed calls per candidate set (split over the interleaved rounds).
BUDGET_S = 0.6
ROUNDS = 5


@dataclass(frozen=True)
class Problem:
    family: str
    n: int
    k: int
    group: int  # int4 group size; 0 for per-channel / f32 weights
    rows: tuple[int, ...]  # the M values the model runs this Linear at (1 for decode, the prefill bound)

    @property
    def key(self) -> str:
        g = f" g{self.group}" if self.group else ""
        return f"{self.family} {self.k}->{self.n}{g} m={','.join(map(str, self.rows))}"


def linear_problem(node, bounds: dict[str, int]) -> Problem | None:
    """The tunable kernel problem of a lowered node (as codegen/lower.py lowers it), or None."""
    if node.op == "QLinearI8":
        bits, per_tensor = node.attrs["bits"], node.attrs["per_tensor"]
        family = "qlinear_w4a8" if (bits, per_tensor) == (4, False) else "qlinear_w8a8" if (bits, per_tensor) == (8, False) else None
        n, k = node.inputs[3].shape
        group = node.attrs["group_size"] if bits == 4 else 0
    elif node.op == "QLinear" and node.attrs["act"] == "f32" and node.attrs["bits"] == 4:
        family, (n, k), group = "qlinear_w4a32", node.inputs[1].shape, node.attrs["group_size"]
    elif node.op == "Linear" and node.inputs[1].const is not None:
        family, (k, n), group = "gemm", node.inputs[1].shape, 0
    else:
        return None
    if family is None or not isinstance(n, int) or not isinstance(k, int):
        return None
    rows = product(node.inputs[0].shape[:-1])
    most = upper_bound(rows, bounds)
    # A dynamic row count runs at one row (decode) as well as at its bound (prefill).
    return Problem(family, n, k, int(group), (most,) if isinstance(rows, int) else tuple(sorted({1, most})))


def _pool(lib, threads: int):
    return lib.tcc_pool_create(threads) if threads > 1 else None


def _operands(problem: Problem, m: int):
    from ...runtime.kernel_bench import _Problem

    operands = _Problem(OPERANDS[problem.family], m, problem.k, problem.n, problem.group or 32)
    if m <= max(_CROSSOVER.candidates):  # memory bound: stream the weights as a model does
        operands.stream(max(1, min(64, STREAM_BYTES // max(operands.weight_bytes, 1))))
    return operands


def _time_set(lib, specs, operands, pool) -> list[float]:
    """Median seconds per call of each spec, timed in interleaved rounds."""
    from ...runtime.kernel_bench import _fn

    fns = [_fn(lib, s) for s in specs]
    first = []
    for fn in fns:  # warm: pages, caches, pool threads
        t = time.perf_counter()
        operands.call(fn, pool)
        first.append(time.perf_counter() - t)
    per_call = max(statistics.median(first), 1e-6)
    calls = max(1, min(200, int(BUDGET_S / ROUNDS / len(fns) / per_call)))
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            for _ in range(calls):
                operands.call(fn, pool)
            samples[i].append((time.perf_counter() - t) / calls)
    return [statistics.median(s) for s in samples]


def candidate_specs(base, problem: Problem) -> list:
    """Every kernel the one-knob-at-a-time search times for `problem`."""
    specs = [base]
    for knob in _knobs(problem):
        values = (1, max(knob.candidates)) if knob.phase == "crossover" else knob.candidates
        specs += [base.tuned(**{knob.key: v}) for v in values]
    return list(dict.fromkeys(specs))


def _knobs(problem: Problem) -> list[Knob]:
    decode, prefill = 1 in problem.rows, max(problem.rows) > max(_CROSSOVER.candidates)
    out = []
    for knob in SPACE[problem.family]:
        if (knob.phase == "decode" and decode) or (knob.phase == "prefill" and prefill) or \
                (knob.phase == "crossover" and decode and max(problem.rows) > 1):
            out.append(knob)
    return out


def search(lib, base, problem: Problem, threads: int) -> dict:
    """One-knob-at-a-time search; returns {knob key: chosen value} (defaults left out)."""
    pool = _pool(lib, threads)
    choice: dict = {}
    try:
        for knob in _knobs(problem):
            if knob.phase == "crossover":
                value = _crossover(lib, base, problem, knob, pool)
            else:
                m = 1 if knob.phase == "decode" else max(problem.rows)
                specs = [base.tuned(**{knob.key: v}) for v in knob.candidates]
                times = _time_set(lib, specs, _operands(problem, m), pool)
                default = times[specs.index(base)] if base in specs else None
                best = min(range(len(specs)), key=times.__getitem__)
                beats = default is None or times[best] < default * (1 - NOISE)
                value = knob.candidates[best] if beats else None
            if value is not None:
                choice[knob.key] = value
    finally:
        if pool:
            lib.tcc_pool_destroy(pool)
    defaults = base.context()
    return {k: v for k, v in choice.items() if defaults[k] != v}


def _crossover(lib, base, problem: Problem, knob: Knob, pool) -> int:
    """The largest row count up to which the GEMV path is not slower than the GEMM path."""
    gemv, gemm = base.tuned(**{knob.key: max(knob.candidates)}), base.tuned(**{knob.key: 1})
    best = 1
    for m in range(2, min(max(knob.candidates), max(problem.rows)) + 1):
        t_gemv, t_gemm = _time_set(lib, [gemv, gemm], _operands(problem, m), pool)
        if t_gemv > t_gemm:
            break
        best = m
    return best


def compare(lib, base, tuned, problem: Problem, threads: int) -> dict:
    """Default vs tuned kernel at every row count the model runs: {m: (default ms, tuned ms)}."""
    pool = _pool(lib, threads)
    try:
        out = {}
        for m in problem.rows:
            t_default, t_tuned = _time_set(lib, [base, tuned], _operands(problem, m), pool)
            out[m] = (round(t_default * 1e3, 4), round(t_tuned * 1e3, 4))
        return out
    finally:
        if pool:
            lib.tcc_pool_destroy(pool)


def build_dir() -> str:
    from ... import flags

    return os.path.join(flags.get("cache-dir"), "tune-build")


def source_files() -> list[str]:
    """The files whose change invalidates cached tuning results: the x86 templates and kernel modules, and
    the target-neutral family modules whose contexts they extend."""
    from ...codegen import families
    from ...codegen.kernels import TEMPLATE_DIR

    files = []
    for module in (__file__, families.__file__):
        here = os.path.dirname(os.path.abspath(module))
        files += [os.path.join(here, f) for f in sorted(os.listdir(here)) if f.endswith(".py")]
    for sub in ("x86", "common"):
        d = os.path.join(TEMPLATE_DIR, sub)
        files += [os.path.join(d, f) for f in sorted(os.listdir(d))]
    return files


def corner_specs() -> list:
    """Per tuned family, the kernel with every knob at its smallest and at its largest candidate: the
    kernel tests check these against the numpy references, so any value the tuner may pick is correct."""
    from .kernels import select

    out = []
    for family, knobs in SPACE.items():
        base = select(family, variant=TUNED_VARIANTS[family], **KERNEL_PARAMS.get(family, {}))
        for pick in (min, max):
            out.append(base.tuned(**{k.key: pick(k.candidates) for k in knobs}))
    return out
