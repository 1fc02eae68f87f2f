"""kv-cache: replace a decoder's past/present attention by KV-cache states and KVAttention.

Runs after llm-interface and fuse-attention. For every Attention(q, k, v, mask?) whose k and v are
Concat(past_k, k_new) and Concat(past_v, v_new) on the sequence axis (past_* the past inputs
llm-interface found; the Concats are the present outputs):
  * two states k_cache [Bmax, Hkv, C, D] and v_cache [Bmax, Hkv, C, Dv] (C = the context capacity, Bmax the
    batch bound) are created, and the Attention becomes KVAttention(q, k_new, v_new, k_cache, v_cache,
    past): the new rows are appended in place, nothing is copied per step, and grouped-query attention
    reads the shared kv head (fuse-attention already removed repeat_kv);
  * the mask must be causal. An Attention with causal=1 and no mask is; a remaining mask must be a
    function of the shape symbols only (llm-interface replaced attention_mask by the ones a generation
    loop feeds), and is evaluated with the interpreter at several (batch, past, seq) bindings, the
    decode steps up to the cache's capacity included (contexts doubling from 16): it has to be <= -1e30
    (probability exactly 0) outside the keys past + i - W < j <= past + i and, on those keys,
    slope[h] * (j - past - i) + a per-row constant (softmax ignores the constant). W, the same at every
    binding (or wider than every probed context: plain causal), becomes KVAttention's `window`
    (Mistral's sliding window, checked against `sliding_window` in the config.json beside the model,
    ctx.options["model_config"]: a mismatch is a warning, the graph wins); nonzero slopes become its
    ALiBi slopes input (MPT, Bloom: the bias is computed in the kernel, never materialized). With a
    window W, W + RING_SLACK < capacity, the caches are rings of W + RING_SLACK rows (position p in row
    p % rows; RoPE positions stay absolute), so a long chat holds only its window; llm["window"] and
    llm["kv_ring_rewind"] (the most tokens kv_truncate may forget: rows - W + 1) record it;
  * the Attention's softcap (fuse-attention: Gemma 2's tanh capping) carries over;
  * the past inputs and the present outputs leave the interface; graph.meta["llm"]["kv_cache"] = True.
All or nothing: if any past input is not consumed this way the graph is left as it was (the model still
compiles, with its past/present interface, but cannot `generate`): the reason, naming the first refused
Attention node, goes to graph.meta["llm"]["kv_cache_refused"] and to a one-line `tcc: warning:` on
stderr, or, with ctx.options["require_kv_cache"] (`--require-kv-cache`), raises UnsupportedError.
ctx.stats["kv-cache"] = number of KVAttention nodes.
"""
from __future__ import annotations

import sys

import numpy as np

from ..ir.core import Graph, Node, TensorType, Value
from ..ir.dims import Sym
from ..ir.dtypes import DType
from . import register_pass
from .attention_match import unrepeat
from .kv_mask import mask_form
from .llm_interface import past_inputs
from .rewrite_utils import attrs, producer

NAME = "kv-cache"
# A ring cache holds window + RING_SLACK rows: the kernel takes a prefill in chunks of RING_SLACK + 1 tokens.
RING_SLACK = 63


class _Refuse(Exception):
    pass


def _concat_of(v: Value, pasts: set[int]) -> tuple[Value, Value] | None:
    """(past input, new rows) when v = Concat(past, new) on axis 2."""
    n = producer(v, "Concat")
    if n is None or len(n.inputs) != 2 or attrs(n)["axis"] % 4 != 2 or id(n.inputs[0]) not in pasts:
        return None
    return n.inputs[0], n.inputs[1]


def _match(graph: Graph, att: Node, pasts: set[int], llm: dict, checked: dict) -> dict:
    k, v = att.inputs[1], att.inputs[2]
    rk, rv = unrepeat(k), unrepeat(v)  # an imported ONNX Attention may still read repeat_kv(present)
    if rk is not None and rv is not None and rk[1] == rv[1]:
        k, v = rk[0], rv[0]
    ck, cv = _concat_of(k, pasts), _concat_of(v, pasts)
    if ck is None or cv is None:
        raise _Refuse("k and v are not Concat(past, new) on the sequence axis")
    mask = att.input(3)
    if not attrs(att)["causal"] and mask is None:
        raise _Refuse("attention is not causal")
    heads = att.inputs[0].shape[1]
    if mask is not None and id(mask) not in checked:  # layers usually share one mask: evaluate it once
        checked[id(mask)] = mask_form(graph, mask, llm, llm["capacity"], heads)
    form = checked[id(mask)] if mask is not None else (0, None)
    if isinstance(form, str):
        raise _Refuse(form)
    window, slopes = form
    if attrs(att)["window"]:  # an Attention that already carries a window (and maybe a causal mask)
        if window and window != attrs(att)["window"]:
            raise _Refuse(f"mask keeps {window} keys, the Attention's window is {attrs(att)['window']}")
        window = attrs(att)["window"]
    if att.input(4) is not None:
        if slopes is not None or not att.input(4).is_const:
            raise _Refuse("ALiBi slopes both in the mask and as an input, or not constant")
        slopes = att.input(4).const
    past = Sym.symbol(llm["past"])
    for (p, new) in (ck, cv):
        if p.shape[2] != past or new.shape[0] != att.inputs[0].shape[0] or new.shape[2] != att.inputs[0].shape[2]:
            raise _Refuse(f"past %{p.name} {p.type} / new rows {new.type} do not line up with q "
                          f"{att.inputs[0].type}")
    return dict(att=att, past_k=ck[0], k=ck[1], past_v=cv[0], v=cv[1], presents=[k, v], window=window,
                slopes=slopes)


def kv_cache(graph: Graph, ctx) -> int:
    llm = graph.meta.get("llm")
    if llm is None or llm.get("kv_cache") or llm.get("recompute"):
        return 0
    pasts = past_inputs(graph)
    ids = {id(v) for v in pasts}
    matches, checked, refused = [], {}, []
    for n in graph.nodes:  # collect
        if n.op != "Attention":
            continue
        try:
            matches.append(_match(graph, n, ids, llm, checked))
        except _Refuse as e:
            ctx.refuse(NAME, n, str(e))
            refused.append(f"Attention {n.name!r}: {e}")
    consumed = {id(m[k]) for m in matches for k in ("past_k", "past_v")}
    missing = [v.name for v in pasts if id(v) not in consumed]
    if missing or not matches:
        _refuse(ctx, llm, _reason(missing, refused, len(pasts)))
        return 0
    capacity, bmax = llm["capacity"], ctx.symbol_bounds[llm["batch"]]
    past_const = graph.add_const(np.array(Sym.symbol(llm["past"]), dtype=object), "past")
    presents: set[int] = set()
    _check_config(ctx, llm, [m["window"] for m in matches], capacity)
    slope_consts: dict[bytes, Value] = {}
    for i, m in enumerate(matches):  # commit
        att = m["att"]
        k, v = m["k"], m["v"]
        rows = ring_rows(m["window"], capacity)
        kc = graph.add_state(f"kv.{i}.key", TensorType(DType.f32, (bmax, k.shape[1], rows, k.shape[3])))
        vc = graph.add_state(f"kv.{i}.value", TensorType(DType.f32, (bmax, v.shape[1], rows, v.shape[3])))
        at = {"scale": attrs(att)["scale"], "window": m["window"], "softcap": attrs(att)["softcap"]}
        if rows < capacity:
            at["capacity"] = capacity
        ins = [att.inputs[0], k, v, kc, vc, past_const]
        if m["slopes"] is not None:  # one constant per distinct set of slopes (layers share them)
            key = m["slopes"].tobytes()
            if key not in slope_consts:
                slope_consts[key] = graph.add_const(m["slopes"], "alibi_slopes")
            ins += [None, None, slope_consts[key]]
        kva = graph.add_node("KVAttention", ins, at, name=att.name or f"kv_attention.{i}", before=att)
        graph.replace_uses(att.output, kva.output)
        graph.remove_nodes([att])
        presents.update(id(p) for p in m["presents"])
    names = graph.meta.get("output_names", [o.name for o in graph.outputs])
    kept = [(o, nm) for o, nm in zip(graph.outputs, names) if id(o) not in presents]
    graph.outputs = [o for o, _ in kept]
    graph.meta["output_names"] = [nm for _, nm in kept]
    graph.inputs = [v for v in graph.inputs if id(v) not in ids]
    from .eliminate_dead_code import eliminate_dead_code

    eliminate_dead_code(graph)
    llm["kv_cache"] = True
    llm["layers"] = len(matches)
    windows = [m["window"] for m in matches if m["window"]]
    if windows:  # the runtime's rewind limit (model.cpp: kv_truncate) and `tcc info`
        llm["window"] = max(windows)
        llm["kv_ring_rewind"] = min(ring_rows(w, capacity) - w for w in windows) + 1 if any(
            ring_rows(w, capacity) < capacity for w in windows) else 0
    if len(graph.outputs) != 1:
        ctx.messages.append(f"[{NAME}] outputs other than logits remain: {graph.meta['output_names']}")
    llm["logits"] = graph.meta["output_names"][0]
    ctx.log(NAME, f"{len(matches)} KVAttention over a {capacity}-token cache for batch <= {bmax}"
                  + (f", sliding window {sorted(set(windows))}" if windows else "")
                  + (", ALiBi" if any(m["slopes"] is not None for m in matches) else ""))
    ctx.stats[NAME] = len(matches)
    return len(matches)


def ring_rows(window: int, capacity: int) -> int:
    """Rows of a layer's caches: the window and RING_SLACK rows for prefill chunks, when that is smaller."""
    return window + RING_SLACK if window and window + RING_SLACK < capacity else capacity


def _check_config(ctx, llm: dict, windows: list[int], capacity: int) -> None:
    """Compare the windows the masks keep with config.json's sliding_window (HF: the keys j with
    i - j < sliding_window; some exports keep one more). The graph is what ONNX Runtime computes, so tcc
    follows it; a disagreement is worth a warning."""
    cfg = ctx.options.get("model_config") or {}
    sw = cfg.get("sliding_window")
    if not isinstance(sw, int) or isinstance(sw, bool) or sw <= 0 or cfg.get("use_sliding_window") is False:
        return
    seen = sorted({w for w in windows if w})
    if not seen and sw < capacity:
        msg = (f"config.json has sliding_window={sw} but the exported attention masks attend the whole "
               f"context (up to {capacity} tokens): tcc follows the graph")
    elif seen and not all(w in (sw, sw + 1) for w in seen):
        msg = f"the attention masks keep windows of {seen} tokens but config.json has sliding_window={sw}"
    else:
        return
    llm["window_warning"] = msg
    ctx.messages.append(f"[{NAME}] {msg}")
    print(f"tcc: warning: {msg}", file=sys.stderr, flush=True)


def _reason(missing: list[str], refused: list[str], n_pasts: int) -> str:
    """One line: the first refused Attention and why, else which past inputs no Attention reads."""
    if refused:
        more = f" (and {len(refused) - 1} more Attention node(s))" if len(refused) > 1 else ""
        return f"{refused[0]}{more}"
    if missing:
        shown = ", ".join(missing[:2]) + (f" and {len(missing) - 2} more" if len(missing) > 2 else "")
        return f"past input(s) {shown} of {n_pasts} are not read by any Attention node"
    return "no Attention node"


def _refuse(ctx, llm: dict, reason: str) -> None:
    from ..errors import UnsupportedError

    ctx.messages.append(f"[{NAME}] not applied: {reason}")
    llm["kv_cache_refused"] = reason
    if ctx.options.get("require_kv_cache"):
        raise UnsupportedError(f"no KV cache for this decoder: {reason} (--require-kv-cache)")
    print(f"tcc: warning: no KV cache, so `generate` and `chat` will refuse this decoder: {reason} "
          "(--require-kv-cache makes this an error)", file=sys.stderr, flush=True)


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    kv_cache(graph, ctx)
