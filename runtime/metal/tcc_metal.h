// tcc Metal support: what every generated .metal source includes. Part of the tcc runtime library
// (docs/metal.md).
//
// One source, four compilations:
//   - Apple's metal compiler (__METAL_VERSION__): the kernels, into the model's .metallib;
//   - macOS host build (Objective-C++, neither __METAL_VERSION__ nor TCC_SIMT): the launchers, which encode
//     into the model's command buffer (runtime/metal/device_metal.mm);
//   - the emulation build (TCC_SIMT; the file compiled as C++): kernels and launchers, the launchers running
//     the kernels on the CPU SIMT emulator (runtime/simt/tcc_simt_metal.h, runtime/simt/metal_bridge.cpp);
//   - the type check (TCC_MSL_CHECK, through `-include runtime/metal/tcc_msl_shim.h`): the kernels only.
// TCC_METAL_DEVICE_CODE guards kernels and their helpers, TCC_METAL_HOST_CODE the launchers.
// Kernel code is MSL with two conventions the emulator relies on: threadgroup memory is a kernel argument
// (`threadgroup T* p [[threadgroup(n)]]`, sized by the launcher), and the SIMD-group functions are called
// by every lane of a SIMD-group alike (converged code).
#pragma once

// The code generator writes a kernel's [[threadgroup(n)]] as [[TCC_MSL_ATTR_THREADGROUP(n)]]
// (backends/metal/msl.py): on a host compiler `threadgroup` is an empty qualifier, which must not empty the
// attribute too.
#if defined(__METAL_VERSION__)
#include <metal_stdlib>
using namespace metal;
#define TCC_MSL_ATTR_THREADGROUP threadgroup
#define TCC_METAL_DEVICE_CODE 1
#define TCC_METAL_HOST_CODE 0
#elif defined(TCC_MSL_CHECK)
#define TCC_METAL_DEVICE_CODE 1
#define TCC_METAL_HOST_CODE 0
#elif defined(TCC_SIMT)
#include "../simt/tcc_simt_metal.h"
using namespace metal;
#define TCC_METAL_DEVICE_CODE 1
#define TCC_METAL_HOST_CODE 1
#else
#include "tcc_metal_host.h"
#define TCC_METAL_DEVICE_CODE 0
#define TCC_METAL_HOST_CODE 1
#endif

#if !defined(__METAL_VERSION__)
#define TCC_MSL_ATTR_THREADGROUP tcc_threadgroup  // an attribute the host compiler ignores
#endif

#if TCC_METAL_DEVICE_CODE
// Record a device-side error (first one wins; the host reports it at the next sync).
#define TCC_MTL_ERR_INDEX 1
struct tcc_msl_error {  // tcc_mtl_error of tcc_metal_host.h, as the kernels see it
  atomic_int code;
  int pad;
  long value, lo, hi;
};
inline void tcc_msl_fail(device tcc_msl_error* e, int code, long value, long lo, long hi) {
  int expected = 0;
  if (atomic_compare_exchange_weak_explicit(&e->code, &expected, code, memory_order_relaxed, memory_order_relaxed)) {
    e->value = value;
    e->lo = lo;
    e->hi = hi;
  }
}
#endif

#if TCC_METAL_HOST_CODE
// The launcher's handle of kernel `k` of this file: its name in the .metallib, and in the emulation build the
// entry the code generator wrote from its signature (k##__simt).
#if defined(TCC_SIMT)
#define TCC_MTL_FUNCTION(k) (tcc_mtl_function{#k, &k##__simt})
#else
#define TCC_MTL_FUNCTION(k) (tcc_mtl_function{#k, nullptr})
#endif
#endif
