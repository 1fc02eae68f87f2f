// tcc execution context and device interface: what the model program and every kernel run on.
// Part of the tcc runtime library.
//
// A kernel takes one execution context (`tcc_exec*`) as its last argument. On the CPU backends it is the
// model's thread pool (tcc_parallel_for splits work over it) plus the error state its kernels record into;
// a CUDA backend's context holds a stream, a Metal backend's a command queue. Kernels record errors
// (tcc_raise) and the program reads them at sync points (tcc_exec_sync): on the CPU a kernel has finished
// when it returns, so every point after a kernel is a sync point; on a GPU only the explicit ones are.
//
// Memory: the program allocates its device arena and its states (the KV cache) through tcc_device_alloc,
// and moves data between host and device with tcc_device_copy_in / copy_out. On the CPU device memory is
// host memory (tcc_device_host_visible() is 1): kernels read the inputs and write the outputs in place, and
// the copies are memcpy.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tcc_exec tcc_exec;
// The name kernels used before the execution context: same type (tools/rename_exec_param.py renames uses).
typedef struct tcc_exec tcc_pool;

// One context per loaded model. n_threads <= 0: all hardware threads (CPU); at most 1024.
tcc_exec* tcc_exec_create(int n_threads);
void tcc_exec_destroy(tcc_exec* exec);
int tcc_exec_threads(const tcc_exec* exec);  // 1 for a null context

// Wait until every kernel issued on `exec` has finished; returns non-zero when a kernel recorded an
// error since the last clear (tcc_exec_error then says which).
int tcc_exec_sync(tcc_exec* exec);
const char* tcc_exec_error(const tcc_exec* exec);  // "" when none
void tcc_exec_clear_error(tcc_exec* exec);

// Device memory: zero-filled, aligned to at least TCC_DEVICE_ALIGN bytes; NULL (and an error message in
// *why when given) on failure. Freed with the same size.
#define TCC_DEVICE_ALIGN 64
void* tcc_device_alloc(tcc_exec* exec, int64_t bytes, const char** why);
void tcc_device_free(tcc_exec* exec, void* ptr, int64_t bytes);
void tcc_device_copy_in(tcc_exec* exec, void* device_dst, const void* host_src, int64_t bytes);
void tcc_device_copy_out(tcc_exec* exec, void* host_dst, const void* device_src, int64_t bytes);
// Whether device memory is host memory (CPU: 1), so host code may read and write it directly.
int tcc_device_host_visible(void);

// Graphs: the launches of a run recorded once and replayed (a CUDA graph; the SIMT emulator records them as
// closures holding copies of their arguments). Between capture_begin and capture_end nothing runs: each
// launch is recorded with the argument values it had then, so whatever changes between replays must be read
// by the kernels from device memory (the KV cache's length: tcc_exec_set_kv_length). While capturing, the
// program issues kernel launches only: no allocation, no copy, and tcc_exec_sync returns the errors
// recorded so far without waiting (a captured kernel's error surfaces at the sync after the replay).
typedef struct tcc_graph tcc_graph;
// Start recording the launches issued on `exec`. Returns 0, or non-zero with the reason in *why (the CPU
// device: "not supported"); then nothing is recorded and the caller runs its launches directly.
int tcc_exec_capture_begin(tcc_exec* exec, const char** why);
// Stop recording. Returns the executable graph, or NULL (the reason in *why) when the capture failed: then
// nothing ran and nothing is recorded, so the caller issues the launches again directly.
tcc_graph* tcc_exec_capture_end(tcc_exec* exec, const char** why);
// Issue the graph's launches on `exec` in order (asynchronous like a launch: errors at the next sync point).
void tcc_graph_launch(tcc_exec* exec, tcc_graph* graph);
// Free a graph (after the launches issued from it have finished: it waits for `exec`).
void tcc_graph_destroy(tcc_exec* exec, tcc_graph* graph);
// The device copy of the KV cache's length (one int64) that the attention kernels read instead of their
// `past` argument while it is set, so that a replayed step sees the current length; NULL (the default):
// they use the argument.
void tcc_exec_set_kv_length(tcc_exec* exec, const int64_t* device_length);
const int64_t* tcc_exec_kv_length(const tcc_exec* exec);

// Token selection (tcc_model_run_select): pick the next token of each of `rows` logits rows (row r starts at
// logits + r * row_stride, `vocab` floats, in device memory) with tcc_sample's rules and RNG stream (one
// draw per sampled row, in row order, advanced on the host), writing only the ids to host memory
// (ids_out[rows]). CPU devices: tcc_sample per row (runtime/select_cpu.cpp); CUDA and the SIMT emulator:
// kernels (runtime/select_cuda.cu); Metal (and a Metal artifact's emulation build): an MSL kernel
// (runtime/metal/select.metal, select_metal.cpp). On a GPU the logits never leave the device. Returns 0 on success, else
// non-zero and, when `why` is given, *why says why in one line (bad arguments, or the context's error:
// valid until the next call on the context).
struct tcc_sampling;
int tcc_device_select(tcc_exec* exec, const float* logits, int64_t rows, int64_t row_stride, int64_t vocab,
                      const struct tcc_sampling* params, const int64_t* recent, int64_t n_recent, uint64_t* rng,
                      int64_t* ids_out, const char** why);
// Free the work buffers tcc_device_select allocated for `exec` (at its first use); call before
// tcc_exec_destroy. A no-op when there are none.
void tcc_device_select_release(tcc_exec* exec);

#ifdef __cplusplus
}
#endif
