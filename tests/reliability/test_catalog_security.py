"""Catalog: what tests/catalog/test_server.py does not cover yet. Over real sockets: bodies
streamed without a Content-Length past the limits, path tricks in download URLs, a listing
that names a pickle file (the client refuses it, nothing installed), more refused names; and a
small loopback load (8 clients x 5 requests of list / match / download) with zero errors."""

from __future__ import annotations

import http.client
import json
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import catalog_load  # noqa: E402

from idiolect.catalog.client import CatalogClient  # noqa: E402
from idiolect.catalog.server import (  # noqa: E402
    Limits, Refused, check_name, create_app, serve_in_thread)
from idiolect.errors import IdiolectError, InputError  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture
def server(tmp_path):
    url, stop = serve_in_thread(create_app(tmp_path / "server", TOKEN,
                                           Limits(safetensors_bytes=64 << 10, json_bytes=8 << 10)))
    yield url, tmp_path / "server"
    stop()


def raw(url: str, method: str, path: str, body=None, headers=None) -> tuple[int, bytes]:
    """One request with the path sent exactly as given (no client-side normalisation)."""
    u = urlsplit(url)
    with closing(http.client.HTTPConnection(u.hostname, u.port, timeout=30)) as c:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None and "content-length" not in {k.lower() for k in headers or {}}:
            c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        if body is not None:
            for chunk in body:
                c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            c.send(b"0\r\n\r\n")
        r = c.getresponse()
        return r.status, r.read()


def _chunks(total: int, size: int = 1 << 16):
    for _ in range(total // size):
        yield b" " * size


def test_streamed_bodies_past_the_limit_are_refused(server):
    url, root = server
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    limit = Limits(safetensors_bytes=64 << 10, json_bytes=8 << 10).publish_body
    # no Content-Length: the server counts what it reads and stops at the limit
    status, body = raw(url, "POST", "/adapters", _chunks(limit + (1 << 17)), auth)
    assert status == 413 and b"over the" in body
    status, _ = raw(url, "POST", "/match", _chunks(1 << 17), {"Content-Type": "application/json"})
    assert status == 413
    # a Content-Length that announces too much is refused before reading
    status, _ = raw(url, "POST", "/adapters", [], auth | {"Content-Length": str(limit + 1)})
    assert status == 413
    # without the token, nothing is read at all
    status, _ = raw(url, "POST", "/adapters", _chunks(1 << 20),
                    {"Content-Type": "application/json"})
    assert status == 401
    health = CatalogClient(url).health()  # still serving, nothing stored
    assert health["status"] == "ok" and health["adapters"] == 0
    assert not any((root / "blobs").iterdir())


def test_deep_json_is_refused_without_a_traceback_in_the_server_log(tmp_path, capfd):
    """400 KB of nested brackets (#20), under the default size limits: a one-line 400 on /match
    and /adapters, the server's log stays clean (no RecursionError traceback), it keeps serving."""
    url, stop = serve_in_thread(create_app(tmp_path / "server", TOKEN))
    deep = b"[" * 200_000 + b"]" * 200_000
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        for path, headers in (("/match", {"Content-Type": "application/json"}),
                              ("/adapters", auth)):
            chunks = [deep[i:i + 65536] for i in range(0, len(deep), 65536)]
            status, body = raw(url, "POST", path, chunks, headers)
            assert status == 400, (path, status, body[:200])
            assert json.loads(body)["detail"] == "request body: JSON nested deeper than 64 levels"
        assert CatalogClient(url).health()["status"] == "ok"
    finally:
        stop()
    log = capfd.readouterr().err
    assert "Traceback" not in log and "RecursionError" not in log


def test_download_paths_cannot_leave_the_blob_store(server, tmp_path):
    url, root = server
    aid = catalog_load.publish_tiny(url, TOKEN, 1, tmp_path)[0]["id"]
    db = (root / "catalog.db").read_bytes()[:16]
    assert db.startswith(b"SQLite format 3")
    for path in (f"/adapters/{aid}/files/../../catalog.db",
                 f"/adapters/{aid}/files/..%2F..%2Fcatalog.db",
                 f"/adapters/{aid}/files/%2e%2e%2fcatalog.db",
                 "/adapters/..%2F..%2Fcatalog.db/files/manifest.json",
                 f"/adapters/{aid}/files/adapter_model.safetensors%00.pt",
                 f"/adapters/{aid}/files/blobs",
                 f"/adapters/{aid.lower()}/files/manifest.json"):
        status, body = raw(url, "GET", path)
        assert status in (400, 404), (path, status)
        assert b"SQLite format 3" not in body and db not in body, path
    status, body = raw(url, "GET", f"/adapters/{aid}/files/manifest.json")
    assert status == 200 and json.loads(body)["id"] == aid


@pytest.mark.parametrize("name", ["ADAPTER.PT", "x.pth", "model.ckpt", "state.pickle",
                                  "adapter_model.safetensors.bin", "..", "card.json/..",
                                  "card.json\x00.pt", "/etc/passwd", "C:\\card.json",
                                  "adapter_config.json ", "Card.json"])
def test_more_refused_names(name):
    with pytest.raises(Refused) as e:
        check_name(name)
    assert e.value.status == 400


def test_client_refuses_a_listing_with_a_pickle_and_installs_nothing(server, tmp_path,
                                                                    isolated_home):
    """A compromised server lists an extra adapter_model.bin: the client refuses the whole
    adapter before downloading anything."""
    import sqlite3

    from conftest import open_home
    from idiolect.vault.message import Message
    from idiolect.vault.store import import_messages

    url, root = server
    aid = catalog_load.publish_tiny(url, TOKEN, 1, tmp_path)[0]["id"]
    with closing(sqlite3.connect(root / "catalog.db")) as db, db:
        db.execute("INSERT INTO files VALUES (?, 'adapter_model.bin', ?, 10)", (aid, "0" * 64))
    with open_home() as home:
        conn = home.conn
        import_messages(conn, "bob", [Message("s", "a body")], source="t", fmt="jsonl")
        # a local base with the listed fingerprint, so the pull gets past the base check (no
        # weights: a pull never loads the model)
        from idiolect.bases import load as bases

        (tmp_path / "nobase").mkdir()
        (tmp_path / "nobase" / bases.FINGERPRINT_FILE).write_text(json.dumps(
            {"digest": catalog_load.DIGEST}))
        (tmp_path / "nobase" / "config.json").write_text("{}")
        bases.add_local(home, "tiny", tmp_path / "nobase")
        client = CatalogClient(url)
        with pytest.raises(InputError, match="unexpected file set"):
            client.pull(home, aid, "bob", base="tiny")
        assert conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0] == 0
    adapters_dir = isolated_home / "adapters"
    assert not adapters_dir.exists() or not any(adapters_dir.iterdir())


def test_publish_without_or_with_a_wrong_token_through_the_client(server, tmp_path):
    url, _ = server
    folder = catalog_load.tiny_adapter(tmp_path / "a", 0)
    card = catalog_load.card("plain", 0)
    with pytest.raises(IdiolectError, match="needs a token"):
        CatalogClient(url, token="").publish(folder, card)
    with pytest.raises(IdiolectError, match=r"\(401\).*valid bearer token"):
        CatalogClient(url, token="wrong").publish(folder, card)
    with pytest.raises(IdiolectError, match=r"\(401\)"):
        CatalogClient(url, token=TOKEN + "x").publish(folder, card)
    assert CatalogClient(url).list() == []


def test_small_loopback_load_has_zero_errors(tmp_path):
    """8 clients x 5 requests (list / match / download with sha256 check) at once."""
    url, stop = serve_in_thread(create_app(tmp_path / "server", TOKEN))
    try:
        catalog_load.publish_tiny(url, TOKEN, 3, tmp_path)
        res = catalog_load.load(url, clients=8, requests=5, seed=1)
    finally:
        stop()
    print(f"\nload: {res['requests']} requests, {res['errors']} errors, "
          + ", ".join(f"{k} p50 {v['p50_ms']} ms p99 {v['p99_ms']} ms"
                      for k, v in res["latency"].items() if v))
    assert res["requests"] == 40 and res["errors"] == 0, res["error_samples"]
    assert sum(v["n"] for v in res["latency"].values() if v) == 40
