"""The OpenAI request bodies the server accepts, their limits, and how a request becomes
idiolect's prompt.

Mapping (the prompt format adapters are trained on: subject + recipients in the base's chat
template, ``compile.prompts.prompt_text``): the text of the *last user message* of a chat, or a
completion's ``prompt``, is the message to write. A line ``To: a@b, c@d`` gives its recipients,
an optional ``Subject:`` prefix is dropped, every other line joins the subject. System and
assistant messages are not part of the prompt (adapters were never trained on them).

Fields outside the ones below are accepted and ignored (clients send many); those that are read
are checked: a wrong type or a value out of range is an ``invalid_request_error`` naming the
field (``param``). Defaults when a field is absent are idiolect's (``idiolect draft``), not
OpenAI's: temperature 0.7, top_p 0.9.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, ValidationError

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
    tokens = default_tokens if tokens is None else tokens
    if not 1 <= tokens <= cfg.max_tokens:
        raise Invalid(f"{param} must be between 1 and {cfg.max_tokens} on this server, got"
                      f" {tokens}", param)
    temperature = 0.7 if req.temperature is None else req.temperature
    if not 0.0 <= temperature <= 2.0:
        raise Invalid(f"temperature must be between 0 and 2, got {temperature}", "temperature")
    top_p = 0.9 if req.top_p is None else req.top_p
    if not 0.0 < top_p <= 1.0:
        raise Invalid(f"top_p must be above 0 and at most 1, got {top_p}", "top_p")
    if not 1 <= req.n <= cfg.max_n:
        raise Invalid(f"n must be between 1 and {cfg.max_n} on this server, got {req.n}", "n")
    if req.seed is not None and not 0 <= req.seed < 2 ** 62:
        raise Invalid("seed must be between 0 and 2**62", "seed")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s or len(s) > 256 for s in stop):
        raise Invalid("stop: at most 4 non-empty strings of at most 256 characters", "stop")
    return Sampling(max_tokens=tokens, temperature=temperature, top_p=top_p, seed=req.seed,
                    stop=tuple(stop), ignore_eos=req.ignore_eos)
