// tcc emulated CUDA device: the device runtime (runtime/tcc_device.h, runtime/tcc_cuda.h's externs) and the
// SIMT scheduler behind runtime/simt/tcc_simt.h. Part of the tcc runtime library (docs/cuda.md).
//
// Linked instead of the CPU device code (runtime/runtime.cpp) into programs whose kernels are CUDA sources
// compiled with -DTCC_SIMT. Device memory is host memory, but tcc_device_host_visible() is 0: the program
// treats the emulated device like a GPU (copies in and out, syncs), so the emulator exercises its GPU paths.
//
// Scheduling: a launch runs its blocks one after another on the calling OS thread. The threads of a block
// are fibers with their own stacks (allocated once, reused; a guard page below each), switched by a
// hand-written context switch on x86-64 and aarch64 (ucontext elsewhere, or with -DTCC_SIMT_UCONTEXT:
// swapcontext makes a system call per switch). A fiber runs until it reaches a barrier, a warp collective,
// or its end; the scheduler passes over the block's threads (in order, or in a seeded random order per pass:
// tcc_simt_set_seed) until all have finished, releasing a barrier when every thread waits at it. A warp
// collective completes when the last lane of its mask arrives: the lanes' operands are in their scratchpads.
#ifndef TCC_SIMT
#define TCC_SIMT
#endif
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "tcc_cuda.h"

#if (defined(__x86_64__) || defined(__aarch64__)) && defined(__ELF__) && !defined(TCC_SIMT_UCONTEXT)
#define TCC_SIMT_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

// AddressSanitizer must be told about stack switches (and a reused stack must be clean of its poison).
#if defined(__SANITIZE_ADDRESS__)
#define TCC_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TCC_SIMT_ASAN 1
#endif
#endif
#if defined(TCC_SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

struct tcc_exec {
  int threads = 1;
  std::string error;            // the first error since the last clear
  tcc_cuda_error* slot = nullptr;  // kernels' device-side error slot (tcc_cuda_fail)
  bool slot_reported = false;
  tcc_graph* recording = nullptr;  // between tcc_exec_capture_begin and _end: the launches recorded so far
  const int64_t* kv_length = nullptr;  // tcc_exec_set_kv_length
  std::string graph_why;           // why the last capture failed
};

// A recorded launch: what tcc_simt::launch takes, with the argument pack held on the heap.
struct tcc_graph_launch_record {
  const char* kernel;
  tcc_simt::Dim grid, block;
  int64_t shared_bytes;
  const void* func;
  void (*thunk)(void*);
  void* ctx;
  void (*destroy)(void*);
};
struct tcc_graph {
  std::vector<tcc_graph_launch_record> launches;
  ~tcc_graph() {
    for (auto& r : launches) r.destroy(r.ctx);
  }
};

namespace tcc_simt {
Thread* g_cur = nullptr;
BlockInfo g_block;
}  // namespace tcc_simt

using namespace tcc_simt;

// ---- context switch ------------------------------------------------------------------------------------------
#if defined(TCC_SIMT_ASM_SWITCH)
// tcc_simt_swap(save, load): push the callee-saved registers, store the stack pointer in *save, load `load`,
// pop and return there. A new fiber's stack holds a frame whose return address is tcc_simt_trampoline,
// which calls fn(arg) (kept in two callee-saved registers).
extern "C" void tcc_simt_swap(void** save_sp, void* load_sp);
extern "C" void tcc_simt_trampoline();
#if defined(__x86_64__)
asm(R"(
.text
.p2align 4
.globl tcc_simt_swap
.hidden tcc_simt_swap
.type tcc_simt_swap,@function
tcc_simt_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size tcc_simt_swap,.-tcc_simt_swap
.p2align 4
.globl tcc_simt_trampoline
.hidden tcc_simt_trampoline
.type tcc_simt_trampoline,@function
tcc_simt_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
.size tcc_simt_trampoline,.-tcc_simt_trampoline
)");
static void* initial_frame(char* top, void (*fn)(void*), void* arg) {
  // Popped in order r15 r14 r13 r12 rbx rbp, then the return address; after `ret` the stack pointer is
  // 16-byte aligned, as the trampoline's call needs.
  uintptr_t* f = reinterpret_cast<uintptr_t*>(top - 72);
  f[0] = 0;
  f[1] = 0;
  f[2] = reinterpret_cast<uintptr_t>(fn);
  f[3] = reinterpret_cast<uintptr_t>(arg);
  f[4] = 0;
  f[5] = 0;
  f[6] = reinterpret_cast<uintptr_t>(&tcc_simt_trampoline);
  return f;
}
#else  // aarch64
asm(R"(
.text
.p2align 4
.globl tcc_simt_swap
.hidden tcc_simt_swap
.type tcc_simt_swap,%function
tcc_simt_swap:
  sub sp, sp, #160
  stp x19, x20, [sp, #0]
  stp x21, x22, [sp, #16]
  stp x23, x24, [sp, #32]
  stp x25, x26, [sp, #48]
  stp x27, x28, [sp, #64]
  stp x29, x30, [sp, #80]
  stp d8, d9, [sp, #96]
  stp d10, d11, [sp, #112]
  stp d12, d13, [sp, #128]
  stp d14, d15, [sp, #144]
  mov x9, sp
  str x9, [x0]
  mov sp, x1
  ldp x19, x20, [sp, #0]
  ldp x21, x22, [sp, #16]
  ldp x23, x24, [sp, #32]
  ldp x25, x26, [sp, #48]
  ldp x27, x28, [sp, #64]
  ldp x29, x30, [sp, #80]
  ldp d8, d9, [sp, #96]
  ldp d10, d11, [sp, #112]
  ldp d12, d13, [sp, #128]
  ldp d14, d15, [sp, #144]
  add sp, sp, #160
  ret
.size tcc_simt_swap,.-tcc_simt_swap
.p2align 4
.globl tcc_simt_trampoline
.hidden tcc_simt_trampoline
.type tcc_simt_trampoline,%function
tcc_simt_trampoline:
  mov x0, x19
  blr x20
  brk #0
.size tcc_simt_trampoline,.-tcc_simt_trampoline
)");
static void* initial_frame(char* top, void (*fn)(void*), void* arg) {
  uintptr_t* f = reinterpret_cast<uintptr_t*>(top - 160);
  memset(f, 0, 160);
  f[0] = reinterpret_cast<uintptr_t>(arg);                    // x19
  f[1] = reinterpret_cast<uintptr_t>(fn);                     // x20
  f[11] = reinterpret_cast<uintptr_t>(&tcc_simt_trampoline);  // x30
  return f;
}
#endif
#endif

namespace {

enum State { Runnable, AtBarrier, AtCollective, Done, Aborted };

constexpr size_t kStackBytes = 256 * 1024;
constexpr int64_t kSharedDefault = 48 * 1024;  // static + dynamic, unless the kernel raised its limit
constexpr int64_t kSharedOptIn = 166912;       // sm_80's opt-in maximum per block (163 KiB)
constexpr size_t kArenaBytes = 256 * 1024;
constexpr size_t kMappedBytes = size_t(1) << 20;  // device allocations from this size are mmap'd

struct Stack {
  char* lo = nullptr;  // the guard page's start
  size_t bytes = 0;
  bool abandoned = false;  // a fiber was left mid-kernel on it (an aborted launch)
  void* fake = nullptr;    // ASan's fake stack of the fiber while it is switched out
};

struct StaticArray {
  const SmemSite* site;
  void* p;
  size_t bytes;
};

struct Launch {
  const char* kernel;
  Dim grid, block;
  int64_t dyn, limit;
  void (*thunk)(void*);
  void* ctx;
  int n;
  bool failed = false;
  std::string error;
  int done = 0, at_barrier = 0, at_collective = 0;
  std::vector<StaticArray> statics;
  size_t static_bytes = 0, arena_used = 0;
};

std::mutex g_launch_mutex;
std::vector<Thread> g_threads(kMaxThreads);
std::vector<Stack> g_stacks(kMaxThreads);
std::vector<int> g_order;
// Per warp of the running block: the lanes waiting at a collective, and the lanes that have finished.
unsigned g_arrived[kMaxThreads / kWarp], g_done[kMaxThreads / kWarp];
unsigned g_active_wait[kMaxThreads / kWarp];  // lanes waiting at __activemask
const void* g_gather[kMaxThreads / kWarp][kWarp];  // warp_gather's tables
bool g_fast_fragments = true;
unsigned char* g_arena = nullptr;
Launch* L = nullptr;
void* g_sched_sp = nullptr;
uint64_t g_seed = 0, g_rng = 0;
std::unordered_map<const void*, int> g_max_dyn;
cudaError_t g_last_error = cudaSuccess;
size_t g_page = 4096;

// Fault handling during a launch: a fault on a fiber (its guard page: a stack overflow; or any bad address)
// ends the launch with an error instead of killing the process.
sigjmp_buf g_fault_jmp;
volatile sig_atomic_t g_fault_sig = 0;
void* volatile g_fault_addr = nullptr;
pthread_t g_launch_thread;
std::atomic<bool> g_in_launch{false};  // read by the watchdog thread and the signal handler
// The watchdog: a thread that signals the launching thread when no fiber switch happened for
// g_watchdog_seconds during a launch (a thread spinning on a value that another thread or block would set:
// the emulator runs one thread at a time, so that never ends).
std::atomic<uint64_t> g_switches{0};
std::atomic<int> g_watchdog_seconds{30};
bool g_watchdog_started = false;
int g_watchdog_signal = 0;
struct sigaction g_old_watchdog;  // another emulator library's handler in this process, chained
struct sigaction g_old_segv, g_old_bus, g_old_fpe;
stack_t g_old_altstack;
alignas(16) char g_altstack[64 * 1024];

#if defined(TCC_SIMT_ASAN)
const void* g_sched_stack_bottom = nullptr;  // the scheduler's stack, as ASan reports it to the fibers
size_t g_sched_stack_size = 0;
void* g_sched_fake = nullptr;
#endif

#if !defined(TCC_SIMT_ASM_SWITCH)
ucontext_t g_sched_uc;
std::vector<ucontext_t> g_ucs(kMaxThreads);
#endif

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

[[noreturn]] void failf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

const char* collective_name(int kind) {
  switch (kind) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kSyncwarp: return "__syncwarp";
    case kReduceAddU: case kReduceAddI: return "__reduce_add_sync";
    case kReduceMinU: case kReduceMinI: return "__reduce_min_sync";
    case kReduceMaxU: case kReduceMaxI: return "__reduce_max_sync";
    case kGather: return "warp_gather (tcc_cuda_ptx.h)";
    case kActiveMask: return "__activemask";
    default: return "__syncthreads";
  }
}

// "__syncthreads (file:line)" / "__shfl_xor_sync (file:line)": where a thread waits.
std::string where(const Thread* t) {
  return format("%s (%s:%d)", t->state == AtBarrier ? "__syncthreads" : collective_name(t->kind), t->file, t->line);
}

void record_failure(const Thread* t, const std::string& what) {
  if (L->failed) return;
  L->failed = true;
  L->error = format("%s: %s (block (%u,%u,%u), thread (%u,%u,%u))", L->kernel, what.c_str(), g_block.block_idx.x,
                    g_block.block_idx.y, g_block.block_idx.z, t->tid.x, t->tid.y, t->tid.z);
}

void record_exec_error(tcc_exec* exec, const std::string& message) {
  if (exec->error.empty()) exec->error = message;
}

tcc_exec* default_exec() {
  static tcc_exec* exec = tcc_exec_create(1);
  return exec;
}

// ---- fibers --------------------------------------------------------------------------------------------------
void fiber_main(void* arg);

char* stack_top(int i) {
  Stack& s = g_stacks[i];
  if (!s.lo) {
    const size_t bytes = kStackBytes + g_page;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, g_page, PROT_NONE);  // the guard page: an overflow faults (reported as a stack overflow)
    s.lo = static_cast<char*>(p);
    s.bytes = bytes;
  }
  return s.lo + s.bytes;
}

bool start_fiber(Thread* t) {
  char* top = stack_top(t->linear);
  if (!top) return false;
#if defined(TCC_SIMT_ASAN)
  Stack& s = g_stacks[t->linear];
  // A finished fiber never returns from fiber_main, so its frame keeps ASan's redzones: clean the top of the
  // stack (all of it after a fiber was abandoned mid-kernel).
  if (s.abandoned) __asan_unpoison_memory_region(s.lo + g_page, kStackBytes);
  else __asan_unpoison_memory_region(top - 16384, 16384);
  s.abandoned = false;
#endif
#if defined(TCC_SIMT_ASM_SWITCH)
  t->sp = initial_frame(top - 64, &fiber_main, t);
#else
  ucontext_t* uc = &g_ucs[t->linear];
  getcontext(uc);
  uc->uc_stack.ss_sp = g_stacks[t->linear].lo + g_page;
  uc->uc_stack.ss_size = kStackBytes - 64;
  uc->uc_link = nullptr;
  // makecontext passes int arguments: the thread's index.
  makecontext(uc, reinterpret_cast<void (*)()>(+[](int i) { fiber_main(&g_threads[i]); }), 1, t->linear);
  t->uctx = uc;
#endif
  return true;
}

// Scheduler -> fiber: run t until it blocks or ends.
void enter(Thread* t) {
  g_cur = t;
  g_switches.fetch_add(1, std::memory_order_relaxed);
#if defined(TCC_SIMT_ASAN)
  __sanitizer_start_switch_fiber(&g_sched_fake, g_stacks[t->linear].lo + g_page, kStackBytes);
#endif
#if defined(TCC_SIMT_ASM_SWITCH)
  tcc_simt_swap(&g_sched_sp, t->sp);
#else
  swapcontext(&g_sched_uc, static_cast<ucontext_t*>(t->uctx));
#endif
#if defined(TCC_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
  g_cur = nullptr;
}

// Fiber -> scheduler; returns when the scheduler enters t again (never when `final`).
void leave(Thread* t, bool final = false) {
#if defined(TCC_SIMT_ASAN)
  Stack& s = g_stacks[t->linear];
  __sanitizer_start_switch_fiber(final ? nullptr : &s.fake, g_sched_stack_bottom, g_sched_stack_size);
#else
  (void)final;
#endif
#if defined(TCC_SIMT_ASM_SWITCH)
  tcc_simt_swap(&t->sp, g_sched_sp);
#else
  swapcontext(static_cast<ucontext_t*>(t->uctx), &g_sched_uc);
#endif
#if defined(TCC_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(s.fake, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
}

void fiber_main(void* arg) {
  Thread* t = static_cast<Thread*>(arg);
#if defined(TCC_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
  try {
    L->thunk(L->ctx);
  } catch (...) {
    record_failure(t, "a C++ exception left the kernel");
    t->state = Aborted;
    leave(t, true);
  }
  t->state = Done;
  ++L->done;
  g_done[t->warp] |= 1u << t->lane;
  leave(t, true);
  abort();  // a finished fiber is never entered again
}

// ---- warp collectives -----------------------------------------------------------------------------------------
unsigned warp_lanes(int warp) {
  const int left = L->n - warp * kWarp;
  return left >= kWarp ? 0xffffffffu : (1u << left) - 1u;
}

bool same_collective(const Thread* a, const Thread* b) {
  if (a->kind != b->kind || a->mask != b->mask || a->width != b->width) return false;
  if (a->kind == kSyncwarp) return true;  // sm_70+: __syncwarp at different points of the code is allowed
  return a->line == b->line && (a->file == b->file || strcmp(a->file, b->file) == 0);
}

int shuffle_source(const Thread* u) {
  // PTX shfl.sync: the lane operand's low 5 bits count; a source outside the allowed range gives the
  // lane's own value (up: below its segment; down, xor: above it; xor may read earlier segments).
  const int lane = u->lane, w = u->width, seg = lane & ~(w - 1), b = u->arg & 31;
  int s = lane;
  switch (u->kind) {
    case kShflIdx: s = seg + (b & (w - 1)); break;
    case kShflUp: s = lane - b < seg ? lane : lane - b; break;
    case kShflDown: s = lane + b >= seg + w ? lane : lane + b; break;
    case kShflXor: s = (lane ^ b) >= seg + w ? lane : (lane ^ b); break;
  }
  return (s < 0 || s >= kWarp || !((u->mask >> s) & 1u)) ? lane : s;
}

void exchange(Thread* base, unsigned mask, int kind) {
  if (kind == kGather) {
    const void** table = g_gather[base->warp];
    for (unsigned m = mask; m; m &= m - 1) memcpy(&table[__builtin_ctz(m)], base[__builtin_ctz(m)].in, sizeof(void*));
    return;
  }
  if (kind <= kShflXor) {
    for (unsigned m = mask; m; m &= m - 1) {
      Thread* u = base + __builtin_ctz(m);
      memcpy(u->out, base[shuffle_source(u)].in, sizeof u->out);
    }
    return;
  }
  unsigned bits = 0, sum = 0, umin = 0xffffffffu, umax = 0;
  int32_t imin = INT32_MAX, imax = INT32_MIN;
  for (unsigned m = mask; m; m &= m - 1) {
    const int l = __builtin_ctz(m);
    unsigned v;
    memcpy(&v, base[l].in, sizeof v);
    if (v) bits |= 1u << l;
    sum += v;
    umin = v < umin ? v : umin;
    umax = v > umax ? v : umax;
    imin = static_cast<int32_t>(v) < imin ? static_cast<int32_t>(v) : imin;
    imax = static_cast<int32_t>(v) > imax ? static_cast<int32_t>(v) : imax;
  }
  unsigned r = 0;
  switch (kind) {
    case kBallot: r = bits; break;
    case kAny: r = bits != 0; break;
    case kAll: r = bits == mask; break;
    case kReduceAddU: case kReduceAddI: r = sum; break;
    case kReduceMinU: r = umin; break;
    case kReduceMaxU: r = umax; break;
    case kReduceMinI: r = static_cast<unsigned>(imin); break;
    case kReduceMaxI: r = static_cast<unsigned>(imax); break;
    default: break;  // __syncwarp: nothing to exchange
  }
  for (unsigned m = mask; m; m &= m - 1) memcpy(base[__builtin_ctz(m)].out, &r, sizeof r);
}

// Runs on the arriving lane's fiber: completes t's collective if every lane of its mask is there.
bool try_resolve(Thread* t) {
  Thread* base = &g_threads[t->warp * kWarp];
  if ((g_arrived[t->warp] & t->mask) != t->mask) {
    if (const unsigned gone = g_done[t->warp] & t->mask) {
      failf("%s (%s:%d) with mask 0x%08x: lane %d has exited", collective_name(t->kind), t->file, t->line, t->mask,
            __builtin_ctz(gone));
    }
    return false;
  }
  for (unsigned m = t->mask; m; m &= m - 1) {
    Thread* u = base + __builtin_ctz(m);
    if (!same_collective(t, u)) {
      failf("lanes of mask 0x%08x reached different collectives: %s (%s:%d) with mask 0x%08x here, lane %d at %s "
            "(%s:%d) with mask 0x%08x", t->mask, collective_name(t->kind), t->file, t->line, t->mask, u->lane,
            collective_name(u->kind), u->file, u->line, u->mask);
    }
  }
  exchange(base, t->mask, t->kind);
  for (unsigned m = t->mask; m; m &= m - 1) base[__builtin_ctz(m)].state = Runnable;
  g_arrived[t->warp] &= ~t->mask;
  L->at_collective -= __builtin_popcount(t->mask);
  return true;
}

// __activemask: once no lane of warp w can run on (each has finished or waits somewhere), the lanes waiting
// at one __activemask are the converged group there; each gets the group's mask.
void resolve_activemask(int w) {
  Thread* base = &g_threads[w * kWarp];
  for (unsigned m = warp_lanes(w); m; m &= m - 1)
    if (base[__builtin_ctz(m)].state == Runnable) return;
  for (unsigned waiting = g_active_wait[w]; waiting;) {
    const Thread* first = base + __builtin_ctz(waiting);
    unsigned group = 0;
    for (unsigned m = waiting; m; m &= m - 1) {
      const Thread* u = base + __builtin_ctz(m);
      if (u->line == first->line && (u->file == first->file || strcmp(u->file, first->file) == 0))
        group |= 1u << u->lane;
    }
    for (unsigned m = group; m; m &= m - 1) {
      Thread* u = base + __builtin_ctz(m);
      memcpy(u->out, &group, sizeof group);
      u->state = Runnable;
      --L->at_collective;
    }
    waiting &= ~group;
  }
  g_active_wait[w] = 0;
}

// ---- the block scheduler ------------------------------------------------------------------------------------------
uint64_t next_random() {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}

void shuffle_order(int n) {
  for (int i = n - 1; i > 0; --i) std::swap(g_order[i], g_order[next_random() % static_cast<uint64_t>(i + 1)]);
}

// Every live thread waits at a barrier: release it, or report why it cannot be released.
bool release_barrier() {
  const int n = L->n;
  if (L->done > 0) {
    const Thread* waiting = nullptr;
    const Thread* exited = nullptr;
    for (int i = 0; i < n; ++i) {
      if (g_threads[i].state == AtBarrier && !waiting) waiting = &g_threads[i];
      if (g_threads[i].state == Done && !exited) exited = &g_threads[i];
    }
    record_failure(exited, format("thread exited while other threads of its block wait at %s, e.g. thread (%u,%u,%u)",
                                  where(waiting).c_str(), waiting->tid.x, waiting->tid.y, waiting->tid.z));
    return false;
  }
  const Thread* first = &g_threads[0];
  int count = 0;
  for (int i = 0; i < n; ++i) {
    const Thread* t = &g_threads[i];
    if (t->line != first->line || strcmp(t->file, first->file) != 0) {
      record_failure(t, format("barrier divergence: waits at %s while thread (%u,%u,%u) waits at %s", where(t).c_str(),
                               first->tid.x, first->tid.y, first->tid.z, where(first).c_str()));
      return false;
    }
    count += g_threads[i].pred;
  }
  g_block.sync_result = count;
  for (int i = 0; i < n; ++i) g_threads[i].state = Runnable;
  L->at_barrier = 0;
  return true;
}

// Nothing can run and the barrier cannot be released: name a lane stuck at a collective and why.
void report_deadlock() {
  for (int i = 0; i < L->n; ++i) {
    const Thread* t = &g_threads[i];
    if (t->state != AtCollective) continue;
    const Thread* base = &g_threads[t->warp * kWarp];
    for (unsigned m = t->mask; m; m &= m - 1) {
      const Thread* u = base + __builtin_ctz(m);
      if (u->state == AtCollective && same_collective(t, u)) continue;
      std::string why = "cannot run";
      if (u->state == Done) why = "has exited";
      if (u->state == AtBarrier) why = "waits at " + where(u);
      if (u->state == AtCollective)
        why = "waits at a different collective, " + where(u) + format(" with mask 0x%08x", u->mask);
      record_failure(t, format("deadlock: waits at %s with mask 0x%08x for lane %d, which %s", where(t).c_str(),
                               t->mask, u->lane, why.c_str()));
      return;
    }
  }
  record_failure(&g_threads[0], "deadlock: no thread can run");
}

bool run_block() {
  const int n = L->n;
  const uint3 dim = g_block.block_dim;
  for (int i = 0; i < n; ++i) {
    Thread* t = &g_threads[i];
    t->linear = i;
    t->tid = uint3{static_cast<unsigned>(i) % dim.x, (static_cast<unsigned>(i) / dim.x) % dim.y,
                   static_cast<unsigned>(i) / (dim.x * dim.y)};
    t->lane = i % kWarp;
    t->warp = i / kWarp;
    t->state = Runnable;
    t->kind = -1;
    t->file = "";
    t->line = 0;
    t->pred = 0;
    if (!start_fiber(t)) {
      record_failure(t, "cannot allocate the fiber's stack");
      return false;
    }
    g_order[i] = i;
  }
  L->done = L->at_barrier = L->at_collective = 0;
  memset(g_arrived, 0, sizeof g_arrived);
  memset(g_done, 0, sizeof g_done);
  memset(g_active_wait, 0, sizeof g_active_wait);
  L->statics.clear();
  L->static_bytes = 0;
  L->arena_used = (static_cast<size_t>(L->dyn) + 15) & ~size_t(15);
  memset(g_arena, 0xff, static_cast<size_t>(L->dyn));  // uninitialized shared memory reads as NaN / -1
  for (;;) {
    bool ran = false;
    if (g_seed) shuffle_order(n);
    for (int k = 0; k < n; ++k) {
      Thread* t = &g_threads[g_order[k]];
      if (t->state != Runnable) continue;
      enter(t);
      ran = true;
      if (L->failed) return false;
      if (g_active_wait[t->warp]) resolve_activemask(t->warp);
    }
    if (L->done == n) return true;
    if (ran) continue;
    if (L->at_collective == 0 && L->at_barrier > 0) {
      if (!release_barrier()) return false;
      continue;
    }
    report_deadlock();
    return false;
  }
}

// ---- faults -------------------------------------------------------------------------------------------------------
void on_fault(int sig, siginfo_t* info, void* context) {
  if (g_in_launch && g_cur && pthread_equal(pthread_self(), g_launch_thread)) {
    g_fault_sig = sig;
    g_fault_addr = info->si_addr;
    siglongjmp(g_fault_jmp, 1);
  }
  if (sig == g_watchdog_signal) {  // the launch ended meanwhile, or another library's launch is meant
    if ((g_old_watchdog.sa_flags & SA_SIGINFO) && g_old_watchdog.sa_sigaction)
      g_old_watchdog.sa_sigaction(sig, info, context);
    return;
  }
  // Not a kernel's fault: restore the previous handlers and return; the fault repeats under them.
  sigaction(SIGSEGV, &g_old_segv, nullptr);
  sigaction(SIGBUS, &g_old_bus, nullptr);
  sigaction(SIGFPE, &g_old_fpe, nullptr);
}

void* watchdog_main(void*) {
  uint64_t last = 0;
  int still_ms = 0;
  for (;;) {
    usleep(100 * 1000);
    const uint64_t now = g_switches.load(std::memory_order_relaxed);
    if (!g_in_launch || now != last) {
      last = now;
      still_ms = 0;
      continue;
    }
    still_ms += 100;
    if (still_ms >= 1000 * g_watchdog_seconds.load()) {
      pthread_kill(g_launch_thread, g_watchdog_signal);
      still_ms = 0;
    }
  }
  return nullptr;
}

// Once per process: the watchdog's signal handler (kept: a signal may arrive just after a launch) and thread.
void start_watchdog() {
  if (g_watchdog_started) return;
  g_watchdog_started = true;
  // A real-time signal nobody handles yet: each emulator library in the process (one per test library) gets
  // its own; should none be free, the handlers chain (on_fault).
  g_watchdog_signal = SIGRTMIN + 7;
  for (int sig = SIGRTMIN + 7; sig <= SIGRTMAX; ++sig) {
    struct sigaction cur {};
    if (sigaction(sig, nullptr, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL) {
      g_watchdog_signal = sig;
      break;
    }
  }
  struct sigaction sa {};
  sa.sa_sigaction = &on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(g_watchdog_signal, &sa, &g_old_watchdog);
  pthread_t thread;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  // The watchdog must not receive the process's signals (SIGINT for Python's KeyboardInterrupt, ...).
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  if (pthread_create(&thread, &attr, &watchdog_main, nullptr) != 0) g_watchdog_started = false;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
}

void install_fault_handlers() {
  stack_t ss{};
  ss.ss_sp = g_altstack;
  ss.ss_size = sizeof g_altstack;
  sigaltstack(&ss, &g_old_altstack);
  struct sigaction sa {};
  sa.sa_sigaction = &on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
  sigaction(SIGBUS, &sa, &g_old_bus);
  sigaction(SIGFPE, &sa, &g_old_fpe);
}

void remove_fault_handlers() {
  sigaction(SIGSEGV, &g_old_segv, nullptr);
  sigaction(SIGBUS, &g_old_bus, nullptr);
  sigaction(SIGFPE, &g_old_fpe, nullptr);
  sigaltstack(&g_old_altstack, nullptr);
}

std::string fault_message(const Thread* t) {
  const char* addr = static_cast<const char*>(g_fault_addr);
  const Stack& s = g_stacks[t->linear];
  if ((g_fault_sig == SIGSEGV || g_fault_sig == SIGBUS) && s.lo && addr >= s.lo - g_page && addr < s.lo + g_page)
    return format("stack overflow (the emulator gives each thread %zu KiB)", kStackBytes / 1024);
  if (g_fault_sig == SIGFPE) return "arithmetic fault (integer division by zero?)";
  if (g_fault_sig == g_watchdog_signal)
    return format("no progress for %d s: the thread runs without reaching a barrier, a collective or its end (is it "
                  "spinning on a value another thread or block sets? the emulator runs one thread at a time)",
                  g_watchdog_seconds.load());
  return format("invalid memory access at address %p", g_fault_addr);
}

std::string check_config(Dim grid, Dim block, int64_t dyn, int64_t max_dyn) {
  const int64_t threads = block.x * block.y * block.z;
  if (block.x < 1 || block.y < 1 || block.z < 1 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > kMaxThreads)
    return format("invalid launch configuration: block (%lld,%lld,%lld) (at most 1024 threads, z at most 64)",
                  (long long)block.x, (long long)block.y, (long long)block.z);
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647LL || grid.y > 65535 || grid.z > 65535)
    return format("invalid launch configuration: grid (%lld,%lld,%lld) (each at least 1; x < 2^31, y and z <= 65535)",
                  (long long)grid.x, (long long)grid.y, (long long)grid.z);
  if (dyn < 0 || dyn > max_dyn)
    return format("dynamic shared memory of %lld bytes exceeds the kernel's limit of %lld bytes (raise it with "
                  "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), at most %lld)",
                  (long long)dyn, (long long)max_dyn, (long long)kSharedOptIn);
  return "";
}

void note_device_error(tcc_exec* exec, const char* kernel) {
  const tcc_cuda_error* e = exec->slot;
  if (e->code == 0 || exec->slot_reported) return;
  exec->slot_reported = true;
  if (e->code == TCC_CUDA_ERR_INDEX)
    record_exec_error(exec, format("%s: index %lld out of range [%lld, %lld)", kernel ? kernel : "kernel",
                                   (long long)e->value, (long long)e->lo, (long long)e->hi));
  else
    record_exec_error(exec, format("%s: device error %d (value %lld, range [%lld, %lld))", kernel ? kernel : "kernel",
                                   e->code, (long long)e->value, (long long)e->lo, (long long)e->hi));
}

}  // namespace

// ---- kernel-side entry points ---------------------------------------------------------------------------------------
namespace tcc_simt {

void barrier(const char* file, int line, int pred) {
  Thread* t = g_cur;
  t->state = AtBarrier;
  t->kind = -1;
  t->file = file;
  t->line = line;
  t->pred = pred;
  ++L->at_barrier;
  leave(t);
}

void collective(int kind, unsigned mask, int arg, int width, const char* file, int line) {
  Thread* t = g_cur;
  if (!((mask >> t->lane) & 1u))
    failf("%s (%s:%d): mask 0x%08x does not name the calling lane %d", collective_name(kind), file, line, mask,
          t->lane);
  if (width < 1 || width > kWarp || (width & (width - 1)))
    failf("%s (%s:%d): width %d is not a power of 2 in [1, 32]", collective_name(kind), file, line, width);
  t->kind = kind;
  t->mask = mask & warp_lanes(t->warp);  // lanes past the end of a partial last warp do not exist
  t->arg = arg;
  t->width = width;
  t->file = file;
  t->line = line;
  t->state = AtCollective;
  g_arrived[t->warp] |= 1u << t->lane;
  ++L->at_collective;
  if (!try_resolve(t)) leave(t);
}

const void* const* warp_gather(const void* mine, const char* file, int line) {
  memcpy(g_cur->in, &mine, sizeof mine);
  collective(kGather, 0xffffffffu, 0, kWarp, file, line);
  return g_gather[g_cur->warp];
}

bool fast_fragments() { return g_fast_fragments; }

unsigned activemask(const char* file, int line) {
  Thread* t = g_cur;
  t->kind = kActiveMask;
  t->mask = 1u << t->lane;
  t->width = kWarp;
  t->file = file;
  t->line = line;
  t->state = AtCollective;
  ++L->at_collective;
  g_active_wait[t->warp] |= 1u << t->lane;
  leave(t);  // the scheduler resolves it (resolve_activemask)
  unsigned m;
  memcpy(&m, t->out, sizeof m);
  return m;
}

void fail(const char* what) {
  Thread* t = g_cur;
  if (!t) {  // not on a fiber: cannot happen through the public macros
    fprintf(stderr, "tcc simt: %s outside a kernel\n", what);
    abort();
  }
  record_failure(t, what);
  t->state = Aborted;
  leave(t, true);
  abort();  // an aborted fiber is never entered again
}

}  // namespace tcc_simt

namespace {
// fail() with a formatted message: formatted into a static buffer, since a failing fiber never returns to
// destroy a std::string temporary.
void failf(const char* fmt, ...) {
  static char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  tcc_simt::fail(buf);
}
}  // namespace

namespace tcc_simt {

void smem_out_of_bounds(const SmemSite* site, int64_t index, int64_t n) {
  failf("shared memory out of bounds: %s[%lld] outside [0, %lld) (declared at %s:%d)", site->name,
        (long long)index, (long long)n, site->file, site->line);
}

void* shared_static(const SmemSite* site, size_t bytes, size_t align) {
  for (const StaticArray& a : L->statics) {
    if (a.site != site) continue;
    if (a.bytes != bytes)
      failf("shared array %s (%s:%d) declared with %zu bytes here and %zu bytes by another thread", site->name,
            site->file, site->line, bytes, a.bytes);
    return a.p;
  }
  const size_t off = (L->arena_used + align - 1) & ~(align - 1);
  L->static_bytes += bytes;
  if (static_cast<int64_t>(L->static_bytes) > kSharedDefault)
    failf("static shared memory of %zu bytes (with %s, %s:%d) exceeds 49152 bytes", L->static_bytes, site->name,
          site->file, site->line);
  if (static_cast<int64_t>(L->static_bytes) + L->dyn > L->limit || off + bytes > kArenaBytes)
    failf("shared memory of %zu static + %lld dynamic bytes (with %s, %s:%d) exceeds the block's limit of %lld "
          "bytes", L->static_bytes, (long long)L->dyn, site->name, site->file, site->line,
          (long long)L->limit);
  void* p = g_arena + off;
  memset(p, 0xff, bytes);
  L->arena_used = off + bytes;
  L->statics.push_back(StaticArray{site, p, bytes});
  return p;
}

void* shared_dynamic(int64_t* bytes) {
  *bytes = L->dyn;
  return g_arena;
}

cudaError_t set_max_dynamic_shared(const void* func, int bytes) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (bytes < 0 || bytes > kSharedOptIn) return g_last_error = cudaErrorInvalidValue;
  g_max_dyn[func] = bytes;
  return cudaSuccess;
}

cudaError_t last_error(bool clear) {
  const cudaError_t e = g_last_error;
  if (clear) g_last_error = cudaSuccess;
  return e;
}

void launch(const char* kernel, tcc_exec* exec, Dim grid, Dim block, int64_t shared_bytes, const void* func,
            void (*thunk)(void*), void* ctx) {
  tcc_exec* const ex = exec ? exec : default_exec();
  if (g_cur) {  // a kernel launching a kernel (dynamic parallelism)
    failf("launches %s from device code (not supported by the emulator)", kernel);
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  auto attr = g_max_dyn.find(func);
  const int64_t max_dyn = attr != g_max_dyn.end() ? attr->second : kSharedDefault;
  const std::string bad = check_config(grid, block, shared_bytes, max_dyn);
  if (!bad.empty()) {
    g_last_error = bad[0] == 'd' ? cudaErrorInvalidValue : cudaErrorInvalidConfiguration;
    record_exec_error(ex, std::string(kernel) + ": " + bad);
    return;
  }
  if (!g_arena) {
    g_page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    g_arena = static_cast<unsigned char*>(aligned_alloc(4096, kArenaBytes));
    g_order.resize(kMaxThreads);
  }
  Launch launch_state;
  Launch* const l = &launch_state;
  l->kernel = kernel;
  l->grid = grid;
  l->block = block;
  l->dyn = shared_bytes;
  l->limit = max_dyn > kSharedDefault ? kSharedOptIn : kSharedDefault;
  l->thunk = thunk;
  l->ctx = ctx;
  l->n = static_cast<int>(block.x * block.y * block.z);
  L = l;
  g_rng = g_seed * 0x9E3779B97F4A7C15ull + 1;
  g_block.grid_dim = dim3(grid.x, grid.y, grid.z);
  g_block.block_dim = dim3(block.x, block.y, block.z);
  g_launch_thread = pthread_self();
  start_watchdog();
  install_fault_handlers();
  g_in_launch = true;
  if (sigsetjmp(g_fault_jmp, 1) == 0) {
    for (int64_t z = 0; z < grid.z && !l->failed; ++z)
      for (int64_t y = 0; y < grid.y && !l->failed; ++y)
        for (int64_t x = 0; x < grid.x; ++x) {
          g_block.block_idx = uint3{static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z)};
          if (!run_block()) break;
        }
  } else {
    Thread* t = g_cur;
    g_cur = nullptr;
    record_failure(t, fault_message(t));
  }
  g_in_launch = false;
  remove_fault_handlers();
  if (l->failed) {  // the fibers left mid-kernel: their stacks start clean next time (ASan's poison)
    for (int i = 0; i < l->n; ++i)
      if (g_threads[i].state != Done) g_stacks[i].abandoned = true;
  }
  g_cur = nullptr;
  L = nullptr;
  if (l->failed) record_exec_error(ex, l->error);  // (not cudaGetLastError's: tcc_cuda_check_launch reads that)
  note_device_error(ex, kernel);
}

bool capturing(tcc_exec* exec) { return exec != nullptr && exec->recording != nullptr; }

void record(const char* kernel, tcc_exec* exec, Dim grid, Dim block, int64_t shared_bytes, const void* func,
            void (*thunk)(void*), void* ctx, void (*destroy)(void*)) {
  if (g_cur) {  // a kernel launching a kernel: refused as when not capturing
    destroy(ctx);
    failf("launches %s from device code (not supported by the emulator)", kernel);
  }
  exec->recording->launches.push_back({kernel, grid, block, shared_bytes, func, thunk, ctx, destroy});
}

}  // namespace tcc_simt

// ---- the device runtime ---------------------------------------------------------------------------------------
extern "C" {

// The harness's race detector: 0 runs a block's threads in order between barriers; any other seed runs them
// in a random order drawn from it, fresh for every pass of the scheduler.
void tcc_simt_set_seed(uint64_t seed) { g_seed = seed; }

// Seconds without a fiber switch before a launch fails with "no progress" (default 30).
void tcc_simt_set_watchdog(int seconds) { g_watchdog_seconds = seconds > 0 ? seconds : 30; }

// 1 (default): the mma/ldmatrix fallbacks read the other lanes' registers through one warp_gather; 0: through
// __shfl_sync, as the portable fallback does elsewhere (both compute the same; tests run both).
void tcc_simt_set_fast_fragments(int on) { g_fast_fragments = on != 0; }

tcc_exec* tcc_exec_create(int n_threads) {
  tcc_exec* exec = new tcc_exec;
  exec->threads = n_threads <= 0 ? 1 : (n_threads > 1024 ? 1024 : n_threads);
  exec->slot = static_cast<tcc_cuda_error*>(aligned_alloc(64, 64));
  memset(exec->slot, 0, 64);
  return exec;
}

void tcc_exec_destroy(tcc_exec* exec) {
  if (!exec) return;
  delete exec->recording;
  free(exec->slot);
  delete exec;
}

int tcc_exec_threads(const tcc_exec* exec) { return exec ? exec->threads : 1; }

int tcc_exec_sync(tcc_exec* exec) {
  if (!exec) exec = default_exec();
  note_device_error(exec, nullptr);  // a slot written outside a launch (never by tcc's own kernels)
  return exec->error.empty() ? 0 : 1;
}

const char* tcc_exec_error(const tcc_exec* exec) {
  if (!exec) exec = default_exec();
  return exec->error.c_str();
}

void tcc_exec_clear_error(tcc_exec* exec) {
  if (!exec) exec = default_exec();
  exec->error.clear();
  memset(exec->slot, 0, sizeof *exec->slot);
  exec->slot_reported = false;
}

void* tcc_device_alloc(tcc_exec* exec, int64_t bytes, const char** why) {
  if (exec != nullptr && exec->recording != nullptr) {  // as on the GPU: no allocation inside a graph
    record_exec_error(exec, "an allocation while capturing a graph");
    if (why) *why = "an allocation while capturing a graph";
    return nullptr;
  }
  if (bytes < 0) {
    if (why) *why = "negative allocation size";
    return nullptr;
  }
  const size_t size = (static_cast<size_t>(bytes) + TCC_DEVICE_ALIGN - 1) / TCC_DEVICE_ALIGN * TCC_DEVICE_ALIGN;
  void* p = nullptr;
  if (size >= kMappedBytes) {  // large (weights, the KV cache): zero pages from the kernel, touched lazily
    p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) p = nullptr;
  } else {
    p = aligned_alloc(TCC_DEVICE_ALIGN, size ? size : TCC_DEVICE_ALIGN);
    if (p) memset(p, 0, size);
  }
  if (!p && why) *why = "out of memory (emulated device memory is host memory)";
  return p;
}

void tcc_device_free(tcc_exec*, void* ptr, int64_t bytes) {
  if (!ptr) return;
  const size_t size = (static_cast<size_t>(bytes) + TCC_DEVICE_ALIGN - 1) / TCC_DEVICE_ALIGN * TCC_DEVICE_ALIGN;
  if (size >= kMappedBytes) munmap(ptr, size);
  else free(ptr);
}

// Copies are synchronous on the GPU device (device_cuda.cu), which a capture cannot hold: refused there too.
void tcc_device_copy_in(tcc_exec* exec, void* device_dst, const void* host_src, int64_t bytes) {
  if (exec != nullptr && exec->recording != nullptr)
    return record_exec_error(exec, "a copy to the device while capturing a graph");
  if (bytes > 0) memcpy(device_dst, host_src, static_cast<size_t>(bytes));
}

void tcc_device_copy_out(tcc_exec* exec, void* host_dst, const void* device_src, int64_t bytes) {
  if (exec != nullptr && exec->recording != nullptr)
    return record_exec_error(exec, "a copy from the device while capturing a graph");
  if (bytes > 0) memcpy(host_dst, device_src, static_cast<size_t>(bytes));
}

// The emulated device behaves like a GPU for the program: copies and syncs happen as they would there.
int tcc_device_host_visible(void) { return 0; }

// Graphs: the launches issued between begin and end are recorded, not run (as a CUDA stream capture), each
// with a copy of its arguments; a replay runs them in order through the same scheduler as a direct launch.
int tcc_exec_capture_begin(tcc_exec* exec, const char** why) {
  if (exec == nullptr || exec->recording != nullptr) {
    if (why) *why = exec ? "already capturing" : "no execution context";
    return 1;
  }
  exec->recording = new tcc_graph();
  return 0;
}

tcc_graph* tcc_exec_capture_end(tcc_exec* exec, const char** why) {
  if (exec == nullptr || exec->recording == nullptr) {
    if (why) *why = "not capturing";
    return nullptr;
  }
  tcc_graph* g = exec->recording;
  exec->recording = nullptr;
  if (!exec->error.empty()) {  // an error recorded while capturing: the capture is invalid (nothing ran)
    exec->graph_why = exec->error;
    if (why) *why = exec->graph_why.c_str();
    delete g;
    return nullptr;
  }
  return g;
}

void tcc_graph_launch(tcc_exec* exec, tcc_graph* graph) {
  if (graph == nullptr) return;
  for (const auto& r : graph->launches)
    tcc_simt::launch(r.kernel, exec, r.grid, r.block, r.shared_bytes, r.func, r.thunk, r.ctx);
}

void tcc_graph_destroy(tcc_exec*, tcc_graph* graph) { delete graph; }

void tcc_exec_set_kv_length(tcc_exec* exec, const int64_t* device_length) {
  if (exec) exec->kv_length = device_length;
}

const int64_t* tcc_exec_kv_length(const tcc_exec* exec) { return exec ? exec->kv_length : nullptr; }

cudaStream_t tcc_cuda_stream(tcc_exec*) { return nullptr; }

tcc_cuda_error* tcc_cuda_error_slot(tcc_exec* exec) { return (exec ? exec : default_exec())->slot; }

// The emulator's launches record their own errors (TCC_LAUNCH runs the kernel); a pending CUDA error from a
// runtime call (cudaFuncSetAttribute) is recorded here as on the GPU.
void tcc_cuda_check_launch(tcc_exec* exec, const char* kernel) {
  const cudaError_t e = tcc_simt::last_error(true);
  if (e != cudaSuccess)
    record_exec_error(exec ? exec : default_exec(), format("%s: %s", kernel, cudaGetErrorString(e)));
}

}  // extern "C"
