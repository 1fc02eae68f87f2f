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
    loop feeds), and is evaluated with the interpreter at several (batch, past, seq) bindings: it has to
    be 0 where key j <= past + query i and <= -1e30 elsewhere (so its probabilities are exactly 0);
  * the past inputs and the present outputs leave the interface; graph.meta["llm"]["kv_cache"] = True.
All or nothing: if any past input is not consumed this way the graph is left as it was and the reason
is logged (the model still compiles, with its past/present interface, but cannot `generate`).
ctx.stats["kv-cache"] = number of KVAttention nodes.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ir.core import Graph, Node, TensorType, Value
from ..ir.dims import Sym
from ..ir.dtypes import DType
from . import register_pass
from .fuse_attention import CAUSAL_FILL, _unrepeat
from .llm_interface import past_inputs
from .rewrite_utils import attrs, producer

NAME = "kv-cache"
PROBE_BINDINGS = [dict(batch=b, past=p, seq=s) for b, p, s in itertools.product((1, 2), (0, 1, 6), (1, 3, 8))]


class _Refuse(Exception):
    pass


def _concat_of(v: Value, pasts: set[int]) -> tuple[Value, Value] | None:
    """(past input, new rows) when v = Concat(past, new) on axis 2."""
    n = producer(v, "Concat")
    if n is None or len(n.inputs) != 2 or attrs(n)["axis"] % 4 != 2 or id(n.inputs[0]) not in pasts:
        return None
    return n.inputs[0], n.inputs[1]


def _pure_subgraph(graph: Graph, v: Value) -> Graph | None:
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


def mask_is_causal(graph: Graph, mask: Value, llm: dict) -> bool:
    """Evaluate a symbol-only mask at PROBE_BINDINGS; True if every binding gives the causal mask."""
    from ..errors import TccError
    from ..ir.interpreter import run_graph

    sub = _pure_subgraph(graph, mask)
    if sub is None:
        return False
    for b in PROBE_BINDINGS:
        env = {llm["batch"]: b["batch"], llm["past"]: b["past"], llm["seq"]: b["seq"]}
        try:
            (m,) = run_graph(sub, {}, symbols=env).values()
        except (TccError, ValueError, IndexError):
            return False
        sq, skv = b["seq"], b["past"] + b["seq"]
        try:
            full = np.broadcast_to(m, (b["batch"], 1, sq, skv) if m.ndim == 4 else m.shape[:-2] + (sq, skv))
        except ValueError:
            return False
        allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + b["past"]
        if not (np.all(full[..., allowed] == 0) and np.all(full[..., ~allowed] <= CAUSAL_FILL)):
            return False
    return True


def _match(graph: Graph, att: Node, pasts: set[int], llm: dict, checked: dict) -> dict:
    k, v = att.inputs[1], att.inputs[2]
    rk, rv = _unrepeat(k), _unrepeat(v)  # an imported ONNX Attention may still read repeat_kv(present)
    if rk is not None and rv is not None and rk[1] == rv[1]:
        k, v = rk[0], rv[0]
    ck, cv = _concat_of(k, pasts), _concat_of(v, pasts)
    if ck is None or cv is None:
        raise _Refuse("k and v are not Concat(past, new) on the sequence axis")
    mask = att.input(3)
    if not attrs(att)["causal"] and mask is None:
        raise _Refuse("attention is not causal")
    if mask is not None and id(mask) not in checked:  # layers usually share one mask: evaluate it once
        checked[id(mask)] = mask_is_causal(graph, mask, llm)
    if mask is not None and not checked[id(mask)]:
        raise _Refuse(f"mask %{mask.name} is not causal for generation inputs (or depends on other inputs)")
    past = Sym.symbol(llm["past"])
    for (p, new) in (ck, cv):
        if p.shape[2] != past or new.shape[0] != att.inputs[0].shape[0] or new.shape[2] != att.inputs[0].shape[2]:
            raise _Refuse(f"past %{p.name} {p.type} / new rows {new.type} do not line up with q "
                          f"{att.inputs[0].type}")
    return dict(att=att, past_k=ck[0], k=ck[1], past_v=cv[0], v=cv[1], presents=[k, v])


def kv_cache(graph: Graph, ctx) -> int:
    llm = graph.meta.get("llm")
    if llm is None or llm.get("kv_cache") or llm.get("recompute"):
        return 0
    pasts = past_inputs(graph)
    ids = {id(v) for v in pasts}
    matches, checked = [], {}
    for n in graph.nodes:  # collect
        if n.op != "Attention":
            continue
        try:
            matches.append(_match(graph, n, ids, llm, checked))
        except _Refuse as e:
            ctx.refuse(NAME, n, str(e))
    consumed = {id(m[k]) for m in matches for k in ("past_k", "past_v")}
    missing = [v.name for v in pasts if id(v) not in consumed]
    if missing or not matches:
        reason = f"past input(s) {missing} not consumed by a causal Attention" if missing else "no Attention"
        ctx.messages.append(f"[{NAME}] not applied: {reason}")
        llm["kv_cache_refused"] = reason
        return 0
    capacity, bmax = llm["capacity"], ctx.symbol_bounds[llm["batch"]]
    past_const = graph.add_const(np.array(Sym.symbol(llm["past"]), dtype=object), "past")
    presents: set[int] = set()
    for i, m in enumerate(matches):  # commit
        att = m["att"]
        k, v = m["k"], m["v"]
        kc = graph.add_state(f"kv.{i}.key", TensorType(DType.f32, (bmax, k.shape[1], capacity, k.shape[3])))
        vc = graph.add_state(f"kv.{i}.value", TensorType(DType.f32, (bmax, v.shape[1], capacity, v.shape[3])))
        kva = graph.add_node("KVAttention", [att.inputs[0], k, v, kc, vc, past_const],
                             {"scale": attrs(att)["scale"]}, name=att.name or f"kv_attention.{i}", before=att)
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
    if len(graph.outputs) != 1:
        ctx.messages.append(f"[{NAME}] outputs other than logits remain: {graph.meta['output_names']}")
    llm["logits"] = graph.meta["output_names"][0]
    ctx.log(NAME, f"{len(matches)} KVAttention over a {capacity}-token cache for batch <= {bmax}")
    ctx.stats[NAME] = len(matches)
    return len(matches)


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    kv_cache(graph, ctx)
