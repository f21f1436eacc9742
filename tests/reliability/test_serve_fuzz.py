"""`idiolect serve` fuzzed from its own OpenAPI schema (issue #20, the second server): Schemathesis
generates requests for every operation (positive and negative data, with and without the bearer
token, on a server with a token and on one without) and checks every response like the catalog's
fuzz does (``test_catalog_fuzz``: no 500, only documented status codes, content types, headers,
and bodies conforming to the documented schemas). The home holds two users (ada, bob) with active
tiny random adapters; positive cases are also steered at the models that exist (the bare base,
``idiolect/ada``, ``idiolect/bob``) with a user message, so the completions (plain and streamed)
really run through the batcher. The server's limits are small (``max_tokens`` 4, ``n`` 2) and
documented in the request schemas (``maximum``), so generated cases stay fast.

Slow tier only (``-m slow``): in-process ASGI and over a loopback socket. Needs the ``fuzz``
extra (``pip install -e '.[fuzz]'``); skipped without it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("schemathesis",
                    reason="schemathesis is not installed (pip install -e '.[fuzz]')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # live.py, the helpers

from hypothesis import strategies as st  # noqa: E402
from live import two_users  # noqa: E402,F401 - fixture
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from test_catalog_fuzz import AUTH, TOKEN, fuzz, report  # noqa: E402

# examples per operation, generation mode and token (IDIOLECT_FUZZ_EXAMPLES overrides)
EXAMPLES = int(os.environ.get("IDIOLECT_FUZZ_EXAMPLES", "25"))
LIMITS = {"max_tokens": 4, "max_n": 2, "max_batch": 2, "max_wait_ms": 1.0}
USER_TEXT = st.sampled_from(["fix: the cache", "To: a@b.c\nSubject: release", "hi",
                             "\u00e9t\u00e9 \U0001f600", "\ud800 lone"])


def steering(models: list[str]):
    """The operation's own strategy, plus (positive data only) cases aimed at what exists."""
    def strategy(op, mode: GenerationMode):
        plain = op.as_strategy(mode)
        if mode is not GenerationMode.POSITIVE:
            return plain
        if op.path == "/v1/models/{model_id}":
            return st.one_of(plain, st.sampled_from(models).flatmap(
                lambda m: op.as_strategy(mode, path_parameters={"model_id": m})))
        if op.method.upper() != "POST":
            return plain

        def aim(case, model, text):
            if isinstance(case.body, dict):
                case.body["model"] = model
                if op.path == "/v1/chat/completions":
                    case.body["messages"] = [*case.body.get("messages", []),
                                             {"role": "user", "content": text}]
                else:
                    case.body["prompt"] = text
            return case

        return st.one_of(plain, st.builds(aim, plain, st.sampled_from(models), USER_TEXT))
    return strategy


@pytest.fixture
def served(home, tiny_base, two_users):
    """``app(token)``: a serve app on the tiny base, its two users' adapters preloaded; one
    batcher at a time (the previous one is stopped), all stopped at the end."""
    from idiolect.serve.app import create_app
    from idiolect.serve.batcher import BatchConfig
    from idiolect.serve.models import ServedModels

    models = ServedModels(home, tiny_base, log=lambda msg: print(msg, file=sys.stderr))
    assert not models.preload()
    apps = []

    def make(token):
        for a in apps:
            a.state.batcher.stop()
        apps.append(create_app(models, BatchConfig(**LIMITS), token=token))
        return apps[-1]

    yield make, models.served()
    for a in apps:
        a.state.batcher.stop()


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["asgi", "loopback"])
def test_serve_fuzz_from_the_openapi_schema(served, record_property, transport):
    from idiolect.catalog.server import serve_in_thread

    make, models = served
    assert models == ["tiny", "idiolect/ada", "idiolect/bob"]
    for name, token in (("token", TOKEN), ("open", None)):
        app = make(token)
        tokens = (None, AUTH)
        if transport == "asgi":
            counts, failures = fuzz(app, None, EXAMPLES, strategy=steering(models),
                                    tokens=tokens)
        else:
            url, stop = serve_in_thread(app)
            try:
                counts, failures = fuzz(app, None, max(1, EXAMPLES // 2), base_url=url,
                                        strategy=steering(models), tokens=tokens)
            finally:
                stop()
        report(record_property, f"{transport}_{name}", counts, failures)
        assert not failures, failures
        seen = counts["statuses"]
        # the steered cases reached real answers, so their schemas were checked
        for op in ("GET /v1/models", "GET /v1/models/{model_id}", "POST /v1/chat/completions",
                   "POST /v1/completions", "GET /v1/idiolect/stats"):
            assert 200 in seen[op], (op, seen)
        if token:
            assert 401 in seen["GET /v1/models"]
