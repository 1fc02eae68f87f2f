// tcc's memory-bandwidth probe (`tcc bench`): the decode roofline's denominator.
//
//   bandwidth BYTES THREADS PASSES   ->  one JSON line: best and median read bandwidth in GB/s
//
// STREAM-like read-only kernel: every thread sums its contiguous slice of one buffer with wide vector
// loads into 8 independent accumulators (enough to hide load latency on x86 and ARM cores), so the
// figure is what a GEMV that streams its weights once per token can reach at best. Passes alternate
// between plain loads and loads with software prefetch PREFETCH_BYTES ahead (as tcc's GEMV kernels do):
// on some machines, virtual ones especially, the hardware prefetcher alone leaves bandwidth unused, and
// a probe slower than the kernels it judges would put them above 100% of the roofline. Pages are
// touched first by the thread that later reads them (first-touch placement). Threads are created once
// and meet at a barrier per pass; a pass is timed from release to the last thread's arrival, and the
// timing thread reads a slice too.
#include <atomic>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

typedef float vec __attribute__((vector_size(32), aligned(32)));

constexpr size_t PREFETCH_BYTES = 2048;

// Sum of the slice; Prefetch: also prefetch each 256-byte step's 4 cache lines PREFETCH_BYTES ahead.
template <bool Prefetch>
static float sum_slice(const vec* p, size_t n) {
  constexpr size_t ahead = PREFETCH_BYTES / sizeof(vec);
  vec a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
  size_t i = 0;
  for (; i + 8 + (Prefetch ? ahead : 0) <= n; i += 8) {
    if (Prefetch) {
      const char* q = reinterpret_cast<const char*>(p + i + ahead);
      __builtin_prefetch(q, 0, 0);
      __builtin_prefetch(q + 64, 0, 0);
      __builtin_prefetch(q + 128, 0, 0);
      __builtin_prefetch(q + 192, 0, 0);
    }
    a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
    a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
  }
  for (; i < n; ++i) a0 += p[i];
  vec s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
  float r = 0;
  for (int k = 0; k < 8; ++k) r += s[k];
  return r;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s BYTES THREADS PASSES\n", argv[0]);
    return 2;
  }
  const size_t bytes = std::strtoull(argv[1], nullptr, 10) / 256 * 256;
  const int threads = std::max(1, std::atoi(argv[2]));
  const int passes = std::max(1, std::atoi(argv[3]));
  const size_t nvec = bytes / sizeof(vec);
  vec* buf = static_cast<vec*>(std::aligned_alloc(4096, (nvec * sizeof(vec) + 4095) / 4096 * 4096));
  if (!buf) {
    std::fprintf(stderr, "bandwidth: cannot allocate %zu bytes\n", bytes);
    return 1;
  }
  std::atomic<int> generation{0}, arrived{0};
  std::vector<double> seconds;
  std::vector<float> sink(threads);
  auto slice = [&](int t, size_t* begin, size_t* end) {
    *begin = nvec * t / threads;
    *end = nvec * (t + 1) / threads;
  };
  auto read = [&](int t, int g) {
    size_t b, e;
    slice(t, &b, &e);
    sink[t] += (g % 2) ? sum_slice<false>(buf + b, e - b) : sum_slice<true>(buf + b, e - b);
  };
  auto touch = [&](int t) {
    size_t b, e;
    slice(t, &b, &e);
    for (size_t i = b; i < e; ++i) buf[i] = vec{} + float(i & 7);  // first touch by the reader
  };
  // The calling thread reads slice 0 itself: a timer thread spinning beside `threads` readers would
  // take a core from one of them on a machine with exactly `threads` cores.
  auto worker = [&](int t) {
    touch(t);
    arrived.fetch_add(1);
    for (int g = 1; g <= passes; ++g) {
      while (generation.load(std::memory_order_acquire) < g) std::this_thread::yield();
      read(t, g);
      arrived.fetch_add(1, std::memory_order_acq_rel);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker, t);
  touch(0);
  while (arrived.load() < threads - 1) std::this_thread::yield();
  for (int g = 1; g <= passes; ++g) {
    arrived.store(0);
    auto t0 = std::chrono::steady_clock::now();
    generation.store(g, std::memory_order_release);
    read(0, g);
    while (arrived.load(std::memory_order_acquire) < threads - 1) {}
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  for (auto& th : pool) th.join();
  float total = 0;
  for (float s : sink) total += s;
  std::vector<double> sorted = seconds, plain, prefetch;
  std::sort(sorted.begin(), sorted.end());
  for (int g = 1; g <= passes; ++g) ((g % 2) ? plain : prefetch).push_back(seconds[g - 1]);
  const double gb = double(nvec * sizeof(vec)) / 1e9;
  auto best = [&](const std::vector<double>& v) { return v.empty() ? 0.0 : gb / *std::min_element(v.begin(), v.end()); };
  std::printf("{\"bytes\": %zu, \"threads\": %d, \"passes\": %d, \"best_gbs\": %.3f, \"median_gbs\": %.3f, "
              "\"plain_best_gbs\": %.3f, \"prefetch_best_gbs\": %.3f, \"checksum\": %.1f}\n",
              nvec * sizeof(vec), threads, passes, gb / sorted.front(), gb / sorted[sorted.size() / 2], best(plain),
              best(prefetch), double(total));
  std::free(buf);
  return 0;
}
