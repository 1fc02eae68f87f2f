// tcc runtime: the persistent thread pool behind tcc_parallel_for and the first-error-wins error state.
//
// Pool design (decode calls tcc_parallel_for hundreds of times per token, so dispatch must be cheap):
// - Workers are created once. Between jobs they spin for a short while (the next kernel usually
//   follows within microseconds), then block on a condition variable.
// - One 64-bit `state` word holds (generation << 32 | CLOSED | number of workers inside the job).
//   A worker joins a job by CAS-incrementing the count while the job is open; the caller closes the
//   job after it has run out of chunks and waits only for workers that joined. So the caller never
//   waits for a sleeping worker to wake up: a late worker finds the job closed and goes back to wait.
// - Chunks are claimed from an atomic counter (dynamic scheduling), the calling thread included.
// - A parallel_for issued from inside a task (or while another thread is dispatching on the same
//   pool) runs serially on the calling thread instead of deadlocking.
#include "tcc_kernel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
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

namespace {

constexpr uint64_t kClosed = uint64_t(1) << 31;
constexpr uint64_t kCountMask = kClosed - 1;
// How long an idle worker spins before blocking: long enough to bridge the gap between two kernels
// of one model step, short enough not to burn a core while the host program does something else.
constexpr auto kSpinTime = std::chrono::microseconds(200);
constexpr int kChunksPerThread = 4;  // dynamic scheduling slack for uneven chunks

thread_local bool tl_in_task = false;  // inside a task (or dispatching): nested calls run serially
thread_local int tl_thread_index = 0;

inline uint64_t gen_of(uint64_t s) { return s >> 32; }

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

struct tcc_pool {
  int nthreads = 1;
  std::vector<std::thread> workers;

  // The current job; written by the dispatcher only while no worker is inside a job.
  tcc_task_fn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0, chunk = 1, nchunks = 0;

  alignas(64) std::atomic<int64_t> next_chunk{0};
  alignas(64) std::atomic<uint64_t> state{kClosed};
  alignas(64) std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  std::mutex sleep_mu;
  std::condition_variable sleep_cv;
  std::mutex dispatch_mu;  // one dispatcher at a time; others run serially

  void run_chunks(int thread_index) {
    for (;;) {
      int64_t c = next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (c >= nchunks) return;
      int64_t b = c * chunk;
      fn(ctx, b, std::min(n, b + chunk), thread_index);
    }
  }

  // Returns the first state whose generation differs from `seen`.
  uint64_t wait_for_job(uint64_t seen) {
    auto start = std::chrono::steady_clock::now();
    for (int i = 0;; ++i) {
      uint64_t s = state.load(std::memory_order_acquire);
      if (gen_of(s) != seen) return s;
      cpu_relax();
      if ((i & 255) == 255 && std::chrono::steady_clock::now() - start > kSpinTime) break;
    }
    std::unique_lock<std::mutex> lock(sleep_mu);
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    uint64_t s;
    while (gen_of(s = state.load(std::memory_order_seq_cst)) == seen) sleep_cv.wait(lock);
    sleepers.fetch_sub(1, std::memory_order_relaxed);
    return s;
  }

  void worker_main(int thread_index) {
    tl_in_task = true;  // a worker never dispatches to its own pool
    tl_thread_index = thread_index;
    uint64_t seen = 0;
    for (;;) {
      uint64_t s = wait_for_job(seen);
      seen = gen_of(s);
      if (stop.load(std::memory_order_acquire)) return;
      bool joined = false;
      while (gen_of(s) == seen && !(s & kClosed)) {
        if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
          joined = true;
          break;
        }
      }
      if (!joined) continue;  // job already finished (or a newer one started: wait returns at once)
      run_chunks(thread_index);
      state.fetch_sub(1, std::memory_order_release);
    }
  }

  void wake_sleepers() {
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(sleep_mu); }
      sleep_cv.notify_all();
    }
  }

  void dispatch(int64_t n_, int64_t chunk_, int64_t nchunks_, tcc_task_fn fn_, void* ctx_) {
    fn = fn_;
    ctx = ctx_;
    n = n_;
    chunk = chunk_;
    nchunks = nchunks_;
    next_chunk.store(0, std::memory_order_relaxed);
    uint64_t gen = gen_of(state.load(std::memory_order_relaxed)) + 1;
    state.store(gen << 32, std::memory_order_seq_cst);  // open, nobody inside yet
    wake_sleepers();
    tl_in_task = true;
    run_chunks(tl_thread_index);
    tl_in_task = false;
    state.fetch_or(kClosed, std::memory_order_acq_rel);
    while (state.load(std::memory_order_acquire) & kCountMask) cpu_relax();
  }
};

extern "C" {

tcc_pool* tcc_pool_create(int n_threads) {
  if (n_threads <= 0) n_threads = hardware_threads();
  n_threads = std::min(n_threads, 1024);
  tcc_pool* pool = new tcc_pool();
  pool->nthreads = n_threads;
  pool->workers.reserve(n_threads - 1);
  for (int i = 1; i < n_threads; ++i) pool->workers.emplace_back([pool, i] { pool->worker_main(i); });
  return pool;
}

void tcc_pool_destroy(tcc_pool* pool) {
  if (!pool) return;
  {
    std::lock_guard<std::mutex> lock(pool->dispatch_mu);
    pool->stop.store(true, std::memory_order_release);
    uint64_t gen = gen_of(pool->state.load(std::memory_order_relaxed)) + 1;
    pool->state.store((gen << 32) | kClosed, std::memory_order_seq_cst);
    { std::lock_guard<std::mutex> lock2(pool->sleep_mu); }
    pool->sleep_cv.notify_all();
  }
  for (auto& t : pool->workers) t.join();
  delete pool;
}

int tcc_pool_threads(const tcc_pool* pool) { return pool ? pool->nthreads : 1; }

void tcc_parallel_for(tcc_pool* pool, int64_t n, int64_t grain, tcc_task_fn fn, void* ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int64_t max_chunks = (n + grain - 1) / grain;
  if (!pool || pool->nthreads <= 1 || tl_in_task || max_chunks <= 1) {
    fn(ctx, 0, n, tl_thread_index);
    return;
  }
  int64_t nchunks = std::min<int64_t>(max_chunks, int64_t(pool->nthreads) * kChunksPerThread);
  int64_t chunk = (n + nchunks - 1) / nchunks;
  nchunks = (n + chunk - 1) / chunk;
  if (!pool->dispatch_mu.try_lock()) {  // another thread is using this pool right now
    fn(ctx, 0, n, tl_thread_index);
    return;
  }
  pool->dispatch(n, chunk, nchunks, fn, ctx);
  pool->dispatch_mu.unlock();
}

// ---- errors: the first error wins until cleared ----
static std::mutex g_error_mu;
static std::atomic<int> g_error_pending{0};
static char g_error_message[1024];

void tcc_raise(const char* fmt, ...) {
  if (g_error_pending.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(g_error_mu);
  if (g_error_pending.load(std::memory_order_relaxed)) return;
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_error_message, sizeof(g_error_message), fmt, args);
  va_end(args);
  g_error_pending.store(1, std::memory_order_release);
}

int tcc_error_pending(void) { return g_error_pending.load(std::memory_order_acquire); }

const char* tcc_error_message(void) {
  return g_error_pending.load(std::memory_order_acquire) ? g_error_message : "";
}

void tcc_clear_error(void) {
  std::lock_guard<std::mutex> lock(g_error_mu);
  g_error_message[0] = '\0';
  g_error_pending.store(0, std::memory_order_release);
}

}  // extern "C"
