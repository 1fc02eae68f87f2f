// Kernels that test the SIMT emulator itself (tests/cuda/test_simt.py); they also compile with nvcc for
// sm_80 and sm_90 (the same source, the real built-ins).
#include "tcc_cuda.h"
#include "tcc_cuda_ptx.h"

// ---- reductions, shuffles, votes ---------------------------------------------------------------------------
__global__ void block_sum_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t n) {
  TCC_SHARED(float, scratch, 32);
  float v = 0.0f;
  const int64_t stride = (int64_t)blockDim.x * gridDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride) v += x[i];
  v = tcc_block_sum(v, scratch);
  float m = tcc_block_max(v, scratch);  // every thread has the same sum: the max is the sum
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = v;
    out[2 * blockIdx.x + 1] = m;
  }
}
extern "C" void simt_block_sum(const float* x, float* out, int64_t n, int blocks, int threads, tcc_exec* exec) {
  TCC_LAUNCH(block_sum_kernel, blocks, threads, 0, exec, x, out, n);
}

// mode 0: __shfl_sync(src = arg), 1: up, 2: down, 3: xor; with `width`.
__global__ void shfl_kernel(const int* in, int* out, int mode, int arg, int width) {
  const int t = threadIdx.x;
  int v = in[t];
  int r = 0;
  if (mode == 0) r = __shfl_sync(0xffffffffu, v, arg, width);
  if (mode == 1) r = __shfl_up_sync(0xffffffffu, v, arg, width);
  if (mode == 2) r = __shfl_down_sync(0xffffffffu, v, arg, width);
  if (mode == 3) r = __shfl_xor_sync(0xffffffffu, v, arg, width);
  out[t] = r;
}
extern "C" void simt_shfl(const int* in, int* out, int mode, int arg, int width, int threads, tcc_exec* exec) {
  TCC_LAUNCH(shfl_kernel, 1, threads, 0, exec, in, out, mode, arg, width);
}

// 16-byte and 8-byte values through a shuffle; src lane = (lane + 5) % 32. CUDA shuffles scalars only;
// the emulator moves any trivially copyable value of up to 16 bytes (float4 here).
__global__ void shfl_wide_kernel(const float4* in, float4* out, const double* din, double* dout) {
  const int t = threadIdx.x, src = ((t & 31) + 5) & 31;
#if defined(TCC_SIMT)
  out[t] = __shfl_sync(0xffffffffu, in[t], src);
#else
  const float4 v = in[t];
  out[t] = make_float4(__shfl_sync(0xffffffffu, v.x, src), __shfl_sync(0xffffffffu, v.y, src),
                       __shfl_sync(0xffffffffu, v.z, src), __shfl_sync(0xffffffffu, v.w, src));
#endif
  dout[t] = __shfl_sync(0xffffffffu, din[t], src);
}
extern "C" void simt_shfl_wide(const float* in, float* out, const double* din, double* dout, int threads,
                               tcc_exec* exec) {
  TCC_LAUNCH(shfl_wide_kernel, 1, threads, 0, exec, reinterpret_cast<const float4*>(in), reinterpret_cast<float4*>(out),
             din, dout);
}

// out[4t..4t+3] = ballot, any, all over the full warp, then ballot over the low half-warp (lanes < 16 only).
__global__ void vote_kernel(const int* pred, unsigned* out) {
  const int t = threadIdx.x, lane = t & 31;
  const int p = pred[t];
  out[5 * t] = __ballot_sync(0xffffffffu, p);
  out[5 * t + 1] = __any_sync(0xffffffffu, p);
  out[5 * t + 2] = __all_sync(0xffffffffu, p);
  out[5 * t + 3] = lane < 16 ? __ballot_sync(0x0000ffffu, p) : 0u;
  out[5 * t + 4] = __reduce_add_sync(0xffffffffu, (unsigned)p);
}
extern "C" void simt_vote(const int* pred, unsigned* out, int threads, tcc_exec* exec) {
  TCC_LAUNCH(vote_kernel, 1, threads, 0, exec, pred, out);
}

// out[3t..3t+2] = __syncthreads_count(t % 3 == 0), __syncthreads_and(t < n), __syncthreads_or(t == n);
// out2[t] = __activemask() after lanes >= 20 of each warp exit; a __half shuffle (down by 1) in out3.
__global__ void sync_vote_kernel(int n, int* out, unsigned* out2, uint16_t* out3) {
  const int t = threadIdx.x;
  out[3 * t] = __syncthreads_count(t % 3 == 0);
  out[3 * t + 1] = __syncthreads_and(t < n);
  out[3 * t + 2] = __syncthreads_or(t == n);
  const __half h = __float2half_rn(0.5f * t);
  out3[t] = __half_as_ushort(__shfl_down_sync(0xffffffffu, h, 1));
  if ((t & 31) >= 20) return;
  out2[t] = __activemask();
}
extern "C" void simt_sync_vote(int n, int* out, unsigned* out2, uint16_t* out3, int threads, tcc_exec* exec) {
  TCC_LAUNCH(sync_vote_kernel, 1, threads, 0, exec, n, out, out2, out3);
}

// ---- atomics -----------------------------------------------------------------------------------------------------
// counters: [0] atomicAdd count, [1] atomicMax of ids, [2] atomicMin of ids, [3] CAS-loop increments,
// [4] atomicExch last; fsum: float sum of x; hist: 16-bin histogram of x's indices mod 16 via shared atomics.
__global__ void atomics_kernel(const float* x, int n, int* counters, float* fsum, unsigned* hist) {
  TCC_SHARED(unsigned, bins, 16);
  const int t = threadIdx.x;
  const int id = blockIdx.x * blockDim.x + t;
  if (t < 16) bins[t] = 0;
  __syncthreads();
  if (id < n) {
    atomicAdd(&counters[0], 1);
    atomicMax(&counters[1], id);
    atomicMin(&counters[2], id);
    int old = counters[3], assumed;
    do {
      assumed = old;
      old = atomicCAS(&counters[3], assumed, assumed + 2);
    } while (old != assumed);
    atomicExch(&counters[4], 7);
    atomicAdd(fsum, x[id]);
    atomicAdd(&bins[id % 16], 1u);
  }
  __syncthreads();
  if (t < 16) atomicAdd(&hist[t], bins[t]);
}
extern "C" void simt_atomics(const float* x, int n, int* counters, float* fsum, unsigned* hist, tcc_exec* exec) {
  TCC_LAUNCH(atomics_kernel, (n + 127) / 128, 128, 0, exec, x, n, counters, fsum, hist);
}

// ---- shared memory -----------------------------------------------------------------------------------------------
// Transpose a rows x 32 matrix through a padded static 32x33 tile: y[c][r] = x[r][c] (32 rows per block).
__global__ void transpose_kernel(const float* x, float* y, int rows) {
  TCC_SHARED2(float, tile, 32, 33);
  const int c = threadIdx.x, r0 = blockIdx.x * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y)
    if (r0 + r < rows) tile[r][c] = x[(r0 + r) * 32 + c];
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y)
    if (r0 + r < rows) y[c * rows + r0 + r] = tile[r][c];
}
extern "C" void simt_transpose(const float* x, float* y, int rows, tcc_exec* exec) {
  TCC_LAUNCH(transpose_kernel, (rows + 31) / 32, dim3(32, 8), 0, exec, x, y, rows);
}

// Reverse each block-sized chunk of x through dynamic shared memory (blockDim floats + a trailing int flag).
__global__ void reverse_kernel(const float* x, float* y) {
  TCC_DYN_SHARED(float, buf);
  const int t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
  buf[t] = x[base + t];
  __syncthreads();
  y[base + t] = buf[n - 1 - t];
}
extern "C" void simt_reverse(const float* x, float* y, int blocks, int threads, tcc_exec* exec) {
  TCC_LAUNCH(reverse_kernel, blocks, threads, threads * sizeof(float), exec, x, y);
}

// A large dynamic shared buffer, allowed once the kernel's limit is raised (as on the GPU).
__global__ void big_dyn_kernel(float* y, int n) {
  TCC_DYN_SHARED(float, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = (float)i;
  __syncthreads();
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += buf[n - 1 - i] == (float)(n - 1 - i) ? 1.0f : 0.0f;
  atomicAdd(y, s);
}
extern "C" void simt_big_dyn(float* y, int n, int raise, tcc_exec* exec) {
  if (raise) cudaFuncSetAttribute(big_dyn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * (int)sizeof(float));
  TCC_LAUNCH(big_dyn_kernel, 1, 256, n * sizeof(float), exec, y, n);
}

// ---- __half ----------------------------------------------------------------------------------------------------
// h[i] = fp16(x[i]); back[i] = float(hbits[i]) (hbits: every pattern).
__global__ void half_convert_kernel(const float* x, uint16_t* h, const uint16_t* hbits, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  h[i] = __half_as_ushort(__float2half_rn(x[i]));
  back[i] = __half2float(__ushort_as_half(hbits[i]));
}
extern "C" void simt_half_convert(const float* x, uint16_t* h, const uint16_t* hbits, float* back, int n,
                                  tcc_exec* exec) {
  TCC_LAUNCH(half_convert_kernel, (n + 255) / 256, 256, 0, exec, x, h, hbits, back, n);
}

// out[6i..6i+5] = a+b, a-b, a*b, a/b, fma(a,b,c), max(a,b) in fp16; out2 = the __half2 versions of + and *.
__global__ void half_ops_kernel(const uint16_t* a, const uint16_t* b, const uint16_t* c, uint16_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __half x = __ushort_as_half(a[i]), y = __ushort_as_half(b[i]), z = __ushort_as_half(c[i]);
  out[8 * i] = __half_as_ushort(__hadd(x, y));
  out[8 * i + 1] = __half_as_ushort(__hsub(x, y));
  out[8 * i + 2] = __half_as_ushort(__hmul(x, y));
  out[8 * i + 3] = __half_as_ushort(x / y);
  out[8 * i + 4] = __half_as_ushort(__hfma(x, y, z));
  out[8 * i + 5] = __half_as_ushort(__hmax(x, y));
  const __half2 p = __halves2half2(x, z), q = __halves2half2(y, y);
  const __half2 s = __hadd2(p, q), m = __hmul2(p, q);
  out[8 * i + 6] = __half_as_ushort(__low2half(s)) ^ __half_as_ushort(__high2half(m));
  out[8 * i + 7] = __half_as_ushort(__float2half_rn(__low2float(m) + __high2float(s)));
}
extern "C" void simt_half_ops(const uint16_t* a, const uint16_t* b, const uint16_t* c, uint16_t* out, int n,
                              tcc_exec* exec) {
  TCC_LAUNCH(half_ops_kernel, (n + 127) / 128, 128, 0, exec, a, b, c, out, n);
}

// ---- tensor-core helpers -----------------------------------------------------------------------------------------
// One warp: D = A (16x16, row-major fp16) . B (16x8, stored k-major: B[k][n]) + C (16x8 fp32), loading the
// fragments element by element from the PTX ISA's formulas (independent of the fallback's shuffles).
__global__ void mma_kernel(const uint16_t* A, const uint16_t* B, const float* C, float* D) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  uint32_t a[4], b[2];
  float c[4], d[4];
  for (int r = 0; r < 4; ++r) {
    uint32_t reg = 0;
    for (int h = 0; h < 2; ++h) {
      const int i = 2 * r + h;  // a_i
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      reg |= (uint32_t)A[row * 16 + col] << (16 * h);
    }
    a[r] = reg;
  }
  for (int r = 0; r < 2; ++r) {
    uint32_t reg = 0;
    for (int h = 0; h < 2; ++h) {
      const int i = 2 * r + h;  // b_i
      const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      reg |= (uint32_t)B[row * 8 + g] << (16 * h);
    }
    b[r] = reg;
  }
  for (int i = 0; i < 4; ++i) c[i] = C[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)];
  tcc_mma_m16n8k16(d, a, b, c);
  for (int i = 0; i < 4; ++i) D[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)] = d[i];
}
extern "C" void simt_mma(const uint16_t* A, const uint16_t* B, const float* C, float* D, tcc_exec* exec) {
  TCC_LAUNCH(mma_kernel, 1, 32, 0, exec, A, B, C, D);
}

// ldmatrix x4 (and .trans) from four 8x8 b16 matrices in shared memory; out[32*4*trans + 4*lane + i] = r[i].
__global__ void ldmatrix_kernel(const uint16_t* m, uint32_t* out) {
  TCC_SHARED(uint16_t, s, 256);
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) s[i] = m[i];
  __syncwarp();
  uint32_t r[4];
  const uint16_t* row = &s[(lane >> 3) * 64 + (lane & 7) * 8];  // matrix lane/8, row lane%8
  tcc_ldmatrix_x4(r, row);
  for (int i = 0; i < 4; ++i) out[4 * lane + i] = r[i];
  tcc_ldmatrix_x4_trans(r, row);
  for (int i = 0; i < 4; ++i) out[128 + 4 * lane + i] = r[i];
  // cp.async: copy the 512 bytes back through shared memory.
  TCC_SHARED(uint4, staged, 32);
  tcc_cp_async16(&staged[lane], reinterpret_cast<const uint4*>(m) + lane);
  tcc_cp_async_commit();
  tcc_cp_async_wait_all();
  __syncwarp();
  reinterpret_cast<uint4*>(out + 256)[lane] = staged[lane];
  out[384 + lane] = tcc_lop3<0xE8>(out[4 * lane], out[4 * lane + 1], out[4 * lane + 2]);  // majority
}
extern "C" void simt_ldmatrix(const uint16_t* m, uint32_t* out, tcc_exec* exec) {
  TCC_LAUNCH(ldmatrix_kernel, 1, 32, 0, exec, m, out);
}

// ---- device-side errors and races --------------------------------------------------------------------------------
__global__ void gather_kernel(const int64_t* idx, const float* table, float* out, int n, int rows,
                              tcc_cuda_error* err) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t r = idx[i];
  if (r < 0 || r >= rows) {
    tcc_cuda_fail(err, TCC_CUDA_ERR_INDEX, r, 0, rows);
    return;
  }
  out[i] = table[r];
}
extern "C" void simt_gather(const int64_t* idx, const float* table, float* out, int n, int rows, tcc_exec* exec) {
  TCC_LAUNCH(gather_kernel, (n + 63) / 64, 64, 0, exec, idx, table, out, n, rows, tcc_cuda_error_slot(exec));
}

// out[t] = s[t + 1] read without a barrier after the writes: a race the shuffled schedule exposes.
__global__ void race_kernel(float* out, int barrier) {
  TCC_SHARED(float, s, 257);
  const int t = threadIdx.x;
  s[t] = (float)t;
  if (t == 0) s[256] = 256.0f;
  if (barrier) __syncthreads();
  out[t] = s[t + 1];
}
extern "C" void simt_race(float* out, int barrier, tcc_exec* exec) {
  TCC_LAUNCH(race_kernel, 1, 256, 0, exec, out, barrier);
}

// ---- errors the emulator must report ----------------------------------------------------------------------------
// case 0: barrier divergence; 1: a thread exits while others wait; 2: static shared out of bounds;
// 3: dynamic shared out of bounds; 4: 2-D shared row out of bounds; 5: lanes at different shuffles;
// 6: deadlock (a shuffle waiting for lanes at a barrier); 7: a shuffle after a lane exited;
// 8: stack overflow; 9: invalid global memory access; 10: shared out of bounds through a pointer;
// 11: a spin-wait on another thread (the watchdog).
__device__ __noinline__ int recurse(volatile int* p, int depth) {
  volatile char big[4096];
  big[0] = (char)depth;
  big[4095] = (char)*p;
  return depth > 1000000 ? big[0] : recurse(p, depth + 1) + big[4095];
}
__global__ void error_kernel(int what, float* out) {
  TCC_SHARED(float, s, 32);
  TCC_SHARED2(float, grid2, 4, 8);
  TCC_DYN_SHARED(float, dyn);
  const int t = threadIdx.x, lane = t & 31;
  float v = (float)t;
  switch (what) {
    case 0:
      if (t < 16) __syncthreads();
      else __syncthreads();
      break;
    case 1:
      if (t == 5) return;
      __syncthreads();
      break;
    case 2: s[t] = v; break;
    case 3: dyn[t] = v; break;
    case 4: grid2[t / 8][t % 8] = v; break;
    case 5:
      if (lane < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
      else v = __shfl_xor_sync(0xffffffffu, v, 2);
      break;
    case 6:
      if (lane == 0) v = __shfl_sync(0xffffffffu, v, 1);
      else __syncthreads();
      break;
    case 7:
      if (lane == 3) return;
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 8: {
      volatile int zero = 0;
      v += (float)recurse(&zero, 0);
      break;
    }
    case 9: {
      volatile uintptr_t address = 64;  // an unmapped page
      reinterpret_cast<float*>(address)[t] = v;
      break;
    }
    case 10: {
      auto p = s + 16;
      p[t] = v;
      break;
    }
    case 11: {  // thread 0 waits for a flag thread 1 sets: the emulator never runs thread 1 meanwhile
      volatile float* flag = out + 1;
      if (t == 0)
        while (*flag != 42.0f) {
        }
      if (t == 1) *flag = 42.0f;
      break;
    }
  }
  out[t] = v;
}
extern "C" void simt_error(int what, float* out, int threads, int dyn_bytes, tcc_exec* exec) {
  TCC_LAUNCH(error_kernel, 1, threads, dyn_bytes, exec, what, out);
}
