// Token sampling (tcc_model.h: tcc_sample). One implementation shared by the Python runtime (through
// libmodel.so) and the standalone chat binary, so both choose the same tokens for the same seed.
//
// Order of operations (as in HF transformers' logits processors): repetition penalty, temperature,
// top-k, softmax, top-p, draw. Candidates are ordered by (logit descending, id ascending), so ties
// break the same way everywhere.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tcc_model.h"

namespace {

uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) with 53 random bits.
double uniform(uint64_t* state) { return static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53; }

int64_t argmax(const std::vector<float>& x) {
  int64_t best = 0;
  for (int64_t i = 1; i < static_cast<int64_t>(x.size()); ++i)
    if (x[i] > x[best] || (std::isnan(x[best]) && !std::isnan(x[i]))) best = i;
  return best;
}

void apply_repetition_penalty(std::vector<float>& x, float penalty, const int64_t* recent, int64_t n) {
  if (penalty == 1.0f || recent == nullptr) return;
  const int64_t vocab = static_cast<int64_t>(x.size());
  std::vector<char> seen(vocab, 0);  // each id is penalized once however often it occurred
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = recent[i];
    if (t < 0 || t >= vocab || seen[t]) continue;
    seen[t] = 1;
    x[t] = x[t] > 0 ? x[t] / penalty : x[t] * penalty;
  }
}

}  // namespace

extern "C" uint64_t tcc_rng_seed(uint64_t seed) {
  uint64_t s = seed;
  return splitmix64(&s);
}

extern "C" int64_t tcc_sample(const float* logits, int64_t vocab, const tcc_sampling* p, const int64_t* recent,
                              int64_t n_recent, uint64_t* rng) {
  if (vocab <= 0) return -1;
  thread_local std::vector<float> x;
  x.assign(logits, logits + vocab);
  apply_repetition_penalty(x, p->repetition_penalty, recent, n_recent);
  if (!(p->temperature > 0.0f)) return argmax(x);

  for (float& v : x) v /= p->temperature;
  thread_local std::vector<int64_t> ids;
  ids.resize(vocab);
  for (int64_t i = 0; i < vocab; ++i) ids[i] = i;
  auto before = [&](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  int64_t n = vocab;
  const bool nucleus = p->top_p > 0.0f && p->top_p < 1.0f;
  if (p->top_k > 0 && p->top_k < vocab) {
    n = p->top_k;
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), before);
  } else if (nucleus) {
    std::sort(ids.begin(), ids.end(), before);
  }
  // Softmax over the candidates, in double so the cut-offs below do not depend on summation noise.
  float top = x[ids[0]];
  if (!(p->top_k > 0 && p->top_k < vocab) && !nucleus)
    for (int64_t i = 0; i < n; ++i) top = std::max(top, x[ids[i]]);
  thread_local std::vector<double> prob;
  prob.resize(n);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += (prob[i] = std::exp(static_cast<double>(x[ids[i]]) - top));
  if (nucleus) {
    double cum = 0.0;
    int64_t keep = 0;
    while (keep < n) {
      cum += prob[keep++] / total;
      if (cum >= p->top_p) break;
    }
    n = keep;
    total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += prob[i];
  }
  const double u = uniform(rng) * total;
  double cum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cum += prob[i];
    if (u < cum) return ids[i];
  }
  return ids[n - 1];
}
