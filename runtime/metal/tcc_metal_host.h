// tcc Metal host interface: how a kernel's launcher binds its arguments and dispatches a compute kernel.
// Part of the tcc runtime library (docs/metal.md).
//
// Each Metal kernel tcc generates has a host-side launcher with its family's C signature (the same as the CPU
// and CUDA launchers: device pointers, shapes by value, the execution context last). The launcher fills a
// tcc_mtl_args (setBuffer / setBytes / setThreadgroupMemoryLength by index, as an MTLComputeCommandEncoder
// takes them) and calls tcc_mtl_dispatch, implemented
//   - on macOS by runtime/metal/device_metal.mm: encodes into the model's command buffer (one per step);
//   - in the emulation build by runtime/simt/metal_bridge.cpp: runs the kernel's grid on the CPU SIMT
//     emulator at once (through the per-kernel entry the code generator writes from the kernel's signature).
// Plain C++ (no MSL types): also compiled as Objective-C++ on macOS.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tcc_device.h"

#define TCC_MTL_SLOTS 31         // buffer / threadgroup argument indices 0..30, as Metal's argument tables
#define TCC_MTL_BYTES_POOL 2048  // setBytes data of one dispatch (Metal allows 4 KiB per argument)
#define TCC_MTL_MAX_THREADGROUP_MEMORY 32768  // bytes: every Apple GPU of the Metal 3 family guarantees 32 KiB
#define TCC_MTL_MAX_THREADS 1024  // threads per threadgroup

// A device-side error record (first one wins), laid out as tcc_cuda_error: the host reads it at the next sync.
struct tcc_mtl_error {
  int32_t code;  // 0: none; 1: an index out of range
  int32_t pad;
  int64_t value, lo, hi;
};

// What a launcher bound for one dispatch.
struct tcc_mtl_args {
  const void* buf[TCC_MTL_SLOTS];  // setBuffer (a device pointer) or setBytes (a pointer into pool)
  int32_t bytes[TCC_MTL_SLOTS];    // setBytes length (0: a buffer)
  int64_t tg[TCC_MTL_SLOTS];       // setThreadgroupMemoryLength (bytes; 0: unset)
  uint32_t bound;                  // bit i: index i was bound (setBuffer, possibly nil, or setBytes)
  int64_t used;                    // bytes of pool in use
  const char* error;               // a binding error (reported at dispatch), or null
  alignas(16) unsigned char pool[TCC_MTL_BYTES_POOL];
};

// The emulation entry of a kernel (generated from its signature; null on macOS, where the pipeline is looked
// up by name in the model's .metallib).
typedef void (*tcc_mtl_entry)(void* dispatch);
struct tcc_mtl_function {
  const char* name;
  tcc_mtl_entry simt;
};

// The Metal built-ins of a kernel's parameters, as the emulation entries ask for them
// (runtime/simt/metal_bridge.cpp).
namespace tcc_msl_simt {
enum Builtin {
  kThreadPositionInGrid, kThreadPositionInThreadgroup, kThreadgroupPositionInGrid, kThreadsPerThreadgroup,
  kThreadgroupsPerGrid, kThreadsPerGrid, kThreadIndexInThreadgroup, kSimdgroupIndexInThreadgroup,
  kThreadIndexInSimdgroup, kThreadsPerSimdgroup, kSimdgroupsPerThreadgroup, kDispatchThreadsPerThreadgroup,
};
}

// Run or encode one dispatch: per_thread != 0 is dispatchThreads (grid counts threads; the edge threadgroups
// may be partial), 0 is dispatchThreadgroups (grid counts threadgroups of size tg).
void tcc_mtl_dispatch(tcc_exec* exec, const tcc_mtl_function* fn, const tcc_mtl_args* args, const int64_t grid[3],
                      const int64_t tg[3], int per_thread);
// The context's device error record (bind it as a buffer; read at tcc_exec_sync).
tcc_mtl_error* tcc_mtl_error_slot(tcc_exec* exec);

// A launcher's encoder: bind by index, then dispatch (the arguments are copied at dispatch).
class tcc_mtl_encoder {
 public:
  tcc_mtl_encoder(tcc_exec* exec, tcc_mtl_function fn) : exec_(exec), fn_(fn) {
    memset(&args_, 0, offsetof(tcc_mtl_args, pool));
  }
  void buffer(int index, const void* p) {
    if (!slot_ok(index)) return;
    args_.buf[index] = p;
    args_.bytes[index] = 0;
    args_.bound |= 1u << index;
  }
  void bytes(int index, const void* data, size_t n) {
    if (!slot_ok(index)) return;
    const int64_t off = (args_.used + 15) & ~int64_t(15);
    if (off + static_cast<int64_t>(n) > TCC_MTL_BYTES_POOL) {
      args_.error = "setBytes data beyond the launcher's 2 KiB";
      return;
    }
    memcpy(args_.pool + off, data, n);
    args_.buf[index] = args_.pool + off;
    args_.bytes[index] = static_cast<int32_t>(n);
    args_.bound |= 1u << index;
    args_.used = off + static_cast<int64_t>(n);
  }
  template <class T>
  void value(int index, const T& v) { bytes(index, &v, sizeof v); }
  void threadgroup_memory(int index, int64_t n) {
    if (slot_ok(index)) args_.tg[index] = (n + 15) & ~int64_t(15);  // Metal: a multiple of 16 bytes
  }
  void dispatch_threads(int64_t gx, int64_t gy, int64_t gz, int64_t tx, int64_t ty, int64_t tz) {
    const int64_t g[3] = {gx, gy, gz}, t[3] = {tx, ty, tz};
    tcc_mtl_dispatch(exec_, &fn_, &args_, g, t, 1);
  }
  void dispatch_threadgroups(int64_t gx, int64_t gy, int64_t gz, int64_t tx, int64_t ty, int64_t tz) {
    const int64_t g[3] = {gx, gy, gz}, t[3] = {tx, ty, tz};
    tcc_mtl_dispatch(exec_, &fn_, &args_, g, t, 0);
  }

 private:
  bool slot_ok(int index) {
    if (index >= 0 && index < TCC_MTL_SLOTS) return true;
    args_.error = "argument index outside [0, 31)";
    return false;
  }
  tcc_exec* exec_;
  tcc_mtl_function fn_;
  tcc_mtl_args args_;
};
