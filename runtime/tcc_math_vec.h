// tcc vector math: exp, log, erf, erfc, tanh, sigmoid, sin, cos, pow and the activations built on them,
// written once over the vector abstraction (runtime/tcc_vec.h: AVX2+FMA, 8 floats; AArch64 NEON, 4) and
// the one set of polynomial tables (runtime/tcc_math_coeffs.h). Part of the tcc runtime; reached through
// tcc_vec.h (`tcc::vec::exp`, `tcc::vec::log`) and the per-ISA names of tcc_math_avx2.h / tcc_math_neon.h
// (`tcc::avx2::exp_ps`, `tcc::neon::gelu_erf_ps`, ...), which the unary/binary vector expressions use.
//
// Contract (docs/kernels.md, unary): relative error <= 2e-6 vs float64 on normal inputs, and exact special
// values: exp(-inf)=0, exp(large)=inf, log(0)=-inf, log(x<0)=NaN, tanh(+-inf)=+-1, NaN in -> NaN out.
// Method: Cody-Waite range reduction (FMA makes the high part exact) and polynomials whose coefficients
// were fitted as near-minimax (weighted least squares + Lawson reweighting against 40-digit references;
// each fit's max relative error, well under 1 ulp, is noted in tcc_math_coeffs.h), so float32 rounding
// dominates: measured max relative error 1.2e-7..1.8e-7 for exp, log, tanh, erf, sin, cos (2-3 ulp) and
// 3e-7..5e-7 for sigmoid, silu and the gelus (tests/kernels/test_elementwise.py checks 2e-6).
// Every step is one vec operation that each ISA implements with the same IEEE operation (FMA, round to
// nearest even, IEEE division and square root, float64 lanes for the gelu_tanh argument), so AVX2 and
// NEON give the same bits (the unary functions, checked on 1M inputs of every class) but for the payload
// of NaN results, where the ISA's own NaN rules show (the hardware min/max, float-to-int of NaN).
#pragma once
#include "tcc_math_coeffs.h"
#include "tcc_vec.h"

#if defined(TCC_VEC_SCALAR)
#error "tcc_math_vec.h needs a vector ISA of tcc_vec.h (AVX2+FMA or AArch64 NEON)"
#endif

namespace tcc {
namespace vmath {

using namespace ::tcc::vec;   // V, M, I and the operations
using namespace ::tcc::math;  // kExpP, kLogP, ...

// Horner's rule with FMA: c[0] + u * (c[1] + u * (... + u * c[N-1])).
template <int N>
static inline V poly(V u, const float (&c)[N]) {
  V acc = set1(c[N - 1]);
  for (int k = N - 2; k >= 0; --k) acc = fma(acc, u, set1(c[k]));
  return acc;
}

// Same, with the coefficient set chosen per lane (m set: b, else a); both sets have N terms.
template <int N>
static inline V poly_select(V u, const float (&a)[N], const float (&b)[N], M m) {
  V acc = select(m, set1(a[N - 1]), set1(b[N - 1]));
  for (int k = N - 2; k >= 0; --k) acc = fma(acc, u, select(m, set1(a[k]), set1(b[k])));
  return acc;
}

// 2^n for integer n in [-75, 64] (biased exponent stays in the normal range).
static inline V pow2i(I n) { return as_float(shl<23>(iadd(n, iset1(127)))); }

static inline V exp_ps(V x) {
  // Clamp so that n below fits the two-step scaling; past the bounds the result is inf / 0 anyway.
  // NaN passes through the clamp (see min/max in tcc_vec.h).
  x = min(set1(89.0f), max(set1(-104.0f), x));
  const V n = round(mul(x, set1(1.44269502f)));
  V r = fnma(n, set1(0.693147182f), x);  // exact: FMA keeps n*ln2_hi unrounded
  r = fnma(n, set1(-1.90465421e-09f), r);  // ln2 - ln2_hi
  const V r2 = mul(r, r);
  const V p = fma(poly(r, kExpP), r2, add(r, set1(1.0f)));
  // Scale by 2^n in two steps so that n = 128 (overflow to inf) and n < -126 (subnormal results,
  // rounded once by the last multiply) both come out right. NaN lanes: p is NaN, whatever n converts to.
  const I ni = to_int(n);
  const I n1 = sar<1>(ni);
  const I n2 = isub(ni, n1);
  return mul(mul(p, pow2i(n1)), pow2i(n2));
}

static inline V log_ps(V x) {
  // Subnormals: scale by 2^23 first so the exponent field is meaningful.
  const M tiny = lt(x, set1(1.17549435e-38f));
  const V xs = select(tiny, x, mul(x, set1(8388608.0f)));
  const V ebias = keep(set1(23.0f), tiny);
  const I bits = as_int(xs);
  I e = isub(shr<23>(bits), iset1(127));
  V m = as_float(ior(iand(bits, iset1(0x007fffff)), iset1(0x3f800000)));
  // Center the mantissa on 1: m in [sqrt(1/2), sqrt(2)), so log(m) needs no large-argument terms.
  const M big = gt(m, set1(1.41421354f));
  m = select(big, m, mul(m, set1(0.5f)));
  e = isub(e, mask_int(big));  // the mask is -1 where big
  const V ef = sub(to_float(e), ebias);
  const V f = sub(m, set1(1.0f));
  const V f2 = mul(f, f);
  V y = fma(mul(f2, f), poly(f, kLogP), fnma(f2, set1(0.5f), f));
  y = fma(ef, set1(-1.90465421e-09f), y);
  y = fma(ef, set1(0.693147182f), y);
  // Special values: log(+-0) = -inf, log(x<0) = NaN, log(inf) = inf, NaN stays NaN.
  y = select(eq(x, zero()), y, set1(-__builtin_inff()));
  y = select(lt(x, zero()), y, set1(__builtin_nanf("")));
  return select(mask_or(is_nan(x), eq(x, set1(__builtin_inff()))), y, x);
}

static inline V tanh_ps(V x) {
  const V ax = abs(x);
  // Small |x|: odd polynomial (1 - 2/(e^2x + 1) would cancel). Large: exp form; exp(inf) gives 1 exactly.
  // NaN: exp(NaN) makes `large` NaN, which is taken.
  const V ax2 = mul(ax, ax);
  const V small = fma(mul(ax2, ax), poly(ax2, kTanhP), ax);
  const V e = exp_ps(add(ax, ax));
  const V large = sub(set1(1.0f), div(set1(2.0f), add(e, set1(1.0f))));
  return bit_or(select(lt(ax, set1(0.625f)), large, small), sign_bits(x));
}

// x * sigmoid(v) for v = hi + lo (lo: the low part of a double-float argument, else 0). With
// h = exp(-|v|/2) it is x / (1 + h^2) for v >= 0 and (x h) h / (1 + h^2) for v < 0: exp never
// overflows, and for v < 0 the product leaves the subnormal range only in the last multiply, so an
// output like silu(-91) = -2.7e-38 keeps full precision although e^-91 is subnormal.
static inline V mul_sigmoid(V x, V hi, V lo) {
  V h = exp_ps(mul(abs(hi), set1(-0.5f)));
  const V signed_lo = bit_xor(lo, sign_bits(hi));
  h = fnma(h, mul(signed_lo, set1(0.5f)), h);  // exp(-lo/2) ~ 1 - lo/2
  const V num = select(lt(hi, zero()), x, mul(mul(x, h), h));
  return div(num, fma(h, h, set1(1.0f)));
}

static inline V sigmoid_ps(V x) { return mul_sigmoid(set1(1.0f), x, zero()); }
static inline V silu_ps(V x) { return mul_sigmoid(x, x, zero()); }

// exp(-z^2) * Q(1/z) for z in [0.625, 11], where z^2 = z2hi + z2lo exactly (the caller splits it with
// FMA, because rounding z^2 would cost z^2 * 2^-24 relative error: 6e-6 at z = 10).
static inline V erfc_tail(V z, V z2hi, V z2lo) {
  const M near = lt(z, set1(2.0f));
  const V u = sub(div(set1(1.0f), z), select(near, set1(0.295f), set1(1.05f)));
  V e = exp_ps(neg(z2hi));
  e = fnma(e, z2lo, e);  // exp(-hi - lo) = exp(-hi) * (1 - lo), |lo| < 2^-17
  return mul(e, poly_select(u, kErfcFar, kErfcNear, near));
}

static inline V erf_ps(V x) {
  // |x| < 1: odd polynomial. Otherwise 1 - erfc(|x|); beyond 11 that is 1 (the clamp also keeps inf out
  // of the z^2 split, where inf - inf would make NaN).
  const V ax = abs(x);
  const V x2 = mul(x, x);
  const V small = mul(ax, poly(x2, kErfP));
  const V z = min(set1(11.0f), max(set1(1.0f), ax));
  const V z2 = mul(z, z);
  const V large = sub(set1(1.0f), erfc_tail(z, z2, fms(z, z, z2)));
  V y = select(lt(ax, set1(1.0f)), large, small);
  y = select(is_nan(x), y, x);
  return bit_or(y, sign_bits(x));
}

// 0.5 * x * (1 + erf(x / sqrt2)) written as 0.5 * x * erfc(-x / sqrt2), with erfc from the exp * Q form
// once |z| >= 0.625, so large negative x keeps its relative accuracy instead of cancelling in 1 + erf.
static inline V gelu_erf_ps(V x) {
  const V z = mul(x, set1(-0.707106769f));
  const V az = abs(z);
  const V small = fnma(z, poly(mul(z, z), kErfP), set1(1.0f));
  // z^2 = x^2 / 2 exactly from the FMA split of x^2 (z itself is rounded); |x| <= 15.5 keeps z <= 11.
  // NaN x is NaN through every branch (the clamps pass it), so 0.5 * x * (...) is NaN.
  const V xc = min(set1(15.5f), abs(x));
  const V x2 = mul(xc, xc);
  const V x2lo = fms(xc, xc, x2);
  const V zc = min(set1(11.0f), max(set1(0.625f), az));
  const V tail = erfc_tail(zc, mul(x2, set1(0.5f)), mul(x2lo, set1(0.5f)));
  const V large = select(lt(z, zero()), tail, sub(set1(2.0f), tail));
  const V erfc = select(lt(az, set1(0.625f)), large, small);
  return mul(mul(set1(0.5f), x), erfc);
}

// 2u = 2 sqrt(2/pi) x (1 + 0.044715 x^2) in double, returned as hi + lo floats: in float its rounding
// would cost |2u| * 2^-23 relative error in exp(-2u) (5e-6 at x = -8).
static inline void gelu_tanh_arg(V x, V& hi, V& lo) {
  const W xd = widen(x);
  const W v = wmul(xd, wfma(wmul(xd, xd), wset1(1.5957691216057308 * 0.044715), wset1(1.5957691216057308)));
  split(v, hi, lo);
  lo = keep(lo, lt(abs(hi), set1(__builtin_inff())));  // none past inf
}

// 0.5x(1 + tanh(u)) equals x * sigmoid(2u): no cancellation for x < 0.
static inline V gelu_tanh_ps(V x) {
  V hi, lo;
  gelu_tanh_arg(x, hi, lo);
  return mul_sigmoid(x, hi, lo);
}

// sin(x + q*pi/2) for the quadrant offset q (0: sin, 1: cos).
static inline V sincos_ps(V x, int q) {
  const V j = round(mul(x, set1(0.636619747f)));
  // pi/2 in three float pieces. The first FMA is exact (x - j*P1 is a multiple of 2^-24 below 1 in
  // magnitude), so the reduction error is that of the small pieces: fine up to the 1e5 cutoff below.
  V r = fnma(j, set1(1.57079637f), x);
  r = fnma(j, set1(-4.37113883e-08f), r);
  r = fnma(j, set1(-1.71512451e-15f), r);
  const V r2 = mul(r, r);
  const V s = fma(mul(r2, r), poly(r2, kSinP), r);
  const V c = fma(mul(r2, r2), poly(r2, kCosP), fnma(r2, set1(0.5f), set1(1.0f)));
  // NaN / inf lanes: r is NaN, so y is NaN whatever the quadrant converts to.
  const I quad = iadd(to_int(j), iset1(q));
  const M odd = ihas(quad, iset1(1));
  const V flip = as_float(shl<30>(iand(quad, iset1(2))));
  V y = bit_xor(select(odd, s, c), flip);
  // sin(x) rounds to x below 2^-12; returning x there also keeps the sign of -0.
  if (q == 0) y = select(lt(abs(x), set1(0x1p-12f)), y, x);
  // Past 1e5 the three-piece reduction loses accuracy: hand those (rare) lanes to libm.
  if (__builtin_expect(any(gt(abs(x), set1(1e5f))), 0)) {
    float xv[kLanes], yv[kLanes];
    store(xv, x);
    store(yv, y);
    for (int64_t i = 0; i < kLanes; ++i)
      if (__builtin_fabsf(xv[i]) > 1e5f) yv[i] = q ? __builtin_cosf(xv[i]) : __builtin_sinf(xv[i]);
    y = load(yv);
  }
  return y;
}

static inline V sin_ps(V x) { return sincos_ps(x, 0); }
static inline V cos_ps(V x) { return sincos_ps(x, 1); }
static inline V abs_ps(V x) { return abs(x); }

// numpy maximum/minimum with tcc_maxf's choice between +0 and -0 (a when a >= b), NaN in either -> NaN.
static inline V max_ps(V a, V b) { return select(mask_or(ge(a, b), is_nan(a)), b, a); }
static inline V min_ps(V a, V b) { return select(mask_or(le(a, b), is_nan(a)), b, a); }

// relu as the scalar (x < 0 ? 0 : x): keeps -0 and NaN.
static inline V relu_ps(V x) { return select(lt(x, zero()), x, zero()); }

// 1 where x > 0, -1 where x < 0, x itself otherwise (+-0, NaN).
static inline V sign_ps(V x) { return select(gt(x, zero()), select(lt(x, zero()), x, set1(-1.0f)), set1(1.0f)); }

// pow with powf's results: vector fast paths when every lane's exponent is exactly 2 or exactly 0.5
// (pow(-0, .5) = +0 and pow(-inf, .5) = +inf, unlike sqrt), otherwise powf lane by lane.
static inline V pow_ps(V a, V b) {
  if (all(eq(b, set1(2.0f)))) return mul(a, a);
  if (all(eq(b, set1(0.5f)))) {
    const V r = add(sqrt(a), zero());
    return select(eq(a, set1(-__builtin_inff())), r, set1(__builtin_inff()));
  }
  float av[kLanes], bv[kLanes];
  store(av, a);
  store(bv, b);
  for (int64_t i = 0; i < kLanes; ++i) av[i] = __builtin_powf(av[i], bv[i]);
  return load(av);
}

}  // namespace vmath

namespace vec {
static inline V exp(V x) { return vmath::exp_ps(x); }
static inline V log(V x) { return vmath::log_ps(x); }
}  // namespace vec

// The per-ISA names the unary/binary vector expressions of backends/x86/kernels_elementwise.py and
// backends/arm/kernels_neon.py spell (`tcc::avx2::exp_ps`, `tcc::neon::gelu_erf_ps`, ...).
#if defined(TCC_VEC_AVX2)
namespace avx2 {
using namespace ::tcc::vmath;
}  // namespace avx2
#elif defined(TCC_VEC_NEON)
namespace neon {
using namespace ::tcc::vmath;
}  // namespace neon
#endif
}  // namespace tcc
