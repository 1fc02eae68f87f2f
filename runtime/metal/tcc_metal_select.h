// Token selection on a Metal device: what runtime/metal/select_metal.cpp (tcc_device_select) passes to the
// launcher of runtime/metal/select.metal. Part of the tcc runtime library (docs/metal.md, "Token selection");
// plain C++, also compiled as Objective-C++ on macOS.
#pragma once
#include <stdint.h>

#include "tcc_metal_host.h"

#define TCC_METAL_SELECT_THREADS 1024  // one threadgroup per row
#define TCC_METAL_SELECT_DIGITS 16     // the radix sort's digits (4 bits): counts per thread

// The kernel's constant parameters (setBytes), laid out as select.metal's tcc_select_params.
struct tcc_metal_select_params {
  int64_t row_stride;
  int32_t vocab, top_k, n_recent, pad;
  float temperature, top_p, penalty, pad2;
};

// One dispatch: device pointers (work buffers of rows * vocab elements; counts rows * DIGITS * THREADS).
struct tcc_metal_select_args {
  const float* logits;
  tcc_metal_select_params params;
  const uint64_t* draws;
  const int32_t* recent;
  float* x;
  uint32_t* keys[2];
  int32_t* ids[2];
  int32_t* counts;
  float* w;
  int64_t* ids_out;
  int64_t rows;
};

// Encode (macOS) or run (the emulator) the selection kernel over a->rows rows.
void tcc_metal_select_launch(tcc_exec* exec, const tcc_metal_select_args* a);
