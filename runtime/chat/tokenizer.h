// A standalone C++ tokenizer that reads `tokenizer.tcc` (what the compiler writes from a Hugging Face
// `tokenizer.json`: runtime/chat_files.py, docs/formats.md "Chat files") and encodes/decodes exactly like
// HF `tokenizers` for the BPE tokenizers of GPT-2, LLaMA-3 (byte-level BPE) and LLaMA-2 (SentencePiece-
// style BPE with byte fallback). Part of the tcc runtime: the standalone `chat` binary uses it; no Python.
// See docs/tokenizer.md for what is supported and the error messages.
//
// Build: C++17 and nothing else but the generated tcc_unicode_tables.h (python -m tcc.codegen.unicode_tables
// OUT_DIR/) on the include path: no JSON library.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tcc::chat {

// "s" with '"', '\\' and control bytes escaped as in JSON; other bytes as they are.
std::string json_quote(std::string_view s);
// Appends code point cp (<= 0x10FFFF) to out as UTF-8.
void append_utf8(std::string& out, uint32_t cp);

// Every problem with a tokenizer file (missing, malformed or truncated, an unsupported feature) is reported
// as a TokenizerError with a one-line message "PATH:LINE: ..." naming the file, line and, where it applies,
// the tokenizer.json field and value.
class TokenizerError : public std::runtime_error {
 public:
  explicit TokenizerError(const std::string& msg) : std::runtime_error(msg) {}
};

class Tokenizer {
 public:
  // Load `tokenizer.tcc`. Throws TokenizerError.
  static Tokenizer from_file(const std::string& path);
  // Parse tokenizer.tcc text; `source` names it in error messages.
  static Tokenizer from_text(const std::string& text, const std::string& source = "tokenizer.tcc");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // As HF `Tokenizer.encode(text, add_special_tokens=...).ids`. `text` is UTF-8; invalid bytes are read
  // as U+FFFD. Not thread-safe (a per-word BPE cache is updated).
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // As HF `Tokenizer.decode(ids, skip_special_tokens=...)`. Ids outside the vocabulary are skipped.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  std::optional<int64_t> token_to_id(std::string_view token) const;  // added tokens, then the model
  std::optional<std::string> id_to_token(int64_t id) const;
  int64_t vocab_size() const;  // as HF get_vocab_size(with_added_tokens=True)
  bool is_special(int64_t id) const;
  const std::string& source() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class StreamDecoder;
};

// Incremental detokenizer for streaming a reply token by token: push(id) returns only newly completed
// text and never a partial UTF-8 character. It decodes the ids since the last emitted boundary with one
// emitted chunk of left context (so decoders that strip a leading space, like SentencePiece's, strip it
// only at the very start), holding back text that ends in U+FFFD (an incomplete byte sequence) until the
// character completes. The concatenation of all push() results and flush() equals decode(all ids).
// (Same algorithm as tcc.runtime.tokenizer.StreamDecoder.)
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special_tokens = true);
  std::string push(int64_t id);
  std::string flush();  // emit what is held back (an incomplete character decodes to U+FFFD)
  void reset();
  const std::vector<int64_t>& ids() const { return ids_; }

 private:
  std::string decode_range(size_t begin, size_t end) const;
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int64_t> ids_;
  size_t prefix_ = 0;  // start of the decode window (left context, already emitted)
  size_t read_ = 0;    // ids before this index have been emitted
};

// UTF-8 helpers (exposed for the chat binary and tests).
// Replace invalid UTF-8 by U+FFFD the way Rust's String::from_utf8_lossy does (maximal subparts).
std::string utf8_lossy(std::string_view bytes);

}  // namespace tcc::chat
