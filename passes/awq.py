"""awq: activation-aware weight quantization (Lin et al., 2023) for the int4 schemes, in fp32, before quantize.

For each group of Linear layers sharing an input x (passes/smoothing.py finds them and where 1/s folds):
on calibration rows X, try s = mean|X|^alpha (normalized by sqrt(max s * min s)) for alpha on a grid in
[0, 1), quantize (s * W) the way the scheme will (group-wise int4, int8 activations for w4a8), and keep
the s with the least error of Q(X / s) @ Q(s * W) against X @ W; alpha 0 is plain round-to-nearest, so the
search never does worse than it on the calibration rows. With ctx.options["awq_clip"], then search per
output channel and group a clipping ratio of the weight range (1.0 down to 0.5) that minimizes the
group's share of the output error, and clamp the weights to it.
Runs only for schemes whose calibration is "awq" and only with calibration data (else quantize rounds to
nearest, and the driver warns). ctx.stats["awq"] = {"groups": n, "scaled": n, "clipped": n, "error_ratio": r,
...seconds} (r: the summed calibration error after / before the search; the seconds: smoothing._timings).
"""
from __future__ import annotations

import numpy as np

from ..frontend.mapped import release
from ..ir.core import Graph
from . import register_pass
from .schemes import get_scheme, group_size
from .smoothing import (Folds, Quantizer, _progress, calibration_feeds, rescale_groups,
                        slice_step, weight_value)

NAME = "awq"
CLIP_RATIOS = [1.0 - 0.05 * i for i in range(11)]


def awq_candidates(mean_abs: np.ndarray):
    m = np.maximum(mean_abs.astype(np.float64), 1e-8)

    def cand(alpha: float) -> np.ndarray:
        s = m ** alpha
        return (s / np.sqrt(s.max() * s.min())).astype(np.float32)
    return cand


def clip_weights(x: np.ndarray, w: np.ndarray, quant: Quantizer) -> tuple[np.ndarray, int]:
    """W [K, N] (any float dtype, read in column slices) with each (group, column) range clamped to the ratio
    that minimizes that group's output error on rows x; returns (new W in f32, number of clipped groups)."""
    out = np.empty(w.shape, np.float32)
    x64 = x.astype(np.float64)
    step = slice_step(w.shape[0])
    clipped = 0
    for c0 in range(0, w.shape[1], step):
        out[:, c0:c0 + step], n = _clip_slice(x64, np.asarray(w[:, c0:c0 + step], np.float32), quant)
        clipped += n
    return out, clipped


def _clip_slice(x64: np.ndarray, w: np.ndarray, quant: Quantizer) -> tuple[np.ndarray, int]:
    """clip_weights on whole output columns (each column's groups are chosen on their own)."""
    k, n = w.shape
    gs = quant.group
    g_count = -(-k // gs)
    errs = np.empty((len(CLIP_RATIOS), g_count, n))
    lo_all, hi_all = _ranges(w, gs)
    for ri, r in enumerate(CLIP_RATIOS):
        wq = quant.weight(_clamp(w, lo_all * r, hi_all * r, gs))
        for g in range(g_count):
            sl = slice(g * gs, min(k, (g + 1) * gs))
            d = x64[:, sl] @ (wq[sl] - w[sl].astype(np.float64))
            errs[ri, g] = np.einsum("rn,rn->n", d, d)
    best = np.argmin(errs, axis=0)  # [G, N]; ratio 1.0 (index 0) wins ties
    ratio = np.asarray(CLIP_RATIOS)[best]
    return _clamp(w, lo_all * ratio, hi_all * ratio, gs), int(np.count_nonzero(best))


def _ranges(w: np.ndarray, gs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (group, column) weight range [lo, hi] as the quantizer sees it ([G, N])."""
    k, n = w.shape
    g_count = -(-k // gs)
    pad = np.zeros((g_count * gs - k, n), w.dtype)
    wg = np.concatenate([w, pad]).reshape(g_count, gs, n)
    return np.minimum(wg.min(axis=1), 0), np.maximum(wg.max(axis=1), 0)


def _clamp(w: np.ndarray, lo: np.ndarray, hi: np.ndarray, gs: int) -> np.ndarray:
    k = w.shape[0]
    lo_k = np.repeat(lo, gs, axis=0)[:k]
    hi_k = np.repeat(hi, gs, axis=0)[:k]
    return np.clip(w, lo_k, hi_k).astype(np.float32)


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    scheme = get_scheme(ctx.qm)
    if scheme.calibration != NAME:
        return
    feeds = calibration_feeds(graph, ctx, NAME)
    if feeds is None:
        return
    group = group_size(ctx)
    quant = Quantizer(scheme, group, bool(ctx.options.get("asym")))
    groups, scaled, ratio, seconds = rescale_groups(graph, ctx, NAME, quant, feeds,
                                           lambda g, w: awq_candidates(g.stats["mean_abs"]), "AWQ")
    clipped, folds = 0, None  # (never rolled back: a Folds for its spill and half weights)
    if ctx.options.get("awq_clip") and scheme.weight_bits == 4:
        for g in _progress(groups, "AWQ clip search"):
            if not g.stats:
                continue
            for lin in g.linears:
                src = weight_value(lin).const
                w, n_clipped = clip_weights(g.stats["rows"], src, quant)
                release(src)  # a mapped weight's pages leave the RSS (the page cache keeps them)
                if n_clipped:  # the clipped weight to a mapped file, not the heap (frontend/mapped.py)
                    folds = folds or Folds(graph)
                    folds.set_weight(lin, w, weight_value(lin).name + ".clipped")
                    clipped += n_clipped
        graph.remove_unused_constants()
    ctx.stats[NAME] = {"groups": len(groups), "scaled": scaled, "clipped": clipped,
                       "error_ratio": ratio, **seconds}
