// tcc kernel support: what every generated kernel may use. Part of the tcc runtime library.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cmath>

#include "tcc_device.h"

extern "C" {
// fn(ctx, begin, end, thread_index) runs on chunks of [0, n); the calling thread takes part.
typedef void (*tcc_task_fn)(void* ctx, int64_t begin, int64_t end, int thread_index);

// The CPU execution context is a persistent pool of worker threads, created once per loaded model (no
// per-call thread creation). The tcc_pool_* names are the older spellings of tcc_exec_create/destroy/threads.
tcc_exec* tcc_pool_create(int n_threads);  // n_threads <= 0: all hardware threads
void tcc_pool_destroy(tcc_exec* exec);
int tcc_pool_threads(const tcc_exec* exec);  // 1 for a null context
// Split [0, n) into chunks of at least `grain` items over the context's threads and wait for all.
// A null context or a small n runs fn(ctx, 0, n, 0) on the calling thread.
void tcc_parallel_for(tcc_exec* exec, int64_t n, int64_t grain, tcc_task_fn fn, void* ctx);

// Kernels that meet bad data (e.g. a Gather index out of range) record the first error here and
// return; the model program reads it at the next sync point (tcc_exec_sync) and fails the run with the
// message. The error goes to the execution context whose run is in progress on this thread (or on the
// thread that dispatched this pool chunk): tcc::ExecScope in tcc_runtime.h; without one, to a
// process-wide slot (kernel tests call kernels directly).
void tcc_raise(const char* fmt, ...);
int tcc_error_pending(void);
const char* tcc_error_message(void);
void tcc_clear_error(void);
}

namespace tcc {
// parallel_for with a lambda: body(begin, end, thread_index).
template <class F>
inline void parallel_for(tcc_exec* exec, int64_t n, int64_t grain, F&& body) {
  struct Thunk {
    static void run(void* ctx, int64_t b, int64_t e, int t) { (*static_cast<F*>(ctx))(b, e, t); }
  };
  tcc_parallel_for(exec, n, grain, &Thunk::run, static_cast<void*>(&body));
}

// Visit every element of a dense N-d iteration space (row-major over `shape`), calling
// body(linear_index, offsets...) is left to each kernel; this helper converts a linear index into
// per-operand offsets for up to 3 operands with element strides.
inline void unravel(int64_t linear, int ndim, const int64_t* shape, int64_t* coord) {
  for (int d = ndim - 1; d >= 0; --d) {
    coord[d] = linear % shape[d];
    linear /= shape[d];
  }
}
}  // namespace tcc
