"""bit-allocation: which layers of a 4-bit scheme (w4a8, w4a32, w4a16) the quantize pass stores at 8 bits.

Runs after the calibration passes (awq) and before quantize, and changes no node: it writes its choice to
ctx.stats["bit-allocation"]["eight_bit"] (node names), which quantize reads. The 8-bit forms are the
kernels the target already has, found by asking it (`Target.qms`, never its name):
  - an embedding (Gather of a constant table -> QGather): bits 8, int8 rows with one f32 scale per row
    (every target's qgather kernels read 8-bit rows);
  - a Linear: bits 8 with the scheme's own activations where the target runs such a scheme; else, for a
    scheme with int8 activations (w4a8), the activations of an 8-bit scheme the target runs (w8a8's int8
    per tensor: the w8a8 kernels); a float-activation scheme (w4a32, w4a16) has no 8-bit Linear kernel
    with its activations, so its Linear layers stay at 4 bits (only its embeddings can get 8 bits).

The choice (ctx.options["budget_bits"]):
  - None (the default): the embeddings and the LM head at 8 bits (llama.cpp keeps its tied embedding /
    output at 6 bits for the same reason: they are the most sensitive layers of a small model);
  - "pure": every layer at 4 bits (llama.cpp's --pure);
  - a number B: average bits per weight over the quantized weights, scales and zero points included
    (quantize.layer_bytes: what weights.bin stores for them). Starting from all 4-bit, the LM head and then
    the embeddings are upgraded where they fit, then the other layers greedily by measured benefit per
    extra byte while the total stays within B; a layer that does not fit is skipped and smaller ones are
    still tried. B below the all-4-bit figure is an error.
    Why the LM head and embeddings first: per layer errors do not say how much of them reaches the model's
    output, and these two reach it directly. Measured on the demo model (w4a8 AWQ, held-out perplexity vs
    fp32, windows of 256): all 4-bit +1.92% (3.53 MiB); the embedding and LM head at 8 bits +0.68% (4.44
    MiB); the greedy choice alone at 4.8 / 5.2 bits (the attention projections: small layers with the largest
    relative gain) +1.56% (3.73 MiB) / +1.53% (4.03 MiB).

A tied embedding (its table equal to the LM head's weight transposed) on a target that stores it once
(`tied_tables`, passes/tie_tables.py) is planned as part of its head: it takes the head's bits and its bytes and
weights are not counted again (ctx.stats "tied": [[embedding, head]]). Only where the head can have the bits the
embedding would get on its own (8, unless pure): w4a32's head has no 8-bit kernel, so its table stays apart.

The measured benefit of a layer is the drop of its relative error from 4 to 8 bits:
  - with calibration data (--calib): on the calibration rows X of the layer's input (collected with
    passes/smoothing.collect, after AWQ's folds), the output error of the quantized product, activations
    quantized as the kernel will, E_b = ||Q_b(X) Q_b(W) - X W||^2 / ||X W||^2, benefit E_4 - E_8;
  - without data (and for embeddings, whose input is token ids): the relative weight error, unweighted,
    ||Q_b(W) - W||^2 / ||W||^2 (a data-free proxy: it treats every input channel alike).
Relative errors make layers of different scales comparable; dividing by the extra bytes lets a small
sensitive layer win over a large one.

ctx.stats["bit-allocation"] = {"eight_bit": [names], "tied": [[embedding, head]], "layers": {name: bits}, "bits_per_weight": b,
"weight_bytes": bytes, "weights": n, "budget_bits": B or None, "criterion": "default" | "pure" |
"calibration" | "weight-error"}.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import TccError
from ..ir.core import Graph, Node
from ..ir.quant_arith import dequantize, quantize_int4, quantize_int8
from . import register_pass
from .quantize import (embedding, fp16_matmul, kept, layer_bytes, lm_head_nodes, quantizable, scale_search,
                       weight_of)
from .schemes import ACT_ROW, SCHEMES, Scheme, get_scheme, group_size
from .tie_tables import same_table

NAME = "bit-allocation"
PURE = "pure"


class BudgetError(TccError):
    """A --budget-bits the model cannot meet."""


def check_budget(budget) -> float | str | None:
    """None, "pure" or a finite positive number of bits per weight; else a one-line TccError."""
    if budget is None or budget == PURE:
        return budget
    if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
        raise TccError(f"--budget-bits must be a number of bits per weight or 'pure', got {budget!r}")
    try:
        value = float(budget)
    except ValueError:
        raise TccError(f"--budget-bits must be a number of bits per weight (e.g. 4.5) or 'pure', "
                       f"got {budget!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise TccError(f"--budget-bits must be a positive number of bits per weight, got {budget!r}")
    return value


def eight_bit_act(scheme: Scheme, target) -> str | None:
    """The activations of an 8-bit Linear inside `scheme` on `target` (a kernel it has), or None."""
    runs = [SCHEMES[q] for q in getattr(target, "qms", ()) if q in SCHEMES and SCHEMES[q].weight_bits == 8]
    if any(s.act == scheme.act for s in runs):
        return scheme.act
    if scheme.act.startswith("i8"):  # int8 activations already: an 8-bit scheme's int8 activations
        return next((s.act for s in runs if s.act.startswith("i8")), None)
    return None


@dataclasses.dataclass
class Layer:
    node: Node
    is_embedding: bool
    n: int
    k: int
    can8: bool
    bytes4: int = 0
    bytes8: int = 0
    benefit: float = 0.0


def candidates(graph: Graph, ctx) -> list[Layer]:
    """The layers quantize will quantize, in graph order (the same tests, the same --keep-fp32)."""
    patterns = tuple(ctx.options.get("keep_fp32") or ())
    heads = lm_head_nodes(graph)
    out = []
    for node in graph.nodes:
        is_embedding = embedding(node)
        if not (is_embedding or quantizable(node) or fp16_matmul(node)) or kept(node, patterns, heads):
            continue
        rows, cols = weight_of(node).type.shape  # a table [V, K]; a weight [K, N]
        n, k = (rows, cols) if is_embedding else (cols, rows)
        out.append(Layer(node, is_embedding, int(n), int(k), False))
    return out


def _rel_weight_error(w: np.ndarray, bits: int, group: int, asym: bool) -> float:
    """||Q(W) - W||^2 / ||W||^2 of W [K, N] quantized along K."""
    w = np.asarray(w, np.float32)
    if bits == 4:
        q, s, z = quantize_int4(w, group, symmetric=not asym)
        wd = dequantize(q, s, z, 4, group)
    else:
        q, s = quantize_int8(w)
        wd = dequantize(q, s, None, 8, w.shape[0])
    ref = w.astype(np.float64).T
    return float(np.sum((wd - ref) ** 2) / max(np.sum(ref ** 2), 1e-300))


def _rel_output_error(x: np.ndarray, w: np.ndarray, quant) -> float:
    """||Q(X) Q(W) - X W||^2 / ||X W||^2 on rows x, quantized as `quant` (smoothing.Quantizer) does."""
    ref = x.astype(np.float64) @ w.astype(np.float64)
    y = quant.acts(x) @ quant.weight(w)
    return float(np.sum((y - ref) ** 2) / max(np.sum(ref ** 2), 1e-300))


def _calibration_rows(graph: Graph, ctx, layers: list[Layer]) -> dict[int, np.ndarray]:
    """Sample rows of each Linear input (smoothing.collect on one group per distinct input), by node id."""
    from .smoothing import Group, calibration_feeds, collect

    feeds = calibration_feeds(graph, ctx, NAME)
    if feeds is None:
        return {}
    by_input: dict[int, Group] = {}
    for layer in layers:
        if not layer.is_embedding and layer.can8:
            x = layer.node.inputs[0]
            by_input.setdefault(id(x), Group(x, [], ())).linears.append(layer.node)
    groups = list(by_input.values())
    collect(graph, groups, feeds, "bit allocation calibration")
    return {id(n): g.stats["rows"] for g in groups if g.stats for n in g.linears}


def measure(graph: Graph, ctx, layers: list[Layer], scheme: Scheme, act8: str | None, group: int,
            asym: bool) -> str:
    """Fill each upgradable layer's benefit; returns the criterion used for the Linear layers."""
    from .smoothing import Quantizer

    rows = _calibration_rows(graph, ctx, layers)
    q4 = Quantizer(scheme, group, asym, search=scale_search(ctx))  # as the quantize pass will round
    q8 = Quantizer(dataclasses.replace(scheme, weight_bits=8, act=act8 or scheme.act, act_group=ACT_ROW), group, asym)
    for layer in layers:
        if not layer.can8:
            continue
        if layer.is_embedding:
            table = np.asarray(weight_of(layer.node).const, np.float32).T  # [K, V]: rows quantized along K
            layer.benefit = (_rel_weight_error(table, 4, group, asym) - _rel_weight_error(table, 8, group, asym))
            continue
        w = np.asarray(weight_of(layer.node).const, np.float32)  # [K, N], from f16 / bf16 too
        x = rows.get(id(layer.node))
        if x is not None:
            x = np.asarray(x, np.float32)
            layer.benefit = _rel_output_error(x, w, q4) - _rel_output_error(x, w, q8)
        else:
            layer.benefit = _rel_weight_error(w, 4, group, asym) - _rel_weight_error(w, 8, group, asym)
    return "calibration" if rows else "weight-error"


def greedy(layers: list[Layer], limit: float, first: tuple[Layer, ...] = ()) -> set[int]:
    """ids of the layers upgraded to 8 bits: `first` (each where it fits), then the others by benefit per
    extra byte, while the total stays <= limit."""
    total = sum(layer.bytes4 for layer in layers)
    chosen = set()
    order = sorted((layer for layer in layers if layer.can8 and layer.benefit > 0 and layer not in first),
                   key=lambda layer: -layer.benefit / max(layer.bytes8 - layer.bytes4, 1))
    for layer in [*first, *order]:
        extra = layer.bytes8 - layer.bytes4
        if total + extra <= limit:
            chosen.add(id(layer.node))
            total += extra
    return chosen


def protected(layers: list[Layer], heads: set[int]) -> list[Layer]:
    """The layers the default keeps at 8 bits and a budget upgrades first: the LM head, then the embeddings."""
    head = [layer for layer in layers if layer.can8 and id(layer.node) in heads]
    return head + [layer for layer in layers if layer.can8 and layer.is_embedding]


def tied_pairs(layers: list[Layer], heads: set[int], target, budget) -> list[tuple[Layer, Layer]]:
    """(embedding, LM head) pairs of one tied matrix that the target stores once (passes/tie_tables.py):
    the embedding takes its head's bits and its bytes are not counted again. Only where the head can have
    the bits the embedding would get on its own (8 unless pure): a head without an 8-bit kernel (w4a32)
    leaves its table untied at 8 bits by default."""
    if not getattr(target, "tied_tables", False):
        return []
    pairs = []
    for head in (layer for layer in layers if id(layer.node) in heads and (layer.can8 or budget == PURE)):
        emb = next((layer for layer in layers if layer.is_embedding and (layer.n, layer.k) == (head.n, head.k)
                    and same_table(weight_of(layer.node), weight_of(head.node))), None)
        if emb is not None and all(emb is not e for e, _ in pairs):
            pairs.append((emb, head))
    return pairs


@register_pass(NAME)
def run(graph: Graph, ctx) -> None:
    scheme = get_scheme(ctx.qm)
    budget = check_budget(ctx.options.get("budget_bits"))
    if scheme.weight_bits != 4:
        if budget is not None:
            raise TccError(f"--budget-bits applies to the 4-bit schemes (w4a8, w4a32, w4a16), not --qm {scheme.name}")
        return
    group, asym = group_size(ctx), bool(ctx.options.get("asym"))
    act8 = eight_bit_act(scheme, ctx.target)
    layers = candidates(graph, ctx)
    heads = lm_head_nodes(graph)
    for layer in layers:
        layer.can8 = layer.is_embedding or act8 is not None
        layer.bytes4 = layer_bytes(layer.n, layer.k, 4, group, asym)
        layer.bytes8 = layer_bytes(layer.n, layer.k, 8, group, asym)
    ties = tied_pairs(layers, heads, ctx.target, budget)
    shadows = {id(emb.node) for emb, _ in ties}
    every = layers
    layers = [layer for layer in layers if id(layer.node) not in shadows]  # a tied table is its head's bytes
    weights = sum(layer.n * layer.k for layer in layers)
    floor = sum(layer.bytes4 for layer in layers)
    if budget == PURE or not layers:
        chosen, criterion = set(), PURE
    elif budget is None:
        chosen = {id(layer.node) for layer in protected(layers, heads)}
        criterion = "default"
    else:
        floor_bits = 8 * floor / weights
        if budget * weights / 8 < floor:
            raise BudgetError(f"--budget-bits {budget:g} is below the 4-bit floor of this model: "
                              f"{floor_bits:.3f} bits per weight at group {group} (every layer at 4 bits, scales "
                              "included)")
        criterion = measure(graph, ctx, layers, scheme, act8, group, asym)
        chosen = greedy(layers, budget * weights / 8, tuple(protected(layers, heads)))
    nbytes = sum(layer.bytes8 if id(layer.node) in chosen else layer.bytes4 for layer in layers)
    chosen |= {id(emb.node) for emb, head in ties if id(head.node) in chosen}  # a tied table: its head's bits
    names = [layer.node.name for layer in every if id(layer.node) in chosen]
    ctx.stats[NAME] = {
        "eight_bit": names,
        "tied": [[emb.node.name, head.node.name] for emb, head in ties],
        "layers": {layer.node.name: 8 if id(layer.node) in chosen else 4 for layer in every},
        "benefit": {layer.node.name: layer.benefit for layer in layers if layer.benefit},
        "bits_per_weight": round(8 * nbytes / weights, 4) if weights else 0.0,
        "weight_bytes": nbytes, "weights": weights, "budget_bits": budget if budget != PURE else None,
        "criterion": criterion, "eight_bit_act": act8}
    ctx.log(NAME, f"8-bit: {', '.join(names) or 'none'}; {8 * nbytes / max(weights, 1):.3f} bits/weight "
                  f"({criterion})")
