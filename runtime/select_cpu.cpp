// Token selection on a CPU device (tcc_device.h: tcc_device_select): device memory is host memory, so each
// row is tcc_sample's, in row order (the generator advances as a loop of tcc_sample calls would).
// Part of the tcc runtime library, built only for TCC_DEVICE=cpu (CMakeLists.txt); a GPU device has its own
// (runtime/select_cuda.cu).
#include "tcc_device.h"
#include "tcc_model.h"
#include "tcc_select.h"

extern "C" int tcc_device_select(tcc_exec*, const float* logits, int64_t rows, int64_t row_stride, int64_t vocab,
                                 const tcc_sampling* params, const int64_t* recent, int64_t n_recent, uint64_t* rng,
                                 int64_t* ids_out, const char** why) {
  if (const char* bad = tcc::select_check(logits, rows, row_stride, vocab, params, recent, n_recent, rng, ids_out)) {
    if (why) *why = bad;
    return 1;
  }
  for (int64_t r = 0; r < rows; ++r)
    ids_out[r] = tcc_sample(logits + r * row_stride, vocab, params, recent, n_recent, rng);
  return 0;
}

extern "C" void tcc_device_select_release(tcc_exec*) {}
