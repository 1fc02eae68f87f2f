// tcc vector abstraction: the handful of float-vector operations the shared kernel drivers
// (codegen/templates/common/_*_simd.inc.j2) are written in, once per ISA. A driver's loops, tiling,
// threading and edge handling exist once; it sees only `tcc::vec::V` (kLanes floats), these inline
// functions and the vector math written over them (runtime/tcc_math_vec.h: exp, log, ...), so a new ISA
// is a new block here, not a new copy of each kernel or math function. The implementation is picked by
// what the compiler targets: AVX2+FMA (x86 avx2 variants), AArch64 NEON (arm neon variants), else scalar
// (one lane, libm's exp and log; for testing a driver on any host).
//
// Tails: `Tail` describes the valid floats of a row's last, partial vector (an AVX2 lane mask, a count
// elsewhere); `load_tail` reads only those floats (the rest of the vector is 0), so nothing past a row
// is read.
#pragma once
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TCC_VEC_AVX2 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#define TCC_VEC_NEON 1
#else
#include <algorithm>
#include <cmath>
#define TCC_VEC_SCALAR 1
#endif

#if defined(TCC_VEC_AVX2)
namespace tcc {
namespace avx2 {

// Lanes [0, n) set, for masked loads/stores of a tail of n < 8 floats.
static inline __m256i tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Comparison masks (all-ones lanes) to bool bytes 0/1: 8 lanes -> 8 bytes, 4 x 8 lanes -> 32 bytes.
static inline void store_mask8(uint8_t* out, __m256 m) {
  __m256i v = _mm256_castps_si256(m);
  __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_and_si128(_mm_packs_epi16(w, w), _mm_set1_epi8(1)));
}
static inline void store_mask32(uint8_t* out, __m256 m0, __m256 m1, __m256 m2, __m256 m3) {
  __m256i p = _mm256_packs_epi32(_mm256_castps_si256(m0), _mm256_castps_si256(m1));
  __m256i q = _mm256_packs_epi32(_mm256_castps_si256(m2), _mm256_castps_si256(m3));
  // The packs work within 128-bit lanes: dword i of the result holds 4 bytes of m[i % 4] half i / 4.
  __m256i r = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p, q), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_and_si256(r, _mm256_set1_epi8(1)));
}

}  // namespace avx2
}  // namespace tcc
#elif defined(TCC_VEC_NEON)
namespace tcc {
namespace neon {

// NEON has no masked load/store: the first n < 4 floats through a small buffer (never touching p[n..3]).
static inline float32x4_t load_partial(const float* p, int64_t n, float fill = 0.0f) {
  float t[4] = {fill, fill, fill, fill};
  for (int64_t i = 0; i < n; ++i) t[i] = p[i];
  return vld1q_f32(t);
}
static inline void store_partial(float* p, int64_t n, float32x4_t v) {
  float t[4];
  vst1q_f32(t, v);
  for (int64_t i = 0; i < n; ++i) p[i] = t[i];
}

// Comparison masks to bool bytes 0/1: 4 x 4 lanes -> 16 bytes, 4 lanes -> 4 bytes.
static inline void store_mask16(uint8_t* out, uint32x4_t m0, uint32x4_t m1, uint32x4_t m2, uint32x4_t m3) {
  const uint16x8_t lo = vcombine_u16(vmovn_u32(m0), vmovn_u32(m1));
  const uint16x8_t hi = vcombine_u16(vmovn_u32(m2), vmovn_u32(m3));
  vst1q_u8(out, vandq_u8(vcombine_u8(vmovn_u16(lo), vmovn_u16(hi)), vdupq_n_u8(1)));
}
static inline void store_mask4(uint8_t* out, uint32x4_t m) {
  const uint8x8_t b = vand_u8(vmovn_u16(vcombine_u16(vmovn_u32(m), vmovn_u32(m))), vdup_n_u8(1));
  const uint32_t w = vget_lane_u32(vreinterpret_u32_u8(b), 0);
  __builtin_memcpy(out, &w, 4);
}

}  // namespace neon
}  // namespace tcc
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

// What the vector math (runtime/tcc_math_vec.h) is written in besides the above. Comparisons are
// ordered (false where either side is NaN). min/max are the hardware's: where an operand is NaN, either
// NaN or the second operand, so clamps are written min(bound, max(bound, x)) to pass NaN x through.
static inline V min(V a, V b) { return _mm256_min_ps(a, b); }
static inline V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b, rounded once
static inline V fms(V a, V b, V c) { return _mm256_fmsub_ps(a, b, c); }    // a * b - c, rounded once
static inline V sqrt(V x) { return _mm256_sqrt_ps(x); }
// To the nearest integer, ties to even.
static inline V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline V abs(V x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
static inline V neg(V x) { return _mm256_xor_ps(x, _mm256_set1_ps(-0.0f)); }
static inline V sign_bits(V x) { return _mm256_and_ps(x, _mm256_set1_ps(-0.0f)); }  // x's sign bit alone
static inline V bit_or(V a, V b) { return _mm256_or_ps(a, b); }
static inline V bit_xor(V a, V b) { return _mm256_xor_ps(a, b); }
static inline V keep(V a, M m) { return _mm256_and_ps(a, m); }  // a where m, else +0
static inline M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline M le(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
static inline M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline M ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
static inline M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
static inline M is_nan(V x) { return _mm256_cmp_ps(x, x, _CMP_UNORD_Q); }
static inline M mask_or(M a, M b) { return _mm256_or_ps(a, b); }
static inline bool any(M m) { return _mm256_movemask_ps(m) != 0; }
static inline bool all(M m) { return _mm256_movemask_ps(m) == 0xff; }
// int32 lanes: bit casts, conversions (to_int: of an integral float), arithmetic and shifts.
using I = __m256i;
static inline I iset1(int32_t v) { return _mm256_set1_epi32(v); }
static inline I as_int(V x) { return _mm256_castps_si256(x); }
static inline I mask_int(M m) { return _mm256_castps_si256(m); }  // -1 where set, else 0
static inline V as_float(I x) { return _mm256_castsi256_ps(x); }
static inline I to_int(V x) { return _mm256_cvtps_epi32(x); }
static inline V to_float(I x) { return _mm256_cvtepi32_ps(x); }
static inline I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
static inline I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
static inline I iand(I a, I b) { return _mm256_and_si256(a, b); }
static inline I ior(I a, I b) { return _mm256_or_si256(a, b); }
// Lanes where a has the bit b (b a power of two).
static inline M ihas(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(a, b), b)); }
template <int N> static inline I shl(I x) { return _mm256_slli_epi32(x, N); }
template <int N> static inline I shr(I x) { return _mm256_srli_epi32(x, N); }  // logical
template <int N> static inline I sar(I x) { return _mm256_srai_epi32(x, N); }  // arithmetic
// The lanes as float64 (W: kLanes doubles), for arguments that need more than float precision.
struct W {
  __m256d lo, hi;
};
static inline W widen(V x) {
  return {_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1))};
}
static inline W wset1(double v) { return {_mm256_set1_pd(v), _mm256_set1_pd(v)}; }
static inline W wmul(W a, W b) { return {_mm256_mul_pd(a.lo, b.lo), _mm256_mul_pd(a.hi, b.hi)}; }
static inline W wfma(W a, W b, W c) { return {_mm256_fmadd_pd(a.lo, b.lo, c.lo), _mm256_fmadd_pd(a.hi, b.hi, c.hi)}; }
// x as floats hi + lo: hi = x rounded, lo = x - hi rounded.
static inline void split(W x, V& hi, V& lo) {
  const __m128 hl = _mm256_cvtpd_ps(x.lo), hh = _mm256_cvtpd_ps(x.hi);
  hi = _mm256_set_m128(hh, hl);
  lo = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_sub_pd(x.hi, _mm256_cvtps_pd(hh))),
                       _mm256_cvtpd_ps(_mm256_sub_pd(x.lo, _mm256_cvtps_pd(hl))));
}

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
static inline float hsum(V v) { return vaddvq_f32(v); }
static inline float hmax(V v) { return vmaxvq_f32(v); }
static inline void store_hsum4(float* out, V a0, V a1, V a2, V a3) {
  vst1q_f32(out, vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)));
}
static inline void store_tail(float* p, Tail t, V v) { neon::store_partial(p, t, v); }
static inline V load_tail_or(const float* p, Tail t, float fill) { return neon::load_partial(p, t, fill); }
static inline V div(V a, V b) { return vdivq_f32(a, b); }
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
// The vector math's operations (see the AVX2 block). NEON's min/max (FMIN/FMAX) propagate NaN.
static inline V min(V a, V b) { return vminq_f32(a, b); }
static inline V fnma(V a, V b, V c) { return vfmsq_f32(c, a, b); }
static inline V fms(V a, V b, V c) { return vnegq_f32(vfmsq_f32(c, a, b)); }  // -0 where a * b == c exactly
static inline V sqrt(V x) { return vsqrtq_f32(x); }
static inline V round(V x) { return vrndnq_f32(x); }
static inline V abs(V x) { return vabsq_f32(x); }
static inline V neg(V x) { return vnegq_f32(x); }
static inline uint32x4_t as_u32(V x) { return vreinterpretq_u32_f32(x); }
static inline V from_u32(uint32x4_t x) { return vreinterpretq_f32_u32(x); }
static inline V sign_bits(V x) { return from_u32(vandq_u32(as_u32(x), vdupq_n_u32(0x80000000u))); }
static inline V bit_or(V a, V b) { return from_u32(vorrq_u32(as_u32(a), as_u32(b))); }
static inline V bit_xor(V a, V b) { return from_u32(veorq_u32(as_u32(a), as_u32(b))); }
static inline V keep(V a, M m) { return from_u32(vandq_u32(as_u32(a), m)); }
static inline M lt(V a, V b) { return vcltq_f32(a, b); }
static inline M le(V a, V b) { return vcleq_f32(a, b); }
static inline M gt(V a, V b) { return vcgtq_f32(a, b); }
static inline M ge(V a, V b) { return vcgeq_f32(a, b); }
static inline M eq(V a, V b) { return vceqq_f32(a, b); }
static inline M is_nan(V x) { return vmvnq_u32(vceqq_f32(x, x)); }
static inline M mask_or(M a, M b) { return vorrq_u32(a, b); }
static inline bool any(M m) { return vmaxvq_u32(m) != 0; }
static inline bool all(M m) { return vminvq_u32(m) != 0; }
using I = int32x4_t;
static inline I iset1(int32_t v) { return vdupq_n_s32(v); }
static inline I as_int(V x) { return vreinterpretq_s32_f32(x); }
static inline I mask_int(M m) { return vreinterpretq_s32_u32(m); }
static inline V as_float(I x) { return vreinterpretq_f32_s32(x); }
static inline I to_int(V x) { return vcvtq_s32_f32(x); }  // NaN gives 0
static inline V to_float(I x) { return vcvtq_f32_s32(x); }
static inline I iadd(I a, I b) { return vaddq_s32(a, b); }
static inline I isub(I a, I b) { return vsubq_s32(a, b); }
static inline I iand(I a, I b) { return vandq_s32(a, b); }
static inline I ior(I a, I b) { return vorrq_s32(a, b); }
static inline M ihas(I a, I b) { return vtstq_s32(a, b); }
template <int N> static inline I shl(I x) { return vshlq_n_s32(x, N); }
template <int N> static inline I shr(I x) { return vreinterpretq_s32_u32(vshrq_n_u32(vreinterpretq_u32_s32(x), N)); }
template <int N> static inline I sar(I x) { return vshrq_n_s32(x, N); }
struct W {
  float64x2_t lo, hi;
};
static inline W widen(V x) { return {vcvt_f64_f32(vget_low_f32(x)), vcvt_high_f64_f32(x)}; }
static inline W wset1(double v) { return {vdupq_n_f64(v), vdupq_n_f64(v)}; }
static inline W wmul(W a, W b) { return {vmulq_f64(a.lo, b.lo), vmulq_f64(a.hi, b.hi)}; }
static inline W wfma(W a, W b, W c) { return {vfmaq_f64(c.lo, a.lo, b.lo), vfmaq_f64(c.hi, a.hi, b.hi)}; }
static inline void split(W x, V& hi, V& lo) {
  const float32x2_t hl = vcvt_f32_f64(x.lo);
  hi = vcvt_high_f32_f64(hl, x.hi);
  lo = vcvt_high_f32_f64(vcvt_f32_f64(vsubq_f64(x.lo, vcvt_f64_f32(hl))), vsubq_f64(x.hi, vcvt_high_f64_f32(hi)));
}

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

// The vector math (exp, log, tanh, ...; vec::exp and vec::log among it): written once over the above.
#if !defined(TCC_VEC_SCALAR)
#include "tcc_math_vec.h"
#endif
