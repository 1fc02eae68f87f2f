// tcc vector abstraction: the handful of float-vector operations the shared kernel drivers
// (codegen/templates/common/_*_simd.inc.j2) are written in, once per ISA. A driver's loops, tiling,
// threading and edge handling exist once; it sees only `tcc::vec::V` (kLanes floats), these inline
// functions and the ISA's vector math (exp), so a new ISA is a new block here, not a new copy of each
// kernel. The implementation is picked by what the compiler targets: AVX2+FMA (x86 avx2 variants),
// AArch64 NEON (arm neon variants), else scalar (one lane; for testing a driver on any host).
//
// Tails: `Tail` describes the valid floats of a row's last, partial vector (an AVX2 lane mask, a count
// elsewhere); `load_tail` reads only those floats (the rest of the vector is 0), so nothing past a row
// is read.
#pragma once
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include "tcc_math_avx2.h"
#define TCC_VEC_AVX2 1
#elif defined(__aarch64__)
#include "tcc_math_neon.h"
#define TCC_VEC_NEON 1
#else
#include <algorithm>
#include <cmath>
#define TCC_VEC_SCALAR 1
#endif

namespace tcc {
namespace vec {

#if defined(TCC_VEC_AVX2)

using V = __m256;
using Tail = __m256i;
constexpr int64_t kLanes = 8;
static inline V zero() { return _mm256_setzero_ps(); }
static inline V set1(float v) { return _mm256_set1_ps(v); }
static inline V load(const float* p) { return _mm256_loadu_ps(p); }
static inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
static inline Tail tail_of(int64_t n) { return avx2::tail_mask(n); }
static inline V load_tail(const float* p, Tail t) { return _mm256_maskload_ps(p, t); }
static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
static inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
static inline V max(V a, V b) { return _mm256_max_ps(a, b); }  // the hardware max (not NaN-propagating)
static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c, rounded once
static inline V exp(V x) { return avx2::exp_ps(x); }
static inline float hsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float hmax(V v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// out[0:4] = the horizontal sums of a0..a3 (one hadd tree).
static inline void store_hsum4(float* out, V a0, V a1, V a2, V a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}
static inline void store_tail(float* p, Tail t, V v) { _mm256_maskstore_ps(p, t, v); }
// The tail's floats, `fill` in the lanes past it.
static inline V load_tail_or(const float* p, Tail t, float fill) {
  return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, t), _mm256_castsi256_ps(t));
}
static inline V div(V a, V b) { return _mm256_div_ps(a, b); }
static inline V log(V x) { return avx2::log_ps(x); }
// A hint that p's cache line is read soon (into L2).
static inline void prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }
// Lane masks (all-ones lanes), as comparisons return them; select(m, a, b) = m ? b : a, bitwise.
using M = __m256;
static inline M mask_all(bool on) { return on ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : _mm256_setzero_ps(); }
static inline V select(M m, V a, V b) { return _mm256_blendv_ps(a, b, m); }
// Lanes where the bool bytes c[0:kLanes] are 0.
static inline M cond_zero(const uint8_t* c) {
  const __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(w, _mm256_setzero_si256()));
}
// Any 32-bit lanes (float, int32, ...) as V, bit for bit.
static inline V load_bits(const void* p) { return _mm256_loadu_ps(static_cast<const float*>(p)); }
static inline void store_bits(void* p, V v) { _mm256_storeu_ps(static_cast<float*>(p), v); }
static inline V splat_bits(const void* p) {
  float f;
  __builtin_memcpy(&f, p, 4);
  return _mm256_set1_ps(f);
}
// Masks to bool bytes 0/1: one vector (kLanes bytes), four vectors (4 * kLanes bytes).
static inline void store_mask(uint8_t* out, M m) { avx2::store_mask8(out, m); }
static inline void store_mask4v(uint8_t* out, M m0, M m1, M m2, M m3) { avx2::store_mask32(out, m0, m1, m2, m3); }

#elif defined(TCC_VEC_NEON)

using V = float32x4_t;
using Tail = int64_t;
constexpr int64_t kLanes = 4;
static inline V zero() { return vdupq_n_f32(0.0f); }
static inline V set1(float v) { return vdupq_n_f32(v); }
static inline V load(const float* p) { return vld1q_f32(p); }
static inline void store(float* p, V v) { vst1q_f32(p, v); }
static inline Tail tail_of(int64_t n) { return n; }
static inline V load_tail(const float* p, Tail t) { return neon::load_partial(p, t); }
static inline V add(V a, V b) { return vaddq_f32(a, b); }
static inline V sub(V a, V b) { return vsubq_f32(a, b); }
static inline V mul(V a, V b) { return vmulq_f32(a, b); }
static inline V max(V a, V b) { return vmaxq_f32(a, b); }
static inline V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
static inline V exp(V x) { return neon::exp_ps(x); }
static inline float hsum(V v) { return vaddvq_f32(v); }
static inline float hmax(V v) { return vmaxvq_f32(v); }
static inline void store_hsum4(float* out, V a0, V a1, V a2, V a3) {
  vst1q_f32(out, vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)));
}
static inline void store_tail(float* p, Tail t, V v) { neon::store_partial(p, t, v); }
static inline V load_tail_or(const float* p, Tail t, float fill) { return neon::load_partial(p, t, fill); }
static inline V div(V a, V b) { return vdivq_f32(a, b); }
static inline V log(V x) { return neon::log_ps(x); }
static inline void prefetch(const float*) {}  // not measured on ARM hardware: no hint
using M = uint32x4_t;
static inline M mask_all(bool on) { return vdupq_n_u32(on ? ~0u : 0u); }
static inline V select(M m, V a, V b) { return vbslq_f32(m, b, a); }
static inline M cond_zero(const uint8_t* c) {
  uint32_t w;
  __builtin_memcpy(&w, c, 4);
  return vceqzq_u32(vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(w))))));
}
static inline V load_bits(const void* p) { return vreinterpretq_f32_u32(vld1q_u32(static_cast<const uint32_t*>(p))); }
static inline void store_bits(void* p, V v) { vst1q_u32(static_cast<uint32_t*>(p), vreinterpretq_u32_f32(v)); }
static inline V splat_bits(const void* p) { return vreinterpretq_f32_u32(vld1q_dup_u32(static_cast<const uint32_t*>(p))); }
static inline void store_mask(uint8_t* out, M m) { neon::store_mask4(out, m); }
static inline void store_mask4v(uint8_t* out, M m0, M m1, M m2, M m3) { neon::store_mask16(out, m0, m1, m2, m3); }

#else

using V = float;
using Tail = int64_t;
constexpr int64_t kLanes = 1;
static inline V zero() { return 0.0f; }
static inline V set1(float v) { return v; }
static inline V load(const float* p) { return *p; }
static inline void store(float* p, V v) { *p = v; }
static inline Tail tail_of(int64_t n) { return n; }
static inline V load_tail(const float* p, Tail t) { return t > 0 ? *p : 0.0f; }
static inline V add(V a, V b) { return a + b; }
static inline V sub(V a, V b) { return a - b; }
static inline V mul(V a, V b) { return a * b; }
static inline V max(V a, V b) { return std::max(a, b); }
static inline V fma(V a, V b, V c) { return std::fma(a, b, c); }
static inline V exp(V x) { return std::exp(x); }
static inline float hsum(V v) { return v; }
static inline float hmax(V v) { return v; }
static inline void store_hsum4(float* out, V a0, V a1, V a2, V a3) {
  out[0] = a0;
  out[1] = a1;
  out[2] = a2;
  out[3] = a3;
}
static inline void store_tail(float* p, Tail t, V v) {
  if (t > 0) *p = v;
}
static inline V load_tail_or(const float* p, Tail t, float fill) { return t > 0 ? *p : fill; }
static inline V div(V a, V b) { return a / b; }
static inline V log(V x) { return std::log(x); }
static inline void prefetch(const float*) {}
using M = bool;
static inline M mask_all(bool on) { return on; }
static inline V select(M m, V a, V b) { return m ? b : a; }
static inline M cond_zero(const uint8_t* c) { return *c == 0; }
static inline V load_bits(const void* p) {
  V v;
  __builtin_memcpy(&v, p, 4);
  return v;
}
static inline void store_bits(void* p, V v) { __builtin_memcpy(p, &v, 4); }
static inline V splat_bits(const void* p) { return load_bits(p); }
static inline void store_mask(uint8_t* out, M m) { *out = m; }
static inline void store_mask4v(uint8_t* out, M m0, M m1, M m2, M m3) {
  out[0] = m0;
  out[1] = m1;
  out[2] = m2;
  out[3] = m3;
}

#endif

static_assert((kLanes & (kLanes - 1)) == 0, "masks like n & ~(kLanes - 1) need a power of two");

// The floats a vector loop over n >= 0 values covers: n rounded up to whole vectors.
constexpr int64_t round_up(int64_t n) { return (n + kLanes - 1) & ~(kLanes - 1); }

}  // namespace vec
}  // namespace tcc
