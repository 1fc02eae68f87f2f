// The Metal device of the tcc runtime (tcc_device.h, tcc_metal_host.h) for macOS: a model's execution context is
// one MTLCommandQueue plus the command buffer being encoded, the model's .metallib and a device-side error
// record. Part of the tcc runtime library, built (Objective-C++, ARC) instead of runtime/runtime.cpp's CPU device
// by a Metal artifact's macOS project (metal/CMakeLists.txt, written by codegen/metal_host.py).
//
// UNVERIFIED: written to Apple's documented API without a Mac or a Metal compiler at hand (docs/metal.md says
// what was and was not checked). The Linux emulation build (runtime/simt/metal_bridge.cpp) implements the same
// tcc_mtl_dispatch on the SIMT emulator and is what tcc's tests run.
//
// Memory: every tcc_device_alloc is one MTLBuffer in shared storage (Apple GPUs share memory with the CPU); its
// contents pointer is the "device pointer" the program and the launchers pass around, and a dispatch binds a
// pointer as (the buffer containing it, the offset into it). The program still copies its inputs in and outputs
// out (tcc_device_host_visible() is 0), which here are memcpys after the pending work finished.
// Work: the launchers' dispatches are encoded into one compute encoder of the current command buffer (serial
// dispatch: each sees the previous one's writes); tcc_exec_sync commits it and waits, so a decode step is one
// command buffer. Errors: a command buffer's error, a binding of memory that is not a device buffer, a missing
// pipeline, or an index a kernel found out of range (the error record) fail the next sync with one line.
// Token selection (tcc_device_select) is runtime/metal/select_metal.cpp: its kernel (select.metal, in the same
// .metallib) is encoded through tcc_mtl_dispatch below like any other, after the step's kernels.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <dlfcn.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <map>
#include <mutex>
#include <string>

#include "tcc_metal_host.h"

struct tcc_exec {
  id<MTLDevice> device = nil;
  id<MTLCommandQueue> queue = nil;
  id<MTLLibrary> library = nil;
  id<MTLCommandBuffer> cmd = nil;
  id<MTLComputeCommandEncoder> enc = nil;
  NSMutableDictionary<NSString*, id<MTLComputePipelineState>>* pipelines = nil;
  tcc_mtl_error* error = nullptr;  // contents of an allocated buffer (registered like any device memory)
  std::mutex mu;
  int pending = 0;
  char message[1024] = {};
};

namespace {

struct Allocation {
  id<MTLBuffer> buffer;
  size_t length;
};
std::mutex g_alloc_mu;
std::map<uintptr_t, Allocation> g_allocs;  // contents address -> buffer

id<MTLDevice> g_default_device() {
  static id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  return device;
}

void record(tcc_exec* exec, const char* fmt, ...) {
  if (exec == nullptr) return;
  std::lock_guard<std::mutex> lock(exec->mu);
  if (exec->pending) return;  // the first error wins until cleared
  va_list args;
  va_start(args, fmt);
  vsnprintf(exec->message, sizeof exec->message, fmt, args);
  va_end(args);
  exec->pending = 1;
}

// The buffer holding `p` and p's offset in it (nil when p is not device memory).
id<MTLBuffer> lookup(const void* p, NSUInteger* offset) {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nil;
  --it;
  if (a >= it->first + it->second.length) return nil;
  *offset = a - it->first;
  return it->second.buffer;
}

// The .metallib beside the library holding this code (libmodel.dylib): model.metallib.
id<MTLLibrary> load_library(id<MTLDevice> device) {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&tcc_exec_create), &info) == 0 || info.dli_fname == nullptr) return nil;
  std::string dir(info.dli_fname);
  dir = dir.substr(0, dir.find_last_of('/') == std::string::npos ? 0 : dir.find_last_of('/'));
  NSString* path = [NSString stringWithUTF8String:(dir + "/model.metallib").c_str()];
  NSError* err = nil;
  id<MTLLibrary> lib = [device newLibraryWithURL:[NSURL fileURLWithPath:path] error:&err];
  return lib;
}

// Commit the encoded work and wait for it (a sync point).
void flush(tcc_exec* exec) {
  if (exec == nullptr || exec->cmd == nil) return;
  [exec->enc endEncoding];
  [exec->cmd commit];
  [exec->cmd waitUntilCompleted];
  if (exec->cmd.error != nil)
    record(exec, "Metal command buffer failed: %s", exec->cmd.error.localizedDescription.UTF8String);
  exec->enc = nil;
  exec->cmd = nil;
}

id<MTLComputeCommandEncoder> encoder(tcc_exec* exec) {
  if (exec->enc == nil) {
    exec->cmd = [exec->queue commandBuffer];
    exec->enc = [exec->cmd computeCommandEncoderWithDispatchType:MTLDispatchTypeSerial];
  }
  return exec->enc;
}

id<MTLComputePipelineState> pipeline(tcc_exec* exec, const char* name) {
  NSString* key = [NSString stringWithUTF8String:name];
  id<MTLComputePipelineState> p = exec->pipelines[key];
  if (p != nil) return p;
  id<MTLFunction> fn = [exec->library newFunctionWithName:key];
  if (fn == nil) {
    record(exec, "%s: no such kernel in model.metallib", name);
    return nil;
  }
  NSError* err = nil;
  p = [exec->device newComputePipelineStateWithFunction:fn error:&err];
  if (p == nil) {
    record(exec, "%s: pipeline creation failed: %s", name, err.localizedDescription.UTF8String);
    return nil;
  }
  exec->pipelines[key] = p;
  return p;
}

}  // namespace

extern "C" {

tcc_exec* tcc_exec_create(int) {
  id<MTLDevice> device = g_default_device();
  if (device == nil) return nullptr;
  tcc_exec* exec = new tcc_exec();
  exec->device = device;
  exec->queue = [device newCommandQueue];
  exec->library = load_library(device);
  exec->pipelines = [NSMutableDictionary dictionary];
  exec->error = static_cast<tcc_mtl_error*>(tcc_device_alloc(exec, sizeof(tcc_mtl_error), nullptr));
  if (exec->queue == nil || exec->library == nil || exec->error == nullptr) {
    tcc_exec_destroy(exec);
    return nullptr;
  }
  return exec;
}

void tcc_exec_destroy(tcc_exec* exec) {
  if (exec == nullptr) return;
  flush(exec);
  if (exec->error) tcc_device_free(exec, exec->error, sizeof(tcc_mtl_error));
  delete exec;
}

int tcc_exec_threads(const tcc_exec*) { return 1; }

int tcc_exec_sync(tcc_exec* exec) {
  if (exec == nullptr) return 0;
  flush(exec);
  if (exec->error->code != 0) {
    record(exec, "index %" PRId64 " out of range [%" PRId64 ", %" PRId64 ")", exec->error->value, exec->error->lo,
           exec->error->hi);
    memset(exec->error, 0, sizeof *exec->error);
  }
  std::lock_guard<std::mutex> lock(exec->mu);
  return exec->pending;
}

const char* tcc_exec_error(const tcc_exec* exec) { return exec && exec->pending ? exec->message : ""; }

void tcc_exec_clear_error(tcc_exec* exec) {
  if (exec == nullptr) return;
  std::lock_guard<std::mutex> lock(exec->mu);
  exec->pending = 0;
  exec->message[0] = '\0';
}

void* tcc_device_alloc(tcc_exec* exec, int64_t bytes, const char** why) {
  id<MTLDevice> device = exec ? exec->device : g_default_device();
  const size_t size = bytes > 0 ? size_t(bytes) : 256;
  id<MTLBuffer> buf = device ? [device newBufferWithLength:size options:MTLResourceStorageModeShared] : nil;
  if (buf == nil) {
    if (why) *why = "Metal buffer allocation failed";
    return nullptr;
  }
  memset(buf.contents, 0, size);
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  g_allocs[reinterpret_cast<uintptr_t>(buf.contents)] = Allocation{buf, size};
  return buf.contents;
}

void tcc_device_free(tcc_exec* exec, void* ptr, int64_t) {
  if (ptr == nullptr) return;
  flush(exec);  // no encoded work may still use it
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  g_allocs.erase(reinterpret_cast<uintptr_t>(ptr));
}

void tcc_device_copy_in(tcc_exec* exec, void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  flush(exec);  // shared memory: the copy is a memcpy once no encoded work reads or writes it
  memcpy(dst, src, size_t(bytes));
}

void tcc_device_copy_out(tcc_exec* exec, void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  flush(exec);
  memcpy(dst, src, size_t(bytes));
}

int tcc_device_host_visible(void) { return 0; }

}  // extern "C"

tcc_mtl_error* tcc_mtl_error_slot(tcc_exec* exec) { return exec ? exec->error : nullptr; }

void tcc_mtl_dispatch(tcc_exec* exec, const tcc_mtl_function* fn, const tcc_mtl_args* args, const int64_t grid[3],
                      const int64_t tg[3], int per_thread) {
  if (args->error) return record(exec, "%s: %s", fn->name, args->error);
  id<MTLComputePipelineState> p = pipeline(exec, fn->name);
  if (p == nil) return;
  if (tg[0] * tg[1] * tg[2] > (int64_t)p.maxTotalThreadsPerThreadgroup)
    return record(exec, "%s: %" PRId64 " threads per threadgroup exceed the pipeline's %lu", fn->name,
                  tg[0] * tg[1] * tg[2], (unsigned long)p.maxTotalThreadsPerThreadgroup);
  id<MTLComputeCommandEncoder> enc = encoder(exec);
  [enc setComputePipelineState:p];
  for (int i = 0; i < TCC_MTL_SLOTS; ++i) {
    if ((args->bound >> i) & 1u) {
      if (args->bytes[i] > 0) {
        [enc setBytes:args->buf[i] length:NSUInteger(args->bytes[i]) atIndex:NSUInteger(i)];
      } else if (args->buf[i] == nullptr) {
        [enc setBuffer:nil offset:0 atIndex:NSUInteger(i)];
      } else {
        NSUInteger offset = 0;
        id<MTLBuffer> buf = lookup(args->buf[i], &offset);
        if (buf == nil) return record(exec, "%s: argument %d is not device memory", fn->name, i);
        [enc setBuffer:buf offset:offset atIndex:NSUInteger(i)];
      }
    }
    if (args->tg[i] > 0) [enc setThreadgroupMemoryLength:NSUInteger(args->tg[i]) atIndex:NSUInteger(i)];
  }
  const MTLSize g = MTLSizeMake(NSUInteger(grid[0]), NSUInteger(grid[1]), NSUInteger(grid[2]));
  const MTLSize t = MTLSizeMake(NSUInteger(tg[0]), NSUInteger(tg[1]), NSUInteger(tg[2]));
  if (per_thread)
    [enc dispatchThreads:g threadsPerThreadgroup:t];  // non-uniform threadgroups: Apple7 family and newer
  else
    [enc dispatchThreadgroups:g threadsPerThreadgroup:t];
}
