"""float16: compute in fp16 on a target whose activations are fp16 (backends.Capabilities.activations).

A GPU reads every weight and activation once per token, so fp16 halves the traffic of fp32; TinyChat's
W4A16 and the fp16 baseline both keep the whole network in fp16, with fp32 accumulation inside the kernels
(dot products, norms' sums, softmax). This pass makes that graph from an fp32 one, after quantization (the
quantize pass models fp16 activations in its error simulation when the scheme's act is f16):

- every f32 constant becomes f16, its finite values clamped to +-65504 (an fp32 mask constant of -3.4e38
  stays a large negative number instead of -inf: -inf + -inf stays -inf but inf - inf would be NaN);
- every f32 state (the KV cache) becomes f16: half the memory of an fp32 cache;
- a Cast to f32 becomes a Cast to f16, a ConstantOfShape or QGather of f32 one of f16 (a quantized weight's
  scales stay f32: the quant ops' contract);
- the graph's f32 inputs are cast to f16 where the graph starts, and its f32 outputs are computed in f16 and
  cast to f32 at the end, so the program's interface (and every caller) is unchanged;
- every node's output types are then inferred again in program order, so a type that does not follow from
  its inputs cannot survive (verify() runs after the pass);
- a Cast left converting f16 to f16 is dropped (an fp16 export is imported at f32 activations like a
  quantized one: its weights stay f16 behind widening Casts, which this makes no-ops), and a MatMul then
  reading a constant f16 matrix becomes the Linear canonicalize makes of an fp32 export's MatMul.

A no-op for targets that compute in fp32 (the CPUs).
"""
from __future__ import annotations

import numpy as np

from ..backends import capabilities
from ..ir.core import Graph
from ..ir.dtypes import DType
from ..ir.registry import infer_types
from . import register_pass

F16_MAX = 65504.0
# Inputs that keep f32 whatever the activations: a quantized weight's scales (f32 holding fp16 values, the
# quant ops' contract in ir/ops/quant.py; the backend's packer stores them as fp16).
KEEP_F32_INPUTS = {"QLinear": (2,), "QGather": (2,)}
# Ops whose attribute names the float type they produce.
DTYPE_ATTRS = {"Cast": "to", "ConstantOfShape": "dtype", "QGather": "dtype"}


def to_f16(data: np.ndarray) -> np.ndarray:
    """An fp32 array in fp16, finite values clamped to the fp16 range."""
    clamped = np.where(np.isfinite(data), np.clip(data, -F16_MAX, F16_MAX), data)
    return clamped.astype(np.float16)


@register_pass("float16")
def float16(graph: Graph, ctx) -> None:
    if capabilities(ctx.target).activations != "f16":
        return
    per_scheme = getattr(ctx.target, "activations_for", None)  # a target whose schemes differ (metal: w4a32)
    if per_scheme is not None and per_scheme(ctx.qm) != "f16":
        return
    interface = _cast_interface(graph)
    keep = {id(n.inputs[i]) for n in graph.nodes for i in KEEP_F32_INPUTS.get(n.op, ()) if i < len(n.inputs)}
    for v in [*graph.constants.values(), *graph.states.values()]:
        if v.dtype == DType.f32 and id(v) not in keep:
            if v.const is not None:
                v.const = to_f16(v.const)
            v.type = v.type.with_dtype(DType.f16)
    for node in graph.nodes:
        attr = DTYPE_ATTRS.get(node.op)
        if attr is not None and id(node) not in interface and node.attrs.get(attr, "f32") == "f32":
            node.attrs[attr] = "f16"
        for out, t in zip(node.outputs, infer_types(node, len(node.outputs))):
            out.type = t
    dropped = _drop_noop_casts(graph, interface)
    ctx.log("float16", f"computes in fp16 ({len(interface)} interface casts, {dropped} no-op casts dropped)")


def _drop_noop_casts(graph: Graph, interface: set) -> int:
    """Casts that now convert f16 to f16 (an fp16 export's widening Casts of its weights, its own casts to
    f32) read their input directly: a kernel would copy, and the weight would be read twice."""
    noop = [n for n in graph.nodes if n.op == "Cast" and id(n) not in interface
            and n.inputs[0].dtype == n.outputs[0].dtype]
    for n in noop:
        graph.replace_uses(n.outputs[0], n.inputs[0])
    graph.remove_nodes(noop)
    _linears(graph)
    graph.remove_unused_constants()
    return len(noop)


def _linears(graph: Graph) -> None:
    """MatMul(x, W) with W now a constant f16 matrix (it was behind a widening Cast when canonicalize ran)
    -> Linear(x, W), as canonicalize makes of an fp32 export's: the backend's Linear kernels and packing."""
    for mm in [n for n in graph.nodes if n.op == "MatMul"]:
        x, w = mm.inputs
        if w.is_const and w.dtype == DType.f16 and w.type.rank == 2 and x.dtype == DType.f16 and x.type.rank >= 2:
            lin = graph.add_node("Linear", [x, w], name=mm.name, before=mm)
            graph.replace_uses(mm.outputs[0], lin.outputs[0])
            graph.remove_nodes([mm])


def _cast_interface(graph: Graph) -> set:
    """Cast the f32 graph inputs to f16 where the graph starts and the f32 outputs back to f32 at the end;
    returns the ids of those Cast nodes (they keep their types)."""
    casts = set()
    first = graph.nodes[0] if graph.nodes else None
    for x in graph.inputs:
        if x.dtype == DType.f32 and first is not None:
            cast = graph.add_node("Cast", [x], {"to": "f16"}, name=f"{x.name}/to_f16", before=first)
            graph.replace_uses(x, cast.output, outputs=False)
            cast.inputs[0] = x
            casts.add(id(cast))
    for y in list(graph.outputs):
        if y.dtype == DType.f32 and y.producer is not None:
            cast = graph.add_node("Cast", [y], {"to": "f32"}, name=f"{y.name}/to_f32")
            graph.replace_uses(y, cast.output)  # the output keeps its public name
            cast.inputs[0] = y
            casts.add(id(cast))
    return casts
