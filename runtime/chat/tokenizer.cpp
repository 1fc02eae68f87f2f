// The C++ tokenizer of the standalone chat binary: reads tokenizer.tcc (the compiler's text form of HF
// tokenizer.json, runtime/chat_files.py) and reproduces HF `tokenizers` (see tokenizer.h, docs/tokenizer.md).
// The pipeline follows tokenizers' TokenizerImpl::encode:
//   1. split out added tokens that match the raw text (non-normalized ones),
//   2. normalize each remaining piece, then split out added tokens matching the normalized text,
//   3. pre-tokenize each remaining piece (ByteLevel, Split, Metaspace, Sequence) into words,
//   4. BPE each word (merges by rank, priority queue; per-word cache),
//   5. post-process (TemplateProcessing etc.) when add_special_tokens.
// Decoding runs the decoder chain (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)
// over all token strings, like tokenizers' Tokenizer::decode.
#include "tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "tcc_text.h"
#include "tcc_unicode_tables.h"

namespace tcc::chat {

// Declared in tokenizer.h: "s" with '"', '\\' and control bytes escaped as in JSON (other bytes as they are).
std::string json_quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + '"';
}

// Declared in tokenizer.h (tokenize_main.cpp writes code points too).
void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}


namespace {

// ---------------------------------------------------------------------------------------------------
// UTF-8

// Decode the code point at s[i]. Invalid: returns false and *len = the length of the maximal subpart
// (the bytes Rust's from_utf8_lossy replaces with one U+FFFD), at least 1.
bool utf8_next(std::string_view s, size_t i, uint32_t* cp, size_t* len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  unsigned char b0 = p[i];
  if (b0 < 0x80) {
    *cp = b0;
    *len = 1;
    return true;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  uint32_t v;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
    v = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    v = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    v = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *len = 1;
    return false;
  }
  size_t k = 1;
  for (; k < need; ++k) {
    if (i + k >= n) break;
    unsigned char b = p[i + k];
    unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) break;
    v = (v << 6) | (b & 0x3F);
  }
  if (k < need) {
    *len = k;
    return false;
  }
  *cp = v;
  *len = need;
  return true;
}

const char kReplacementUtf8[] = "\xEF\xBF\xBD";

// Code points of valid UTF-8 text with their byte offsets (offsets has one extra entry: the end).
struct Chars {
  std::vector<uint32_t> cp;
  std::vector<size_t> off;
};

Chars to_chars(std::string_view s) {
  Chars c;
  c.cp.reserve(s.size());
  c.off.reserve(s.size() + 1);
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0xFFFD;
    size_t len = 1;
    utf8_next(s, i, &cp, &len);
    c.cp.push_back(cp);
    c.off.push_back(i);
    i += len;
  }
  c.off.push_back(s.size());
  return c;
}

uint32_t first_char(std::string_view s) {
  if (s.empty()) return 0xFFFFFFFF;
  uint32_t cp = 0xFFFD;
  size_t len;
  utf8_next(s, 0, &cp, &len);
  return cp;
}

uint32_t last_char(std::string_view s) {
  if (s.empty()) return 0xFFFFFFFF;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  uint32_t cp = 0xFFFD;
  size_t len;
  utf8_next(s, i, &cp, &len);
  return cp;
}

bool is_ws(uint32_t cp) { return tcc_unicode::is_white_space(cp); }
bool is_l(uint32_t cp) { return tcc_unicode::is_letter(cp); }
bool is_n(uint32_t cp) { return tcc_unicode::is_number(cp); }
bool is_other(uint32_t cp) { return !is_ws(cp) && !is_l(cp) && !is_n(cp); }
bool is_crlf(uint32_t cp) { return cp == '\r' || cp == '\n'; }

std::string replace_all(std::string_view s, std::string_view pat, std::string_view with) {
  if (pat.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (true) {
    size_t j = s.find(pat, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i));
    out.append(with);
    i = j + pat.size();
  }
  out.append(s.substr(i));
  return out;
}

// A string for an error message, quoted and escaped as JSON (cut to 80 characters).
std::string quoted(std::string_view s) {
  const std::string out = json_quote(s);
  // (a message is valid UTF-8 even where a damaged file holds invalid bytes)
  return out.size() > 80 ? utf8_lossy(out.substr(0, 77)) + "..." : utf8_lossy(out);
}

// ---------------------------------------------------------------------------------------------------
// Pre-tokenizer regexes, hand-implemented (matching Oniguruma's leftmost-first backtracking semantics).

const char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char kLlama3Pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum class RegexKind { Gpt2, Llama3 };

template <class Pred>
size_t run_of(const std::vector<uint32_t>& c, size_t j, Pred pred) {
  while (j < c.size() && pred(c[j])) ++j;
  return j;
}

// `\s+(?!\S)|\s+` at i (c[i] is white space).
size_t match_space_run(const std::vector<uint32_t>& c, size_t i) {
  size_t j = run_of(c, i, is_ws);
  if (j == c.size()) return j;
  if (j - i >= 2) return j - 1;  // leave the last space for the word after it
  return j;
}

size_t match_gpt2(const std::vector<uint32_t>& c, size_t i) {
  const size_t n = c.size();
  const uint32_t c0 = c[i];
  if (c0 == '\'' && i + 1 < n) {
    uint32_t c1 = c[i + 1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
    if (i + 2 < n) {
      uint32_t c2 = c[i + 2];
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return i + 3;
    }
  }
  bool (*classes[3])(uint32_t) = {is_l, is_n, is_other};
  for (auto pred : classes) {
    if (c0 == ' ' && i + 1 < n && pred(c[i + 1])) return run_of(c, i + 1, pred);
    if (pred(c0)) return run_of(c, i, pred);
  }
  return match_space_run(c, i);  // c0 is white space
}

uint32_t fold_ascii(uint32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp == 0x017F) return 's';  // LATIN SMALL LETTER LONG S case-folds to 's'
  return cp;
}

size_t match_llama3(const std::vector<uint32_t>& c, size_t i) {
  const size_t n = c.size();
  const uint32_t c0 = c[i];
  if (c0 == '\'' && i + 1 < n) {  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    uint32_t c1 = fold_ascii(c[i + 1]);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
    if (i + 2 < n) {
      uint32_t c2 = fold_ascii(c[i + 2]);
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return i + 3;
    }
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!is_crlf(c0) && !is_l(c0) && !is_n(c0) && i + 1 < n && is_l(c[i + 1])) return run_of(c, i + 1, is_l);
  if (is_l(c0)) return run_of(c, i, is_l);
  // \p{N}{1,3}
  if (is_n(c0)) {
    size_t j = i;
    while (j < n && j - i < 3 && is_n(c[j])) ++j;
    return j;
  }
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  if (c0 == ' ' && i + 1 < n && is_other(c[i + 1])) return run_of(c, run_of(c, i + 1, is_other), is_crlf);
  if (is_other(c0)) return run_of(c, run_of(c, i, is_other), is_crlf);
  // \s*[\r\n]+ : through the last CR/LF of the white-space run
  size_t j = run_of(c, i, is_ws);
  for (size_t k = j; k > i; --k) {
    if (is_crlf(c[k - 1])) return k;
  }
  return match_space_run(c, i);
}

// ---------------------------------------------------------------------------------------------------
// Pipeline pieces

struct Segment {
  size_t start, end;  // byte offsets
  bool is_match;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// Apply a SplitDelimiterBehavior to (offsets, is_match) segments; returns kept (start, end) ranges
// (as tokenizers' NormalizedString::split, empty ones dropped later).
std::vector<std::pair<size_t, size_t>> apply_behavior(const std::vector<Segment>& segs, SplitBehavior b) {
  std::vector<std::pair<size_t, size_t>> out;
  switch (b) {
    case SplitBehavior::Isolated:
      for (auto& s : segs) out.emplace_back(s.start, s.end);
      break;
    case SplitBehavior::Removed:
      for (auto& s : segs)
        if (!s.is_match) out.emplace_back(s.start, s.end);
      break;
    case SplitBehavior::Contiguous: {
      bool prev = false;
      for (auto& s : segs) {
        if (s.is_match == prev && !out.empty()) out.back().second = s.end;
        else out.emplace_back(s.start, s.end);
        prev = s.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev = false;
      for (auto& s : segs) {
        if (s.is_match && !prev && !out.empty()) out.back().second = s.end;
        else out.emplace_back(s.start, s.end);
        prev = s.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev = false;
      for (size_t k = segs.size(); k-- > 0;) {
        const auto& s = segs[k];
        if (s.is_match && !prev && !out.empty()) out.back().first = s.start;
        else out.emplace_back(s.start, s.end);
        prev = s.is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

// A word on its way through the pre-tokenizers. at_start: it begins at offset 0 of the original text
// (Metaspace's prepend_scheme "first").
struct Word {
  std::string text;
  bool at_start;
};

struct Normalizer {
  enum Kind { Sequence, Prepend, Replace, Strip } kind;
  std::vector<Normalizer> children;
  std::string a, b;  // Prepend: a; Replace: pattern a -> content b
  bool strip_left = false, strip_right = false;

  std::string apply(std::string s) const {
    switch (kind) {
      case Sequence:
        for (auto& c : children) s = c.apply(std::move(s));
        return s;
      case Prepend:
        return s.empty() ? s : a + s;
      case Replace:
        return replace_all(s, a, b);
      case Strip: {
        Chars c = to_chars(s);
        size_t lo = 0, hi = c.cp.size();
        if (strip_left)
          while (lo < hi && is_ws(c.cp[lo])) ++lo;
        if (strip_right)
          while (hi > lo && is_ws(c.cp[hi - 1])) --hi;
        return s.substr(c.off[lo], c.off[hi] - c.off[lo]);
      }
    }
    return s;
  }
};

enum class Prepend { Always, First, Never };

struct PreTokenizer {
  enum Kind { Sequence, ByteLevel, Split, Metaspace } kind;
  std::vector<PreTokenizer> children;
  // ByteLevel
  bool add_prefix_space = false, use_regex = true;
  // Split
  bool split_is_regex = false;
  RegexKind regex = RegexKind::Gpt2;
  std::string split_string;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  // Metaspace
  std::string replacement;
  Prepend prepend = Prepend::Always;
  bool meta_split = true;
};

struct Decoder {
  enum Kind { Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip } kind;
  std::vector<Decoder> children;
  std::string a, b;          // Replace pattern -> content; Metaspace replacement in a
  Prepend prepend = Prepend::Always;
  uint32_t strip_content = ' ';
  size_t strip_start = 0, strip_stop = 0;
};

struct PostProcessor {
  enum Kind { None, Sequence, Template, Wrap } kind = None;
  std::vector<PostProcessor> children;
  std::vector<std::vector<int64_t>> template_items;  // Template: ids of special pieces; empty = $A
  std::vector<bool> template_is_seq;
  std::vector<int64_t> prefix, suffix;                // Wrap (Bert/Roberta): cls ... sep
};

struct AddedToken {
  int64_t id;
  std::string content;
  bool single_word, lstrip, rstrip, normalized, special;
  // The string decode() uses: as tokenizers >= 0.22, the normalizer's output for a normalized token
  // (so a decoder can invert the normalization), else the content.
  std::string decode_text;
};

// LeftmostLongest multi-pattern matcher (a byte trie), like aho-corasick's MatchKind::LeftmostLongest.
struct Trie {
  struct Node {
    std::unordered_map<unsigned char, int> next;
    int pattern = -1;
  };
  std::vector<Node> nodes{1};
  bool empty = true;

  void add(const std::string& s, int pattern) {
    if (s.empty()) return;
    int cur = 0;
    for (unsigned char ch : s) {
      auto it = nodes[cur].next.find(ch);
      if (it == nodes[cur].next.end()) {
        nodes.push_back({});
        int id = static_cast<int>(nodes.size()) - 1;
        nodes[cur].next.emplace(ch, id);
        cur = id;
      } else {
        cur = it->second;
      }
    }
    if (nodes[cur].pattern < 0) nodes[cur].pattern = pattern;
    empty = false;
  }
  // Longest pattern starting at s[i]: returns {pattern, length} or {-1, 0}.
  std::pair<int, size_t> longest_at(std::string_view s, size_t i) const {
    int cur = 0, best = -1;
    size_t best_len = 0;
    for (size_t k = i; k < s.size(); ++k) {
      auto it = nodes[cur].next.find(static_cast<unsigned char>(s[k]));
      if (it == nodes[cur].next.end()) break;
      cur = it->second;
      if (nodes[cur].pattern >= 0) {
        best = nodes[cur].pattern;
        best_len = k + 1 - i;
      }
    }
    return {best, best_len};
  }
};

struct PairHash {
  size_t operator()(uint64_t v) const { return std::hash<uint64_t>()(v * 0x9E3779B97F4A7C15ull); }
};

std::string bytes_to_unicode_char(int b);

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Impl

struct Tokenizer::Impl {
  std::string source;

  // BPE model
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<int64_t, std::string> vocab_r;
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>, PairHash> merges;  // (a,b) -> (rank, new id)
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix, end_of_word_suffix;
  bool has_prefix = false, has_suffix = false;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  int64_t byte_ids[256];  // <0xNN> token ids (-1: absent)

  // Added tokens
  std::vector<AddedToken> added;                        // all, file order
  std::unordered_map<int64_t, size_t> added_by_id;      // id -> index in added
  std::unordered_map<std::string, int64_t> added_by_content;
  std::unordered_set<std::string> special_contents;
  Trie trie_raw, trie_norm;
  std::vector<size_t> raw_patterns, norm_patterns;  // pattern index -> index in added

  std::optional<Normalizer> normalizer;
  std::optional<PreTokenizer> pre_tokenizer;
  std::optional<Decoder> decoder;
  PostProcessor post;

  // ByteLevel byte <-> char maps
  std::string byte_char[256];
  std::unordered_map<uint32_t, unsigned char> char_byte;

  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  // -- errors
  [[noreturn]] void fail(const std::string& msg) const { throw TokenizerError(source + ": " + msg); }

  // -- loading (tokenizer.tcc)
  void load(TextReader& r);
  void read_model(TextReader& r);
  void read_added_tokens(TextReader& r);
  Normalizer read_normalizer(TextReader& r, size_t o, const std::string& path, int depth);
  PreTokenizer read_pre_tokenizer(TextReader& r, size_t o, const std::string& path, int depth);
  Decoder read_decoder(TextReader& r, size_t o, const std::string& path, int depth);
  PostProcessor read_post_processor(TextReader& r, size_t o, const std::string& path, int depth);
  uint32_t single_char(const TextReader& r, size_t i, const std::string& what) const;

  // -- encoding
  void split_added(const std::string& s, bool normalized_trie, bool at_start, std::vector<Word>& words,
                   std::vector<int64_t>& ids_out, std::vector<int>& order) const;
  std::vector<Word> pre_tokenize(const PreTokenizer& p, std::vector<Word> words) const;
  void bpe(const std::string& word, std::vector<int64_t>& out) const;
  std::vector<int64_t> encode(std::string_view text, bool add_special) const;
  std::vector<int64_t> post_process(const PostProcessor& p, std::vector<int64_t> ids) const;

  // -- decoding
  std::optional<std::string> id_to_token(int64_t id) const {
    auto a = added_by_id.find(id);
    if (a != added_by_id.end()) return added[a->second].decode_text;
    auto m = vocab_r.find(id);
    if (m != vocab_r.end()) return m->second;
    return std::nullopt;
  }
  std::vector<std::string> run_decoder(const Decoder& d, std::vector<std::string> tokens) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const;
};

namespace {

std::string bytes_to_unicode_char(int b) {
  // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 + n in order.
  static std::string table[256];
  static bool init = false;
  if (!init) {
    int n = 0;
    for (int x = 0; x < 256; ++x) {
      bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
      std::string s;
      append_utf8(s, printable ? static_cast<uint32_t>(x) : static_cast<uint32_t>(256 + n++));
      table[x] = s;
    }
    init = true;
  }
  return table[b];
}

}  // namespace

// ---- reading tokenizer.tcc (written by runtime/chat_files.py; docs/formats.md, "Chat files")

namespace {

constexpr int kMaxDepth = 64;           // nested Sequence nodes (a damaged file must not overflow the stack)
constexpr int64_t kMaxId = UINT32_MAX;  // tokenizers' ids are u32

Prepend parse_prepend(const TextReader& r, size_t i, const std::string& path) {
  std::string s = r.str(i);
  if (s == "always") return Prepend::Always;
  if (s == "first") return Prepend::First;
  if (s == "never") return Prepend::Never;
  r.fail(path + ".prepend_scheme " + quoted(s) + " is not supported (always, first, never)");
}

// The node's type sits at field `o` of the current record (1 on a component's own line, 0 on a child's);
// `n` values follow it.
void node_args(const TextReader& r, size_t o, size_t n) { r.check_count(o + n, o + n); }

void check_depth(const TextReader& r, int depth, const std::string& path) {
  if (depth > kMaxDepth) r.fail(path + ": Sequence nodes nested more than " + std::to_string(kMaxDepth) + " deep");
}

}  // namespace

uint32_t Tokenizer::Impl::single_char(const TextReader& r, size_t i, const std::string& what) const {
  std::string s = r.str(i);
  Chars c = to_chars(s);
  if (c.cp.size() != 1) r.fail(what + " must be a single character, got " + quoted(s));
  return c.cp[0];
}

Normalizer Tokenizer::Impl::read_normalizer(TextReader& r, size_t o, const std::string& path, int depth) {
  check_depth(r, depth, path);
  const std::string t = r.raw(o);
  Normalizer n{};
  n.kind = Normalizer::Sequence;
  if (t == "Sequence") {
    node_args(r, o, 1);
    size_t count = r.count(o + 1);
    for (size_t i = 0; i < count; ++i) {
      r.next();
      n.children.push_back(read_normalizer(r, 0, path + ".normalizers[" + std::to_string(i) + "]", depth + 1));
    }
  } else if (t == "Prepend") {
    node_args(r, o, 1);
    n.kind = Normalizer::Prepend;
    n.a = r.str(o + 1);
  } else if (t == "Replace") {
    node_args(r, o, 2);
    n.kind = Normalizer::Replace;
    n.a = r.str(o + 1);
    n.b = r.str(o + 2);
  } else if (t == "Strip") {
    node_args(r, o, 2);
    n.kind = Normalizer::Strip;
    n.strip_left = r.flag(o + 1);
    n.strip_right = r.flag(o + 2);
  } else {
    r.fail(path + ": unknown normalizer '" + t + "' (Sequence, Prepend, Replace, Strip)");
  }
  return n;
}

PreTokenizer Tokenizer::Impl::read_pre_tokenizer(TextReader& r, size_t o, const std::string& path, int depth) {
  check_depth(r, depth, path);
  const std::string t = r.raw(o);
  PreTokenizer p{};
  p.kind = PreTokenizer::Sequence;
  if (t == "Sequence") {
    node_args(r, o, 1);
    size_t count = r.count(o + 1);
    for (size_t i = 0; i < count; ++i) {
      r.next();
      p.children.push_back(read_pre_tokenizer(r, 0, path + ".pretokenizers[" + std::to_string(i) + "]", depth + 1));
    }
  } else if (t == "ByteLevel") {
    node_args(r, o, 2);
    p.kind = PreTokenizer::ByteLevel;
    p.add_prefix_space = r.flag(o + 1);
    p.use_regex = r.flag(o + 2);
  } else if (t == "Split") {
    node_args(r, o, 4);
    p.kind = PreTokenizer::Split;
    const std::string kind = r.raw(o + 1);
    std::string pat = r.str(o + 2);
    if (kind == "regex") {
      p.split_is_regex = true;
      if (pat == kGpt2Pattern) p.regex = RegexKind::Gpt2;
      else if (pat == kLlama3Pattern) p.regex = RegexKind::Llama3;
      else
        r.fail(path + ".pattern.Regex: unsupported pattern " + quoted(pat) +
               " (supported: the GPT-2 and LLaMA-3 pre-tokenizer patterns)");
    } else if (kind == "string") {
      if (pat.empty()) r.fail(path + ".pattern.String must not be empty");
      p.split_string = pat;
    } else {
      r.fail(path + ": Split pattern kind '" + kind + "' is neither regex nor string");
    }
    std::string b = r.str(o + 3);
    if (b == "Removed") p.behavior = SplitBehavior::Removed;
    else if (b == "Isolated") p.behavior = SplitBehavior::Isolated;
    else if (b == "MergedWithPrevious") p.behavior = SplitBehavior::MergedWithPrevious;
    else if (b == "MergedWithNext") p.behavior = SplitBehavior::MergedWithNext;
    else if (b == "Contiguous") p.behavior = SplitBehavior::Contiguous;
    else r.fail(path + ".behavior " + quoted(b) + " is not supported");
    p.invert = r.flag(o + 4);
  } else if (t == "Metaspace") {
    node_args(r, o, 3);
    p.kind = PreTokenizer::Metaspace;
    append_utf8(p.replacement, single_char(r, o + 1, path + ".replacement"));
    p.prepend = parse_prepend(r, o + 2, path);
    p.meta_split = r.flag(o + 3);
  } else {
    r.fail(path + ": unknown pre-tokenizer '" + t + "' (Sequence, ByteLevel, Split, Metaspace)");
  }
  return p;
}

Decoder Tokenizer::Impl::read_decoder(TextReader& r, size_t o, const std::string& path, int depth) {
  check_depth(r, depth, path);
  const std::string t = r.raw(o);
  Decoder d{};
  d.kind = Decoder::Sequence;
  if (t == "Sequence") {
    node_args(r, o, 1);
    size_t count = r.count(o + 1);
    for (size_t i = 0; i < count; ++i) {
      r.next();
      d.children.push_back(read_decoder(r, 0, path + ".decoders[" + std::to_string(i) + "]", depth + 1));
    }
  } else if (t == "ByteLevel" || t == "ByteFallback" || t == "Fuse") {
    node_args(r, o, 0);
    d.kind = t == "ByteLevel" ? Decoder::ByteLevel : t == "Fuse" ? Decoder::Fuse : Decoder::ByteFallback;
  } else if (t == "Metaspace") {
    node_args(r, o, 2);
    d.kind = Decoder::Metaspace;
    append_utf8(d.a, single_char(r, o + 1, path + ".replacement"));
    d.prepend = parse_prepend(r, o + 2, path);
  } else if (t == "Replace") {
    node_args(r, o, 2);
    d.kind = Decoder::Replace;
    d.a = r.str(o + 1);
    d.b = r.str(o + 2);
  } else if (t == "Strip") {
    node_args(r, o, 3);
    d.kind = Decoder::Strip;
    d.strip_content = single_char(r, o + 1, path + ".content");
    d.strip_start = static_cast<size_t>(r.integer(o + 2, 0, INT32_MAX));
    d.strip_stop = static_cast<size_t>(r.integer(o + 3, 0, INT32_MAX));
  } else {
    r.fail(path + ": unknown decoder '" + t + "' (Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip)");
  }
  return d;
}

PostProcessor Tokenizer::Impl::read_post_processor(TextReader& r, size_t o, const std::string& path, int depth) {
  check_depth(r, depth, path);
  const std::string t = r.raw(o);
  PostProcessor p;
  if (t == "Sequence") {
    node_args(r, o, 1);
    p.kind = PostProcessor::Sequence;
    size_t count = r.count(o + 1);
    for (size_t i = 0; i < count; ++i) {
      r.next();
      p.children.push_back(read_post_processor(r, 0, path + ".processors[" + std::to_string(i) + "]", depth + 1));
    }
  } else if (t == "ByteLevel") {
    node_args(r, o, 0);
    p.kind = PostProcessor::None;  // only adjusts offsets
  } else if (t == "Template") {
    node_args(r, o, 1);
    p.kind = PostProcessor::Template;
    size_t count = r.count(o + 1);
    for (size_t i = 0; i < count; ++i) {
      r.next();
      if (r.keyword() == "Sequence") {
        r.check_count(0, 0);
        p.template_items.push_back({});
        p.template_is_seq.push_back(true);
      } else if (r.keyword() == "SpecialToken") {
        std::vector<int64_t> ids;
        for (size_t k = 1; k < r.size(); ++k) ids.push_back(r.integer(k, 0, kMaxId));
        p.template_items.push_back(ids);
        p.template_is_seq.push_back(false);
      } else {
        r.fail(path + ".single[" + std::to_string(i) + "]: expected 'Sequence' or 'SpecialToken', got '" +
               r.keyword() + "'");
      }
    }
  } else if (t == "Wrap") {
    node_args(r, o, 2);
    p.kind = PostProcessor::Wrap;
    p.prefix.push_back(r.integer(o + 1, 0, kMaxId));
    p.suffix.push_back(r.integer(o + 2, 0, kMaxId));
  } else {
    r.fail(path + ": unknown post-processor '" + t + "' (Sequence, ByteLevel, Template, Wrap)");
  }
  return p;
}

void Tokenizer::Impl::read_model(TextReader& r) {
  r.expect("model");
  if (r.raw(1) != "BPE") r.fail("model.type " + quoted(r.str(1)) + " is not supported (supported: BPE)");
  auto optional_string = [&](const char* key, std::string* out) {
    if (!r.peek(key)) return false;
    r.expect(key);
    *out = r.str(1);
    return true;
  };
  std::string unk;
  if (optional_string("unk_token", &unk)) unk_token = unk;
  has_prefix = optional_string("continuing_subword_prefix", &continuing_subword_prefix);
  has_suffix = optional_string("end_of_word_suffix", &end_of_word_suffix);
  for (auto [key, out] : {std::pair<const char*, bool*>{"fuse_unk", &fuse_unk}, {"byte_fallback", &byte_fallback},
                          {"ignore_merges", &ignore_merges}}) {
    r.expect(key);
    *out = r.flag(1);
  }

  r.expect("vocab");
  size_t n = r.count(1);
  vocab.reserve(n * 2);
  vocab_r.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    r.next();
    r.check_count(1, 1);
    std::string token = r.str(0);
    int64_t id = r.integer(1, 0, kMaxId);
    vocab[token] = id;
    vocab_r[id] = token;
  }

  r.expect("merges");
  n = r.count(1);
  merges.reserve(n * 2);
  size_t prefix_len = has_prefix ? continuing_subword_prefix.size() : 0;
  for (size_t rank = 0; rank < n; ++rank) {
    r.next();
    r.check_count(1, 1);
    std::string a = r.str(0), b = r.str(1);
    const std::string where = "model.merges[" + std::to_string(rank) + "]: ";
    auto ia = vocab.find(a), ib = vocab.find(b);
    if (ia == vocab.end()) r.fail(where + "token " + quoted(a) + " is not in the vocabulary");
    if (ib == vocab.end()) r.fail(where + "token " + quoted(b) + " is not in the vocabulary");
    std::string merged = a + (prefix_len <= b.size() ? b.substr(prefix_len) : std::string());
    auto in = vocab.find(merged);
    if (in == vocab.end()) r.fail(where + "merged token " + quoted(merged) + " is not in the vocabulary");
    uint64_t key = (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint32_t>(ib->second);
    merges[key] = {static_cast<int32_t>(rank), in->second};
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab.find(name);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
  }
}

void Tokenizer::Impl::read_added_tokens(TextReader& r) {
  r.expect("added_tokens");
  size_t n = r.count(1);
  for (size_t i = 0; i < n; ++i) {
    r.next();
    r.check_count(6, 6);
    AddedToken a;
    a.id = r.integer(0, 0, kMaxId);
    a.content = r.str(1);
    a.special = r.flag(2);
    a.single_word = r.flag(3);
    a.lstrip = r.flag(4);
    a.rstrip = r.flag(5);
    a.normalized = r.flag(6);
    if (a.content.empty()) continue;  // tokenizers ignores empty added tokens
    a.decode_text = a.content;
    auto prev = added_by_content.find(a.content);
    if (prev != added_by_content.end()) {  // the same content again: the later entry wins
      size_t index = added_by_id[prev->second];
      added_by_id.erase(prev->second);
      added[index] = a;
      added_by_id[a.id] = index;
      prev->second = a.id;
    } else {
      added.push_back(a);
      added_by_id[a.id] = added.size() - 1;
      added_by_content[a.content] = a.id;
    }
    if (a.special) special_contents.insert(a.content);
  }
  // Matching order as tokenizers: special tokens first, then the others (file order within each).
  int raw_n = 0, norm_n = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < added.size(); ++i) {
      const AddedToken& a = added[i];
      if (a.special != (pass == 0)) continue;
      if (a.normalized) {
        std::string pat = normalizer ? normalizer->apply(a.content) : a.content;
        added[i].decode_text = pat;
        trie_norm.add(pat, norm_n++);
        norm_patterns.push_back(i);
      } else {
        trie_raw.add(a.content, raw_n++);
        raw_patterns.push_back(i);
      }
    }
  }
}

void Tokenizer::Impl::load(TextReader& r) {
  r.next();
  if (r.keyword() != "tcc-tokenizer")
    r.fail("not a tcc tokenizer file (the first line must be 'tcc-tokenizer 1'; the compiler writes it "
           "from tokenizer.json)");
  r.check_count(1, 1);
  if (r.raw(1) != "1") r.fail("tokenizer file version " + r.raw(1) + " is not supported (this program reads 1)");
  if (r.peek("unsupported")) {
    r.expect("unsupported");
    r.fail("the chat binary cannot use this model's tokenizer.json: " + utf8_lossy(r.str(1)));
  }
  for (int b = 0; b < 256; ++b) {
    byte_char[b] = bytes_to_unicode_char(b);
    char_byte[first_char(byte_char[b])] = static_cast<unsigned char>(b);
  }
  read_model(r);
  auto component = [&](const char* key) -> bool {  // the component's own line; false: "none"
    r.expect(key, 1, 6);
    if (r.raw(1) != "none") return true;
    r.check_count(1, 1);
    return false;
  };
  if (component("normalizer")) normalizer = read_normalizer(r, 1, "normalizer", 0);
  if (component("pre_tokenizer")) pre_tokenizer = read_pre_tokenizer(r, 1, "pre_tokenizer", 0);
  if (component("decoder")) decoder = read_decoder(r, 1, "decoder", 0);
  if (component("post_processor")) post = read_post_processor(r, 1, "post_processor", 0);
  read_added_tokens(r);
  r.expect("end", 0, 0);
  if (r.lines_left() > 0) {
    r.next();
    r.fail("text after 'end'");
  }
}

// ---- encoding

static bool ends_with_word(std::string_view s) {
  return !s.empty() && tcc_unicode::is_word(last_char(s));
}
static bool starts_with_word(std::string_view s) {
  return !s.empty() && tcc_unicode::is_word(first_char(s));
}

// tokenizers' AddedVocabulary::find_matches + split_with_indices: split `s` into pieces, added tokens
// as ids. Non-token pieces go to `words`; `order` records the sequence (-1 - k: words[k]; i >= 0: ids_out[i]).
void Tokenizer::Impl::split_added(const std::string& s, bool normalized_trie, bool at_start,
                                  std::vector<Word>& words, std::vector<int64_t>& ids_out,
                                  std::vector<int>& order) const {
  const Trie& trie = normalized_trie ? trie_norm : trie_raw;
  const std::vector<size_t>& pats = normalized_trie ? norm_patterns : raw_patterns;
  auto emit_text = [&](size_t a, size_t b) {
    if (b <= a) return;  // empty pieces are dropped
    words.push_back({s.substr(a, b - a), at_start && a == 0});
    order.push_back(-1 - static_cast<int>(words.size() - 1));
  };
  if (trie.empty || s.empty()) {
    emit_text(0, s.size());
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  const size_t n = s.size();
  while (pos < n) {
    auto [pat, len] = trie.longest_at(s, pos);
    if (pat < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // non-overlapping: the search resumes after this match, used or not
    const AddedToken& a = added[pats[pat]];
    if (a.single_word) {
      bool start_space = start == 0 || !ends_with_word(std::string_view(s).substr(0, start));
      bool stop_space = stop == n || !starts_with_word(std::string_view(s).substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (a.lstrip) {
      // the start of the white space at the end of s[..start] (not before what is already split off)
      size_t p = start;
      while (p > start_offset) {
        size_t q = p - 1;
        while (q > 0 && (static_cast<unsigned char>(s[q]) & 0xC0) == 0x80) --q;
        uint32_t cp = 0xFFFD;
        size_t len;
        utf8_next(s, q, &cp, &len);
        if (!is_ws(cp)) break;
        p = q;
      }
      start = std::max(p, start_offset);
    }
    if (a.rstrip) {  // the white space at the start of s[stop..]
      while (stop < n) {
        uint32_t cp = 0xFFFD;
        size_t len = 1;
        utf8_next(s, stop, &cp, &len);
        if (!is_ws(cp)) break;
        stop += len;
      }
    }
    if (start_offset < start) emit_text(start_offset, start);
    ids_out.push_back(a.id);
    order.push_back(static_cast<int>(ids_out.size() - 1));
    start_offset = stop;
  }
  if (start_offset < n) emit_text(start_offset, n);
}

static std::vector<Segment> regex_segments(RegexKind kind, const Chars& c) {
  std::vector<Segment> segs;
  size_t i = 0;
  while (i < c.cp.size()) {
    size_t j = kind == RegexKind::Gpt2 ? match_gpt2(c.cp, i) : match_llama3(c.cp, i);
    if (j <= i) j = i + 1;  // (cannot happen: the patterns match every character)
    segs.push_back({c.off[i], c.off[j], true});
    i = j;
  }
  return segs;
}

static std::vector<Segment> string_segments(const std::string& s, const std::string& pat) {
  std::vector<Segment> segs;
  size_t prev = 0, i = 0;
  while ((i = s.find(pat, i)) != std::string::npos) {
    if (prev != i) segs.push_back({prev, i, false});
    segs.push_back({i, i + pat.size(), true});
    i += pat.size();
    prev = i;
  }
  if (prev != s.size()) segs.push_back({prev, s.size(), false});
  return segs;
}

std::vector<Word> Tokenizer::Impl::pre_tokenize(const PreTokenizer& p, std::vector<Word> words) const {
  auto split_words = [](const Word& w, const std::vector<std::pair<size_t, size_t>>& ranges,
                        std::vector<Word>& out) {
    for (auto& [a, b] : ranges) {
      if (b <= a) continue;
      out.push_back({w.text.substr(a, b - a), w.at_start && a == 0});
    }
  };
  std::vector<Word> out;
  switch (p.kind) {
    case PreTokenizer::Sequence:
      for (auto& c : p.children) words = pre_tokenize(c, std::move(words));
      return words;
    case PreTokenizer::ByteLevel: {
      std::vector<Word> split;
      for (auto& w0 : words) {
        Word w = w0;
        if (p.add_prefix_space && (w.text.empty() || w.text[0] != ' ')) w.text = " " + w.text;
        if (p.use_regex) {
          Chars c = to_chars(w.text);
          auto segs = regex_segments(RegexKind::Gpt2, c);
          split_words(w, apply_behavior(segs, SplitBehavior::Isolated), split);
        } else if (!w.text.empty()) {
          split.push_back(w);
        }
      }
      for (auto& w : split) {
        std::string mapped;
        mapped.reserve(w.text.size() * 2);
        for (unsigned char ch : w.text) mapped += byte_char[ch];
        out.push_back({std::move(mapped), w.at_start});
      }
      return out;
    }
    case PreTokenizer::Split:
      for (auto& w : words) {
        std::vector<Segment> segs;
        if (w.text.empty()) {
          segs.push_back({0, 0, false});
        } else if (p.split_is_regex) {
          Chars c = to_chars(w.text);
          segs = regex_segments(p.regex, c);
        } else {
          segs = string_segments(w.text, p.split_string);
        }
        if (p.invert)
          for (auto& s : segs) s.is_match = !s.is_match;
        split_words(w, apply_behavior(segs, p.behavior), out);
      }
      return out;
    case PreTokenizer::Metaspace:
      for (auto& w0 : words) {
        Word w{replace_all(w0.text, " ", p.replacement), w0.at_start};
        bool starts = w.text.compare(0, p.replacement.size(), p.replacement) == 0;
        if (!starts && (p.prepend == Prepend::Always || (p.prepend == Prepend::First && w.at_start)))
          w.text = p.replacement + w.text;
        if (p.meta_split) {
          split_words(w, apply_behavior(string_segments(w.text, p.replacement), SplitBehavior::MergedWithNext), out);
        } else if (!w.text.empty()) {
          out.push_back(std::move(w));
        }
      }
      return out;
  }
  return words;
}

// tokenizers' BPE::merge_word + Word::merge_all (no dropout).
void Tokenizer::Impl::bpe(const std::string& w, std::vector<int64_t>& out) const {
  if (w.empty()) return;
  if (ignore_merges) {
    auto it = vocab.find(w);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  auto cached = cache.find(w);
  if (cached != cache.end()) {
    out.insert(out.end(), cached->second.begin(), cached->second.end());
    return;
  }
  struct Sym {
    int64_t c;
    int prev, next;
    size_t len;
  };
  std::vector<Sym> syms;
  syms.reserve(w.size());
  auto add = [&](int64_t id, size_t len) {
    int n = static_cast<int>(syms.size());
    if (!syms.empty()) syms.back().next = n;
    syms.push_back({id, n - 1, -1, len});
  };
  bool has_unk = false;  // a pending unknown-token symbol (unk_len bytes), fused with the next if fuse_unk
  int64_t pending_unk = 0;
  size_t unk_len = 0;
  int64_t unk_id = -1;
  if (unk_token) {
    auto it = vocab.find(*unk_token);
    if (it != vocab.end()) unk_id = it->second;
  }
  size_t i = 0;
  while (i < w.size()) {
    uint32_t cp;
    size_t len = 1;
    utf8_next(w, i, &cp, &len);
    bool is_first = i == 0, is_last = i + len >= w.size();
    std::string s = w.substr(i, len);
    if (!is_first && has_prefix) s = continuing_subword_prefix + s;
    if (is_last && has_suffix) s += end_of_word_suffix;
    auto it = vocab.find(s);
    if (it != vocab.end()) {
      if (has_unk) {
        add(pending_unk, unk_len);
        has_unk = false;
      }
      add(it->second, len);
    } else {
      bool done = false;
      if (byte_fallback) {
        bool all = true;
        for (unsigned char ch : s)
          if (byte_ids[ch] < 0) all = false;
        if (all) {  // (as tokenizers: a pending unknown symbol is not flushed first)
          for (unsigned char ch : s) add(byte_ids[ch], 1);
          done = true;
        }
      }
      if (!done && unk_token) {
        if (unk_id < 0) fail("model.unk_token " + quoted(*unk_token) + " is not in the vocabulary");
        if (has_unk && fuse_unk) {
          unk_len += len;
        } else {
          if (has_unk) add(pending_unk, unk_len);
          has_unk = true;
          pending_unk = unk_id;
          unk_len = len;
        }
      }
    }
    i += len;
  }
  if (has_unk) add(pending_unk, unk_len);

  struct Merge {
    size_t pos;
    int32_t rank;
    int64_t new_id;
  };
  auto cmp = [](const Merge& a, const Merge& b) {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.pos > b.pos;
  };
  std::priority_queue<Merge, std::vector<Merge>, decltype(cmp)> queue(cmp);
  auto lookup = [&](int64_t a, int64_t b) -> const std::pair<int32_t, int64_t>* {
    auto it = merges.find((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t k = 0; k + 1 < syms.size(); ++k) {
    if (auto m = lookup(syms[k].c, syms[k + 1].c)) queue.push({k, m->first, m->second});
  }
  while (!queue.empty()) {
    Merge top = queue.top();
    queue.pop();
    Sym& cur = syms[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    size_t next_pos = static_cast<size_t>(cur.next);
    Sym right = syms[next_pos];
    auto m = lookup(cur.c, right.c);
    if (!m || m->second != top.new_id) continue;  // an expired entry
    cur.c = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    syms[next_pos].len = 0;
    if (right.next > -1 && static_cast<size_t>(right.next) < syms.size()) syms[right.next].prev = static_cast<int>(top.pos);
    if (cur.prev >= 0) {
      if (auto pm = lookup(syms[cur.prev].c, cur.c)) queue.push({static_cast<size_t>(cur.prev), pm->first, pm->second});
    }
    if (cur.next >= 0 && static_cast<size_t>(cur.next) < syms.size()) {
      if (auto nm = lookup(cur.c, syms[cur.next].c)) queue.push({top.pos, nm->first, nm->second});
    }
  }
  std::vector<int64_t> ids;
  for (auto& s : syms)
    if (s.len != 0) ids.push_back(s.c);
  if (w.size() <= 256) {
    if (cache.size() >= 50000) cache.clear();
    cache.emplace(w, ids);
  }
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<int64_t> Tokenizer::Impl::post_process(const PostProcessor& p, std::vector<int64_t> ids) const {
  switch (p.kind) {
    case PostProcessor::None:
      return ids;
    case PostProcessor::Sequence:
      for (auto& c : p.children) ids = post_process(c, std::move(ids));
      return ids;
    case PostProcessor::Template: {
      std::vector<int64_t> out;
      for (size_t i = 0; i < p.template_items.size(); ++i) {
        if (p.template_is_seq[i]) out.insert(out.end(), ids.begin(), ids.end());
        else out.insert(out.end(), p.template_items[i].begin(), p.template_items[i].end());
      }
      return out;
    }
    case PostProcessor::Wrap: {
      std::vector<int64_t> out = p.prefix;
      out.insert(out.end(), ids.begin(), ids.end());
      out.insert(out.end(), p.suffix.begin(), p.suffix.end());
      return out;
    }
  }
  return ids;
}

std::vector<int64_t> Tokenizer::Impl::encode(std::string_view text, bool add_special) const {
  std::string s = utf8_lossy(text);
  std::vector<int64_t> ids;
  // 1. added tokens in the raw text
  std::vector<Word> raw_words;
  std::vector<int64_t> raw_ids;
  std::vector<int> raw_order;
  split_added(s, false, true, raw_words, raw_ids, raw_order);
  // (the byte offset of each raw word in the original text decides Metaspace "first")
  for (int o : raw_order) {
    if (o >= 0) {
      ids.push_back(raw_ids[o]);
      continue;
    }
    const Word& rw = raw_words[-1 - o];
    // 2. normalize, then added tokens in the normalized text
    std::string norm = normalizer ? normalizer->apply(rw.text) : rw.text;
    std::vector<Word> words;
    std::vector<int64_t> norm_ids;
    std::vector<int> order;
    split_added(norm, true, rw.at_start, words, norm_ids, order);
    for (int o2 : order) {
      if (o2 >= 0) {
        ids.push_back(norm_ids[o2]);
        continue;
      }
      // 3. pre-tokenize, 4. BPE
      std::vector<Word> pieces{words[-1 - o2]};
      if (pre_tokenizer) pieces = pre_tokenize(*pre_tokenizer, std::move(pieces));
      for (auto& w : pieces) bpe(w.text, ids);
    }
  }
  // 5. post-process
  if (add_special) ids = post_process(post, std::move(ids));
  return ids;
}

// ---- decoding

std::vector<std::string> Tokenizer::Impl::run_decoder(const Decoder& d, std::vector<std::string> tokens) const {
  switch (d.kind) {
    case Decoder::Sequence:
      for (auto& c : d.children) tokens = run_decoder(c, std::move(tokens));
      return tokens;
    case Decoder::ByteLevel: {
      std::string bytes;
      for (auto& t : tokens) {
        std::string mapped;
        bool ok = true;
        size_t i = 0;
        while (i < t.size()) {
          uint32_t cp = 0xFFFD;
          size_t len = 1;
          utf8_next(t, i, &cp, &len);
          auto it = char_byte.find(cp);
          if (it == char_byte.end()) {
            ok = false;
            break;
          }
          mapped += static_cast<char>(it->second);
          i += len;
        }
        bytes += ok ? mapped : t;
      }
      return {utf8_lossy(bytes)};
    }
    case Decoder::Metaspace: {
      uint32_t rep = first_char(d.a);
      std::vector<std::string> out;
      out.reserve(tokens.size());
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::string s;
        Chars c = to_chars(tokens[i]);
        for (uint32_t cp : c.cp) {
          if (cp == rep) {
            if (i == 0 && d.prepend != Prepend::Never) continue;
            s += ' ';
          } else {
            append_utf8(s, cp);
          }
        }
        out.push_back(std::move(s));
      }
      return out;
    }
    case Decoder::Replace:
      for (auto& t : tokens) t = replace_all(t, d.a, d.b);
      return tokens;
    case Decoder::ByteFallback: {
      std::vector<std::string> out;
      std::string pending;
      size_t n_pending = 0;
      auto flush = [&]() {
        if (n_pending == 0) return;
        if (utf8_lossy(pending) == pending) {
          out.push_back(pending);
        } else {
          for (size_t k = 0; k < n_pending; ++k) out.push_back(kReplacementUtf8);
        }
        pending.clear();
        n_pending = 0;
      };
      for (auto& t : tokens) {
        int byte = -1;
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
          // u8::from_str_radix(&t[3..5], 16)
          auto hex = [](char ch) -> int {
            if (ch >= '0' && ch <= '9') return ch - '0';
            if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
            if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
            return -1;
          };
          int h = hex(t[3]), l = hex(t[4]);
          if (h >= 0 && l >= 0) byte = h * 16 + l;
          else if (t[3] == '+' && l >= 0) byte = l;
        }
        if (byte >= 0) {
          pending += static_cast<char>(byte);
          ++n_pending;
        } else {
          flush();
          out.push_back(t);
        }
      }
      flush();
      return out;
    }
    case Decoder::Fuse: {
      std::string all;
      for (auto& t : tokens) all += t;
      return {all};
    }
    case Decoder::Strip: {
      std::vector<std::string> out;
      out.reserve(tokens.size());
      for (auto& t : tokens) {
        Chars c = to_chars(t);
        size_t n = c.cp.size();
        size_t start_cut = 0;
        for (size_t i = 0; i < std::min(d.strip_start, n); ++i) {
          if (c.cp[i] == d.strip_content) start_cut = i + 1;
          else break;
        }
        size_t stop_cut = n;
        for (size_t i = 0; i < std::min(d.strip_stop, n); ++i) {
          size_t index = n - i - 1;
          if (c.cp[index] == d.strip_content) stop_cut = index;
          else break;
        }
        if (stop_cut < start_cut) stop_cut = start_cut;
        out.push_back(t.substr(c.off[start_cut], c.off[stop_cut] - c.off[start_cut]));
      }
      return out;
    }
  }
  return tokens;
}

std::string Tokenizer::Impl::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    auto t = id_to_token(id);
    if (!t) continue;
    if (skip_special && special_contents.count(*t)) continue;
    tokens.push_back(std::move(*t));
  }
  if (!decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  std::string out;
  for (auto& t : run_decoder(*decoder, std::move(tokens))) out += t;
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Public API

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    uint32_t cp;
    size_t len = 1;
    if (utf8_next(bytes, i, &cp, &len)) {
      out.append(bytes.substr(i, len));
    } else {
      out += kReplacementUtf8;
    }
    i += len;
  }
  return out;
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_text(const std::string& text, const std::string& source) {
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  try {
    TextReader r(text, source);
    impl->load(r);
  } catch (const FormatError& e) {
    throw TokenizerError(e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  try {
    TextReader r = TextReader::from_file(path);
    auto impl = std::make_unique<Impl>();
    impl->source = path;
    impl->load(r);
    return Tokenizer(std::move(impl));
  } catch (const FormatError& e) {
    throw TokenizerError(e.what());
  }
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  std::string t(token);
  auto a = impl_->added_by_content.find(t);
  if (a != impl_->added_by_content.end()) return a->second;
  auto m = impl_->vocab.find(t);
  if (m != impl_->vocab.end()) return m->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int64_t id) const { return impl_->id_to_token(id); }

int64_t Tokenizer::vocab_size() const {
  int64_t n = static_cast<int64_t>(impl_->vocab.size());
  for (auto& a : impl_->added)
    if (!impl_->vocab.count(a.content)) ++n;
  return n;
}

bool Tokenizer::is_special(int64_t id) const {
  auto t = impl_->id_to_token(id);
  return t && impl_->special_contents.count(*t) > 0;
}

const std::string& Tokenizer::source() const { return impl_->source; }

// ---- StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(&tok), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::decode_range(size_t begin, size_t end) const {
  std::vector<int64_t> window(ids_.begin() + static_cast<std::ptrdiff_t>(begin),
                              ids_.begin() + static_cast<std::ptrdiff_t>(end));
  return tok_->decode(window, skip_special_);
}

static bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, kReplacementUtf8) == 0;
}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  std::string prefix_text = decode_range(prefix_, read_);
  std::string new_text = decode_range(prefix_, ids_.size());
  if (new_text.size() > prefix_text.size() && !ends_with_replacement(new_text)) {
    prefix_ = read_;
    read_ = ids_.size();
    return new_text.substr(prefix_text.size());
  }
  return "";
}

std::string StreamDecoder::flush() {
  std::string prefix_text = decode_range(prefix_, read_);
  std::string new_text = decode_range(prefix_, ids_.size());
  prefix_ = read_ = ids_.size();
  return new_text.size() > prefix_text.size() ? new_text.substr(prefix_text.size()) : std::string();
}

void StreamDecoder::reset() {
  ids_.clear();
  prefix_ = read_ = 0;
}

}  // namespace tcc::chat
