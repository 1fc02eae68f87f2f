// tcc AVX2 vector math names: `tcc::avx2::exp_ps`, `log_ps`, `tanh_ps`, `erf_ps`, `sigmoid_ps`, `silu_ps`,
// `gelu_erf_ps`, `gelu_tanh_ps`, `sin_ps`, `cos_ps`, `pow_ps`, `max_ps`, `min_ps`, `abs_ps` (on __m256), as
// the x86 unary/binary vector expressions (backends/x86/kernels_elementwise.py) spell them, and the AVX2
// helpers `tail_mask`, `store_mask8`, `store_mask32`. Nothing is defined here: the algorithms are written
// once, for every ISA, in runtime/tcc_math_vec.h (over runtime/tcc_vec.h, which includes it and declares
// these names), with their contract; this header is what an x86 template includes to say it needs them
// (and AVX2 + FMA: compile with -mavx2 -mfma).
#pragma once
#if !defined(__AVX2__) || !defined(__FMA__)
#error "tcc_math_avx2.h needs AVX2 and FMA (-mavx2 -mfma)"
#endif
#include "tcc_vec.h"
