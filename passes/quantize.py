"""quantize: Linear with a constant weight -> QLinear with the weights of the `--qm` scheme.

    Linear(x, W[K,N], b?)  ->  QLinear(x, q, scales, zeros?, b?) {bits, group_size, act}

The policy: every Linear with a constant f32 weight, except those `--keep-fp32` names. A pattern is
an fnmatch pattern matched against the node's name and its weight's name, or `lm_head`: the Linear whose
result is the model's output (found by structure: through views and slices to a graph output). Weights
are rounded to nearest (ir/ops/quant.py: quantize_int4 / quantize_int8); calibration passes that run
before (awq, smoothquant) have already rescaled and clipped them in fp32. Options (ctx.options):
group_size (default: the target's), asym (zero points), keep_fp32 (patterns).
ctx.stats["quantize"] = {"linears": n, "kept_fp32": [names], "weight_bytes": quantized bytes}.
"""
from __future__ import annotations

import fnmatch

import numpy as np

from ..ir.core import Graph, Node
from ..ir.dtypes import DType
from ..ir.ops.quant import quantize_int4, quantize_int8
from . import register_pass
from .rewrite_utils import replace_value
from .schemes import get_scheme

NAME = "quantize"
_VIEWS = ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Slice")


def lm_head_nodes(graph: Graph) -> set[int]:
    """ids of Linear nodes whose output reaches a graph output through views only."""
    out = set()
    for o in graph.outputs:
        v = o
        while v.producer is not None and v.producer.op in _VIEWS:
            v = v.producer.inputs[0]
        if v.producer is not None and v.producer.op == "Linear":
            out.add(id(v.producer))
    return out


def kept(node: Node, patterns: tuple[str, ...], heads: set[int]) -> str | None:
    """The pattern that keeps `node` in fp32, if any."""
    for p in patterns:
        if p == "lm_head" and id(node) in heads:
            return p
        if fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(node.inputs[1].name, p):
            return p
    return None


def quantizable(node: Node) -> bool:
    if node.op != "Linear":
        return False
    w = node.inputs[1]
    return (w.is_const and w.const.dtype == np.float32 and w.type.rank == 2
            and node.inputs[0].dtype == DType.f32)


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    scheme = get_scheme(ctx.qm)
    if scheme.weight_bits is None:
        return
    opts = ctx.options
    group = int(opts.get("group_size") or getattr(ctx.target, "default_group_size", 32))
    asym = bool(opts.get("asym"))
    patterns = tuple(opts.get("keep_fp32") or ())
    heads = lm_head_nodes(graph)
    count, kept_names, nbytes = 0, [], 0
    for node in list(graph.nodes):
        if not quantizable(node):
            continue
        why = kept(node, patterns, heads)
        if why is not None:
            kept_names.append(node.name)
            ctx.log(NAME, f"{node.name}: kept in fp32 (--keep-fp32 {why})")
            continue
        x, w = node.inputs[0], node.inputs[1]
        bias = node.input(2)
        k = w.shape[0]
        if scheme.weight_bits == 4:
            q, scales, zeros = quantize_int4(w.const, group, symmetric=not asym)
            gs = group
        else:
            (q, scales), zeros, gs = quantize_int8(w.const), None, k
        base = w.name
        ins = [x, graph.add_const(q, base + ".q"), graph.add_const(scales, base + ".scales"),
               None if zeros is None else graph.add_const(zeros, base + ".zeros"), bias]
        while ins and ins[-1] is None:
            ins.pop()
        new = graph.add_node("QLinear", ins, {"bits": scheme.weight_bits, "group_size": gs, "act": scheme.act},
                             name=node.name, before=node)
        replace_value(graph, node.output, new.output)
        graph.remove_nodes([node])
        nbytes += q.size * scheme.weight_bits // 8 + scales.size * 2 + (0 if zeros is None else zeros.size)
        count += 1
    graph.remove_unused_constants()
    ctx.stats[NAME] = {"linears": count, "kept_fp32": kept_names, "weight_bytes": nbytes}
    ctx.log(NAME, f"{count} Linear -> QLinear ({scheme.name}, group {group if scheme.grouped else 'per channel'}"
                  f"{', asymmetric' if asym else ''}); {len(kept_names)} kept in fp32")
