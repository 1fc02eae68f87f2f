"""The files of the standalone `chat` binary: tokenizer.tcc and chat.tcc (docs/formats.md, "Chat files").

The C++ side (runtime/chat/) reads no JSON: at compile time this module translates tokenizer.json (the
subset the C++ tokenizer implements), chat.json's turn segments and the manifest's "llm" facts into a
line-based text format of tcc's own, so the chat binary builds from a bare C++ toolchain.

A tokenizer.json feature the C++ tokenizer does not have is not a compile error (Python runs the model
with HF `tokenizers` anyway): tokenizer.tcc then holds one `unsupported` record with the reason, and the
chat binary stops with that reason when started.

    python -m tcc.runtime.chat_files tokenizer.json > tokenizer.tcc
"""
from __future__ import annotations

import json
import sys

from ..errors import ModelFormatError

TOKENIZER_FILE = "tokenizer.tcc"
CHAT_FILE = "chat.tcc"
TOKENIZER_HEADER = "tcc-tokenizer 1"
CHAT_HEADER = "tcc-chat 1"


# byte (as a latin-1 character) -> itself or %XX: str.translate escapes a whole vocabulary at C speed
_ESCAPES = {b: chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in range(256)}


def escape(s: str) -> str:
    """One field: UTF-8 with every byte outside '!'..'~' and '%' itself as %XX; the empty string is '%'."""
    if s == "":
        return "%"
    return s.encode("utf-8", "surrogatepass").decode("latin-1").translate(_ESCAPES)


def write_native_chat_files(manifest: dict, files: dict[str, str], texts: dict[str, str]) -> None:
    """Add tokenizer.tcc and chat.tcc to `texts` (artifact name -> text) for a language model whose
    manifest "llm" section has its chat config (set where chat.json is written) and whose `files` hold
    tokenizer.json. Anything else: nothing to add."""
    llm = manifest.get("llm") or {}
    if "tokenizer.json" not in files or "chat_config" not in llm:
        return
    path = files["tokenizer.json"]
    try:
        with open(path, encoding="utf-8") as f:
            tokenizer = json.load(f)
    except (OSError, ValueError) as e:  # (HF tokenizers read it already; this is a file changed since)
        raise ModelFormatError(f"{path}: cannot read the tokenizer: {e}") from None
    texts[TOKENIZER_FILE] = tokenizer_text(tokenizer)
    texts[CHAT_FILE] = chat_text(llm["chat_config"], llm)


# -- chat.tcc ---------------------------------------------------------------------------------------------


def chat_text(cc: dict, llm: dict) -> str:
    """chat.tcc: chat.json's turn segments plus the manifest facts the binary needs (max_prefill, recompute)."""
    lines = [CHAT_HEADER, f"template_name {escape(cc.get('template_name') or '')}"]
    if cc.get("bos_token_id") is not None:
        lines.append(f"bos_token_id {int(cc['bos_token_id'])}")
    lines.append(f"add_bos {_flag(cc.get('add_bos'))}")
    eos = cc.get("eos_token_ids")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else eos
    lines.append(" ".join(["eos_token_ids", *(str(int(e)) for e in eos)]))
    lines.append(f"first_user_prefix {escape(cc['first_user_prefix'])}")
    fups = cc.get("first_user_prefix_with_system")
    if fups is not None:
        lines.append(f"first_user_prefix_with_system {escape(fups[0])} {escape(fups[1])}")
    for key in ("user_prefix", "user_suffix", "assistant_suffix"):
        lines.append(f"{key} {escape(cc[key])}")
    if cc.get("default_system") is not None:
        lines.append(f"default_system {escape(cc['default_system'])}")
    lines.append(f"max_context {int(cc.get('max_context') or 0)}")
    if llm.get("max_prefill") is not None:
        lines.append(f"max_prefill {int(llm['max_prefill'])}")
    lines.append(f"recompute {_flag(llm.get('recompute'))}")
    return "\n".join(lines + ["end"]) + "\n"


def _flag(v) -> str:
    return "1" if v else "0"


# -- tokenizer.tcc ----------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """tokenizer.json holds something the C++ tokenizer cannot do (the message says what)."""


def tokenizer_text(tokenizer) -> str:
    """tokenizer.tcc for a parsed tokenizer.json (a dict)."""
    try:
        body = _tokenizer_lines(tokenizer)
    except _Unsupported as e:
        body = [f"unsupported {escape(str(e))}"]
    return "\n".join([TOKENIZER_HEADER, *body, "end"]) + "\n"


def _short(v) -> str:
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= 80 else s[:77] + "..."


def _get(obj: dict, key: str, path: str, kind: str, default=None, required: bool = False):
    """obj[key] checked against a JSON kind ("str", "bool", "int"); missing or null: default."""
    v = obj.get(key)
    if v is None:
        if required:
            raise _Unsupported(f"{path}.{key} is missing")
        return default
    ok = {"str": isinstance(v, str), "bool": isinstance(v, bool),
          "int": isinstance(v, int) and not isinstance(v, bool)}[kind]
    if not ok:
        want = {"str": "a string", "bool": "true or false", "int": "an integer"}[kind]
        raise _Unsupported(f"{path}.{key} must be {want}, got {_short(v)}")
    return v


def _b(obj: dict, key: str, path: str, default: bool) -> str:
    return _flag(_get(obj, key, path, "bool", default))


def _s(obj: dict, key: str, path: str) -> str:
    return escape(_get(obj, key, path, "str", required=True))


def _tokenizer_lines(tok) -> list[str]:
    if not isinstance(tok, dict):
        raise _Unsupported("expected a JSON object at the top level")
    if "model" not in tok:
        raise _Unsupported("model is missing")
    lines = _model_lines(tok["model"])
    for key, parse in (("normalizer", _normalizer), ("pre_tokenizer", _pre_tokenizer), ("decoder", _decoder),
                       ("post_processor", _post_processor)):
        node = tok.get(key)
        lines += [f"{key} none"] if node is None else _component(key, parse(node, key))
    return lines + _added_lines(tok.get("added_tokens"))  # last: their patterns go through the normalizer


def _component(key: str, node: list[str]) -> list[str]:
    return [f"{key} {node[0]}", *node[1:]]


def _type_of(j: dict, path: str) -> str:
    if not isinstance(j, dict):
        raise _Unsupported(f"{path} must be an object, got {_short(j)}")
    t = j.get("type")
    return t if isinstance(t, str) else ""


def _sequence(j: dict, key: str, path: str, parse) -> list[str]:
    items = j.get(key)
    if not isinstance(items, list):
        raise _Unsupported(f"{path}.{key} must be a list")
    out = [f"Sequence {len(items)}"]
    for i, item in enumerate(items):
        out += parse(item, f"{path}.{key}[{i}]")
    return out


def _pattern(j: dict, path: str) -> tuple[str, str]:
    """A Split / Replace "pattern": ("string", s) or ("regex", r)."""
    p = j.get("pattern")
    if isinstance(p, dict) and len(p) == 1:
        if isinstance(p.get("String"), str):
            return "string", p["String"]
        if isinstance(p.get("Regex"), str):
            return "regex", p["Regex"]
    raise _Unsupported(f'{path}.pattern must be {{"String": ...}} or {{"Regex": ...}}, got {_short(p)}')


def _string_pattern(j: dict, path: str, where: str) -> str:
    kind, pat = _pattern(j, path)
    if kind == "regex":
        raise _Unsupported(f"{path}.pattern: Regex patterns are not supported in a Replace {where}, got {_short(pat)}")
    return pat


def _prepend_scheme(j: dict, path: str) -> str:
    if j.get("prepend_scheme") is not None:
        return escape(_get(j, "prepend_scheme", path, "str"))
    return "always" if _get(j, "add_prefix_space", path, "bool", True) else "never"


def _normalizer(j, path: str) -> list[str]:
    t = _type_of(j, path)
    if t == "Sequence":
        return _sequence(j, "normalizers", path, _normalizer)
    if t == "Prepend":
        return [f"Prepend {_s(j, 'prepend', path)}"]
    if t == "Replace":
        return [f"Replace {escape(_string_pattern(j, path, 'normalizer'))} {_s(j, 'content', path)}"]
    if t == "Strip":
        return [f"Strip {_b(j, 'strip_left', path, False)} {_b(j, 'strip_right', path, False)}"]
    raise _Unsupported(f'{path}.type "{t}" is not supported (supported normalizers: Sequence, Prepend, Replace, '
                       f"Strip)")


def _pre_tokenizer(j, path: str) -> list[str]:
    t = _type_of(j, path)
    if t == "Sequence":
        return _sequence(j, "pretokenizers", path, _pre_tokenizer)
    if t == "ByteLevel":
        return [f"ByteLevel {_b(j, 'add_prefix_space', path, True)} {_b(j, 'use_regex', path, True)}"]
    if t == "Split":
        kind, pat = _pattern(j, path)
        return [f"Split {kind} {escape(pat)} {_s(j, 'behavior', path)} {_b(j, 'invert', path, False)}"]
    if t == "Metaspace":
        return [f"Metaspace {_s(j, 'replacement', path)} {_prepend_scheme(j, path)} {_b(j, 'split', path, True)}"]
    raise _Unsupported(f'{path}.type "{t}" is not supported (supported pre-tokenizers: ByteLevel, Split, '
                       f"Metaspace, Sequence)")


def _decoder(j, path: str) -> list[str]:
    t = _type_of(j, path)
    if t == "Sequence":
        return _sequence(j, "decoders", path, _decoder)
    if t in ("ByteLevel", "ByteFallback", "Fuse"):
        return [t]
    if t == "Metaspace":
        return [f"Metaspace {_s(j, 'replacement', path)} {_prepend_scheme(j, path)}"]
    if t == "Replace":
        return [f"Replace {escape(_string_pattern(j, path, 'decoder'))} {_s(j, 'content', path)}"]
    if t == "Strip":
        start, stop = _get(j, "start", path, "int", 0), _get(j, "stop", path, "int", 0)
        return [f"Strip {_s(j, 'content', path)} {start} {stop}"]
    raise _Unsupported(f'{path}.type "{t}" is not supported (supported decoders: ByteLevel, Metaspace, Replace, '
                       f"ByteFallback, Fuse, Strip, Sequence)")


def _post_processor(j, path: str) -> list[str]:
    t = _type_of(j, path)
    if t == "Sequence":
        return _sequence(j, "processors", path, _post_processor)
    if t == "ByteLevel":
        return ["ByteLevel"]  # only adjusts offsets
    if t == "TemplateProcessing":
        return _template(j, path)
    if t in ("BertProcessing", "RobertaProcessing"):
        ids = []
        for key in ("cls", "sep"):
            v = j.get(key)
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and not isinstance(v[1], bool)):
                raise _Unsupported(f"{path}.{key} must be [token, id]")
            ids.append(v[1])
        return [f"Wrap {ids[0]} {ids[1]}"]
    raise _Unsupported(f'{path}.type "{t}" is not supported (supported post-processors: TemplateProcessing, '
                       f"ByteLevel, BertProcessing, RobertaProcessing, Sequence)")


def _template(j: dict, path: str) -> list[str]:
    single = j.get("single")
    if not isinstance(single, list):
        raise _Unsupported(f"{path}.single must be a list")
    specials = j.get("special_tokens")
    out = [f"Template {len(single)}"]
    for i, item in enumerate(single):
        ipath = f"{path}.single[{i}]"
        if isinstance(item, dict) and "Sequence" in item:
            sid = _get(item["Sequence"] if isinstance(item["Sequence"], dict) else {}, "id", ipath + ".Sequence",
                       "str", required=True)
            if sid != "A":
                raise _Unsupported(f'{ipath}.Sequence.id "{sid}" is not supported in a single-sequence template')
            out.append("Sequence")
        elif isinstance(item, dict) and "SpecialToken" in item:
            sid = _get(item["SpecialToken"] if isinstance(item["SpecialToken"], dict) else {}, "id",
                       ipath + ".SpecialToken", "str", required=True)
            if not isinstance(specials, dict) or sid not in specials:
                raise _Unsupported(f'{ipath}: special token "{sid}" is missing from {path}.special_tokens')
            ids = specials[sid].get("ids") if isinstance(specials[sid], dict) else None
            if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
                raise _Unsupported(f'{path}.special_tokens["{sid}"].ids must be a list of ids')
            out.append(" ".join(["SpecialToken", *map(str, ids)]))
        else:
            raise _Unsupported(f'{ipath} must be {{"Sequence": ...}} or {{"SpecialToken": ...}}, got {_short(item)}')
    return out


def _model_lines(m) -> list[str]:
    if not isinstance(m, dict):
        raise _Unsupported(f"model must be an object, got {_short(m)}")
    t = m.get("type") if isinstance(m.get("type"), str) else ""
    if not t and "merges" in m:
        t = "BPE"
    if t != "BPE":
        raise _Unsupported(f'model.type "{t}" is not supported (supported: BPE)')
    dropout = m.get("dropout")
    if dropout is not None:
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool):
            raise _Unsupported("model.dropout must be a number or null")
        if dropout > 0:
            raise _Unsupported(f"model.dropout {_short(dropout)} is not supported (BPE dropout is random; use null)")
    lines = ["model BPE"]
    for key in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        v = _get(m, key, "model", "str")
        if v is not None:
            lines.append(f"{key} {escape(v)}")
    for key in ("fuse_unk", "byte_fallback", "ignore_merges"):
        lines.append(f"{key} {_b(m, key, 'model', False)}")
    return lines + _vocab_lines(m.get("vocab")) + _merge_lines(m.get("merges"))


def _vocab_lines(vocab) -> list[str]:
    if not isinstance(vocab, dict):
        raise _Unsupported("model.vocab must be an object of token -> id")
    for token, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool):
            raise _Unsupported(f"model.vocab[{_short(token)}] must be an integer id, got {_short(i)}")
        if not 0 <= i < 2**32:
            raise _Unsupported(f"model.vocab[{_short(token)}]: id {i} is out of range")
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    return [f"vocab {len(items)}", *(f"{escape(token)} {i}" for token, i in items)]


def _merge_lines(merges) -> list[str]:
    if merges is None:
        return ["merges 0"]  # every word is split into characters
    if not isinstance(merges, list):
        raise _Unsupported("model.merges must be a list")
    out = [f"merges {len(merges)}"]
    for rank, e in enumerate(merges):
        if isinstance(e, str):
            parts = e.split(" ")
            if len(parts) != 2:
                raise _Unsupported(f"model.merges[{rank}] must be two tokens separated by one space, got {_short(e)}")
        elif isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e):
            parts = e
        else:
            raise _Unsupported(f'model.merges[{rank}] must be "a b" or ["a", "b"], got {_short(e)}')
        out.append(f"{escape(parts[0])} {escape(parts[1])}")
    return out


def _added_lines(added) -> list[str]:
    if added is None:
        return ["added_tokens 0"]
    if not isinstance(added, list):
        raise _Unsupported("added_tokens must be a list")
    out = [f"added_tokens {len(added)}"]
    for i, t in enumerate(added):
        path = f"added_tokens[{i}]"
        if not isinstance(t, dict):
            raise _Unsupported(f"{path} must be an object")
        tid = _get(t, "id", path, "int", required=True)
        if not 0 <= tid < 2**32:
            raise _Unsupported(f"{path}.id {tid} is out of range")
        special = _get(t, "special", path, "bool", False)
        flags = [_flag(special)] + [_b(t, k, path, False) for k in ("single_word", "lstrip", "rstrip")]
        flags.append(_b(t, "normalized", path, not special))
        out.append(" ".join([str(tid), _s(t, "content", path), *flags]))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tcc.runtime.chat_files TOKENIZER.json > tokenizer.tcc", file=sys.stderr)
        return 2
    try:
        with open(argv[0], encoding="utf-8") as f:
            tok = json.load(f)
    except (OSError, ValueError) as e:
        print(f"tcc: error: {argv[0]}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    sys.stdout.write(tokenizer_text(tok))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
