// tcc NEON vector math (aarch64): exp, log, erf, erfc, tanh, sigmoid, sin, cos and the activations built on
// them, 4 floats at a time. Part of the tcc runtime; included by the arm `neon` kernel templates.
//
// The same algorithms as runtime/tcc_math_avx2.h over the same coefficient tables (runtime/tcc_math_coeffs.h):
// Cody-Waite range reduction with FMA, near-minimax polynomials, the cancellation-free forms of the
// activations; so the same contract holds (docs/kernels.md, unary): relative error <= 2e-6 vs float64 on normal inputs, and exact special
// values: exp(-inf)=0, exp(large)=inf, log(0)=-inf, log(x<0)=NaN, tanh(+-inf)=+-1, NaN in -> NaN out.
// AArch64 NEON has everything the AVX2 versions use (FMA, round-to-nearest, IEEE division and square root,
// float64 lanes for the gelu_tanh argument); the differences are the mask type (uint32x4_t, all-ones lanes)
// and min/max: vminq/vmaxq propagate NaN (FMIN/FMAX), where x86 returns the second operand.
#pragma once
#include <arm_neon.h>
#include <cstdint>

#include "tcc_math_coeffs.h"

#if !defined(__aarch64__)
#error "tcc_math_neon.h is for aarch64 (AdvSIMD)"
#endif

namespace tcc {
namespace neon {

using f32x4 = float32x4_t;
using mask4 = uint32x4_t;

// The polynomial tables (kExpP, kLogP, ...): runtime/tcc_math_coeffs.h, shared by every ISA.
using namespace ::tcc::math;

static inline f32x4 splat(float v) { return vdupq_n_f32(v); }
static inline f32x4 zero() { return vdupq_n_f32(0.0f); }
static inline f32x4 abs_ps(f32x4 x) { return vabsq_f32(x); }
static inline mask4 is_nan(f32x4 x) { return vmvnq_u32(vceqq_f32(x, x)); }
// mask ? b : a (the operand order of _mm256_blendv_ps).
static inline f32x4 blend(f32x4 a, f32x4 b, mask4 m) { return vbslq_f32(m, b, a); }
static inline f32x4 sign_of(f32x4 x) {  // the sign bit of x, as a float
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x80000000u)));
}
static inline f32x4 or_ps(f32x4 a, f32x4 b) {
  return vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(b)));
}
static inline f32x4 xor_ps(f32x4 a, f32x4 b) {
  return vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(b)));
}
static inline f32x4 and_mask(f32x4 a, mask4 m) { return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), m)); }
static inline bool any(mask4 m) { return vmaxvq_u32(m) != 0; }
static inline bool all(mask4 m) { return vminvq_u32(m) != 0; }
// a * b + c and c - a * b, each rounded once.
static inline f32x4 fma(f32x4 a, f32x4 b, f32x4 c) { return vfmaq_f32(c, a, b); }
static inline f32x4 fnma(f32x4 a, f32x4 b, f32x4 c) { return vfmsq_f32(c, a, b); }

template <int N>
static inline f32x4 poly(f32x4 u, const float (&c)[N]) {
  f32x4 acc = splat(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) acc = fma(acc, u, splat(c[k]));
  return acc;
}

template <int N>
static inline f32x4 poly_select(f32x4 u, const float (&a)[N], const float (&b)[N], mask4 m) {
  f32x4 acc = blend(splat(a[N - 1]), splat(b[N - 1]), m);
  for (int k = N - 2; k >= 0; --k) acc = fma(acc, u, blend(splat(a[k]), splat(b[k]), m));
  return acc;
}

// 2^n for integer n in [-75, 64].
static inline f32x4 pow2i(int32x4_t n) {
  return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n, vdupq_n_s32(127)), 23));
}

static inline f32x4 exp_ps(f32x4 x) {
  // vminq/vmaxq propagate NaN, so NaN passes through the clamp.
  x = vminq_f32(splat(89.0f), vmaxq_f32(splat(-104.0f), x));
  const f32x4 n = vrndnq_f32(vmulq_f32(x, splat(1.44269502f)));
  f32x4 r = fnma(n, splat(0.693147182f), x);
  r = fnma(n, splat(-1.90465421e-09f), r);
  const f32x4 r2 = vmulq_f32(r, r);
  const f32x4 p = fma(poly(r, kExpP), r2, vaddq_f32(r, splat(1.0f)));
  const int32x4_t ni = vcvtq_s32_f32(n);  // n is integral (NaN lanes give 0; p is NaN there anyway)
  const int32x4_t n1 = vshrq_n_s32(ni, 1);
  const int32x4_t n2 = vsubq_s32(ni, n1);
  return vmulq_f32(vmulq_f32(p, pow2i(n1)), pow2i(n2));
}

static inline f32x4 log_ps(f32x4 x) {
  const mask4 sub = vcltq_f32(x, splat(1.17549435e-38f));
  const f32x4 xs = blend(x, vmulq_f32(x, splat(8388608.0f)), sub);
  const f32x4 ebias = and_mask(splat(23.0f), sub);
  const uint32x4_t bits = vreinterpretq_u32_f32(xs);
  int32x4_t e = vsubq_s32(vreinterpretq_s32_u32(vshrq_n_u32(bits, 23)), vdupq_n_s32(127));
  f32x4 m = vreinterpretq_f32_u32(vorrq_u32(vandq_u32(bits, vdupq_n_u32(0x007fffff)), vdupq_n_u32(0x3f800000)));
  const mask4 big = vcgtq_f32(m, splat(1.41421354f));
  m = blend(m, vmulq_f32(m, splat(0.5f)), big);
  e = vsubq_s32(e, vreinterpretq_s32_u32(big));  // big is -1 (all ones) where set
  const f32x4 ef = vsubq_f32(vcvtq_f32_s32(e), ebias);
  const f32x4 f = vsubq_f32(m, splat(1.0f));
  const f32x4 f2 = vmulq_f32(f, f);
  f32x4 y = fma(vmulq_f32(f2, f), poly(f, kLogP), fnma(f2, splat(0.5f), f));
  y = fma(ef, splat(-1.90465421e-09f), y);
  y = fma(ef, splat(0.693147182f), y);
  y = blend(y, splat(-__builtin_inff()), vceqq_f32(x, zero()));
  y = blend(y, splat(__builtin_nanf("")), vcltq_f32(x, zero()));
  const mask4 keep = vorrq_u32(is_nan(x), vceqq_f32(x, splat(__builtin_inff())));
  return blend(y, x, keep);
}

static inline f32x4 tanh_ps(f32x4 x) {
  const f32x4 ax = abs_ps(x);
  const f32x4 ax2 = vmulq_f32(ax, ax);
  const f32x4 small = fma(vmulq_f32(ax2, ax), poly(ax2, kTanhP), ax);
  const f32x4 e = exp_ps(vaddq_f32(ax, ax));
  const f32x4 large = vsubq_f32(splat(1.0f), vdivq_f32(splat(2.0f), vaddq_f32(e, splat(1.0f))));
  const f32x4 y = blend(large, small, vcltq_f32(ax, splat(0.625f)));
  return or_ps(y, sign_of(x));  // NaN: exp(NaN) makes `large` NaN, which is taken
}

// x * sigmoid(hi + lo); see tcc_math_avx2.h: mul_sigmoid.
static inline f32x4 mul_sigmoid(f32x4 x, f32x4 hi, f32x4 lo) {
  f32x4 h = exp_ps(vmulq_f32(abs_ps(hi), splat(-0.5f)));
  const f32x4 signed_lo = xor_ps(lo, sign_of(hi));
  h = fnma(h, vmulq_f32(signed_lo, splat(0.5f)), h);
  const mask4 neg = vcltq_f32(hi, zero());
  const f32x4 num = blend(x, vmulq_f32(vmulq_f32(x, h), h), neg);
  return vdivq_f32(num, fma(h, h, splat(1.0f)));
}

static inline f32x4 sigmoid_ps(f32x4 x) { return mul_sigmoid(splat(1.0f), x, zero()); }
static inline f32x4 silu_ps(f32x4 x) { return mul_sigmoid(x, x, zero()); }

// exp(-z^2) * Q(1/z) for z in [0.625, 11], z^2 = z2hi + z2lo exactly.
static inline f32x4 erfc_tail(f32x4 z, f32x4 z2hi, f32x4 z2lo) {
  const mask4 near = vcltq_f32(z, splat(2.0f));
  const f32x4 u = vsubq_f32(vdivq_f32(splat(1.0f), z), blend(splat(0.295f), splat(1.05f), near));
  f32x4 e = exp_ps(vnegq_f32(z2hi));
  e = fnma(e, z2lo, e);
  return vmulq_f32(e, poly_select(u, kErfcFar, kErfcNear, near));
}

// a * b - p exactly (p = round(a * b)): the low part of the product.
static inline f32x4 mul_lo(f32x4 a, f32x4 b, f32x4 p) { return vnegq_f32(fnma(a, b, p)); }

static inline f32x4 erf_ps(f32x4 x) {
  const f32x4 ax = abs_ps(x);
  const f32x4 x2 = vmulq_f32(x, x);
  const f32x4 small = vmulq_f32(ax, poly(x2, kErfP));
  const f32x4 z = vminq_f32(splat(11.0f), vmaxq_f32(splat(1.0f), ax));
  const f32x4 z2 = vmulq_f32(z, z);
  const f32x4 large = vsubq_f32(splat(1.0f), erfc_tail(z, z2, mul_lo(z, z, z2)));
  f32x4 y = blend(large, small, vcltq_f32(ax, splat(1.0f)));
  y = blend(y, x, is_nan(x));
  return or_ps(y, sign_of(x));
}

static inline f32x4 gelu_erf_ps(f32x4 x) {
  const f32x4 z = vmulq_f32(x, splat(-0.707106769f));
  const f32x4 az = abs_ps(z);
  const f32x4 small = fnma(z, poly(vmulq_f32(z, z), kErfP), splat(1.0f));
  // vminq propagates NaN (x86's min returns the bound): NaN lanes are NaN in every branch, and the
  // result is 0.5 * x * (...) = NaN as required.
  const f32x4 xc = vminq_f32(splat(15.5f), abs_ps(x));
  const f32x4 x2 = vmulq_f32(xc, xc);
  const f32x4 x2lo = mul_lo(xc, xc, x2);
  const f32x4 zc = vminq_f32(splat(11.0f), vmaxq_f32(splat(0.625f), az));
  const f32x4 tail = erfc_tail(zc, vmulq_f32(x2, splat(0.5f)), vmulq_f32(x2lo, splat(0.5f)));
  const mask4 neg = vcltq_f32(z, zero());
  const f32x4 large = blend(tail, vsubq_f32(splat(2.0f), tail), neg);
  const f32x4 erfc = blend(large, small, vcltq_f32(az, splat(0.625f)));
  return vmulq_f32(vmulq_f32(splat(0.5f), x), erfc);
}

// 2u = 2 sqrt(2/pi) x (1 + 0.044715 x^2) in double, as hi + lo floats (see tcc_math_avx2.h).
static inline void gelu_tanh_arg(f32x4 x, f32x4& hi, f32x4& lo) {
  const float64x2_t a = vdupq_n_f64(1.5957691216057308), b = vdupq_n_f64(1.5957691216057308 * 0.044715);
  const float64x2_t xl = vcvt_f64_f32(vget_low_f32(x)), xh = vcvt_high_f64_f32(x);
  const float64x2_t vl = vmulq_f64(xl, vfmaq_f64(a, vmulq_f64(xl, xl), b));
  const float64x2_t vh = vmulq_f64(xh, vfmaq_f64(a, vmulq_f64(xh, xh), b));
  const float32x2_t hl = vcvt_f32_f64(vl);
  hi = vcvt_high_f32_f64(hl, vh);
  const float32x2_t ll = vcvt_f32_f64(vsubq_f64(vl, vcvt_f64_f32(hl)));
  lo = vcvt_high_f32_f64(ll, vsubq_f64(vh, vcvt_high_f64_f32(hi)));
  lo = and_mask(lo, vcltq_f32(abs_ps(hi), splat(__builtin_inff())));
}

static inline f32x4 gelu_tanh_ps(f32x4 x) {
  f32x4 hi, lo;
  gelu_tanh_arg(x, hi, lo);
  return mul_sigmoid(x, hi, lo);
}

// sin(x + q*pi/2) for the quadrant offset q (0: sin, 1: cos).
static inline f32x4 sincos_ps(f32x4 x, int q) {
  const f32x4 j = vrndnq_f32(vmulq_f32(x, splat(0.636619747f)));
  f32x4 r = fnma(j, splat(1.57079637f), x);
  r = fnma(j, splat(-4.37113883e-08f), r);
  r = fnma(j, splat(-1.71512451e-15f), r);
  const f32x4 r2 = vmulq_f32(r, r);
  const f32x4 s = fma(vmulq_f32(r2, r), poly(r2, kSinP), r);
  const f32x4 c = fma(vmulq_f32(r2, r2), poly(r2, kCosP), fnma(r2, splat(0.5f), splat(1.0f)));
  const int32x4_t quad = vaddq_s32(vcvtq_s32_f32(j), vdupq_n_s32(q));
  const mask4 odd = vtstq_s32(quad, vdupq_n_s32(1));
  const f32x4 flip = vreinterpretq_f32_s32(vshlq_n_s32(vandq_s32(quad, vdupq_n_s32(2)), 30));
  f32x4 y = xor_ps(blend(s, c, odd), flip);
  if (q == 0) y = blend(y, x, vcltq_f32(abs_ps(x), splat(0x1p-12f)));
  // NaN / inf lanes: r is NaN, so y is NaN already (vcvtq of NaN is 0: no undefined behaviour).
  const mask4 far = vcgtq_f32(abs_ps(x), splat(1e5f));
  if (__builtin_expect(any(far), 0)) {
    float xv[4], yv[4];
    vst1q_f32(xv, x);
    vst1q_f32(yv, y);
    for (int i = 0; i < 4; ++i)
      if (__builtin_fabsf(xv[i]) > 1e5f) yv[i] = q ? __builtin_cosf(xv[i]) : __builtin_sinf(xv[i]);
    y = vld1q_f32(yv);
  }
  return y;
}

static inline f32x4 sin_ps(f32x4 x) { return sincos_ps(x, 0); }
static inline f32x4 cos_ps(f32x4 x) { return sincos_ps(x, 1); }

// numpy maximum/minimum with tcc_maxf's choice between +0 and -0 (a when a >= b), NaN in either -> NaN.
static inline f32x4 max_ps(f32x4 a, f32x4 b) { return blend(b, a, vorrq_u32(vcgeq_f32(a, b), is_nan(a))); }
static inline f32x4 min_ps(f32x4 a, f32x4 b) { return blend(b, a, vorrq_u32(vcleq_f32(a, b), is_nan(a))); }

// relu as the scalar (x < 0 ? 0 : x): keeps -0 and NaN.
static inline f32x4 relu_ps(f32x4 x) { return blend(x, zero(), vcltq_f32(x, zero())); }

// 1 where x > 0, -1 where x < 0, x itself otherwise (+-0, NaN).
static inline f32x4 sign_ps(f32x4 x) {
  return blend(blend(x, splat(-1.0f), vcltq_f32(x, zero())), splat(1.0f), vcgtq_f32(x, zero()));
}

// pow with powf's results: vector fast paths for exponent exactly 2 or 0.5 in every lane, else powf per lane.
static inline f32x4 pow_ps(f32x4 a, f32x4 b) {
  if (all(vceqq_f32(b, splat(2.0f)))) return vmulq_f32(a, a);
  if (all(vceqq_f32(b, splat(0.5f)))) {
    const f32x4 r = vaddq_f32(vsqrtq_f32(a), zero());
    return blend(r, splat(__builtin_inff()), vceqq_f32(a, splat(-__builtin_inff())));
  }
  float av[4], bv[4];
  vst1q_f32(av, a);
  vst1q_f32(bv, b);
  for (int i = 0; i < 4; ++i) av[i] = __builtin_powf(av[i], bv[i]);
  return vld1q_f32(av);
}

// Comparison masks to bool bytes 0/1: 4 x 4 lanes -> 16 bytes.
static inline void store_mask16(uint8_t* out, mask4 m0, mask4 m1, mask4 m2, mask4 m3) {
  const uint16x8_t lo = vcombine_u16(vmovn_u32(m0), vmovn_u32(m1));
  const uint16x8_t hi = vcombine_u16(vmovn_u32(m2), vmovn_u32(m3));
  vst1q_u8(out, vandq_u8(vcombine_u8(vmovn_u16(lo), vmovn_u16(hi)), vdupq_n_u8(1)));
}
static inline void store_mask4(uint8_t* out, mask4 m) {
  const uint8x8_t b = vand_u8(vmovn_u16(vcombine_u16(vmovn_u32(m), vmovn_u32(m))), vdup_n_u8(1));
  const uint32_t w = vget_lane_u32(vreinterpret_u32_u8(b), 0);
  __builtin_memcpy(out, &w, 4);
}

// NEON has no masked load/store: the first n < 4 floats through a small buffer (never touching p[n..3]).
static inline f32x4 load_partial(const float* p, int64_t n, float fill = 0.0f) {
  float t[4] = {fill, fill, fill, fill};
  for (int64_t i = 0; i < n; ++i) t[i] = p[i];
  return vld1q_f32(t);
}
static inline void store_partial(float* p, int64_t n, f32x4 v) {
  float t[4];
  vst1q_f32(t, v);
  for (int64_t i = 0; i < n; ++i) p[i] = t[i];
}

}  // namespace neon
}  // namespace tcc
