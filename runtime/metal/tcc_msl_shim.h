// tcc's MSL type-check shim: `clang++ -fsyntax-only -std=c++17 -include runtime/metal/tcc_msl_shim.h -x c++
// kernel.metal` checks a generated Metal kernel without Apple's compiler. Part of the tcc runtime library
// (docs/metal.md, "What is checked where").
//
// It gives the kernels tcc's MSL model (runtime/metal/tcc_msl.h: MSL's scalar and vector types, constructors
// and conversions, qualifiers, metal:: math, atomics) and the SIMD-group functions, barriers and
// simdgroup_matrix operations with the emulator's signatures (runtime/simt/tcc_simt_metal.h), but not the
// launchers (TCC_METAL_HOST_CODE is 0). Kernel signatures (address-space qualifiers, [[buffer(n)]] and the
// built-in attributes, their types) are checked by the code generator (backends/metal/msl.py), since a host
// compiler ignores attributes it does not know. Not checked here: MSL's address-space rules (a host compiler
// has one address space), and features outside the model (tcc_msl.h says which).
#pragma once
#define TCC_MSL_CHECK 1
#include "../simt/tcc_simt_metal.h"
using namespace metal;
