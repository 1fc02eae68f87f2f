// tcc runtime: the CPU execution context (tcc_exec: the persistent thread pool behind tcc_parallel_for and
// the first-error-wins error state), and the CPU implementation of the device interface (tcc_device.h).
//
// Pool design (decode calls tcc_parallel_for hundreds of times per token, so dispatch must be cheap):
// - Workers are created once. Between jobs they spin for a short while (the next kernel usually
//   follows within microseconds), then block on a condition variable.
// - A job is published in one 64-bit `claim` word: generation (16 bits) | chunk count (24) | next chunk
//   index (24). Every thread, the caller included, claims chunks with fetch_add on that word and
//   decides from the returned value alone, so a worker that wakes late can never run a chunk twice or
//   run a chunk of a finished job. The job's fn/ctx/ranges share the word's cache line and are read
//   only after a successful claim (they cannot change before that chunk is done).
// - The caller waits until `done` counts every chunk, never for a worker that has not woken up yet:
//   such a worker finds no chunk left and goes back to waiting.
// - A parallel_for issued from inside a task (or while another thread is dispatching on the same
//   pool) runs serially on the calling thread instead of deadlocking.
// - A job carries its dispatcher's error slot (tcc::ErrorScope): a worker raising an error while it runs
//   a chunk records it for the model that dispatched the job, not for whichever model ran last.
#include "tcc_kernel.h"
#include "tcc_runtime.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield" ::: "memory"); }
#else
static inline void cpu_relax() {}
#endif

#if defined(__linux__)
#include <sched.h>
#endif
#include <sys/mman.h>

namespace {

// How long an idle worker spins before blocking: long enough to bridge the gap between two kernels
// of one model step, short enough not to burn a core while the host program does something else.
constexpr auto kSpinTime = std::chrono::microseconds(200);
constexpr int kChunksPerThread = 4;  // dynamic scheduling slack for uneven chunks
constexpr int kIndexBits = 24, kCountBits = 24;
constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;
constexpr int64_t kMaxChunks = int64_t(1) << 20;  // leaves room in the index bits for failed claims

thread_local bool tl_in_task = false;  // inside a task (or dispatching): nested calls run serially
thread_local int tl_thread_index = 0;
thread_local tcc::ErrorSlot* tl_error_slot = nullptr;  // the ErrorScope in effect (null: process-wide)
tcc::ErrorSlot g_error_slot;                            // errors raised outside any ErrorScope

tcc::ErrorSlot& error_slot() { return tl_error_slot ? *tl_error_slot : g_error_slot; }

inline uint64_t gen_of(uint64_t c) { return c >> (kIndexBits + kCountBits); }
inline int64_t count_of(uint64_t c) { return int64_t((c >> kIndexBits) & ((uint64_t(1) << kCountBits) - 1)); }
inline int64_t index_of(uint64_t c) { return int64_t(c & kIndexMask); }

int hardware_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

}  // namespace

struct tcc_exec {
  int nthreads = 1;
  tcc::ErrorSlot errors;  // what this context's kernels raised (read at tcc_exec_sync)
  std::vector<std::thread> workers;

  // The job: claim word plus what a successful claim may read, on one cache line.
  struct alignas(64) Job {
    std::atomic<uint64_t> claim{0};
    tcc_task_fn fn = nullptr;
    void* ctx = nullptr;
    tcc::ErrorSlot* errors = nullptr;  // the dispatcher's error slot
    int64_t n = 0, chunk = 1;
  } job;
  alignas(64) std::atomic<int64_t> done{0};  // chunks finished by workers in the current job
  alignas(64) std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  std::mutex sleep_mu;
  std::condition_variable sleep_cv;
  std::mutex dispatch_mu;  // one dispatcher at a time; others run serially

  // Claim and run chunks until none is left; returns how many this thread ran and the generation seen.
  int64_t run_chunks(int thread_index, uint64_t* gen) {
    int64_t ran = 0;
    for (;;) {
      const uint64_t c = job.claim.fetch_add(1, std::memory_order_acq_rel);
      const int64_t i = index_of(c);
      if (i >= count_of(c)) {
        *gen = gen_of(c);
        return ran;
      }
      const int64_t b = i * job.chunk;
      tl_error_slot = job.errors;
      job.fn(job.ctx, b, std::min(job.n, b + job.chunk), thread_index);
      ++ran;
    }
  }

  // Returns once the claim word carries a generation other than `seen`.
  // Also returns once `stop` is set: the generation is 16 bits, so a worker descheduled while 65,536 jobs
  // ran could find the generation back at `seen` and, without this, sleep through the destroy.
  void wait_for_job(uint64_t seen) {
    auto start = std::chrono::steady_clock::now();
    for (int i = 0;; ++i) {
      if (gen_of(job.claim.load(std::memory_order_acquire)) != seen || stop.load(std::memory_order_acquire)) return;
      cpu_relax();
      if ((i & 255) == 255 && std::chrono::steady_clock::now() - start > kSpinTime) break;
    }
    std::unique_lock<std::mutex> lock(sleep_mu);
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    while (gen_of(job.claim.load(std::memory_order_seq_cst)) == seen && !stop.load(std::memory_order_seq_cst))
      sleep_cv.wait(lock);
    sleepers.fetch_sub(1, std::memory_order_relaxed);
  }

  void worker_main(int thread_index) {
    tl_in_task = true;  // a worker never dispatches to its own pool
    tl_thread_index = thread_index;
    uint64_t seen = 0;
    for (;;) {
      wait_for_job(seen);
      if (stop.load(std::memory_order_acquire)) return;
      const int64_t ran = run_chunks(thread_index, &seen);
      if (ran) done.fetch_add(ran, std::memory_order_release);
    }
  }

  void publish(uint64_t count) {
    const uint64_t gen = (gen_of(job.claim.load(std::memory_order_relaxed)) + 1) & 0xffff;
    job.claim.store((gen << (kIndexBits + kCountBits)) | (count << kIndexBits), std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(sleep_mu); }
      sleep_cv.notify_all();
    }
  }

  void dispatch(int64_t n_, int64_t chunk_, int64_t nchunks, tcc_task_fn fn_, void* ctx_) {
    done.store(0, std::memory_order_relaxed);
    job.fn = fn_;
    job.ctx = ctx_;
    job.errors = tl_error_slot;
    job.n = n_;
    job.chunk = chunk_;
    publish(uint64_t(nchunks));
    tl_in_task = true;
    uint64_t gen;
    const int64_t mine = run_chunks(tl_thread_index, &gen);
    tl_in_task = false;
    while (done.load(std::memory_order_acquire) + mine < nchunks) cpu_relax();
  }
};

extern "C" {

tcc_exec* tcc_exec_create(int n_threads) {
  if (n_threads <= 0) n_threads = hardware_threads();
  n_threads = std::min(n_threads, 1024);
  tcc_exec* pool = new tcc_exec();
  pool->nthreads = n_threads;
  pool->workers.reserve(n_threads - 1);
  for (int i = 1; i < n_threads; ++i) pool->workers.emplace_back([pool, i] { pool->worker_main(i); });
  return pool;
}

void tcc_exec_destroy(tcc_exec* pool) {
  if (!pool) return;
  {
    std::lock_guard<std::mutex> lock(pool->dispatch_mu);
    pool->stop.store(true, std::memory_order_seq_cst);
    pool->publish(0);  // a new generation with no chunks wakes every worker, which then sees stop
    { std::lock_guard<std::mutex> lock(pool->sleep_mu); }
    pool->sleep_cv.notify_all();  // and every sleeper, whatever publish saw of `sleepers`
  }
  for (auto& t : pool->workers) t.join();
  delete pool;
}

int tcc_exec_threads(const tcc_exec* pool) { return pool ? pool->nthreads : 1; }

tcc_exec* tcc_pool_create(int n_threads) { return tcc_exec_create(n_threads); }
void tcc_pool_destroy(tcc_exec* pool) { tcc_exec_destroy(pool); }
int tcc_pool_threads(const tcc_exec* pool) { return tcc_exec_threads(pool); }

void tcc_parallel_for(tcc_exec* pool, int64_t n, int64_t grain, tcc_task_fn fn, void* ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t max_chunks = n / grain + (n % grain != 0);  // no overflow for a huge grain
  if (!pool || pool->nthreads <= 1 || tl_in_task || max_chunks <= 1) {
    fn(ctx, 0, n, tl_thread_index);
    return;
  }
  int64_t nchunks = std::min<int64_t>({max_chunks, int64_t(pool->nthreads) * kChunksPerThread, kMaxChunks});
  int64_t chunk = (n + nchunks - 1) / nchunks;
  nchunks = (n + chunk - 1) / chunk;
  if (!pool->dispatch_mu.try_lock()) {  // another thread is using this pool right now
    fn(ctx, 0, n, tl_thread_index);
    return;
  }
  pool->dispatch(n, chunk, nchunks, fn, ctx);
  pool->dispatch_mu.unlock();
}

// ---- errors: the first error wins until cleared (per ErrorScope slot) ----
void tcc_raise(const char* fmt, ...) {
  tcc::ErrorSlot& slot = error_slot();
  if (slot.pending.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(slot.mu);
  if (slot.pending.load(std::memory_order_relaxed)) return;
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(slot.message, sizeof(slot.message), fmt, args);
  va_end(args);
  slot.pending.store(1, std::memory_order_release);
}

int tcc_error_pending(void) { return error_slot().pending.load(std::memory_order_acquire); }

const char* tcc_error_message(void) {
  tcc::ErrorSlot& slot = error_slot();
  return slot.pending.load(std::memory_order_acquire) ? slot.message : "";
}

void tcc_clear_error(void) {
  tcc::ErrorSlot& slot = error_slot();
  std::lock_guard<std::mutex> lock(slot.mu);
  slot.message[0] = '\0';
  slot.pending.store(0, std::memory_order_release);
}

// ---- the execution context's errors: on the CPU every kernel has finished when it returns ----
int tcc_exec_sync(tcc_exec* exec) {
  tcc::ErrorSlot& slot = exec ? exec->errors : g_error_slot;
  return slot.pending.load(std::memory_order_acquire);
}

const char* tcc_exec_error(const tcc_exec* exec) {
  const tcc::ErrorSlot& slot = exec ? exec->errors : g_error_slot;
  return slot.pending.load(std::memory_order_acquire) ? slot.message : "";
}

void tcc_exec_clear_error(tcc_exec* exec) {
  tcc::ErrorSlot& slot = exec ? exec->errors : g_error_slot;
  std::lock_guard<std::mutex> lock(slot.mu);
  slot.message[0] = '\0';
  slot.pending.store(0, std::memory_order_release);
}

// ---- device memory: on the CPU, host memory (fresh anonymous pages are zero) ----
void* tcc_device_alloc(tcc_exec*, int64_t bytes, const char** why) {
  const size_t size = bytes > 0 ? size_t(bytes) : 64;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    if (why) *why = std::strerror(errno);
    return nullptr;
  }
#ifdef MADV_HUGEPAGE
  if (size >= (size_t(4) << 20)) ::madvise(p, size, MADV_HUGEPAGE);  // fewer TLB misses; advisory only
#endif
  return p;
}

void tcc_device_free(tcc_exec*, void* ptr, int64_t bytes) {
  if (ptr) ::munmap(ptr, bytes > 0 ? size_t(bytes) : 64);
}

void tcc_device_copy_in(tcc_exec*, void* dst, const void* src, int64_t bytes) {
  if (bytes > 0 && dst != src) std::memcpy(dst, src, size_t(bytes));
}

void tcc_device_copy_out(tcc_exec*, void* dst, const void* src, int64_t bytes) {
  if (bytes > 0 && dst != src) std::memcpy(dst, src, size_t(bytes));
}

int tcc_device_host_visible(void) { return 1; }

// Graphs (tcc_device.h): a CPU kernel has run when its call returns, so there is nothing to record: the
// program runs its kernels directly.
int tcc_exec_capture_begin(tcc_exec*, const char** why) {
  if (why) *why = "not supported on the CPU device";
  return 1;
}
tcc_graph* tcc_exec_capture_end(tcc_exec*, const char** why) {
  if (why) *why = "not supported on the CPU device";
  return nullptr;
}
void tcc_graph_launch(tcc_exec*, tcc_graph*) {}
void tcc_graph_destroy(tcc_exec*, tcc_graph*) {}
void tcc_exec_set_kv_length(tcc_exec*, const int64_t*) {}
const int64_t* tcc_exec_kv_length(const tcc_exec*) { return nullptr; }

}  // extern "C"

namespace tcc {
ErrorScope::ErrorScope(ErrorSlot* slot) : previous_(tl_error_slot) { tl_error_slot = slot; }
ErrorScope::~ErrorScope() { tl_error_slot = previous_; }
ErrorSlot* exec_errors(tcc_exec* exec) { return exec ? &exec->errors : &g_error_slot; }
}  // namespace tcc
