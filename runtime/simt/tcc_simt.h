// tcc CPU SIMT emulator: CUDA built-ins for a .cu file compiled as C++17 by the host compiler.
// Part of the tcc runtime library (docs/cuda.md, "The SIMT emulator").
//
// Included by runtime/tcc_cuda.h when TCC_SIMT is defined:
//   g++ -std=c++17 -x c++ -DTCC_SIMT -I runtime -fPIC -shared kernel.cu ... runtime/device_simt.cpp
// TCC_LAUNCH runs a kernel's grid one block at a time on the calling OS thread; each thread of the block is a
// fiber (runtime/device_simt.cpp schedules them). A barrier runs every live thread of the block to it before
// any continues; a warp collective (shuffle, vote, __syncwarp) runs every lane of its mask to it and then
// exchanges values through a per-lane scratchpad. Barrier divergence, lanes at different collectives,
// deadlocks, shared memory out of bounds and bad launch configurations are errors recorded on the
// execution context (the next tcc_exec_sync fails with a one-line message), never ignored.
// Generic: nothing here knows about a particular kernel.
#pragma once
#if !defined(__cplusplus) || __cplusplus < 201703L
#error "the SIMT emulator compiles CUDA sources as C++17 (g++ -std=c++17 -x c++ -DTCC_SIMT)"
#endif
#include <limits.h>  // INT_MAX & co., as nvcc's headers give them (not FLT_MAX: nvcc does not)
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../tcc_device.h"

// ---- CUDA qualifiers: plain C++ here ----------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---- vector types -------------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
#define TCC_SIMT_VEC2(T, N, A) \
  struct alignas(A) N##2 { T x, y; }; \
  inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define TCC_SIMT_VEC4(T, N, A) \
  struct alignas(A) N##4 { T x, y, z, w; }; \
  inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
TCC_SIMT_VEC2(float, float, 8)
TCC_SIMT_VEC4(float, float, 16)
TCC_SIMT_VEC2(int, int, 8)
TCC_SIMT_VEC4(int, int, 16)
TCC_SIMT_VEC2(unsigned, uint, 8)
TCC_SIMT_VEC4(unsigned, uint, 16)
TCC_SIMT_VEC2(double, double, 16)
TCC_SIMT_VEC2(short, short, 4)
TCC_SIMT_VEC2(unsigned short, ushort, 4)
TCC_SIMT_VEC4(signed char, char, 4)
TCC_SIMT_VEC4(unsigned char, uchar, 4)
TCC_SIMT_VEC2(long long, longlong, 16)
TCC_SIMT_VEC2(unsigned long long, ulonglong, 16)
struct float3 { float x, y, z; };
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
struct int3 { int x, y, z; };
inline int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
#undef TCC_SIMT_VEC2
#undef TCC_SIMT_VEC4

// ---- CUDA runtime types the shared header and launchers name --------------------------------------------
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

// ---- the emulator's interface (runtime/device_simt.cpp) ---------------------------------------------------
namespace tcc_simt {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;

// Where a shared array was declared, for error messages; its address is the array's per-block key.
struct SmemSite {
  const char* name;
  const char* file;
  int line;
};

// A collective's kind (the scratchpad protocol of device_simt.cpp).
enum CollectiveKind {
  kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncwarp,
  kReduceAddU, kReduceMinU, kReduceMaxU, kReduceAddI, kReduceMinI, kReduceMaxI,
  kGather,  // emulator-only: every lane of the warp sees every lane's pointer (warp_gather)
  kActiveMask,
};

// One emulated thread (a fiber). The scratchpad `in`/`out` carries a collective's operand and result.
struct Thread {
  uint3 tid;
  int linear, lane, warp;
  int state;  // device_simt.cpp: Runnable, AtBarrier, AtCollective, Done, Aborted
  const char* file;  // where it waits (barrier or collective)
  int line;
  int kind;  // CollectiveKind, or -1 for __syncthreads
  unsigned mask;
  int arg, width;
  int pred;  // __syncthreads_count/and/or operand
  alignas(16) unsigned char in[16];
  alignas(16) unsigned char out[16];
  void* sp;  // saved stack pointer (hand-written context switch)
  void* uctx;  // ucontext_t* (fallback context switch)
};

struct BlockInfo {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  int sync_result;  // __syncthreads_count/and/or: the combined predicate of the last released barrier
};

extern Thread* g_cur;      // the running fiber
extern BlockInfo g_block;  // the running block

// Kernel-side entry points (they run on a fiber).
void barrier(const char* file, int line, int pred);
void collective(int kind, unsigned mask, int arg, int width, const char* file, int line);
unsigned activemask(const char* file, int line);
[[noreturn]] void fail(const char* what);
[[noreturn]] void smem_out_of_bounds(const SmemSite* site, int64_t index, int64_t n);
void* shared_static(const SmemSite* site, size_t bytes, size_t align);
void* shared_dynamic(int64_t* bytes);
// Emulator-only fast path of the fragment helpers (runtime/tcc_cuda_ptx.h): a collective of the whole warp
// after which table[l] is lane l's `mine`; the lanes' data stays alive until their next collective.
const void* const* warp_gather(const void* mine, const char* file, int line);
bool fast_fragments();  // tcc_simt_set_fast_fragments (default on)

// Host-side launch.
struct Dim { int64_t x, y, z; };
inline Dim to_dim(dim3 d) { return Dim{d.x, d.y, d.z}; }
inline Dim to_dim(uint3 d) { return Dim{d.x, d.y, d.z}; }
template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
inline Dim to_dim(I n) { return Dim{static_cast<int64_t>(n), 1, 1}; }
void launch(const char* kernel, tcc_exec* exec, Dim grid, Dim block, int64_t shared_bytes, const void* func,
            void (*thunk)(void*), void* ctx);
cudaError_t set_max_dynamic_shared(const void* func, int bytes);
cudaError_t last_error(bool clear);

// Graphs (tcc_device.h): while `exec` captures, a launch is recorded (a heap copy of its pack, freed with
// `destroy`) instead of run; tcc_graph_launch runs the recorded launches in order.
bool capturing(tcc_exec* exec);
void record(const char* kernel, tcc_exec* exec, Dim grid, Dim block, int64_t shared_bytes, const void* func,
            void (*thunk)(void*), void* ctx, void (*destroy)(void*));

template <class F, class Tuple>
struct LaunchPack {
  F* kernel;
  Tuple args;
  static void run(void* p) {
    auto* self = static_cast<LaunchPack*>(p);
    std::apply(self->kernel, self->args);  // each thread gets its own copies of the by-value arguments
  }
  static void destroy(void* p) { delete static_cast<LaunchPack*>(p); }
};
template <class F, class... A>
void launch_kernel(const char* name, tcc_exec* exec, Dim grid, Dim block, int64_t shared_bytes, F* kernel,
                   A&&... args) {
  using Tuple = std::tuple<std::decay_t<A>...>;
  if (capturing(exec)) {  // the argument values of this moment are what every replay passes
    auto* held = new LaunchPack<F, Tuple>{kernel, Tuple(std::forward<A>(args)...)};
    record(name, exec, grid, block, shared_bytes, reinterpret_cast<const void*>(kernel), &LaunchPack<F, Tuple>::run,
           held, &LaunchPack<F, Tuple>::destroy);
    return;
  }
  LaunchPack<F, Tuple> pack{kernel, Tuple(std::forward<A>(args)...)};
  launch(name, exec, grid, block, shared_bytes, reinterpret_cast<const void*>(kernel), &LaunchPack<F, Tuple>::run,
         &pack);
}

// ---- bounds-checked shared memory ---------------------------------------------------------------------
// A pointer into one shared array: every dereference is checked against the array's extent; an access
// outside it is an error (the thread stops before touching memory). Arithmetic is free, as on a pointer.
template <class T>
struct smem_ptr {
  T* base;
  int64_t n, off;
  const SmemSite* site;

  T& at(int64_t i) const {
    const int64_t k = off + i;
    if (k < 0 || k >= n) smem_out_of_bounds(site, k, n);
    return base[k];
  }
  template <class I, class = std::enable_if_t<std::is_integral_v<I> || std::is_enum_v<I>>>
  T& operator[](I i) const { return at(static_cast<int64_t>(i)); }
  T& operator*() const { return at(0); }
  T* operator->() const { return &at(0); }
  template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
  smem_ptr operator+(I i) const { return smem_ptr{base, n, off + static_cast<int64_t>(i), site}; }
  template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
  smem_ptr operator-(I i) const { return smem_ptr{base, n, off - static_cast<int64_t>(i), site}; }
  template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
  smem_ptr& operator+=(I i) { off += static_cast<int64_t>(i); return *this; }
  template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
  smem_ptr& operator-=(I i) { off -= static_cast<int64_t>(i); return *this; }
  smem_ptr& operator++() { ++off; return *this; }
  smem_ptr& operator--() { --off; return *this; }
  smem_ptr operator++(int) { smem_ptr p = *this; ++off; return p; }
  smem_ptr operator--(int) { smem_ptr p = *this; --off; return p; }
  ptrdiff_t operator-(const smem_ptr& o) const { return (base + off) - (o.base + o.off); }
  // Escape hatches (unchecked from there on): a raw pointer, as CUDA code passes shared arrays to functions
  // taking T*, or casts them ((float4*)tile) for vector accesses.
  operator T*() const { return base + off; }
  template <class U, class = std::enable_if_t<!std::is_same_v<U, T>>>
  explicit operator U*() const { return reinterpret_cast<U*>(base + off); }
};
template <class T, class I, class = std::enable_if_t<std::is_integral_v<I>>>
smem_ptr<T> operator+(I i, const smem_ptr<T>& p) { return p + i; }

// A 2-D shared array: a[r] is the checked row r, a[r][c] checks c against the row's length.
template <class T>
struct smem_ptr2 {
  T* base;
  int64_t rows, cols;
  const SmemSite* site;
  template <class I, class = std::enable_if_t<std::is_integral_v<I> || std::is_enum_v<I>>>
  smem_ptr<T> operator[](I r) const {
    const int64_t k = static_cast<int64_t>(r);
    if (k < 0 || k >= rows) smem_out_of_bounds(site, k, rows);
    return smem_ptr<T>{base + k * cols, cols, 0, site};
  }
  operator T*() const { return base; }
};

template <class T>
smem_ptr<T> shared_array(const SmemSite* site, int64_t n) {
  static_assert(std::is_trivially_copyable_v<T>, "shared memory holds trivially copyable types");
  const size_t align = alignof(T) > 16 ? alignof(T) : 16;
  T* p = static_cast<T*>(shared_static(site, static_cast<size_t>(n) * sizeof(T), align));
  return smem_ptr<T>{p, n, 0, site};
}
template <class T>
smem_ptr2<T> shared_array2(const SmemSite* site, int64_t rows, int64_t cols) {
  const size_t align = alignof(T) > 16 ? alignof(T) : 16;
  T* p = static_cast<T*>(shared_static(site, static_cast<size_t>(rows * cols) * sizeof(T), align));
  return smem_ptr2<T>{p, rows, cols, site};
}
template <class T>
smem_ptr<T> dynamic_array(const SmemSite* site) {
  int64_t bytes = 0;
  T* p = static_cast<T*>(shared_dynamic(&bytes));
  return smem_ptr<T>{p, bytes / static_cast<int64_t>(sizeof(T)), 0, site};
}

template <class T>
T shuffle(int kind, unsigned mask, const T& v, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16,
                "warp shuffles move trivially copyable values of at most 16 bytes");
  memcpy(g_cur->in, &v, sizeof(T));
  collective(kind, mask, arg, width, file, line);
  T r;
  memcpy(&r, g_cur->out, sizeof(T));
  return r;
}
inline unsigned vote(int kind, unsigned mask, unsigned value, const char* file, int line) {
  memcpy(g_cur->in, &value, sizeof value);
  collective(kind, mask, 0, kWarp, file, line);
  unsigned r;
  memcpy(&r, g_cur->out, sizeof r);
  return r;
}

}  // namespace tcc_simt

#define TCC_SIMT_CAT2(a, b) a##b
#define TCC_SIMT_CAT(a, b) TCC_SIMT_CAT2(a, b)

// ---- shared memory and launches (the contract's macros; tcc_cuda.h has the nvcc ones) ---------------------
// Each declaration gets a static site (its name, file:line for messages; its address is the per-block key).
#define TCC_SHARED(T, name, n) TCC_SIMT_SHARED_(T, name, (n), TCC_SIMT_CAT(tcc_smem_site_, __COUNTER__))
#define TCC_SIMT_SHARED_(T, name, n, site)                                  \
  static const ::tcc_simt::SmemSite site = {#name, __FILE__, __LINE__};    \
  ::tcc_simt::smem_ptr<T> name = ::tcc_simt::shared_array<T>(&site, n)
#define TCC_SHARED2(T, name, rows, cols) \
  TCC_SIMT_SHARED2_(T, name, (rows), (cols), TCC_SIMT_CAT(tcc_smem_site_, __COUNTER__))
#define TCC_SIMT_SHARED2_(T, name, rows, cols, site)                        \
  static const ::tcc_simt::SmemSite site = {#name, __FILE__, __LINE__};    \
  ::tcc_simt::smem_ptr2<T> name = ::tcc_simt::shared_array2<T>(&site, rows, cols)
#define TCC_DYN_SHARED(T, name) TCC_SIMT_DYN_SHARED_(T, name, TCC_SIMT_CAT(tcc_smem_site_, __COUNTER__))
#define TCC_SIMT_DYN_SHARED_(T, name, site)                                 \
  static const ::tcc_simt::SmemSite site = {#name, __FILE__, __LINE__};    \
  ::tcc_simt::smem_ptr<T> name = ::tcc_simt::dynamic_array<T>(&site)
// Runs every block of the grid before returning (the emulator has no stream: a launch is synchronous).
#define TCC_LAUNCH(kernel, grid, block, shared_bytes, exec, ...)                                         \
  ::tcc_simt::launch_kernel(#kernel, (exec), ::tcc_simt::to_dim(grid), ::tcc_simt::to_dim(block),        \
                            static_cast<int64_t>(shared_bytes), &kernel, ##__VA_ARGS__)

// ---- built-in variables -----------------------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(::tcc_simt::g_cur->tid))
#define blockIdx (static_cast<const uint3&>(::tcc_simt::g_block.block_idx))
#define blockDim (static_cast<const dim3&>(::tcc_simt::g_block.block_dim))
#define gridDim (static_cast<const dim3&>(::tcc_simt::g_block.grid_dim))
constexpr int warpSize = 32;

// ---- synchronization ----------------------------------------------------------------------------------------
#define __syncthreads() ::tcc_simt::barrier(__FILE__, __LINE__, 0)
#define __syncthreads_count(p) (::tcc_simt::barrier(__FILE__, __LINE__, (p) ? 1 : 0), ::tcc_simt::g_block.sync_result)
#define __syncthreads_and(p) (::tcc_simt::barrier(__FILE__, __LINE__, (p) ? 1 : 0), \
                              ::tcc_simt::g_block.sync_result == static_cast<int>(blockDim.x * blockDim.y * blockDim.z))
#define __syncthreads_or(p) (::tcc_simt::barrier(__FILE__, __LINE__, (p) ? 1 : 0), ::tcc_simt::g_block.sync_result != 0)
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  ::tcc_simt::collective(::tcc_simt::kSyncwarp, mask, 0, 32, file, line);
}
// Memory fences order nothing here: one block runs at a time on one OS thread.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- warp shuffles and votes --------------------------------------------------------------------------------
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  return ::tcc_simt::shuffle(::tcc_simt::kShflIdx, mask, var, src_lane, width, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  return ::tcc_simt::shuffle(::tcc_simt::kShflUp, mask, var, static_cast<int>(delta), width, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  return ::tcc_simt::shuffle(::tcc_simt::kShflDown, mask, var, static_cast<int>(delta), width, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
  return ::tcc_simt::shuffle(::tcc_simt::kShflXor, mask, var, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::tcc_simt::vote(::tcc_simt::kBallot, mask, pred != 0, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return static_cast<int>(::tcc_simt::vote(::tcc_simt::kAny, mask, pred != 0, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return static_cast<int>(::tcc_simt::vote(::tcc_simt::kAll, mask, pred != 0, file, line));
}
// The lanes of the warp at this __activemask once no lane of the warp can run on (docs/cuda.md).
inline unsigned __activemask(const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::tcc_simt::activemask(file, line);
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::tcc_simt::vote(::tcc_simt::kReduceAddU, mask, v, file, line);
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::tcc_simt::vote(::tcc_simt::kReduceMinU, mask, v, file, line);
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return ::tcc_simt::vote(::tcc_simt::kReduceMaxU, mask, v, file, line);
}
inline int __reduce_add_sync(unsigned mask, int v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return static_cast<int>(::tcc_simt::vote(::tcc_simt::kReduceAddI, mask, static_cast<unsigned>(v), file, line));
}
inline int __reduce_min_sync(unsigned mask, int v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return static_cast<int>(::tcc_simt::vote(::tcc_simt::kReduceMinI, mask, static_cast<unsigned>(v), file, line));
}
inline int __reduce_max_sync(unsigned mask, int v, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  return static_cast<int>(::tcc_simt::vote(::tcc_simt::kReduceMaxI, mask, static_cast<unsigned>(v), file, line));
}

// ---- atomics: plain read-modify-write (one block at a time, fibers switch only at collectives) ----------
#define TCC_SIMT_ATOMIC(name, T, expr) \
  inline T name(T* p, T v) { T old = *p; *p = (expr); return old; }
TCC_SIMT_ATOMIC(atomicAdd, int, old + v)
TCC_SIMT_ATOMIC(atomicAdd, unsigned, old + v)
TCC_SIMT_ATOMIC(atomicAdd, unsigned long long, old + v)
TCC_SIMT_ATOMIC(atomicAdd, float, old + v)
TCC_SIMT_ATOMIC(atomicAdd, double, old + v)
TCC_SIMT_ATOMIC(atomicSub, int, old - v)
TCC_SIMT_ATOMIC(atomicSub, unsigned, old - v)
TCC_SIMT_ATOMIC(atomicMax, int, old < v ? v : old)
TCC_SIMT_ATOMIC(atomicMax, unsigned, old < v ? v : old)
TCC_SIMT_ATOMIC(atomicMax, long long, old < v ? v : old)
TCC_SIMT_ATOMIC(atomicMax, unsigned long long, old < v ? v : old)
TCC_SIMT_ATOMIC(atomicMin, int, v < old ? v : old)
TCC_SIMT_ATOMIC(atomicMin, unsigned, v < old ? v : old)
TCC_SIMT_ATOMIC(atomicMin, long long, v < old ? v : old)
TCC_SIMT_ATOMIC(atomicMin, unsigned long long, v < old ? v : old)
TCC_SIMT_ATOMIC(atomicExch, int, v)
TCC_SIMT_ATOMIC(atomicExch, unsigned, v)
TCC_SIMT_ATOMIC(atomicExch, unsigned long long, v)
TCC_SIMT_ATOMIC(atomicExch, float, v)
TCC_SIMT_ATOMIC(atomicAnd, int, old & v)
TCC_SIMT_ATOMIC(atomicAnd, unsigned, old & v)
TCC_SIMT_ATOMIC(atomicOr, int, old | v)
TCC_SIMT_ATOMIC(atomicOr, unsigned, old | v)
TCC_SIMT_ATOMIC(atomicXor, int, old ^ v)
TCC_SIMT_ATOMIC(atomicXor, unsigned, old ^ v)
TCC_SIMT_ATOMIC(atomicInc, unsigned, old >= v ? 0u : old + 1u)
TCC_SIMT_ATOMIC(atomicDec, unsigned, (old == 0u || old > v) ? v : old - 1u)
#undef TCC_SIMT_ATOMIC
#define TCC_SIMT_CAS(T) \
  inline T atomicCAS(T* p, T compare, T v) { T old = *p; if (old == compare) *p = v; return old; }
TCC_SIMT_CAS(int)
TCC_SIMT_CAS(unsigned)
TCC_SIMT_CAS(unsigned long long)
TCC_SIMT_CAS(unsigned short)
#undef TCC_SIMT_CAS

// ---- loads, bit casts, integer intrinsics -------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
namespace tcc_simt {
template <class To, class From>
inline To bit_cast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of one size");
  To t;
  memcpy(&t, &f, sizeof t);
  return t;
}
}  // namespace tcc_simt
inline float __int_as_float(int v) { return tcc_simt::bit_cast<float>(v); }
inline int __float_as_int(float v) { return tcc_simt::bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return tcc_simt::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return tcc_simt::bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return tcc_simt::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return tcc_simt::bit_cast<long long>(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline unsigned __brev(unsigned v) {
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
  v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
  return (v >> 16) | (v << 16);
}
// PTX prmt (default mode): byte i of the result is byte (s >> 4i) & 7 of the 8-byte value {y, x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>((v << (shift & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>(v >> (shift & 31));
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((1ull * a * b) >> 32); }
inline int __mulhi(int a, int b) { return static_cast<int>((1ll * a * b) >> 32); }
__extension__ typedef unsigned __int128 tcc_simt_u128;
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<tcc_simt_u128>(a) * b) >> 64);
}
inline int __mul24(int a, int b) { return ((a << 8) >> 8) * ((b << 8) >> 8); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
// CUDA's device-side integer min/max overloads (std::min/max need one type).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a < b ? b : a; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a < b ? b : a; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- float intrinsics: the fast-math ones are computed at full precision here (docs/cuda.md) ---------
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(nearbyintf(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(nearbyintf(x)); }

// ---- __half / __half2: IEEE binary16, round to nearest even ------------------------------------------------
namespace tcc_simt {
// float -> binary16, round to nearest even (overflow to inf, gradual underflow, NaN -> 0x7fff as CUDA).
inline uint16_t f2h(float f) {
  uint32_t x = bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return x > 0x7f800000u ? 0x7fffu : static_cast<uint16_t>(sign | 0x7c00u);
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: rounds to inf
  if (x >= 0x38800000u) {                                                 // normal: >= 2^-14
    x += 0xfffu + ((x >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((x - 0x38000000u) >> 13));
  }
  if (x <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25: the tie at 2^-25 rounds to even 0
  const int e = static_cast<int>(x >> 23);
  const uint32_t m = (x & 0x7fffffu) | 0x800000u;
  const int shift = 126 - e;  // value / 2^-24 = m * 2^(e - 126)
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}
inline float h2f(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0x1fu) {
    bits = sign | 0x7f800000u | (m << 13);
  } else if (e == 0) {
    if (m == 0) {
      bits = sign;
    } else {
      e = 113;
      while (!(m & 0x400u)) { m <<= 1; --e; }
      bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
  } else {
    bits = sign | ((e + 112u) << 23) | (m << 13);
  }
  return bit_cast<float>(bits);
}
// double -> binary16 without double rounding: round to odd into float (24 >= 11 + 2 bits), then to nearest.
inline uint16_t d2h(double d) {
  float f = static_cast<float>(d);
  if (std::isfinite(d) && static_cast<double>(f) != d) {
    if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = nextafterf(f, 0.0f);
    f = bit_cast<float>(bit_cast<uint32_t>(f) | 1u);
  }
  return f2h(f);
}
// a*b + c rounded once: the product of two halves is exact in double; the sum is made round-to-odd
// (TwoSum gives its error) so that the final rounding to binary16 is the only one that counts.
inline uint16_t fma_h(float a, float b, float c) {
  const double p = static_cast<double>(a) * b, s = p + c;
  if (!std::isfinite(s)) return d2h(s);
  const double bb = s - p, err = (p - (s - bb)) + (c - bb);
  double r = s;
  if (err != 0 && !(bit_cast<uint64_t>(s) & 1u)) r = nextafter(s, err > 0 ? INFINITY : -INFINITY);
  return d2h(r);
}
}  // namespace tcc_simt

struct __half_raw {
  unsigned short x;
};
struct alignas(2) __half {
  unsigned short __x;
  __half() = default;
  constexpr __half(const __half_raw& r) : __x(r.x) {}
  __half(float f) : __x(tcc_simt::f2h(f)) {}
  __half(double d) : __x(tcc_simt::d2h(d)) {}
  __half(int v) : __x(tcc_simt::d2h(v)) {}
  __half(unsigned v) : __x(tcc_simt::d2h(v)) {}
  __half(long long v) : __x(tcc_simt::d2h(static_cast<double>(v))) {}
  __half(unsigned long long v) : __x(tcc_simt::d2h(static_cast<double>(v))) {}
  __half(short v) : __x(tcc_simt::d2h(v)) {}
  __half(unsigned short v) : __x(tcc_simt::d2h(v)) {}
  __half& operator=(float f) { __x = tcc_simt::f2h(f); return *this; }
  __half& operator=(const __half_raw& r) { __x = r.x; return *this; }
  operator float() const { return tcc_simt::h2f(__x); }
  operator __half_raw() const { return __half_raw{__x}; }
};
typedef __half half;
struct alignas(4) __half2 {
  __half x, y;
  __half2() = default;
  constexpr __half2(const __half& a, const __half& b) : x(a), y(b) {}
};
typedef __half2 half2;
struct __half2_raw {
  unsigned short x, y;
};

namespace tcc_simt {
inline __half mkh(uint16_t bits) { return __half(__half_raw{bits}); }
}  // namespace tcc_simt

inline __half __float2half(float f) { return tcc_simt::mkh(tcc_simt::f2h(f)); }
inline __half __float2half_rn(float f) { return tcc_simt::mkh(tcc_simt::f2h(f)); }
inline __half __double2half(double d) { return tcc_simt::mkh(tcc_simt::d2h(d)); }
inline float __half2float(__half h) { return tcc_simt::h2f(h.__x); }
inline __half __int2half_rn(int v) { return tcc_simt::mkh(tcc_simt::d2h(v)); }
inline int __half2int_rn(__half h) { return static_cast<int>(nearbyintf(__half2float(h))); }
inline int __half2int_rz(__half h) { return static_cast<int>(__half2float(h)); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline __half __ushort_as_half(unsigned short v) { return tcc_simt::mkh(v); }
inline __half __short_as_half(short v) { return tcc_simt::mkh(static_cast<uint16_t>(v)); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2(__float2half_rn(a), __float2half_rn(b)); }
inline __half2 __float2half2_rn(float a) { return __half2(__float2half_rn(a), __float2half_rn(a)); }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half2 __halves2half2(__half a, __half b) { return __half2(a, b); }
inline __half2 make_half2(__half a, __half b) { return __half2(a, b); }
inline __half2 __half2half2(__half a) { return __half2(a, a); }
inline __half2 __low2half2(__half2 h) { return __half2(h.x, h.x); }
inline __half2 __high2half2(__half2 h) { return __half2(h.y, h.y); }
inline __half2 __lowhigh2highlow(__half2 h) { return __half2(h.y, h.x); }
inline __half2 __lows2half2(__half2 a, __half2 b) { return __half2(a.x, b.x); }
inline __half2 __highs2half2(__half2 a, __half2 b) { return __half2(a.y, b.y); }

// Arithmetic: computed in float and rounded once (exact for + - * /: float has >= 2*11 + 2 bits).
inline __half __hadd(__half a, __half b) { return __float2half_rn(__half2float(a) + __half2float(b)); }
inline __half __hsub(__half a, __half b) { return __float2half_rn(__half2float(a) - __half2float(b)); }
inline __half __hmul(__half a, __half b) { return __float2half_rn(__half2float(a) * __half2float(b)); }
inline __half __hdiv(__half a, __half b) { return __float2half_rn(__half2float(a) / __half2float(b)); }
inline __half __hfma(__half a, __half b, __half c) {
  return tcc_simt::mkh(tcc_simt::fma_h(__half2float(a), __half2float(b), __half2float(c)));
}
inline __half __hneg(__half a) { return tcc_simt::mkh(a.__x ^ 0x8000u); }
inline __half __habs(__half a) { return tcc_simt::mkh(a.__x & 0x7fffu); }
inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
inline int __hisinf(__half a) { return (a.__x & 0x7fffu) == 0x7c00u ? ((a.__x & 0x8000u) ? -1 : 1) : 0; }
// Max/min: a NaN operand yields the other one (as fmaxf and CUDA's __hmax).
inline __half __hmax(__half a, __half b) { return __float2half_rn(fmaxf(__half2float(a), __half2float(b))); }
inline __half __hmin(__half a, __half b) { return __float2half_rn(fminf(__half2float(a), __half2float(b))); }
inline bool __heq(__half a, __half b) { return __half2float(a) == __half2float(b); }
inline bool __hne(__half a, __half b) { return __half2float(a) != __half2float(b); }
inline bool __hlt(__half a, __half b) { return __half2float(a) < __half2float(b); }
inline bool __hle(__half a, __half b) { return __half2float(a) <= __half2float(b); }
inline bool __hgt(__half a, __half b) { return __half2float(a) > __half2float(b); }
inline bool __hge(__half a, __half b) { return __half2float(a) >= __half2float(b); }
inline __half hsqrt(__half a) { return __float2half_rn(sqrtf(__half2float(a))); }
inline __half hrsqrt(__half a) { return __float2half_rn(1.0f / sqrtf(__half2float(a))); }
inline __half hexp(__half a) { return __float2half_rn(expf(__half2float(a))); }
inline __half hlog(__half a) { return __float2half_rn(logf(__half2float(a))); }
inline __half hrcp(__half a) { return __float2half_rn(1.0f / __half2float(a)); }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
inline __half2 __h2div(__half2 a, __half2 b) { return __half2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));
}
inline __half2 __hneg2(__half2 a) { return __half2(__hneg(a.x), __hneg(a.y)); }
inline __half2 __habs2(__half2 a) { return __half2(__habs(a.x), __habs(a.y)); }
inline __half2 __hmax2(__half2 a, __half2 b) { return __half2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }
inline __half2 __hmin2(__half2 a, __half2 b) { return __half2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }

inline __half operator+(const __half& a, const __half& b) { return __hadd(a, b); }
inline __half operator-(const __half& a, const __half& b) { return __hsub(a, b); }
inline __half operator*(const __half& a, const __half& b) { return __hmul(a, b); }
inline __half operator/(const __half& a, const __half& b) { return __hdiv(a, b); }
inline __half operator-(const __half& a) { return __hneg(a); }
inline __half operator+(const __half& a) { return a; }
inline __half& operator+=(__half& a, const __half& b) { return a = __hadd(a, b); }
inline __half& operator-=(__half& a, const __half& b) { return a = __hsub(a, b); }
inline __half& operator*=(__half& a, const __half& b) { return a = __hmul(a, b); }
inline __half& operator/=(__half& a, const __half& b) { return a = __hdiv(a, b); }
inline bool operator==(const __half& a, const __half& b) { return __heq(a, b); }
inline bool operator!=(const __half& a, const __half& b) { return __hne(a, b); }
inline bool operator<(const __half& a, const __half& b) { return __hlt(a, b); }
inline bool operator<=(const __half& a, const __half& b) { return __hle(a, b); }
inline bool operator>(const __half& a, const __half& b) { return __hgt(a, b); }
inline bool operator>=(const __half& a, const __half& b) { return __hge(a, b); }
inline __half2 operator+(const __half2& a, const __half2& b) { return __hadd2(a, b); }
inline __half2 operator-(const __half2& a, const __half2& b) { return __hsub2(a, b); }
inline __half2 operator*(const __half2& a, const __half2& b) { return __hmul2(a, b); }
inline __half2 operator/(const __half2& a, const __half2& b) { return __h2div(a, b); }
inline __half2 operator-(const __half2& a) { return __hneg2(a); }
inline __half2& operator+=(__half2& a, const __half2& b) { return a = __hadd2(a, b); }
inline __half2& operator-=(__half2& a, const __half2& b) { return a = __hsub2(a, b); }
inline __half2& operator*=(__half2& a, const __half2& b) { return a = __hmul2(a, b); }
inline bool operator==(const __half2& a, const __half2& b) { return a.x == b.x && a.y == b.y; }
inline bool operator!=(const __half2& a, const __half2& b) { return !(a == b); }

inline __half atomicAdd(__half* p, __half v) { const __half old = *p; *p = __hadd(old, v); return old; }
inline __half2 atomicAdd(__half2* p, __half2 v) { const __half2 old = *p; *p = __hadd2(old, v); return old; }

// ---- CUDA runtime calls a launcher may make -------------------------------------------------------------------
inline cudaError_t cudaGetLastError() { return ::tcc_simt::last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return ::tcc_simt::last_error(false); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}
// Raise a kernel's dynamic shared memory limit (docs/cuda.md: 48 KiB by default, at most 163 KiB, sm_80's
// opt-in maximum, since tcc builds for sm_80 and sm_90).
template <class F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize)
    return ::tcc_simt::set_max_dynamic_shared(reinterpret_cast<const void*>(func), value);
  return cudaSuccess;
}
