// Token sampling (tcc_model.h: tcc_sample). One implementation shared by the Python runtime (through
// libmodel.so) and the standalone chat binary, so both choose the same tokens for the same seed.
//
// Order of operations (as in HF transformers' logits processors): repetition penalty, temperature,
// top-k, softmax, top-p, draw. Candidates are ordered by (logit descending, id ascending), so ties
// break the same way everywhere; a NaN logit orders after every number (a strict weak order, so the sorts
// are defined on any input) and has probability 0. The softmax is relative to the top candidate, whose
// weight is 1 exactly: a +inf logit takes all the mass (shared by every +inf), and if every candidate is
// -inf they share it equally. All NaN: the lowest id (as greedy). A sampled row draws from the generator
// exactly once whatever its logits, so the stream does not depend on the data (the device selection,
// runtime/select_cuda.cu, draws on the host before its kernel sees the logits).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tcc_model.h"
#include "tcc_select.h"

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

// The candidate order: value descending, NaN last, then id ascending.
struct Before {
  const std::vector<float>& x;
  bool operator()(int64_t a, int64_t b) const {
    const float xa = x[a], xb = x[b];
    const bool na = std::isnan(xa), nb = std::isnan(xb);
    if (na != nb) return nb;
    if (na) return a < b;
    return xa > xb || (xa == xb && a < b);
  }
};

// exp(v - top) in double; 1 for v == top (so infinite tops give 1, not NaN), 0 for NaN.
double weight(float v, float top) {
  if (v == top) return 1.0;
  if (std::isnan(v)) return 0.0;
  return std::exp(static_cast<double>(v) - top);
}

}  // namespace

uint64_t tcc::rng_next(uint64_t* state) { return splitmix64(state); }

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
  const Before before{x};
  int64_t n = vocab;
  const bool cut_k = p->top_k > 0 && p->top_k < vocab;
  const bool nucleus = p->top_p > 0.0f && p->top_p < 1.0f;
  if (cut_k) {
    n = p->top_k;
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), before);
  } else if (nucleus) {
    std::sort(ids.begin(), ids.end(), before);
  }
  // The top candidate: the first after a sort, else the argmax (NaN only when every logit is NaN).
  const float top = cut_k || nucleus ? x[ids[0]] : x[argmax(x)];
  const double draw = uniform(rng);  // drawn whatever the logits: one draw per sampled row
  if (std::isnan(top)) return ids[0];
  // Softmax over the candidates, in double so the cut-offs below do not depend on summation noise.
  thread_local std::vector<double> prob;
  prob.resize(n);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += (prob[i] = weight(x[ids[i]], top));
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
  const double u = draw * total;
  double cum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cum += prob[i];
    if (u < cum) return ids[i];
  }
  return ids[n - 1];
}
