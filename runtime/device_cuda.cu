// The CUDA device of the tcc runtime (tcc_device.h, tcc_cuda.h): a model's execution context is one CUDA
// stream on the current device plus a device-side error slot. Part of the tcc runtime library, built
// instead of runtime/runtime.cpp's CPU device when a program targets cuda (CMakeLists.txt: TCC_DEVICE).
//
// Kernels are launched asynchronously on the stream; errors surface at sync points: a launch error
// (tcc_cuda_check_launch), a fault reported by the runtime at synchronization, or an index a kernel found
// out of range (tcc_cuda_fail into the error slot, copied back at tcc_exec_sync).
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>

#include "tcc_cuda.h"

struct tcc_exec {
  cudaStream_t stream = nullptr;
  tcc_cuda_error* error_dev = nullptr;  // device memory, zeroed
  std::mutex mu;
  int pending = 0;
  char message[1024] = {};
  bool capturing = false;                // between tcc_exec_capture_begin and _end (graphs)
  const int64_t* kv_length = nullptr;    // tcc_exec_set_kv_length: device memory
  char graph_why[256] = {};              // why the last capture failed
};

// An instantiated CUDA graph (tcc_device.h "Graphs").
struct tcc_graph {
  cudaGraphExec_t exec = nullptr;
};

namespace {
void record(tcc_exec* exec, const char* fmt, ...) {
  if (exec == nullptr) return;
  std::lock_guard<std::mutex> lock(exec->mu);
  if (exec->pending) return;  // the first error wins until cleared
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(exec->message, sizeof exec->message, fmt, args);
  va_end(args);
  exec->pending = 1;
}

bool check(tcc_exec* exec, cudaError_t err, const char* what) {
  if (err == cudaSuccess) return true;
  record(exec, "CUDA %s failed: %s", what, cudaGetErrorString(err));
  return false;
}
}  // namespace

extern "C" {

tcc_exec* tcc_exec_create(int) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return nullptr;
  tcc_exec* exec = new (std::nothrow) tcc_exec();
  if (exec == nullptr) return nullptr;
  if (cudaStreamCreateWithFlags(&exec->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc(reinterpret_cast<void**>(&exec->error_dev), sizeof(tcc_cuda_error)) != cudaSuccess ||
      cudaMemset(exec->error_dev, 0, sizeof(tcc_cuda_error)) != cudaSuccess) {
    tcc_exec_destroy(exec);
    return nullptr;
  }
  return exec;
}

void tcc_exec_destroy(tcc_exec* exec) {
  if (exec == nullptr) return;
  if (exec->stream) {
    cudaStreamSynchronize(exec->stream);
    cudaStreamDestroy(exec->stream);
  }
  if (exec->error_dev) cudaFree(exec->error_dev);
  delete exec;
}

int tcc_exec_threads(const tcc_exec*) { return 1; }

int tcc_exec_sync(tcc_exec* exec) {
  if (exec == nullptr) return 0;
  if (exec->capturing) {  // nothing runs while capturing, and a stream sync would invalidate the capture
    std::lock_guard<std::mutex> lock(exec->mu);
    return exec->pending;
  }
  if (check(exec, cudaStreamSynchronize(exec->stream), "kernel execution")) {
    tcc_cuda_error err;
    if (check(exec, cudaMemcpy(&err, exec->error_dev, sizeof err, cudaMemcpyDeviceToHost), "error read-back") &&
        err.code != 0) {
      record(exec, "index %" PRId64 " out of range [%" PRId64 ", %" PRId64 ")", err.value, err.lo, err.hi);
      cudaMemset(exec->error_dev, 0, sizeof(tcc_cuda_error));
    }
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
  void* p = nullptr;
  if (exec != nullptr && exec->capturing) {  // (the emulator refuses it too: a program must not do it)
    record(exec, "an allocation while capturing a graph");
    if (why) *why = "an allocation while capturing a graph";
    return nullptr;
  }
  const size_t size = bytes > 0 ? size_t(bytes) : 256;
  cudaError_t err = cudaMalloc(&p, size);
  if (err == cudaSuccess) err = cudaMemset(p, 0, size);
  if (err != cudaSuccess) {
    if (p) cudaFree(p);
    if (why) *why = cudaGetErrorString(err);
    return nullptr;
  }
  return p;
}

void tcc_device_free(tcc_exec*, void* ptr, int64_t) {
  if (ptr) cudaFree(ptr);
}

// Host memory the caller owns may be reused as soon as these return: the copies complete (in stream order).
void tcc_device_copy_in(tcc_exec* exec, void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  if (exec->capturing) return record(exec, "a copy to the device while capturing a graph");
  check(exec, cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyHostToDevice, exec->stream), "copy to device");
  check(exec, cudaStreamSynchronize(exec->stream), "copy to device");
}

void tcc_device_copy_out(tcc_exec* exec, void* dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return;
  if (exec->capturing) return record(exec, "a copy from the device while capturing a graph");
  check(exec, cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToHost, exec->stream), "copy from device");
  check(exec, cudaStreamSynchronize(exec->stream), "copy from device");
}

int tcc_device_host_visible(void) { return 0; }

// Graphs: stream capture. Relaxed mode: a runtime call of this thread that is not a stream operation (a
// launcher's cudaFuncSetAttribute) stays legal while capturing; the program issues no sync, copy or
// allocation between begin and end (the copies above refuse, tcc_exec_sync does not wait).
int tcc_exec_capture_begin(tcc_exec* exec, const char** why) {
  if (exec == nullptr || exec->capturing) {
    if (why) *why = exec ? "already capturing" : "no execution context";
    return 1;
  }
  const cudaError_t err = cudaStreamBeginCapture(exec->stream, cudaStreamCaptureModeRelaxed);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: leave no error for the next launch check
    if (why) *why = cudaGetErrorString(err);
    return 1;
  }
  exec->capturing = true;
  return 0;
}

tcc_graph* tcc_exec_capture_end(tcc_exec* exec, const char** why) {
  if (exec == nullptr || !exec->capturing) {
    if (why) *why = "not capturing";
    return nullptr;
  }
  exec->capturing = false;
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(exec->stream, &graph);
  int pending;
  {
    std::lock_guard<std::mutex> lock(exec->mu);
    pending = exec->pending;
    if (pending) std::snprintf(exec->graph_why, sizeof exec->graph_why, "%s", exec->message);
  }
  cudaGraphExec_t instance = nullptr;
  if (err == cudaSuccess && !pending) err = cudaGraphInstantiate(&instance, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    std::snprintf(exec->graph_why, sizeof exec->graph_why, "%s", cudaGetErrorString(err));
  }
  tcc_graph* g = (err == cudaSuccess && !pending) ? new (std::nothrow) tcc_graph() : nullptr;
  if (g == nullptr) {
    if (instance != nullptr) cudaGraphExecDestroy(instance);
    if (err == cudaSuccess && !pending) std::snprintf(exec->graph_why, sizeof exec->graph_why, "out of memory");
    if (why) *why = exec->graph_why;
    return nullptr;
  }
  g->exec = instance;
  return g;
}

void tcc_graph_launch(tcc_exec* exec, tcc_graph* graph) {
  if (exec == nullptr || graph == nullptr) return;
  check(exec, cudaGraphLaunch(graph->exec, exec->stream), "graph launch");
}

void tcc_graph_destroy(tcc_exec* exec, tcc_graph* graph) {
  if (graph == nullptr) return;
  if (exec != nullptr) cudaStreamSynchronize(exec->stream);  // a replay in flight still uses it
  cudaGraphExecDestroy(graph->exec);
  delete graph;
}

void tcc_exec_set_kv_length(tcc_exec* exec, const int64_t* device_length) {
  if (exec) exec->kv_length = device_length;
}

const int64_t* tcc_exec_kv_length(const tcc_exec* exec) { return exec ? exec->kv_length : nullptr; }

cudaStream_t tcc_cuda_stream(tcc_exec* exec) { return exec ? exec->stream : nullptr; }

tcc_cuda_error* tcc_cuda_error_slot(tcc_exec* exec) { return exec ? exec->error_dev : nullptr; }

void tcc_cuda_check_launch(tcc_exec* exec, const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) record(exec, "launch of %s failed: %s", kernel, cudaGetErrorString(err));
}

}  // extern "C"
