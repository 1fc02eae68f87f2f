// tcc runtime helpers for generated model programs: weights mapping, the activation arena, and .npy I/O
// for the standalone `run` binary. Part of the tcc runtime library (libtcc_runtime.a).
//
// Every failure throws tcc::Error with a one-line message naming the file and the problem; the model
// program catches it at its C boundary (exceptions must not cross into ctypes).
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "tcc_kernel.h"

namespace tcc {

struct Error : std::runtime_error {
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A file mapped read-only (weights). `expected_size` >= 0 checks the file size exactly, so a truncated
// or stale weights file fails at load time instead of reading garbage.
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

NpyArray read_npy(const std::string& path);
void write_npy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
               const void* data);
inline void write_npy(const std::string& path, const NpyArray& a) {
  write_npy(path, a.dtype, a.shape, a.data.data());
}

// Parse .npy bytes already in memory; `name` is used in error messages.
NpyArray parse_npy(const uint8_t* bytes, size_t size, const std::string& name);

}  // namespace tcc
