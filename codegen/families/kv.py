"""KV-cache attention: `kvattention` appends this run's rotated k and raw v to the caches, then runs causal
attention of the rotated q over the cache (docs/kernels.md, family kvattention).

One kernel, two run-time paths (the templates choose; the numbers below steer them):
- decode (S == 1): a work item is a tile of up to QT query heads of one GQA group (b, kv head, tile), so
  each cached K/V row is read once for the whole group. When there are fewer items than
  SPLIT_ITEMS_PER_THREAD x threads and the context is long, the keys of each item are also split over
  threads (flash-decoding): each split keeps its own running max / sum / accumulator and a short serial
  merge combines them, so 2+ threads help even a single sequence with one kv head.
- prefill (S > 1): a work item is a tile of QT query rows of one kv head (the group's heads at a position,
  then the next positions); the tile walks the cache in blocks of JB keys with an online softmax, so
  scratch is O(QT x JB + QT x Dv) per thread whatever the prompt length.

The thresholds here are shared by every CPU backend; the register tiles (QT, JB, QK_*, PV_*) are each
backend's own (backends/x86/kernels_kv.py, backends/arm/kernels_neon.py).
"""
from __future__ import annotations

from ..kernels import KernelFamily, KernelSpec, register_family

# window > 0: a query at position p attends keys p - window + 1 .. p only (sliding window, Mistral).
# cache_rows: rows of each cache head; position p lives in row p % cache_rows, so cache_rows < capacity makes
# the cache a ring (needs window > 0 and cache_rows >= window; a call's S tokens are then processed in chunks of
# at most cache_rows - window + 1 so no row a chunk's queries read is overwritten while they read it).
# alibi_slopes: null, or one slope per query head: score += slope * (key position - query position) (MPT, Bloom).
# softcap > 0: score = softcap * tanh(score / softcap) after the scale, before the bias (Gemma 2).
KVATTENTION_PARAMS = (
    "const {T}* q, const {T}* k, const {T}* v, {T}* k_cache, {T}* v_cache, {T}* out, "
    "int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t past, int64_t capacity, int64_t D, int64_t Dv, "
    "const int64_t* q_strides, const int64_t* k_strides, const int64_t* v_strides, const int64_t* o_strides, "
    "const {T}* cos_table, const {T}* sin_table, int64_t rotary_dim, int32_t rope_mode, "
    "float scale, int64_t window, int64_t cache_rows, const {T}* alibi_slopes, float softcap, tcc_exec* exec"
)
KVATTENTION_SIGNATURE = "void {name}(" + KVATTENTION_PARAMS + ")"

# Work per parallel chunk below which threading costs more than it saves (flops), as for attention.
MIN_PARALLEL_FLOPS = 1 << 16
# Append: floats copied (and rotated) per parallel chunk. A decode step appends B*Hkv rows of D+Dv floats
# (a few hundred floats): far below this, so it runs on the calling thread with no dispatch.
APPEND_GRAIN_FLOATS = 1 << 14
# Decode key split (flash-decoding): split when there are fewer than SPLIT_ITEMS_PER_THREAD work items per
# thread (below that, threads idle or finish unevenly); aim for SPLIT_TASKS_PER_THREAD tasks per thread so
# the dynamic scheduler can even out; never give a split fewer than SPLIT_MIN_KEYS keys (a split of 256
# keys is ~50k flops per query row, which outweighs the merge and the dispatch).
SPLIT_ITEMS_PER_THREAD = 2
SPLIT_TASKS_PER_THREAD = 4
SPLIT_MIN_KEYS = 256
# At most this many splits per item (the merge keeps one weight per split on the stack).
SPLIT_MAX = 64


def _kvattention_context(spec: KernelSpec) -> dict:
    return dict(KV_PARAMS=KVATTENTION_PARAMS.replace("{T}", spec.element_ctype), MIN_PARALLEL_FLOPS=MIN_PARALLEL_FLOPS,
                APPEND_GRAIN_FLOATS=APPEND_GRAIN_FLOATS,
                SPLIT_ITEMS_PER_THREAD=SPLIT_ITEMS_PER_THREAD, SPLIT_TASKS_PER_THREAD=SPLIT_TASKS_PER_THREAD,
                SPLIT_MIN_KEYS=SPLIT_MIN_KEYS, SPLIT_MAX=SPLIT_MAX)


register_family(KernelFamily(
    "kvattention", KVATTENTION_SIGNATURE, _kvattention_context,
    doc="Causal attention with rotary embedding over a KV cache, appending this run's k/v in place "
        "(decode and chunked prefill); sliding window (a ring cache), ALiBi slopes, score soft-capping."))

# The portable kernel every CPU backend emits.
PORTABLE: list[tuple[str, str, dict]] = [("kvattention", "scalar", {"dtype": "f32"})]
