"""Request bodies of `tcc serve`, validated before anything reaches the engine.

Strict pydantic models: no coercion (`"stream": "true"` is refused, not read as true), no unknown
fields (a misspelt `n_predcit` is an error, not silently ignored), finite numbers in documented ranges.
`parse_body` turns the raw bytes into a model or an ApiError naming the first problem in one line.
"""
from __future__ import annotations

import json
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..generate import DEFAULT_SAMPLING

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
MAX_BODY_BYTES = 8 << 20  # a prompt of a few hundred thousand tokens: more is refused before parsing
MAX_STOP = 16  # stop strings per request (each is searched after every token)
MAX_STOP_LEN = 256
MAX_N_PROBS = 100


class ApiError(Exception):
    """An HTTP error in OpenAI's / llama.cpp's shape: {"error": {"code", "message", "type"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error"):
        super().__init__(" ".join(str(message).split()))
        self.status = status
        self.type = type

    def body(self) -> dict:
        return {"error": {"code": self.status, "message": str(self), "type": self.type}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


Stop = Union[str, list[str], None]


class _Sampling(_Strict):
    """Fields every generating route shares (llama.cpp's names; the OpenAI routes map theirs)."""

    temperature: float = Field(DEFAULT_SAMPLING["temperature"], ge=0, le=100)
    top_k: int = Field(DEFAULT_SAMPLING["top_k"], ge=0, le=INT32_MAX)
    top_p: float = Field(DEFAULT_SAMPLING["top_p"], gt=0, le=1)
    min_p: float = Field(0.0, ge=0, le=1)
    repeat_penalty: float = Field(DEFAULT_SAMPLING["repetition_penalty"], gt=0, le=100)
    repeat_last_n: int = Field(-1, ge=-1, le=INT32_MAX)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = Field(None, ge=-1, le=UINT64_MAX)
    cache_prompt: bool = True
    stream: bool = False


class CompletionRequest(_Sampling):
    """POST /completion (llama.cpp)."""

    prompt: Union[str, list[Union[int, str]]]
    n_predict: int = Field(-1, ge=-1, le=INT32_MAX)
    stop: Stop = None
    n_probs: int = Field(0, ge=0, le=MAX_N_PROBS)
    ignore_eos: bool = False
    id_slot: int = Field(-1, ge=-1, le=INT32_MAX)


class TokenizeRequest(_Strict):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(_Strict):
    tokens: list[int]


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class TemplateRequest(_Strict):
    """POST /apply-template."""

    messages: list[Message] = Field(min_length=1)


class StreamOptions(_Strict):
    include_usage: bool = False


class _OpenAI(_Sampling):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    n: int = Field(1, ge=1, le=1)  # one choice per request: run several requests for more
    stop: Stop = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatRequest(_OpenAI):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionsRequest(_OpenAI):
    """POST /v1/completions."""

    prompt: Union[str, list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: Literal[False] = False


def stop_list(stop: Stop) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_LEN for s in stops):
        raise ApiError(400, f"stop: at most {MAX_STOP} strings of at most {MAX_STOP_LEN} characters")
    return tuple(s for s in stops if s)


def parse_body(raw: bytes, model: type[BaseModel]) -> BaseModel:
    """The request body as `model`, or ApiError(400 / 413) naming the first problem."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body has {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted")
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") \
            from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(obj).__name__}")
    _check_strings(obj)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise ApiError(400, _first_error(e)) from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None


def _check_strings(obj, depth: int = 0) -> None:
    """JSON may escape lone surrogates ("\\ud800"), which are not text: the tokenizer cannot take them."""
    if depth > 64:
        raise ApiError(400, "the request body is nested too deeply")
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "a string in the request holds an unpaired UTF-16 surrogate escape") from None
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_strings(k, depth + 1)
            _check_strings(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_strings(v, depth + 1)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    # union members add their type names to the location ('str', 'list[union[int,str]]'): not field names
    loc = [str(x) for x in err["loc"] if isinstance(x, int) or ("[" not in x and x not in _TYPE_TAGS)]
    where = ".".join(loc) or "body"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if err["type"] == "missing":
        return f"missing field {where!r}"
    got = json.dumps(err.get("input"), ensure_ascii=False, default=str)
    got = got if len(got) <= 40 else got[:37] + "..."
    return f"{where}: {err['msg'][0].lower()}{err['msg'][1:]} (got {got})"


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "TextPart", "StreamOptions"}
