"""`idiolect serve --ray-replicas`: the same OpenAI app as Ray Serve replicas. The flags and the
missing-extra error need no Ray; a replica's app is checked in-process (its replica header, its
batcher stopped by the lifespan's end, which Serve runs when it stops a replica). The slow tests
start a local Ray instance: two replicas asked through the official `openai` client, and a
replica that cannot open the home (skipped without the `ray-serve` extra)."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

pytest.importorskip("fastapi")

from live import two_users  # noqa: E402,F401 - fixture

SUBJECT = "To: list@example.org\nfix: the cache index is read twice"


def test_without_ray_serve_the_flag_is_one_line_naming_the_extra(tiny_base, cli_run,
                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    r = cli_run("serve", "--base", tiny_base, "--ray-replicas", 2)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "idiolect[ray-serve]" in r.stderr


def test_ray_flags_are_checked_before_anything_starts(tiny_base, cli_run):
    r = cli_run("serve", "--base", tiny_base, "--ray-address", "auto")
    assert r.exit_code == 2 and "need --ray-replicas" in r.stderr
    r = cli_run("serve", "--base", tiny_base, "--ray-replicas", 0)
    assert r.exit_code == 2 and "--ray-replicas" in r.stderr
    r = cli_run("serve", "--base", tiny_base, "--ray-replicas", 1, "--ray-cpus", 0)
    assert r.exit_code == 2 and "--ray-cpus" in r.stderr


def test_a_replicas_app_names_itself_and_its_lifespan_end_stops_the_batcher(home, tiny_base,
                                                                           two_users):
    from fastapi.testclient import TestClient

    from idiolect.serve.batcher import BatchConfig
    from idiolect.serve.ray_app import REPLICA_HEADER, build_app

    app = build_app(home.root, tiny_base, BatchConfig())
    with TestClient(app) as client:
        models = client.get("/v1/models")
        assert [m["id"] for m in models.json()["data"]] == ["tiny", "idiolect/ada",
                                                           "idiolect/bob"]
        with client.stream("POST", "/v1/completions", json={
                "model": "idiolect/bob", "prompt": SUBJECT, "max_tokens": 3,
                "stream": True}) as streamed:
            lines = [ln for ln in streamed.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]"
        assert models.headers[REPLICA_HEADER] == streamed.headers[REPLICA_HEADER]
        assert models.headers[REPLICA_HEADER].endswith(f":{os.getpid()}")
        assert app.state.batcher._thread.is_alive()
    assert not app.state.batcher._thread.is_alive()


def test_a_missing_home_is_named_by_the_replica(tmp_path):
    from idiolect.errors import IdiolectError
    from idiolect.serve.batcher import BatchConfig
    from idiolect.serve.ray_app import build_app

    with pytest.raises(IdiolectError, match="no idiolect home at"):
        build_app(tmp_path / "elsewhere", "tiny", BatchConfig())


def needs_ray_serve():
    # imported here, not at collection: importing Ray costs seconds in the default tier
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed:"
                        " pip install -e '.[ray-serve]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_replicas_on_a_local_ray_answer_every_user(home, tiny_base, two_users,
                                                       monkeypatch):
    needs_ray_serve()
    import httpx
    openai = pytest.importorskip("openai")

    from idiolect.serve import ray_app
    from idiolect.serve.batcher import BatchConfig

    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # no cluster there: a new one is started
    # Half a CPU each: two replicas fit on a one-core machine's local instance.
    ray_app.start(home.root, tiny_base, 2, "127.0.0.1", port, BatchConfig(), num_cpus=0.5)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny", "idiolect/ada",
                                                            "idiolect/bob"]
        replicas = set()
        ask = dict(messages=[{"role": "user", "content": SUBJECT}], max_tokens=8,
                   temperature=0, extra_body={"ignore_eos": True})
        for user in ("ada", "bob"):
            raw = client.chat.completions.with_raw_response.create(model=f"idiolect/{user}",
                                                                   **ask)
            replicas.add(raw.headers[ray_app.REPLICA_HEADER])
            whole = raw.parse()
            assert whole.model == f"idiolect/{user}"
            assert whole.system_fingerprint == two_users[user]
            assert whole.usage.completion_tokens == 8
            raw = client.chat.completions.with_raw_response.create(
                model=f"idiolect/{user}", stream=True, **ask)
            replicas.add(raw.headers[ray_app.REPLICA_HEADER])
            chunks = list(raw.parse())
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            # greedy, and every replica holds the same base and adapters: the same text
            assert streamed == whole.choices[0].message.content
        # Serve's router picks between idle replicas at random: ask until both have answered
        deadline = time.monotonic() + 60
        while len(replicas) < 2 and time.monotonic() < deadline:
            raw = client.completions.with_raw_response.create(
                model="idiolect/ada", prompt=SUBJECT, max_tokens=2)
            replicas.add(raw.headers[ray_app.REPLICA_HEADER])
        assert len(replicas) == 2, replicas

        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="idiolect/zed", **ask)
        assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
        r = httpx.post(url + "/chat/completions", json={"model": "gpt-4",
                                                        "messages": ask["messages"]}, timeout=60)
        assert r.status_code == 404 and set(r.json()) == {"error"}
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    finally:
        ray_app.stop()


@pytest.mark.slow
def test_a_replica_that_cannot_start_is_one_line_and_ray_is_stopped(tmp_path):
    needs_ray_serve()
    import ray

    from idiolect.errors import IdiolectError
    from idiolect.serve import ray_app
    from idiolect.serve.batcher import BatchConfig

    with pytest.raises(IdiolectError) as e:
        ray_app.start(tmp_path / "nohome", "tiny", 1, "127.0.0.1", free_port(), BatchConfig(),
                      num_cpus=0.5)
    assert "could not start the replicas" in str(e.value) and "no idiolect home at" in \
        str(e.value) and "\n" not in str(e.value)
    assert not ray.is_initialized()
