// Token selection internals shared by runtime/sampling.cpp (tcc_sample), the device selection
// (runtime/select_cpu.cpp, runtime/select_cuda.cu, runtime/metal/select_metal.cpp) and the model program
// (tcc_model_run_select).
// Part of the tcc runtime library; not installed API.
#pragma once
#include <stdint.h>
#include <stdio.h>

#include <algorithm>
#include <vector>

#include "tcc_model.h"

namespace tcc {
// The next splitmix64 output of the generator state tcc_sample draws from (advances *state by one draw).
uint64_t rng_next(uint64_t* state);

// What is wrong with tcc_device_select's arguments, as one line; nullptr when nothing is.
inline const char* select_check(const float* logits, int64_t rows, int64_t row_stride, int64_t vocab,
                                const tcc_sampling* params, const int64_t* recent, int64_t n_recent,
                                const uint64_t* rng, const int64_t* ids_out) {
  thread_local char buf[160];
  if (params == nullptr) return "token selection: no sampling parameters given";
  if (rng == nullptr) return "token selection: no generator state given";
  if (ids_out == nullptr) return "token selection: no buffer for the ids given";
  if (n_recent > 0 && recent == nullptr) return "token selection: n_recent > 0 but no recent ids given";
  if (logits == nullptr) return "token selection: no logits given";
  if (vocab < 1 || vocab > INT32_MAX) {
    snprintf(buf, sizeof buf, "token selection: a vocabulary of %lld tokens (expected 1..%d)", (long long)vocab,
             INT32_MAX);
    return buf;
  }
  if (rows < 1 || rows > INT32_MAX || (rows > 1 && row_stride < vocab)) {
    snprintf(buf, sizeof buf, "token selection: %lld rows %lld floats apart (vocabulary %lld)", (long long)rows,
             (long long)row_stride, (long long)vocab);
    return buf;
  }
  return nullptr;
}

// The distinct recent ids within [0, vocab), in first-occurrence order: what a device selection kernel
// penalizes (each id once, as tcc_sample does). A stamp per call instead of clearing the table.
class RecentIds {
 public:
  void reset(int64_t vocab) {
    seen_.assign(static_cast<size_t>(vocab), 0u);
    stamp_ = 0;
  }
  // Writes them to out (room for n_recent); returns their count.
  int collect(const int64_t* recent, int64_t n_recent, int64_t vocab, int32_t* out) {
    if (++stamp_ == 0) {  // wrapped: old stamps could match again
      std::fill(seen_.begin(), seen_.end(), 0u);
      stamp_ = 1;
    }
    int k = 0;
    for (int64_t j = 0; j < n_recent; ++j) {
      const int64_t id = recent[j];
      if (id < 0 || id >= vocab || seen_[static_cast<size_t>(id)] == stamp_) continue;
      seen_[static_cast<size_t>(id)] = stamp_;
      out[k++] = static_cast<int32_t>(id);
    }
    return k;
  }

 private:
  std::vector<uint32_t> seen_;
  uint32_t stamp_ = 0;
};

// The host's part of a device selection, in tcc_sample's order, into `stage` (what the kernel reads): one
// splitmix64 draw per sampled row (u64 [rows]; 0 for greedy, which takes none), then the distinct recent ids to
// penalize (i32, after the draws). Returns how many ids.
inline int select_stage(const tcc_sampling* p, int64_t rows, uint64_t* rng, const int64_t* recent, int64_t n_recent,
                        int64_t vocab, RecentIds* ids, char* stage) {
  const bool greedy = !(p->temperature > 0.0f);
  uint64_t* draws = reinterpret_cast<uint64_t*>(stage);
  for (int64_t r = 0; r < rows; ++r) draws[r] = greedy ? 0 : rng_next(rng);
  const bool penalize = p->repetition_penalty != 1.0f && recent != nullptr;
  return penalize ? ids->collect(recent, n_recent, vocab, reinterpret_cast<int32_t*>(stage + rows * 8)) : 0;
}
}  // namespace tcc
