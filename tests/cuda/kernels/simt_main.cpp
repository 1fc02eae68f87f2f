// A standalone check of the emulator's context switch on another build (aarch64 under qemu, the ucontext
// fallback): runs a few of simt_tests.cu's launchers and prints one line per check ("ok <name>" or
// "FAIL <name>: <why>"); tests/cuda/test_simt.py compares the output.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tcc_device.h"

extern "C" {
void simt_block_sum(const float* x, float* out, int64_t n, int blocks, int threads, tcc_exec* exec);
void simt_shfl(const int* in, int* out, int mode, int arg, int width, int threads, tcc_exec* exec);
void simt_mma(const uint16_t* A, const uint16_t* B, const float* C, float* D, tcc_exec* exec);
void simt_error(int what, float* out, int threads, int dyn_bytes, tcc_exec* exec);
}

static int failures = 0;

static void check(bool ok, const char* name, const char* why) {
  printf(ok ? "ok %s\n" : "FAIL %s: %s\n", name, why);
  failures += !ok;
}

int main() {
  tcc_exec* ex = tcc_exec_create(1);
  static float x[5000];
  for (int i = 0; i < 5000; ++i) x[i] = (float)(i % 13);
  float out[4] = {0, 0, 0, 0};
  simt_block_sum(x, out, 5000, 1, 1024, ex);
  double ref = 0;
  for (int i = 0; i < 5000; ++i) ref += x[i];
  check(tcc_exec_sync(ex) == 0 && out[0] == (float)ref && out[1] == out[0], "block_sum", tcc_exec_error(ex));

  int in[64], sh[64];
  for (int i = 0; i < 64; ++i) in[i] = 3 * i + 1;
  simt_shfl(in, sh, 3, 5, 16, 64, ex);  // xor 5 within 16-lane segments
  bool ok = tcc_exec_sync(ex) == 0;
  for (int i = 0; i < 64; ++i) ok = ok && sh[i] == in[i ^ 5];
  check(ok, "shfl_xor", tcc_exec_error(ex));

  // mma: A = I (fp16 1.0 = 0x3c00 on the diagonal), B[k][n] = k + n (small integers, exact), C = 0.5.
  uint16_t A[256] = {0}, B[128];
  float C[128], D[128];
  for (int i = 0; i < 16; ++i) A[i * 16 + i] = 0x3c00;
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) {
      const int v = k + n;  // fp16 of small integers: exponent + mantissa by hand
      uint16_t h = 0;
      if (v) {
        int e = 0;
        while ((v >> e) > 1) ++e;
        h = (uint16_t)(((e + 15) << 10) | (((v << 10) >> e) & 0x3ff));
      }
      B[k * 8 + n] = h;
    }
  for (int i = 0; i < 128; ++i) C[i] = 0.5f;
  simt_mma(A, B, C, D, ex);
  ok = tcc_exec_sync(ex) == 0;
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) ok = ok && D[r * 8 + n] == (float)(r + n) + 0.5f;
  check(ok, "mma", tcc_exec_error(ex));

  static float eout[64];
  simt_error(0, eout, 64, 0, ex);
  check(tcc_exec_sync(ex) != 0 && strstr(tcc_exec_error(ex), "barrier divergence") != nullptr, "divergence",
        tcc_exec_error(ex));
  tcc_exec_clear_error(ex);
  simt_error(2, eout, 64, 0, ex);
  check(tcc_exec_sync(ex) != 0 && strstr(tcc_exec_error(ex), "s[32] outside [0, 32)") != nullptr, "shared_oob",
        tcc_exec_error(ex));
  tcc_exec_clear_error(ex);
  simt_error(8, eout, 32, 0, ex);
  check(tcc_exec_sync(ex) != 0 && strstr(tcc_exec_error(ex), "stack overflow") != nullptr, "stack_overflow",
        tcc_exec_error(ex));
  tcc_exec_clear_error(ex);
  simt_block_sum(x, out, 5000, 1, 1024, ex);
  check(tcc_exec_sync(ex) == 0 && out[0] == (float)ref, "after_errors", tcc_exec_error(ex));
  tcc_exec_destroy(ex);
  printf("%d failed\n", failures);
  return failures != 0;
}
