// tcc AVX2 vector math: exp, log, erf, erfc, tanh, sigmoid, sin, cos and the activations built on them.
// Part of the tcc runtime; included by the avx2 kernel templates (compile with -mavx2 -mfma).
//
// Contract (docs/kernels.md, unary): relative error <= 2e-6 vs float64 on normal inputs, and exact special
// values: exp(-inf)=0, exp(large)=inf, log(0)=-inf, log(x<0)=NaN, tanh(+-inf)=+-1, NaN in -> NaN out.
// Method: Cody-Waite range reduction (FMA makes the high part exact) and polynomials whose coefficients
// were fitted as near-minimax (weighted least squares + Lawson reweighting against 40-digit references;
// the tables and each fit's max relative error, well under 1 ulp: runtime/tcc_math_coeffs.h, shared with
// tcc_math_neon.h), so float32 rounding dominates: measured max relative error 1.2e-7..1.8e-7 for exp, log, tanh, erf, sin, cos
// (2-3 ulp) and 3e-7..5e-7 for sigmoid, silu and the gelus (tests/kernels/test_elementwise.py checks 2e-6).
#pragma once
#include <immintrin.h>
#include <cstdint>

#include "tcc_math_coeffs.h"

#if !defined(__AVX2__) || !defined(__FMA__)
#error "tcc_math_avx2.h needs AVX2 and FMA (-mavx2 -mfma)"
#endif

namespace tcc {
namespace avx2 {

// The polynomial tables (kExpP, kLogP, ...): runtime/tcc_math_coeffs.h, shared by every ISA.
using namespace ::tcc::math;

static inline __m256 splat(float v) { return _mm256_set1_ps(v); }
static inline __m256 sign_bit() { return _mm256_set1_ps(-0.0f); }
static inline __m256 abs_ps(__m256 x) { return _mm256_andnot_ps(sign_bit(), x); }
static inline __m256 is_nan(__m256 x) { return _mm256_cmp_ps(x, x, _CMP_UNORD_Q); }

// Horner's rule with FMA: c[0] + u * (c[1] + u * (... + u * c[N-1])).
template <int N>
static inline __m256 poly(__m256 u, const float (&c)[N]) {
  __m256 acc = splat(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) acc = _mm256_fmadd_ps(acc, u, splat(c[k]));
  return acc;
}

// Same, with the coefficient set chosen per lane (mask set: b, else a); both sets have N terms.
template <int N>
static inline __m256 poly_select(__m256 u, const float (&a)[N], const float (&b)[N], __m256 mask) {
  __m256 acc = _mm256_blendv_ps(splat(a[N - 1]), splat(b[N - 1]), mask);
  for (int k = N - 2; k >= 0; --k)
    acc = _mm256_fmadd_ps(acc, u, _mm256_blendv_ps(splat(a[k]), splat(b[k]), mask));
  return acc;
}

// 2^n for integer n in [-75, 64] (biased exponent stays in the normal range).
static inline __m256 pow2i(__m256i n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

static inline __m256 exp_ps(__m256 x) {
  // Clamp so that n below fits the two-step scaling; past the bounds the result is inf / 0 anyway.
  // min/max return their second operand when either is NaN, so NaN passes through.
  x = _mm256_min_ps(splat(89.0f), _mm256_max_ps(splat(-104.0f), x));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, splat(1.44269502f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, splat(0.693147182f), x);  // exact: FMA keeps n*ln2_hi unrounded
  r = _mm256_fnmadd_ps(n, splat(-1.90465421e-09f), r);     // ln2 - ln2_hi
  __m256 r2 = _mm256_mul_ps(r, r);
  __m256 p = _mm256_fmadd_ps(poly(r, kExpP), r2, _mm256_add_ps(r, splat(1.0f)));
  // Scale by 2^n in two steps so that n = 128 (overflow to inf) and n < -126 (subnormal results,
  // rounded once by the last multiply) both come out right.
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1);
  __m256i n2 = _mm256_sub_epi32(ni, n1);
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2i(n1)), pow2i(n2));
}

static inline __m256 log_ps(__m256 x) {
  // Subnormals: scale by 2^23 first so the exponent field is meaningful.
  __m256 sub = _mm256_cmp_ps(x, splat(1.17549435e-38f), _CMP_LT_OQ);
  __m256 xs = _mm256_blendv_ps(x, _mm256_mul_ps(x, splat(8388608.0f)), sub);
  __m256 ebias = _mm256_and_ps(sub, splat(23.0f));
  __m256i bits = _mm256_castps_si256(xs);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                                 _mm256_set1_epi32(0x3f800000)));
  // Center the mantissa on 1: m in [sqrt(1/2), sqrt(2)), so log(m) needs no large-argument terms.
  __m256 big = _mm256_cmp_ps(m, splat(1.41421354f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, splat(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // mask is -1 where big
  __m256 ef = _mm256_sub_ps(_mm256_cvtepi32_ps(e), ebias);
  __m256 f = _mm256_sub_ps(m, splat(1.0f));
  __m256 f2 = _mm256_mul_ps(f, f);
  __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(f2, f), poly(f, kLogP), _mm256_fnmadd_ps(f2, splat(0.5f), f));
  y = _mm256_fmadd_ps(ef, splat(-1.90465421e-09f), y);
  y = _mm256_fmadd_ps(ef, splat(0.693147182f), y);
  // Special values: log(+-0) = -inf, log(x<0) = NaN, log(inf) = inf, NaN stays NaN.
  y = _mm256_blendv_ps(y, splat(-__builtin_inff()), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
  y = _mm256_blendv_ps(y, splat(__builtin_nanf("")), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  __m256 keep = _mm256_or_ps(is_nan(x), _mm256_cmp_ps(x, splat(__builtin_inff()), _CMP_EQ_OQ));
  return _mm256_blendv_ps(y, x, keep);
}

static inline __m256 tanh_ps(__m256 x) {
  __m256 ax = abs_ps(x);
  // Small |x|: odd polynomial (1 - 2/(e^2x + 1) would cancel). Large: exp form; exp(inf) gives 1 exactly.
  __m256 ax2 = _mm256_mul_ps(ax, ax);
  __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(ax2, ax), poly(ax2, kTanhP), ax);
  __m256 e = exp_ps(_mm256_add_ps(ax, ax));
  __m256 large = _mm256_sub_ps(splat(1.0f), _mm256_div_ps(splat(2.0f), _mm256_add_ps(e, splat(1.0f))));
  __m256 y = _mm256_blendv_ps(large, small, _mm256_cmp_ps(ax, splat(0.625f), _CMP_LT_OQ));
  return _mm256_or_ps(y, _mm256_and_ps(x, sign_bit()));
}

// x * sigmoid(v) for v = hi + lo (lo: the low part of a double-float argument, else 0). With
// h = exp(-|v|/2) it is x / (1 + h^2) for v >= 0 and (x h) h / (1 + h^2) for v < 0: exp never
// overflows, and for v < 0 the product leaves the subnormal range only in the last multiply, so an
// output like silu(-91) = -2.7e-38 keeps full precision although e^-91 is subnormal.
static inline __m256 mul_sigmoid(__m256 x, __m256 hi, __m256 lo) {
  __m256 h = exp_ps(_mm256_mul_ps(abs_ps(hi), splat(-0.5f)));
  __m256 signed_lo = _mm256_xor_ps(lo, _mm256_and_ps(hi, sign_bit()));
  h = _mm256_fnmadd_ps(h, _mm256_mul_ps(signed_lo, splat(0.5f)), h);  // exp(-lo/2) ~ 1 - lo/2
  __m256 neg = _mm256_cmp_ps(hi, _mm256_setzero_ps(), _CMP_LT_OQ);
  __m256 num = _mm256_blendv_ps(x, _mm256_mul_ps(_mm256_mul_ps(x, h), h), neg);
  return _mm256_div_ps(num, _mm256_fmadd_ps(h, h, splat(1.0f)));
}

static inline __m256 sigmoid_ps(__m256 x) { return mul_sigmoid(splat(1.0f), x, _mm256_setzero_ps()); }
static inline __m256 silu_ps(__m256 x) { return mul_sigmoid(x, x, _mm256_setzero_ps()); }

// exp(-z^2) * Q(1/z) for z in [0.625, 11], where z^2 = z2hi + z2lo exactly (the caller splits it with
// FMA, because rounding z^2 would cost z^2 * 2^-24 relative error: 6e-6 at z = 10).
static inline __m256 erfc_tail(__m256 z, __m256 z2hi, __m256 z2lo) {
  __m256 near = _mm256_cmp_ps(z, splat(2.0f), _CMP_LT_OQ);
  __m256 u = _mm256_sub_ps(_mm256_div_ps(splat(1.0f), z), _mm256_blendv_ps(splat(0.295f), splat(1.05f), near));
  __m256 e = exp_ps(_mm256_xor_ps(z2hi, sign_bit()));
  e = _mm256_fnmadd_ps(e, z2lo, e);  // exp(-hi - lo) = exp(-hi) * (1 - lo), |lo| < 2^-17
  return _mm256_mul_ps(e, poly_select(u, kErfcFar, kErfcNear, near));
}

static inline __m256 erf_ps(__m256 x) {
  // |x| < 1: odd polynomial. Otherwise 1 - erfc(|x|); beyond 11 that is 1 (the clamp also keeps inf out
  // of the z^2 split, where inf - inf would make NaN).
  __m256 ax = abs_ps(x);
  __m256 x2 = _mm256_mul_ps(x, x);
  __m256 small = _mm256_mul_ps(ax, poly(x2, kErfP));
  __m256 z = _mm256_min_ps(splat(11.0f), _mm256_max_ps(splat(1.0f), ax));
  __m256 z2 = _mm256_mul_ps(z, z);
  __m256 large = _mm256_sub_ps(splat(1.0f), erfc_tail(z, z2, _mm256_fmsub_ps(z, z, z2)));
  __m256 y = _mm256_blendv_ps(large, small, _mm256_cmp_ps(ax, splat(1.0f), _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, x, is_nan(x));
  return _mm256_or_ps(y, _mm256_and_ps(x, sign_bit()));
}

// 0.5 * x * (1 + erf(x / sqrt2)) written as 0.5 * x * erfc(-x / sqrt2), with erfc from the exp * Q form
// once |z| >= 0.625, so large negative x keeps its relative accuracy instead of cancelling in 1 + erf.
static inline __m256 gelu_erf_ps(__m256 x) {
  __m256 z = _mm256_mul_ps(x, splat(-0.707106769f));
  __m256 az = abs_ps(z);
  __m256 small = _mm256_fnmadd_ps(z, poly(_mm256_mul_ps(z, z), kErfP), splat(1.0f));
  // z^2 = x^2 / 2 exactly from the FMA split of x^2 (z itself is rounded); |x| <= 15.5 keeps z <= 11.
  __m256 xc = _mm256_min_ps(splat(15.5f), abs_ps(x));
  __m256 x2 = _mm256_mul_ps(xc, xc);
  __m256 x2lo = _mm256_fmsub_ps(xc, xc, x2);
  __m256 zc = _mm256_min_ps(splat(11.0f), _mm256_max_ps(splat(0.625f), az));
  __m256 tail = erfc_tail(zc, _mm256_mul_ps(x2, splat(0.5f)), _mm256_mul_ps(x2lo, splat(0.5f)));
  __m256 neg = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
  __m256 large = _mm256_blendv_ps(tail, _mm256_sub_ps(splat(2.0f), tail), neg);
  __m256 erfc = _mm256_blendv_ps(large, small, _mm256_cmp_ps(az, splat(0.625f), _CMP_LT_OQ));
  return _mm256_mul_ps(_mm256_mul_ps(splat(0.5f), x), erfc);
}

// 2u = 2 sqrt(2/pi) x (1 + 0.044715 x^2) in double, returned as hi + lo floats: in float its rounding
// would cost |2u| * 2^-23 relative error in exp(-2u) (5e-6 at x = -8).
static inline void gelu_tanh_arg(__m256 x, __m256& hi, __m256& lo) {
  const __m256d a = _mm256_set1_pd(1.5957691216057308), b = _mm256_set1_pd(1.5957691216057308 * 0.044715);
  __m256d xl = _mm256_cvtps_pd(_mm256_castps256_ps128(x)), xh = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
  __m256d vl = _mm256_mul_pd(xl, _mm256_fmadd_pd(_mm256_mul_pd(xl, xl), b, a));
  __m256d vh = _mm256_mul_pd(xh, _mm256_fmadd_pd(_mm256_mul_pd(xh, xh), b, a));
  __m128 hl = _mm256_cvtpd_ps(vl), hh = _mm256_cvtpd_ps(vh);
  hi = _mm256_set_m128(hh, hl);
  lo = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_sub_pd(vh, _mm256_cvtps_pd(hh))),
                       _mm256_cvtpd_ps(_mm256_sub_pd(vl, _mm256_cvtps_pd(hl))));
  lo = _mm256_and_ps(lo, _mm256_cmp_ps(abs_ps(hi), splat(__builtin_inff()), _CMP_LT_OQ));  // none past inf
}

// 0.5x(1 + tanh(u)) equals x * sigmoid(2u): no cancellation for x < 0.
static inline __m256 gelu_tanh_ps(__m256 x) {
  __m256 hi, lo;
  gelu_tanh_arg(x, hi, lo);
  return mul_sigmoid(x, hi, lo);
}

// sin(x + q*pi/2) for the quadrant offset q (0: sin, 1: cos).
static inline __m256 sincos_ps(__m256 x, int q) {
  __m256 j = _mm256_round_ps(_mm256_mul_ps(x, splat(0.636619747f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // pi/2 in three float pieces. The first FMA is exact (x - j*P1 is a multiple of 2^-24 below 1 in
  // magnitude), so the reduction error is that of the small pieces: fine up to the 1e5 cutoff below.
  __m256 r = _mm256_fnmadd_ps(j, splat(1.57079637f), x);
  r = _mm256_fnmadd_ps(j, splat(-4.37113883e-08f), r);
  r = _mm256_fnmadd_ps(j, splat(-1.71512451e-15f), r);
  __m256 r2 = _mm256_mul_ps(r, r);
  __m256 s = _mm256_fmadd_ps(_mm256_mul_ps(r2, r), poly(r2, kSinP), r);
  __m256 c = _mm256_fmadd_ps(_mm256_mul_ps(r2, r2), poly(r2, kCosP), _mm256_fnmadd_ps(r2, splat(0.5f), splat(1.0f)));
  __m256i quad = _mm256_add_epi32(_mm256_cvtps_epi32(j), _mm256_set1_epi32(q));
  const __m256i one = _mm256_set1_epi32(1);
  __m256 odd = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(quad, one), one));
  __m256 flip = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(quad, _mm256_set1_epi32(2)), 30));
  __m256 y = _mm256_xor_ps(_mm256_blendv_ps(s, c, odd), flip);
  // sin(x) rounds to x below 2^-12; returning x there also keeps the sign of -0.
  if (q == 0) y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(abs_ps(x), splat(0x1p-12f), _CMP_LT_OQ));
  // Past 1e5 the three-piece reduction loses accuracy: hand those (rare) lanes to libm.
  if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(abs_ps(x), splat(1e5f), _CMP_GT_OQ)) != 0, 0)) {
    alignas(32) float xv[8], yv[8];
    _mm256_store_ps(xv, x);
    _mm256_store_ps(yv, y);
    for (int i = 0; i < 8; ++i)
      if (__builtin_fabsf(xv[i]) > 1e5f) yv[i] = q ? __builtin_cosf(xv[i]) : __builtin_sinf(xv[i]);
    y = _mm256_load_ps(yv);
  }
  return y;
}

static inline __m256 sin_ps(__m256 x) { return sincos_ps(x, 0); }
static inline __m256 cos_ps(__m256 x) { return sincos_ps(x, 1); }

// numpy maximum/minimum: NaN in either operand gives NaN (vmaxps alone returns b when a is NaN).
static inline __m256 max_ps(__m256 a, __m256 b) {
  return _mm256_blendv_ps(b, a, _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ), is_nan(a)));
}
static inline __m256 min_ps(__m256 a, __m256 b) {
  return _mm256_blendv_ps(b, a, _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ), is_nan(a)));
}

// pow with powf's results: vector fast paths when every lane's exponent is exactly 2 or exactly 0.5
// (pow(-0, .5) = +0 and pow(-inf, .5) = +inf, unlike sqrt), otherwise powf lane by lane.
static inline __m256 pow_ps(__m256 a, __m256 b) {
  if (_mm256_movemask_ps(_mm256_cmp_ps(b, splat(2.0f), _CMP_EQ_OQ)) == 0xff) return _mm256_mul_ps(a, a);
  if (_mm256_movemask_ps(_mm256_cmp_ps(b, splat(0.5f), _CMP_EQ_OQ)) == 0xff) {
    __m256 r = _mm256_add_ps(_mm256_sqrt_ps(a), _mm256_setzero_ps());
    return _mm256_blendv_ps(r, splat(__builtin_inff()), _mm256_cmp_ps(a, splat(-__builtin_inff()), _CMP_EQ_OQ));
  }
  alignas(32) float av[8], bv[8];
  _mm256_store_ps(av, a);
  _mm256_store_ps(bv, b);
  for (int i = 0; i < 8; ++i) av[i] = __builtin_powf(av[i], bv[i]);
  return _mm256_load_ps(av);
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

// Lanes [0, n) set, for masked loads/stores of a tail of n < 8 floats.
static inline __m256i tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

}  // namespace avx2
}  // namespace tcc
