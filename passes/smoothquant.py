"""smoothquant: migrate activation outliers into the weights before w8a8 quantization (Xiao et al., 2023).

For each group of Linear layers sharing an input x (passes/smoothing.py finds them and where 1/s folds):
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
(max over the calibration rows, and over every output of the group's weights for input channel j), so
x / s has flatter channels for each row's int8 activation scale and s * W stays int8-friendly. alpha
is searched on a grid in [0, 1) per group, keeping the s with the least error of the simulated w8a8
product (smoothing.Quantizer, with the scheme's activation groups) against the fp32 one on calibration
rows; alpha 0 means no smoothing (s = 1), so the result is never worse than plain w8a8 on those rows.
Runs only for schemes whose calibration is "smoothquant" and with calibration data. ctx.stats["smoothquant"] = {"groups": n, "smoothed": n, "error_ratio": r, and
the seconds spent (smoothing._timings)}.
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph
from . import register_pass
from .schemes import get_scheme
from .smoothing import Quantizer, calibration_feeds, rescale_groups

NAME = "smoothquant"


def smoothquant_candidates(x_max: np.ndarray, w_abs_max: np.ndarray):
    """alpha -> s from the per-channel maxima of the activations and of the weights' rows."""
    a = np.maximum(x_max.astype(np.float64), 1e-5)
    b = np.maximum(w_abs_max.astype(np.float64), 1e-5)

    def cand(alpha: float) -> np.ndarray:
        return (a ** alpha / b ** (1 - alpha)).astype(np.float32)
    return cand


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    scheme = get_scheme(ctx.qm)
    if scheme.calibration != NAME:
        return
    feeds = calibration_feeds(graph, ctx, NAME)
    if feeds is None:
        return
    groups, smoothed, ratio, seconds = rescale_groups(graph, ctx, NAME, Quantizer(scheme, 0, False), feeds,
                                             lambda g, w: smoothquant_candidates(g.stats["max_abs"], w.row_abs_max()),
                                             "SmoothQuant")
    ctx.stats[NAME] = {"groups": len(groups), "smoothed": smoothed, "error_ratio": ratio, **seconds}
