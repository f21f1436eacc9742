"""Bad input and faults: an OpenAI error object with the right status, never a traceback, and
the server keeps serving everyone else."""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")

from live import add_user, serve, two_users  # noqa: E402,F401 - fixtures

CHAT = {"model": "idiolect/ada", "messages": [{"role": "user", "content": "fix: x"}],
        "max_tokens": 4}


def refused(r: httpx.Response, status: int, param=None, code=None) -> str:
    """The response is one OpenAI error object; returns its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param and body["error"]["code"] == code
    assert "Traceback" not in r.text and "File \"" not in r.text
    return body["error"]["message"]


def test_unknown_models_and_users_without_an_adapter_are_404(serve, two_users, home):
    add_user(home, "cyd")
    live = serve()
    with pytest.raises(openai.NotFoundError) as e:
        live.client.chat.completions.create(model="gpt-4", messages=CHAT["messages"])
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    post = lambda body: httpx.post(live.url + "/v1/chat/completions", json=body)  # noqa: E731
    assert "no user 'zed'" in refused(post(CHAT | {"model": "idiolect/zed"}), 404, "model",
                                      "model_not_found")
    assert "no active adapter" in refused(post(CHAT | {"model": "idiolect/cyd"}), 404, "model",
                                          "model_not_found")
    refused(httpx.get(live.url + "/v1/models/idiolect/cyd"), 404, "model", "model_not_found")
    refused(httpx.get(live.url + "/v1/nothing"), 404, None, "not_found")


@pytest.mark.parametrize("change, param, words", [
    ({"temperature": -1}, "temperature", "between 0 and 2"),
    ({"temperature": 1e9}, "temperature", "between 0 and 2"),
    ({"top_p": 0}, "top_p", "above 0"),
    ({"max_tokens": 100000}, "max_tokens", "between 1 and 512"),
    ({"max_tokens": "lots"}, "max_tokens", "integer"),
    ({"n": 99}, "n", "between 1 and"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "messages", "user message"),
    ({"messages": "fix: x"}, "messages", "list"),
])
def test_bad_fields_are_400_naming_the_field(serve, two_users, change, param, words):
    live = serve()
    r = httpx.post(live.url + "/v1/chat/completions", json=CHAT | change)
    assert words in refused(r, 400, param)


def test_bad_bodies_too_long_prompts_and_the_server_keeps_serving(serve, two_users):
    live = serve(max_prompt_tokens=200)
    url = live.url + "/v1/chat/completions"
    assert "not valid JSON" in refused(httpx.post(url, content=b'{"model": "idiolect/ada",'), 400)
    assert "JSON object" in refused(httpx.post(url, json=[1, 2]), 400)
    deep = b'{"model":' + b"[" * 100 + b"]" * 100 + b"}"
    assert "nested deeper than 64" in refused(httpx.post(url, content=deep), 400)
    ten_mb = b'{"model": "' + b"x" * (10 << 20) + b'"}'
    assert "1048576 bytes" in refused(httpx.post(url, content=ten_mb), 413, None,
                                      "request_too_large")
    long = CHAT | {"messages": [{"role": "user", "content": "fix the cache " * 300}]}
    assert "over this server's 200" in refused(httpx.post(url, json=long), 400, "messages",
                                               "context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as e:  # the same through the client
        live.client.completions.create(model="idiolect/ada", prompt="x", max_tokens=-3)
    assert e.value.body["param"] == "max_tokens"
    r = live.client.chat.completions.create(**CHAT)
    assert r.choices[0].message.role == "assistant"


def test_a_failed_batch_is_a_500_error_and_the_next_batch_runs(serve, two_users, monkeypatch):
    live = serve()
    batcher = live.app.state.batcher
    real = batcher.models.forward
    calls = {"n": 0}

    def once_broken(names, **inputs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated fault")
        return real(names, **inputs)

    monkeypatch.setattr(batcher.models, "forward", once_broken)
    r = httpx.post(live.url + "/v1/chat/completions", json=CHAT)
    assert "failed on the server" in refused(r, 500)
    assert r.json()["error"]["type"] == "server_error" and "simulated" not in r.text
    stream = httpx.post(live.url + "/v1/chat/completions", json=CHAT | {"stream": True})
    assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
    assert live.stats["failed_batches"] == 1


def test_a_token_guards_every_endpoint_but_healthz(serve, two_users):
    live = serve(token="s3cret")
    r = httpx.get(live.url + "/v1/models")
    refused(r, 401, None, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    refused(httpx.get(live.url + "/v1/models", headers={"Authorization": "Bearer nope"}), 401,
            None, "invalid_api_key")
    refused(httpx.post(live.url + "/v1/chat/completions", json=CHAT), 401, None,
            "invalid_api_key")
    assert httpx.get(live.url + "/healthz").status_code == 200
    assert [m.id for m in live.client.models.list().data][0] == "tiny"  # client sends it
    assert live.client.chat.completions.create(**CHAT).choices


@pytest.mark.parametrize("path, body", [  # found by tests/reliability/test_serve_fuzz.py
    ("/v1/completions", b'{"model": "idiolect/ada", "prompt": "\\ud800 lone", "max_tokens": 2}'),
    ("/v1/chat/completions", (b'{"model": "idiolect/ada", "max_tokens": 2, "messages": [{"role":'
                              b' "user", "content": "fix: \\udfff"}]}')),
    ("/v1/chat/completions", b'{"model": "idiolect/\\ud800", "messages": []}'),
])
def test_a_lone_surrogate_is_a_400_not_a_500(serve, two_users, path, body):
    """Valid JSON, no valid text: the tokenizer (and sqlite) cannot encode it (was a 500)."""
    live = serve()
    assert "lone surrogate" in refused(httpx.post(live.url + path, content=body), 400)
    ok = httpx.post(live.url + path, content=body.replace(b"\\ud800", b"x")
                    .replace(b"\\udfff", b"x"))
    assert ok.status_code in (200, 404), ok.text  # the same body without it is served


def test_without_max_tokens_the_default_stays_under_the_servers_limit(serve, two_users):
    """On a server whose --max-tokens is under the default (160 chat, 16 completion), a request
    without max_tokens gets at most --max-tokens tokens (was a 400 for every such request)."""
    live = serve(max_tokens=3)
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    r = httpx.post(live.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3
    r = httpx.post(live.url + "/v1/completions", json={"model": "tiny", "prompt": "fix: x"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3, r.text
    assert "between 1 and 3" in refused(httpx.post(live.url + "/v1/completions", json={
        "model": "tiny", "prompt": "x", "max_tokens": 4}), 400, "max_tokens")


def test_openapi_documents_bodies_limits_refusals_and_streams(serve, two_users):
    """What the fuzz checks answers against: the request bodies with this server's limits, every
    refusal as an OpenAI error object, streamed events (was: no bodies, only 200 documented)."""
    live = serve(token="s3cret", max_tokens=7, max_batch=4, max_n=3)
    doc = httpx.get(live.url + "/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    assert set(doc["components"]["schemas"]["ErrorObject"]["required"]) == {
        "message", "type", "param", "code"}
    for path in ("/v1/chat/completions", "/v1/completions"):
        op = doc["paths"][path]["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        assert {"integer": 7} == {b["type"]: b["maximum"] for b in
                                  body["properties"]["max_tokens"]["anyOf"] if "maximum" in b}
        assert body["properties"]["n"]["maximum"] == 3 and "model" in body["required"]
        for status in ("400", "401", "404", "413", "429", "500"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == error
        assert "Retry-After" in op["responses"]["429"]["headers"]
        assert op["responses"]["200"]["content"]["text/event-stream"]["schema"]["required"] == \
            ["data"]
    for path in ("/v1/models", "/v1/models/{model_id}", "/v1/idiolect/stats"):
        assert doc["paths"][path]["get"]["responses"]["401"]["content"]["application/json"][
            "schema"] == error
    assert "404" in doc["paths"]["/v1/models/{model_id}"]["get"]["responses"]


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-30])
def test_a_tiny_temperature_samples_greedily_not_a_failed_batch(serve, two_users, temperature):
    """logits / 1e-300 overflow to inf, softmax to NaN: that failed the whole batch (a 500);
    a temperature too small to sample with is greedy, as 0 is. Found by the serve fuzz."""
    live = serve()
    url = live.url + "/v1/chat/completions"
    tiny = httpx.post(url, json=CHAT | {"temperature": temperature, "max_tokens": 3, "seed": 1})
    assert tiny.status_code == 200, tiny.text
    greedy = httpx.post(url, json=CHAT | {"temperature": 0, "max_tokens": 3})
    assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
    assert live.stats["failed_batches"] == 0
