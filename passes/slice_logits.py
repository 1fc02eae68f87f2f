"""slice-logits: compute the LM head only for the positions whose logits are wanted.

For a language-model program (graph.meta["llm"]: a KV cache, or recomputing generation), the logits output is Linear(h, W) with h
[batch, seq, hidden]. Generation needs the last position's logits only; perplexity needs all. The
Linear's input becomes Slice(h, seq - n_logits, seq) on the sequence axis, where the symbol `n_logits`
is bound at run time (tcc_model_set_logits_rows: min(rows, seq), 0 = all), so the vocabulary-sized
product runs on n_logits rows instead of seq. Anything between the Linear and the output, or a Linear
whose input is not [batch, seq, hidden], is left alone (logged).
"""
from __future__ import annotations

import numpy as np

from ..ir.core import Graph
from ..ir.dims import Sym
from . import register_pass
from .rewrite_utils import producer

NAME = "slice-logits"


def slice_logits(graph: Graph, ctx) -> bool:
    llm = graph.meta.get("llm")
    if not llm or not (llm.get("kv_cache") or llm.get("recompute")) or llm.get("sliced_logits"):
        return False
    out = graph.outputs[0]
    lin = producer(out, "Linear")
    seq, n = Sym.symbol(llm["seq"]), Sym.symbol(llm["n_logits"])
    if lin is None or lin.inputs[0].type.rank != 3 or lin.inputs[0].shape[1] != seq:
        ctx.messages.append(f"[{NAME}] not applied: the logits are not Linear([batch, seq, hidden])")
        return False
    h = lin.inputs[0]
    sl = graph.add_node("Slice", [h, graph.add_const(np.array([seq - n], dtype=object), "logits_start"),
                                  graph.add_const(np.array([seq], dtype=object), "logits_end"),
                                  graph.add_const(np.array([1], np.int64), "logits_axis")],
                        name="llm/last_positions", before=lin)
    new = graph.add_node("Linear", [sl.output] + lin.inputs[1:], dict(lin.attrs), name=lin.name, before=lin)
    graph.replace_uses(out, new.output)
    graph.remove_nodes([lin])
    llm["sliced_logits"] = True
    ctx.log(NAME, f"LM head {lin.inputs[1].type} runs on the last n_logits positions")
    return True


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    slice_logits(graph, ctx)
