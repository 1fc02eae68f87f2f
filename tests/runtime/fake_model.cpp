// A fake tcc model (the C API of runtime/tcc_model.h) for testing the standalone chat binary
// (runtime/chat/chat_main.cpp) without a compiled language model. Linked in place of the generated model
// objects by tests/runtime/test_chat_binary.py. Behaviour comes from environment variables:
//   FAKE_VOCAB        logits width (default 1000)
//   FAKE_KV_CAPACITY  KV cache capacity in tokens (default 256; 0: a model without a KV cache)
//   FAKE_REPLY        comma-separated token ids the model "says" after each prefill, in order; then
//   FAKE_EOS          this id (default: none: the reply repeats); without FAKE_REPLY the argmax is a
//                     deterministic function of the last input id and the position
//   FAKE_LOG          append one line per call: "load ...", "run pos=P ids=...", "sample ...", "truncate N"
//   FAKE_DELAY_MS     sleep this long in every run (to test Ctrl-C)
//   FAKE_LOAD_FAIL    make tcc_model_load fail with this message
// The sampler stub is greedy (argmax, lowest id on ties) whatever the parameters; it logs them.
// tcc_model_run_select is tcc_model_run then the stub on the last logits row (so it logs "run" then "sample").
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tcc_model.h"

namespace {

std::string g_error;

int64_t env_int(const char* name, int64_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : dflt;
}

std::vector<int64_t> env_ids(const char* name) {
  std::vector<int64_t> out;
  const char* v = std::getenv(name);
  if (!v) return out;
  std::string s = v;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    if (j > i) out.push_back(std::strtoll(s.substr(i, j - i).c_str(), nullptr, 10));
    i = j + 1;
  }
  return out;
}

}  // namespace

struct tcc_model {
  int64_t vocab = 1000;
  int64_t kv_len = 0;
  int64_t logits_rows = 0;
  int64_t step = 0;      // position in FAKE_REPLY
  int64_t last_seq = 0;  // length of the previous run's input
  int64_t delay_ms = 0;
  int64_t eos = -1;
  std::vector<int64_t> reply;
  std::vector<float> logits;
  FILE* log = nullptr;
};

static void logf(tcc_model* m, const std::string& line) {
  if (!m || !m->log) return;
  std::fprintf(m->log, "%s\n", line.c_str());
  std::fflush(m->log);
}

extern "C" {

tcc_model* tcc_model_load(const char* weights_path, int n_threads) {
  if (const char* fail = std::getenv("FAKE_LOAD_FAIL")) {
    g_error = fail;
    return nullptr;
  }
  FILE* f = std::fopen(weights_path, "rb");
  if (!f) {
    g_error = std::string("cannot open weights file ") + weights_path;
    return nullptr;
  }
  std::fclose(f);
  auto* m = new tcc_model;
  m->vocab = env_int("FAKE_VOCAB", 1000);
  m->delay_ms = env_int("FAKE_DELAY_MS", 0);
  m->eos = env_int("FAKE_EOS", -1);
  m->reply = env_ids("FAKE_REPLY");
  if (const char* path = std::getenv("FAKE_LOG")) m->log = std::fopen(path, "a");
  logf(m, "load threads=" + std::to_string(n_threads));
  return m;
}

void tcc_model_free(tcc_model* model) {
  if (!model) return;
  logf(model, "free");
  if (model->log) std::fclose(model->log);
  delete model;
}

const char* tcc_model_last_error(void) { return g_error.c_str(); }

int tcc_model_num_inputs(void) { return 1; }
int tcc_model_num_outputs(void) { return 1; }
const char* tcc_model_input_name(int i) { return i == 0 ? "input_ids" : nullptr; }
const char* tcc_model_output_name(int i) { return i == 0 ? "logits" : nullptr; }
int64_t tcc_model_arena_bytes(void) { return 0; }
int64_t tcc_model_weights_bytes(void) { return 0; }
// SHA-256 of the empty weights.bin the tests write.
const char* tcc_model_weights_sha256(void) { return "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; }
void tcc_model_set_profiling(tcc_model*, int) {}
int tcc_model_profile_count(void) { return 0; }
const char* tcc_model_profile_op(int) { return ""; }
const char* tcc_model_profile_node(int) { return ""; }
int64_t tcc_model_profile_ns(const tcc_model*, int) { return 0; }
int64_t tcc_model_profile_calls(const tcc_model*, int) { return 0; }

int64_t tcc_model_kv_capacity(void) { return env_int("FAKE_KV_CAPACITY", 256); }
int64_t tcc_model_kv_length(const tcc_model* model) { return model->kv_len; }

int tcc_model_kv_truncate(tcc_model* model, int64_t n) {
  logf(model, "truncate " + std::to_string(n));
  if (n < 0 || n > model->kv_len) {
    g_error = "kv_truncate beyond the cache length";
    return 1;
  }
  model->kv_len = n;
  return 0;
}

void tcc_model_set_logits_rows(tcc_model* model, int64_t n) { model->logits_rows = n; }

int tcc_model_run(tcc_model* model, const tcc_tensor* inputs, int n_inputs, tcc_tensor* outputs, int n_outputs) {
  if (n_inputs != 1 || n_outputs != 1) {
    g_error = "fake model: expected 1 input and 1 output";
    return 1;
  }
  const tcc_tensor& in = inputs[0];
  if (in.dtype != TCC_I64 || in.ndim != 2 || in.shape[0] != 1 || in.shape[1] < 1) {
    g_error = "fake model: input_ids must be int64 [1, seq]";
    return 1;
  }
  const int64_t seq = in.shape[1];
  const auto* ids = static_cast<const int64_t*>(in.data);
  const int64_t capacity = tcc_model_kv_capacity();
  const bool has_kv = capacity > 0;
  std::string line = "run pos=" + std::to_string(has_kv ? model->kv_len : 0) + " ids=";
  for (int64_t i = 0; i < seq; ++i) line += (i ? "," : "") + std::to_string(ids[i]);
  logf(model, line);
  if (has_kv && model->kv_len + seq > capacity) {
    g_error = "fake model: KV cache overflow";
    return 1;
  }
  // Reply position: a run right after a prompt is step 0; each following one-token run (with a cache) or
  // one-token-longer run (without: the whole context again) is the next step.
  bool continues = has_kv ? seq == 1 : seq == model->last_seq + 1;
  model->step = continues ? model->step + 1 : 0;
  model->last_seq = seq;
  if (has_kv) model->kv_len += seq;
  if (model->delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(model->delay_ms));

  int64_t rows = seq;
  if (has_kv && model->logits_rows > 0 && model->logits_rows < seq) rows = model->logits_rows;
  model->logits.assign(static_cast<size_t>(rows * model->vocab), 0.0f);
  const int64_t pos_end = has_kv ? model->kv_len : seq;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t last = ids[seq - rows + r];
    int64_t target;
    const int64_t n = static_cast<int64_t>(model->reply.size());
    if (n > 0) {
      int64_t j = model->step;
      if (j < n) target = model->reply[static_cast<size_t>(j)];
      else if (model->eos >= 0) target = model->eos;
      else target = model->reply[static_cast<size_t>(j % n)];
    } else {
      target = (last * 7 + pos_end + r) % model->vocab;
    }
    if (target < 0 || target >= model->vocab) target = 0;
    model->logits[static_cast<size_t>(r * model->vocab + target)] = 10.0f;
  }
  tcc_tensor& out = outputs[0];
  std::memset(&out, 0, sizeof out);
  out.data = model->logits.data();
  out.ndim = 3;
  out.shape[0] = 1;
  out.shape[1] = rows;
  out.shape[2] = model->vocab;
  out.dtype = TCC_F32;
  return 0;
}

uint64_t tcc_rng_seed(uint64_t seed) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static FILE* sample_log() {
  static FILE* f = nullptr;
  static bool opened = false;
  if (!opened) {
    opened = true;
    if (const char* path = std::getenv("FAKE_LOG")) f = std::fopen(path, "a");
  }
  return f;
}

int64_t tcc_sample(const float* logits, int64_t vocab, const tcc_sampling* params, const int64_t* recent,
                   int64_t n_recent, uint64_t* rng) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  if (FILE* f = sample_log()) {
    std::fprintf(f, "sample temp=%g top_k=%d top_p=%g rep=%g rng=%llu n_recent=%lld recent=", params->temperature,
                 params->top_k, params->top_p, params->repetition_penalty, static_cast<unsigned long long>(*rng),
                 static_cast<long long>(n_recent));
    for (int64_t i = 0; i < n_recent; ++i) std::fprintf(f, "%s%lld", i ? "," : "", static_cast<long long>(recent[i]));
    std::fprintf(f, " -> %lld\n", static_cast<long long>(best));
    std::fflush(f);
  }
  *rng = tcc_rng_seed(*rng);
  return best;
}

int tcc_model_run_select(tcc_model* model, const tcc_tensor* inputs, int n_inputs, const tcc_sampling* params,
                         const int64_t* recent, int64_t n_recent, uint64_t* rng, int64_t* ids_out) {
  tcc_tensor out;
  if (tcc_model_run(model, inputs, n_inputs, &out, 1) != 0) return 1;
  const float* last = static_cast<const float*>(out.data) + (out.shape[1] - 1) * out.shape[2];
  ids_out[0] = tcc_sample(last, out.shape[2], params, recent, n_recent, rng);
  return 0;
}

}  // extern "C"
