// Token selection on a Metal device: the kernel (an MSL port of runtime/select_cuda.cu) and its launcher. Part
// of the tcc runtime library (docs/metal.md, "Token selection"); the host side is runtime/metal/select_metal.cpp.
//
// One source, compiled like a generated kernel file (runtime/metal/tcc_metal.h): by Apple's metal compiler into
// the model's .metallib, as Objective-C++ for the launcher on macOS, as C++ with the launcher for the SIMT
// emulator (the Linux emulation build of a Metal artifact), and type-checked through the MSL shim.
//
// The rules and their order are tcc_sample's (runtime/sampling.cpp), as in select_cuda.cu: repetition penalty
// on the host-de-duplicated recent ids, greedy = argmax (lowest id on ties, NaN never wins, 0 if all NaN),
// else temperature, candidates in (value descending, NaN last, id ascending) order when top-k or top-p needs
// one (top-k: a radix select of the k-th key, then a stable radix sort of those k; top-p: a stable radix sort
// of all), weights exp(x - top), the top-p cut, and the host-advanced splitmix64 draw.
// One threadgroup of 1024 threads (32 SIMD-groups) per row; reductions are simd_shuffle_xor / simd_sum-style
// SIMD-group steps plus threadgroup-memory scans over the SIMD-groups.
//
// Differences from tcc_sample: MSL has no double, so the weights are float (exp in float); their sums, the
// top-p cut (cum >= top_p * total) and the 53-bit draw are double-float (about 48 bits). A sampled token can
// differ from the CPU's only when u falls within about a float ulp of a weight of a cumulative boundary, or
// when a top-p cut lies exactly on a boundary (decided exactly here, by tcc_sample's rounded left-to-right
// double sum there: as for the CUDA kernel); the candidate order, and so every greedy token, is the CPU's. The comparisons use order-preserving integer keys and bit tests, not
// float compares, so Metal's default fast math cannot drop the NaN and infinity rules; the divisions are
// precise::divide (IEEE, as the CPU's).
#include "tcc_metal.h"

#if TCC_METAL_DEVICE_CODE
struct tcc_select_params {  // setBytes: the same layout on the host (runtime/metal/select_metal.cpp)
  long row_stride;
  int vocab, top_k, n_recent, pad;
  float temperature, top_p, penalty, pad2;
};

#define TCC_SEL_THREADS 1024
#if defined(__METAL_VERSION__)  // the compiler must fit 1024 threads (spilling if it has to): the launch size
#define TCC_SEL_KERNEL [[max_total_threads_per_threadgroup(1024)]] kernel
#else
#define TCC_SEL_KERNEL kernel
#endif
#define TCC_SEL_RADIX_BITS 4
#define TCC_SEL_DIGITS 16
#define TCC_SEL_PASSES 8  // even: the sorted keys end in buffer 0

// A key whose ascending order is the candidate order: value descending, -0 == +0, NaN after everything.
inline uint tcc_sel_key(float v) {
  uint b = as_type<uint>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0xffffffffu;  // NaN
  if ((b & 0x7fffffffu) == 0u) b = 0u;                      // -0 as +0
  const uint ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ~ascending;  // -inf is 0xff800000 < 0xffffffff: NaN stays last
}

// Whether (ka, ia) comes before (kb, ib) in the candidate (= argmax) order.
inline bool tcc_sel_before(uint ka, int ia, uint kb, int ib) { return ka < kb || (ka == kb && ia < ib); }

// tcc_sample's weight exp(v - top): 1 for v == top (also infinite), 0 for NaN, 0 below an infinite top, and
// exp of the difference otherwise (-inf gives 0).
inline float tcc_sel_weight(float v, float top) {
  const uint kv = tcc_sel_key(v), kt = tcc_sel_key(top);
  if (kv == kt) return 1.0f;
  if (kv == 0xffffffffu) return 0.0f;
  const uint bv = as_type<uint>(v) & 0x7fffffffu, bt = as_type<uint>(top) & 0x7fffffffu;
  if (bv == 0x7f800000u || bt == 0x7f800000u) return 0.0f;  // v = -inf, or top = +inf above a finite v
  return precise::exp(v - top);
}

// The threadgroup's best (key, id) (every thread gets the id): SIMD-group shuffles, then SIMD-group 0 over
// the SIMD-groups' bests in threadgroup memory.
inline int tcc_sel_argmax(uint k, int i, uint lane, uint sg, uint sgs, threadgroup uint* sk, threadgroup int* si) {
  for (ushort m = 16; m > 0; m >>= 1) {
    const uint ok = simd_shuffle_xor(k, m);
    const int oi = simd_shuffle_xor(i, m);
    if (tcc_sel_before(ok, oi, k, i)) k = ok, i = oi;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (lane == 0) sk[sg] = k, si[sg] = i;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  k = lane < sgs ? sk[lane] : 0xffffffffu;
  i = lane < sgs ? si[lane] : 0x7fffffff;
  for (ushort m = 16; m > 0; m >>= 1) {
    const uint ok = simd_shuffle_xor(k, m);
    const int oi = simd_shuffle_xor(i, m);
    if (tcc_sel_before(ok, oi, k, i)) k = ok, i = oi;
  }
  return i;
}

// Exclusive prefix sum over the threadgroup's threads in thread order (every thread gets its own); scratch holds
// 32 values.
template <class T>
inline T tcc_sel_scan(T v, uint lane, uint sg, uint sgs, threadgroup T* scratch) {
  const T exc = simd_prefix_exclusive_sum(v);
  threadgroup_barrier(mem_flags::mem_threadgroup);  // scratch may still be read by a previous scan
  if (lane == 31) scratch[sg] = exc + v;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    const T s = lane < sgs ? scratch[lane] : T(0);
    const T sexc = simd_prefix_exclusive_sum(s);
    if (lane < sgs) scratch[lane] = sexc;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return scratch[sg] + exc;
}

// The smallest of every thread's v (every thread gets it); scratch holds 32 ints.
inline int tcc_sel_min(int v, uint lane, uint sg, uint sgs, threadgroup int* scratch) {
  v = simd_min(v);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (lane == 0) scratch[sg] = v;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  v = lane < sgs ? scratch[lane] : 0x7fffffff;
  return simd_min(v);
}

// ---- double-float arithmetic: MSL has no double, and the weights' sums decide the top-p cut and the draw ----
// A value hi + lo with |lo| <= ulp(hi) / 2 (about 48 bits): exact sums and compares where tcc_sample's double
// ones are (ties of equal weights, a cut exactly at top_p). Needs IEEE float addition without reassociation
// (the macOS recipe compiles this file with -fno-fast-math).
struct tcc_df {
  float hi, lo;
};
inline tcc_df tcc_df_make(float hi, float lo) {  // two_sum: any hi, lo
  const float s = hi + lo, b = s - hi;
  return tcc_df{s, (hi - (s - b)) + (lo - b)};
}
inline tcc_df tcc_df_add(tcc_df a, tcc_df b) {
  const tcc_df s = tcc_df_make(a.hi, b.hi);
  return tcc_df_make(s.hi, s.lo + (a.lo + b.lo));
}
inline tcc_df tcc_df_mul(tcc_df a, tcc_df b) {
  const float p = a.hi * b.hi;
  return tcc_df_make(p, fma(a.hi, b.hi, -p) + (a.hi * b.lo + a.lo * b.hi));
}
inline bool tcc_df_less(tcc_df a, tcc_df b) { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo); }

// Exclusive prefix sum of double-floats over the threadgroup's threads in thread order (every thread gets its
// own; *total gets the sum of all): shuffle-up steps in each SIMD-group, then SIMD-group 0 over the groups'
// sums (each lane of SIMD-group 0 rewrites only its own slot). scratch holds 66 floats.
inline tcc_df tcc_df_scan(tcc_df v, uint lane, uint sg, uint sgs, threadgroup float* scratch, thread tcc_df* total) {
  tcc_df inc = v;
  for (ushort o = 1; o < 32; o <<= 1) {
    const tcc_df y{simd_shuffle_up(inc.hi, o), simd_shuffle_up(inc.lo, o)};
    if (lane >= o) inc = tcc_df_add(inc, y);
  }
  tcc_df exc{simd_shuffle_up(inc.hi, 1), simd_shuffle_up(inc.lo, 1)};
  if (lane == 0) exc = tcc_df{0.0f, 0.0f};
  threadgroup_barrier(mem_flags::mem_threadgroup);  // scratch may still be read by a previous scan
  if (lane == 31) scratch[2 * sg] = inc.hi, scratch[2 * sg + 1] = inc.lo;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    const tcc_df s = lane < sgs ? tcc_df{scratch[2 * lane], scratch[2 * lane + 1]} : tcc_df{0.0f, 0.0f};
    tcc_df sinc = s;
    for (ushort o = 1; o < 32; o <<= 1) {
      const tcc_df y{simd_shuffle_up(sinc.hi, o), simd_shuffle_up(sinc.lo, o)};
      if (lane >= o) sinc = tcc_df_add(sinc, y);
    }
    if (lane < sgs) scratch[2 * lane] = sinc.hi, scratch[2 * lane + 1] = sinc.lo;  // inclusive per group
    if (lane == 31) scratch[64] = sinc.hi, scratch[65] = sinc.lo;  // every group's sum (lanes past sgs add 0)
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const tcc_df before = sg == 0 ? tcc_df{0.0f, 0.0f} : tcc_df{scratch[2 * (sg - 1)], scratch[2 * (sg - 1) + 1]};
  *total = tcc_df{scratch[64], scratch[65]};
  const tcc_df mine = tcc_df_add(before, exc);
  threadgroup_barrier(mem_flags::mem_threadgroup);  // read before the next scan writes
  return mine;
}

// One row per threadgroup: logits + row * row_stride (vocab floats) -> ids_out[row]. Work buffers (vocab
// elements per row): x, keys0/ids0, keys1/ids1, w; counts: TCC_SEL_DIGITS * 1024 ints per row.
// Threadgroup memory: tf (66 floats: the double-float scans), ti (64 ints: argmax ids, int scans and minima),
// tk (32 uints: argmax keys, then the radix select's 2 result words), hist (256 atomic ints: its histogram).
TCC_SEL_KERNEL void tcc_select_rows(device const float* logits [[buffer(0)]],
                                    constant tcc_select_params& p [[buffer(1)]],
                                    device const ulong* draws [[buffer(2)]],
                                    device const int* recent [[buffer(3)]],
                                    device float* x_all [[buffer(4)]],
                                    device uint* keys0_all [[buffer(5)]],
                                    device int* ids0_all [[buffer(6)]],
                                    device uint* keys1_all [[buffer(7)]],
                                    device int* ids1_all [[buffer(8)]],
                                    device int* counts_all [[buffer(9)]],
                                    device float* w_all [[buffer(10)]],
                                    device long* ids_out [[buffer(11)]],
                                    threadgroup float* tf [[TCC_MSL_ATTR_THREADGROUP(0)]],
                                    threadgroup int* ti [[TCC_MSL_ATTR_THREADGROUP(1)]],
                                    threadgroup uint* tk [[TCC_MSL_ATTR_THREADGROUP(2)]],
                                    threadgroup atomic_int* hist [[TCC_MSL_ATTR_THREADGROUP(3)]],
                                    uint r [[threadgroup_position_in_grid]],
                                    uint t [[thread_index_in_threadgroup]],
                                    uint T [[threads_per_threadgroup]],
                                    uint lane [[thread_index_in_simdgroup]],
                                    uint sg [[simdgroup_index_in_threadgroup]],
                                    uint sgs [[simdgroups_per_threadgroup]]) {
  const int V = p.vocab;
  const long row = long(r) * V;
  device const float* in = logits + long(r) * p.row_stride;
  device float* x = x_all + row;
  threadgroup int* iscratch = ti + 32;  // ti[0..32): argmax ids; ti[32..64): int scans and minima

  // 1. the row, with the repetition penalty (the recent ids are distinct and in range)
  for (int i = int(t); i < V; i += int(T)) x[i] = in[i];
  threadgroup_barrier(mem_flags::mem_device);
  if (p.penalty != 1.0f) {
    for (int j = int(t); j < p.n_recent; j += int(T)) {
      const int k = recent[j];
      const float v = x[k];
      x[k] = v > 0.0f ? precise::divide(v, p.penalty) : v * p.penalty;
    }
    threadgroup_barrier(mem_flags::mem_device);
  }

  // 2. greedy
  if (!(p.temperature > 0.0f)) {
    uint bk = 0xffffffffu;
    int bi = 0x7fffffff;
    for (int i = int(t); i < V; i += int(T)) {
      const uint k = tcc_sel_key(x[i]);
      if (tcc_sel_before(k, i, bk, bi)) bk = k, bi = i;
    }
    const int best = tcc_sel_argmax(bk, bi, lane, sg, sgs, tk, ti);
    if (t == 0) ids_out[r] = best;
    return;
  }

  // 3. temperature, then the candidate order when a cut needs one
  const bool cut_k = p.top_k > 0 && p.top_k < V;
  const bool nucleus = p.top_p > 0.0f && p.top_p < 1.0f;
  const bool sorted = cut_k || nucleus;
  device uint* keys0 = keys0_all + row;
  device int* ids0 = ids0_all + row;
  device uint* keys1 = keys1_all + row;
  device int* ids1 = ids1_all + row;
  uint bk = 0xffffffffu;
  int bi = 0x7fffffff;
  for (int i = int(t); i < V; i += int(T)) {
    const float v = precise::divide(x[i], p.temperature);
    x[i] = v;
    const uint k = tcc_sel_key(v);
    if (cut_k) {
      keys1[i] = k;  // the select below gathers the top k into keys0/ids0
    } else if (sorted) {
      keys0[i] = k;
      ids0[i] = i;
    } else if (tcc_sel_before(k, i, bk, bi)) {
      bk = k, bi = i;
    }
  }
  threadgroup_barrier(mem_flags::mem_device);
  const int n = cut_k ? p.top_k : V;
  int top_id;
  if (sorted) {
    if (cut_k) {
      // The k smallest keys of keys1 with their indices, in index order, into keys0/ids0: a radix select of
      // the k-th smallest key K (MSB first, 4 passes of 8 bits), then every key below K and, of those equal
      // to K, the first in index order that make k (the first k of the stable sort, as a set).
      uint prefix = 0;
      int rank = n;  // the rank-th smallest (1-based) among the keys whose high bits are `prefix`
      for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        for (uint b = t; b < 256; b += T) atomic_store_explicit(&hist[b], 0, memory_order_relaxed);
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int i = int(t); i < V; i += int(T)) {
          const uint key = keys1[i];
          if (pass == 0 || (key >> (shift + 8)) == prefix)
            atomic_fetch_add_explicit(&hist[(key >> shift) & 255u], 1, memory_order_relaxed);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        const int c = t < 256 ? atomic_load_explicit(&hist[t], memory_order_relaxed) : 0;
        const int before = tcc_sel_scan(c, lane, sg, sgs, iscratch);
        // hist[0..256) is read above by its owners only; the result goes to tk[0..2) (read after a barrier)
        if (t < 256 && before < rank && rank <= before + c) {
          tk[0] = (prefix << 8) | t;
          tk[1] = uint(rank - before);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        prefix = tk[0];
        rank = int(tk[1]);
        threadgroup_barrier(mem_flags::mem_threadgroup);  // tk is written again by the next pass
      }
      const uint K = prefix;  // `rank` of the keys equal to K are taken
      const int chunk = (V + int(T) - 1) / int(T);
      const int lo = min(V, int(t) * chunk), hi = min(V, lo + chunk);
      int less = 0, equal = 0;
      for (int i = lo; i < hi; ++i) less += keys1[i] < K ? 1 : 0, equal += keys1[i] == K ? 1 : 0;
      const int equal_before = tcc_sel_scan(equal, lane, sg, sgs, iscratch);
      const int take = min(equal, max(0, rank - equal_before));
      int at = tcc_sel_scan(less + take, lane, sg, sgs, iscratch);
      int taken = 0;
      for (int i = lo; i < hi; ++i) {
        const uint key = keys1[i];
        if (key < K || (key == K && taken++ < take)) {
          keys0[at] = key;
          ids0[at] = i;
          ++at;
        }
      }
      threadgroup_barrier(mem_flags::mem_device);
    }
    // Stable LSD radix sort of (keys0, ids0)[0..n): each pass counts digits per thread over the thread's
    // contiguous chunk, scans the counts in (digit, thread) order and scatters in chunk order.
    device int* counts = counts_all + long(r) * TCC_SEL_DIGITS * TCC_SEL_THREADS;
    const int chunk = (n + int(T) - 1) / int(T);
    const int lo = min(n, int(t) * chunk), hi = min(n, lo + chunk);
    for (int pass = 0; pass < TCC_SEL_PASSES; ++pass) {
      const int shift = pass * TCC_SEL_RADIX_BITS;
      device const uint* ks = pass % 2 ? keys1 : keys0;
      device const int* is = pass % 2 ? ids1 : ids0;
      device uint* kd = pass % 2 ? keys0 : keys1;
      device int* id = pass % 2 ? ids0 : ids1;
      int cnt[TCC_SEL_DIGITS];
      for (int d = 0; d < TCC_SEL_DIGITS; ++d) cnt[d] = 0;
      for (int i = lo; i < hi; ++i) ++cnt[(ks[i] >> shift) & (TCC_SEL_DIGITS - 1)];
      for (int d = 0; d < TCC_SEL_DIGITS; ++d) counts[d * int(T) + int(t)] = cnt[d];
      threadgroup_barrier(mem_flags::mem_device);
      // this thread's slice of the (digit, thread) order: entries DIGITS*t .. DIGITS*t + DIGITS - 1
      int mine[TCC_SEL_DIGITS];
      int sum = 0;
      for (int j = 0; j < TCC_SEL_DIGITS; ++j) sum += (mine[j] = counts[TCC_SEL_DIGITS * int(t) + j]);
      int base = tcc_sel_scan(sum, lane, sg, sgs, iscratch);  // its barriers order the reads before the writes
      threadgroup_barrier(mem_flags::mem_device);
      for (int j = 0; j < TCC_SEL_DIGITS; ++j) {
        counts[TCC_SEL_DIGITS * int(t) + j] = base;
        base += mine[j];
      }
      threadgroup_barrier(mem_flags::mem_device);
      for (int d = 0; d < TCC_SEL_DIGITS; ++d) cnt[d] = counts[d * int(T) + int(t)];
      for (int i = lo; i < hi; ++i) {
        const uint k = ks[i];
        const int to = cnt[(k >> shift) & (TCC_SEL_DIGITS - 1)]++;
        kd[to] = k;
        id[to] = is[i];
      }
      threadgroup_barrier(mem_flags::mem_device);
    }
    top_id = ids0[0];
  } else {
    top_id = tcc_sel_argmax(bk, bi, lane, sg, sgs, tk, ti);
  }
  const float top = x[top_id];
  if (tcc_sel_key(top) == 0xffffffffu) {  // every logit NaN: the first candidate (its draw spent on the host)
    if (t == 0) ids_out[r] = top_id;
    return;
  }

  // 4. weights and their prefix sums (double-float) over each thread's chunk of candidates
  const int chunk = (n + int(T) - 1) / int(T);
  const int lo = min(n, int(t) * chunk), hi = min(n, lo + chunk);
  device float* w = w_all + row;
  tcc_df sum{0.0f, 0.0f};
  for (int i = lo; i < hi; ++i) {
    w[i] = tcc_sel_weight(x[sorted ? ids0[i] : i], top);
    sum = tcc_df_add(sum, tcc_df{w[i], 0.0f});
  }
  tcc_df total;
  const tcc_df base = tcc_df_scan(sum, lane, sg, sgs, tf, &total);
  int keep = n;
  if (nucleus) {  // keep candidates up to the first whose cumulative weight reaches top_p * total
    const tcc_df cut = tcc_df_mul(total, tcc_df{p.top_p, 0.0f});
    tcc_df cum = base;
    int first = 0x7fffffff;
    for (int i = lo; i < hi; ++i) {
      cum = tcc_df_add(cum, tcc_df{w[i], 0.0f});
      if (!tcc_df_less(cum, cut)) {
        first = i + 1;
        break;
      }
    }
    keep = min(n, tcc_sel_min(first, lane, sg, sgs, iscratch));
    // the kept total: the cumulative weight at candidate keep - 1
    tcc_df c{0.0f, 0.0f};
    for (int i = lo; i < min(hi, keep); ++i) c = tcc_df_add(c, tcc_df{w[i], 0.0f});
    tcc_df_scan(c, lane, sg, sgs, tf, &total);
  }

  // 5. the draw u = uniform * total (the 53-bit uniform as a double-float): the first candidate whose
  // cumulative weight exceeds u (the last kept one if none does)
  const ulong d53 = draws[r] >> 11;
  const tcc_df uniform = tcc_df_make(float(uint(d53 >> 29)) * (1.0f / 16777216.0f),
                                     float(uint(d53 & 0x1fffffffu)) * (1.0f / 9007199254740992.0f));
  const tcc_df u = tcc_df_mul(uniform, total);
  tcc_df cum = base;
  int first = 0x7fffffff;
  for (int i = lo; i < min(hi, keep); ++i) {
    cum = tcc_df_add(cum, tcc_df{w[i], 0.0f});
    if (tcc_df_less(u, cum)) {
      first = i;
      break;
    }
  }
  first = tcc_sel_min(first, lane, sg, sgs, iscratch);
  if (t == 0) {
    const int pick = first < keep ? first : keep - 1;
    ids_out[r] = sorted ? ids0[pick] : pick;
  }
}
#endif  // TCC_METAL_DEVICE_CODE

#if defined(TCC_SIMT)  // the emulator's per-thread entry (as backends/metal/msl.py writes them)
static void tcc_select_rows__simt(void* d) {
  (void)d;
  tcc_select_rows((const float*)tcc_msl_simt::buffer(d, 0, "logits"),
                  *(tcc_select_params*)tcc_msl_simt::buffer(d, 1, "p"),
                  (const ulong*)tcc_msl_simt::buffer(d, 2, "draws"), (const int*)tcc_msl_simt::buffer(d, 3, "recent"),
                  (float*)tcc_msl_simt::buffer(d, 4, "x_all"), (uint*)tcc_msl_simt::buffer(d, 5, "keys0_all"),
                  (int*)tcc_msl_simt::buffer(d, 6, "ids0_all"), (uint*)tcc_msl_simt::buffer(d, 7, "keys1_all"),
                  (int*)tcc_msl_simt::buffer(d, 8, "ids1_all"), (int*)tcc_msl_simt::buffer(d, 9, "counts_all"),
                  (float*)tcc_msl_simt::buffer(d, 10, "w_all"), (long*)tcc_msl_simt::buffer(d, 11, "ids_out"),
                  (float*)tcc_msl_simt::threadgroup_memory(d, 0, "tf"),
                  (int*)tcc_msl_simt::threadgroup_memory(d, 1, "ti"),
                  (uint*)tcc_msl_simt::threadgroup_memory(d, 2, "tk"),
                  (atomic_int*)tcc_msl_simt::threadgroup_memory(d, 3, "hist"),
                  tcc_msl_simt::builtin_as<uint>(tcc_msl_simt::kThreadgroupPositionInGrid),
                  tcc_msl_simt::builtin_as<uint>(tcc_msl_simt::kThreadIndexInThreadgroup),
                  tcc_msl_simt::builtin_as<uint>(tcc_msl_simt::kThreadsPerThreadgroup),
                  tcc_msl_simt::builtin_as<uint>(tcc_msl_simt::kThreadIndexInSimdgroup),
                  tcc_msl_simt::builtin_as<uint>(tcc_msl_simt::kSimdgroupIndexInThreadgroup),
                  tcc_msl_simt::builtin_as<uint>(tcc_msl_simt::kSimdgroupsPerThreadgroup));
}
#endif

#if TCC_METAL_HOST_CODE
#include "tcc_metal_select.h"

// The launcher (runtime/metal/select_metal.cpp calls it): one threadgroup of 1024 threads per row.
void tcc_metal_select_launch(tcc_exec* exec, const tcc_metal_select_args* a) {
  tcc_mtl_encoder e(exec, TCC_MTL_FUNCTION(tcc_select_rows));
  e.buffer(0, a->logits);
  e.bytes(1, &a->params, sizeof a->params);
  e.buffer(2, a->draws);
  e.buffer(3, a->recent);
  e.buffer(4, a->x);
  e.buffer(5, a->keys[0]);
  e.buffer(6, a->ids[0]);
  e.buffer(7, a->keys[1]);
  e.buffer(8, a->ids[1]);
  e.buffer(9, a->counts);
  e.buffer(10, a->w);
  e.buffer(11, a->ids_out);
  e.threadgroup_memory(0, 66 * 4);
  e.threadgroup_memory(1, 64 * 4);
  e.threadgroup_memory(2, 32 * 4);
  e.threadgroup_memory(3, 256 * 4);
  e.dispatch_threadgroups(a->rows, 1, 1, TCC_METAL_SELECT_THREADS, 1, 1);
}
#endif  // TCC_METAL_HOST_CODE
