"""Shared machinery of the calibration passes (awq, smoothquant); this module registers no pass.

Both rescale the input channels of the Linear layers that share one input x:  y = (x / s) @ (s * W),
the same function in exact arithmetic, but the quantized product behaves better. `1/s` must be folded
into whatever produces x, found by structure:
  - x = RMSNorm / LayerNorm(., gamma, beta) with constant [K] parameters: gamma / s, beta / s;
  - x = Mul(a, Linear_up(.)) with Linear_up read only by that Mul (the gated MLP's act(gate) * up):
    Linear_up's output columns (and bias) / s.
Every other consumer of x must be one of the scaled Linear layers (x is not a graph output). Groups
without a fold target are left alone (logged).

Calibration activations come from running the fp32 graph with the reference interpreter on the inputs
the driver prepared (ctx.options["calibration"]: a list of feed dicts); per channel mean |x| and max |x|
over every row, and a fixed random sample of at most MAX_ROWS rows for the error search.

The scale search measures each candidate on at most SEARCH_COLUMNS evenly spaced output columns of a
group (all of them up to that width), each column slice converted and simulated on its own.

After folding, the graph is run on the first calibration input again and must give the same outputs as
before within fp32 rounding (FOLD_RTOL): a fold that changed the function is undone, with a message.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import TccError
from ..frontend.mapped import Spill, release
from ..ir.core import Graph, Node, Value
from ..ir.quant_arith import dequantize, dequantize_activations, fake_quantize_int4, quantize_activations, quantize_int4, quantize_int8, round_f16
from ..ir.dtypes import DType
from .quantize import fp16_matmul, quantizable, widened
from .schemes import Scheme, act_group_for

MAX_ROWS = 512  # rows kept per activation for the error search (a random sample of all calibration rows)
GRID = [i / 20 for i in range(20)]  # alpha in [0, 1): alpha 0 (s = 1) keeps the plain quantization
# Folding is exact in real arithmetic; in fp32 the outputs move by a few ulps of the largest partial sums.
FOLD_RTOL = 1e-3
# A rescaled fp16/bf16 weight is stored in its own precision again (Folds.set_weight): each weight then moves by
# up to half an ulp (2^-11 relative for f16, 2^-8 for bf16), which through a deep stack moves the outputs by more
# than fp32 rounding. A wrong fold (a scale on the wrong axis, a missing 1/s) moves them by O(1) of their scale.
FOLD_RTOL_HALF = {DType.f16: 2e-2, DType.bf16: 1e-1}


@dataclass
class Group:
    x: Value
    linears: list[Node]
    fold: tuple  # ("norm", node) or ("linear", node)
    stats: dict = field(default_factory=dict)  # mean_abs [K], max_abs [K], rows [R, K]; xtx [K, K], n (collect)


def rescalable(node: Node) -> bool:
    """A linear layer the rescaling passes can scale: an f32 Linear, or a half-precision export's MatMul
    reading f32 activations and a weight widened by a Cast (an fp16/bf16 weight of over WIDEN_EAGER
    elements stays in its dtype behind the Cast: frontend/onnx_import.py)."""
    return quantizable(node) or (node.op == "MatMul" and node.inputs[0].dtype == DType.f32 and fp16_matmul(node))


def weight_value(node: Node) -> Value:
    """The constant holding a rescalable node's W [K, N] (behind the widening Cast for a half weight)."""
    return widened(node.inputs[1]) or node.inputs[1]


def weight_f32(node: Node) -> np.ndarray:
    return np.asarray(weight_value(node).const, np.float32)


def find_groups(graph: Graph, ctx, pass_name: str) -> list[Group]:
    users = graph.users()
    outputs = {id(v) for v in graph.outputs}
    seen, groups = set(), []
    for node in graph.nodes:
        if not rescalable(node) or id(node.inputs[0]) in seen:
            continue
        x = node.inputs[0]
        seen.add(id(x))
        readers = users.get(x, [])
        lins = [n for n, slot in readers if slot == 0 and rescalable(n)]
        others = [n for n, slot in readers if not (slot == 0 and rescalable(n))]
        if others or id(x) in outputs:
            what = others[0].op if others else "the graph output"
            ctx.refuse(pass_name, node, f"input %{x.name} also feeds {what}; not rescaled")
            continue
        fold = _fold_target(x, users, outputs)
        if fold is None:
            ctx.refuse(pass_name, node, f"no norm or linear to fold the scales of %{x.name} into")
            continue
        groups.append(Group(x, lins, fold))
    return groups


def _fold_target(x: Value, users: dict, outputs: set) -> tuple | None:
    p = x.producer
    k = x.shape[-1]
    if p is None:
        return None
    if p.op in ("RMSNorm", "LayerNorm"):
        params = [v for v in p.inputs[1:] if v is not None]
        if params and all(v.is_const and v.const.dtype == np.float32 and v.const.shape == (k,) for v in params):
            return ("norm", p)
        return None
    if p.op == "Mul":
        for v in p.inputs:
            up = v.producer
            if (up is not None and rescalable(up) and up.inputs[1].shape[1] == k and id(v) not in outputs
                    and len(users.get(v, [])) == 1 and x.shape == v.shape):
                return ("linear", up)
    return None


# -- calibration data -----------------------------------------------------------------------------------

def collect(graph: Graph, groups: list[Group], feeds: list[dict], progress: str, xtx: bool = False) -> None:
    """Fill each group's stats from interpreter runs on the calibration feeds. xtx: also X^T X [K, K] over
    every calibration row, summed in float64 ("xtx", with the row count "n": GPTQ's Hessian)."""
    from ..ir.interpreter import run_graph

    want = {id(g.x): g for g in groups}
    acc: dict[int, dict] = {}
    rng = np.random.default_rng(0)

    def observe(node: Node, args: list) -> None:
        for v, a in zip(node.inputs, args):
            g = want.get(id(v)) if v is not None else None
            if g is None or id(node) != id(g.linears[0]):
                continue
            rows = np.asarray(a, np.float32).reshape(-1, a.shape[-1])
            st = acc.setdefault(id(v), {"sum": np.zeros(rows.shape[1]), "max": np.zeros(rows.shape[1], np.float32),
                                        "n": 0, "rows": []})
            st["sum"] += np.abs(rows).sum(axis=0, dtype=np.float64)
            st["max"] = np.maximum(st["max"], np.abs(rows).max(axis=0))
            st["n"] += rows.shape[0]
            if xtx:
                r64 = rows.astype(np.float64)
                if "xtx" in st:
                    st["xtx"] += r64.T @ r64
                else:
                    st["xtx"] = r64.T @ r64
            take = min(rows.shape[0], MAX_ROWS)
            st["rows"].append(rows[rng.choice(rows.shape[0], take, replace=False)])

    for f in _progress(feeds, progress):
        run_graph(graph, f, check_types=False, observe=observe)
    for key, g in want.items():
        st = acc.get(key)
        if st is None:
            continue
        rows = np.concatenate(st["rows"])
        if rows.shape[0] > MAX_ROWS:
            rows = rows[rng.choice(rows.shape[0], MAX_ROWS, replace=False)]
        g.stats = {"mean_abs": (st["sum"] / max(st["n"], 1)).astype(np.float32), "max_abs": st["max"],
                   "rows": rows}
        if xtx:
            g.stats.update(xtx=st["xtx"], n=st["n"])


def _progress(items, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; keep working without a bar if it is missing
        return items
    return tqdm(items, desc=desc, unit="sample", leave=False, disable=None)


# -- the quantized product, simulated ---------------------------------------------------------------------

@dataclass(frozen=True)
class Quantizer:
    """Simulates QLinear of one scheme on calibration rows (ir/ops/quant.py arithmetic)."""
    scheme: Scheme
    group: int
    asym: bool
    # int4: quantize_int4's scale search, as the quantize pass rounds (bit-allocation's one measurement per
    # layer); off for AWQ's searches, which simulate each weight tens of times (7x the cost).
    search: bool = False

    def weight(self, w: np.ndarray) -> np.ndarray:
        """Dequantized W [K, N] in f32 (exact for int4; int8 codes times their f32 scale rounded once)."""
        if self.scheme.weight_bits == 4:
            if self.search:
                q, s, z = quantize_int4(w, self.group, symmetric=not self.asym)
                wd = dequantize(q, s, z, 4, self.group).T.astype(np.float32)
            else:
                wd = fake_quantize_int4(w, self.group, symmetric=not self.asym)
            return round_f16(wd).astype(np.float32) if self.scheme.act == "f16" else wd
        q, s = quantize_int8(w)
        return q.T.astype(np.float32) * s[:, 0]

    def acts(self, x: np.ndarray) -> np.ndarray:
        act = self.scheme.act
        if act in ("f32", "f16"):
            return x.astype(np.float64) if act == "f32" else round_f16(x)
        gs = (act_group_for(self.scheme, x.shape[-1]) or self.group) if act == "i8_group" else None
        xq, xs, _ = quantize_activations(x, gs)
        return dequantize_activations(xq, xs, x.shape[-1], gs)

    def error(self, x: np.ndarray, w: "GroupWeights", s: np.ndarray, ref: np.ndarray) -> float:
        """Mean squared error of the quantized (x / s) @ (s * W) against the fp32 product `ref`, summed over
        column slices of W (each output column is quantized on its own, so the slices add up exactly)."""
        xq = self.acts((x / s).astype(np.float32)).astype(np.float32)  # f32 products: the search ranks
        total = 0.0  # candidates whose errors differ by far more than f32 rounding of sums over K
        for c0, wc in w.columns():
            y = xq @ self.weight((wc * s[:, None]).astype(np.float32))
            total += float(np.sum((y - ref[:, c0:c0 + wc.shape[1]]) ** 2, dtype=np.float64))
        return total / ref.size if ref.size else 0.0


def search(group: Group, w: "GroupWeights", quant: Quantizer, candidates) -> tuple[np.ndarray, float, float, float]:
    """The scale vector among `candidates` (alpha -> s) with the least output error on the sample rows:
    (s, alpha, error, error without scaling)."""
    x = group.stats["rows"]
    ref = w.product(x)
    ones = np.ones(w.rows, np.float32)
    base = quant.error(x, w, ones, ref)
    best = (ones, 0.0, base)
    for alpha in GRID[1:]:
        s = candidates(alpha)
        if s is None or not np.all(np.isfinite(s)) or np.any(s <= 0):
            continue
        err = quant.error(x, w, s, ref)
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1], best[2], base


# Weights simulated at once (whole output columns). A search or clip over a whole 32000 x 4096 lm_head in f32
# and float64 took 3.4 GiB; slices of 2048 columns of a 4096-row weight keep the working set near 200 MB.
SLICE_ELEMENTS = 2048 * 4096


def slice_step(rows: int) -> int:
    """Output columns per slice of a weight with `rows` input channels."""
    return max(1, SLICE_ELEMENTS // max(rows, 1))


# Output columns the scale search measures its error on, evenly spaced over the group. Each candidate scale is
# tried by quantizing the weights it is measured on, 20 times per group: on every column, a LLaMA-2-7B took
# over an hour of search on a quiet core (185M weights a layer, 131M in the lm_head). The error of 2048
# columns is a mean over 2048 x rows products, so the estimate ranks the candidates as the whole does; groups
# narrower than this (every layer of models up to 2048 wide outputs) are measured on every column.
SEARCH_COLUMNS = 2048


class GroupWeights:
    """The weights [K, N_i] of a group's linear layers side by side ([K, sum N_i]), read in column slices
    converted to f32 one at a time: a half-precision or mapped weight is never copied whole."""

    def __init__(self, linears: list[Node] | None = None, parts: list | None = None):
        self.parts = parts if parts is not None else [weight_value(n).const for n in linears]
        self.rows = int(self.parts[0].shape[0])
        self.cols = sum(int(p.shape[1]) for p in self.parts)
        self.step = slice_step(self.rows)

    def sampled(self, columns: int) -> "GroupWeights":
        """At most `columns` of the columns, evenly spaced, copied once in f32 (self if it has no more)."""
        if self.cols <= columns:
            return self
        pick = np.unique(np.linspace(0, self.cols - 1, columns).round().astype(np.int64))
        parts, base = [], 0
        for part in self.parts:
            mine = pick[(pick >= base) & (pick < base + part.shape[1])] - base
            if mine.size:
                parts.append(np.asarray(part[:, mine], np.float32))
            base += part.shape[1]
        return GroupWeights(parts=parts)

    def columns(self):
        """(first column, f32 slice [K, c]) over every column of the group."""
        base = 0
        for part in self.parts:
            for c0 in range(0, part.shape[1], self.step):
                yield base + c0, np.asarray(part[:, c0:c0 + self.step], np.float32)
            base += part.shape[1]

    def product(self, x: np.ndarray) -> np.ndarray:
        """x @ W in float64 ([R, sum N_i])."""
        x64 = x.astype(np.float64)
        out = np.empty((x.shape[0], self.cols))
        for c0, wc in self.columns():
            out[:, c0:c0 + wc.shape[1]] = x64 @ wc.astype(np.float64)
        return out

    def row_abs_max(self) -> np.ndarray:
        """max |W| over every output column, per input channel ([K] f32)."""
        m = np.zeros(self.rows, np.float32)
        for _, wc in self.columns():
            np.maximum(m, np.abs(wc).max(axis=1), out=m)
        return m


# -- folding ---------------------------------------------------------------------------------------------

SPILL_BYTES = 1 << 20  # rescaled constants from this size on are spilled: the weights, not the norm vectors


class Folds:
    """The rescalings applied to the graph, undoable (each replaced an input of a node by a new constant)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.undo: list[tuple[Node, int, Value]] = []
        self.casts: list[Node] = []  # widening Casts made for rescaled half weights (removed on rollback)
        self.spill = None

    def _store(self, data: np.ndarray) -> np.ndarray:
        if data.nbytes >= SPILL_BYTES:  # a rescaled weight goes to a mapped file, not the heap (frontend/mapped.py)
            self.spill = self.spill or Spill()
            data = self.spill.put(data)
        return data

    def _set(self, node: Node, slot: int, data: np.ndarray, hint: str) -> None:
        old = node.inputs[slot]
        node.inputs[slot] = self.graph.add_const(self._store(np.ascontiguousarray(data, np.float32)), hint)
        self.undo.append((node, slot, old))

    def set_weight(self, lin: Node, w: np.ndarray, hint: str) -> None:
        """W of `lin` := w (f32). A half weight stays half (the export's precision, half the spill) behind a
        new widening Cast, so the quantize pass still reads it as it reads the imported ones."""
        src = weight_value(lin)
        if src.dtype == DType.f32:
            self._set(lin, 1, w, hint)
            return
        half = self.graph.add_const(self._store(np.ascontiguousarray(w.astype(src.dtype.np))), hint)
        cast = self.graph.add_node("Cast", [half], {"to": "f32"}, before=lin)
        self.casts.append(cast)
        self.undo.append((lin, 1, lin.inputs[1]))
        lin.inputs[1] = cast.output

    def apply(self, group: Group, s: np.ndarray) -> None:
        s = s.astype(np.float32)
        for lin in group.linears:  # W rows (input channels) * s
            self.set_weight(lin, weight_f32(lin) * s[:, None], weight_value(lin).name + ".smoothed")
        kind, p = group.fold
        if kind == "norm":
            for slot in (1, 2):
                v = p.input(slot)
                if v is not None:
                    self._set(p, slot, v.const / s, v.name + ".smoothed")
        else:  # Linear_up: output columns / s
            self.set_weight(p, weight_f32(p) / s[None, :], weight_value(p).name + ".smoothed")
            b = p.input(2)
            if b is not None:
                self._set(p, 2, b.const / s, b.name + ".smoothed")

    def rtol(self) -> float:
        """How far the folds may move the outputs: fp32 rounding, or the rounding of the half weights stored."""
        halves = [FOLD_RTOL_HALF[c.inputs[0].dtype] for c in self.casts]
        return max([FOLD_RTOL, *halves])

    def rollback(self) -> None:
        for node, slot, old in reversed(self.undo):
            node.inputs[slot] = old
        self.undo.clear()
        self.graph.remove_nodes(self.casts)
        self.casts.clear()
        self.graph.remove_unused_constants()


def outputs_match(graph: Graph, feeds: dict, before: dict, rtol: float = FOLD_RTOL) -> str | None:
    """None if the graph still computes `before` on `feeds` (within rtol of each output's scale), else a
    description of the largest difference."""
    from ..ir.interpreter import run_graph

    after = run_graph(graph, feeds, check_types=False)
    for name, want in before.items():
        got = after[name]
        if got.dtype.kind != "f":
            if not np.array_equal(got, want):
                return f"output {name} changed"
            continue
        scale = float(np.abs(want).max()) if want.size else 0.0
        diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        if not diff <= rtol * max(scale, 1e-30):
            return f"output {name} moved by {diff:.3g} (scale {scale:.3g})"
    return None


def calibration_feeds(graph: Graph, ctx, pass_name: str) -> list[dict] | None:
    """ctx.options["calibration"]: a list of input dicts, or an object with feeds(graph, bounds) (the
    driver's frontend.calibration.Calibration, which needs the optimized graph's inputs)."""
    src = ctx.options.get("calibration")
    if src is None:
        return None
    feeds = src.feeds(graph, ctx.symbol_bounds) if hasattr(src, "feeds") else src
    if not isinstance(feeds, list) or not all(isinstance(f, dict) for f in feeds):
        raise TccError(f"{pass_name}: calibration data must be a list of input dicts")
    return feeds or None


def rescale_groups(graph: Graph, ctx, pass_name: str, quant: Quantizer, feeds: list[dict], candidates_for,
                   label: str) -> tuple[list[Group], int, float, dict]:
    """The shared body of awq and smoothquant: collect calibration statistics, search each group's scales
    among `candidates_for(group, w)` (alpha -> s), fold the winners, and undo every fold if the fp32
    outputs moved. Kept folds leave each group's sample rows divided by s (what the rescaled layers read).
    Returns (groups, number rescaled, summed error after / before the search, timings in seconds)."""
    from ..ir.interpreter import run_graph

    groups = find_groups(graph, ctx, pass_name)
    start = time.perf_counter()
    before = run_graph(graph, feeds[0], check_types=False)
    collect(graph, groups, feeds, f"{label} calibration")
    calibrated = time.perf_counter()
    folds = Folds(graph)
    plain_rows = {id(g): g.stats.get("rows") for g in groups}
    scaled, err_after, err_before = 0, 0.0, 0.0
    for g in _progress(groups, f"{label} scale search"):
        if not g.stats:
            continue
        read = _weights_read(g)
        w = GroupWeights(g.linears)
        s, alpha, err, base = search(g, w.sampled(SEARCH_COLUMNS), quant, candidates_for(g, w))
        err_after, err_before = err_after + err, err_before + base
        if alpha:
            folds.apply(g, s)
            g.stats["rows"] = g.stats["rows"] / s
            scaled += 1
            ctx.log(pass_name, f"%{g.x.name} -> {', '.join(n.name for n in g.linears)}: alpha {alpha:.2f}, "
                               f"error {err:.3g} (without scaling {base:.3g})")
        for arr in read + _weights_read(g):  # mapped weights read here leave the RSS (the page cache keeps them)
            release(arr)
    searched = time.perf_counter()
    bad = outputs_match(graph, feeds[0], before, folds.rtol())
    if bad is not None:
        folds.rollback()
        ctx.log(pass_name, f"scales undone: folding changed the model ({bad})")
        scaled = 0
        for g in groups:
            g.stats["rows"] = plain_rows[id(g)]
    return groups, scaled, (err_after / err_before if err_before else 1.0), _timings(graph, start, calibrated, searched)


def _weights_read(g: Group) -> list[np.ndarray]:
    """The weight constants a group's search and fold read: its linears' and a linear fold target's."""
    nodes = [*g.linears, *([g.fold[1]] if g.fold[0] == "linear" else [])]
    return [weight_value(n).const for n in nodes]


def _timings(graph: Graph, start: float, calibrated: float, searched: float) -> dict:
    """Seconds spent running the model on the calibration data, searching the scales, checking the folds;
    per decoder layer where the graph is a language model (what a 7B compile's progress is judged by)."""
    out = {"calibration_s": round(calibrated - start, 2), "search_s": round(searched - calibrated, 2),
           "check_s": round(time.perf_counter() - searched, 2)}
    layers = (graph.meta.get("llm") or {}).get("layers")
    if layers:
        out["per_layer_s"] = round(sum(out.values()) / layers, 3)
    return out
