// The C API of a compiled tcc model (libmodel.so). Part of the tcc runtime; every generated model
// program implements these functions, and the standalone binaries and Python (ctypes) call them.
//
// Threads. A model may be shared by several threads: every function taking a tcc_model* locks that
// model's mutex, so calls on one model run one at a time (its arena, KV cache and output buffers exist
// once), while different models, even of the same library, run in parallel. For throughput from many
// threads load one model per thread (the weights mapping is shared by the page cache). Two rules:
//  - Outputs point into the model's buffers, which the next run overwrites: a thread sharing a model
//    must read or copy its outputs before another thread runs it. Hold tcc_model_lock(model) across
//    tcc_model_run and the copy (the lock is recursive; the functions below may be called under it).
//  - tcc_model_free must not race with any other call on the same model.
// tcc_model_last_error() is per thread: it describes the calling thread's last failure.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TCC_MAX_RANK 8

// Element type codes (same order as tcc.ir.dtypes.DType in tcc.runtime.session).
enum tcc_dtype { TCC_F32 = 0, TCC_F16 = 1, TCC_F64 = 2, TCC_I64 = 3, TCC_I32 = 4, TCC_I8 = 5, TCC_U8 = 6, TCC_BOOL = 7 };

typedef struct tcc_tensor {
  void* data;
  int64_t shape[TCC_MAX_RANK];
  int32_t ndim;
  int32_t dtype;  // enum tcc_dtype
} tcc_tensor;

typedef struct tcc_model tcc_model;

// Load a model: mmap its weights file and allocate its arena once. n_threads <= 0: all cores.
// Returns NULL on failure; tcc_model_last_error() says why.
tcc_model* tcc_model_load(const char* weights_path, int n_threads);
void tcc_model_free(tcc_model* model);
// The calling thread's last error (valid until that thread's next failing call).
const char* tcc_model_last_error(void);

// Run once. `inputs` in the manifest's order; `outputs` (n_outputs of them) are filled in with
// pointers into buffers owned by the model, valid until the next run (by any thread) or free.
// Returns 0 on success.
int tcc_model_run(tcc_model* model, const tcc_tensor* inputs, int n_inputs, tcc_tensor* outputs, int n_outputs);
// The checks tcc_model_run makes before reading input data (count, dtypes, ranks, shapes against the
// compiled bounds, room in the KV cache), without running: `data` pointers are not read. Returns 0 if
// a run would accept these inputs; else non-zero with the same message tcc_model_run would give.
int tcc_model_check_inputs(const tcc_model* model, const tcc_tensor* inputs, int n_inputs);
// Hold the model's (recursive) mutex across several calls, e.g. a run and the copy of its outputs.
void tcc_model_lock(tcc_model* model);
void tcc_model_unlock(tcc_model* model);

// Metadata (also in manifest.json).
int tcc_model_num_inputs(void);
int tcc_model_num_outputs(void);
const char* tcc_model_input_name(int i);
const char* tcc_model_output_name(int i);
int64_t tcc_model_arena_bytes(void);
int64_t tcc_model_weights_bytes(void);
// SHA-256 (64 hex digits) of the weights file the program was compiled with.
const char* tcc_model_weights_sha256(void);

// Per-node timing. Enabling it resets the counters; every run then adds to them. Entries are the nodes
// that run code, in program order (views run none).
void tcc_model_set_profiling(tcc_model* model, int on);
int tcc_model_profile_count(void);
const char* tcc_model_profile_op(int i);
const char* tcc_model_profile_node(int i);
int64_t tcc_model_profile_ns(const tcc_model* model, int i);
int64_t tcc_model_profile_calls(const tcc_model* model, int i);

// Language-model programs (manifest "llm" section; see docs/llm.md). The program owns a KV cache,
// allocated once at load for kv_capacity tokens. Each run takes only `input_ids` [batch, seq] (int64),
// appends seq tokens to the cache at positions length..length+seq-1, and returns logits
// [batch, n, vocab] for the last n = min(logits_rows, seq) positions (logits_rows 0 = all, the default;
// generation sets 1).
// Models without a KV cache report capacity 0 and ignore these calls.
int64_t tcc_model_kv_capacity(void);
int64_t tcc_model_kv_length(const tcc_model* model);
// Forget cached tokens n.. (0 empties the cache). Returns non-zero (see last_error) if n > length.
int tcc_model_kv_truncate(tcc_model* model, int64_t n);
void tcc_model_set_logits_rows(tcc_model* model, int64_t n);
// Capture decode steps as a device graph and replay them (CUDA; a no-op on targets without graphs).
// On by default; the environment variable TCC_CUDA_GRAPH=0 turns it off at load, and this call at any time.
void tcc_model_set_graphs(tcc_model* model, int on);
// How many runs were replays of a captured graph since load (0 where graphs are off or unsupported).
int64_t tcc_model_graph_replays(const tcc_model* model);

// Several independent sequences in one program (continuous batching; docs/serve.md). Every KV-cache state
// holds max_batch rows (the compiled batch bound, --max-dim batch=N); each cache row ("slot") is one sequence
// with its own length. tcc_model_run above treats the rows as one batch at row 0's length (kv_length and
// kv_truncate are row 0's; truncating cuts every row).
// Slots a program can run rows on: max_batch, or 0 (no KV cache, or positions used outside attention).
int64_t tcc_model_kv_slots(void);
// One slot's length (-1 for a slot that does not exist) / forget its tokens n.. (non-zero on error).
int64_t tcc_model_kv_length_slot(const tcc_model* model, int64_t slot);
int tcc_model_kv_truncate_slot(tcc_model* model, int64_t slot, int64_t n);
// Run `ids` [rows, seq] (row-major int64): input row r continues the sequence of slot slots[r] (distinct
// slots) at positions kv_length_slot(slots[r]).., attending to that slot's cache only; then each listed
// slot's length grows by seq, and the others are untouched. A decode step of several clients is one call
// with seq 1 and one row per client: the weights are read once for all rows. `outputs` as tcc_model_run
// (logits [rows, n, vocab], n = min(logits_rows, seq)). Returns 0 on success.
int tcc_model_run_rows(tcc_model* model, const int64_t* ids, int64_t rows, int64_t seq, const int64_t* slots,
                       tcc_tensor* outputs, int n_outputs);

// Token sampling shared by the Python runtime and the standalone chat binary, so both pick the same
// tokens for the same logits and seed. temperature <= 0 is greedy (argmax, lowest id on ties).
typedef struct tcc_sampling {
  float temperature;         // 1.0: the model's distribution
  int32_t top_k;             // <= 0: no top-k cut
  float top_p;               // >= 1.0: no nucleus cut
  float repetition_penalty;  // 1.0: none; applied to tokens in `recent` (CTRL-style: divide positive logits)
} tcc_sampling;
// Seed a generator state (splitmix64 of seed).
uint64_t tcc_rng_seed(uint64_t seed);
// Pick a token from `logits` [vocab]. `recent` (n_recent ids) feeds the repetition penalty. Advances *rng.
int64_t tcc_sample(const float* logits, int64_t vocab, const tcc_sampling* params, const int64_t* recent,
                   int64_t n_recent, uint64_t* rng);

// Run (as tcc_model_run, whose inputs it takes) and pick the next token of every batch row from that row's
// last logits row with tcc_sample's rules (same order of operations, ties and RNG stream: one splitmix64
// draw per sampled row, in row order), copying back only the ids (ids_out[batch]). On a GPU the logits stay
// on the device. Returns 0 on success.
int tcc_model_run_select(tcc_model* model, const tcc_tensor* inputs, int n_inputs, const tcc_sampling* params,
                         const int64_t* recent, int64_t n_recent, uint64_t* rng, int64_t* ids_out);

#ifdef __cplusplus
}
#endif
