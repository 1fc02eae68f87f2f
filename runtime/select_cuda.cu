// Token selection on a CUDA device (tcc_device.h: tcc_device_select), also compiled as C++ for the SIMT
// emulator (TCC_SIMT). Part of the tcc runtime library (CMakeLists.txt: TCC_DEVICE=cuda|simt; docs/cuda.md,
// "Token selection").
//
// The logits stay on the device: one kernel launch picks every row's token, and only the ids come back.
// The rules and their order are tcc_sample's (runtime/sampling.cpp), so the same seed gives the same tokens:
//   repetition penalty (each distinct recent id once: the host de-duplicates the ids and drops those out of
//   range), greedy = argmax (lowest id on ties, NaN never wins, 0 if all NaN), else temperature (a float
//   division), candidates in (value descending, NaN last, id ascending) order — a stable LSD radix sort of
//   order-preserving 32-bit keys over ids in ascending order — when top-k or top-p needs an order, weights
//   exp(x - top) in double, the top-p cut, and the draw u = uniform * total. The host advances the
//   splitmix64 stream exactly as tcc_sample would (one draw per sampled row, in row order, none for greedy)
//   and passes each row's 64-bit draw to the kernel.
// One block of 1024 threads per row. Sums and prefix sums over the candidates are block scans (each thread a
// contiguous chunk in candidate order, then a scan over the threads), not tcc_sample's left-to-right sum:
// they round differently, so a draw (or a top-p cut) can differ from the CPU's only when u (or top_p) falls
// within a few ulps of a cumulative boundary — with 53-bit draws, never in practice; the candidate order, and
// so every tie, is exactly the CPU's.
//
// Memory: work buffers per execution context, allocated at its first selection (sized for the rows and the
// vocabulary; again only if a later call needs more) and freed by tcc_device_select_release. Per call: one
// host-to-device copy (the rows' draws and the de-duplicated recent ids, from pinned memory), one launch, one
// device-to-host copy of the ids and one stream sync.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tcc_cuda.h"
#include "tcc_model.h"
#include "tcc_select.h"

namespace {

constexpr int kThreads = 1024;  // per block: one block per row
constexpr int kRadixBits = 4;
constexpr int kDigits = 1 << kRadixBits;
constexpr int kPasses = 32 / kRadixBits;  // even: the sorted keys end in buffer 0

// A key whose ascending order is the candidate order: value descending, -0 == +0, NaN after everything.
__device__ __forceinline__ uint32_t order_key(float v) {
  if (v != v) return 0xffffffffu;
  if (v == 0.0f) v = 0.0f;
  const uint32_t b = __float_as_uint(v);
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ~ascending;  // -inf is 0xff800000 < 0xffffffff: NaN stays last
}

// Whether (a, ia) comes before (b, ib) in argmax order: larger value, lower id on ties, NaN never first
// unless both are (then the lower id).
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
  const bool na = a != a, nb = b != b;
  if (na || nb) return na == nb ? ia < ib : nb;
  return a > b || (a == b && ia < ib);
}

// tcc_sample's weight: exp(v - top) in double, 1 for v == top (also infinite), 0 for NaN.
__device__ __forceinline__ double weight(float v, float top) {
  if (v == top) return 1.0;
  if (v != v) return 0.0;
  return exp(static_cast<double>(v) - static_cast<double>(top));
}

// Every thread's argmax of its values: the block's (every thread gets it).
template <class SV, class SI>
__device__ int block_argmax(float v, int i, SV& sv, SI& si) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int m = 16; m > 0; m >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, m);
    const int oi = __shfl_xor_sync(0xffffffffu, i, m);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
  __syncthreads();
  if (lane == 0) sv[warp] = v, si[warp] = i;
  __syncthreads();
  v = lane < warps ? sv[lane] : __uint_as_float(0x7fffffffu);
  i = lane < warps ? si[lane] : 0x7fffffff;
  for (int m = 16; m > 0; m >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, m);
    const int oi = __shfl_xor_sync(0xffffffffu, i, m);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
  return i;
}

// Exclusive prefix sum over the block's threads (in thread order); every thread gets its own.
template <class T, class S>
__device__ T block_exclusive_scan(T v, S& scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  T inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  T exc = __shfl_up_sync(0xffffffffu, inc, 1);
  if (lane == 0) exc = T(0);
  __syncthreads();  // scratch may still be read by a previous scan
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    T s = lane < warps ? scratch[lane] : T(0);
    T sinc = s;
    for (int o = 1; o < 32; o <<= 1) {
      const T y = __shfl_up_sync(0xffffffffu, sinc, o);
      if (lane >= o) sinc += y;
    }
    T sexc = __shfl_up_sync(0xffffffffu, sinc, 1);
    if (lane == 0) sexc = T(0);
    if (lane < warps) scratch[lane] = sexc;
  }
  __syncthreads();
  return scratch[warp] + exc;
}

// Stable LSD radix sort of (keys, ids) of one row, n elements: each pass counts digits per thread over the
// thread's contiguous chunk, scans the counts in (digit, thread) order and scatters in chunk order — a
// stable pass. counts holds kDigits * blockDim.x ints. The result is in keys0/ids0.
template <class S>
__device__ void radix_sort(uint32_t* keys0, int32_t* ids0, uint32_t* keys1, int32_t* ids1, int32_t* counts, int n,
                           S& scratch) {
  const int t = threadIdx.x, T = blockDim.x;
  const int chunk = (n + T - 1) / T;
  const int lo = min(n, t * chunk), hi = min(n, lo + chunk);
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = pass * kRadixBits;
    const uint32_t* ks = pass % 2 ? keys1 : keys0;
    const int32_t* is = pass % 2 ? ids1 : ids0;
    uint32_t* kd = pass % 2 ? keys0 : keys1;
    int32_t* id = pass % 2 ? ids0 : ids1;
    int cnt[kDigits];
    for (int d = 0; d < kDigits; ++d) cnt[d] = 0;
    for (int i = lo; i < hi; ++i) ++cnt[(ks[i] >> shift) & (kDigits - 1)];
    for (int d = 0; d < kDigits; ++d) counts[d * T + t] = cnt[d];
    __syncthreads();
    // this thread's slice of the (digit, thread) order: entries kDigits*t .. kDigits*t + kDigits - 1
    int mine[kDigits];
    int sum = 0;
    for (int j = 0; j < kDigits; ++j) sum += (mine[j] = counts[kDigits * t + j]);
    int base = block_exclusive_scan(sum, scratch);  // (its barriers order the reads above before the writes)
    for (int j = 0; j < kDigits; ++j) {
      counts[kDigits * t + j] = base;
      base += mine[j];
    }
    __syncthreads();
    for (int d = 0; d < kDigits; ++d) cnt[d] = counts[d * T + t];
    for (int i = lo; i < hi; ++i) {
      const uint32_t k = ks[i];
      const int at = cnt[(k >> shift) & (kDigits - 1)]++;
      kd[at] = k;
      id[at] = is[i];
    }
    __syncthreads();
  }
}

// The k smallest of keys[0..n) (0 < k < n) with their indices, in ascending index order, into (keys_out,
// ids_out): a radix select of the k-th smallest key K (MSB first, 4 passes of 8 bits over a shared histogram,
// the bin found by a block scan), then every key below K and, of those equal to K, the first in index order
// that make k — the same set as the first k of the stable sort, so sorting these k gives tcc_sample's top-k.
template <class H, class P, class S>
__device__ void select_smallest(const uint32_t* keys, int n, int k, uint32_t* keys_out, int32_t* ids_out, H& hist,
                                P& sel, S& scratch) {
  const int t = threadIdx.x, T = blockDim.x;
  uint32_t prefix = 0;
  int rank = k;  // the rank-th smallest (1-based) among the keys whose high bits are `prefix`
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int b = t; b < 256; b += T) hist[b] = 0;
    __syncthreads();
    for (int i = t; i < n; i += T) {
      const uint32_t key = keys[i];
      if (pass == 0 || (key >> (shift + 8)) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    const int c = t < 256 ? hist[t] : 0;
    const int before = block_exclusive_scan(c, scratch);
    if (t < 256 && before < rank && rank <= before + c) {
      sel[0] = (prefix << 8) | static_cast<uint32_t>(t);
      sel[1] = static_cast<uint32_t>(rank - before);
    }
    __syncthreads();
    prefix = sel[0];
    rank = static_cast<int>(sel[1]);
  }
  const uint32_t K = prefix;  // rank of the keys equal to K are taken
  const int chunk = (n + T - 1) / T;
  const int lo = min(n, t * chunk), hi = min(n, lo + chunk);
  int less = 0, equal = 0;
  for (int i = lo; i < hi; ++i) less += keys[i] < K, equal += keys[i] == K;
  const int equal_before = block_exclusive_scan(equal, scratch);
  const int take = min(equal, max(0, rank - equal_before));
  int at = block_exclusive_scan(less + take, scratch);
  int taken = 0;
  for (int i = lo; i < hi; ++i) {
    const uint32_t key = keys[i];
    if (key < K || (key == K && taken++ < take)) {
      keys_out[at] = key;
      ids_out[at] = i;
      ++at;
    }
  }
  __syncthreads();
}

struct Sampling {
  float temperature, top_p, penalty;
  int32_t top_k;
};

// One block per row r: logits + r * row_stride (vocab floats) -> ids_out[r].
__global__ void __launch_bounds__(kThreads)
    tcc_select_kernel(const float* __restrict__ logits, int64_t row_stride, int vocab, Sampling sp,
                      const uint64_t* __restrict__ draws, const int32_t* __restrict__ recent, int n_recent,
                      float* __restrict__ x_all, uint32_t* __restrict__ keys0_all, int32_t* __restrict__ ids0_all,
                      uint32_t* __restrict__ keys1_all, int32_t* __restrict__ ids1_all,
                      int32_t* __restrict__ counts_all, double* __restrict__ w_all, int64_t* __restrict__ ids_out) {
  TCC_SHARED(float, sv, 32);
  TCC_SHARED(int, si, 32);
  TCC_SHARED(double, dscratch, 32);
  TCC_SHARED(int, iscratch, 32);
  TCC_SHARED(double, total_sh, 1);
  TCC_SHARED(int, first_sh, 1);
  TCC_SHARED(int, hist, 256);
  TCC_SHARED(unsigned, sel, 2);
  const int r = blockIdx.x, t = threadIdx.x, T = blockDim.x, V = vocab;
  const int64_t row = static_cast<int64_t>(r) * V;
  const float* in = logits + static_cast<int64_t>(r) * row_stride;
  float* x = x_all + row;

  // 1. the row, with the repetition penalty (the recent ids are distinct and in range)
  for (int i = t; i < V; i += T) x[i] = in[i];
  __syncthreads();
  if (sp.penalty != 1.0f) {
    for (int j = t; j < n_recent; j += T) {
      const int k = recent[j];
      const float v = x[k];
      x[k] = v > 0 ? __fdiv_rn(v, sp.penalty) : __fmul_rn(v, sp.penalty);
    }
    __syncthreads();
  }

  // 2. greedy
  if (!(sp.temperature > 0.0f)) {
    float bv = __uint_as_float(0x7fffffffu);
    int bi = 0x7fffffff;
    for (int i = t; i < V; i += T)
      if (better(x[i], i, bv, bi)) bv = x[i], bi = i;
    const int best = block_argmax(bv, bi, sv, si);
    if (t == 0) ids_out[r] = best;
    return;
  }

  // 3. temperature, then the candidate order when a cut needs one
  const bool cut_k = sp.top_k > 0 && sp.top_k < V;
  const bool nucleus = sp.top_p > 0.0f && sp.top_p < 1.0f;
  const bool sorted = cut_k || nucleus;
  uint32_t* keys0 = keys0_all + row;
  int32_t* ids0 = ids0_all + row;
  uint32_t* keys1 = keys1_all + row;
  int32_t* ids1 = ids1_all + row;
  float bv = __uint_as_float(0x7fffffffu);
  int bi = 0x7fffffff;
  for (int i = t; i < V; i += T) {
    const float v = __fdiv_rn(x[i], sp.temperature);
    x[i] = v;
    if (cut_k) {
      keys1[i] = order_key(v);  // select_smallest gathers the top k into keys0/ids0
    } else if (sorted) {
      keys0[i] = order_key(v);
      ids0[i] = i;
    } else if (better(v, i, bv, bi)) {
      bv = v, bi = i;
    }
  }
  __syncthreads();
  int top_id;
  if (sorted) {
    if (cut_k) select_smallest(keys1, V, sp.top_k, keys0, ids0, hist, sel, iscratch);
    radix_sort(keys0, ids0, keys1, ids1, counts_all + static_cast<int64_t>(r) * kDigits * T, cut_k ? sp.top_k : V,
               iscratch);
    top_id = ids0[0];
  } else {
    top_id = block_argmax(bv, bi, sv, si);
  }
  const float top = x[top_id];
  if (top != top) {  // every logit NaN: the first candidate (its draw was spent on the host, as on the CPU)
    if (t == 0) ids_out[r] = top_id;
    return;
  }

  // 4. weights and their prefix sums over each thread's chunk of candidates
  const int n = cut_k ? sp.top_k : V;
  const int chunk = (n + T - 1) / T;
  const int lo = min(n, t * chunk), hi = min(n, lo + chunk);
  double* w = w_all + row;
  double sum = 0.0;
  for (int i = lo; i < hi; ++i) sum += (w[i] = weight(x[sorted ? ids0[i] : i], top));
  const double base = block_exclusive_scan(sum, dscratch);
  const int owner_last = (n - 1) / chunk;  // the thread holding candidate n - 1: its end is the total
  if (t == owner_last) total_sh[0] = base + sum;
  if (t == 0) first_sh[0] = n;
  __syncthreads();
  double total = total_sh[0];
  int keep = n;
  if (nucleus) {  // keep candidates up to the first whose cumulative probability reaches top_p
    double qsum = 0.0;
    for (int i = lo; i < hi; ++i) qsum += w[i] / total;
    double cum = block_exclusive_scan(qsum, dscratch);
    for (int i = lo; i < hi; ++i) {
      cum += w[i] / total;
      if (cum >= static_cast<double>(sp.top_p)) {
        atomicMin(&first_sh[0], i + 1);
        break;
      }
    }
    __syncthreads();
    keep = first_sh[0];
    const int owner = (keep - 1) / chunk;
    if (t == owner) {  // the kept total: the cumulative weight at candidate keep - 1
      double c = base;
      for (int i = lo; i < keep; ++i) c += w[i];
      total_sh[0] = c;
    }
    if (t == 0) first_sh[0] = keep;
    __syncthreads();
    total = total_sh[0];
  }

  // 5. the draw: the first candidate whose cumulative weight exceeds u (the last kept one if none does)
  const double u = static_cast<double>(draws[r] >> 11) * 0x1.0p-53 * total;
  double cum = base;
  for (int i = lo; i < min(hi, keep); ++i) {
    cum += w[i];
    if (u < cum) {
      atomicMin(&first_sh[0], i);
      break;
    }
  }
  __syncthreads();
  if (t == 0) {
    const int pick = first_sh[0] < keep ? first_sh[0] : keep - 1;
    ids_out[r] = sorted ? ids0[pick] : pick;
  }
}

// ---- the host side ----------------------------------------------------------------------------------------

template <class T>
T* carve(char*& p, int64_t count) {
  T* at = reinterpret_cast<T*>(p);
  p += (count * static_cast<int64_t>(sizeof(T)) + 255) / 256 * 256;
  return at;
}

// One execution context's work buffers.
struct Workspace {
  int64_t rows = 0, vocab = 0;  // capacity
  char* dev = nullptr;
  int64_t dev_bytes = 0;
  float* x = nullptr;
  uint32_t* keys[2] = {};
  int32_t* ids[2] = {};
  int32_t* counts = nullptr;
  double* w = nullptr;
  char* in_dev = nullptr;  // the rows' draws, then the recent ids (one copy)
  int64_t* ids_dev = nullptr;
  char* stage = nullptr;  // host (pinned on a GPU): what in_dev receives, then the ids
  int64_t stage_bytes = 0;
  tcc::RecentIds recent_ids;  // host: de-duplicating the recent ids
};

std::mutex g_mu;
std::unordered_map<tcc_exec*, Workspace*> g_workspaces;

int64_t input_bytes(int64_t rows, int64_t vocab) { return (rows * 8 + vocab * 4 + 255) / 256 * 256; }

void* host_alloc(int64_t bytes) {
#if defined(TCC_SIMT)
  return malloc(static_cast<size_t>(bytes));
#else
  void* p = nullptr;
  return cudaMallocHost(&p, static_cast<size_t>(bytes)) == cudaSuccess ? p : nullptr;
#endif
}

void host_free(void* p) {
#if defined(TCC_SIMT)
  free(p);
#else
  if (p) cudaFreeHost(p);
#endif
}

void free_buffers(tcc_exec* exec, Workspace* ws) {
  tcc_device_free(exec, ws->dev, ws->dev_bytes);
  host_free(ws->stage);
  ws->dev = nullptr;
  ws->stage = nullptr;
  ws->rows = ws->vocab = 0;
}

// The context's workspace with room for rows x vocab; nullptr (and *why) when it cannot be allocated.
Workspace* workspace(tcc_exec* exec, int64_t rows, int64_t vocab, const char** why) {
  std::lock_guard<std::mutex> lock(g_mu);
  Workspace*& ws = g_workspaces[exec];
  if (ws == nullptr) ws = new Workspace();
  if (ws->rows >= rows && ws->vocab >= vocab) return ws;
  free_buffers(exec, ws);
  const int64_t n = rows * vocab;
  const int64_t bytes = 256 * 12 + n * (4 + 2 * 4 + 2 * 4 + 8) + rows * kDigits * kThreads * 4 +
                        input_bytes(rows, vocab) + rows * 8;
  const char* reason = "out of memory";
  ws->dev = static_cast<char*>(tcc_device_alloc(exec, bytes, &reason));
  ws->stage_bytes = input_bytes(rows, vocab) + rows * 8;
  ws->stage = static_cast<char*>(host_alloc(ws->stage_bytes));
  if (ws->dev == nullptr || ws->stage == nullptr) {
    if (ws->dev == nullptr) ws->dev_bytes = 0;
    free_buffers(exec, ws);
    if (why) *why = "token selection: cannot allocate its work buffers (out of memory)";
    return nullptr;
  }
  ws->dev_bytes = bytes;
  char* p = ws->dev;
  ws->x = carve<float>(p, n);
  for (int b = 0; b < 2; ++b) ws->keys[b] = carve<uint32_t>(p, n), ws->ids[b] = carve<int32_t>(p, n);
  ws->counts = carve<int32_t>(p, rows * kDigits * kThreads);
  ws->w = carve<double>(p, n);
  ws->in_dev = carve<char>(p, input_bytes(rows, vocab));
  ws->ids_dev = carve<int64_t>(p, rows);
  ws->recent_ids.reset(vocab);
  ws->rows = rows;
  ws->vocab = vocab;
  return ws;
}

const char* device_failure(tcc_exec* exec, const char* what) {
  if (tcc_exec_sync(exec)) return tcc_exec_error(exec);
  return what;
}

}  // namespace

extern "C" int tcc_device_select(tcc_exec* exec, const float* logits, int64_t rows, int64_t row_stride, int64_t vocab,
                                 const tcc_sampling* p, const int64_t* recent, int64_t n_recent, uint64_t* rng,
                                 int64_t* ids_out, const char** why) {
  if (const char* bad = tcc::select_check(logits, rows, row_stride, vocab, p, recent, n_recent, rng, ids_out)) {
    if (why) *why = bad;
    return 1;
  }
  Workspace* ws = workspace(exec, rows, vocab, why);
  if (ws == nullptr) return 1;
  // staged in pinned host memory, then one copy to the device
  const int n_rec = tcc::select_stage(p, rows, rng, recent, n_recent, vocab, &ws->recent_ids, ws->stage);
  const int64_t in_bytes = rows * 8 + int64_t(n_rec) * 4;
  const uint64_t* draws_dev = reinterpret_cast<const uint64_t*>(ws->in_dev);
  const int32_t* recent_dev = reinterpret_cast<const int32_t*>(ws->in_dev + rows * 8);
  const Sampling sp{p->temperature, p->top_p, n_rec > 0 ? p->repetition_penalty : 1.0f, p->top_k};
#if defined(TCC_SIMT)
  memcpy(ws->in_dev, ws->stage, static_cast<size_t>(in_bytes));
#else
  if (cudaMemcpyAsync(ws->in_dev, ws->stage, static_cast<size_t>(in_bytes), cudaMemcpyHostToDevice,
                      tcc_cuda_stream(exec)) != cudaSuccess) {
    if (why) *why = device_failure(exec, "token selection: the copy to the device failed");
    return 1;
  }
#endif
  TCC_LAUNCH(tcc_select_kernel, dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, exec, logits, row_stride,
             static_cast<int>(vocab), sp, draws_dev, recent_dev, n_rec, ws->x, ws->keys[0], ws->ids[0], ws->keys[1],
             ws->ids[1], ws->counts, ws->w, ws->ids_dev);
  int64_t* ids_host = reinterpret_cast<int64_t*>(ws->stage + input_bytes(ws->rows, ws->vocab));
#if defined(TCC_SIMT)
  memcpy(ids_host, ws->ids_dev, static_cast<size_t>(rows * 8));
#else
  if (cudaMemcpyAsync(ids_host, ws->ids_dev, static_cast<size_t>(rows * 8), cudaMemcpyDeviceToHost,
                      tcc_cuda_stream(exec)) != cudaSuccess) {
    if (why) *why = device_failure(exec, "token selection: the copy from the device failed");
    return 1;
  }
#endif
#if defined(TCC_SIMT)
  if (tcc_exec_sync(exec)) {  // the launch's errors (the emulator records them on the context)
    if (why) *why = tcc_exec_error(exec);
    return 1;
  }
#else
  // A stream sync, not tcc_exec_sync: the kernel never writes the device error slot, so reading it back (one
  // more device-to-host copy per step) would tell nothing; a launch error is already on the context.
  const cudaError_t done = cudaStreamSynchronize(tcc_cuda_stream(exec));
  if (done != cudaSuccess || *tcc_exec_error(exec)) {
    thread_local char text[256];
    snprintf(text, sizeof text, "token selection failed: %s",
             done != cudaSuccess ? cudaGetErrorString(done) : tcc_exec_error(exec));
    if (why) *why = text;
    return 1;
  }
#endif
  memcpy(ids_out, ids_host, static_cast<size_t>(rows * 8));
  return 0;
}

extern "C" void tcc_device_select_release(tcc_exec* exec) {
  Workspace* ws = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_workspaces.find(exec);
    if (it == g_workspaces.end()) return;
    ws = it->second;
    g_workspaces.erase(it);
  }
  free_buffers(exec, ws);
  delete ws;
}
