"""The OpenAI-compatible HTTP API (FastAPI) over the batcher.

Endpoints:
    GET  /v1/models                 the bare base (its name) and ``idiolect/USER`` per user with
                                    an active adapter on it
    GET  /v1/models/{id}            one of them
    POST /v1/chat/completions       chat.completion, or chat.completion.chunk events (SSE)
    POST /v1/completions            text_completion, streamed the same way
    GET  /v1/idiolect/stats         the batcher's counters (batches, rows, adapters per batch...)
    POST /v1/idiolect/rank          bodies best first by a user's style scorer (``page``)
    GET  /                          the try-a-draft page (``page``)
    GET  /healthz                   liveness

Every refusal is an OpenAI error object ``{"error": {"message", "type", "param", "code"}}`` with
its status (400 bad field, 401 token, 404 unknown model, 413 body too large, 429 queue full with
Retry-After, 500 a failed batch), never a traceback. Bodies are read up to ``max_body`` bytes and
nest at most ``catalog.protocol.MAX_JSON_DEPTH`` deep before they are parsed. With a token, every
endpoint but /healthz needs ``Authorization: Bearer TOKEN``. A client that goes away cancels its
rows (dropped from the running batch at the next token).
"""

# No `from __future__ import annotations`: FastAPI must see the real Request class.

import asyncio
import hmac
import json
import logging
import secrets
import time

from ..catalog import protocol
from ..compile.prompts import prompt_text
from ..errors import NotFound
from . import page
from .batcher import Batcher, BatchConfig, Job, QueueFull
from .models import ServedModels
from .schemas import NO_MODEL, UNAUTHORIZED, ChatRequest, CompletionRequest, Invalid, \
    ModelCard, ModelList, completion_docs, parse, sampling, subject_and_recipients

MAX_BODY = 1 << 20
log = logging.getLogger("idiolect.serve")


def create_app(models: ServedModels, cfg: BatchConfig | None = None, token: str | None = None,
               max_body: int = MAX_BODY):
    """The app; its batcher (``app.state.batcher``) starts now, ``app.state.batcher.stop()``
    ends it."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from .. import __version__

    cfg = cfg or BatchConfig()
    batcher = Batcher(models, cfg)
    app = FastAPI(title="idiolect serve", version=__version__,
                  description="OpenAI-compatible: every user's active adapter on one base.")
    app.state.batcher = batcher

    def error(e: Invalid) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(Invalid)
    async def on_invalid(request, e: Invalid):
        return error(e)

    @app.exception_handler(HTTPException)
    async def on_http(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error(Invalid(str(e.detail), code=code, status=e.status_code))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, e: RequestValidationError):
        first = e.errors()[0]
        return error(Invalid(f"{'.'.join(map(str, first['loc']))}: {first['msg']}"))

    @app.exception_handler(Exception)
    async def on_anything(request, e: Exception):
        log.error("serve: %s on %s: %s", type(e).__name__, request.url.path, e)
        return error(Invalid("the server failed on this request", status=500,
                             kind="server_error"))

    def authorize(request: Request) -> None:
        if token is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise Invalid("a valid bearer token is needed (Authorization: Bearer ...)",
                          code="invalid_api_key", status=401, kind="authentication_error",
                          headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request):
        too_big = Invalid(f"the request body is over the {max_body} bytes limit",
                          code="request_too_large", status=413)
        if int(request.headers.get("content-length") or 0) > max_body:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise too_big
            chunks.append(chunk)
        try:
            body = protocol.loads(b"".join(chunks), "the request body")
            json.dumps(body, ensure_ascii=False).encode()  # a "\ud800" escape is no text
        except protocol.TooDeep as e:
            raise Invalid(str(e)) from None
        except UnicodeEncodeError:
            raise Invalid("the request body is not valid Unicode: a string holds a lone"
                          " surrogate (\\ud800-\\udfff)") from None
        except (ValueError, UnicodeDecodeError):
            raise Invalid("the request body is not valid JSON") from None
        return body

    def model_card(model_id: str) -> dict:
        owner = "idiolect" if model_id == models.base else model_id.split("/", 1)[1]
        return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}

    def target_of(name: str):
        try:
            return models.resolve(name)
        except NotFound as e:
            raise Invalid(str(e), "model", "model_not_found", status=404) from None

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "base": models.base, "version": __version__}

    @app.get("/v1/models", responses={200: {"model": ModelList}} | UNAUTHORIZED)
    def list_models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [model_card(m) for m in models.served()]}

    @app.get("/v1/models/{model_id:path}",
             responses={200: {"model": ModelCard}} | UNAUTHORIZED | NO_MODEL)
    def get_model(model_id: str, request: Request) -> dict:
        authorize(request)
        target_of(model_id)
        return model_card(model_id)

    @app.get("/v1/idiolect/stats", responses=UNAUTHORIZED)
    def stats(request: Request) -> dict:
        authorize(request)
        return batcher.snapshot()

    async def submit(request: Request, req, chat: bool):
        target = target_of(req.model)
        s = sampling(req, cfg, default_tokens=160 if chat else 16)
        subject, to = subject_and_recipients(req.text())
        shots = ([] if models.without_shots(target)  # (no thread hop where none are shown)
                 else await asyncio.to_thread(models.shots, target, subject))
        text = prompt_text(models.tokenizer, subject, to, shots)
        ids = models.tokenizer(text, add_special_tokens=False)["input_ids"]
        param = "messages" if chat else "prompt"
        mine = (f" (with the user's {len(shots)} earlier messages this adapter is prompted"
                " with)") if shots else ""
        if len(ids) > cfg.max_prompt_tokens:
            raise Invalid(f"{param}: the prompt is {len(ids)} tokens{mine}, over this server's"
                          f" {cfg.max_prompt_tokens}", param, "context_length_exceeded")
        if batcher.context and len(ids) + s.max_tokens > batcher.context:
            raise Invalid(f"{param}: {len(ids)} prompt tokens{mine} + max_tokens {s.max_tokens} exceed"
                          f" the model's context of {batcher.context}", param,
                          "context_length_exceeded")
        job = Job(target, ids, s, req.n, asyncio.get_running_loop(), asyncio.Queue())
        try:
            batcher.submit(job)
        except QueueFull as e:
            raise Invalid(f"the server is busy ({e})", code="rate_limit_exceeded", status=429,
                          kind="rate_limit_error",
                          headers={"Retry-After": str(e.retry_after)}) from None
        return job

    def envelope(job: Job, chat: bool) -> dict:
        return {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12),
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": job.target.model,
                "system_fingerprint": job.target.adapter or models.base}

    def usage(job: Job, tokens: int) -> dict:
        return {"prompt_tokens": len(job.prompt_ids) * job.n, "completion_tokens": tokens,
                "total_tokens": len(job.prompt_ids) * job.n + tokens}

    async def collect(request: Request, job: Job, chat: bool):
        texts, reasons, tokens = [""] * job.n, [None] * job.n, 0
        while None in reasons:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return None
                continue
            if event[0] == "error":
                raise Invalid(event[1], status=500, kind="server_error")
            if event[0] == "delta":
                texts[event[1]] += event[2]
            else:
                reasons[event[1]], tokens = event[2], tokens + event[3]
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t},
                        "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        return envelope(job, chat) | {"choices": choices, "usage": usage(job, tokens)}

    async def stream(job: Job, chat: bool, include_usage: bool):
        head = envelope(job, chat) | {"object": "chat.completion.chunk" if chat
                                      else "text_completion"}

        def chunk(index, text=None, reason=None, first=False) -> str:
            if chat:
                delta = ({"role": "assistant", "content": ""} if first else
                         {} if text is None else {"content": text})
                choice = {"index": index, "delta": delta, "logprobs": None,
                          "finish_reason": reason}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None,
                          "finish_reason": reason}
            return "data: " + json.dumps(head | {"choices": [choice]}) + "\n\n"

        done, tokens = 0, 0
        try:
            if chat:
                for i in range(job.n):
                    yield chunk(i, first=True)
            while done < job.n:
                event = await job.events.get()
                if event[0] == "error":
                    body = Invalid(event[1], status=500, kind="server_error").body()
                    yield "data: " + json.dumps(body) + "\n\n"
                    return
                if event[0] == "delta":
                    yield chunk(event[1], event[2])
                else:
                    done, tokens = done + 1, tokens + event[3]
                    yield chunk(event[1], reason=event[2])
            if include_usage:
                yield "data: " + json.dumps(head | {"choices": [], "usage": usage(job, tokens)}) \
                    + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # the client went away (or all is sent): its rows leave the batch

    async def complete(request: Request, cls, chat: bool):
        authorize(request)
        req = parse(cls, await read_json(request))
        job = await submit(request, req, chat)
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(stream(job, chat, include), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            result = await collect(request, job, chat)
        finally:
            job.cancel()
        return JSONResponse(result if result is not None else {})

    @app.post("/v1/chat/completions", **completion_docs(ChatRequest, cfg))
    async def chat_completions(request: Request):
        return await complete(request, ChatRequest, chat=True)

    @app.post("/v1/completions", **completion_docs(CompletionRequest, cfg))
    async def completions(request: Request):
        return await complete(request, CompletionRequest, chat=False)

    page.register(app, models, authorize, read_json)  # GET / and POST /v1/idiolect/rank
    return app
