"""The kernel families that exported LLMs need: GatherND, GatherElements, ScatterND and CumSum (scalar: they
run on small index, table and mask tensors), RotaryEmbedding, and QGather (rows of a quantized embedding).
Every one is portable (`codegen/templates/common/`), so every CPU backend emits the same `PORTABLE` list."""
from __future__ import annotations

from ..kernels import KernelFamily, register_family

_CTYPES = {"f32": "float", "i64": "int64_t", "i32": "int32_t"}

register_family(KernelFamily(
    "gathernd",
    "void {name}(const void* data, const int64_t* idx, void* out, int64_t batch, int64_t n_idx, int32_t k, "
    "const int64_t* dims, int64_t slice, int64_t data_batch_stride, tcc_exec* exec)",
    doc="out[b, i, :slice] = data[b, idx[b, i, 0..k), :slice]; negative indices wrap; out of range raises"))

register_family(KernelFamily(
    "cumsum",
    "void {name}(const {T}* x, {T}* y, int64_t outer, int64_t n, int64_t inner, int32_t exclusive, "
    "int32_t reverse, tcc_exec* exec)",
    context=lambda spec: {"T": _CTYPES[spec.param("dtype")]},
    doc="cumulative sum over the middle axis of [outer, n, inner]"))

register_family(KernelFamily(
    "rope",
    "void {name}(const {T}* x, const {T}* cos_cache, const {T}* sin_cache, const int64_t* pos, {T}* y, "
    "int64_t B, int64_t S, int64_t H, int64_t D, int64_t rd, const int64_t* x_strides, int64_t max_pos, "
    "int32_t interleaved, tcc_exec* exec)",
    doc="rotary embedding; x/y strides over (b, s, h, d); cache rows of rd/2 selected by pos[b*S+s] "
        "(or b*S+s when pos is null); dims >= rd pass through"))

register_family(KernelFamily(
    "gatherelements",
    "void {name}(const void* data, const int64_t* idx, void* out, int32_t ndim, const int64_t* out_shape, "
    "const int64_t* data_strides, int32_t axis, int64_t axis_dim, tcc_exec* exec)",
    doc="out[i] = data[i with its axis coordinate replaced by idx[i]] (ONNX GatherElements); out of range raises"))

register_family(KernelFamily(
    "scatternd",
    "void {name}(const {T}* data, const int64_t* idx, const {T}* upd, {T}* out, int64_t n_data, int64_t n_idx, "
    "int32_t k, const int64_t* dims, int64_t slice, tcc_exec* exec)",
    context=lambda spec: {"T": _CTYPES[spec.param("dtype")], "reduction": spec.param("op")},
    doc="out = data, then out[idx[i]] (slices of `slice` elements) = / op= upd[i] (ONNX ScatterND)"))

register_family(KernelFamily(
    "qgather",
    "void {name}(const void* q, const {S}* scales, const uint8_t* zeros, const int64_t* ids, {T}* out, "
    "int64_t n_ids, int64_t rows, int64_t K, int64_t group, tcc_exec* exec)",
    context=lambda spec: {"S": "uint16_t" if spec.param("bits") == 4 else "float", "bits": spec.param("bits"),
                          "layout": spec.param("layout", "rows")},
    doc="out[i] = dequantized row ids[i] of a quantized table: its own rows (codegen/families/packing.py) or, "
        "layout tiles, column ids[i] of a quantized Linear's packed weights (the backend's layout: a tied "
        "embedding stored once); out of range raises"))

SCATTER_OPS = ("none", "add", "mul", "max", "min")

# The portable kernels every CPU backend emits.
PORTABLE: list[tuple[str, str, dict]] = [
    ("rope", "scalar", {"dtype": "f32"}),
    *(("gathernd", "scalar", {"esize": e}) for e in (1, 4, 8)),
    *(("cumsum", "scalar", {"dtype": d}) for d in ("f32", "i64", "i32")),
    *(("gatherelements", "scalar", {"esize": e}) for e in (1, 4, 8)),
    *(("scatternd", "scalar", {"op": o, "dtype": d}) for o in SCATTER_OPS for d in ("f32", "i64", "i32")),
    *(("qgather", "scalar", {"bits": b}) for b in (4, 8)),
]

# The qgather kernels of a CPU backend whose target has `tied_tables`: the table is a QLinear's packed weights
# (QGather layout "linear"), read through the backend's qlinear layout helpers (its NT/KB/Q8B/KPAD/Q4_QUAD
# context, common/_qlinear_scalar.inc.j2).
TIED_TABLES: list[tuple[str, str, dict]] = [("qgather", "scalar", {"bits": b, "layout": "tiles"}) for b in (4, 8)]
