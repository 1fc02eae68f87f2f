// tcc CPU SIMT emulator, Metal bridge: runs Metal dispatches (runtime/metal/tcc_metal_host.h) on the emulator
// and gives the MSL side (runtime/simt/tcc_simt_metal.h) its built-ins, barriers and SIMD-group collectives.
// Part of the tcc runtime library (docs/metal.md, "The emulator"). Linked with runtime/device_simt.cpp into
// every emulated Metal program; generic: nothing here knows about a particular kernel.
//
// dispatchThreadgroups(groups, tg) is one emulator launch of `groups` blocks of `tg` threads.
// dispatchThreads(grid, tg) covers `grid` threads with threadgroups of `tg`, the last one along each axis
// partial (Metal's non-uniform threadgroups): the interior is one launch and each partial edge another, with
// blocks of the edge's real size, so a partial threadgroup has exactly the threads Metal gives it
// (threads_per_threadgroup reports its size; a partial SIMD-group has fewer lanes).
#include "../tcc_cuda.h"  // with TCC_SIMT: the emulator (simt/tcc_simt.h) and the device error slot

#include <stdio.h>

#include "../metal/tcc_metal_host.h"

static_assert(sizeof(tcc_mtl_error) == sizeof(tcc_cuda_error), "tcc_mtl_error is laid out as tcc_cuda_error");

namespace tcc_msl_simt {
void fail(const char* what);
}

namespace {

struct Dispatch {
  const tcc_mtl_function* fn;
  const tcc_mtl_args* args;
  int64_t offset[3];   // threadgroup position of this launch's first block
  int64_t nominal[3];  // the dispatch's threadgroup size
  int64_t groups[3];   // threadgroups per grid
  int64_t threads[3];  // threads per grid
  int64_t tg_off[TCC_MTL_SLOTS];  // where each threadgroup argument starts in the block's shared memory
};

thread_local Dispatch* g_dispatch;  // the launch in progress (its fibers run on this OS thread)
thread_local const char* g_fail_message;

Dispatch* current(void* dispatch) { return static_cast<Dispatch*>(dispatch ? dispatch : g_dispatch); }

void fail_thunk(void*) { tcc_simt::fail(g_fail_message); }

// Record `what` on the context as the failure of `name` (a one-thread launch that fails: the emulator's
// error path, so the message has the emulator's form and the next sync reports it).
void fail_dispatch(tcc_exec* exec, const char* name, const char* what) {
  g_fail_message = what;
  tcc_simt::launch(name, exec, tcc_simt::Dim{1, 1, 1}, tcc_simt::Dim{1, 1, 1}, 0,
                   reinterpret_cast<const void*>(&fail_thunk), &fail_thunk, nullptr);
}

int block_threads() {
  const dim3& b = tcc_simt::g_block.block_dim;
  return static_cast<int>(b.x * b.y * b.z);
}

}  // namespace

namespace tcc_msl_simt {

void builtin(int kind, uint out[3]) {
  const Dispatch* d = g_dispatch;
  const tcc_simt::Thread* t = tcc_simt::g_cur;
  const uint3 b = tcc_simt::g_block.block_idx;
  const dim3 bd = tcc_simt::g_block.block_dim;
  const uint tgpos[3] = {static_cast<uint>(b.x + d->offset[0]), static_cast<uint>(b.y + d->offset[1]),
                         static_cast<uint>(b.z + d->offset[2])};
  const uint tid[3] = {t->tid.x, t->tid.y, t->tid.z};
  const uint dims[3] = {bd.x, bd.y, bd.z};
  const int n = block_threads();
  for (int i = 0; i < 3; ++i) {
    uint v = 0;
    switch (kind) {
      case kThreadPositionInGrid: v = tgpos[i] * static_cast<uint>(d->nominal[i]) + tid[i]; break;
      case kThreadPositionInThreadgroup: v = tid[i]; break;
      case kThreadgroupPositionInGrid: v = tgpos[i]; break;
      case kThreadsPerThreadgroup: v = dims[i]; break;
      case kThreadgroupsPerGrid: v = static_cast<uint>(d->groups[i]); break;
      case kThreadsPerGrid: v = static_cast<uint>(d->threads[i]); break;
      case kDispatchThreadsPerThreadgroup: v = static_cast<uint>(d->nominal[i]); break;
      case kThreadIndexInThreadgroup: v = i == 0 ? static_cast<uint>(t->linear) : 0; break;
      case kSimdgroupIndexInThreadgroup: v = i == 0 ? static_cast<uint>(t->warp) : 0; break;
      case kThreadIndexInSimdgroup: v = i == 0 ? static_cast<uint>(t->lane) : 0; break;
      case kThreadsPerSimdgroup: v = i == 0 ? 32u : 0; break;
      case kSimdgroupsPerThreadgroup: v = i == 0 ? static_cast<uint>((n + 31) / 32) : 0; break;
      default: tcc_simt::fail("unknown Metal built-in");
    }
    out[i] = v;
  }
}

int lane() { return tcc_simt::g_cur->lane; }

int lanes() {
  const int left = block_threads() - tcc_simt::g_cur->warp * 32;
  return left < 32 ? left : 32;
}

void barrier(const char* file, int line) { tcc_simt::barrier(file, line, 0); }

void simd_barrier(const char* file, int line) {
  tcc_simt::collective(tcc_simt::kSyncwarp, 0xffffffffu, 0, 32, file, line);
}

const void* const* gather(const void* mine, const char* file, int line) {
  return tcc_simt::warp_gather(mine, file, line);
}

void fail(const char* what) { tcc_simt::fail(what); }

const void* buffer(void* dispatch, int index, const char* param) {
  const Dispatch* d = current(dispatch);
  const void* p = d->args->buf[index];
  if (!((d->args->bound >> index) & 1u)) {
    static thread_local char buf[160];
    snprintf(buf, sizeof buf, "buffer(%d) (%s) is not bound", index, param);
    tcc_simt::fail(buf);
  }
  return p;
}

void* threadgroup_memory(void* dispatch, int index, const char* param) {
  const Dispatch* d = current(dispatch);
  if (d->args->tg[index] <= 0) {
    static thread_local char buf[160];
    snprintf(buf, sizeof buf, "threadgroup(%d) (%s) has no length (setThreadgroupMemoryLength)", index, param);
    tcc_simt::fail(buf);
  }
  int64_t bytes = 0;
  return static_cast<unsigned char*>(tcc_simt::shared_dynamic(&bytes)) + d->tg_off[index];
}

}  // namespace tcc_msl_simt

tcc_mtl_error* tcc_mtl_error_slot(tcc_exec* exec) { return reinterpret_cast<tcc_mtl_error*>(tcc_cuda_error_slot(exec)); }

void tcc_mtl_dispatch(tcc_exec* exec, const tcc_mtl_function* fn, const tcc_mtl_args* args, const int64_t grid[3],
                      const int64_t tg[3], int per_thread) {
  char what[200];
  if (args->error) return fail_dispatch(exec, fn->name, args->error);
  if (fn->simt == nullptr) return fail_dispatch(exec, fn->name, "has no emulation entry");
  const int64_t threads = tg[0] * tg[1] * tg[2];
  if (tg[0] < 1 || tg[1] < 1 || tg[2] < 1 || threads > TCC_MTL_MAX_THREADS) {
    snprintf(what, sizeof what, "invalid threadgroup size (%lld,%lld,%lld) (at most %d threads)", (long long)tg[0],
             (long long)tg[1], (long long)tg[2], TCC_MTL_MAX_THREADS);
    return fail_dispatch(exec, fn->name, what);
  }
  if (grid[0] < 1 || grid[1] < 1 || grid[2] < 1) {
    snprintf(what, sizeof what, "empty dispatch (%lld,%lld,%lld)", (long long)grid[0], (long long)grid[1],
             (long long)grid[2]);
    return fail_dispatch(exec, fn->name, what);
  }
  Dispatch d{};
  d.fn = fn;
  d.args = args;
  int64_t shared = 0;
  for (int i = 0; i < TCC_MTL_SLOTS; ++i) {
    d.tg_off[i] = shared;
    shared += args->tg[i];
  }
  if (shared > TCC_MTL_MAX_THREADGROUP_MEMORY) {
    snprintf(what, sizeof what, "threadgroup memory of %lld bytes exceeds %d", (long long)shared,
             TCC_MTL_MAX_THREADGROUP_MEMORY);
    return fail_dispatch(exec, fn->name, what);
  }
  // Per axis: the parts of the grid (start group, group count, threads per group): the full threadgroups, and
  // with dispatchThreads a partial last one.
  int64_t part_start[3][2], part_count[3][2], part_size[3][2];
  int parts[3];
  for (int i = 0; i < 3; ++i) {
    d.nominal[i] = tg[i];
    if (!per_thread) {
      d.groups[i] = grid[i];
      d.threads[i] = grid[i] * tg[i];
      parts[i] = 1;
      part_start[i][0] = 0, part_count[i][0] = grid[i], part_size[i][0] = tg[i];
      continue;
    }
    const int64_t full = grid[i] / tg[i], rest = grid[i] % tg[i];
    d.groups[i] = full + (rest ? 1 : 0);
    d.threads[i] = grid[i];
    parts[i] = 0;
    if (full) part_start[i][parts[i]] = 0, part_count[i][parts[i]] = full, part_size[i][parts[i]++] = tg[i];
    if (rest) part_start[i][parts[i]] = full, part_count[i][parts[i]] = 1, part_size[i][parts[i]++] = rest;
  }
  Dispatch* const saved = g_dispatch;
  g_dispatch = &d;
  for (int pz = 0; pz < parts[2]; ++pz)
    for (int py = 0; py < parts[1]; ++py)
      for (int px = 0; px < parts[0]; ++px) {
        const int p[3] = {px, py, pz};
        for (int i = 0; i < 3; ++i) d.offset[i] = part_start[i][p[i]];
        tcc_simt::launch(fn->name, exec, tcc_simt::Dim{part_count[0][px], part_count[1][py], part_count[2][pz]},
                         tcc_simt::Dim{part_size[0][px], part_size[1][py], part_size[2][pz]}, shared,
                         reinterpret_cast<const void*>(fn->simt), fn->simt, &d);
      }
  g_dispatch = saved;
}
