// chat: the standalone chat program of a tcc-compiled language model. Built into every LLM artifact
// directory next to weights.bin, tokenizer.tcc and chat.tcc (tcc's own text files, written by the compiler
// beside tokenizer.json and chat.json: docs/formats.md, "Chat files"), linked with the generated model (the
// C API of tcc_model.h) and the C++ tokenizer (tokenizer.h). No Python, no JSON library. See
// docs/tokenizer.md.
//
//   chat [DIR] [--prompt TEXT] [--system TEXT] [--raw] [--max-new-tokens N] [--temperature T] [--top-k K]
//        [--top-p P] [--repetition-penalty R] [--seed S] [--threads N] [--print-ids]
//
// Conversation semantics (tcc's Python runtime implements the same):
//   turn 1:   (system ? first_user_prefix_with_system[0] + system + [1] : first_user_prefix) + user + user_suffix
//   turn n>1: assistant_suffix + user_prefix + user + user_suffix
// encoded with add_special_tokens=false; bos_token_id goes first when the cache is empty and add_bos is set
// (the segments and ids: chat.tcc).
// --raw: the text itself, encoded with add_special_tokens=true at the start of the context (false later).
// The prompt plus max_new_tokens must fit the context; prompts are fed in chunks of chat.tcc's max_prefill.
// A reply stops at an eos token (neither fed nor printed), after max_new_tokens or on Ctrl-C; every printed
// token is fed (runtime/generate.py does the same).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "tcc_model.h"
#include "tcc_verify.h"
#include "tcc_text.h"
#include "tokenizer.h"

namespace {

using tcc::chat::FormatError;
using tcc::chat::TextReader;
using tcc::chat::StreamDecoder;
using tcc::chat::Tokenizer;

volatile sig_atomic_t g_generating = 0;
volatile sig_atomic_t g_interrupted = 0;

void on_sigint(int) {
  if (g_generating) {
    g_interrupted = 1;  // stop the current reply; the session goes on
    return;
  }
  static const char nl[] = "\n";
  ssize_t r = write(STDOUT_FILENO, nl, 1);
  (void)r;
  _exit(130);  // Ctrl-C at the prompt: leave
}

[[noreturn]] void die(const std::string& msg, int code = 1) {
  std::fflush(stdout);
  std::fprintf(stderr, "chat: error: %s\n", tcc::chat::one_line(msg).c_str());
  std::exit(code);
}

const char kUsage[] =
    "usage: chat [DIR] [--prompt TEXT] [--system TEXT] [--raw] [--max-new-tokens N] [--temperature T]\n"
    "            [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--threads N] [--print-ids]\n"
    "            [--no-verify]\n"
    "\n"
    "Chat with the compiled language model in DIR (default: the directory of this program).\n"
    "  --prompt TEXT             answer TEXT and exit (default: interactive, one message per line;\n"
    "                            /reset starts a new conversation, /quit or end of input exits)\n"
    "  --system TEXT             system prompt (default: chat.tcc default_system)\n"
    "  --raw                     no chat template: continue the text as typed\n"
    "  --max-new-tokens N        reply length limit (default 256)\n"
    "  --temperature T           0: greedy (default 0.7)\n"
    "  --top-k K                 0: no top-k cut (default 40)\n"
    "  --top-p P                 1: no nucleus cut (default 0.9)\n"
    "  --repetition-penalty R    1: none (default 1.1)\n"
    "  --seed S                  sampling seed (default: time based)\n"
    "  --threads N               compute threads (default: all cores, at most 1024)\n"
    "  --no-verify               check weights.bin's size only, not its SHA-256 (faster start)\n"
    "  --print-ids               print 'ids: <prompt ids> | <reply ids>' to stderr after each reply\n";

struct Options {
  std::string dir;
  std::optional<std::string> prompt, system;
  bool raw = false, print_ids = false;
  int64_t max_new_tokens = 256;
  tcc_sampling sampling{0.7f, 40, 0.9f, 1.1f};
  std::optional<uint64_t> seed;
  int threads = 0;
  bool verify = true;  // check weights.bin's size and SHA-256 before mapping it
};

struct ChatConfig {
  std::optional<int64_t> bos_token_id;
  bool add_bos = false;
  std::vector<int64_t> eos_token_ids;
  std::string first_user_prefix;
  std::optional<std::pair<std::string, std::string>> first_user_prefix_with_system;
  std::string user_prefix, user_suffix, assistant_suffix;
  std::optional<std::string> default_system;
  int64_t max_context = 0;
  std::string template_name;
  // From the manifest's "llm" section:
  int64_t max_prefill = 0;  // the longest prefill chunk compiled for; 0: no limit known (one run per prompt)
  bool recompute = false;   // no KV cache: every run takes the whole context
};

// -- argument parsing

double parse_number(const std::string& opt, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || errno == ERANGE || !std::isfinite(d))
    die(opt + " needs a number, got '" + v + "'", 2);
  return d;
}

int64_t parse_int(const std::string& opt, const std::string& v, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || end != v.c_str() + v.size() || errno == ERANGE) die(opt + " needs an integer, got '" + v + "'", 2);
  if (x < lo || x > hi) die(opt + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + v, 2);
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_dir = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_inline = true;
      }
    }
    auto next = [&]() -> std::string {
      if (has_inline) return value;
      if (i + 1 >= argc) die(a + " needs a value", 2);
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--prompt") {
      o.prompt = next();
    } else if (a == "--system") {
      o.system = next();
    } else if (a == "--raw") {
      o.raw = true;
    } else if (a == "--print-ids") {
      o.print_ids = true;
    } else if (a == "--max-new-tokens") {
      o.max_new_tokens = parse_int(a, next(), 0, INT32_MAX);
    } else if (a == "--temperature") {
      double t = parse_number(a, next());
      if (t < 0) die("--temperature must not be negative", 2);
      o.sampling.temperature = static_cast<float>(t);
    } else if (a == "--top-k") {
      o.sampling.top_k = static_cast<int32_t>(parse_int(a, next(), 0, INT32_MAX));
    } else if (a == "--top-p") {
      double p = parse_number(a, next());
      if (!(p > 0 && p <= 1)) die("--top-p must be in (0, 1]", 2);
      o.sampling.top_p = static_cast<float>(p);
    } else if (a == "--repetition-penalty") {
      double r = parse_number(a, next());
      if (r <= 0) die("--repetition-penalty must be greater than 0", 2);
      o.sampling.repetition_penalty = static_cast<float>(r);
    } else if (a == "--seed") {
      std::string v = next();
      char* end = nullptr;
      errno = 0;
      unsigned long long s = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || v[0] == '-' || end != v.c_str() + v.size() || errno == ERANGE)
        die("--seed needs a non-negative integer, got '" + v + "'", 2);
      o.seed = s;
    } else if (a == "--threads") {
      o.threads = static_cast<int>(parse_int(a, next(), 0, 1024));
    } else if (a == "--no-verify") {
      o.verify = false;
    } else if (!a.empty() && a[0] == '-' && a != "-") {
      std::fputs(kUsage, stderr);
      die("unknown option " + a, 2);
    } else if (!have_dir) {
      o.dir = a;
      have_dir = true;
    } else {
      std::fputs(kUsage, stderr);
      die("unexpected argument " + a, 2);
    }
  }
  return o;
}

std::string exe_dir() {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink("/proc/self/exe", buf, PATH_MAX);
  if (n <= 0) die("cannot find this program's directory (/proc/self/exe); pass the model directory");
  std::string p(buf, static_cast<size_t>(n));
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : p.substr(0, slash));
}

std::string join_path(const std::string& dir, const char* name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

// -- chat.tcc (written by the compiler: runtime/chat_files.py; docs/formats.md, "Chat files")

// chat.json's turn segments plus the manifest facts the binary needs. Throws FormatError.
ChatConfig read_chat_config(TextReader& r) {
  r.next();
  if (r.keyword() != "tcc-chat")
    r.fail("not a tcc chat file (the first line must be 'tcc-chat 1'; the compiler writes it)");
  r.check_count(1, 1);
  if (r.raw(1) != "1") r.fail("chat file version " + r.raw(1) + " is not supported (this program reads 1)");
  ChatConfig c;
  auto string = [&](const char* key) {
    r.expect(key);
    return r.str(1);
  };
  c.template_name = string("template_name");
  if (r.peek("bos_token_id")) {
    r.expect("bos_token_id");
    c.bos_token_id = r.integer(1, 0, INT64_MAX);
  }
  r.expect("add_bos");
  c.add_bos = r.flag(1);
  if (c.add_bos && !c.bos_token_id) r.fail("add_bos is 1 but there is no bos_token_id");
  r.expect("eos_token_ids", 0, 4096);
  for (size_t i = 1; i < r.size(); ++i) c.eos_token_ids.push_back(r.integer(i, 0, INT64_MAX));
  c.first_user_prefix = string("first_user_prefix");
  if (r.peek("first_user_prefix_with_system")) {
    r.expect("first_user_prefix_with_system", 2, 2);
    c.first_user_prefix_with_system = std::make_pair(r.str(1), r.str(2));
  }
  c.user_prefix = string("user_prefix");
  c.user_suffix = string("user_suffix");
  c.assistant_suffix = string("assistant_suffix");
  if (r.peek("default_system")) c.default_system = string("default_system");
  r.expect("max_context");
  c.max_context = r.integer(1, 0, INT64_MAX);
  if (r.peek("max_prefill")) {
    r.expect("max_prefill");
    c.max_prefill = r.integer(1, 1, INT64_MAX);
  }
  r.expect("recompute");
  c.recompute = r.flag(1);
  r.expect("end", 0, 0);
  if (r.lines_left() > 0) {
    r.next();
    r.fail("text after 'end'");
  }
  return c;
}

ChatConfig load_chat_config(const std::string& path) {
  try {
    TextReader r = TextReader::from_file(path);
    return read_chat_config(r);
  } catch (const FormatError& e) {
    die(e.what());
  }
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

void write_out(const std::string& s) {
  if (s.empty()) return;
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

std::string ids_text(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s;
}

// -- the conversation

enum class TurnResult { Ok, Interrupted, Rejected };

class Chat {
 public:
  Chat(tcc_model* model, const Tokenizer& tok, ChatConfig cfg, const Options& opt)
      : model_(model), tok_(tok), cfg_(std::move(cfg)), opt_(opt) {
    int64_t cap = tcc_model_kv_capacity();
    use_kv_ = cap > 0 && !cfg_.recompute;
    limit_ = use_kv_ ? cap : 0;
    if (cfg_.max_context > 0 && (limit_ <= 0 || cfg_.max_context < limit_)) limit_ = cfg_.max_context;
    if (limit_ <= 0) die("the model has no KV cache and chat.tcc gives no max_context");
    rng_ = tcc_rng_seed(opt.seed ? *opt.seed
                                 : static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
                                       (static_cast<uint64_t>(getpid()) << 32));
    const int n_out = tcc_model_num_outputs();
    for (int i = 0; i < n_out; ++i) {
      const char* name = tcc_model_output_name(i);
      if (name && std::string(name) == "logits") logits_index_ = i;
    }
    n_outputs_ = n_out;
    // Decode steps pick their token in the program (tcc_model_run_select: on a GPU only the id comes back)
    // where it has a KV cache and its logits output is the one run_select reads ("logits", or the only one).
    const char* first = tcc_model_output_name(logits_index_);
    select_ = use_kv_ && (n_out == 1 || (first && std::string(first) == "logits"));
  }

  int64_t limit() const { return limit_; }

  void reset() {
    if (use_kv_ && tcc_model_kv_truncate(model_, 0) != 0)
      die(std::string("cannot reset the KV cache: ") + tcc_model_last_error());
    context_.clear();
  }

  // One user message: template, prefill, generate and stream the reply.
  TurnResult turn(const std::string& user) {
    std::string text;
    bool add_special = false;
    const bool first = context_.empty();
    if (opt_.raw) {
      text = user;
      add_special = first;
    } else if (first) {
      std::optional<std::string> system = opt_.system ? opt_.system : cfg_.default_system;
      if (system && !system->empty() && cfg_.first_user_prefix_with_system)
        text = cfg_.first_user_prefix_with_system->first + *system + cfg_.first_user_prefix_with_system->second;
      else
        text = cfg_.first_user_prefix;
      text += user + cfg_.user_suffix;
    } else {
      text = cfg_.assistant_suffix + cfg_.user_prefix + user + cfg_.user_suffix;
    }
    std::vector<int64_t> feed;
    if (!opt_.raw && first && cfg_.add_bos) feed.push_back(*cfg_.bos_token_id);
    std::vector<int64_t> enc = tok_.encode(text, add_special);
    feed.insert(feed.end(), enc.begin(), enc.end());
    if (feed.empty()) {
      std::fprintf(stderr, "chat: error: the message encodes to no tokens\n");
      return TurnResult::Rejected;
    }

    // The prompt and a whole reply must fit (as the Python runtime's Generator.run).
    const int64_t used = static_cast<int64_t>(context_.size());
    const int64_t need = used + static_cast<int64_t>(feed.size()) + opt_.max_new_tokens;
    if (need > limit_) {
      std::fflush(stdout);
      std::fprintf(stderr,
                   "chat: error: context overflow: %lld tokens in the context + %zu prompt tokens + max_new_tokens "
                   "%lld = %lld exceed the model's context of %lld tokens (%s--max-new-tokens)\n",
                   static_cast<long long>(used), feed.size(), static_cast<long long>(opt_.max_new_tokens),
                   static_cast<long long>(need), static_cast<long long>(limit_),
                   used > 0 ? "/reset starts a new conversation; or lower " : "lower ");
      return TurnResult::Rejected;
    }

    g_interrupted = 0;
    g_generating = 1;
    auto t0 = std::chrono::steady_clock::now();
    const float* logits = run(feed);
    double prefill_s = seconds_since(t0);
    auto t1 = std::chrono::steady_clock::now();

    StreamDecoder sd(tok_, /*skip_special_tokens=*/true);
    std::vector<int64_t> generated;
    const char* reason = "length";
    int64_t picked = -1;  // the token a run_select step already chose
    for (int64_t i = 0; i < opt_.max_new_tokens; ++i) {
      int64_t id = picked >= 0 ? picked
                               : tcc_sample(logits, vocab_, &opt_.sampling, context_.data(),
                                            static_cast<int64_t>(context_.size()), &rng_);
      if (std::find(cfg_.eos_token_ids.begin(), cfg_.eos_token_ids.end(), id) != cfg_.eos_token_ids.end()) {
        reason = "eos";  // an end token is neither printed nor fed
        break;
      }
      generated.push_back(id);
      write_out(sd.push(id));
      // every printed token joins the context, the last one too (without a selection: no draw is spent)
      if (select_ && i + 1 < opt_.max_new_tokens) picked = run_select(id);
      else logits = run({id});
      if (g_interrupted) {
        reason = "interrupted";
        break;
      }
    }
    write_out(sd.flush());
    write_out("\n");
    g_generating = 0;
    double decode_s = seconds_since(t1);

    if (opt_.print_ids) std::fprintf(stderr, "ids: %s | %s\n", ids_text(feed).c_str(), ids_text(generated).c_str());
    auto rate = [](size_t n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; };
    std::fprintf(stderr, "[prefill %zu tok %.1f tok/s | decode %zu tok %.1f tok/s | %s]\n", feed.size(),
                 rate(feed.size(), prefill_s), generated.size(), rate(generated.size(), decode_s), reason);
    std::fflush(stderr);
    return g_interrupted ? TurnResult::Interrupted : TurnResult::Ok;
  }

 private:
  // Feed `tokens` (appended to the context; in chunks of at most max_prefill tokens) and return the
  // logits of the last position.
  const float* run(const std::vector<int64_t>& tokens) {
    if (!use_kv_) {  // no cache: the whole context every time
      context_.insert(context_.end(), tokens.begin(), tokens.end());
      return run_once(context_);
    }
    const size_t chunk = cfg_.max_prefill > 0 ? static_cast<size_t>(cfg_.max_prefill) : tokens.size();
    const float* logits = nullptr;
    for (size_t start = 0; start < tokens.size(); start += chunk) {
      std::vector<int64_t> part(tokens.begin() + static_cast<std::ptrdiff_t>(start),
                                tokens.begin() + static_cast<std::ptrdiff_t>(std::min(tokens.size(), start + chunk)));
      logits = run_once(part);
      context_.insert(context_.end(), part.begin(), part.end());
    }
    return logits;
  }

  // Feed one token and return the next, chosen by the program with tcc_sample's rules and generator stream.
  int64_t run_select(int64_t id) {
    tcc_model_set_logits_rows(model_, 1);
    context_.push_back(id);  // the recent ids tcc_sample would see after the run
    tcc_tensor in;
    std::memset(&in, 0, sizeof in);
    in.data = &id;
    in.ndim = 2;
    in.shape[0] = 1;
    in.shape[1] = 1;
    in.dtype = TCC_I64;
    int64_t next = -1;
    if (tcc_model_run_select(model_, &in, 1, &opt_.sampling, context_.data(), static_cast<int64_t>(context_.size()),
                             &rng_, &next) != 0) {
      g_generating = 0;
      die(std::string("model run failed: ") + tcc_model_last_error());
    }
    return next;
  }

  const float* run_once(std::vector<int64_t>& input) {
    tcc_model_set_logits_rows(model_, 1);
    tcc_tensor in;
    std::memset(&in, 0, sizeof in);
    in.data = input.data();
    in.ndim = 2;
    in.shape[0] = 1;
    in.shape[1] = static_cast<int64_t>(input.size());
    in.dtype = TCC_I64;
    std::vector<tcc_tensor> outs(static_cast<size_t>(std::max(n_outputs_, 1)));
    std::memset(outs.data(), 0, outs.size() * sizeof(tcc_tensor));
    if (tcc_model_run(model_, &in, 1, outs.data(), n_outputs_) != 0) {
      g_generating = 0;
      die(std::string("model run failed: ") + tcc_model_last_error());
    }
    const tcc_tensor& out = outs[static_cast<size_t>(logits_index_)];
    if (out.dtype != TCC_F32 || out.ndim < 2 || out.shape[out.ndim - 1] < 1 || out.shape[out.ndim - 2] < 1 ||
        !out.data) {
      g_generating = 0;
      die("the model's logits output is not float32 [1, n, vocab]");
    }
    vocab_ = out.shape[out.ndim - 1];
    const int64_t rows = out.shape[out.ndim - 2];
    return static_cast<const float*>(out.data) + (rows - 1) * vocab_;
  }

  tcc_model* model_;
  const Tokenizer& tok_;
  ChatConfig cfg_;
  const Options& opt_;
  bool use_kv_ = true;
  bool select_ = false;  // decode steps through tcc_model_run_select
  int64_t limit_ = 0;
  uint64_t rng_ = 0;
  int logits_index_ = 0;
  int n_outputs_ = 1;
  int64_t vocab_ = 0;
  std::vector<int64_t> context_;  // every token fed to the model in this conversation
};

}  // namespace

int main(int argc, char** argv) {
  Options opt = parse_args(argc, argv);
  if (opt.dir.empty()) opt.dir = exe_dir();
  struct stat st;
  if (stat(opt.dir.c_str(), &st) != 0) die(opt.dir + ": no such directory");
  if (!S_ISDIR(st.st_mode)) die(opt.dir + ": not a directory");

  ChatConfig cfg = load_chat_config(join_path(opt.dir, "chat.tcc"));
  if (!opt.raw && opt.system && !opt.system->empty() && !cfg.first_user_prefix_with_system)
    die("--system: the chat template '" + cfg.template_name +
        "' has no system prompt (chat.tcc has no first_user_prefix_with_system)");
  if (opt.prompt && opt.prompt->empty()) die("--prompt: empty message", 2);

  std::optional<Tokenizer> tok;
  try {
    tok.emplace(Tokenizer::from_file(join_path(opt.dir, "tokenizer.tcc")));
  } catch (const tcc::chat::TokenizerError& e) {
    die(e.what());
  }

  if (tcc_model_num_inputs() != 1)
    die("the model takes " + std::to_string(tcc_model_num_inputs()) +
        " inputs; chat needs a language model whose only input is input_ids");
  std::string weights = join_path(opt.dir, "weights.bin");
  try {
    if (opt.verify) tcc::verify_file(weights, tcc_model_weights_bytes(), tcc_model_weights_sha256());
  } catch (const std::exception& e) {
    die(e.what());
  }
  tcc_model* model = tcc_model_load(weights.c_str(), opt.threads);
  if (!model) {
    const char* why = tcc_model_last_error();
    die("cannot load model " + weights + ": " + (why && *why ? why : "unknown error"));
  }

  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);

  int status = 0;
  try {
    Chat chat(model, *tok, cfg, opt);
    if (opt.prompt) {
      TurnResult r = chat.turn(*opt.prompt);
      status = r == TurnResult::Rejected ? 1 : r == TurnResult::Interrupted ? 130 : 0;
    } else {
      const bool tty = isatty(STDIN_FILENO) != 0;
      std::string line;
      while (true) {
        if (tty) write_out("> ");
        if (!std::getline(std::cin, line)) {
          if (tty) write_out("\n");
          break;
        }
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line == "/quit" || line == "/exit") break;
        if (line == "/reset") {
          chat.reset();
          std::fprintf(stderr, "[conversation reset]\n");
          continue;
        }
        if (line.empty()) continue;
        chat.turn(line);
      }
    }
  } catch (const tcc::chat::TokenizerError& e) {
    tcc_model_free(model);
    die(e.what());
  }
  tcc_model_free(model);
  return status;
}
