// tcc CUDA support: what every generated CUDA source (kernels and the model program) includes.
// Part of the tcc runtime library.
//
// One source, two builds:
//   - nvcc (sm_80, sm_90, native): the CUDA runtime, kernels launched on the execution context's stream;
//   - the CPU SIMT emulator (TCC_SIMT defined; the .cu file compiled as C++ by the host compiler):
//     runtime/simt/tcc_simt.h supplies the CUDA built-ins, runs each thread of a block as a fiber, and
//     reports barrier divergence and out-of-bounds shared-memory accesses as errors (docs/cuda.md).
// Kernel code is plain CUDA C++ (threadIdx, __syncthreads, __shfl_xor_sync, __half, atomics) with three
// exceptions, so that the emulator sees what it must check:
//   - shared memory is declared with TCC_SHARED / TCC_SHARED2 / TCC_DYN_SHARED (never `__shared__`);
//   - kernels are launched with TCC_LAUNCH (never `<<<...>>>`, which is not C++);
//   - inline PTX lives only in runtime/tcc_cuda_ptx.h, each helper with its portable fallback.
#pragma once
#include <stdint.h>

#include "tcc_device.h"

#if defined(TCC_SIMT)
#include "simt/tcc_simt.h"
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

// Device-side errors (an index out of range in a gather): the first one wins, the host reads it at the
// next sync point (tcc_exec_sync) and fails the run with "<what> <value> out of range [lo, hi)".
struct tcc_cuda_error {
  int32_t code;  // 0: none; TCC_CUDA_ERR_*
  int32_t pad;
  int64_t value, lo, hi;
};
#define TCC_CUDA_ERR_INDEX 1

#if !defined(TCC_SIMT)
// Static shared memory, per block: TCC_SHARED(float, tile, 256); TCC_SHARED2(float, t, 32, 33).
#define TCC_SHARED(T, name, n) __shared__ T name[n]
#define TCC_SHARED2(T, name, rows, cols) __shared__ T name[rows][cols]
// The launch's dynamic shared memory as a T*: TCC_DYN_SHARED(float, buf);
#define TCC_DYN_SHARED(T, name)                               \
  extern __shared__ __align__(16) unsigned char tcc_dyn_smem[]; \
  T* name = reinterpret_cast<T*>(tcc_dyn_smem)
// Launch kernel<<<grid, block, shared_bytes>>> on the context's stream; a launch error is recorded on
// the context (read at the next sync point).
#define TCC_LAUNCH(kernel, grid, block, shared_bytes, exec, ...)                                  \
  do {                                                                                           \
    kernel<<<(grid), (block), (shared_bytes), tcc_cuda_stream(exec)>>>(__VA_ARGS__);              \
    tcc_cuda_check_launch(exec, #kernel);                                                        \
  } while (0)
#endif

// Record a device-side error (first one wins).
__device__ __forceinline__ void tcc_cuda_fail(tcc_cuda_error* err, int32_t code, int64_t value, int64_t lo,
                                              int64_t hi) {
  if (atomicCAS(&err->code, 0, code) == 0) {
    err->value = value;
    err->lo = lo;
    err->hi = hi;
  }
}

extern "C" {
// The execution context's stream (runtime/device_cuda.cu; the emulator's context has none: 0).
cudaStream_t tcc_cuda_stream(tcc_exec* exec);
// The context's device error slot, passed by launchers to kernels that can fail.
tcc_cuda_error* tcc_cuda_error_slot(tcc_exec* exec);
// After a launch: record cudaGetLastError() (a bad configuration, too much shared memory) on the context.
void tcc_cuda_check_launch(tcc_exec* exec, const char* kernel);
}

// Kernel arguments that are small host arrays (shapes, strides) travel by value in the launch.
#define TCC_CUDA_MAX_DIMS 8
struct tcc_dims {
  int64_t v[TCC_CUDA_MAX_DIMS];
};
// Copy n (<= TCC_CUDA_MAX_DIMS) host values into a by-value kernel argument; the rest are zero.
inline tcc_dims tcc_make_dims(const int64_t* host, int n) {
  tcc_dims d;
  for (int i = 0; i < TCC_CUDA_MAX_DIMS; ++i) d.v[i] = (host != nullptr && i < n) ? host[i] : 0;
  return d;
}

// Reductions every kernel family uses (warps of 32 lanes, full masks: call them from converged code).
__device__ __forceinline__ float tcc_warp_sum(float v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
__device__ __forceinline__ float tcc_warp_max(float v) {
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}
// Over the whole block (blockDim.x a multiple of 32, at most 1024); `scratch` is 32 floats of shared
// memory the caller declares (TCC_SHARED(float, scratch, 32)); every thread gets the result.
template <class Scratch>
__device__ __forceinline__ float tcc_block_sum(float v, Scratch& scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = tcc_warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return tcc_warp_sum(v);
}
template <class Scratch>
__device__ __forceinline__ float tcc_block_max(float v, Scratch& scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = tcc_warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return tcc_warp_max(v);
}
