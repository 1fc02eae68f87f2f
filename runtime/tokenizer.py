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
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tcc.errors import TccError

__all__ = ["BUILTIN_TEMPLATES", "StreamDecoder", "Tokenizer", "format_chat"]

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
_REPLACEMENT = "\ufffd"


# -- file helpers ---------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise TccError(f"file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise TccError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise TccError(f"{path}: cannot read: {e.strerror or e}") from None


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
        if ct is None and chat_template_text is not None:
            ct = chat_template_text
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
        self.chat_template_source = config_source

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
        `chat_template.jinja` where present) from a model directory."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise TccError(f"tokenizer directory not found: {path}")
        tj = os.path.join(path, "tokenizer.json")
        cj = os.path.join(path, "tokenizer_config.json")
        return cls.from_files(tj, cj if os.path.isfile(cj) else None)

    @classmethod
    def from_files(cls, tokenizer_json: str | os.PathLike,
                   config_json: str | os.PathLike | None = None) -> Tokenizer:
        """Load a tokenizer from a `tokenizer.json` and an optional `tokenizer_config.json`.
        A `generation_config.json` / `chat_template.jinja` beside `tokenizer.json` is also read."""
        from tokenizers import Tokenizer as HFTokenizer

        tj = os.fspath(tokenizer_json)
        if not os.path.isfile(tj):
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
            if not os.path.isfile(cj):
                raise TccError(f"tokenizer config file not found: {cj}")
            config = _load_json(cj)
            if not isinstance(config, dict):
                raise TccError(f"{cj}: expected a JSON object")

        here = os.path.dirname(os.path.abspath(tj))
        gj = os.path.join(here, "generation_config.json")
        gen = _load_json(gj) if os.path.isfile(gj) else None
        jj = os.path.join(here, "chat_template.jinja")
        chat_text = _read_text(jj) if os.path.isfile(jj) else None
        return cls(hf, config, generation_config=gen, chat_template_text=chat_text, source=tj,
                   config_source=cj or "tokenizer_config.json", generation_config_source=gj)

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


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # As HF: plain json.dumps (Jinja's own tojson HTML-escapes, which chat templates do not want).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


_ENV = None
_COMPILED: dict[str, Any] = {}


def _compile(source: str, label: str):
    global _ENV
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if _ENV is None:
        _ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        _ENV.filters["tojson"] = _tojson
        _ENV.globals["raise_exception"] = _raise_exception
        _ENV.globals["strftime_now"] = _strftime_now
    tmpl = _COMPILED.get(source)
    if tmpl is None:
        try:
            tmpl = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TccError(f"{label}: Jinja syntax error at line {e.lineno}: {_first_line(e.message)}") from None
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
        return tmpl.render(**variables)
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
