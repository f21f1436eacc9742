"""`idiolect serve`: the command wires the home, the base and the limits into the app; bad flags
and a taken port are one-line errors."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("fastapi")

from live import two_users  # noqa: E402,F401 - fixture


def test_serve_command_builds_the_app_on_the_home(two_users, tiny_base, cli_run, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    seen = {}

    def fake_run(app, host, port, **kw):
        seen.update(host=host, port=port)
        with TestClient(app) as client:
            seen["models"] = client.get("/v1/models", headers={"Authorization": "Bearer t"})
            seen["chat"] = client.post("/v1/chat/completions", json={
                "model": "idiolect/bob", "messages": [{"role": "user", "content": "fix: x"}],
                "max_tokens": 40}, headers={"Authorization": "Bearer t"})
            seen["no_token"] = client.get("/v1/models")

    monkeypatch.setattr(uvicorn, "run", fake_run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    r = cli_run("serve", "--base", tiny_base, "--port", free, "--token", "t", "--max-tokens", 32)
    assert r.exit_code == 0, r.stderr
    assert seen["host"] == "127.0.0.1" and seen["port"] == free
    assert [m["id"] for m in seen["models"].json()["data"]] == ["tiny", "idiolect/ada",
                                                              "idiolect/bob"]
    assert seen["chat"].status_code == 400 and seen["chat"].json()["error"]["param"] == \
        "max_tokens"  # --max-tokens 32 is the server's limit
    assert seen["no_token"].status_code == 401
    assert "2 user(s) with an active adapter" in r.stderr and "token required" in r.stderr


def test_serve_refuses_a_taken_port_and_bad_limits_in_one_line(tiny_base, cli_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = cli_run("serve", "--base", tiny_base, "--port", s.getsockname()[1])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "cannot listen" in r.stderr
    r = cli_run("serve", "--base", tiny_base, "--max-batch", 0)
    assert r.exit_code == 2 and "--max-batch must be at least 1" in r.stderr
