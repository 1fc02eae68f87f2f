// tcc vector math coefficients: the one copy of the polynomial tables that every ISA's vector math
// (runtime/tcc_math_vec.h, written once over runtime/tcc_vec.h) evaluates.
// The fits: near-minimax (weighted least squares + Lawson reweighting against 40-digit references); the
// fitted max relative error of each polynomial is noted beside it, well under 1 ulp.
#pragma once

namespace tcc {
namespace math {

// exp(r) = 1 + r + r^2 * P(r), |r| <= ln2/2.                                      fit error 3.1e-9
static constexpr float kExpP[] = {0.49999994f, 0.166665211f, 0.041668389f, 0.00836871564f, 0.00138146f};
// log(1+f) = f - f^2/2 + f^3 * P(f), f in [sqrt(1/2)-1, sqrt(2)-1].                 fit error 5.8e-9
static constexpr float kLogP[] = {0.333333313f, -0.250008225f, 0.200012267f, -0.166233569f,
                                  0.142017618f, -0.131601945f, 0.127615497f, -0.0763442963f};
// tanh(x) = x + x^3 * P(x^2), |x| < 0.625.                                         fit error 1.6e-10
static constexpr float kTanhP[] = {-0.333333313f, 0.133332059f, -0.0539467633f, 0.0217007045f,
                                   -0.00817740057f, 0.0021429637f};
// erf(x) = x * P(x^2), |x| < 1.                                                     fit error 1.2e-9
static constexpr float kErfP[] = {1.12837911f, -0.37612626f, 0.112835854f, -0.0268538166f,
                                  0.00518833427f, -0.000801024726f, 7.85402517e-05f};
// erfc(z) = exp(-z^2) * Q(1/z - center) for z >= 0.625, in two pieces: z in [0.625, 2] (center 1.05, fit
// error 5.9e-9) and z in [2, 11] (center 0.295, fit error 1.4e-9); past 11, exp(-z^2) is 0 in float.
static constexpr float kErfcNear[] = {0.44095248f, 0.261650503f, -0.112442255f, 0.0416048877f, -0.0106343627f,
                                      -0.00106497563f, 0.00405995501f, -0.00391297834f, 0.00320206792f,
                                      -0.00163276494f};
static constexpr float kErfcFar[] = {0.159979329f, 0.503000081f, -0.174151197f, -0.0768634826f, 0.186846063f,
                                     -0.127546549f, -0.0676819533f, 0.285665393f, -0.261344582f,
                                     -0.139055476f};
// sin(r) = r + r^3 * S(r^2), cos(r) = 1 - r^2/2 + r^4 * C(r^2), |r| <= pi/4.     fit error 3.8e-9, 1.2e-10
static constexpr float kSinP[] = {-0.166666552f, 0.00833216123f, -0.000195152839f};
static constexpr float kCosP[] = {0.0416666456f, -0.00138873165f, 2.44331568e-05f};

}  // namespace math
}  // namespace tcc
