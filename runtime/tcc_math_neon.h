// tcc NEON vector math names (aarch64): `tcc::neon::exp_ps`, `log_ps`, `tanh_ps`, `erf_ps`, `sigmoid_ps`,
// `silu_ps`, `gelu_erf_ps`, `gelu_tanh_ps`, `sin_ps`, `cos_ps`, `pow_ps`, `max_ps`, `min_ps`, `relu_ps`,
// `sign_ps` (on float32x4_t), as the arm unary/binary vector expressions (backends/arm/kernels_neon.py) spell
// them, and the NEON helpers `load_partial`, `store_partial`, `store_mask4`, `store_mask16`. Nothing is
// defined here: the algorithms are written once, for every ISA, in runtime/tcc_math_vec.h (over
// runtime/tcc_vec.h, which includes it and declares these names), with their contract and the same results
// as on AVX2; this header is what an arm template includes to say it needs them.
#pragma once
#if !defined(__aarch64__)
#error "tcc_math_neon.h is for aarch64 (AdvSIMD)"
#endif
#include "tcc_vec.h"
