"""quantize: Linear with a constant weight -> QLinear with the weights of the `--qm` scheme.

    Linear(x, W[K,N], b?)  ->  QLinear(x, q, scales, zeros?, b?) {bits, group_size, act}

    Gather(table[V,K], ids) {axis 0}, table constant  ->  QGather(ids, q, scales, zeros?)   (embeddings)

The policy: every Linear with a constant f32 weight, every MatMul of an fp16 export with a constant f16
weight, directly (f16 activations: the layer runs at f32 between Casts) or through the widening Cast the
importer puts on it (`import_onnx(widen_f16=True)`, what the driver does under --qm; a bf16 export's
weights always come so), quantized from fp16 / bf16 a slice at a time, never copied whole to fp32, and
every row lookup in a constant f32, f16 or bf16 table (an embedding: its rows are dequantized as they are
gathered), except those `--keep-fp32` names. A bf16 weight left unquantized is converted to f32 (no
backend computes in bf16). Slices are contiguous in the source (row bands of whole groups of a [K, N]
weight, rows of a table), so a mapped export is read once, in order. A pattern
is an fnmatch pattern matched against the node's name and its weight's name, or `lm_head`: the Linear
whose result is the model's output (found by structure: through views and slices to a graph output),
or `embed`: every quantizable Gather. Weights
are rounded to nearest (ir/quant_arith.py: quantize_int4 / quantize_int8; symmetric int4 groups with its scale
search, unless AWQ's clipping search ran: `scale_search`); calibration passes that run before (awq,
smoothquant) have already rescaled and clipped them in fp32. Options (ctx.options):
group_size (default: the target's), asym (zero points), keep_fp32 (patterns).
Per layer precision: the layers the bit-allocation pass chose (ctx.stats["bit-allocation"]["eight_bit"])
get 8-bit weights inside a 4-bit scheme: int8 rows (QGather bits 8) for a table, a QLinear {bits 8, act:
the allocation's eight_bit_act} for a Linear.
ctx.stats["quantize"] = {"linears": n (Linear and Gather nodes), "kept_fp32": [names], "weight_bytes": bytes
(codes, scales and zero points as weights.bin stores them: `layer_bytes`), "bits": {name: bits}}.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.dtypes import DType
from ..ir.quant_arith import quantize_int4, quantize_int8
from ..frontend.mapped import Spill, release, spill_converted
from . import register_pass
from .rewrite_utils import replace_value
from .schemes import ACT_ROW, act_group_for, get_scheme, group_size

NAME = "quantize"
_FLOATS = (DType.f32, DType.f16, DType.bf16)  # weights quantized from their own precision, a slice at a time
_HALVES = (DType.f16, DType.bf16)  # what an fp16 / bf16 export's weights are stored in
# Output channels quantized at once come to at most this many weights (a 16 MB fp32 working copy): a
# 128k-row embedding is quantized in slices, not as one 2 GB fp32 array.
CHUNK_ELEMENTS = 1 << 22
# A [K, N] weight of more than this many weights (a vocabulary's lm_head) has its quantized bands staged in
# a file, not in memory, until they are assembled: its codes alone take a byte per weight.
STAGE_ELEMENTS = 1 << 26
_VIEWS = ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Slice")


def lm_head_nodes(graph: Graph) -> set[int]:
    """ids of Linear nodes (and fp16 MatMuls) whose output reaches a graph output through views only."""
    out = set()
    for o in graph.outputs:
        v = o
        while v.producer is not None and v.producer.op in _VIEWS:
            v = v.producer.inputs[0]
        if v.producer is not None and (v.producer.op == "Linear" or fp16_matmul(v.producer)):
            out.add(id(v.producer))
    return out


def kept(node: Node, patterns: tuple[str, ...], heads: set[int]) -> str | None:
    """The pattern that keeps `node` in fp32, if any."""
    weight = weight_of(node)
    for p in patterns:
        if (p == "lm_head" and id(node) in heads) or (p == "embed" and node.op == "Gather"):
            return p
        if fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(weight.name, p):
            return p
    return None


def embedding(node: Node) -> bool:
    """A row lookup in a constant f32 table: Gather(table[V, K], ids) on axis 0."""
    if node.op != "Gather" or node.attrs.get("axis", 0) not in (0, -2):
        return False
    t = widened(node.inputs[0]) or node.inputs[0]
    return t.is_const and t.dtype in _FLOATS and t.type.rank == 2 and not node.inputs[1].is_const


def widened(v: Value) -> Value | None:
    """W for Cast{to f32}(W), W a constant f16 or bf16 matrix: a weight of an fp16 or bf16 model imported
    with f32 activations (frontend/onnx_import.py, widen_f16); None for anything else."""
    p = v.producer
    if p is not None and p.op == "Cast" and p.attrs.get("to") == "f32" and p.inputs[0].is_const \
            and p.inputs[0].dtype in _HALVES and p.inputs[0].type.rank == 2:
        return p.inputs[0]
    return None


def weight_of(node: Node) -> Value:
    """The constant a quantizable node's weight is read from (through a widening Cast)."""
    v = node.inputs[0] if node.op == "Gather" else node.inputs[1]
    return widened(v) or v


def quantizable(node: Node) -> bool:
    if node.op != "Linear":
        return False
    w = node.inputs[1]
    return (w.is_const and w.const.dtype == np.float32 and w.type.rank == 2
            and node.inputs[0].dtype == DType.f32)


def fp16_matmul(node: Node) -> bool:
    """MatMul(x f16 [..., K], W [K, N] constant f16): an fp16 export's Linear (canonicalize makes Linear of
    f32 ones only). Quantized like a Linear, between Casts."""
    if node.op != "MatMul" or len(node.inputs) != 2:
        return False
    x, w = node.inputs
    if x.dtype == DType.f32 and widened(w) is not None:  # the same, imported with f32 activations
        return x.type.rank >= 2
    return w.is_const and w.dtype == DType.f16 and w.type.rank == 2 and x.dtype == DType.f16 and x.type.rank >= 2


def _as_f32(graph: Graph, v: Value | None, before: Node) -> Value | None:
    """v itself if f32; else f32 (a converted constant, or a Cast before `before`)."""
    if v is None or v.dtype == DType.f32:
        return v
    if v.is_const:
        return graph.add_const(np.asarray(v.const, np.float32), v.name + ".f32")
    return graph.add_node("Cast", [v], {"to": "f32"}, before=before).output


def _back_to(graph: Graph, y: Value, dtype: DType, before: Node) -> Value:
    """y (f32) in the replaced node's dtype: an fp16 model's activations stay fp16 between its layers."""
    if dtype == DType.f32:
        return y
    return graph.add_node("Cast", [y], {"to": str(dtype)}, before=before).output


def emit_qlinear(graph: Graph, node: Node, w: Value, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                 attrs: dict) -> Node:
    """Linear (or an fp16 export's MatMul) `node` with weight constant `w` -> QLinear(x, q, scales, zeros?, b?)
    {attrs: bits, group_size and act_attrs'}: the node this pass makes, also for a pass that rounds the weights
    itself (passes/gptq.py). This pass leaves the QLinear alone. An fp16 model's MatMul: the quantized layer
    runs at f32 activations between Casts."""
    qin = [graph.add_const(q, w.name + ".q"), graph.add_const(scales, w.name + ".scales"),
           None if zeros is None else graph.add_const(zeros, w.name + ".zeros")]
    ins = [_as_f32(graph, node.inputs[0], node), *qin, _as_f32(graph, node.input(2), node)]
    while ins[-1] is None:
        ins.pop()
    new = graph.add_node("QLinear", ins, attrs, name=node.name, before=node)
    replace_value(graph, node.output, _back_to(graph, new.output, node.output.dtype, node))
    graph.remove_nodes([node])
    return new


def act_attrs(scheme, bits: int, act: str, k: int) -> dict:
    """QLinear's activation attributes: the scheme's (act_group_for), or for an 8-bit layer of a 4-bit
    scheme (bit-allocation) the 8-bit kernels' int8 activations, one scale per row as w8a8's."""
    if bits != scheme.weight_bits and act == "i8_group":
        scheme = dataclasses.replace(scheme, act_group=ACT_ROW)
    ag = act_group_for(scheme, k)
    return {"act": act, **({"act_group": ag} if ag else {})}


def band_ranges(k: int, n: int, align: int) -> list[tuple[int, int]]:
    """[lo, hi) row bands of a [K, N] weight: about CHUNK_ELEMENTS weights each, `align` rows a multiple."""
    rows = max(align, CHUNK_ELEMENTS // max(n, 1) // align * align)
    return [(lo, min(k, lo + rows)) for lo in range(0, k, rows)]


def layer_bytes(n: int, k: int, bits: int, group: int, asym: bool) -> int:
    """Bytes weights.bin stores for a [N, K] weight (N output channels or table rows) at `bits`: int4 codes
    two a byte, one fp16 scale per group of K (and a u8 zero point with --asym); int8 codes and one f32
    scale per row."""
    if bits == 8:
        return n * k + 4 * n
    g = -(-k // group)
    return (n * k + 1) // 2 + 2 * n * g + (n * g if asym else 0)


def scale_search(ctx) -> bool:
    """Whether int4 groups take quantize_int4's scale search. Not where AWQ's rescaled weights are then rounded
    to nearest: AWQ chose its scales (and `--awq-clip` its clipped ranges) for the plain rounding (c = 1) it
    simulates, and a different rounding undoes part of that (measured on the demo, w4a8 AWQ with the default
    mix: +0.57% perplexity over fp32 with c = 1, +0.71% with the search; RTN +0.94% -> +0.66%). GPTQ after AWQ
    rounds again with error compensation and gains from it (+0.36% -> +0.24%)."""
    if ctx.options.get("awq_clip"):
        return False
    method = (ctx.options.get("quant_method") or "").split("+")
    return not ("awq" in method and "gptq" not in method)


def int8_scales(amax: np.ndarray) -> np.ndarray:
    """Per output channel scales [N, 1] from max |W| over K: ir/quant_arith.py quantize_int8's arithmetic."""
    return (amax / np.float32(127.0)).astype(np.float32)[:, None]


def int8_codes(w: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Codes of rows w [k, N] under the scales d [N]: quantize_int8's arithmetic, transposed as it is."""
    safe = np.where(d == 0, np.float32(1), d)
    return np.clip(np.rint(np.asarray(w, np.float32) / safe), -127, 127).astype(np.int8)


def widen_leftovers(graph: Graph, spill: Spill) -> None:
    """Cast{to f32}(W), W a bf16 constant left unquantized (--keep-fp32, a weight no Linear reads) -> W in
    f32, converted a slice at a time into the spill file: no backend computes in bf16 (an f16 one stays,
    cast by the kernels)."""
    for node in list(graph.nodes):
        w = node.inputs[0] if node.op == "Cast" and node.attrs.get("to") == "f32" else None
        if w is not None and w.is_const and w.dtype == DType.bf16:
            f32 = graph.add_const(spill_converted(spill, w.const, lambda a: np.asarray(a, np.float32),
                                                  CHUNK_ELEMENTS), w.name + ".f32")
            replace_value(graph, node.output, f32)
            graph.remove_nodes([node])


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    scheme = get_scheme(ctx.qm)
    if scheme.weight_bits is None:
        return
    opts = ctx.options
    group = group_size(ctx)
    asym = bool(opts.get("asym"))
    search = scale_search(ctx)
    patterns = tuple(opts.get("keep_fp32") or ())
    heads = lm_head_nodes(graph)
    alloc = ctx.stats.get("bit-allocation") or {}
    eight = set(alloc.get("eight_bit") or ())
    act8 = alloc.get("eight_bit_act")
    count, kept_names, nbytes, bits_of = 0, [], 0, {}
    jobs = []  # collect: (node, is_embedding, weight value, data to quantize, bits)
    for node in list(graph.nodes):
        is_embedding = embedding(node)
        if not (is_embedding or quantizable(node) or fp16_matmul(node)):
            continue
        why = kept(node, patterns, heads)
        if why is not None:
            kept_names.append(node.name)
            ctx.log(NAME, f"{node.name}: kept in fp32 (--keep-fp32 {why})")
            continue
        w = weight_of(node)
        bits = 8 if node.name in eight and (is_embedding or act8 is not None) else scheme.weight_bits
        jobs.append((node, is_embedding, w, w.const.T if is_embedding else w.const, bits))  # tables: along rows

    spill = Spill()

    def part(data, bits):
        if bits == 4:
            q, scales, zeros = quantize_int4(data, group, symmetric=not asym, search=search)
            return q, scales, zeros
        q, scales = quantize_int8(data)
        return q, scales, None

    def quantize(job):
        """One weight, its codes and scales written to the spill file and the source's mapped pages released
        as it goes: the fp32 copy of a tensor (or of a slice of a large one) lives only while it is being
        quantized. A slice is a contiguous part of the source, so each byte of a mapped file is read once in
        order: row bands of a [K, N] weight (whole groups of K), row ranges of an embedding table."""
        data, bits = job[3], job[4]
        if data.flags.c_contiguous and data.shape[0] > 1:
            return quantize_by_rows(data, bits)
        k, n = data.shape  # a table's transpose: its columns are the table's rows, contiguous
        step = max(1, CHUNK_ELEMENTS // max(k, 1))
        writers = [spill.rows(n) for _ in range(3)]
        for lo in range(0, n, step):
            chunk = data[:, lo:lo + step]
            for w, out in zip(writers, part(chunk, bits)):
                if out is not None:
                    w.write(out)
            release(chunk)
        release(data)
        outs = [None if w.off is None else w.array() for w in writers]
        return (*outs, group if bits == 4 else k)

    def quantize_by_rows(data, bits):
        """W [K, N] a band of rows at a time. int4 bands are whole groups, so each is quantized exactly as
        the whole would be; int8 scales need the whole column, so its bands are read twice (amax, then
        codes): the second reading finds them in the page cache. A band's outputs ([N, rows] codes, [N, g]
        scales) are columns of the results: they are kept (in memory, or for a large weight in a staging
        file of its own) and assembled into the results' rows a slice at a time."""
        k, n = data.shape
        bits4 = bits == 4
        bands = band_ranges(k, n, group if bits4 else 1)
        scales8 = None
        if not bits4:
            amax = np.zeros(n, np.float32)
            for lo, hi in bands:
                np.maximum(amax, np.abs(np.asarray(data[lo:hi], np.float32)).max(axis=0), out=amax)
                release(data[lo:hi])
            scales8 = int8_scales(amax)
        stage = Spill() if n * k > STAGE_ELEMENTS else None  # 1 byte a weight: bounded memory for a vocab
        parts = []
        for lo, hi in bands:
            band = data[lo:hi]
            outs = (quantize_int4(band, group, symmetric=not asym, search=search) if bits4
                    else (int8_codes(band, scales8[:, 0]).T,))
            release(band)
            parts.append([None if o is None else stage.put(o) if stage else o for o in outs])
        release(data)
        writers = [spill.rows(n) for _ in parts[0]]
        step = max(1, CHUNK_ELEMENTS // max(k, 1))
        for n0 in range(0, n, step):
            for i, w in enumerate(writers):
                if parts[0][i] is None:
                    continue  # no zero points (symmetric)
                cols = [p[i][n0:n0 + step] for p in parts]
                w.write(np.concatenate(cols, axis=1))
                for c in cols:
                    release(c)
        outs = [None if w.off is None else w.array() for w in writers]
        if not bits4:
            return outs[0], spill.put(scales8), None, k
        return (*outs, group)

    # numpy releases the GIL in the array loops, so layers quantize in parallel on all cores.
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1) or 1) as pool:
        results = pool.map(quantize, jobs)
        for (node, is_embedding, w, _, bits), (q, scales, zeros, gs) in zip(jobs, results):  # commit, in order
            attrs = {"bits": bits, "group_size": gs}
            if is_embedding:
                qin = [graph.add_const(q, w.name + ".q"), graph.add_const(scales, w.name + ".scales"),
                       None if zeros is None else graph.add_const(zeros, w.name + ".zeros")]
                ins = [node.inputs[1], *qin]
                new = graph.add_node("QGather", ins if ins[-1] is not None else ins[:-1], attrs, name=node.name,
                                     before=node)
                replace_value(graph, node.output, _back_to(graph, new.output, node.output.dtype, node))
                graph.remove_nodes([node])
            else:
                act = act8 if bits != scheme.weight_bits else scheme.act
                emit_qlinear(graph, node, w, q, scales, zeros, {**attrs, **act_attrs(scheme, bits, act, q.shape[1])})
            nbytes += layer_bytes(q.shape[0], q.shape[1], bits, gs, zeros is not None)
            bits_of[node.name] = bits
            count += 1
    widen_leftovers(graph, spill)
    graph.remove_unused_constants()
    ctx.stats[NAME] = {"linears": count, "kept_fp32": kept_names, "weight_bytes": nbytes, "bits": bits_of}
    ctx.log(NAME, f"{count} Linear/Gather -> QLinear/QGather ({scheme.name}, group {group if scheme.grouped else 'per channel'}"
                  f"{', asymmetric' if asym else ''}); {len(kept_names)} kept in fp32")
