// Implementation of runtime/tcc_runtime.h: MappedFile, Arena and .npy I/O (POSIX).
#include "tcc_runtime.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace tcc {

namespace {

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

}  // namespace

// ---------------------------------------------------------------- MappedFile

MappedFile::MappedFile(const std::string& path, int64_t expected_size) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open weights file " + path + ": " + errno_text(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error("cannot stat weights file " + path + ": " + errno_text(err));
  }
  size_ = size_t(st.st_size);
  if (expected_size >= 0 && int64_t(size_) != expected_size) {
    ::close(fd);
    throw Error("weights file " + path + " has " + std::to_string(size_) + " bytes, expected " +
                std::to_string(expected_size) + " (stale or truncated?)");
  }
  if (size_ > 0) {  // mmap of length 0 is an error; an empty file maps to nothing
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error("cannot mmap weights file " + path + " (" + std::to_string(size_) + " bytes): " + errno_text(err));
    }
    data_ = static_cast<const uint8_t*>(p);
    mapped_ = true;
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), data_(o.data_), size_(o.size_), mapped_(o.mapped_) {
  o.data_ = nullptr;
  o.size_ = 0;
  o.mapped_ = false;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    data_ = o.data_;
    size_ = o.size_;
    mapped_ = o.mapped_;
    o.data_ = nullptr;
    o.size_ = 0;
    o.mapped_ = false;
  }
  return *this;
}

void MappedFile::release() {
  if (mapped_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
  mapped_ = false;
}

const void* MappedFile::at(size_t offset, size_t nbytes) const {
  if (offset > size_ || nbytes > size_ - offset)
    throw Error("weights file " + path_ + ": range [" + std::to_string(offset) + ", " +
                std::to_string(offset + nbytes) + ") is past its end (" + std::to_string(size_) + " bytes)");
  return data_ + offset;
}

// ---------------------------------------------------------------- Arena

Arena::Arena(size_t size) : size_(size) {
  if (size == 0) return;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw Error("cannot allocate the " + std::to_string(size) + "-byte activation arena: " + errno_text(errno));
#ifdef MADV_HUGEPAGE
  if (size >= (size_t(4) << 20)) ::madvise(p, size, MADV_HUGEPAGE);  // fewer TLB misses; advisory only
#endif
  data_ = static_cast<uint8_t*>(p);
}

Arena::~Arena() { release(); }

Arena::Arena(Arena&& o) noexcept : data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    release();
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

void Arena::release() {
  if (data_) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

// ---------------------------------------------------------------- .npy

size_t NpyArray::npy_itemsize(const std::string& d) {
  if (d == "<f4" || d == "<i4") return 4;
  if (d == "<f2") return 2;
  if (d == "<i8") return 8;
  if (d == "|i1" || d == "|u1" || d == "|b1") return 1;
  return 0;
}

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

namespace {

// A tiny parser for the Python-literal dict numpy writes: {'descr': '<f4', 'fortran_order': False,
// 'shape': (2, 3), }. Positions are byte offsets in the file, for the error message.
struct HeaderParser {
  const char* text;
  size_t len;
  size_t base;  // file offset of text[0]
  const std::string& name;
  size_t pos = 0;

  [[noreturn]] void fail(const std::string& why) const {
    throw Error("file " + name + ": bad .npy header at offset " + std::to_string(base + pos) + ": " + why);
  }
  void skip_ws() {
    while (pos < len && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\n')) ++pos;
  }
  bool accept(char c) {
    skip_ws();
    if (pos < len && text[pos] == c) {
      ++pos;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) fail(std::string("expected '") + c + "'");
  }
  std::string string_literal() {
    skip_ws();
    if (pos >= len || (text[pos] != '\'' && text[pos] != '"')) fail("expected a quoted string");
    char q = text[pos++];
    size_t start = pos;
    while (pos < len && text[pos] != q) ++pos;
    if (pos >= len) fail("unterminated string");
    return std::string(text + start, text + pos++);
  }
  std::string word() {
    skip_ws();
    size_t start = pos;
    while (pos < len && (std::isalnum(static_cast<unsigned char>(text[pos])) || text[pos] == '_')) ++pos;
    if (start == pos) fail("expected a value");
    return std::string(text + start, text + pos);
  }
  int64_t integer() {
    std::string w = word();
    if (w.empty() || w.find_first_not_of("0123456789") != std::string::npos || w.size() > 18)
      fail("expected a non-negative dimension, got '" + w + "'");
    return std::stoll(w);
  }
};

}  // namespace

NpyArray parse_npy(const uint8_t* bytes, size_t size, const std::string& name) {
  auto bad = [&](size_t off, const std::string& why) -> Error {
    return Error("file " + name + ": bad .npy header at offset " + std::to_string(off) + ": " + why);
  };
  static const char magic[] = "\x93NUMPY";
  if (size < 10 || std::memcmp(bytes, magic, 6) != 0) throw bad(0, "missing \\x93NUMPY magic");
  int major = bytes[6];
  size_t header_len, header_start;
  if (major == 1) {
    header_len = size_t(bytes[8]) | (size_t(bytes[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) throw bad(8, "truncated header length");
    header_len = size_t(bytes[8]) | (size_t(bytes[9]) << 8) | (size_t(bytes[10]) << 16) | (size_t(bytes[11]) << 24);
    header_start = 12;
  } else {
    throw bad(6, "unsupported format version " + std::to_string(major));
  }
  if (header_len > size - header_start)
    throw bad(header_start, "header length " + std::to_string(header_len) + " runs past the end of the file");

  HeaderParser p{reinterpret_cast<const char*>(bytes + header_start), header_len, header_start, name};
  NpyArray out;
  bool have_descr = false, have_order = false, have_shape = false;
  p.expect('{');
  while (!p.accept('}')) {
    std::string key = p.string_literal();
    p.expect(':');
    if (key == "descr") {
      size_t at = p.pos;
      out.dtype = p.string_literal();
      if (NpyArray::npy_itemsize(out.dtype) == 0) {
        p.pos = at;
        p.fail("unsupported dtype '" + out.dtype + "' (supported: <f4 <f2 <i8 <i4 |i1 |u1 |b1)");
      }
      have_descr = true;
    } else if (key == "fortran_order") {
      size_t at = p.pos;
      std::string v = p.word();
      if (v != "False" && v != "True") p.fail("fortran_order must be True or False");
      if (v == "True") {
        p.pos = at;
        p.fail("Fortran-order arrays are not supported (save with np.ascontiguousarray)");
      }
      have_order = true;
    } else if (key == "shape") {
      p.expect('(');
      while (!p.accept(')')) {
        out.shape.push_back(p.integer());
        if (!p.accept(',')) {
          p.expect(')');
          break;
        }
      }
      have_shape = true;
    } else {
      p.fail("unexpected key '" + key + "'");
    }
    if (!p.accept(',')) {
      p.expect('}');
      break;
    }
  }
  if (!have_descr || !have_order || !have_shape) p.fail("missing 'descr', 'fortran_order' or 'shape'");

  size_t data_start = header_start + header_len;
  size_t want = size_t(out.numel()) * out.itemsize();
  if (size - data_start != want)
    throw Error("file " + name + ": .npy data has " + std::to_string(size - data_start) + " bytes, expected " +
                std::to_string(want) + " for dtype " + out.dtype + " and its shape");
  out.data.assign(bytes + data_start, bytes + size);
  return out;
}

NpyArray read_npy(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error("cannot open " + path + ": " + errno_text(errno));
  std::vector<uint8_t> bytes;
  uint8_t buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.insert(bytes.end(), buf, buf + got);
  bool failed = std::ferror(f);
  std::fclose(f);
  if (failed) throw Error("cannot read " + path);
  return parse_npy(bytes.data(), bytes.size(), path);
}

void write_npy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
               const void* data) {
  size_t itemsize = NpyArray::npy_itemsize(dtype);
  if (itemsize == 0) throw Error("cannot write " + path + ": unsupported dtype '" + dtype + "'");
  std::string dict = "{'descr': '" + dtype + "', 'fortran_order': False, 'shape': (";
  size_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) dict += " ";
    numel *= size_t(shape[i]);
  }
  dict += "), }";
  // Version 1.0: pad with spaces so the data starts at a multiple of 64, newline terminated.
  size_t total = 10 + dict.size() + 1;
  size_t padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict += '\n';
  uint8_t head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, uint8_t(dict.size() & 0xff), uint8_t(dict.size() >> 8)};

  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw Error("cannot create " + path + ": " + errno_text(errno));
  bool ok = std::fwrite(head, 1, 10, f) == 10 && std::fwrite(dict.data(), 1, dict.size(), f) == dict.size() &&
            std::fwrite(data, itemsize, numel, f) == numel;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) throw Error("cannot write " + path + ": " + errno_text(errno));
}

}  // namespace tcc
