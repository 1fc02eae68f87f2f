"""quantize-activations: quantize each activation once, however many QLinear read it.

    QLinear(x, q, s, z?, b?) {act: i8_group | i8_tensor, act_group}
        -> xq, xs, xsum = QuantizeActs(x) {group_size: the activation group, per_tensor, pad_to}
           QLinearI8(xq, xs, xsum, q, s, z?, b?) {act_group}

QLinear nodes that read the same x with the same activation grouping share one QuantizeActs (the q, k
and v projections of a layer, or gate and up), so int8 activations are computed once per row and reused
by every output column of every projection. pad_to is the target's K block (`Target.k_block`): the
kernels read whole blocks, so the int8 rows are zero padded to it. Results are identical to QLinear's
(the same arithmetic, ir/ops/quant.py). ctx.stats["quantize-activations"] = number of QuantizeActs.
"""
from __future__ import annotations

from ..ir.core import Graph
from ..ir.ops.quant import act_group_of
from . import register_pass
from .rewrite_utils import replace_value

NAME = "quantize-activations"


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    pad_to = int(getattr(ctx.target, "k_block", 1) or 1)
    shared: dict[tuple, tuple] = {}
    for node in list(graph.nodes):
        if node.op != "QLinear" or node.attrs["act"] not in ("i8_group", "i8_tensor"):
            continue
        x = node.inputs[0]
        per_tensor = int(node.attrs["act"] == "i8_tensor")
        group = x.shape[-1] if per_tensor else act_group_of(node.attrs)
        key = (id(x), group, per_tensor)
        if key not in shared:
            producer_node = graph.add_node("QuantizeActs", [x], {"group_size": group, "per_tensor": per_tensor,
                                                                 "pad_to": pad_to},
                                           name=f"{x.name}/quantize", before=node,
                                           out_names=[f"{x.name}.q", f"{x.name}.scale", f"{x.name}.sum"])
            shared[key] = tuple(producer_node.outputs)
        new = graph.add_node("QLinearI8", [*shared[key], *node.inputs[1:]],
                             {"bits": node.attrs["bits"], "group_size": node.attrs["group_size"],
                              "per_tensor": per_tensor, "act_group": node.attrs.get("act_group", 0)},
                             name=node.name, before=node)
        replace_value(graph, node.output, new.output)
        graph.remove_nodes([node])
    ctx.stats[NAME] = len(shared)
    if shared:
        ctx.log(NAME, f"{len(shared)} QuantizeActs shared by the int8 QLinear nodes")
