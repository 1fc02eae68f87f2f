"""fuse-norm-quantize: normalize and quantize an activation row in one kernel.

    y = RMSNorm(x, gamma) {axis: last}            xq, xs, xsum = NormQuantize(x, gamma)
    xq, xs, xsum = QuantizeActs(y) {per group}  ->   {norm: rmsnorm, eps, group_size, pad_to}

(and LayerNorm with its beta.) The int8 layers of a decoder read every normalized activation only
through its QuantizeActs (quantize-activations shares one per input), so the f32 normalized rows need
never reach memory: the kernel normalizes a row into a per-thread buffer and quantizes it from there.
Same arithmetic as the two kernels (the same row functions, so bit-exact with the unfused program).

Refused when y has another consumer or is a graph output (the f32 rows are needed), when the norm is
not over the last axis only, when its parameters do not have one value per column, and for per-tensor
activations (w8a8: the tensor's amax needs every row before any row can be quantized).
ctx.stats["fuse-norm-quantize"] = number of fusions.
"""
from __future__ import annotations

from ..ir.core import Graph, Node
from . import register_pass
from .rewrite_utils import only_consumer, replace_value

NAME = "fuse-norm-quantize"
NORMS = {"RMSNorm": "rmsnorm", "LayerNorm": "layernorm"}


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    users = graph.users()
    matches: list[tuple[Node, Node]] = []  # collect
    for node in graph.nodes:
        if node.op == "QuantizeActs" and not node.attrs["per_tensor"]:
            norm = _fusable_norm(graph, users, node)
            if norm is not None:
                matches.append((norm, node))
    for norm, quant in matches:  # commit
        attrs = {"norm": NORMS[norm.op], "axis": -1, "eps": norm.attrs["eps"],
                 "group_size": quant.attrs["group_size"], "pad_to": quant.attrs["pad_to"]}
        fused = graph.add_node("NormQuantize", list(norm.inputs), attrs, name=norm.name, before=quant,
                               out_names=[v.name + ".fused" for v in quant.outputs])
        for old, new in zip(quant.outputs, fused.outputs):
            replace_value(graph, old, new)
        graph.remove_nodes([quant, norm])
        ctx.log(NAME, f"{norm.op} {norm.name!r} + QuantizeActs {quant.name!r} -> NormQuantize")
    ctx.stats[NAME] = len(matches)


def _fusable_norm(graph: Graph, users, quant: Node) -> Node | None:
    y = quant.inputs[0]
    norm = y.producer
    if norm is None or norm.op not in NORMS or only_consumer(users, graph, y) is not quant:
        return None
    x = norm.inputs[0]
    rank = x.type.rank
    if norm.attrs["axis"] not in (-1, rank - 1):
        return None
    cols = x.shape[-1]
    if any(p is not None and p.type.numel != cols for p in norm.inputs[1:]):
        return None
    return norm
