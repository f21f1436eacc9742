"""The OpenAI request bodies the server accepts, their limits, and how a request becomes
idiolect's prompt.

Mapping (the prompt format adapters are trained on: subject + recipients in the base's chat
template, ``compile.prompts.prompt_text``): the text of the *last user message* of a chat, or a
completion's ``prompt``, is the message to write. A line ``To: a@b, c@d`` gives its recipients,
an optional ``Subject:`` prefix is dropped, every other line joins the subject. System and
assistant messages are not part of the prompt (adapters were never trained on them).

Fields outside the ones below are accepted and ignored (clients send many); those that are read
are checked: a wrong type or a value out of range is an ``invalid_request_error`` naming the
field (``param``). Defaults when a field is absent are idiolect's (``idiolect draft``'s
``GenerationConfig``), not OpenAI's.
"""

from __future__ import annotations

import copy
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..compile.prompts import ECHO_LINES
from ..generate import GenerationConfig
from .batcher import BatchConfig, Sampling

_TO = re.compile(r"(?i)^\s*to\s*:\s*(.*)$")
_SUBJECT = re.compile(r"(?i)^\s*subject\s*:\s*")


class Invalid(Exception):
    """A request the server refuses: an OpenAI error object's fields and the HTTP status."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, kind: str = "invalid_request_error",
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status
        self.kind, self.headers = kind, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Open):
    include_usage: bool = False


class Message(_Open):
    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(str(p.get("text", "")) for p in self.content
                             if p.get("type") == "text")
        return self.content or ""


class _Common(_Open):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: write max_tokens tokens whatever the model says


class ChatRequest(_Common):
    messages: list[Message]
    max_completion_tokens: int | None = None

    def text(self) -> str:
        users = [m for m in self.messages if m.role == "user"]
        if not users or not users[-1].text().strip():
            raise Invalid("messages: a chat needs a user message with text (the subject of the"
                          " message to write)", "messages")
        return users[-1].text()


class CompletionRequest(_Common):
    prompt: str | list[str]

    def text(self) -> str:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise Invalid("prompt: one prompt per request", "prompt")
        return prompts[0]


def parse(cls: type[_Common], body) -> _Common:
    """The request, or ``Invalid`` naming the first field that is wrong."""
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise Invalid(f"{param}: {first['msg']}" if param else first["msg"], param) from None


def subject_and_recipients(text: str) -> tuple[str, list[str]]:
    """The subject and recipients a request's text stands for (see the module's mapping)."""
    to: list[str] = []
    rest = []
    for line in text.splitlines():
        m = _TO.match(line)
        if m and not to:
            to = [a.strip() for a in re.split(r"[,;]", m.group(1)) if a.strip()]
        elif line.strip():
            rest.append(_SUBJECT.sub("", line.strip()))
    return " ".join(rest), to


def sampling(req: _Common, cfg: BatchConfig, default_tokens: int) -> Sampling:
    """The request's sampling settings, checked against the server's limits."""
    tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else \
        "max_tokens"
    # absent: the default, but never over this server's --max-tokens
    tokens = min(default_tokens, cfg.max_tokens) if tokens is None else tokens
    if not 1 <= tokens <= cfg.max_tokens:
        raise Invalid(f"{param} must be between 1 and {cfg.max_tokens} on this server, got"
                      f" {tokens}", param)
    temperature = GenerationConfig.temperature if req.temperature is None else req.temperature
    if not 0.0 <= temperature <= 2.0:
        raise Invalid(f"temperature must be between 0 and 2, got {temperature}", "temperature")
    top_p = GenerationConfig.top_p if req.top_p is None else req.top_p
    if not 0.0 < top_p <= 1.0:
        raise Invalid(f"top_p must be above 0 and at most 1, got {top_p}", "top_p")
    if not 1 <= req.n <= cfg.max_n:
        raise Invalid(f"n must be between 1 and {cfg.max_n} on this server, got {req.n}", "n")
    if req.seed is not None and not 0 <= req.seed < 2 ** 62:
        raise Invalid("seed must be between 0 and 2**62", "seed")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s or len(s) > 256 for s in stop):
        raise Invalid("stop: at most 4 non-empty strings of at most 256 characters", "stop")
    # a line that goes on into the prompt's own words ends the row too, as ``cut_echo`` cuts a
    # draft (not with ignore_eos: such a row writes exactly max_tokens)
    echoes = () if req.ignore_eos else ECHO_LINES
    return Sampling(max_tokens=tokens, temperature=temperature, top_p=top_p, seed=req.seed,
                    stop=tuple(stop), ignore_eos=req.ignore_eos, echoes=echoes)


# ----------------------------------------------------------------------------- OpenAPI documents
# What the routes answer, for the OpenAPI schema only (the routes build their bodies as dicts).
class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error object: every refusal (4xx) and a failed request (500)."""

    error: ErrorObject


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Completion(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: str
    usage: Usage


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(_Completion):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"]


class TextCompletion(_Completion):
    object: Literal["text_completion"]
    choices: list[TextChoice]


def _error(description: str, headers: dict | None = None) -> dict:
    doc: dict = {"model": ErrorResponse, "description": description}
    if headers:
        doc["headers"] = {h: {"description": d, "schema": {"type": "string"}}
                          for h, d in headers.items()}
    return doc


UNAUTHORIZED = {401: _error("no or a wrong bearer token (when the server has one)",
                            {"WWW-Authenticate": "Bearer"})}
NO_MODEL = {404: _error("no such model (GET /v1/models lists them)")}
BAD_REQUEST = {400: _error("a field or the body is wrong (param names the field)")}
REFUSALS = BAD_REQUEST | UNAUTHORIZED | NO_MODEL | {
    413: _error("the body is over the server's limit"),
    429: _error("the queue is full", {"Retry-After": "seconds to wait"}),
    500: _error("the batch of this request failed on the server")}


def _inline(node, defs: dict):
    """A JSON schema with its ``$ref`` to ``$defs`` replaced by what they name (no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _limit(prop: dict, kind: str, **bounds) -> None:
    """Add ``bounds`` to the ``kind`` branch of a property (itself, or one of its anyOf)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == kind:
            branch.update(bounds)


def request_body(cls: type[_Common], cfg: BatchConfig) -> dict:
    """The OpenAPI ``requestBody`` of a completion route: the request's JSON schema with the
    limits ``sampling`` enforces (this server's ``max_tokens`` and ``n``) as ``minimum`` /
    ``maximum``. A body out of them is a 400 naming the field."""
    schema = cls.model_json_schema()
    schema = _inline(copy.deepcopy(schema), schema.get("$defs", {}))
    props = schema["properties"]
    for name in ("max_tokens", "max_completion_tokens"):
        if name in props:
            _limit(props[name], "integer", minimum=1, maximum=cfg.max_tokens)
    _limit(props["n"], "integer", minimum=1, maximum=cfg.max_n)
    _limit(props["temperature"], "number", minimum=0, maximum=2)
    _limit(props["top_p"], "number", exclusiveMinimum=0, maximum=1)
    _limit(props["seed"], "integer", minimum=0, maximum=2 ** 62 - 1)
    _limit(props["stop"], "string", minLength=1, maxLength=256)
    _limit(props["stop"], "array", maxItems=4)
    for branch in props["stop"]["anyOf"]:
        if branch.get("type") == "array":
            branch["items"].update(minLength=1, maxLength=256)
    if "prompt" in props:
        _limit(props["prompt"], "array", minItems=1, maxItems=1)
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def completion_docs(cls: type[_Common], cfg: BatchConfig) -> dict:
    """The OpenAPI keywords of a completion route (FastAPI's ``openapi_extra`` and
    ``responses``): its body, its answer (JSON, or server-sent events when ``stream``) and its
    refusals."""
    answer = ChatCompletion if cls is ChatRequest else TextCompletion
    return {"openapi_extra": request_body(cls, cfg), "responses": {
        200: {"model": answer, "description": "the completion, or its chunks as server-sent"
              " events (stream: true)", "content": {"text/event-stream": {"schema": EVENT}}}}
        | REFUSALS}


# One server-sent event of a streamed completion (before Open API 3.2, a text/event-stream
# ``schema`` describes each event): its data is a chunk's JSON, an error object, or [DONE].
EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string", "description": "a chat.completion.chunk or text_completion"
             " (JSON), an error object (JSON) when the batch failed, or [DONE] at the end"},
    "event": {"type": "string", "enum": ["message"]}}}
