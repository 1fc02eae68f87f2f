"""Which causal masks can a KV-cache generation loop serve? kv-cache's analysis of a mask that remains after
fuse-attention (passes/kv_cache.py): a function of the shape symbols only, evaluated with the interpreter at
PROBE_BINDINGS (small prefills and decodes) and at decode steps whose context doubles up to the cache's
capacity. It has to be <= CAUSAL_FILL (probability exactly 0) outside the keys past + i - W < j <= past + i
and, on those keys, slope[h] * (j - past - i) + a per-row constant (softmax ignores the constant): W (a
sliding window, or None: every causal key) and the per-head ALiBi slopes are the result.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ir.causal_mask import CAUSAL_FILL
from ..ir.core import Graph, Value

SLOPE_RTOL = 1e-5  # a row's bias must be linear in the key position to this (relative to its largest value)
PROBE_BINDINGS = [dict(batch=b, past=p, seq=s) for b, p, s in itertools.product((1, 2), (0, 1, 6), (1, 3, 8))]


def pure_subgraph(graph: Graph, v: Value) -> Graph | None:
    """A graph computing v from constants and shape symbols only; None if v depends on an input or state."""
    g = graph.copy()
    g.meta = {}
    target = g.value(v.name)
    g.outputs = [target]
    from .eliminate_dead_code import eliminate_dead_code

    eliminate_dead_code(g, keep_effects=False)
    used = {id(x) for n in g.nodes for x in n.inputs if x is not None}
    if any(id(x) in used for x in g.inputs) or g.states or target in g.inputs:
        return None
    g.inputs = []
    return g


def mask_form(graph: Graph, mask: Value, llm: dict, capacity: int, heads: int):
    """(window, slopes or None) of a symbol-only mask that generation can serve, else the reason (a str):
    evaluated at PROBE_BINDINGS (small prefills and decodes), then at decode steps whose context doubles up
    to the cache's capacity, so a sliding window smaller than the capacity is found wherever it lies."""
    from ..errors import TccError
    from ..ir.interpreter import run_graph

    sub = pure_subgraph(graph, mask)
    if sub is None:
        return f"mask %{mask.name} depends on inputs other than the shape symbols"
    decodes = [dict(batch=1, past=p, seq=1) for p in _doubling(16, capacity - 1)]
    window, widest_plain, slopes = None, 0, None
    # contexts past the capacity never run (a window as wide as the cache is plain causal within it)
    for b in [b for b in PROBE_BINDINGS if b["past"] + b["seq"] <= capacity] + decodes:
        env = {llm["batch"]: b["batch"], llm["past"]: b["past"], llm["seq"]: b["seq"]}
        try:
            (m,) = run_graph(sub, {}, symbols=env).values()
        except (TccError, ValueError, IndexError):
            return f"mask %{mask.name} cannot be evaluated for generation inputs ({_binding(b)})"
        sq, skv = b["seq"], b["past"] + b["seq"]
        m = np.asarray(m, np.float64)
        h = m.shape[1] if m.ndim == 4 and m.shape[1] in (1, heads) else 1
        try:
            full = np.broadcast_to(m, (b["batch"], h, sq, skv))
        except ValueError:
            return f"mask %{mask.name} has shape {list(np.shape(m))}, not [.., {sq}, {skv}] ({_binding(b)})"
        form = row_form(full, b["past"])
        if isinstance(form, str):
            return f"mask %{mask.name} {form} ({_binding(b)})"
        w, sl = form
        if w is None:
            widest_plain = max(widest_plain, skv)
        elif window is None or window == w:
            window = w
        else:
            return f"mask %{mask.name} keeps {window} keys at one context and {w} at another"
        if sl is not None:
            if slopes is not None and not np.allclose(sl, slopes, rtol=1e-5, atol=1e-9):
                return f"mask %{mask.name} has position biases that differ between contexts"
            slopes = sl if slopes is None else slopes
    if window is not None and window < widest_plain:
        return f"mask %{mask.name} keeps {window} keys at one context but {widest_plain} at another"
    if slopes is not None and np.all(slopes == 0):
        slopes = None
    if slopes is not None and len(slopes) != heads:
        slopes = np.broadcast_to(slopes, (heads,))
    return window or 0, None if slopes is None else np.ascontiguousarray(slopes, np.float32)


def mask_problem(graph: Graph, mask: Value, llm: dict, capacity: int, heads: int = 1) -> str | None:
    form = mask_form(graph, mask, llm, capacity, heads)
    return form if isinstance(form, str) else None


def mask_is_causal(graph: Graph, mask: Value, llm: dict) -> bool:
    form = mask_form(graph, mask, llm, llm["capacity"], 1)
    return not isinstance(form, str) and form == (0, None)


def _doubling(start: int, last: int) -> list[int]:
    out = []
    while start < last:
        out.append(start)
        start *= 2
    return out + ([last] if last >= 1 else [])


def _binding(b: dict) -> str:
    return f"batch {b['batch']}, past {b['past']}, seq {b['seq']}"


def row_form(full: np.ndarray, past: int):
    """(W or None when every causal key is kept, per-head slopes or None) of a mask [B, H, Sq, Skv]
    whose queries sit at positions past..; a str saying what is wrong otherwise."""
    sq, skv = full.shape[-2:]
    dead = full <= CAUSAL_FILL
    keep = ~dead
    if np.isnan(full).any() or not np.isfinite(full[keep]).all():
        return "has NaN or infinite entries that are not -inf"
    if not (keep == keep[:1, :1]).all():
        return "masks different keys in different batches or heads"
    keep = keep[0, 0]
    q_pos = past + np.arange(sq)
    rel = np.arange(skv)[None, :] - q_pos[:, None]  # key - query position
    if np.any(keep & (rel > 0)) or not keep.any(axis=-1).all():
        return "is not causal for generation inputs"
    counts = keep.sum(axis=-1)
    w = None
    if not np.array_equal(keep, rel <= 0):
        w = int(counts.max())
        if not np.array_equal(keep, (rel <= 0) & (rel > -w)):
            return "is not causal for generation inputs"
    slopes = np.zeros(full.shape[1])
    for h in range(full.shape[1]):
        hs = []
        for bi in range(full.shape[0]):
            for i in range(sq):
                x, y = rel[i][keep[i]].astype(np.float64), full[bi, h, i][keep[i]]
                if len(x) < 2:  # one key: its bias is a row constant
                    continue
                xm, ym = x.mean(), y.mean()
                sl = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
                if np.abs(y - ym - sl * (x - xm)).max() > SLOPE_RTOL * (1 + np.abs(y).max()):
                    return "adds a bias that is not a per-head slope times the key's distance (ALiBi)"
                hs.append(sl)
        if hs and max(hs) - min(hs) > 1e-5 * max(abs(v) for v in hs) + 1e-9:
            return "adds a bias whose slope differs between rows"
        slopes[h] = hs[0] if hs else 0.0
    return w, (slopes if np.any(slopes != 0) else None)
