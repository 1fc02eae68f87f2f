"""Tokenization, streaming detokenization and chat formatting for tcc-compiled LLMs.

* `Tokenizer` wraps a Hugging Face `tokenizers.Tokenizer` loaded from a model directory
  (`tokenizer.json`, optionally `tokenizer_config.json`, `generation_config.json`, `chat_template.jinja`).
* `StreamDecoder` turns a stream of generated token ids into text pieces, never emitting a partial
  UTF-8 character (works for byte-level BPE and SentencePiece-style byte-fallback tokenizers).
* `format_chat` renders a list of chat messages into a prompt string with the model's Jinja chat
  template (as in HF `tokenizer_config.json`) or a built-in one (`llama2`, `chatml`, `plain`).
  The rendered prompt already contains any BOS text the template adds, so encode it with
  `tokenizer.encode(prompt, add_special_tokens=False)`.

Every problem a user can cause (missing or malformed files, tokens not in the vocabulary, a bad or
unknown chat template) raises `tcc.errors.TccError` with a one-line message naming the file or template.
The files beside tokenizer.json are read only from inside its folder (frontend/side_files.py), and a
chat template renders under limits of work, sizes and output (see "chat template limits" below).
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tcc.errors import TccError

__all__ = ["BUILTIN_TEMPLATES", "StreamDecoder", "Tokenizer", "format_chat"]

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
_REPLACEMENT = "\ufffd"


# -- file helpers ---------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    # A regular file of bounded size only (a FIFO or /dev/zero would block or never end).
    from tcc.frontend.side_files import read_text

    if not os.path.lexists(path):
        raise TccError(f"file not found: {path}")
    return read_text(path)


def _load_json(path: str) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TccError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _first_line(msg: object) -> str:
    s = str(msg).strip()
    return s.splitlines()[0] if s else type(msg).__name__


def _token_content(value: Any, key: str, path: str) -> str | None:
    """A special-token entry of tokenizer_config.json: a string, a dict with "content", or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TccError(f"{path}: {key} must be a string or an object with a \"content\" string, got {value!r:.80}")


# -- Tokenizer ------------------------------------------------------------------------------------


class Tokenizer:
    """A Hugging Face `tokenizers` tokenizer plus the special tokens and chat template of its config."""

    def __init__(
        self,
        hf_tokenizer: Any,
        config: dict | None = None,
        *,
        generation_config: dict | None = None,
        chat_template_text: str | None = None,
        source: str = "<memory>",
        config_source: str = "tokenizer_config.json",
        generation_config_source: str = "generation_config.json",
        chat_template_source: str | None = None,
    ):
        self._tok = hf_tokenizer
        self.source = source
        self.config: dict = dict(config or {})
        cfg = self.config

        # Special tokens: each must be in the vocabulary (added tokens included).
        self.bos_token = self.eos_token = self.pad_token = self.unk_token = None
        self.bos_id = self.eos_id = self.pad_id = self.unk_id = None
        for key in _SPECIAL_TOKEN_KEYS:
            content = _token_content(cfg.get(key), key, config_source)
            if content is None:
                continue
            tid = hf_tokenizer.token_to_id(content)
            if tid is None:
                raise TccError(f"{config_source}: {key} {content!r} is not in the tokenizer vocabulary")
            name = key[: -len("_token")]
            setattr(self, f"{name}_token", content)
            setattr(self, f"{name}_id", tid)

        add_bos = cfg.get("add_bos_token")
        if add_bos is not None and not isinstance(add_bos, bool):
            raise TccError(f"{config_source}: add_bos_token must be true or false, got {add_bos!r:.40}")
        self.add_bos_token: bool | None = add_bos

        # eos_ids: the config's eos token plus generation_config.json's eos_token_id (int or list).
        eos: set[int] = set() if self.eos_id is None else {self.eos_id}
        if generation_config is not None:
            if not isinstance(generation_config, dict):
                raise TccError(f"{generation_config_source}: expected a JSON object")
            gen_eos = generation_config.get("eos_token_id")
            if gen_eos is not None:
                items = gen_eos if isinstance(gen_eos, list) else [gen_eos]
                n = self.vocab_size
                for t in items:
                    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < n:
                        raise TccError(
                            f"{generation_config_source}: eos_token_id {t!r:.40} is not a token id "
                            f"of a vocabulary of {n}"
                        )
                    eos.add(t)
        self.eos_ids: set[int] = eos

        # Chat templates: a string, or a list of {"name", "template"} dicts (HF multi-template form).
        self.chat_templates: dict[str, str] = {}
        ct = cfg.get("chat_template")
        self.chat_template_source = config_source
        if ct is None and chat_template_text is not None:
            ct = chat_template_text
            # errors in the template name the file it came from
            self.chat_template_source = chat_template_source or "chat_template.jinja"
        if isinstance(ct, str):
            self.chat_templates["default"] = ct
        elif isinstance(ct, list):
            for i, entry in enumerate(ct):
                if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                        and isinstance(entry.get("template"), str)):
                    raise TccError(f"{config_source}: chat_template[{i}] must be an object with "
                                   f"\"name\" and \"template\" strings")
                self.chat_templates[entry["name"]] = entry["template"]
        elif ct is not None:
            raise TccError(f"{config_source}: chat_template must be a string or a list of "
                           f"{{\"name\", \"template\"}} objects")

        # Does the tokenizer.json post-processor itself add BOS? (Then add_bos_token only needs to
        # remove it when false; otherwise add it when true.)
        self._pp_adds_bos = False
        if self.bos_id is not None:
            with_sp = hf_tokenizer.encode("a", add_special_tokens=True).ids
            without = hf_tokenizer.encode("a", add_special_tokens=False).ids
            self._pp_adds_bos = len(with_sp) > len(without) and with_sp[:1] == [self.bos_id]

    # ---- loading

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json`, `generation_config.json`,
        `chat_template.jinja` where present) from a model directory. Each is read only from inside
        the directory (frontend/side_files.py: no symlinks out of it, size limits)."""
        from tcc.frontend.side_files import side_file

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise TccError(f"tokenizer directory not found: {path}")
        tj = side_file(path, "tokenizer.json")
        if tj is None:
            raise TccError(f"tokenizer file not found: {os.path.join(path, 'tokenizer.json')}")
        return cls.from_files(tj, side_file(path, "tokenizer_config.json"))

    @classmethod
    def from_files(cls, tokenizer_json: str | os.PathLike,
                   config_json: str | os.PathLike | None = None) -> Tokenizer:
        """Load a tokenizer from a `tokenizer.json` and an optional `tokenizer_config.json`.
        A `generation_config.json` / `chat_template.jinja` beside `tokenizer.json` is also read
        (only from inside its folder: see frontend/side_files.py)."""
        from tokenizers import Tokenizer as HFTokenizer

        from tcc.frontend.side_files import side_file

        tj = os.fspath(tokenizer_json)
        if not os.path.lexists(tj):
            raise TccError(f"tokenizer file not found: {tj}")
        text = _read_text(tj)
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 -- tokenizers raises a plain Exception on bad input
            _load_json(tj)  # raises with line/column if the JSON itself is malformed
            raise TccError(f"{tj}: not a valid tokenizers file: {_first_line(e)}") from None

        config = None
        cj = None
        if config_json is not None:
            cj = os.fspath(config_json)
            if not os.path.lexists(cj):
                raise TccError(f"tokenizer config file not found: {cj}")
            config = _load_json(cj)
            if not isinstance(config, dict):
                raise TccError(f"{cj}: expected a JSON object")

        here = os.path.dirname(os.path.abspath(tj))
        gj = side_file(here, "generation_config.json")
        gen = _load_json(gj) if gj is not None else None
        jj = side_file(here, "chat_template.jinja")
        chat_text = _read_text(jj) if jj is not None else None
        return cls(hf, config, generation_config=gen, chat_template_text=chat_text, source=tj,
                   config_source=cj or "tokenizer_config.json",
                   generation_config_source=gj or os.path.join(here, "generation_config.json"),
                   chat_template_source=jj)

    # ---- core API

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def chat_template(self) -> str | None:
        return self.chat_templates.get("default")

    @property
    def hf_tokenizer(self) -> Any:
        return self._tok

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        if add_special_tokens and self.bos_id is not None:
            if self.add_bos_token is True and not self._pp_adds_bos:
                ids.insert(0, self.bos_id)
            elif self.add_bos_token is False and self._pp_adds_bos and ids[:1] == [self.bos_id]:
                del ids[0]
        return ids

    @property
    def adds_bos(self) -> bool:
        """Whether encode(text, add_special_tokens=True) starts with BOS."""
        return self.bos_id is not None and self.encode("a", add_special_tokens=True)[:1] == [self.bos_id]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"


# -- streaming detokenization ---------------------------------------------------------------------


class StreamDecoder:
    """Incremental detokenizer: `push(id)` returns only newly completed text.

    It decodes the ids since the last emitted boundary (one emitted chunk of left context, so that
    decoders which strip a leading space, like SentencePiece's Metaspace, decode consistently) and
    emits what the new ids add, holding back text that ends in U+FFFD (an incomplete UTF-8 sequence
    of byte-level or byte-fallback tokens) until the character is complete. The concatenation of all
    `push` results and `flush()` equals `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window (left context, already emitted)
        self._read = 0  # ids before this index have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Emit whatever is held back (an incomplete character decodes to U+FFFD)."""
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text):]

    def reset(self) -> None:
        self.ids.clear()
        self._prefix = self._read = 0


# -- chat formatting ------------------------------------------------------------------------------


def _message_text(m: dict, name: str) -> str:
    content = m.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal form: [{"type": "text", "text": ...}, ...]
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content):
            return "".join(parts)
    raise TccError(f"built-in chat template '{name}': message content must be a string, got {content!r:.60}")


def _llama2(messages: list[dict], bos: str, eos: str, add_generation_prompt: bool) -> str:
    msgs = list(messages)
    system = None
    if msgs[0]["role"] == "system":
        system = _message_text(msgs[0], "llama2").strip()
        msgs = msgs[1:]
    out = []
    for i, m in enumerate(msgs):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise TccError(f"built-in chat template 'llama2': roles must alternate user/assistant "
                           f"(after an optional system message), got '{m['role']}' at position {i}")
        text = _message_text(m, "llama2").strip()
        if expected == "user":
            if i == 0 and system:
                text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
            out.append(f"{bos}[INST] {text} [/INST]")
        else:
            out.append(f" {text} {eos}")
    return "".join(out)


def _chatml(messages: list[dict], bos: str, eos: str, add_generation_prompt: bool) -> str:
    out = [f"<|im_start|>{m['role']}\n{_message_text(m, 'chatml')}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _plain(messages: list[dict], bos: str, eos: str, add_generation_prompt: bool) -> str:
    out = [f"{m['role'].capitalize()}: {_message_text(m, 'plain')}\n" for m in messages]
    if add_generation_prompt:
        out.append("Assistant: ")
    return "".join(out)


BUILTIN_TEMPLATES = {"llama2": _llama2, "chatml": _chatml, "plain": _plain}


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # As HF: plain json.dumps (Jinja's own tojson HTML-escapes, which chat templates do not want).
    # An indent or separator is written once per item: a long one multiplies the output.
    for what, v in (("indent", indent), *(("separators", sep) for sep in (separators or ()))):
        if (len(v) if isinstance(v, str) else v if isinstance(v, int) else 0) > 64:
            _over(f"tojson {what} of more than 64 characters")
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# -- chat template limits ---------------------------------------------------------------------------
# A chat template comes with the model, so it is untrusted input like the model: Jinja's sandbox stops it
# from reaching Python internals, but not from running for ever (two nested loops over range(100000)),
# building a gigabyte string ("x" * 10**9, a doubling loop) or a huge number (10**10**8). A render gets
# a budget of steps (traced Python lines and calls: deterministic, whatever the machine's speed, with a
# wall-clock backstop), every operator, filter and method that can build a large value checks the size
# of what it would build *before* building it, and everything written to the output is counted. A
# template over a limit is a one-line TccError naming it and the limit. Real chat templates are far
# below every limit (a few thousand steps per message).

TEMPLATE_MAX_STEPS = 4_000_000  # traced Python events in one render
TEMPLATE_MAX_SECONDS = 30.0  # backstop for slow steps; the step budget normally ends a render first
TEMPLATE_MAX_SIZE = 8 << 20  # characters of a string or the output; items of a list, nested, per reference
TEMPLATE_MAX_WRITTEN = 4 * TEMPLATE_MAX_SIZE  # characters written by all output statements (macros, blocks)
TEMPLATE_MAX_RANGE = 100_000  # items of one range()
TEMPLATE_MAX_INT_BITS = 1 << 16  # bits of an integer made by * or **


class ChatTemplateLimitError(TccError):
    """The TccError of a chat template that went over a limit (never taken for a template that merely
    does not support something, as chat_config does with system messages)."""


class TemplateLimitError(BaseException):
    """A chat template went over a limit. A BaseException, so that no `except Exception` on the way
    (Jinja's filters and its constant folding have some) swallows it and lets the render go on."""


class _FoldRefused(Exception):
    """A limit hit while Jinja folds constants at compile time: the expression is left to the render."""


class _Render:
    """The budget of the render running in this thread."""

    def __init__(self):
        self.steps = 0
        self.written = 0
        self.deadline = time.monotonic() + TEMPLATE_MAX_SECONDS

    def trace(self, frame, event, arg):
        self.steps += 1
        if self.steps > TEMPLATE_MAX_STEPS:
            raise TemplateLimitError(f"more than {TEMPLATE_MAX_STEPS} steps (an endless or too long loop?)")
        if self.steps % 4096 == 0 and time.monotonic() > self.deadline:
            raise TemplateLimitError(f"still running after {TEMPLATE_MAX_SECONDS:g} s")
        return self.trace

    def write(self, n: int) -> None:
        self.written += n
        if self.written > TEMPLATE_MAX_WRITTEN:
            raise TemplateLimitError(f"writes more than {TEMPLATE_MAX_WRITTEN} characters")


_RENDER = threading.local()


def _over(what: str):
    """Refuse: during a render, stop it; while Jinja folds constants, leave the expression to the render."""
    if getattr(_RENDER, "current", None) is None:
        raise _FoldRefused(what)
    raise TemplateLimitError(what)


def _size(x: Any, limit: int = TEMPLATE_MAX_SIZE) -> int:
    """What `x` stands for once printed: a string's characters, an int's digits, a container's items
    (nested, counted per reference, so [[x] * 1000] * 1000 is a million). Stops counting past `limit`."""
    total, stack = 0, [x]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            total += len(v)
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v) + 1
            if total <= limit:
                stack.extend(v)
        elif isinstance(v, dict):
            total += len(v) + 1
            if total <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        else:
            total += 1
    return total


def _check_size(x: Any, what: str) -> Any:
    if _size(x) > TEMPLATE_MAX_SIZE:
        _over(f"{what} would be larger than {TEMPLATE_MAX_SIZE} characters or items")
    return x


def _need(n: int, what: str) -> None:
    if n > TEMPLATE_MAX_SIZE:
        _over(f"{what} would be larger than {TEMPLATE_MAX_SIZE} characters or items")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _format_widths(fmt: str, percent: bool) -> int:
    """The widths and precisions a format string asks for, summed (each pads the output up to it)."""
    total = 0
    if percent:
        for width, precision in _PERCENT_SPEC.findall(fmt):
            if "*" in (width, precision):
                _over("'*' widths in % formatting are not allowed in a chat template")
            total += int(width or 0) + int(precision or 0)
        return total
    import string

    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return 0  # a malformed format string fails on its own
    for _, _, spec, _ in fields:
        if spec and "{" in spec:
            _over("nested {} fields in a format spec are not allowed in a chat template")
        total += sum(int(n) for n in re.findall(r"\d+", spec or ""))
    return total


def _check_format(fmt: str, args: Any, percent: bool, what: str) -> None:
    _need(len(fmt) + _format_widths(fmt, percent) + _size(args), what)


def _binop(op: str, a: Any, b: Any) -> None:
    """Refuse an operator whose result would be over the limits, before computing it."""
    ints = isinstance(a, int) and isinstance(b, int)
    if op == "**" and ints:
        if b > 0 and abs(a) > 1 and abs(a).bit_length() * b > TEMPLATE_MAX_INT_BITS:
            _over(f"** would make an integer of more than {TEMPLATE_MAX_INT_BITS} bits")
    elif op == "*" and ints:
        if a.bit_length() + b.bit_length() > TEMPLATE_MAX_INT_BITS:
            _over(f"* would make an integer of more than {TEMPLATE_MAX_INT_BITS} bits")
    elif op == "*":
        seq, n = (a, b) if isinstance(b, int) else (b, a)
        if isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple)):
            _need(_size(seq) * max(n, 0), "the repetition (*)")
    elif op == "+" and not ints and isinstance(a, (str, bytes, list, tuple)):
        _need(_size(a) + _size(b), "the concatenation (+)")
    elif op == "%" and isinstance(a, str):
        _check_format(a, b, True, "the % formatting")


def _str_method(obj: Any, args: tuple) -> None:
    """Refuse a str method call that would build an over-large string, before calling it."""
    fn = getattr(obj, "__wrapped__", obj)  # Jinja wraps str.format
    s = getattr(fn, "__self__", None)
    if not isinstance(s, str):
        return
    name = getattr(fn, "__name__", "")
    ints = [a for a in args if isinstance(a, int)]
    if name in ("center", "ljust", "rjust", "zfill") and ints:
        _need(max(ints[0], len(s)), f"str.{name}")
    elif name == "expandtabs":
        _need(len(s) + s.count("\t") * max(ints[0] if ints else 8, 0), "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        hits = s.count(old) if old else len(s) + 1
        _need(len(s) + hits * max(len(new) - len(old), 0), "str.replace")
    elif name == "join" and args:
        items = args[0]
        n = len(items) if isinstance(items, (list, tuple, str, dict, set)) else 0
        _need(_size(items) + len(s) * n, "str.join")
    elif name in ("format", "format_map"):
        _check_format(s, args, False, f"str.{name}")


def _filter_guard(name: str, args: tuple, kwargs: dict) -> None:
    """Refuse a filter call whose result would be over the limits (args without Jinja's pass arg)."""
    def arg(i, key, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)

    value = arg(0, "value", "")
    if name == "center":
        w = arg(1, "width", 80)
        _need(max(w if isinstance(w, int) else 0, _size(value)), "the center filter")
    elif name == "indent":
        w = arg(1, "width", 4)
        w = len(w) if isinstance(w, str) else w if isinstance(w, int) else 0
        text = value if isinstance(value, str) else ""
        _need(len(text) + (text.count("\n") + 1) * w, "the indent filter")
    elif name == "format" and isinstance(value, str):
        _check_format(value, (args[1:], kwargs), True, "the format filter")
    elif name == "join":
        d = arg(1, "d", "")
        n = len(value) if isinstance(value, (list, tuple, str, dict, set)) else 0
        _need(_size(value) + _size(d) * n, "the join filter")
    elif name == "replace":
        old, new = arg(1, "old"), arg(2, "new")
        if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):
            _str_method(value.replace, (old, new))
    elif name == "batch":
        n, fill = arg(1, "linecount", 0), arg(2, "fill_with")
        if fill is not None and isinstance(n, int):
            _need(n * _size(fill), "the batch filter's filling")
    elif name == "wordwrap":
        wrap = arg(5, "wrapstring") or "\n"
        _need(_size(value) * (1 + _size(wrap)), "the wordwrap filter")


def _guarded_filter(name: str, fn):
    """A filter that checks its arguments before and its result after running."""
    import functools

    from jinja2.utils import _PassArg

    skip = 1 if _PassArg.from_obj(fn) is not None else 0

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        _filter_guard(name, args[skip:], kwargs)
        return _check_size(fn(*args, **kwargs), f"the {name} filter's result")

    return guarded


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > TEMPLATE_MAX_RANGE:
        _over(f"range() of {len(r)} items, more than {TEMPLATE_MAX_RANGE}")
    return r


def _make_env():
    """Jinja's immutable sandbox (as Hugging Face renders chat templates) with tcc's limits."""
    from jinja2.compiler import CodeGenerator
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedCodeGenerator(CodeGenerator):
        # `a ~ b` and literal text bypass every hook of the environment: route them through it.
        def visit_Concat(self, node, frame):
            self.write("environment.tcc_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

        def _output_const_repr(self, group):
            return f"environment.tcc_text({super()._output_const_repr(group)})"

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = LimitedCodeGenerator
        intercepted_binops = frozenset(["+", "*", "**", "%"])

        def call_binop(self, context, operator, left, right):
            _binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 -- as Jinja's own signature
            _str_method(__obj, args)
            return _check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

        @staticmethod
        def tcc_concat(parts) -> str:
            strs = [p if isinstance(p, str) else str(_check_size(p, "a value joined with ~")) for p in parts]
            _need(sum(map(len, strs)), "the concatenation (~)")
            return "".join(strs)

        @staticmethod
        def tcc_text(text: str) -> str:
            render = getattr(_RENDER, "current", None)
            if render is not None:
                render.write(len(text))
            return text

    def finalize(value):
        text = value if isinstance(value, str) else str(_check_size(value, "an output value"))
        LimitedEnvironment.tcc_text(text)
        return text

    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], finalize=finalize)
    env.filters["tojson"] = _tojson
    for name in [n for n in env.filters if n not in ("urlize",)]:
        env.filters[name] = _guarded_filter(name, env.filters[name])
    del env.filters["urlize"]  # inserts its arguments per URL; no chat template needs it
    env.globals.pop("lipsum", None)  # random text of any length; no chat template needs it
    env.globals["range"] = _bounded_range
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _render(tmpl, variables: dict) -> str:
    """Render under this thread's budget: steps traced with sys.settrace, output counted."""
    render = _Render()
    _RENDER.current = render
    previous = sys.gettrace()
    sys.settrace(render.trace)
    try:
        out = tmpl.render(**variables)
    finally:
        sys.settrace(previous)
        _RENDER.current = None
    if len(out) > TEMPLATE_MAX_SIZE:
        raise TemplateLimitError(f"the rendered prompt is longer than {TEMPLATE_MAX_SIZE} characters")
    return out


_ENV = None
_COMPILED: dict[str, Any] = {}


def _compile(source: str, label: str):
    global _ENV
    import jinja2

    if _ENV is None:
        _ENV = _make_env()
    tmpl = _COMPILED.get(source)
    if tmpl is None:
        try:
            tmpl = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TccError(f"{label}: Jinja syntax error at line {e.lineno}: {_first_line(e.message)}") from None
        except (RecursionError, MemoryError) as e:
            raise TccError(f"{label}: cannot compile the template ({type(e).__name__})") from None
        if len(_COMPILED) > 64:
            _COMPILED.clear()
        _COMPILED[source] = tmpl
    return tmpl


def _looks_like_jinja(s: str) -> bool:
    return "{{" in s or "{%" in s


def format_chat(
    messages: list[dict],
    tokenizer: Tokenizer | None = None,
    template: str | None = None,
    add_generation_prompt: bool = True,
    **template_vars: Any,
) -> str:
    """Render chat `messages` ([{"role": ..., "content": ...}, ...]) into a prompt string.

    `template` selects: None -> the tokenizer config's chat template ("default" of a named list), or,
    when it has none, the built-in "chatml" if the vocabulary has `<|im_start|>`, else "plain";
    "llama2" | "chatml" | "plain" -> that built-in; another name -> that named template of the config;
    a string containing Jinja markup -> rendered as the template itself. Extra keyword arguments
    (e.g. `tools=...`) are passed to Jinja templates as variables.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TccError("format_chat: messages is empty (need at least one {'role', 'content'} message)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise TccError(f"format_chat: message {i} must be a dict with a string 'role', got {m!r:.60}")

    named = tokenizer.chat_templates if tokenizer is not None else {}
    src_file = tokenizer.chat_template_source if tokenizer is not None else "tokenizer_config.json"
    builtin = None
    source = None
    if template is None:
        if "default" in named:
            source, label = named["default"], f"chat template 'default' of {src_file}"
        elif named:
            raise TccError(f"{src_file}: no 'default' chat template (has: {', '.join(sorted(named))}); "
                           f"pass template=<name>")
        else:
            has_chatml = tokenizer is not None and tokenizer.token_to_id("<|im_start|>") is not None
            template = "chatml" if has_chatml else "plain"
            builtin = BUILTIN_TEMPLATES[template]
    elif template in BUILTIN_TEMPLATES:
        builtin = BUILTIN_TEMPLATES[template]
    elif template in named:
        source, label = named[template], f"chat template '{template}' of {src_file}"
    elif _looks_like_jinja(template):
        source, label = template, "chat template <inline>"
    else:
        avail = sorted(set(BUILTIN_TEMPLATES) | set(named))
        raise TccError(f"unknown chat template '{template}' (available: {', '.join(avail)})")

    if tokenizer is None:
        bos, eos = "<s>", "</s>"
    else:
        bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""

    if builtin is not None:
        for i, m in enumerate(messages):
            if m["role"] not in ("system", "user", "assistant"):
                raise TccError(f"built-in chat template '{template}': unsupported role '{m['role']}' "
                               f"in message {i} (use system, user or assistant)")
        return builtin(list(messages), bos, eos, add_generation_prompt)

    import jinja2

    tmpl = _compile(source, label)
    variables = {
        "messages": list(messages),
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": (tokenizer.pad_token if tokenizer is not None else None) or "",
        "unk_token": (tokenizer.unk_token if tokenizer is not None else None) or "",
        "add_generation_prompt": add_generation_prompt,
    }
    variables.update(template_vars)
    try:
        return _render(tmpl, variables)
    except TemplateLimitError as e:
        raise ChatTemplateLimitError(f"{label} stopped: over a limit of chat templates: {e}") from None
    except jinja2.TemplateError as e:
        raise TccError(f"{label} failed: {_first_line(e.message or type(e).__name__)}") from None
    except Exception as e:  # noqa: BLE001 -- a template bug (e.g. a type error in an expression)
        raise TccError(f"{label} failed: {type(e).__name__}: {_first_line(e)}") from None


# -- chat turns as text segments (chat.json) ----------------------------------------------------------

_U1, _U2, _A1, _SYS = "\x02U1\x03", "\x02U2\x03", "\x02A1\x03", "\x02SYS\x03"


def _split(text: str, *marks: str) -> list[str] | None:
    parts = []
    for m in marks:
        if text.count(m) != 1:
            return None
        head, text = text.split(m)
        parts.append(head)
    return parts + [text]


def chat_config(tokenizer: Tokenizer, template: str | None = None, max_context: int = 0) -> dict:
    """The chat template as text segments, for chat turns appended to a KV cache (written to chat.json).

    The template is rendered with sentinel messages and cut at them:
      turn 1:  (first_user_prefix | fups[0] + system + fups[1]) + user + user_suffix
      turn n:  assistant_suffix + user_prefix + user + user_suffix
    (the reply's own tokens sit between user_suffix and assistant_suffix). The Python runtime and the
    standalone chat binary both follow these segments. A template that cannot be cut this way (its output
    does not contain each message once, in order) raises TccError naming it.
    """
    def render(msgs, gen):
        return format_chat(msgs, tokenizer, template=template, add_generation_prompt=gen)

    name = template or ("default" if "default" in tokenizer.chat_templates else
                        "chatml" if tokenizer.token_to_id("<|im_start|>") is not None else "plain")
    t1 = _split(render([{"role": "user", "content": _U1}], True), _U1)
    t3 = _split(render([{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}], False), _U1, _A1)
    t2 = _split(render([{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
                        {"role": "user", "content": _U2}], True), _U1, _A1, _U2)
    if t1 is None or t2 is None or t3 is None or t2[0] != t1[0] or t3[0] != t1[0]:
        raise TccError(f"chat template '{name}' cannot be split into turns (it must render each message once, "
                       f"in order, with the same prefix every time)")
    first_prefix, user_suffix = t1
    assistant_suffix = t3[2]
    if not t2[2].startswith(assistant_suffix) or t2[3] != user_suffix:
        raise TccError(f"chat template '{name}': a second turn does not continue the first one's text")
    user_prefix = t2[2][len(assistant_suffix):]
    try:
        ts = _split(render([{"role": "system", "content": _SYS}, {"role": "user", "content": _U1}], True), _SYS, _U1)
    except ChatTemplateLimitError:
        raise
    except TccError:
        ts = None  # a template without system messages
    fups = [ts[0], ts[1]] if ts is not None and ts[2] == user_suffix else None

    eos = set(tokenizer.eos_ids)
    end_turn = tokenizer.token_to_id("<|im_end|>")
    if end_turn is not None and "<|im_end|>" in assistant_suffix:
        eos.add(end_turn)  # ChatML replies end with <|im_end|>, whatever the tokenizer's eos is
    bos_text = tokenizer.bos_token or ""
    starts_with_bos = bool(bos_text) and first_prefix.startswith(bos_text)
    return {
        "template_name": name,
        "bos_token_id": tokenizer.bos_id,
        # BOS goes first unless the template writes it itself (Llama-2's "<s>[INST]")
        "add_bos": tokenizer.adds_bos and not starts_with_bos,
        "eos_token_ids": sorted(eos),
        "first_user_prefix": first_prefix,
        "first_user_prefix_with_system": fups,
        "user_prefix": user_prefix,
        "user_suffix": user_suffix,
        "assistant_suffix": assistant_suffix,
        "default_system": None,
        "max_context": max_context,
    }
