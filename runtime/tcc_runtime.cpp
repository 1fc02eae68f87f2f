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

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Open a regular file for reading. O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
// refused by the fstat check); for regular files the flag has no effect.
int open_regular(const std::string& path, const std::string& what, struct stat* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) throw Error("cannot open " + what + " " + path + ": " + errno_text(errno));
  if (::fstat(fd, st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error("cannot stat " + what + " " + path + ": " + errno_text(err));
  }
  if (!S_ISREG(st->st_mode)) {
    ::close(fd);
    throw Error("cannot read " + what + " " + path + ": it is " + file_kind(st->st_mode) + ", not a regular file");
  }
  return fd;
}

// Read exactly n bytes at offset; a short read means the file shrank while we read it.
void read_exact(int fd, uint8_t* dst, size_t n, size_t offset, const std::string& path) {
  while (n > 0) {
    ssize_t got = ::pread(fd, dst, n, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw Error("cannot read " + path + ": " + errno_text(errno));
    if (got == 0) throw Error("cannot read " + path + ": the file shrank while it was read");
    dst += got;
    offset += size_t(got);
    n -= size_t(got);
  }
}

}  // namespace

// ---------------------------------------------------------------- MappedFile

MappedFile::MappedFile(const std::string& path, int64_t expected_size) : path_(path) {
  struct stat st;
  int fd = open_regular(path, "weights file", &st);
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

constexpr size_t kMaxHeaderBytes = size_t(1) << 20;  // numpy writes < 64 KiB; more is not a real header

Error bad_header(const std::string& name, size_t off, const std::string& why) {
  return Error("file " + name + ": bad .npy header at offset " + std::to_string(off) + ": " + why);
}

// The fixed preamble (magic, version, header length). `bytes` holds the first min(file_size, 12) bytes
// of a file of `file_size` bytes. Returns the header length and sets *header_start.
size_t parse_preamble(const uint8_t* bytes, size_t file_size, const std::string& name, size_t* header_start) {
  static const char magic[] = "\x93NUMPY";
  if (file_size < 10 || std::memcmp(bytes, magic, 6) != 0) throw bad_header(name, 0, "missing \\x93NUMPY magic");
  int major = bytes[6];
  size_t header_len;
  if (major == 1) {
    header_len = size_t(bytes[8]) | (size_t(bytes[9]) << 8);
    *header_start = 10;
  } else if (major == 2 || major == 3) {
    if (file_size < 12) throw bad_header(name, 8, "truncated header length");
    header_len = size_t(bytes[8]) | (size_t(bytes[9]) << 8) | (size_t(bytes[10]) << 16) | (size_t(bytes[11]) << 24);
    *header_start = 12;
  } else {
    throw bad_header(name, 6, "unsupported format version " + std::to_string(major));
  }
  if (header_len > file_size - *header_start)
    throw bad_header(name, *header_start,
                     "header length " + std::to_string(header_len) + " runs past the end of the file");
  if (header_len > kMaxHeaderBytes)
    throw bad_header(name, *header_start, "header length " + std::to_string(header_len) + " is implausibly long");
  return header_len;
}

// The header dict (descr, fortran_order, shape): an NpyArray without data.
NpyArray parse_header(const uint8_t* text, size_t header_len, size_t header_start, const std::string& name) {
  HeaderParser p{reinterpret_cast<const char*>(text), header_len, header_start, name};
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
  return out;
}

// Bytes of data the header declares, or an error when the shape's size does not fit in 63 bits (the
// product of a few 18-digit dims would wrap around and could then "match" the file size).
size_t declared_bytes(const NpyArray& a, const std::string& name) {
  int64_t n = int64_t(a.itemsize());
  for (int64_t d : a.shape) {
    if (d == 0) return 0;
    if (__builtin_mul_overflow(n, d, &n))
      throw Error("file " + name + ": the .npy header's shape declares more than 2^63 bytes of data");
  }
  return size_t(n);
}

void check_data_size(size_t have, size_t want, const NpyArray& a, const std::string& name) {
  if (have != want)
    throw Error("file " + name + ": .npy data has " + std::to_string(have) + " bytes, expected " +
                std::to_string(want) + " for dtype " + a.dtype + " and its shape");
}

}  // namespace

NpyArray parse_npy(const uint8_t* bytes, size_t size, const std::string& name) {
  size_t header_start;
  size_t header_len = parse_preamble(bytes, size, name, &header_start);
  NpyArray out = parse_header(bytes + header_start, header_len, header_start, name);
  size_t data_start = header_start + header_len;
  check_data_size(size - data_start, declared_bytes(out, name), out, name);
  out.data.assign(bytes + data_start, bytes + size);
  return out;
}

NpyReader::NpyReader(const std::string& path) : path_(path) {
  struct stat st;
  fd_ = open_regular(path, "file", &st);
  try {
    const size_t size = size_t(st.st_size);
    uint8_t pre[12] = {};
    read_exact(fd_, pre, size < sizeof pre ? size : sizeof pre, 0, path);
    size_t header_start;
    size_t header_len = parse_preamble(pre, size, path, &header_start);
    std::vector<uint8_t> text(header_len);
    read_exact(fd_, text.data(), header_len, header_start, path);
    header_ = parse_header(text.data(), header_len, header_start, path);
    data_start_ = header_start + header_len;
    data_bytes_ = declared_bytes(header_, path);
    check_data_size(size - data_start_, data_bytes_, header_, path);
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

NpyReader::~NpyReader() {
  if (fd_ >= 0) ::close(fd_);
}

NpyReader::NpyReader(NpyReader&& o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), data_start_(o.data_start_), data_bytes_(o.data_bytes_),
      header_(std::move(o.header_)) {
  o.fd_ = -1;
}

NpyArray NpyReader::read() {
  NpyArray out = header_;
  out.data.resize(data_bytes_);
  read_exact(fd_, out.data.data(), data_bytes_, data_start_, path_);
  return out;
}

namespace {

// write(2) all of [data, data + n), retrying short writes; false with errno set on failure.
bool write_all(int fd, const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t put = ::write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) return false;
    if (put == 0) {
      errno = ENOSPC;
      return false;
    }
    p += put;
    n -= size_t(put);
  }
  return true;
}

}  // namespace

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

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0666);
  if (fd < 0) throw Error("cannot create " + path + ": " + errno_text(errno));
  bool ok = write_all(fd, head, sizeof head) && write_all(fd, dict.data(), dict.size()) &&
            write_all(fd, data, numel * itemsize);
  int err = ok ? 0 : errno;
  struct stat st;
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  // close() reports errors a network or quota-limited filesystem only notices at the end.
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    struct stat lst;  // a partial .npy would load as garbage later; remove it (never a device or symlink)
    if (regular && ::lstat(path.c_str(), &lst) == 0 && S_ISREG(lst.st_mode)) ::unlink(path.c_str());
    throw Error("cannot write " + path + ": " + errno_text(err));
  }
}

void make_dirs(const std::string& path) {
  if (path.empty()) return;
  for (size_t pos = 1;; ++pos) {
    pos = path.find('/', pos);
    const std::string prefix = pos == std::string::npos ? path : path.substr(0, pos);
    if (!prefix.empty() && prefix.back() != '/' && ::mkdir(prefix.c_str(), 0777) != 0 && errno != EEXIST)
      throw Error("cannot create directory " + prefix + ": " + errno_text(errno));
    if (pos == std::string::npos) break;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw Error("cannot create directory " + path + ": " + errno_text(errno));
  if (!S_ISDIR(st.st_mode)) throw Error("cannot use " + path + " as the output directory: it is not a directory");
}

}  // namespace tcc
