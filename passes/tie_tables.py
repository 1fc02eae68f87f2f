"""tie-tables: a tied embedding and LM head stored once.

Models with tied word embeddings (the bundled demo, Llama-3.2-1B, Qwen2, Gemma) read one matrix twice: the
embedding gathers its rows, the LM head multiplies by its transpose. Exporters write it twice (the Gather's
table [V, K] and the MatMul's [K, V] initializer), so after quantize it is two sets of constants: a QGather's
and a QLinear's, both [V, K] codes with per-row scales. Where the two are equal (the same bits and group,
codes, scales and zero points: the same rounding of the same values), the QGather takes the QLinear's
constants and layout "linear", and the target's qgather kernel reads the rows out of the Linear's packed
weights: weights.bin holds the matrix once. On the demo model that is 1.05 MB of its 4.65 MB (the default
mix keeps both at 8 bits).

They differ, and both stay, where a pass changed one of them: a calibration pass that rescaled or clipped the
LM head (AWQ folds its scales into the final norm and the head's rows), or GPTQ rounding the head's codes
against its inputs. The embedding must not take those codes: they were chosen for products with the
calibration activations, not for rows read on their own.

Asked of the target (`tied_tables`: a qgather kernel for the Linear's packed layout, the CPUs); elsewhere a
no-op. Runs after quantize (gptq before it made the LM head's final codes) and before quantize-activations,
which keeps the QLinear's constants as they are.

ctx.stats["tie-tables"] = {"tied": [[gather name, linear name]], "saved_bytes": bytes}
"""
from __future__ import annotations

import numpy as np

from ..frontend.mapped import release
from ..ir.core import Graph, Node, Value
from . import register_pass
from .quantize import embedding, layer_bytes, lm_head_nodes, weight_of

NAME = "tie-tables"
# Elements compared at a time: a large vocabulary's codes (a mapped spill file) are read in bounded slices.
CHUNK_ELEMENTS = 1 << 24
# The constants of a quantized Linear: the index of its codes; scales and zero points follow.
_WEIGHT_INPUT = {"QLinear": 1, "QLinearI8": 3}


def _operands(node: Node) -> tuple[Value, Value, Value | None]:
    """(codes, scales, zero points or None) of a QGather or a quantized Linear."""
    i = 1 if node.op == "QGather" else _WEIGHT_INPUT[node.op]
    return node.inputs[i], node.inputs[i + 1], node.input(i + 2)


def _equal(a: Value | None, b: Value | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.const is None or b.const is None or a.const.shape != b.const.shape or a.const.dtype != b.const.dtype:
        return False
    x, y = a.const.reshape(-1), b.const.reshape(-1)
    for lo in range(0, x.size, CHUNK_ELEMENTS):
        same = np.array_equal(x[lo:lo + CHUNK_ELEMENTS], y[lo:lo + CHUNK_ELEMENTS])
        release(x[lo:lo + CHUNK_ELEMENTS])
        release(y[lo:lo + CHUNK_ELEMENTS])
        if not same:
            return False
    return True


def same_table(table: Value, weight: Value) -> bool:
    """Whether an embedding table [V, K] is the transpose of a Linear weight [K, V] (a tied LM head, before
    quantization: bit-allocation plans for one copy), compared a band of rows at a time."""
    t, w = table.const, weight.const
    if t is None or w is None or t.ndim != 2 or w.shape != t.shape[::-1] or t.dtype != w.dtype:
        return False
    step = max(1, CHUNK_ELEMENTS // max(t.shape[1], 1))
    for lo in range(0, t.shape[0], step):
        same = np.array_equal(t[lo:lo + step], w[:, lo:lo + step].T)
        release(t[lo:lo + step])
        if not same:
            return False
    return True


def tied_heads(graph: Graph, target) -> set[str]:
    """Names of the LM heads (float Linears, before quantization) whose weight is an embedding table's
    transpose, on a target that stores such a matrix once (gptq leaves them to round-to-nearest)."""
    if not getattr(target, "tied_tables", False):
        return set()
    heads = lm_head_nodes(graph)
    tables = [weight_of(n) for n in graph.nodes if embedding(n)]
    return {n.name for n in graph.nodes if id(n) in heads and any(same_table(t, weight_of(n)) for t in tables)}


def tied_linear(gather: Node, linears: list[Node]) -> Node | None:
    """The quantized Linear whose constants equal the QGather's (scales first: they are small), or None."""
    q, scales, zeros = _operands(gather)
    for lin in linears:
        lq, ls, lz = _operands(lin)
        if (lin.attrs["bits"] != gather.attrs["bits"] or lin.attrs["group_size"] != gather.attrs["group_size"]
                or lq.type != q.type):
            continue
        if _equal(scales, ls) and _equal(zeros, lz) and _equal(q, lq):
            return lin
    return None


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    if not getattr(ctx.target, "tied_tables", False):
        return
    linears = [n for n in graph.nodes if n.op in _WEIGHT_INPUT and _operands(n)[0].const is not None]
    tied, saved = [], 0
    for node in [n for n in graph.nodes if n.op == "QGather" and n.attrs.get("layout", "rows") == "rows"]:  # collect
        lin = tied_linear(node, linears)
        if lin is None:
            continue
        q, _, zeros = _operands(node)
        node.inputs[1:] = [v for v in _operands(lin) if v is not None]  # commit
        node.attrs["layout"] = "linear"
        tied.append([node.name, lin.name])
        saved += layer_bytes(*q.shape, node.attrs["bits"], node.attrs["group_size"], zeros is not None)
        ctx.log(NAME, f"{node.name}: reads the table of {lin.name} ({q.shape[0]} x {q.shape[1]}, "
                      f"{node.attrs['bits']}-bit)")
    if tied:
        graph.remove_unused_constants()  # clean up: the gathers' own tables
        ctx.stats[NAME] = {"tied": tied, "saved_bytes": saved}
