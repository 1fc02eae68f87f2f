"""The C++ tokenizer of the standalone chat binary (runtime/chat/tokenizer.cpp) against HF `tokenizers`.

Tokenizers of each supported kind are trained here with HF `tokenizers` on text found on disk (Python's
pydoc topics and /usr/share/common-licenses), written as tokenizer.json and translated by the compiler's
writer (runtime/chat_files.py) into tokenizer.tcc, and the `tcc-tokenize` CLI built from runtime/chat (a
bare C++17 compiler: no JSON library) must encode (with and without special tokens) and decode every line
of a test corpus of more than 2000 lines exactly like HF:
  * GPT-2 byte-level BPE (ByteLevel pre-tokenizer with its regex; with and without add_prefix_space),
  * LLaMA-3 byte-level BPE (Split with the LLaMA-3 regex + ByteLevel(use_regex=false), ignore_merges),
  * LLaMA-2 SentencePiece-style BPE (Prepend/Replace normalizer, or a Metaspace pre-tokenizer; byte
    fallback `<0xNN>` tokens, fuse_unk; Replace/ByteFallback/Fuse/Strip or Metaspace decoders).
A damaged or truncated tokenizer.tcc, or a tokenizer.json feature the C++ side lacks, must end in one error
line naming the file and line, never a crash. The build is shared by the test session (and by pytest-xdist
workers, under a file lock).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

REPO = Path(__file__).resolve().parents[2]
CHAT_SRC = REPO / "runtime" / "chat"
FAKE_MODEL = Path(__file__).resolve().parent / "fake_model.cpp"
VERIFY_SRC = REPO / "runtime" / "tcc_verify.cpp"  # the chat binary checks its weights with it

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# -- building the C++ tools (shared with test_chat_binary.py) ----------------------------------------


def _compiler() -> list[str]:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        pytest.skip("no C++ compiler (g++)")
    ccache = shutil.which("ccache")
    return ([ccache] if ccache else []) + [cxx]


CXXFLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra"]


def _run_jobs(jobs: list[list[str]]) -> None:
    procs = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for cmd in jobs]
    errors = []
    for cmd, p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            errors.append(f"$ {' '.join(cmd)}\n{out}")
    if errors:
        raise RuntimeError("C++ build failed:\n" + "\n".join(errors))


def _shared_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    # pytest-xdist workers each get basetemp/popen-gwN: build once in the shared parent.
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_chat_tools(tmp_path_factory, with_chat: bool = False) -> dict[str, Path]:
    """Build `tcc-tokenize` (and with_chat: the `chat` binary linked with tests/runtime/fake_model.cpp)
    once per source version into a directory shared by the session's workers. Returns their paths."""
    cxx = _compiler()
    sources = sorted(CHAT_SRC.glob("*.cpp")) + sorted(CHAT_SRC.glob("*.h")) + [
        REPO / "codegen" / "unicode_tables.py", REPO / "runtime" / "tcc_model.h", FAKE_MODEL, VERIFY_SRC,
        REPO / "runtime" / "tcc_verify.h", REPO / "runtime" / "tcc_runtime.h"]
    h = hashlib.sha256()
    for p in sources:
        h.update(p.name.encode())
        if p.exists():
            h.update(p.read_bytes())
    h.update(" ".join(cxx + CXXFLAGS).encode())
    h.update(unicodedata.unidata_version.encode())
    base = _shared_base(tmp_path_factory)
    out = base / f"chat-tools-{h.hexdigest()[:16]}"
    tools = {"tokenize": out / "tcc-tokenize", "chat": out / "chat-fake", "dir": out}
    marker = out / ("done-chat" if with_chat else "done")
    with open(base / "chat-tools.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return tools
        out.mkdir(parents=True, exist_ok=True)
        from tcc.codegen.unicode_tables import write_unicode_header

        write_unicode_header(out / "tcc_unicode_tables.h")
        inc = [f"-I{out}", f"-I{CHAT_SRC}", f"-I{REPO / 'runtime'}"]
        tok_o, cli_o = out / "tokenizer.o", out / "tokenize_main.o"
        jobs = []
        if not (out / "done").exists():
            jobs += [cxx + CXXFLAGS + inc + ["-c", str(CHAT_SRC / "tokenizer.cpp"), "-o", str(tok_o)],
                     cxx + CXXFLAGS + inc + ["-c", str(CHAT_SRC / "tokenize_main.cpp"), "-o", str(cli_o)]]
        chat_o, fake_o, verify_o = out / "chat_main.o", out / "fake_model.o", out / "tcc_verify.o"
        if with_chat:
            jobs += [cxx + CXXFLAGS + inc + ["-c", str(CHAT_SRC / "chat_main.cpp"), "-o", str(chat_o)],
                     cxx + CXXFLAGS + inc + ["-c", str(FAKE_MODEL), "-o", str(fake_o)],
                     cxx + CXXFLAGS + inc + ["-c", str(VERIFY_SRC), "-o", str(verify_o)]]
        _run_jobs(jobs)
        links = []
        if not (out / "done").exists():
            links.append(cxx + [str(cli_o), str(tok_o), "-o", str(tools["tokenize"])])
        if with_chat:
            links.append(cxx + [str(chat_o), str(tok_o), str(fake_o), str(verify_o), "-static-libstdc++", "-pthread",
                                "-o", str(tools["chat"])])
        _run_jobs(links)
        (out / "done").touch()
        if with_chat:
            marker.touch()
    return tools


@pytest.fixture(scope="session")
def cpp_tools(tmp_path_factory):
    return build_chat_tools(tmp_path_factory)


def to_tcc(json_path: Path) -> Path:
    """tokenizer.tcc beside a tokenizer.json, written as the compiler writes it into an artifact."""
    from tcc.runtime.chat_files import tokenizer_text

    out = json_path.with_suffix(".tcc")
    out.write_text(tokenizer_text(json.loads(json_path.read_text(encoding="utf-8"))), encoding="ascii")
    return out


def run_cli(tools, tok_path, lines: list[str], *flags: str) -> list[str]:
    """Feed `lines` (JSON-encoded where --json) to tcc-tokenize; returns its output lines."""
    text = "".join(line + "\n" for line in lines)
    p = subprocess.run([str(tools["tokenize"]), str(tok_path), *flags], input=text.encode(), capture_output=True,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = p.stdout.decode().split("\n")
    assert out[-1] == ""
    return out[:-1]


# -- corpora ------------------------------------------------------------------------------------------


def _disk_texts() -> list[str]:
    texts = []
    try:
        from pydoc_data import topics

        texts += list(topics.topics.values())
    except ImportError:
        pass
    lic = Path("/usr/share/common-licenses")
    if lic.is_dir():
        for p in sorted(lic.iterdir()):
            if p.is_file():
                texts.append(p.read_text(encoding="utf-8", errors="replace"))
    if not texts:
        pytest.skip("no training text on disk (pydoc_data, /usr/share/common-licenses)")
    return texts


UNICODE_BITS = [
    "naïve", "café", "Ångström", "façade", "coöperate", "déjà vu", "Straße", "ÉCOLE", "œuvre",
    "日本語のテキスト", "東京都", "中文字符", "한국어", "Ελληνικά", "русский язык", "العربية", "مرحبا بالعالم",
    "עברית", "हिन्दी", "ภาษาไทย", "ქართული", "Ⓐⓑ", "🙂", "🚀", "👩‍💻", "🇯🇵", "👍🏽", "❤️", "∑∫√", "½ ¾", "x²", "Ⅻ",
    "e\u0301", "a\u0308\u0304", "\u0301", "\u200b", "a\u00a0b", "\u3000", "x\u2028y", "\u2003em", "\u1680",
    "٣٤٥", "١٢٣٤٥", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0001f9d1\u200d\U0001f52c", "ﬁ", "ſ", "'ſ", "İstanbul", "K", "Ω",
]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Hello", "world", "token", "model",
         "compiler", "streaming", "The", "A", "license", "software", "Python", "function", "return", "class"]
CONTRACTIONS = ["DON'T", "He'S", "we'RE", "they've", "I'M", "you'LL", "she'd", "it's", "O'Neil", "'s", "''",
                "can't", "WON'T", "y'all", "I'D", "We'Ve", "x'Ll", "'", "rock'n'roll"]
NUMBERS = ["12345", "1,000.5", "3.14159", "0", "007", "1234567890", "2024-01-01", "0x1F", "1e-5", "-42",
           "123", "99.99%", "$100"]
PUNCT = ["!!!", "...", "—", "«quoted»", "(x)", "[a]", "{b}", "@#$%^&*", "\"", "`code`", "C++", "e-mail", "a/b",
         "\\", "?!", ";", "->", "==", "<", ">", "</", "<|", "|>"]
SPECIALS = ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>",
            "<s", "</s >", "<<s>>", "<mask>", "[SW]", "<R>", "hello world", "zzz"]
SPACES = [" ", " ", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n ", "\t\t", "    ", " \t", "\r", "\n \n"]


def _synthetic_lines(n: int, seed: int = 1234) -> list[str]:
    rnd = random.Random(seed)
    groups = [WORDS] * 6 + [UNICODE_BITS] * 3 + [CONTRACTIONS] * 2 + [NUMBERS] * 2 + [PUNCT] * 2 + [SPECIALS]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rnd.randint(1, 14)):
            parts.append(rnd.choice(rnd.choice(groups)))
            parts.append(rnd.choice(SPACES) if rnd.random() < 0.8 else "")
        line = "".join(parts)
        r = rnd.random()
        if r < 0.1:
            line = rnd.choice(SPACES) + line  # leading white space
        elif r < 0.2:
            line = line.rstrip() + rnd.choice(["  ", " ", "\t", "\n"])  # trailing white space
        out.append(line)
    return out


EDGE_LINES = [
    "", " ", "  ", "\n", "\t", "a", "Hello world", " Hello", "Hello ", "Hello  world", "Hello   world  ",
    "DON'T stop", "He'S here", "'s", "'S'T'RE'VE'M'LL'D", "I'ſ", "12345 1,000.5", "1234567", "a1b2c3",
    "<s>", "</s>", "<s></s>", "<s> hello</s>", "hi<s>there", "<|endoftext|>", "text<|endoftext|>more",
    "<|endoftext|><|endoftext|>", "<|begin_of_text|>Hi<|eot_id|>", " <mask> x", "a<mask>b", "a [SW] b", "a[SW]b",
    "[SW]", "x <R>  y", "<R>\n\nz", "hello world", "say hello world!", "zzz zzz", "\u00a0\u00a0x", "x\u3000\u3000y",
    "line one\nline two\n", "\r\n\r\n", "tab\tseparated\tvalues\t", "  \n  leading", "emoji 🙂🙂🙂 end",
    "👩‍💻👩‍💻", "e\u0301e\u0301", "مرحبا 123 عالم", "日本語 テキスト。", "\u0301start", "∑ x² dx", "\x7f\x01\x02",
    "He'Sllo", "DON'Tknow", "I'ſtyle", "x'ſt", "it'LLbe", "a zzz b", "azzz", "zzzz", "▁zzz", "\u017ft",
    "a" * 300, "ab" * 200 + " " + "x" * 50, "🙂" * 40, " " * 30 + "x", "x" + " " * 30,
]


@pytest.fixture(scope="session")
def test_lines() -> list[str]:
    rnd = random.Random(99)
    texts = _disk_texts()
    disk_lines = [line for t in texts for line in t.split("\n")]
    picked = rnd.sample(disk_lines, min(1500, len(disk_lines)))
    multi = []
    for _ in range(150):  # multi-line chunks with their original indentation and blank lines
        t = rnd.choice(texts).split("\n")
        i = rnd.randrange(len(t))
        multi.append("\n".join(t[i:i + rnd.randint(2, 6)]))
    lines = EDGE_LINES + picked + multi + _synthetic_lines(900)
    assert len(lines) >= 2000
    return lines


# -- training the tokenizers ----------------------------------------------------------------------------


def _training_text() -> list[str]:
    # (long-s words make the vocabulary merge "ſt", so the (?i:'s) contraction case-folding 'ſ' shows in ids)
    return ([line for t in _disk_texts() for line in t.split("\n") if line.strip()] + _synthetic_lines(300, seed=7)
            + ["ſtyle ſtrange ſtuff ſt ſt ſt"] * 40)


def _train_bpe(pre_tokenizer, vocab_size: int, **trainer_args) -> tuple[dict, list]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, **trainer_args)
    tok.train_from_iterator(_training_text(), trainer)
    m = json.loads(tok.to_str())["model"]
    merges = [tuple(x) if isinstance(x, list) else tuple(x.split(" ")) for x in m["merges"]]
    return m["vocab"], merges


def _gpt2(add_prefix_space: bool, extras: bool) -> Tokenizer:
    vocab, merges = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space), 1200,
                               special_tokens=["<|endoftext|>"],
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens([AddedToken("<|endoftext|>", normalized=True, special=True)])
    if extras:
        eot = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A <|endoftext|>",
                                                           special_tokens=[("<|endoftext|>", eot)])
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
        tok.add_tokens([AddedToken("[SW]", single_word=True), AddedToken("<R>", rstrip=True),
                        AddedToken("hello world", normalized=False), AddedToken("zzz")])
    return tok


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _llama3() -> Tokenizer:
    split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated")
    pre = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab, merges = _train_bpe(pre, 1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Whole words in the vocabulary that merges do not build: ignore_merges picks them as one token.
    for extra in ["123", "Ġzzz", "zzz", "DON", "ĠHello", "Ġworld", "Ã©"]:
        vocab.setdefault(extra, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in LLAMA3_SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return tok


SP_DECODER = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]


def _llama2(variant: str) -> Tokenizer:
    # Train on whitespace-split words (as SentencePiece does), then assemble a LLaMA-2 style vocabulary:
    # <unk> <s> </s>, the 256 <0xNN> byte tokens, then the pieces.
    vocab, merges = _train_bpe(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), 900,
                               limit_alphabet=120)
    byte_fallback = variant != "unk"
    new_vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if byte_fallback:
        for b in range(256):
            new_vocab[f"<0x{b:02X}>"] = len(new_vocab)
    for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        new_vocab.setdefault(t, len(new_vocab))
    tok = Tokenizer(models.BPE(new_vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=byte_fallback))
    if variant in ("old", "unk"):
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence(SP_DECODER)
    elif variant == "metaspace_first":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(SP_DECODER)
    elif variant == "metaspace_always":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                        prepend_scheme="always")])
    else:
        raise ValueError(variant)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    if variant == "old":  # a normalized added token matches its normalized form ("▁zzz") in normalized text
        tok.add_tokens([AddedToken("zzz", normalized=True)])
    if variant == "metaspace_first":
        tok.add_tokens([AddedToken("zzz", normalized=True), AddedToken("<R>", rstrip=True, normalized=False)])
    return tok


KINDS = ["gpt2", "gpt2_prefix_extras", "llama3", "llama2_old", "llama2_unk", "llama2_metaspace_first",
         "llama2_metaspace_always"]


def make_tokenizer(kind: str) -> Tokenizer:
    return {
        "gpt2": lambda: _gpt2(False, False),
        "gpt2_prefix_extras": lambda: _gpt2(True, True),
        "llama3": _llama3,
        "llama2_old": lambda: _llama2("old"),
        "llama2_unk": lambda: _llama2("unk"),
        "llama2_metaspace_first": lambda: _llama2("metaspace_first"),
        "llama2_metaspace_always": lambda: _llama2("metaspace_always"),
    }[kind]()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """kind -> (HF tokenizer, path of its tokenizer.tcc), trained on first use (its tokenizer.json lies
    beside it, same name with .json)."""
    d = tmp_path_factory.mktemp("tokenizers")
    cache: dict[str, tuple[Tokenizer, Path]] = {}

    def get(kind: str):
        if kind not in cache:
            hf = make_tokenizer(kind)
            path = d / f"{kind}.json"
            path.write_text(hf.to_str(pretty=True), encoding="utf-8")
            cache[kind] = (Tokenizer.from_file(str(path)), to_tcc(path))  # exactly what the file says
        return cache[kind]

    return get


def _j(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _ids(line: str) -> list[int]:
    return [int(x) for x in line.split()]


def _first_mismatch(expected, got, inputs) -> str:
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            return f"line {i}: input {inputs[i]!r}\n  HF:  {e!r}\n  C++: {g!r}"
    return f"lengths differ: {len(expected)} vs {len(got)}"


# -- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_encode_matches_hf(kind, cpp_tools, trained, test_lines):
    hf, path = trained(kind)
    inputs = [_j(s) for s in test_lines]
    for add_special in (True, False):
        expected = [hf.encode(s, add_special_tokens=add_special).ids for s in test_lines]
        flags = ["--json"] + ([] if add_special else ["--no-special"])
        got = [_ids(line) for line in run_cli(cpp_tools, path, inputs, *flags)]
        assert len(got) == len(expected)
        mismatches = sum(e != g for e, g in zip(expected, got))
        assert mismatches == 0, (f"{kind} add_special_tokens={add_special}: {mismatches} of {len(expected)} lines "
                                 f"differ; first: {_first_mismatch(expected, got, test_lines)}")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_matches_hf(kind, cpp_tools, trained, test_lines):
    hf, path = trained(kind)
    id_lists = [hf.encode(s, add_special_tokens=True).ids for s in test_lines]
    # Also arbitrary id sequences: invalid UTF-8 from byte tokens, special tokens anywhere, unknown ids.
    rnd = random.Random(5)
    n = hf.get_vocab_size(with_added_tokens=True)
    for _ in range(400):
        id_lists.append([rnd.randrange(n + 3) for _ in range(rnd.randint(0, 12))])
    inputs = [" ".join(map(str, ids)) for ids in id_lists]
    for skip in (False, True):
        expected = [hf.decode(ids, skip_special_tokens=skip) for ids in id_lists]
        flags = ["--decode", "--json"] + (["--no-special"] if skip else [])
        got = [json.loads(line) for line in run_cli(cpp_tools, path, inputs, *flags)]
        mismatches = sum(e != g for e, g in zip(expected, got))
        assert mismatches == 0, (f"{kind} skip_special_tokens={skip}: {mismatches} of {len(expected)} differ; "
                                 f"first: {_first_mismatch(expected, got, inputs)}")


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "llama2_old", "llama2_metaspace_always"])
def test_stream_decoder(kind, cpp_tools, trained, test_lines):
    """The streaming decoder's pieces join to HF decode, never split a character, hold back incomplete
    byte sequences, and equal the pieces of the Python runtime's StreamDecoder."""
    from tcc.runtime.tokenizer import StreamDecoder as PyStreamDecoder
    from tcc.runtime.tokenizer import Tokenizer as PyTokenizer

    hf, path = trained(kind)
    lines = [s for s in test_lines if s.strip()][:400]
    lines += ["日本語🙂👩‍💻 e\u0301", "🚀" * 5, "مرحبا"]
    id_lists = [hf.encode(s, add_special_tokens=False).ids for s in lines]
    inputs = [" ".join(map(str, ids)) for ids in id_lists]
    got = [json.loads(line) for line in run_cli(cpp_tools, path, inputs, "--decode", "--stream", "--no-special")]
    py = PyTokenizer(hf)
    for ids, pieces, line in zip(id_lists, got, lines):
        assert len(pieces) == len(ids) + 1
        assert "".join(pieces) == hf.decode(ids, skip_special_tokens=True), line
        sd = PyStreamDecoder(py, skip_special_tokens=True)
        assert pieces == [sd.push(i) for i in ids] + [sd.flush()], line
        for p in pieces[:-1]:
            assert "\ufffd" not in p or "\ufffd" in line
    # a multibyte character split over byte tokens comes out whole, once complete
    if kind.startswith("llama2"):
        ids = [hf.token_to_id(f"<0x{b:02X}>") for b in "🙂".encode()]
    else:
        ids = hf.encode("🙂", add_special_tokens=False).ids
    assert len(ids) > 1
    [pieces] = [json.loads(x) for x in run_cli(cpp_tools, path, [" ".join(map(str, ids))], "--decode", "--stream")]
    assert pieces[:-2] == [""] * (len(ids) - 1) and pieces[-2] == "🙂" and pieces[-1] == ""


def test_leading_space_stripped_only_at_start(cpp_tools, trained):
    hf, path = trained("llama2_old")
    ids = hf.encode("Hello world again", add_special_tokens=False).ids
    [pieces] = [json.loads(x) for x in run_cli(cpp_tools, path, [" ".join(map(str, ids))], "--decode", "--stream")]
    text = "".join(pieces)
    assert text == "Hello world again"
    assert not pieces[0].startswith(" ")


def test_legacy_merges_format(cpp_tools, trained, test_lines, tmp_path):
    """Older tokenizer.json files (GPT-2's, LLaMA's) write merges as "a b" strings."""
    _, path = trained("llama2_old")
    j = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    hf = Tokenizer.from_file(str(legacy))
    lines = test_lines[:500]
    got = [_ids(x) for x in run_cli(cpp_tools, to_tcc(legacy), [_j(s) for s in lines], "--json")]
    assert got == [hf.encode(s).ids for s in lines]


def test_plain_line_mode(cpp_tools, trained):
    hf, path = trained("gpt2")
    lines = ["Hello world", "naïve café 🙂", ""]
    got = run_cli(cpp_tools, path, lines)
    assert [_ids(x) for x in got] == [hf.encode(s).ids for s in lines]
    back = run_cli(cpp_tools, path, got, "--decode")
    assert back == lines


# -- errors -------------------------------------------------------------------------------------------------


def _cli_error(tools, path, *flags) -> str:
    p = subprocess.run([str(tools["tokenize"]), str(path), *flags], input=b"hello\n", capture_output=True, timeout=60,
                       check=False)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("tcc-tokenize: error: "), err
    return err.strip()


def test_error_missing_file(cpp_tools, tmp_path):
    err = _cli_error(cpp_tools, tmp_path / "nope.tcc")
    assert str(tmp_path / "nope.tcc") in err and "not found" in err


def test_error_given_tokenizer_json(cpp_tools, trained):
    """tokenizer.json itself is not what the C++ side reads; the error says what it wants."""
    _, path = trained("gpt2")
    err = _cli_error(cpp_tools, path.with_suffix(".json"))
    assert f"{path.with_suffix('.json')}:1: not a tcc tokenizer file (the first line must be 'tcc-tokenizer 1'" in err


def _edited(trained, tmp_path, kind, edit) -> Path:
    _, path = trained(kind)
    j = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    edit(j)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(j), encoding="utf-8")
    return to_tcc(out)


def _line_of(path: Path, start: str) -> int:
    lines = path.read_text(encoding="ascii").split("\n")
    return next(i + 1 for i, line in enumerate(lines) if line.startswith(start))


# What the writer cannot express becomes an `unsupported` record on line 2 (the compile goes on: Python runs
# the model with HF tokenizers); what only the C++ side checks (the regex, tokens of merges) names its line.
@pytest.mark.parametrize("edit, expect, line_start", [
    (lambda j: j["model"].update(type="WordPiece"), 'model.type "WordPiece" is not supported', None),
    (lambda j: j["model"].update(type="Unigram"), 'model.type "Unigram" is not supported', None),
    (lambda j: j.update(normalizer={"type": "NFC"}), 'normalizer.type "NFC" is not supported', None),
    (lambda j: j.update(pre_tokenizer={"type": "Whitespace"}), 'pre_tokenizer.type "Whitespace" is not supported',
     None),
    (lambda j: j.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": r"\d+"}, "behavior": "Isolated",
                                       "invert": False}), r'unsupported pattern "\\d+"', "pre_tokenizer Split"),
    (lambda j: j.update(pre_tokenizer={"type": "Split", "pattern": {"String": "x"}, "behavior": "Sideways"}),
     'pre_tokenizer.behavior "Sideways" is not supported', "pre_tokenizer Split"),
    (lambda j: j.update(decoder={"type": "WordPiece", "prefix": "##", "cleanup": True}),
     'decoder.type "WordPiece" is not supported', None),
    (lambda j: j.update(decoder={"type": "Strip", "content": "ab", "start": 1, "stop": 0}),
     'decoder.content must be a single character, got "ab"', "decoder Strip"),
    (lambda j: j["model"].update(dropout=0.1), "model.dropout 0.1 is not supported", None),
    (lambda j: j["model"].update(vocab=[1, 2]), "model.vocab must be an object", None),
    (lambda j: j["model"].update(vocab={"a": "x"}), 'model.vocab["a"] must be an integer id, got "x"', None),
    (lambda j: j["model"]["merges"].append("Ġ nonexistent-token"),
     'token "nonexistent-token" is not in the vocabulary', "%C4%A0 nonexistent-token"),
    (lambda j: j["model"]["merges"].append("a b c"), "must be two tokens separated by one space", None),
    (lambda j: j.pop("model"), "model is missing", None),
    (lambda j: j["added_tokens"].append({"id": 7, "content": 3}), "added_tokens[1].content must be a string", None),
])
def test_error_unsupported(cpp_tools, trained, tmp_path, edit, expect, line_start):
    path = _edited(trained, tmp_path, "gpt2", edit)
    err = _cli_error(cpp_tools, path)
    if line_start is None:
        assert err.startswith(f"tcc-tokenize: error: {path}:2: the chat binary cannot use this model's "
                              f"tokenizer.json: "), err
    else:
        assert err.startswith(f"tcc-tokenize: error: {path}:{_line_of(path, line_start)}: "), err
    assert expect in err, err


def _replace_line(lines: list[str], start: str, new: str) -> list[str]:
    i = next(i for i, line in enumerate(lines) if line.startswith(start))
    return lines[:i] + [new] + lines[i + 1:]


def _set_entry(lines: list[str], new: str) -> list[str]:
    """Replace the first vocabulary entry (the line after "vocab N")."""
    i = next(i for i, line in enumerate(lines) if line.startswith("vocab ")) + 1
    return lines[:i] + [new] + lines[i + 1:]


def _line_after(start: str, k: int):
    """The line number k lines after the first one starting with `start`."""
    return lambda lines: 1 + k + next(i for i, line in enumerate(lines) if line.startswith(start))


# (name, damage to the lines, the line the error names: its text, a function of the damaged lines, or a number;
# negative: from the end), what it says)
DAMAGES = [
    ("wrong version", lambda ls: ["tcc-tokenizer 2"] + ls[1:], 1, "tokenizer file version 2 is not supported"),
    ("empty file", lambda ls: [], 1, "unexpected end of file (the file is truncated)"),
    ("no end", lambda ls: ls[:-1], -1, "unexpected end of file (the file is truncated)"),
    ("text after end", lambda ls: ls + ["vocab 1"], -1, "text after 'end'"),
    ("bad escape", lambda ls: _set_entry(ls, "%G1 0"), "%G1 0", "bad escape in '%G1'"),
    ("cut escape", lambda ls: _set_entry(ls, "!%4 0"), "!%4 0", "bad escape in '!%4'"),
    ("id not a number", lambda ls: _set_entry(ls, "! zero"), "! zero", "'zero' is not an integer"),
    ("id out of range", lambda ls: _set_entry(ls, "! 4294967296"), "! 4294967296",
     "4294967296 is out of range (0 to 4294967295)"),
    ("negative id", lambda ls: _set_entry(ls, "! -1"), "! -1", "-1 is out of range"),
    ("huge count", lambda ls: _replace_line(ls, "vocab ", "vocab 2000000000"), "vocab 2000000000",
     "'vocab' announces 2000000000 records but the file ends before them"),
    ("short count", lambda ls: _replace_line(ls, "merges ", "merges 1"), _line_after("merges ", 2),
     "expected 'normalizer', got"),
    ("two spaces", lambda ls: _set_entry(ls, "!  0"), "!  0", "empty field"),
    ("empty line", lambda ls: _set_entry(ls, ""), "", "empty line"),
    ("missing value", lambda ls: _replace_line(ls, "vocab ", "vocab"), "vocab", "'vocab' takes 1 value(s), got 0"),
    ("tab", lambda ls: _set_entry(ls, "!\t0"), "!\t0", "invalid byte 0x09"),
    ("flag not 0 or 1", lambda ls: _replace_line(ls, "fuse_unk", "fuse_unk yes"), "fuse_unk yes",
     "'yes' is not 0 or 1"),
    ("unknown decoder", lambda ls: _replace_line(ls, "decoder ", "decoder Bogus"), "decoder Bogus",
     "decoder: unknown decoder 'Bogus'"),
    ("deep nesting", lambda ls: _replace_line(ls, "decoder ", "\n".join(["decoder Sequence 1"] + ["Sequence 1"] * 100)),
     _line_after("decoder ", 65), "Sequence nodes nested more than 64 deep"),
    ("newline in a reason", lambda ls: ls[:1] + ["unsupported a%0Ab%0D", "end"], 2,
     "the chat binary cannot use this model's tokenizer.json: a b"),  # (the \r too, then stripped)
    ("added token fields", lambda ls: _replace_line(ls, "added_tokens ", "added_tokens 1\n1199 x 1 0 0 0"),
     "1199 x 1 0 0 0", "'1199' takes 6 value(s), got 5"),
]


@pytest.mark.parametrize("damage, line, expect", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_error_damaged_file(cpp_tools, trained, tmp_path, damage, line, expect):
    _, good = trained("gpt2")
    lines = damage(good.read_text(encoding="ascii").rstrip("\n").split("\n"))
    text = "\n".join(lines) + "\n" if lines else ""
    path = tmp_path / "damaged.tcc"
    path.write_bytes(text.encode())
    n = text.count("\n")
    if isinstance(line, str):
        line = 1 + text.split("\n").index(line)
    elif callable(line):
        line = line(text.split("\n"))
    elif line < 0:
        line = n + 2 + line if expect.startswith("unexpected end") else n + 1 + line
    err = _cli_error(cpp_tools, path)
    assert err.startswith(f"tcc-tokenize: error: {path}:{line}: ") and expect in err, err


def test_error_crlf(cpp_tools, trained, tmp_path):
    _, good = trained("gpt2")
    path = tmp_path / "crlf.tcc"
    path.write_bytes(good.read_bytes().replace(b"\n", b"\r\n"))
    assert _cli_error(cpp_tools, path) == f"tcc-tokenize: error: {path}:1: invalid byte 0x0D (not written by tcc)"


def test_truncated_file_anywhere(cpp_tools, trained, tmp_path):
    """A tokenizer.tcc cut at any byte (all but its final newline) is an error naming the file and a line."""
    _, good = trained("llama2_old")
    data = good.read_bytes()
    rnd = random.Random(3)
    cuts = sorted({0, 1, 5, len(data) - 2, len(data) - 4, len(data) - 5}
                  | {rnd.randrange(len(data) - 1) for _ in range(40)}
                  | {i + 1 for i in range(len(data) - 300, len(data) - 1) if data[i:i + 1] == b"\n"})
    path = tmp_path / "cut.tcc"
    for cut in cuts:
        path.write_bytes(data[:cut])
        err = _cli_error(cpp_tools, path)
        assert err.startswith(f"tcc-tokenize: error: {path}:"), (cut, err)
    path.write_bytes(data[:-1])  # only the last newline gone: still whole
    assert run_cli(cpp_tools, path, ["hi"])


def test_corrupted_bytes_never_crash(cpp_tools, trained, tmp_path):
    """Random bytes overwritten: the file may still read (an id changed), else one error line; no signal."""
    _, good = trained("llama3")
    data = bytearray(good.read_bytes())
    rnd = random.Random(11)
    path = tmp_path / "corrupt.tcc"
    errors = 0
    for _ in range(40):
        bad = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            bad[rnd.randrange(len(bad))] = rnd.choice(b"0 9%\n\x00\xffSeqz-")
        path.write_bytes(bytes(bad))
        p = subprocess.run([str(cpp_tools["tokenize"]), str(path)], input=b"hello world\n", capture_output=True,
                           timeout=60, check=False)
        assert p.returncode in (0, 1), (p.returncode, p.stderr)
        if p.returncode:
            errors += 1
            err = p.stderr.decode()
            assert err.count("\n") == 1 and err.startswith(f"tcc-tokenize: error: {path}:"), err
    assert errors > 0


def test_writer_escapes_round_trip():
    """Every field is printable ASCII without spaces; the escapes give back the UTF-8 bytes."""
    from tcc.runtime.chat_files import escape

    def unescape(f: str) -> bytes:
        if f == "%":
            return b""
        out, i = bytearray(), 0
        while i < len(f):
            if f[i] == "%":
                out.append(int(f[i + 1:i + 3], 16))
                i += 3
            else:
                out.append(ord(f[i]))
                i += 1
        return bytes(out)

    for s in ["", "%", "a b", "Ġhello", "<0x0A>", "\n\r\t\x00", "日本🙂", "100%", "%41", "\x7f~!"]:
        e = escape(s)
        assert e and all(0x21 <= ord(c) <= 0x7E for c in e), e
        assert unescape(e) == s.encode(), s
    assert escape("") == "%" and escape("a b") == "a%20b" and escape("%") == "%25"


def test_unsupported_tokenizer_still_writes_files():
    """A tokenizer the C++ side cannot run does not fail the compile: the files say why."""
    from tcc.runtime.chat_files import tokenizer_text

    text = tokenizer_text({"model": {"type": "WordPiece", "vocab": {}}})
    assert text == ('tcc-tokenizer 1\nunsupported model.type%20"WordPiece"%20is%20not%20supported%20'
                    "(supported:%20BPE)\nend\n")


def test_error_bad_input(cpp_tools, trained):
    _, path = trained("gpt2")
    p = subprocess.run([str(cpp_tools["tokenize"]), str(path), "--decode"], input=b"1 2 x\n", capture_output=True,
                       check=False)
    assert p.returncode == 1 and b"not a token id: x" in p.stderr
    p = subprocess.run([str(cpp_tools["tokenize"]), str(path), "--bogus"], capture_output=True, check=False)
    assert p.returncode == 2 and b"unknown option --bogus" in p.stderr


def test_unicode_header_generation(tmp_path):
    from tcc.codegen.unicode_tables import unicode_ranges, write_unicode_header

    path = write_unicode_header(tmp_path)
    text = Path(path).read_text()
    assert text.startswith("// Generated by tcc") and "DO NOT EDIT" in text
    mtime = os.stat(path).st_mtime_ns
    write_unicode_header(path)  # unchanged text: not rewritten
    assert os.stat(path).st_mtime_ns == mtime
    r = unicode_ranges()

    def inside(name, cp):
        return any(lo <= cp <= hi for lo, hi in r[name])

    assert inside("letter", ord("é")) and inside("letter", ord("日")) and not inside("letter", ord("1"))
    assert inside("number", ord("٣")) and inside("number", ord("½")) and not inside("number", ord("a"))
    assert inside("white_space", 0x3000) and not inside("white_space", 0x200B)
    assert inside("word", 0x0301) and inside("word", ord("_")) and not inside("word", ord("-"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
