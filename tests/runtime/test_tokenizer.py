"""Tests for tcc.runtime.tokenizer: loading, encode/decode, streaming detokenization, chat formatting.

The tokenizers are trained here from a small built-in corpus (no downloads): a GPT-2 / LLaMA-3 style
byte-level BPE, and a LLaMA-2 / SentencePiece style BPE (Metaspace "▁", byte-fallback `<0xNN>` tokens).
"""
from __future__ import annotations

import json

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tcc.errors import TccError
from tcc.runtime.tokenizer import StreamDecoder, Tokenizer, format_chat
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

CORPUS = """\
The quick brown fox jumps over the lazy dog. A naïve café owner — who lived in 東京 — smiled 🙂.
Compilers turn programs written in one language into programs written in another language.
A tokenizer splits text into tokens; a detokenizer joins the tokens back into text.
Large language models predict the next token given all the previous tokens of the context.
The weather in Tokyo is warm in summer and cold in winter, and the trains are always on time.
Hello world! Hello there, general. How are you doing today? I am doing well, thank you.
Streaming output must never show half of a character to the user, even for emoji like 🙂 or 🚀.
日本語のテキストも少し含めます。東京は日本の首都です。naïve résumé façade coöperate déjà vu.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828; symbols: @ # $ % ^ & * ( ) [ ] { }.
"""
CORPUS_LINES = CORPUS.splitlines() * 8

SAMPLES = [
    "Hello world!",
    "naïve café — 東京 🙂",
    "  leading spaces, double  spaces\tand a tab\nand a new line",
    "Emoji: 🙂🚀👩‍💻 CJK: 日本語のテキスト 東京都 (unseen: 한국어, Ελληνικά)",
    "déjà vu — résumé, 3.14159 🙂!",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A multi-line template with block tags on their own lines (relies on trim_blocks / lstrip_blocks),
# bos/eos tokens, tojson and a loop over extra variables (tools).
TOOLS_TEMPLATE = """\
{{ bos_token }}
{% if tools %}
    {% for tool in tools %}
<tool>{{ tool | tojson }}</tool>
    {% endfor %}
{% endif %}
{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
[no system]
    {% endif %}
{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}
assistant:{% endif %}"""

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 東京?"},
]


# -- tokenizer builders ---------------------------------------------------------------------------


def _byte_level_bpe():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS_LINES, trainer)
    return tok


def _sentencepiece_bpe():
    """LLaMA-2 style: normalizer prepends "▁" and maps " " -> "▁", BPE with byte_fallback."""
    # Train pieces on the ASCII part of the corpus (plus a few accented letters), so CJK and emoji
    # have no pieces and go through the <0xNN> byte-fallback tokens.
    lines = ["".join(c for c in line if ord(c) < 0x250) for line in CORPUS_LINES]
    trainer_tok = tokenizers.Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer_tok.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=400, show_progress=False, limit_alphabet=100)
    )
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")]
    )
    return tok


def _save(dir_, hf_tok, config=None, generation_config=None):
    dir_.mkdir(parents=True, exist_ok=True)
    hf_tok.save(str(dir_ / "tokenizer.json"))
    if config is not None:
        (dir_ / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    if generation_config is not None:
        (dir_ / "generation_config.json").write_text(json.dumps(generation_config))
    return dir_


@pytest.fixture(scope="module")
def hf_byte_level():
    return _byte_level_bpe()


@pytest.fixture(scope="module")
def hf_sentencepiece():
    return _sentencepiece_bpe()


@pytest.fixture(scope="module")
def byte_level_dir(tmp_path_factory, hf_byte_level):
    eos = hf_byte_level.token_to_id("<|endoftext|>")
    im_end = hf_byte_level.token_to_id("<|im_end|>")
    config = {
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": {"content": "<|endoftext|>", "lstrip": False, "rstrip": False, "special": True},
        "add_bos_token": False,
        "chat_template": CHATML_TEMPLATE,
    }
    return _save(tmp_path_factory.mktemp("bytelevel"), hf_byte_level, config,
                 {"bos_token_id": eos, "eos_token_id": [eos, im_end]})


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory, hf_sentencepiece):
    config = {
        "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
    }
    return _save(tmp_path_factory.mktemp("sentencepiece"), hf_sentencepiece, config)


@pytest.fixture(scope="module")
def tok_bl(byte_level_dir):
    return Tokenizer.from_dir(byte_level_dir)


@pytest.fixture(scope="module")
def tok_sp(sentencepiece_dir):
    return Tokenizer.from_dir(sentencepiece_dir)


@pytest.fixture(params=["byte_level", "sentencepiece"])
def tok(request, tok_bl, tok_sp):
    return {"byte_level": tok_bl, "sentencepiece": tok_sp}[request.param]


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# -- loading and encode/decode --------------------------------------------------------------------


def test_special_tokens_and_eos_ids(tok_bl, tok_sp, hf_byte_level):
    eos = hf_byte_level.token_to_id("<|endoftext|>")
    im_end = hf_byte_level.token_to_id("<|im_end|>")
    assert tok_bl.bos_id is None
    assert tok_bl.eos_id == eos and tok_bl.pad_id == eos
    assert tok_bl.eos_ids == {eos, im_end}
    assert tok_bl.vocab_size == hf_byte_level.get_vocab_size(with_added_tokens=True)
    assert tok_bl.token_to_id("<|im_start|>") is not None
    assert tok_bl.chat_template == CHATML_TEMPLATE

    assert (tok_sp.bos_id, tok_sp.eos_id, tok_sp.unk_id) == (1, 2, 0)
    assert tok_sp.bos_token == "<s>" and tok_sp.eos_token == "</s>"
    assert tok_sp.eos_ids == {2}
    assert tok_sp.chat_template is None
    assert tok_sp.token_to_id("<0xE6>") is not None and tok_sp.token_to_id("no-such-token") is None


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_decode_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_add_bos_token(tok_sp, tok_bl):
    ids = tok_sp.encode("Hello world")
    assert ids[0] == tok_sp.bos_id and ids.count(tok_sp.bos_id) == 1
    assert tok_sp.encode("Hello world", add_special_tokens=False) == ids[1:]
    assert tok_sp.decode(ids, skip_special_tokens=False).startswith("<s>")
    assert tok_bl.encode("Hello world") == tok_bl.encode("Hello world", add_special_tokens=False)


def test_byte_fallback_is_used(tok_sp):
    ids = tok_sp.encode("東京 🙂", add_special_tokens=False)
    pieces = [tok_sp.id_to_token(i) for i in ids]
    assert "<0xE6>" in pieces and "<0xF0>" in pieces
    assert tok_sp.decode(ids) == "東京 🙂"


def test_from_files(byte_level_dir, tok_bl):
    t = Tokenizer.from_files(byte_level_dir / "tokenizer.json", byte_level_dir / "tokenizer_config.json")
    assert t.eos_ids == tok_bl.eos_ids and t.chat_template == CHATML_TEMPLATE
    bare = Tokenizer.from_files(str(byte_level_dir / "tokenizer.json"))
    assert bare.eos_id is None and bare.chat_template is None
    assert bare.eos_ids == tok_bl.eos_ids  # generation_config.json beside tokenizer.json still counts
    assert bare.encode("naïve café") == tok_bl.encode("naïve café")


# -- streaming detokenization ---------------------------------------------------------------------


def _assert_flushed(got, want, final):
    """`got` (streamed + flushed ids[:k]) equals `want` (decode(ids[:k])) when ids[:k] ends on a character
    boundary. When it ends inside a character, both end in U+FFFD but may differ before it: a
    byte-fallback decoder turns a whole incomplete run of <0xNN> tokens into U+FFFD, while the stream
    has already emitted the run's complete characters (which are correct: `final` starts with them)."""
    if "\ufffd" not in want:
        assert got == want
    else:
        assert got.startswith(want[: want.index("\ufffd")]) and got.endswith("\ufffd"), (got, want)
        assert final.startswith(got.rstrip("\ufffd")), (got, final)


def _check_stream(tok, ids, skip_special_tokens=True):
    full = tok.decode(ids, skip_special_tokens=skip_special_tokens)
    sd = StreamDecoder(tok, skip_special_tokens=skip_special_tokens)
    emitted = ""
    for k, i in enumerate(ids):
        piece = sd.push(i)
        assert "\ufffd" not in piece, (k, piece)
        emitted += piece
        assert full.startswith(emitted), (k, emitted, full)
        # Flushing a copy here equals decoding the prefix ids[:k+1].
        clone = StreamDecoder(tok, skip_special_tokens=skip_special_tokens)
        clone.ids, clone._prefix, clone._read = list(sd.ids), sd._prefix, sd._read
        _assert_flushed(emitted + clone.flush(), tok.decode(ids[: k + 1], skip_special_tokens=skip_special_tokens), full)
    assert emitted + sd.flush() == full
    return emitted


@pytest.mark.parametrize("text", SAMPLES)
def test_stream_decoder_matches_full_decode(tok, text):
    ids = tok.encode(text)
    assert _check_stream(tok, ids) == text  # complete text: nothing held back at the end


def test_stream_decoder_every_prefix(tok):
    text = "Hi 🙂 naïve 東京! " + "日本語 🚀 café"
    ids = tok.encode(text, add_special_tokens=False)
    for k in range(len(ids) + 1):
        sd = StreamDecoder(tok)
        out = "".join(sd.push(i) for i in ids[:k])
        assert "\ufffd" not in out
        _assert_flushed(out + sd.flush(), tok.decode(ids[:k]), text)


def test_stream_decoder_holds_partial_characters(tok):
    ids = tok.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1  # an emoji is several byte tokens in both tokenizers
    sd = StreamDecoder(tok)
    assert [sd.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert sd.push(ids[-1]) == "🙂"
    # A truncated character comes out as U+FFFD only on flush.
    sd = StreamDecoder(tok)
    assert "".join(sd.push(i) for i in ids[:-1]) == ""
    assert "\ufffd" in sd.flush()


def test_stream_decoder_special_tokens(tok_bl, tok_sp):
    for t in (tok_bl, tok_sp):
        eos = t.eos_id
        ids = t.encode("Hello world", add_special_tokens=False) + [eos] + t.encode(" 東京 🙂", add_special_tokens=False)
        assert _check_stream(t, ids) == t.decode(ids)
        assert _check_stream(t, ids, skip_special_tokens=False) == t.decode(ids, skip_special_tokens=False)


def test_stream_decoder_sentencepiece_spaces(tok_sp):
    # Leading-space handling of Metaspace pieces at window starts, runs of spaces, a leading space.
    for text in ["Hello  world   again", " leading", "a b c d e f", "東京 東京  🙂 🙂"]:
        ids = tok_sp.encode(text)
        assert _check_stream(tok_sp, ids) == text


# -- chat formatting ------------------------------------------------------------------------------


def test_config_chat_template(tok_bl):
    out = format_chat(MESSAGES, tok_bl)
    assert out == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nWhat is 東京?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = format_chat(MESSAGES[:2], tok_bl, add_generation_prompt=False)
    assert no_prompt == "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    # The special tokens in the prompt encode to their ids.
    ids = tok_bl.encode(out, add_special_tokens=False)
    assert ids[0] == tok_bl.token_to_id("<|im_start|>") and tok_bl.token_to_id("<|im_end|>") in ids


def test_config_chat_template_raise_exception(tok_bl):
    with pytest.raises(TccError) as ei:
        format_chat([{"role": "tool", "content": "42"}], tok_bl)
    _one_line_error(ei, "chat template 'default'", "tokenizer_config.json", "Unsupported role: tool")


def test_named_templates_and_tools(tmp_path, hf_sentencepiece):
    config = {
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": [
            {"name": "default", "template": CHATML_TEMPLATE},
            {"name": "tool_use", "template": TOOLS_TEMPLATE},
        ],
    }
    t = Tokenizer.from_dir(_save(tmp_path / "m", hf_sentencepiece, config))
    assert format_chat(MESSAGES[1:2], t) == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    tools = [{"name": "get_time", "description": "Time in 東京", "parameters": {}}]
    out = format_chat(MESSAGES[1:3], t, template="tool_use", tools=tools)
    assert out == (
        "<s>\n"  # a newline after {{ ... }} is kept (trim_blocks only trims after block tags)
        '<tool>{"name": "get_time", "description": "Time in 東京", "parameters": {}}</tool>\n'
        "[no system]\n"
        "user: Hi there</s>\n"
        "assistant: Hello.</s>\n"
        "assistant:"
    )
    out = format_chat(MESSAGES[:1], t, template="tool_use", tools=None, add_generation_prompt=False)
    assert out == "<s>\nsystem: You are terse.</s>\n"


def test_inline_template_and_strftime():
    out = format_chat([{"role": "user", "content": "x"}], None,
                      template="{{ strftime_now('%Y') | length }}|{{ messages[0].content }}")
    assert out == "4|x"


def test_builtin_llama2(tok_sp):
    assert format_chat(MESSAGES, tok_sp, template="llama2") == (
        "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s>"
        "<s>[INST] What is 東京? [/INST]"
    )
    assert format_chat(MESSAGES[1:2], tok_sp, template="llama2") == "<s>[INST] Hi there [/INST]"
    with pytest.raises(TccError) as ei:
        format_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tok_sp, template="llama2")
    _one_line_error(ei, "llama2", "alternate")


def test_builtin_chatml(tok_sp):
    assert format_chat(MESSAGES[:2], tok_sp, template="chatml") == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_chat(MESSAGES[1:2], tok_sp, template="chatml", add_generation_prompt=False) == (
        "<|im_start|>user\nHi there<|im_end|>\n"
    )


def test_builtin_plain(tok_sp, tok_bl):
    expected = "System: You are terse.\nUser: Hi there\nAssistant: Hello.\nUser: What is 東京?\nAssistant: "
    assert format_chat(MESSAGES, tok_sp, template="plain") == expected
    # Defaults when the config has no chat template: plain, or chatml when the vocab has <|im_start|>.
    assert format_chat(MESSAGES, tok_sp) == expected
    bare_bl = Tokenizer(tok_bl.hf_tokenizer)
    assert format_chat(MESSAGES[1:2], bare_bl) == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    # A built-in name overrides the config's template.
    assert format_chat(MESSAGES, tok_bl, template="plain") == expected


def test_chat_errors(tok_bl, tok_sp):
    with pytest.raises(TccError) as ei:
        format_chat(MESSAGES, tok_sp, template="vicuna")
    _one_line_error(ei, "unknown chat template 'vicuna'", "llama2", "chatml", "plain")
    with pytest.raises(TccError) as ei:
        format_chat([], tok_bl)
    _one_line_error(ei, "empty")
    with pytest.raises(TccError) as ei:
        format_chat([{"content": "no role"}], tok_bl)
    _one_line_error(ei, "role")
    with pytest.raises(TccError) as ei:
        format_chat(MESSAGES, tok_bl, template="{% for m in messages %}{{ m.content }")
    _one_line_error(ei, "chat template <inline>", "syntax error")
    with pytest.raises(TccError) as ei:
        format_chat(MESSAGES, tok_bl, template="{{ messages[0].content + 1 }}")
    _one_line_error(ei, "chat template <inline>", "failed")
    with pytest.raises(TccError) as ei:
        format_chat([{"role": "tool", "content": "x"}], tok_sp, template="chatml")
    _one_line_error(ei, "'chatml'", "tool")


# -- loading errors -------------------------------------------------------------------------------


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(TccError) as ei:
        Tokenizer.from_dir(tmp_path)
    _one_line_error(ei, "tokenizer.json", "not found")
    with pytest.raises(TccError) as ei:
        Tokenizer.from_dir(tmp_path / "nope")
    _one_line_error(ei, "not found", "nope")


def test_malformed_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{\n  "version": "1.0",\n  "model": ,\n}\n')
    with pytest.raises(TccError) as ei:
        Tokenizer.from_dir(tmp_path)
    _one_line_error(ei, "tokenizer.json", "line 3", "column 12")


def test_invalid_tokenizer_structure(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    with pytest.raises(TccError) as ei:
        Tokenizer.from_dir(tmp_path)
    _one_line_error(ei, "tokenizer.json")


def test_malformed_config_json(tmp_path, hf_byte_level):
    d = _save(tmp_path / "m", hf_byte_level)
    (d / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"\n "bos_token": null}')
    with pytest.raises(TccError) as ei:
        Tokenizer.from_dir(d)
    _one_line_error(ei, "tokenizer_config.json", "line 2", "column 2")


def test_config_token_not_in_vocab(tmp_path, hf_byte_level):
    d = _save(tmp_path / "m", hf_byte_level, {"eos_token": {"content": "</s>"}})
    with pytest.raises(TccError) as ei:
        Tokenizer.from_dir(d)
    _one_line_error(ei, "tokenizer_config.json", "eos_token", "'</s>'", "vocabulary")


def test_bad_generation_config(tmp_path, hf_byte_level):
    d = _save(tmp_path / "m", hf_byte_level, {"eos_token": "<|endoftext|>"}, {"eos_token_id": [10**9]})
    with pytest.raises(TccError) as ei:
        Tokenizer.from_dir(d)
    _one_line_error(ei, "generation_config.json", "eos_token_id")


@pytest.mark.parametrize("add_bos", [True, False, None])
def test_add_bos_token_with_post_processor(tmp_path, add_bos):
    """A tokenizer.json whose post-processor adds <s> itself (as LLaMA's does): add_bos_token: false
    removes it, true does not add a second one."""
    from tokenizers import processors

    hf = _sentencepiece_bpe()
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    config = {"bos_token": "<s>", "eos_token": "</s>"}
    if add_bos is not None:
        config["add_bos_token"] = add_bos
    t = Tokenizer.from_dir(_save(tmp_path / "m", hf, config))
    plain = t.encode("Hello world", add_special_tokens=False)
    assert plain[0] != 1
    assert t.encode("Hello world") == ([] if add_bos is False else [1]) + plain
