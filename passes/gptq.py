"""gptq: error-compensating rounding of the weights (Frantar et al., 2022), before quantize.

Round-to-nearest rounds every weight on its own. GPTQ rounds a Linear layer's input channels (rows of
W [K, N]) one at a time and moves each rounding error onto the rows not yet rounded, weighted by the
layer's input statistics H = X^T X (X: every calibration row the layer reads), so that the output error
||X W - X Q||^2 is what gets minimized, not the weight error. The standard algorithm:
  - dead input channels (H_kk = 0: never nonzero on the calibration data) get H_kk = 1 and W_k = 0;
  - dampening: H += DAMP * mean(diag H) * I (more, up to DAMP_MAX, if H is still not positive definite);
  - U = the upper Cholesky factor of H^-1 (H^-1 = U^T U); row k rounds to q_k, err_k = (w_k - q_k) / U_kk,
    and rows j > k take w_j -= U_kj * err_k: immediately within a block of BLOCK rows, then once per
    block for the rows after it (one matrix product: "lazy batch" updates);
  - int4 (w4a8, w4a32, w4a16): at each group start the group's scales (and zero points) are computed from
    the current, error-updated weights of the group by ir/ops/quant.py's quantize_int4 itself, and every
    row of the group is rounded with them in quantize_int4's arithmetic; int8 (w8a8): one scale per output
    channel from the whole weight before rounding (quantize_int8's), rows rounded with int8_codes.
The rounded layer is emitted as the QLinear the quantize pass would make of it (quantize.emit_qlinear: the
same node, inputs and attributes; quantize leaves it alone), so its codes and scales are exactly those
(with H = I the algorithm moves nothing and they equal quantize_int4 / quantize_int8 of W bit for bit:
tests/passes/test_gptq.py). The layers are the ones quantize would quantize (not --keep-fp32 ones, not
embedding tables: a lookup has no input statistics); weights behind widening Casts (fp16/bf16 exports)
are read through them.

Runs after awq / smoothquant (their scaled and clipped weights are what it rounds; their folded scales
are in the activations it collects: the statistics come from running the graph as it is then), only when
ctx.options["quant_method"] names it and calibration data is given. One layer at a time: H is [K, K]
float64 per input value (layers sharing an input share it), collected for groups of layers whose H fit
H_BUDGET_BYTES per run of the calibration data (a 7B model's 32 layers take several runs); the codes go
to a mapped file (frontend/mapped.py).
ctx.stats["gptq"] = {"linears": n, "error_ratio": r, "rows": calibration rows, "runs": calibration runs,
"calibration_s", "rounding_s"} (r: the summed output error ||X (W - Q)||^2 of GPTQ's rounding over that of
round-to-nearest, on the sample of calibration rows the AWQ search uses; fp32 activations).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..frontend.mapped import Spill, release
from ..ir.core import Graph, Node
from ..ir.quant_arith import n_groups, quantize_int4, quantize_int8, round_f16
from . import register_pass
from .quantize import act_attrs, emit_qlinear, int8_codes, kept, lm_head_nodes, scale_search
from .tie_tables import tied_heads
from .schemes import get_scheme, group_size
from .smoothing import SPILL_BYTES, Group, _progress, calibration_feeds, collect, rescalable, weight_f32, weight_value

NAME = "gptq"
BLOCK = 128  # rows per lazy-batch block (rounded to whole groups)
DAMP = 0.01  # dampening, a fraction of the mean of diag(H)
DAMP_MAX = 10.0  # dampening tried up to this fraction (x10 each time) before a layer falls back to nearest
H_BUDGET_BYTES = 2 << 30  # float64 X^T X accumulated per run of the calibration data


@dataclass(frozen=True)
class Rounding:
    """How one layer's weights are quantized: the scheme's grid (ir/ops/quant.py)."""
    bits: int  # 4: group-wise, 8: per output channel
    group: int  # int4 group size along K (int8: ignored, one group of K)
    symmetric: bool = True
    f16: bool = False  # w4a16: the kernels round the dequantized weight to fp16 once more
    search: bool = True  # int4: quantize_int4's scale search (off where AWQ clipped the weights for c = 1)

    def qlinear_group(self, k: int) -> int:
        return self.group if self.bits == 4 else k


def rounding_for(scheme, group: int, asym: bool, search: bool = True) -> Rounding:
    return Rounding(scheme.weight_bits, group, not asym, scheme.act == "f16", search)


def hessian_factor(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(U float32 upper triangular with (H + damp I)^-1 = U^T U, the dead channels [K] bool, the dampening
    used) from H = X^T X float64, which is modified in place (dead channels get H_kk = 1) and dropped as
    soon as it is factored: a caller that hands over its only reference lets the [K, K] go early.
    With J the row reversal, J H J = M M^T (M lower) gives H = R R^T with R = J M J upper, so
    H^-1 = R^-T R^-1 and U = R^-1 = J M^-1 J: one Cholesky factorization and one triangular inverse.
    np.linalg.LinAlgError if H is not finite or H + DAMP_MAX * mean(diag H) I is still not positive definite."""
    if not np.isfinite(h).all():  # inf / nan activations: no factorization means anything
        raise np.linalg.LinAlgError("X^T X is not finite")
    diag = np.einsum("ii->i", h)  # a view: writes go to h
    dead = diag == 0
    diag[dead] = 1.0
    base, mean = diag.copy(), float(np.mean(diag))
    damp = DAMP
    while True:
        diag[:] = base + damp * mean
        try:
            m = np.linalg.cholesky(h[::-1, ::-1])
            break
        except np.linalg.LinAlgError:
            if damp * 10 > DAMP_MAX:
                raise
            damp *= 10
    del h, diag
    u = np.linalg.inv(m)
    del m
    return np.ascontiguousarray(u[::-1, ::-1], dtype=np.float32), dead, damp


def gptq_round(w: np.ndarray, h: np.ndarray, rnd: Rounding) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """w [K, N], h = X^T X [K, K] (not modified) -> (q [N, K], scales [N, G], zeros [N, G] or None) in the
    QLinear layout (ir/ops/quant.py: u8 0..15 for int4, i8 for int8). np.linalg.LinAlgError if H stays
    singular."""
    u, dead, _ = hessian_factor(np.array(h, np.float64))
    return gptq_round_factored(w, u, dead, rnd)


def gptq_round_factored(w: np.ndarray, u: np.ndarray, dead: np.ndarray,
                        rnd: Rounding) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """gptq_round with H already factored (hessian_factor): the layers reading one input share it."""
    wc = np.array(w, np.float32)  # a copy: the algorithm updates it
    wc[dead] = 0.0
    k, n = wc.shape
    gs = rnd.qlinear_group(k)
    block = max(gs, BLOCK // gs * gs) if rnd.bits == 4 else BLOCK
    codes = np.empty((k, n), np.uint8 if rnd.bits == 4 else np.int8)
    g = n_groups(k, gs)
    scales = np.empty((g, n), np.float32)
    zeros = np.empty((g, n), np.uint8) if rnd.bits == 4 and not rnd.symmetric else None
    if rnd.bits == 8:
        _, s8 = quantize_int8(wc)  # one scale per output channel, from the whole weight
        d, z = s8[:, 0], None
        scales[0] = d
    for b0 in range(0, k, block):
        b1 = min(k, b0 + block)
        errs = np.empty((b1 - b0, n), np.float32)
        for r in range(b0, b1):
            if rnd.bits == 4 and r % gs == 0:  # a group starts: its grid from its current weights
                _, dg, zg = quantize_int4(wc[r:r + gs], gs, symmetric=rnd.symmetric, search=rnd.search)
                d = dg[:, 0]
                z = np.full(n, 8, np.int32) if zg is None else zg[:, 0].astype(np.int32)
                scales[r // gs] = d
                if zeros is not None:
                    zeros[r // gs] = z
            row = wc[r]
            if rnd.bits == 4:
                codes[r] = _int4_codes(row, d, z)
                deq = (codes[r].astype(np.float32) - z.astype(np.float32)) * d  # exact in float32
                if rnd.f16:
                    deq = round_f16(deq).astype(np.float32)
            else:
                codes[r] = int8_codes(row[None], d)[0]
                deq = codes[r].astype(np.float32) * d
            err = (row - deq) / u[r, r]
            errs[r - b0] = err
            if r + 1 < b1:
                wc[r + 1:b1] -= np.outer(u[r, r + 1:b1], err)
        if b1 < k:
            wc[b1:] -= u[b0:b1, b1:].T @ errs
    return (np.ascontiguousarray(codes.T), np.ascontiguousarray(scales.T),
            None if zeros is None else np.ascontiguousarray(zeros.T))


def _int4_codes(row: np.ndarray, d: np.ndarray, z: np.ndarray) -> np.ndarray:
    """One row's codes under the group's scales d [N] and zero points z [N]: quantize_int4's arithmetic
    (float32 quotient, round half to even, + z, clipped to 0..15; a zero scale gives z)."""
    zero = d == 0
    safe = np.where(zero, np.float32(1), d)
    q = row / safe
    np.rint(q, out=q)
    q += z.astype(np.float32)
    np.clip(q, 0, 15, out=q)
    return np.where(zero, z, q).astype(np.uint8)


def rtn_round(w: np.ndarray, rnd: Rounding) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What the quantize pass makes of w: round to nearest."""
    if rnd.bits == 4:
        return quantize_int4(w, rnd.group, symmetric=rnd.symmetric, search=rnd.search)
    q, s = quantize_int8(w)
    return q, s, None


def dequantized(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, rnd: Rounding) -> np.ndarray:
    """The weight [K, N] the kernels multiply by, float64."""
    from ..ir.quant_arith import dequantize

    w = dequantize(q, scales, zeros, rnd.bits, rnd.qlinear_group(q.shape[1]))
    return (round_f16(w) if rnd.f16 else w).T


def output_error(x: np.ndarray, w: np.ndarray, wq: np.ndarray) -> float:
    """||x (w - wq)||^2 in float64."""
    d = np.asarray(x, np.float64) @ (np.asarray(w, np.float64) - wq)
    return float(np.einsum("rn,rn->", d, d))


# -- the pass ----------------------------------------------------------------------------------------------

def layers(graph: Graph, ctx) -> list[Group]:
    """The Linear layers quantize would quantize at the scheme's bits, grouped by the input they read (one H
    per input). The layers bit-allocation keeps at 8 bits are left to quantize (rounded to nearest at 8 bits),
    and so is an LM head tied to the embedding (stored once, passes/tie_tables.py): its codes are the table's
    too, and rows read on their own want the nearest codes, not codes fitted to the head's inputs."""
    heads = lm_head_nodes(graph)
    patterns = tuple(ctx.options.get("keep_fp32") or ())
    alloc = ctx.stats.get("bit-allocation")  # the 4-bit schemes; w8a8's tied heads are found here
    skip = (set(alloc.get("eight_bit") or ()) | {head for _, head in alloc.get("tied") or ()} if alloc is not None
            else tied_heads(graph, ctx.target))
    by_input: dict[int, Group] = {}
    for node in graph.nodes:
        if not rescalable(node) or kept(node, patterns, heads) is not None or node.name in skip:
            continue
        grp = by_input.setdefault(id(node.inputs[0]), Group(node.inputs[0], [], ("none", None)))
        grp.linears.append(node)
    return list(by_input.values())


def batches(groups: list[Group]) -> list[list[Group]]:
    """Groups whose float64 H fit H_BUDGET_BYTES together (at least one group per batch)."""
    out: list[list[Group]] = [[]]
    used = 0
    for g in groups:
        nbytes = 8 * int(g.x.shape[-1]) ** 2
        if out[-1] and used + nbytes > H_BUDGET_BYTES:
            out.append([])
            used = 0
        out[-1].append(g)
        used += nbytes
    return out


def _stored(spill: Spill, a: np.ndarray | None) -> np.ndarray | None:
    """A large result in the mapped spill file, not the heap, until the graph is written out."""
    return spill.put(a) if a is not None and a.nbytes >= SPILL_BYTES else a


def wants_gptq(ctx) -> bool:
    return NAME in str(ctx.options.get("quant_method") or "").split("+")


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    scheme = get_scheme(ctx.qm)
    if scheme.weight_bits is None or not wants_gptq(ctx):
        return
    feeds = calibration_feeds(graph, ctx, NAME)
    if feeds is None:
        return
    rnd = rounding_for(scheme, group_size(ctx), bool(ctx.options.get("asym")), scale_search(ctx))
    groups = layers(graph, ctx)
    spill = Spill()
    done: list[tuple[Node, object, tuple]] = []  # (node, weight value, (q, scales, zeros)): emitted at the end
    err_gptq = err_rtn = 0.0
    rows = runs = 0
    t_calib = t_round = 0.0
    for batch in batches(groups):
        t0 = time.perf_counter()
        collect(graph, batch, feeds, "GPTQ calibration", xtx=True)  # the graph as awq/smoothquant left it
        runs += 1
        t1 = time.perf_counter()
        t_calib += t1 - t0
        for grp in _progress(batch, "GPTQ rounding"):
            if not grp.stats:
                continue
            rows = max(rows, grp.stats["n"])
            try:  # H handed over (popped): its [K, K] goes once factored
                u, dead, damp = hessian_factor(grp.stats.pop("xtx"))
            except np.linalg.LinAlgError:
                ctx.refuse(NAME, grp.linears[0], f"X^T X of %{grp.x.name} is not finite, or not positive definite "
                                                 f"even dampened by {DAMP_MAX} x its mean diagonal; rounded to nearest")
                grp.stats.clear()
                continue
            if damp != DAMP:
                ctx.log(NAME, f"%{grp.x.name}: X^T X dampened by {damp} x its mean diagonal")
            sample = grp.stats["rows"]
            for lin in grp.linears:
                w = weight_f32(lin)
                q, s, z = gptq_round_factored(w, u, dead, rnd)
                eg = output_error(sample, w, dequantized(q, s, z, rnd))
                er = output_error(sample, w, dequantized(*rtn_round(w, rnd), rnd))
                err_gptq, err_rtn = err_gptq + eg, err_rtn + er
                ctx.log(NAME, f"{lin.name}: output error {eg:.3g} (round to nearest {er:.3g})")
                done.append((lin, weight_value(lin), tuple(_stored(spill, a) for a in (q, s, z))))
                release(weight_value(lin).const)
            del u
            grp.stats.clear()
        t_round += time.perf_counter() - t1
    for lin, wv, (q, s, z) in done:
        emit_qlinear(graph, lin, wv, q, s, z, {"bits": rnd.bits, "group_size": rnd.qlinear_group(q.shape[1]),
                                               **act_attrs(scheme, rnd.bits, scheme.act, q.shape[1])})
    graph.remove_unused_constants()
    ctx.stats[NAME] = {"linears": len(done), "error_ratio": err_gptq / err_rtn if err_rtn else 1.0, "rows": rows,
                       "runs": runs, "calibration_s": round(t_calib, 2), "rounding_s": round(t_round, 2)}
