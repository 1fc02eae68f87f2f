// tcc-tokenize: a small command-line front end of the C++ tokenizer (runtime/chat/tokenizer.h), used by the
// tests to compare it with HF `tokenizers`.
//
//   tcc-tokenize TOKENIZER.tcc [--decode] [--no-special] [--json] [--stream]
//
// TOKENIZER.tcc is what the compiler writes beside tokenizer.json (python -m tcc.runtime.chat_files
// tokenizer.json > tokenizer.tcc makes one by hand).
//
// Reads stdin line by line and writes one line per input line:
//   encode (default): the line's text -> token ids, space-separated
//   --decode:         space-separated ids -> text
//   --no-special:     encode without special tokens (add_special_tokens=false);
//                     decode skipping special tokens (skip_special_tokens=true)
//   --json:           text is a JSON string literal (in for encode, out for decode), so lines can hold
//                     newlines and any other character
//   --stream:         with --decode: decode through the streaming decoder and print the JSON list of the
//                     pieces it emits (one per id, then the flush)
// Errors: one line "tcc-tokenize: error: ..." on stderr, exit status 1 (2 for usage errors).
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tcc_text.h"
#include "tokenizer.h"

namespace {
using tcc::chat::append_utf8;

[[noreturn]] void die(const std::string& msg, int code = 1) {
  std::cout.flush();
  std::fprintf(stderr, "tcc-tokenize: error: %s\n", tcc::chat::one_line(msg).c_str());
  std::exit(code);
}

const char kUsage[] = "usage: tcc-tokenize TOKENIZER.tcc [--decode] [--no-special] [--json] [--stream]\n";

// -- JSON string literals (the --json lines; no JSON library)

int hex4(const std::string& s, size_t i) {  // the 4 hex digits at s[i..i+3]; -1 if they are not
  if (i + 4 > s.size()) return -1;
  int v = 0;
  for (size_t k = i; k < i + 4; ++k) {
    char c = s[k];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// A line holding one JSON string literal (surrounding white space allowed) -> its UTF-8 text.
bool parse_json_string(const std::string& line, std::string* out) {
  size_t i = line.find_first_not_of(" \t\r");
  if (i == std::string::npos || line[i] != '"') return false;
  out->clear();
  for (++i; i < line.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(line[i]);
    if (c == '"') return line.find_first_not_of(" \t\r", i + 1) == std::string::npos;
    if (c < 0x20) return false;
    if (c != '\\') {
      *out += static_cast<char>(c);
      continue;
    }
    if (++i >= line.size()) return false;
    switch (line[i]) {
      case '"': *out += '"'; break;
      case '\\': *out += '\\'; break;
      case '/': *out += '/'; break;
      case 'b': *out += '\b'; break;
      case 'f': *out += '\f'; break;
      case 'n': *out += '\n'; break;
      case 'r': *out += '\r'; break;
      case 't': *out += '\t'; break;
      case 'u': {
        int hi = hex4(line, i + 1);
        if (hi < 0) return false;
        i += 4;
        uint32_t cp = static_cast<uint32_t>(hi);
        if (hi >= 0xDC00 && hi <= 0xDFFF) return false;  // a lone low surrogate
        if (hi >= 0xD800 && hi <= 0xDBFF) {              // needs its low half
          if (i + 2 >= line.size() || line[i + 1] != '\\' || line[i + 2] != 'u') return false;
          int lo = hex4(line, i + 3);
          if (lo < 0xDC00 || lo > 0xDFFF) return false;
          cp = 0x10000 + ((static_cast<uint32_t>(hi) - 0xD800) << 10) + (static_cast<uint32_t>(lo) - 0xDC00);
          i += 6;
        }
        append_utf8(*out, cp);
        break;
      }
      default:
        return false;
    }
  }
  return false;  // no closing quote
}

// UTF-8 text -> a JSON string literal (invalid UTF-8 becomes U+FFFD first).
std::string json_string(const std::string& text) { return tcc::chat::json_quote(tcc::chat::utf8_lossy(text)); }

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  bool decode = false, no_special = false, as_json = false, stream = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--decode") decode = true;
    else if (a == "--no-special") no_special = true;
    else if (a == "--json") as_json = true;
    else if (a == "--stream") stream = true;
    else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      std::fputs(kUsage, stderr);
      die("unknown option " + a, 2);
    } else if (path.empty()) {
      path = a;
    } else {
      std::fputs(kUsage, stderr);
      die("unexpected argument " + a, 2);
    }
  }
  if (path.empty()) {
    std::fputs(kUsage, stderr);
    die("missing TOKENIZER.tcc", 2);
  }
  if (stream && !decode) die("--stream needs --decode", 2);

  try {
    tcc::chat::Tokenizer tok = tcc::chat::Tokenizer::from_file(path);
    std::string line;
    long lineno = 0;
    std::string out;
    while (std::getline(std::cin, line)) {
      ++lineno;
      out.clear();
      if (!decode) {
        std::string text = line;
        if (as_json) {
          if (!parse_json_string(line, &text)) die("stdin line " + std::to_string(lineno) + ": not a JSON string");
        }
        auto ids = tok.encode(text, !no_special);
        for (size_t k = 0; k < ids.size(); ++k) {
          if (k) out += ' ';
          out += std::to_string(ids[k]);
        }
      } else {
        std::vector<int64_t> ids;
        std::istringstream ss(line);
        std::string word;
        while (ss >> word) {
          char* end = nullptr;
          long long v = std::strtoll(word.c_str(), &end, 10);
          if (end == word.c_str() || *end != '\0')
            die("stdin line " + std::to_string(lineno) + ": not a token id: " + word);
          ids.push_back(v);
        }
        if (stream) {
          tcc::chat::StreamDecoder sd(tok, no_special);
          out = "[";
          for (int64_t id : ids) out += json_string(sd.push(id)) + ", ";
          out += json_string(sd.flush()) + "]";
        } else {
          std::string text = tok.decode(ids, no_special);
          out = as_json ? json_string(text) : text;
        }
      }
      out += '\n';
      std::fwrite(out.data(), 1, out.size(), stdout);
    }
  } catch (const tcc::chat::TokenizerError& e) {
    die(e.what());
  } catch (const std::exception& e) {
    die(std::string("internal error: ") + e.what());
  }
  return 0;
}
