"""llm-interface: give a decoder-with-past its generation interface (input_ids in, logits out).

A decoder exported with past (optimum's text-generation-with-past, or torch.onnx.export of a model with
a cache) takes `input_ids` [batch, seq], usually `attention_mask` [batch, past+seq] and `position_ids`
[batch, seq] (sometimes `cache_position` [seq]), and `past_key_values.*` [batch, kv_heads, past, head_dim];
it returns logits and the `present.*` = Concat(past, new) along the sequence axis.

Recognized by structure: a *past* input is a rank-4 float graph input whose uses are Concat(past, new)
on axis 2 (plus Shape, which folding removes) producing a graph output. When all past inputs share one
sequence symbol, this pass
  * replaces the inputs a generation loop computes itself with the values it would feed, expressed in
    the symbols `past` (cached tokens) and `seq` (new tokens): attention_mask -> ones [batch, past+seq],
    position_ids -> past + arange(seq) per row, cache_position -> past + arange(seq). Folding and
    fuse-attention then see the causal mask those inputs built, and the positions;
  * records `graph.meta["llm"]`: the symbols (batch, seq, past, n_logits), the KV-cache capacity and the
    input_ids / logits names. kv-cache (after fuse-attention) replaces the past/present pairs by states.
Batched generation is one sequence length for all rows (no padding), which is what the computed
attention_mask states. Inputs named otherwise (e.g. inputs_embeds) have no generation role: refused.
Bounds: past <= capacity, n_logits <= the seq bound; batch defaults to 1 (ctx.options["batch"]) since the
cache is allocated for the batch bound.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..ir.core import Graph, Value
from ..ir.dims import Sym, bare_symbol
from ..ir.dtypes import DType
from . import register_pass
from .rewrite_utils import attrs

NAME = "llm-interface"
DEFAULT_CONTEXT = 2048
ROLE_INPUTS = ("input_ids", "attention_mask", "position_ids", "cache_position")


def _bypass_noops(graph: Graph) -> None:
    """Point uses of Identity(x) / one-input Concat(x) of a graph input at x (TorchScript exports copy
    each past tensor through a one-input Concat before the real one)."""
    inputs = {id(v) for v in graph.inputs}
    dead = []
    for n in graph.nodes:
        if (n.op == "Identity" or (n.op == "Concat" and len(n.inputs) == 1)) and id(n.inputs[0]) in inputs \
                and not any(o is n.output for o in graph.outputs):
            graph.replace_uses(n.output, n.inputs[0], outputs=False)
            dead.append(n)
    graph.remove_nodes(dead)


def past_inputs(graph: Graph) -> list[Value]:
    """Rank-4 float inputs used only as Concat(past, new) on axis 2 (and by Shape) whose result is an output."""
    users = graph.users()
    outs = {id(v) for v in graph.outputs}
    found = []
    for v in graph.inputs:
        if v.type.rank != 4 or v.dtype not in (DType.f32, DType.f16):
            continue
        uses = users.get(v, [])
        concats = [n for n, slot in uses if n.op == "Concat" and slot == 0 and len(n.inputs) == 2
                   and attrs(n)["axis"] % 4 == 2 and id(n.output) in outs]
        if concats and all(n.op == "Shape" or n in concats for n, _ in uses):
            found.append(v)
    return found


def _sym_const(graph: Graph, dims, name: str) -> Value:
    return graph.add_const(np.array(dims, dtype=object), name)


def _positions(graph: Graph, past: Sym, seq: Sym, dtype: DType, before) -> Value:
    """past + arange(seq): i64 [seq], cast to `dtype`."""
    rng = graph.add_node("Range", [_sym_const(graph, past, "past"), _sym_const(graph, past + seq, "past_plus_seq"),
                                   graph.add_const(np.array(1, np.int64), "one")], name="llm/positions",
                         before=before).output
    if dtype != DType.i64:
        rng = graph.add_node("Cast", [rng], {"to": str(dtype)}, name="llm/positions_cast", before=before).output
    return rng


def _logits_output(graph: Graph, batch, seq) -> bool:
    outs = graph.outputs
    return len(outs) >= 1 and outs[0].type.rank == 3 and outs[0].dtype == DType.f32 \
        and tuple(outs[0].shape[:2]) == (batch, seq)


def llm_interface(graph: Graph, ctx) -> bool:
    _bypass_noops(graph)
    pasts = past_inputs(graph)
    by_name = {v.name: v for v in graph.inputs}
    ids = by_name.get("input_ids")
    if not pasts:
        # A decoder exported without past: input_ids [batch, seq] (+ role inputs) -> logits [batch, seq, V].
        # It generates by recomputing the whole sequence for every token (no KV cache to keep).
        if (ids is None or ids.type.rank != 2 or ids.dtype not in (DType.i64, DType.i32)
                or any(v.name not in ROLE_INPUTS for v in graph.inputs)
                or not _logits_output(graph, ids.shape[0], ids.shape[1])
                or bare_symbol(ids.shape[0]) is None or bare_symbol(ids.shape[1]) is None):
            return False
        return _rewrite(graph, ctx, ids, [], None)
    # Past inputs without a generation interface (e.g. one attention node with fixed shapes) compile as they
    # are; the reason is kept so `generate` can say why the program has no KV cache.
    past_syms = {bare_symbol(v.shape[2]) for v in pasts}
    reason = None
    if len(past_syms) != 1 or None in past_syms:
        reason = (f"past inputs {[v.name for v in pasts]} do not share one symbolic sequence dim "
                  f"(got {sorted(map(str, {v.shape[2] for v in pasts}))})")
    elif ids is None or ids.type.rank != 2 or ids.dtype not in (DType.i64, DType.i32):
        reason = f"no input_ids [batch, seq] integer input (inputs: {[v.name for v in graph.inputs]})"
    elif bare_symbol(ids.shape[0]) is None or bare_symbol(ids.shape[1]) is None:
        reason = f"input_ids must have symbolic [batch, seq] dims for generation, got {ids.type}"
    else:
        others = [v.name for v in graph.inputs if v not in pasts and v.name not in ROLE_INPUTS]
        if others:
            reason = (f"input(s) {others} have no role in generation (known: {', '.join(ROLE_INPUTS)} and the "
                      f"past key/value inputs)")
    if reason is not None:
        graph.meta["llm_refused"] = reason
        ctx.messages.append(f"[{NAME}] past inputs but no generation interface: {reason}")
        return False
    return _rewrite(graph, ctx, ids, pasts, past_syms.pop())


def _rewrite(graph: Graph, ctx, ids: Value, pasts: list[Value], past_sym: str | None) -> bool:
    """Replace the role inputs by computed values; record graph.meta["llm"] and the symbol bounds."""
    batch_sym, seq_sym = bare_symbol(ids.shape[0]), bare_symbol(ids.shape[1])
    seq, batch = Sym.symbol(seq_sym), Sym.symbol(batch_sym)
    past = Sym.symbol(past_sym) if past_sym else 0  # without past, every run starts at position 0
    total = past + seq
    # Exporters often name the mask length on its own (`total`, `past_sequence_length + 1`): it is past+seq.
    mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    if mask is not None and mask.type.rank == 2:
        t = bare_symbol(mask.shape[1])
        if t is not None and t not in (past_sym, seq_sym, batch_sym):
            graph.substitute_symbols({t: total})
            ctx.log(NAME, f"attention_mask length {t} = {total}")
    first = graph.nodes[0] if graph.nodes else None
    replaced = []
    for v in list(graph.inputs):
        if v.name == "attention_mask":
            _expect(v, (batch, total))
            ones = graph.add_node("ConstantOfShape", [_sym_const(graph, [batch, total], "mask_shape")],
                                  {"value": 1.0, "dtype": str(v.dtype)}, name="llm/attention_mask", before=first)
            new = ones.output
        elif v.name == "position_ids":
            _expect(v, (batch, seq), (1, seq))
            pos = _positions(graph, past, seq, v.dtype, first)
            unsq = graph.add_node("Unsqueeze", [pos], {"axes": [0]}, name="llm/positions_row", before=first).output
            new = graph.add_node("Expand", [unsq, _sym_const(graph, list(v.shape), "positions_shape")],
                                 name="llm/position_ids", before=first).output
        elif v.name == "cache_position":
            _expect(v, (seq,))
            new = _positions(graph, past, seq, v.dtype, first)
        else:
            continue
        graph.replace_uses(v, new, outputs=False)
        graph.inputs.remove(v)
        replaced.append(v.name)
    graph.toposort()
    capacity = int(ctx.options.get("max_context") or DEFAULT_CONTEXT)
    graph.meta["llm"] = {"batch": batch_sym, "seq": seq_sym, "past": past_sym, "n_logits": "n_logits",
                         "capacity": capacity, "input_ids": ids.name, "kv_cache": False,
                         "logits": graph.meta.get("output_names", [graph.outputs[0].name])[0]}
    bounds = ctx.symbol_bounds
    explicit = set(ctx.options.get("explicit_bounds", ()))
    if past_sym:
        # the cache is allocated for the batch bound: one sequence unless asked for more
        if batch_sym not in explicit and "*" not in explicit:
            bounds[batch_sym] = int(ctx.options.get("batch", 1))
        bounds[past_sym] = capacity
        bounds[seq_sym] = min(bounds.get(seq_sym, capacity), capacity)
    else:  # recomputing generation runs the whole context at once: the context is the seq bound
        graph.meta["llm"]["recompute"] = True
        if seq_sym in explicit or "*" in explicit:
            graph.meta["llm"]["capacity"] = capacity = min(capacity, bounds[seq_sym])
        bounds[seq_sym] = capacity
    bounds["n_logits"] = bounds[seq_sym]
    ctx.log(NAME, f"decoder with {len(pasts)} past inputs{f' (symbol {past})' if past_sym else ''}; computed "
                  f"{replaced or 'no inputs'}; context {capacity}")
    return True


def _expect(v: Value, *shapes) -> None:
    if tuple(v.shape) not in [tuple(s) for s in shapes]:
        want = " or ".join("[" + ",".join(map(str, s)) + "]" for s in shapes)
        raise UnsupportedError(f"input {v.name!r} has shape {v.type}, expected {want} for generation")


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    llm_interface(graph, ctx)
