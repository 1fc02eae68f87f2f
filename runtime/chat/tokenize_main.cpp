// tcc-tokenize: a small command-line front end of the C++ tokenizer (runtime/chat/tokenizer.h), used by the
// tests to compare it with HF `tokenizers`.
//
//   tcc-tokenize TOKENIZER.json [--decode] [--no-special] [--json] [--stream]
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
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer.h"

namespace {

[[noreturn]] void die(const std::string& msg, int code = 1) {
  std::cout.flush();
  std::fprintf(stderr, "tcc-tokenize: error: %s\n", msg.c_str());
  std::exit(code);
}

const char kUsage[] = "usage: tcc-tokenize TOKENIZER.json [--decode] [--no-special] [--json] [--stream]\n";

}  // namespace

int main(int argc, char** argv) {
  using nlohmann::json;
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
    die("missing TOKENIZER.json", 2);
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
          json j = json::parse(line, nullptr, false);
          if (j.is_discarded() || !j.is_string()) die("stdin line " + std::to_string(lineno) + ": not a JSON string");
          text = j.get<std::string>();
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
          json pieces = json::array();
          for (int64_t id : ids) pieces.push_back(sd.push(id));
          pieces.push_back(sd.flush());
          out = pieces.dump(-1, ' ', false, json::error_handler_t::replace);
        } else {
          std::string text = tok.decode(ids, no_special);
          out = as_json ? json(text).dump(-1, ' ', false, json::error_handler_t::replace) : text;
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
