// Self-test driver for the tcc runtime (runtime/tcc_runtime.h, the thread pool), run by
// tests/kernels/test_runtime.py. Each subcommand prints one result line; errors go to stderr, exit 1.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tcc_runtime.h"

static int npy_copy(const char* in, const char* out) {
  tcc::NpyArray a = tcc::read_npy(in);
  tcc::write_npy(out, a);
  std::printf("%s %zu\n", a.dtype.c_str(), a.shape.size());
  return 0;
}

static int map_file(const char* path, long long expected) {
  tcc::MappedFile f(path, expected);
  unsigned sum = 0;
  for (size_t i = 0; i < f.size(); ++i) sum += f.data()[i];
  std::printf("%zu %u\n", f.size(), sum);
  f.at(f.size() + 1, 1);  // must throw
  return 0;
}

static int arena(size_t size) {
  tcc::Arena a(size);
  bool aligned = reinterpret_cast<uintptr_t>(a.data()) % 64 == 0;
  bool zero = true;
  for (size_t i = 0; i < size; i += 4096) zero = zero && a.data()[i] == 0;
  std::memset(a.data(), 1, size);
  std::printf("%d %d\n", int(aligned), int(zero));
  return 0;
}

// Many small dispatches (the decode pattern) plus nested ones; checks every index is visited once.
static int pool_stress(int threads, int iters) {
  tcc_exec* pool = tcc_exec_create(threads);
  std::vector<std::atomic<int>> hits(4096);
  long long bad = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int it = 0; it < iters; ++it) {
    const int64_t n = 1 + (it * 37) % 4096;
    tcc::parallel_for(pool, n, 16, [&](int64_t b, int64_t e, int t) {
      if (t < 0 || t >= tcc_exec_threads(pool)) ++bad;
      for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1, std::memory_order_relaxed);
    });
    for (int64_t i = 0; i < n; ++i) bad += hits[i].exchange(0) != 1;
  }
  double per_call = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  // Nested parallel_for runs serially on the calling thread (no deadlock, full range).
  std::atomic<int64_t> inner_total{0};
  tcc::parallel_for(pool, 64, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i)
      tcc::parallel_for(pool, 100, 1, [&](int64_t ib, int64_t ie, int) {
        if (ib != 0 || ie != 100) ++inner_total;  // a nested call must get the whole range at once
        inner_total += ie - ib;
      });
  });
  tcc_exec_destroy(pool);
  std::printf("%lld %lld %.3f\n", bad, (long long)inner_total.load(), per_call * 1e6);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string cmd = argv[1];
  try {
    if (cmd == "npy-copy" && argc == 4) return npy_copy(argv[2], argv[3]);
    if (cmd == "map" && argc == 4) return map_file(argv[2], std::atoll(argv[3]));
    if (cmd == "arena" && argc == 3) return arena(size_t(std::atoll(argv[2])));
    if (cmd == "pool" && argc == 4) return pool_stress(std::atoi(argv[2]), std::atoi(argv[3]));
  } catch (const tcc::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 2;
}
