// tcc CUDA inline-PTX helpers, each with a portable fallback. Part of the tcc runtime library.
//
// The only place tcc's CUDA kernels use inline PTX (runtime/tcc_cuda.h). On sm_80+ (nvcc's device pass with
// __CUDA_ARCH__ >= 800) each helper is the PTX instruction; elsewhere (the SIMT emulator, older targets) it is a
// warp-collective C++ fallback built on __shfl_sync that computes the same result with the same register
// layout, so the fallback is the executable statement of the layout (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"; "ldmatrix").
#pragma once
#include "tcc_cuda.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define TCC_CUDA_PTX_SM80 1
#endif

// The 16-bit halves of a .f16x2 register: the element with the lower index is in the low half.
__device__ __forceinline__ float tcc_f16x2_lo(uint32_t r) {
  return __half2float(__ushort_as_half((unsigned short)(r & 0xffffu)));
}
__device__ __forceinline__ float tcc_f16x2_hi(uint32_t r) {
  return __half2float(__ushort_as_half((unsigned short)(r >> 16)));
}

// D = A·B + C for one warp: A 16x16 fp16 (row-major fragment), B 16x8 fp16 (column fragment), C and D
// 16x8 fp32; mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32. Called by all 32 lanes of a warp, converged.
// With g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group):
//   a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]     b[1] = B[2t+8, 2t+9][g]
//   c[0], c[1] = C[g][2t, 2t+1]                            c[2], c[3] = C[g+8][2t, 2t+1]   (D likewise)
__device__ __forceinline__ void tcc_mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
#if defined(TCC_CUDA_PTX_SM80)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float row0[16], row8[16], col[2][16];
#if defined(TCC_SIMT)
  if (tcc_simt::fast_fragments()) {
    // The emulator's fast path: one exchange of every lane's registers, read in the layout the shuffles
    // below spell out (a 16-shuffle warp collective per mma is most of an emulated GEMM's time).
    const uint32_t regs[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const void* const* lanes = tcc_simt::warp_gather(regs, __FILE__, __LINE__);
    for (int s = 0; s < 4; ++s) {
      const uint32_t* r = static_cast<const uint32_t*>(lanes[4 * g + s]);
      row0[2 * s] = tcc_f16x2_lo(r[0]);
      row0[2 * s + 1] = tcc_f16x2_hi(r[0]);
      row8[2 * s] = tcc_f16x2_lo(r[1]);
      row8[2 * s + 1] = tcc_f16x2_hi(r[1]);
      row0[2 * s + 8] = tcc_f16x2_lo(r[2]);
      row0[2 * s + 9] = tcc_f16x2_hi(r[2]);
      row8[2 * s + 8] = tcc_f16x2_lo(r[3]);
      row8[2 * s + 9] = tcc_f16x2_hi(r[3]);
      for (int j = 0; j < 2; ++j) {
        const uint32_t* q = static_cast<const uint32_t*>(lanes[4 * (2 * t + j) + s]);
        col[j][2 * s] = tcc_f16x2_lo(q[4]);
        col[j][2 * s + 1] = tcc_f16x2_hi(q[4]);
        col[j][2 * s + 8] = tcc_f16x2_lo(q[5]);
        col[j][2 * s + 9] = tcc_f16x2_hi(q[5]);
      }
    }
    __syncwarp();  // every lane has read the others' registers before any lane's `regs` goes away
  } else
#endif
  {
    // Rows g and g+8 of A: lane 4g+s holds A[g][2s, 2s+1] (a[0]), A[g+8][2s, 2s+1] (a[1]), A[g][2s+8, 2s+9]
    // (a[2]), A[g+8][2s+8, 2s+9] (a[3]).
    // (CUDA shuffles scalars only: the registers travel in pairs as 64-bit values.)
    const unsigned long long a01 = a[0] | ((unsigned long long)a[1] << 32);
    const unsigned long long a23 = a[2] | ((unsigned long long)a[3] << 32);
    for (int s = 0; s < 4; ++s) {
      const unsigned long long v01 = __shfl_sync(0xffffffffu, a01, 4 * g + s);
      const unsigned long long v23 = __shfl_sync(0xffffffffu, a23, 4 * g + s);
      const uint32_t r0 = (uint32_t)v01, r1 = (uint32_t)(v01 >> 32), r2 = (uint32_t)v23, r3 = (uint32_t)(v23 >> 32);
      row0[2 * s] = tcc_f16x2_lo(r0);
      row0[2 * s + 1] = tcc_f16x2_hi(r0);
      row8[2 * s] = tcc_f16x2_lo(r1);
      row8[2 * s + 1] = tcc_f16x2_hi(r1);
      row0[2 * s + 8] = tcc_f16x2_lo(r2);
      row0[2 * s + 9] = tcc_f16x2_hi(r2);
      row8[2 * s + 8] = tcc_f16x2_lo(r3);
      row8[2 * s + 9] = tcc_f16x2_hi(r3);
    }
    // Columns 2t and 2t+1 of B: lane 4n+s holds B[2s, 2s+1][n] (b[0]) and B[2s+8, 2s+9][n] (b[1]).
    const unsigned long long b01 = b[0] | ((unsigned long long)b[1] << 32);
    for (int j = 0; j < 2; ++j) {
      for (int s = 0; s < 4; ++s) {
        const unsigned long long v = __shfl_sync(0xffffffffu, b01, 4 * (2 * t + j) + s);
        const uint32_t r0 = (uint32_t)v, r1 = (uint32_t)(v >> 32);
        col[j][2 * s] = tcc_f16x2_lo(r0);
        col[j][2 * s + 1] = tcc_f16x2_hi(r0);
        col[j][2 * s + 8] = tcc_f16x2_lo(r1);
        col[j][2 * s + 9] = tcc_f16x2_hi(r1);
      }
    }
  }
  // fp16 products are exact in fp32; the tensor core's accumulation order and internal precision are not
  // specified, so callers compare with a tolerance, not bit for bit.
  for (int i = 0; i < 4; ++i) {
    const float* arow = i < 2 ? row0 : row8;
    const float* bcol = col[i & 1];
    float acc = 0.0f;
    for (int k = 0; k < 16; ++k) acc += arow[k] * bcol[k];  // the product of two fp16 values is exact in fp32
    d[i] = acc + c[i];
  }
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8x8 b16 matrices from shared memory. Lane l gives the
// address of row l % 8 of matrix l / 8 (16 bytes each); r[i] of lane l is matrix i, row l / 4, elements
// 2 (l % 4) and 2 (l % 4) + 1 (low half first). `trans` variant: r[i] is matrix i transposed.
__device__ __forceinline__ void tcc_ldmatrix_x4(uint32_t r[4], const void* smem_row) {
#if defined(TCC_CUDA_PTX_SM80)
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  const int lane = threadIdx.x & 31;
  const unsigned long long mine = reinterpret_cast<unsigned long long>(smem_row);
  for (int i = 0; i < 4; ++i) {
    const unsigned long long row = __shfl_sync(0xffffffffu, mine, 8 * i + (lane >> 2));
    uint32_t v;
    memcpy(&v, reinterpret_cast<const unsigned char*>(row) + 4 * (lane & 3), sizeof v);
    r[i] = v;
  }
#endif
}
__device__ __forceinline__ void tcc_ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
#if defined(TCC_CUDA_PTX_SM80)
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  // Transposed: element (row l / 4, column 2 (l % 4) + j) of the result is element (2 (l % 4) + j, l / 4) of
  // the stored matrix, i.e. from the row given by lane 8i + 2 (l % 4) + j.
  const int lane = threadIdx.x & 31;
  const unsigned long long mine = reinterpret_cast<unsigned long long>(smem_row);
  for (int i = 0; i < 4; ++i) {
    uint32_t v = 0;
    for (int j = 0; j < 2; ++j) {
      const unsigned long long row = __shfl_sync(0xffffffffu, mine, 8 * i + 2 * (lane & 3) + j);
      uint16_t e;
      memcpy(&e, reinterpret_cast<const unsigned char*>(row) + 2 * (lane >> 2), sizeof e);
      v |= static_cast<uint32_t>(e) << (16 * j);
    }
    r[i] = v;
  }
#endif
}

// cp.async.cg.shared.global: copy 16 bytes global -> shared asynchronously (both 16-byte aligned); the copies
// of a thread are complete after tcc_cp_async_commit(); tcc_cp_async_wait_all(); (then __syncthreads() for
// other threads to see them). The fallback copies at once.
__device__ __forceinline__ void tcc_cp_async16(void* smem, const void* gmem) {
#if defined(TCC_CUDA_PTX_SM80)
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(gmem));
#else
  memcpy(smem, gmem, 16);
#endif
}
__device__ __forceinline__ void tcc_cp_async_commit() {
#if defined(TCC_CUDA_PTX_SM80)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void tcc_cp_async_wait_all() {
#if defined(TCC_CUDA_PTX_SM80)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// lop3.b32: any bitwise function of three operands; `lut` is the truth table (0xF0 & 0xCC & 0xAA = a & b & c).
template <int lut>
__device__ __forceinline__ uint32_t tcc_lop3(uint32_t a, uint32_t b, uint32_t c) {
#if defined(TCC_CUDA_PTX_SM80)
  uint32_t r;
  asm volatile("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(r) : "r"(a), "r"(b), "r"(c), "n"(lut));
  return r;
#else
  uint32_t r = 0;
  for (int i = 0; i < 8; ++i) {
    if (!((lut >> i) & 1)) continue;
    const uint32_t x = (i & 4) ? a : ~a, y = (i & 2) ? b : ~b, z = (i & 1) ? c : ~c;
    r |= x & y & z;
  }
  return r;
#endif
}
