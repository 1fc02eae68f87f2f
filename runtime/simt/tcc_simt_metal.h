// tcc CPU SIMT emulator, Metal side: the SIMD-group functions, barriers, simdgroup_matrix and the kernel-entry
// helpers a generated .metal file needs when it is compiled as C++ (-DTCC_SIMT) and run on the emulator.
// Part of the tcc runtime library (docs/metal.md, "The emulator").
//
// A Metal SIMD-group is the emulator's warp (32 lanes; threads are fibers, runtime/device_simt.cpp);
// threadgroup memory is the block's dynamic shared memory; threadgroup_barrier is __syncthreads. This header
// sees only tcc's MSL model (runtime/metal/tcc_msl.h): the emulator is reached through the functions of
// runtime/simt/metal_bridge.cpp (namespace tcc_msl_simt), so CUDA's and Metal's built-in names never meet in
// one translation unit. Generic: nothing here knows about a particular kernel.
//
// Model (stricter than the hardware where it can be):
//   - SIMD-group functions are collectives of the whole SIMD-group: every lane present must reach the same one
//     (same file:line), or the launch fails (a Metal kernel calling them from divergent code computes over the
//     active lanes only; tcc's kernels never do). Reads of a lane that is not present (a partial SIMD-group)
//     are errors; shuffles past lane 31 (down/up) return the lane's own value, as on the GPU.
//   - simd_sum/max/min/prefix sums combine the lanes in lane order: every lane gets the same bits.
//   - simdgroup_matrix<T, 8, 8>: every lane holds the whole matrix (a replicated model of the hardware's
//     2-elements-per-lane fragments); simdgroup_load/store/multiply(_accumulate) are collectives whose
//     arguments must be the same on every lane (else an error); multiply_accumulate sums the 8 products of an
//     element in fp32 in k order and rounds once to T; a store writes each element from one lane
//     (element e from lane e % 32), as the fragments are spread on the GPU. thread_elements() is not modelled.
#pragma once
#include <stdio.h>

#include "../metal/tcc_metal_host.h"
#include "../metal/tcc_msl.h"

namespace tcc_msl_simt {
// ---- the bridge to the emulator (runtime/simt/metal_bridge.cpp) --------------------------------------------
void builtin(int kind, uint out[3]);  // the calling thread's value of a built-in (x, y, z)
int lane();                            // the calling thread's lane in its SIMD-group
int lanes();                           // lanes present in the calling thread's SIMD-group (32 but in a partial one)
void barrier(const char* file, int line);       // threadgroup_barrier
void simd_barrier(const char* file, int line);  // every lane of the SIMD-group reaches it
// A collective of the SIMD-group after which table[l] is lane l's `mine`; the lanes' data stays alive until
// their next collective.
const void* const* gather(const void* mine, const char* file, int line);
[[noreturn]] void fail(const char* what);
// The dispatch's bindings, for the generated entries.
const void* buffer(void* dispatch, int index, const char* param);
void* threadgroup_memory(void* dispatch, int index, const char* param);

template <class T>
inline T builtin_as(int kind) {
  uint v[3];
  builtin(kind, v);
  if constexpr (std::is_arithmetic_v<T>) {
    return static_cast<T>(v[0]);
  } else if constexpr (T::size == 2) {
    return T(v[0], v[1]);
  } else {
    return T(v[0], v[1], v[2]);
  }
}

}  // namespace tcc_msl_simt

namespace metal {
// ---- barriers ------------------------------------------------------------------------------------------------
inline void threadgroup_barrier(mem_flags, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  tcc_msl_simt::barrier(file, line);
}
inline void simdgroup_barrier(mem_flags, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  tcc_msl_simt::simd_barrier(file, line);
}

// ---- SIMD-group and quad functions ------------------------------------------------------------------------------
namespace simt_detail {
template <class T>
inline const T& at(const void* const* table, int l) { return *static_cast<const T*>(table[l]); }
// Lane `src` of the SIMD-group, which must be present.
template <class T>
inline T read_lane(const void* const* table, int src, const char* what) {
  if (src < 0 || src >= tcc_msl_simt::lanes()) {
    static char buf[160];  // a failing fiber never returns: no temporaries to destroy
    snprintf(buf, sizeof buf, "%s reads lane %d, which is not in the SIMD-group", what, src);
    tcc_msl_simt::fail(buf);
  }
  return at<T>(table, src);
}
template <class T, class F>
inline T reduce(T x, int first, int count, F combine, const char* file, int line) {
  const void* const* t = tcc_msl_simt::gather(&x, file, line);
  T s = at<T>(t, first);
  for (int l = first + 1; l < first + count; ++l) s = combine(s, at<T>(t, l));
  tcc_msl_simt::simd_barrier(file, line);  // the operands stay alive until every lane has read them
  return s;
}
template <class T>
inline T add(T a, T b) { return T(a + b); }
template <class T>
inline T maximum(T a, T b) { return max(a, b); }
template <class T>
inline T minimum(T a, T b) { return min(a, b); }
// The quad (4 lanes) of the calling lane: its first lane and how many of its lanes are present.
inline int quad_first() { return tcc_msl_simt::lane() & ~3; }
inline int quad_count() {
  const int n = tcc_msl_simt::lanes() - quad_first();
  return n < 4 ? n : 4;
}
template <class T>
inline T shuffle(T x, int src, bool own_if_outside, const char* what, const char* file, int line) {
  const void* const* t = tcc_msl_simt::gather(&x, file, line);
  T r = (own_if_outside && (src < 0 || src >= 32)) ? x : read_lane<T>(t, src, what);
  tcc_msl_simt::simd_barrier(file, line);
  return r;
}
}  // namespace simt_detail

#define TCC_MSL_WHERE const char *file = __builtin_FILE(), int line = __builtin_LINE()
template <class T>
inline T simd_sum(T x, TCC_MSL_WHERE) {
  return simt_detail::reduce(x, 0, tcc_msl_simt::lanes(), simt_detail::add<T>, file, line);
}
template <class T>
inline T simd_product(T x, TCC_MSL_WHERE) {
  return simt_detail::reduce(x, 0, tcc_msl_simt::lanes(), [](T a, T b) { return T(a * b); }, file, line);
}
template <class T>
inline T simd_max(T x, TCC_MSL_WHERE) {
  return simt_detail::reduce(x, 0, tcc_msl_simt::lanes(), simt_detail::maximum<T>, file, line);
}
template <class T>
inline T simd_min(T x, TCC_MSL_WHERE) {
  return simt_detail::reduce(x, 0, tcc_msl_simt::lanes(), simt_detail::minimum<T>, file, line);
}
inline bool simd_all(bool x, TCC_MSL_WHERE) {
  return simt_detail::reduce<int>(x, 0, tcc_msl_simt::lanes(), [](int a, int b) { return a & b; }, file, line);
}
inline bool simd_any(bool x, TCC_MSL_WHERE) {
  return simt_detail::reduce<int>(x, 0, tcc_msl_simt::lanes(), [](int a, int b) { return a | b; }, file, line);
}
template <class T>
inline T simd_prefix_exclusive_sum(T x, TCC_MSL_WHERE) {
  const void* const* t = tcc_msl_simt::gather(&x, file, line);
  T s = T(0);
  for (int l = 0; l < tcc_msl_simt::lane(); ++l) s = T(s + simt_detail::at<T>(t, l));
  tcc_msl_simt::simd_barrier(file, line);
  return s;
}
template <class T>
inline T simd_prefix_inclusive_sum(T x, TCC_MSL_WHERE) {
  return T(simd_prefix_exclusive_sum(x, file, line) + x);
}
template <class T>
inline T simd_shuffle(T x, ushort src, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, src, false, "simd_shuffle", file, line);
}
template <class T>
inline T simd_broadcast(T x, ushort src, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, src, false, "simd_broadcast", file, line);
}
template <class T>
inline T simd_broadcast_first(T x, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, 0, false, "simd_broadcast_first", file, line);
}
template <class T>
inline T simd_shuffle_down(T x, ushort delta, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, tcc_msl_simt::lane() + delta, true, "simd_shuffle_down", file, line);
}
template <class T>
inline T simd_shuffle_up(T x, ushort delta, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, tcc_msl_simt::lane() - delta, true, "simd_shuffle_up", file, line);
}
template <class T>
inline T simd_shuffle_xor(T x, ushort mask, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, tcc_msl_simt::lane() ^ (mask & 31), false, "simd_shuffle_xor", file, line);
}
template <class T>
inline T quad_sum(T x, TCC_MSL_WHERE) {
  return simt_detail::reduce(x, simt_detail::quad_first(), simt_detail::quad_count(), simt_detail::add<T>, file,
                             line);
}
template <class T>
inline T quad_max(T x, TCC_MSL_WHERE) {
  return simt_detail::reduce(x, simt_detail::quad_first(), simt_detail::quad_count(), simt_detail::maximum<T>,
                             file, line);
}
template <class T>
inline T quad_shuffle(T x, ushort q, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, simt_detail::quad_first() + (q & 3), false, "quad_shuffle", file, line);
}
template <class T>
inline T quad_broadcast(T x, ushort q, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, simt_detail::quad_first() + (q & 3), false, "quad_broadcast", file, line);
}
template <class T>
inline T quad_shuffle_xor(T x, ushort mask, TCC_MSL_WHERE) {
  return simt_detail::shuffle(x, tcc_msl_simt::lane() ^ (mask & 3), false, "quad_shuffle_xor", file, line);
}
template <class T>
inline T quad_shuffle_down(T x, ushort delta, TCC_MSL_WHERE) {
  const int src = (tcc_msl_simt::lane() & 3) + delta;
  return simt_detail::shuffle(x, src < 4 ? simt_detail::quad_first() + src : -1, true, "quad_shuffle_down", file,
                              line);
}

// ---- simdgroup_matrix ----------------------------------------------------------------------------------------------
template <class T, int R, int C>
struct simdgroup_matrix {
  static_assert(R == 8 && C == 8, "tcc's MSL model has 8x8 simdgroup matrices only");
  T e[R][C];
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;

template <class T, int R, int C>
inline simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T v) {
  simdgroup_matrix<T, R, C> m;
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) m.e[i][j] = v;
  return m;
}

namespace simt_detail {
struct MatrixAccess {  // what every lane of a SIMD-group must pass alike to a simdgroup_load/store
  const void* p;
  ulong elements_per_row, x, y;
  int transpose;
};
// Every lane's arguments equal the calling lane's (a collective: all lanes present take part).
inline void uniform_matrix_access(const MatrixAccess& mine, const char* what, const char* file, int line) {
  const void* const* t = tcc_msl_simt::gather(&mine, file, line);
  for (int l = 0; l < tcc_msl_simt::lanes(); ++l)
    if (memcmp(t[l], &mine, sizeof mine) != 0) {
      static char buf[200];
      snprintf(buf, sizeof buf, "%s: lanes %d and %d pass different arguments (%s:%d)", what, l,
               tcc_msl_simt::lane(), file, line);
      tcc_msl_simt::fail(buf);
    }
  tcc_msl_simt::simd_barrier(file, line);
}
}  // namespace simt_detail

// simdgroup_load: element (i, j) of the matrix is src[(origin.y + i) * elements_per_row + origin.x + j]
// (origin.x is the column), or with transpose_matrix the element (j, i) of that source block.
template <class T, class S>
inline void simdgroup_load(simdgroup_matrix<T, 8, 8>& d, const S* src, ulong elements_per_row = 8,
                           ulong2 matrix_origin = ulong2(0), bool transpose_matrix = false, TCC_MSL_WHERE) {
  simt_detail::MatrixAccess a{src, elements_per_row, matrix_origin.x, matrix_origin.y, transpose_matrix};
  simt_detail::uniform_matrix_access(a, "simdgroup_load", file, line);
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) {
      const ulong r = matrix_origin.y + (transpose_matrix ? j : i), c = matrix_origin.x + (transpose_matrix ? i : j);
      d.e[i][j] = T(src[r * elements_per_row + c]);
    }
}
template <class T, class S>
inline void simdgroup_store(const simdgroup_matrix<T, 8, 8>& m, S* dst, ulong elements_per_row = 8,
                            ulong2 matrix_origin = ulong2(0), bool transpose_matrix = false, TCC_MSL_WHERE) {
  simt_detail::MatrixAccess a{dst, elements_per_row, matrix_origin.x, matrix_origin.y, transpose_matrix};
  simt_detail::uniform_matrix_access(a, "simdgroup_store", file, line);
  for (int e = tcc_msl_simt::lane(); e < 64; e += 32) {  // element e from lane e % 32 (the fragments' spread)
    const int i = e / 8, j = e % 8;
    const ulong r = matrix_origin.y + (transpose_matrix ? j : i), c = matrix_origin.x + (transpose_matrix ? i : j);
    dst[r * elements_per_row + c] = S(m.e[i][j]);
  }
}
// d = a * b + c (d may be any of them).
template <class T, class A, class B, class C>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<T, 8, 8>& d, const simdgroup_matrix<A, 8, 8>& a,
                                          const simdgroup_matrix<B, 8, 8>& b, const simdgroup_matrix<C, 8, 8>& c,
                                          TCC_MSL_WHERE) {
  tcc_msl_simt::simd_barrier(file, line);  // a SIMD-group operation: every lane takes part
  simdgroup_matrix<T, 8, 8> r;
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) {
      float acc = float(c.e[i][j]);
      for (int k = 0; k < 8; ++k) acc += float(a.e[i][k]) * float(b.e[k][j]);
      r.e[i][j] = T(acc);
    }
  d = r;
}
template <class T, class A, class B>
inline void simdgroup_multiply(simdgroup_matrix<T, 8, 8>& d, const simdgroup_matrix<A, 8, 8>& a,
                               const simdgroup_matrix<B, 8, 8>& b, TCC_MSL_WHERE) {
  simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<T, 8, 8>(T(0)), file, line);
}
#undef TCC_MSL_WHERE
}  // namespace metal
