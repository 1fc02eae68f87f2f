// tcc runtime helpers for generated model programs: weights mapping, the activation arena, and .npy I/O
// for the standalone `run` binary. Part of the tcc runtime library (libtcc_runtime.a).
//
// Every failure throws tcc::Error with a one-line message naming the file and the problem; the model
// program catches it at its C boundary (exceptions must not cross into ctypes).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "tcc_kernel.h"

namespace tcc {

struct Error : std::runtime_error {
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A file mapped read-only (weights). `expected_size` >= 0 checks the file size exactly, so a truncated
// or stale weights file fails at load time instead of reading garbage. Only regular files are accepted
// (a FIFO or device would block or map nothing).
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path, int64_t expected_size = -1);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Bounds-checked pointer to [offset, offset + nbytes).
  const void* at(size_t offset, size_t nbytes) const;
  template <class T>
  const T* as(size_t offset, size_t count) const {
    return static_cast<const T*>(at(offset, count * sizeof(T)));
  }

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
};

// One block for all activations, planned at compile time. Anonymous mmap: page aligned (so 64-byte
// aligned), zero filled, and pages the program never touches cost no memory.
class Arena {
 public:
  Arena() = default;
  explicit Arena(size_t size);
  ~Arena();
  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  template <class T>
  T* at(size_t offset) const { return reinterpret_cast<T*>(data_ + offset); }

 private:
  void release();
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// A dense little-endian C-order array as stored in a .npy file.
// dtype is the numpy descr: "<f4", "<f2", "<i8", "<i4", "|i1", "|u1" or "|b1".
struct NpyArray {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;

  int64_t numel() const;
  size_t itemsize() const { return npy_itemsize(dtype); }
  static size_t npy_itemsize(const std::string& dtype);  // 0 when unsupported
};

// A .npy file opened for reading in two steps: the constructor reads and checks the header, read()
// the data. Only regular files are read (a FIFO or /dev/zero is refused without blocking), and every
// read is bounded: the header by the file size, the data by the header's dtype and shape, which must
// account for the file's size exactly. Between the steps a caller can refuse the header (e.g. a shape
// over the model's bounds), so a huge declared shape is never allocated.
class NpyReader {
 public:
  explicit NpyReader(const std::string& path);
  ~NpyReader();
  NpyReader(NpyReader&& other) noexcept;
  NpyReader(const NpyReader&) = delete;
  NpyReader& operator=(const NpyReader&) = delete;
  NpyReader& operator=(NpyReader&&) = delete;

  const NpyArray& header() const { return header_; }  // dtype and shape; no data
  NpyArray read();                                     // the header plus the data

 private:
  std::string path_;
  int fd_ = -1;
  size_t data_start_ = 0, data_bytes_ = 0;
  NpyArray header_;
};

inline NpyArray read_npy(const std::string& path) { return NpyReader(path).read(); }
// Write a .npy file; throws tcc::Error naming the file and the errno text on any failure (a full disk
// included), never leaving a partial regular file behind.
void write_npy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
               const void* data);
inline void write_npy(const std::string& path, const NpyArray& a) {
  write_npy(path, a.dtype, a.shape, a.data.data());
}

// Parse .npy bytes already in memory; `name` is used in error messages.
NpyArray parse_npy(const uint8_t* bytes, size_t size, const std::string& name);

// Create a directory and its missing parents (mkdir -p); throws tcc::Error when a component exists and
// is not a directory, or cannot be created.
void make_dirs(const std::string& path);

// The kernel error state (tcc_raise / tcc_error_pending) of one model. While an ErrorScope for a slot
// is alive on a thread, the tcc_*error* functions called from that thread, and from the pool workers
// running that thread's parallel_for chunks, use the slot instead of the process-wide state, so two
// models run from two threads never clear or report each other's errors. Without a scope the
// process-wide slot is used (kernel tests call the kernels directly).
struct ErrorSlot {
  std::mutex mu;
  std::atomic<int> pending{0};
  char message[1024] = {};
};
class ErrorScope {
 public:
  explicit ErrorScope(ErrorSlot* slot);
  ~ErrorScope();
  ErrorScope(const ErrorScope&) = delete;
  ErrorScope& operator=(const ErrorScope&) = delete;

 private:
  ErrorSlot* previous_;
};

// The error slot of an execution context (tcc_device.h); the process-wide one for a null context.
ErrorSlot* exec_errors(tcc_exec* exec);

// A run on an execution context: kernels raising errors on this thread (and on the pool workers running
// its chunks) record them in the context, which starts the run with no error pending.
class ExecScope : public ErrorScope {
 public:
  explicit ExecScope(tcc_exec* exec) : ErrorScope(exec_errors(exec)) { tcc_exec_clear_error(exec); }
};

}  // namespace tcc
