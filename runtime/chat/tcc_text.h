// A reader of tcc's line-based text files (tokenizer.tcc, chat.tcc; docs/formats.md, "Chat files"), so the
// chat binary needs no JSON library. A record is one line of fields separated by single spaces; the first
// field is its keyword. String fields are UTF-8 with every byte outside '!'..'~' and '%' written as %XX, and
// the empty string as a lone '%'. Every read is bounds-checked: a malformed or truncated file throws a
// FormatError whose one-line message is "PATH:LINE: what is wrong".
#pragma once

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace tcc::chat {

class FormatError : public std::runtime_error {
 public:
  explicit FormatError(const std::string& msg) : std::runtime_error(msg) {}
};

// An error message as one line: control characters (a newline in a damaged file's string) become spaces.
inline std::string one_line(std::string msg) {
  for (char& c : msg)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) c = ' ';
  return msg;
}

class TextReader {
 public:
  TextReader(std::string text, std::string path) : text_(std::move(text)), path_(std::move(path)) {}

  static TextReader from_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f)
      throw FormatError(path + ": " + (errno == ENOENT ? "file not found" : std::string("cannot read: ") +
                                                                                std::strerror(errno)));
    std::stringstream ss;
    ss << f.rdbuf();
    if (f.bad()) throw FormatError(path + ": cannot read");
    return TextReader(ss.str(), path);
  }

  const std::string& path() const { return path_; }
  size_t line() const { return line_; }

  [[noreturn]] void fail(const std::string& msg) const {
    throw FormatError(path_ + ":" + std::to_string(line_) + ": " + msg);
  }

  // Lines not read yet (an upper bound on the records a count may announce).
  size_t lines_left() const {
    size_t n = 0;
    for (size_t i = pos_; i < text_.size(); ++i) n += text_[i] == '\n';
    return n + (pos_ < text_.size() && text_.back() != '\n');
  }

  // Read the next record. At the end of the file: the file is truncated.
  void next() {
    if (pos_ >= text_.size()) {
      line_ += 1;
      fail("unexpected end of file (the file is truncated)");
    }
    size_t end = text_.find('\n', pos_);
    if (end == std::string::npos) end = text_.size();
    ++line_;
    fields_.clear();
    size_t start = pos_;
    for (size_t i = pos_; i <= end; ++i) {
      if (i == end || text_[i] == ' ') {
        if (i == start) fail(i == end && i == pos_ ? "empty line" : "empty field (two spaces, or a space at the end)");
        fields_.emplace_back(text_, start, i - start);
        start = i + 1;
      } else {
        auto c = static_cast<unsigned char>(text_[i]);
        if (c < 0x21 || c > 0x7E) fail("invalid byte 0x" + hex(c) + " (not written by tcc)");
      }
    }
    pos_ = end + 1;
  }

  // The next record, which must start with `keyword` and have `min`..`max` fields after it.
  void expect(const char* keyword, size_t min = 1, size_t max = 1) {
    next();
    if (fields_[0] != keyword) fail(std::string("expected '") + keyword + "', got '" + fields_[0] + "'");
    check_count(min, max);
  }

  void check_count(size_t min, size_t max) const {
    size_t n = fields_.size() - 1;
    if (n < min || n > max) {
      std::string want = min == max ? std::to_string(min) : std::to_string(min) + " to " + std::to_string(max);
      fail("'" + fields_[0] + "' takes " + want + " value(s), got " + std::to_string(n));
    }
  }

  // Whether the next record starts with `keyword` (without reading it).
  bool peek(const char* keyword) const {
    size_t n = std::strlen(keyword);
    return text_.compare(pos_, n, keyword) == 0 && pos_ + n < text_.size() &&
           (text_[pos_ + n] == ' ' || text_[pos_ + n] == '\n');
  }

  size_t size() const { return fields_.size(); }
  const std::string& raw(size_t i) const {
    if (i >= fields_.size()) fail("missing value " + std::to_string(i));
    return fields_[i];
  }

  std::string str(size_t i) const {
    const std::string& f = raw(i);
    if (f == "%") return "";
    std::string out;
    out.reserve(f.size());
    for (size_t k = 0; k < f.size(); ++k) {
      if (f[k] != '%') {
        out += f[k];
        continue;
      }
      int hi = k + 2 < f.size() ? hexval(f[k + 1]) : -1, lo = k + 2 < f.size() ? hexval(f[k + 2]) : -1;
      if (hi < 0 || lo < 0) fail("bad escape in '" + f + "' (% must be followed by two hex digits)");
      out += static_cast<char>(hi * 16 + lo);
      k += 2;
    }
    return out;
  }

  int64_t integer(size_t i, int64_t lo, int64_t hi) const {
    const std::string& f = raw(i);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(f.c_str(), &end, 10);
    if (end != f.c_str() + f.size() || errno == ERANGE || !(f[0] == '-' || (f[0] >= '0' && f[0] <= '9')))
      fail("'" + f + "' is not an integer");
    if (v < lo || v > hi)
      fail(std::to_string(v) + " is out of range (" + std::to_string(lo) + " to " + std::to_string(hi) + ")");
    return v;
  }

  bool flag(size_t i) const {
    const std::string& f = raw(i);
    if (f != "0" && f != "1") fail("'" + f + "' is not 0 or 1");
    return f == "1";
  }

  // A record count: at most the lines left, so a damaged count cannot make us reserve memory for nothing.
  size_t count(size_t i) const {
    int64_t n = integer(i, 0, INT32_MAX);
    if (static_cast<size_t>(n) > lines_left()) fail("'" + fields_[0] + "' announces " + std::to_string(n) +
                                                    " records but the file ends before them (truncated?)");
    return static_cast<size_t>(n);
  }

  const std::string& keyword() const { return raw(0); }

 private:
  static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  }
  static std::string hex(unsigned char c) {
    const char* d = "0123456789ABCDEF";
    return std::string{d[c >> 4], d[c & 15]};
  }

  std::string text_, path_;
  size_t pos_ = 0, line_ = 0;
  std::vector<std::string> fields_;
};

}  // namespace tcc::chat
