// Token selection on a Metal device (tcc_device.h: tcc_device_select): the host side of the kernel in
// runtime/metal/select.metal. Part of the tcc runtime library: built by a Metal artifact's macOS project
// (codegen/metal_host.py) and by its Linux emulation build (CMakeLists.txt: TCC_SELECT=metal), where the
// same launcher runs the MSL kernel on the SIMT emulator through runtime/simt/metal_bridge.cpp.
//
// The logits stay on the device: one dispatch picks every row's token, and only the ids are read back. The
// host does tcc_sample's sequential parts, as for CUDA (runtime/select_cuda.cu): one splitmix64 draw per
// sampled row in row order (none for greedy), and the de-duplicated in-range recent ids.
//
// Memory: work buffers per execution context, allocated at its first selection (sized for the rows and the
// vocabulary; again only if a later call needs more) and freed by tcc_device_select_release. Metal device
// memory is addressable by the CPU (shared storage on macOS, host memory on the emulator), so the draws and
// recent ids are written straight into their buffer — no encoded work reads it, since every selection ends in
// a sync — and the dispatch is encoded into the model's command buffer after the step's kernels; one sync
// (commit and wait on macOS) then runs both, and the ids are copied out.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../tcc_model.h"
#include "../tcc_select.h"
#include "tcc_metal_select.h"

namespace {

constexpr int64_t kCounts = TCC_METAL_SELECT_DIGITS * TCC_METAL_SELECT_THREADS;  // ints per row

template <class T>
T* carve(char*& p, int64_t count) {
  T* at = reinterpret_cast<T*>(p);
  p += (count * static_cast<int64_t>(sizeof(T)) + 255) / 256 * 256;
  return at;
}

// One execution context's work buffers.
struct Workspace {
  int64_t rows = 0, vocab = 0;  // capacity
  char* dev = nullptr;
  int64_t dev_bytes = 0;
  tcc_metal_select_args a{};     // the buffers carved from dev
  char* in_dev = nullptr;        // the rows' draws, then the recent ids
  tcc::RecentIds recent_ids;  // host: de-duplicating the recent ids
};

std::mutex g_mu;
std::unordered_map<tcc_exec*, Workspace*> g_workspaces;

int64_t input_bytes(int64_t rows, int64_t vocab) { return (rows * 8 + vocab * 4 + 255) / 256 * 256; }

void free_buffers(tcc_exec* exec, Workspace* ws) {
  tcc_device_free(exec, ws->dev, ws->dev_bytes);
  ws->dev = nullptr;
  ws->dev_bytes = 0;
  ws->rows = ws->vocab = 0;
}

// The context's workspace with room for rows x vocab; nullptr (and *why) when it cannot be allocated.
Workspace* workspace(tcc_exec* exec, int64_t rows, int64_t vocab, const char** why) {
  std::lock_guard<std::mutex> lock(g_mu);
  Workspace*& ws = g_workspaces[exec];
  if (ws == nullptr) ws = new Workspace();
  if (ws->rows >= rows && ws->vocab >= vocab) return ws;
  free_buffers(exec, ws);
  const int64_t n = rows * vocab;
  const int64_t bytes = 256 * 10 + n * (4 + 2 * 4 + 2 * 4 + 4) + rows * kCounts * 4 + input_bytes(rows, vocab) +
                        rows * 8;
  const char* reason = "out of memory";
  ws->dev = static_cast<char*>(tcc_device_alloc(exec, bytes, &reason));
  if (ws->dev == nullptr) {
    if (why) *why = "token selection: cannot allocate its work buffers (out of memory)";
    return nullptr;
  }
  ws->dev_bytes = bytes;
  char* p = ws->dev;
  ws->a.x = carve<float>(p, n);
  for (int b = 0; b < 2; ++b) ws->a.keys[b] = carve<uint32_t>(p, n), ws->a.ids[b] = carve<int32_t>(p, n);
  ws->a.counts = carve<int32_t>(p, rows * kCounts);
  ws->a.w = carve<float>(p, n);
  ws->in_dev = carve<char>(p, input_bytes(rows, vocab));
  ws->a.ids_out = carve<int64_t>(p, rows);
  ws->recent_ids.reset(vocab);
  ws->rows = rows;
  ws->vocab = vocab;
  return ws;
}

}  // namespace

extern "C" int tcc_device_select(tcc_exec* exec, const float* logits, int64_t rows, int64_t row_stride, int64_t vocab,
                                 const tcc_sampling* p, const int64_t* recent, int64_t n_recent, uint64_t* rng,
                                 int64_t* ids_out, const char** why) {
  if (const char* bad = tcc::select_check(logits, rows, row_stride, vocab, p, recent, n_recent, rng, ids_out)) {
    if (why) *why = bad;
    return 1;
  }
  Workspace* ws = workspace(exec, rows, vocab, why);
  if (ws == nullptr) return 1;
  // shared memory: the host writes the draws and recent ids where the kernel reads them
  const int n_rec = tcc::select_stage(p, rows, rng, recent, n_recent, vocab, &ws->recent_ids, ws->in_dev);
  tcc_metal_select_args a = ws->a;
  a.logits = logits;
  a.params = tcc_metal_select_params{row_stride, static_cast<int32_t>(vocab), p->top_k, n_rec, 0, p->temperature,
                                     p->top_p, n_rec > 0 ? p->repetition_penalty : 1.0f, 0.0f};
  a.draws = reinterpret_cast<const uint64_t*>(ws->in_dev);
  a.recent = reinterpret_cast<const int32_t*>(ws->in_dev + rows * 8);
  a.rows = rows;
  tcc_metal_select_launch(exec, &a);
  if (tcc_exec_sync(exec)) {  // the dispatch's errors (and the step's: one command buffer)
    thread_local char text[256];
    snprintf(text, sizeof text, "token selection failed: %s", tcc_exec_error(exec));
    if (why) *why = text;
    return 1;
  }
  tcc_device_copy_out(exec, ids_out, ws->a.ids_out, rows * 8);
  return 0;
}

extern "C" void tcc_device_select_release(tcc_exec* exec) {
  Workspace* ws = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_workspaces.find(exec);
    if (it == g_workspaces.end()) return;
    ws = it->second;
    g_workspaces.erase(it);
  }
  free_buffers(exec, ws);
  delete ws;
}
