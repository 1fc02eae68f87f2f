"""Lowering of attention: Attention, KVAttention (with the KV cache) and RotaryEmbedding."""
from __future__ import annotations

from dataclasses import replace

from ...ir.core import Node
from ...ir.dims import product
from ..launch import SlotLength, dim, flt
from .emitter import DTYPE_CODE, Emitter, broadcast_strides, dense_strides, lowering


@lowering("Attention")
def _attention(node: Node, em: Emitter) -> None:
    q, k, v = node.inputs[:3]
    mask = node.input(3)
    b, hq, sq, d = q.shape
    _, hkv, skv, _ = k.shape
    dv = v.shape[3]
    out = node.output
    mask_strides = broadcast_strides(mask.shape, (b, hq, sq, skv)) if mask is not None else []
    em.call(node, "attention", [
        em.ptr(q), em.ptr(k), em.ptr(v), em.ptr(mask), em.ptr(out),
        dim(b), dim(hq), dim(hkv), dim(sq), dim(skv), dim(d), dim(dv),
        em.array("qs", dense_strides(q.shape)), em.array("ks", dense_strides(k.shape)),
        em.array("vs", dense_strides(v.shape)), em.array("ms", mask_strides) if mask is not None else None,
        em.array("os", dense_strides(out.shape)), flt(node.attrs["scale"]), dim(int(node.attrs.get("causal", 0))),
        dim(int(node.attrs.get("window", 0))), em.ptr(node.input(4)), flt(node.attrs.get("softcap", 0.0))],
        dtype=DTYPE_CODE[q.dtype])


@lowering("KVAttention")
def _kv_attention(node: Node, em: Emitter) -> None:
    q, k, v, kc, vc, past = node.inputs[:6]
    cos, sin = node.input(6), node.input(7)
    b, hq, s, d = q.shape
    hkv, rows, dv = k.shape[1], kc.shape[2], v.shape[3]
    cap = int(node.attrs.get("capacity", 0)) or rows  # a ring cache holds fewer rows than positions
    out = node.output
    dense = [dense_strides(t.shape) for t in (q, k, v, out)]
    strides = [em.array(h, st) for h, st in zip(("qs", "ks", "vs", "os"), dense)]
    tail = [em.ptr(cos), em.ptr(sin), dim(int(node.attrs.get("rotary_dim", 0))), dim(int(node.attrs.get("rope", 0))),
            flt(node.attrs["scale"]), dim(int(node.attrs.get("window", 0))), dim(rows), em.ptr(node.input(8)),
            flt(node.attrs.get("softcap", 0.0))]
    dims = [dim(hq), dim(hkv), dim(s)]
    # tcc_model_run_rows: input row r is one sequence in KV slot row_slots[r] at that slot's own length, so
    # each row is its own launch with B = 1 (attention is per-row work anyway; the Linear layers around it
    # still see all rows at once, which is where batching saves the weight traffic)
    ins = [replace(em.ptr(t), per_row=st[0]) for t, st in zip((q, k, v, out), dense)]
    caches = [replace(em.ptr(c), per_slot=hkv * rows * w) for c, w in ((kc, d), (vc, dv))]
    em.call(node, "kvattention", [*ins[:3], *caches, ins[3], dim(1), *dims, SlotLength(), dim(cap), dim(d),
                                  dim(dv), *strides, *tail], mode="rows", rows=b, dtype=DTYPE_CODE[q.dtype])
    em.call(node, "kvattention", [
        em.ptr(q), em.ptr(k), em.ptr(v), em.ptr(kc), em.ptr(vc), em.ptr(out),
        dim(b), *dims, dim(past.const.item()), dim(cap), dim(d), dim(dv), *strides, *tail], mode="batch",
        dtype=DTYPE_CODE[q.dtype])


@lowering("RotaryEmbedding")
def _rope(node: Node, em: Emitter) -> None:
    x, cos, sin = node.inputs[:3]
    pos = node.input(3)
    out = node.output
    if x.type.rank == 4:
        b, h, s, d = x.shape
        st = dense_strides(x.shape)
        strides = [st[0], st[2], st[1], st[3]]  # (b, s, h, d) order
    else:
        h = int(node.attrs["num_heads"])
        b, s, hidden = x.shape
        d = hidden // h
        strides = [s * hidden, hidden, d, 1]
    rd = int(node.attrs.get("rotary_embedding_dim", 0)) or d
    max_pos = cos.shape[0] if pos is not None else product(cos.shape[:-1])
    em.call(node, "rope", [em.ptr(x), em.ptr(cos), em.ptr(sin), em.ptr(pos), em.ptr(out), dim(b), dim(s), dim(h),
                           dim(d), dim(rd), em.array("xs", strides), dim(max_pos),
                           dim(int(node.attrs.get("interleaved", 0)))], check_error=pos is not None, dtype=DTYPE_CODE[x.dtype])
