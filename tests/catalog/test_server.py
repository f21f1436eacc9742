"""The catalog server and client: auth, refused files, limits, list, match, pull, the wire."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import synthetic_messages, write_jsonl  # noqa: E402
from idiolect.catalog.card import Card, card_from_texts  # noqa: E402
from idiolect.catalog.client import CatalogClient  # noqa: E402
from idiolect.catalog.server import Limits, create_app, serve_in_thread  # noqa: E402
from idiolect.errors import IdiolectError, InputError  # noqa: E402

TOKEN = "s3cret-token"
OTHER_DIGEST = "ab" * 32
NEUTRAL = ["Thanks for the note. I will look at the patch tomorrow and get back to you.",
           "Sounds good to me. Could we meet on Monday to discuss the release plan?",
           "I think the fix is fine, but we should add a test before merging it.",
           "Sorry for the delay. The report is attached; let me know if anything is missing."]


def style_card(style: str, digest: str, user: str = "u", seed: int = 0) -> Card:
    texts = [m["body"] for m in synthetic_messages(user, 30, seed=seed, style=style)]
    return card_from_texts(texts, NEUTRAL, base_digest=digest, base_name="tiny", embedder="hash")


def fake_adapter(folder: Path, digest: str, seed: int = 0) -> Path:
    """A LoRA adapter folder (2 layers, q_proj, rank 2) with a valid manifest."""
    import torch
    from safetensors.torch import save_file

    from idiolect import adapters
    from idiolect.home import new_id, utcnow

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    tensors = {}
    for i in range(2):
        key = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{key}.lora_A.weight"] = torch.randn(2, 64, generator=g)
        tensors[f"{key}.lora_B.weight"] = torch.randn(64, 2, generator=g)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
        "task_type": "CAUSAL_LM", "base_model_name_or_path": "idiolect/tiny"}))
    manifest = {"schema_version": 1, "id": new_id(), "user": "ada", "created_at": utcnow(),
                "base": {"name": "tiny", "fingerprint": {"digest": digest}},
                "snapshot": {"digest": "c" * 64, "messages": 3, "examples": 3},
                "recipe": {"rank": 2, "alpha": 4.0, "target_modules": ["q_proj"],
                           "lora_layers": 0},
                "parent": None, "metrics": {"eval": {"cohort": ["ada", "bob"]}},
                "files": adapters.file_digests(folder)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def body_of(files: dict[str, bytes]) -> dict:
    return {"files": {n: {"sha256": hashlib.sha256(b).hexdigest(),
                          "data": base64.b64encode(b).decode()} for n, b in files.items()}}


def files_of(folder: Path, card: Card) -> dict[str, bytes]:
    names = ("adapter_model.safetensors", "adapter_config.json", "manifest.json")
    return {n: (folder / n).read_bytes() for n in names} | {"card.json": card.to_json().encode()}


AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(tmp_path):
    return TestClient(create_app(tmp_path / "server", TOKEN))


@pytest.fixture
def upload(tmp_path):
    folder = fake_adapter(tmp_path / "a1", OTHER_DIGEST)
    return files_of(folder, style_card("shout", OTHER_DIGEST))


def test_publish_needs_the_token(api, upload, tmp_path):
    assert api.get("/healthz").json()["status"] == "ok"
    assert api.post("/adapters", json=body_of(upload)).status_code == 401
    r = api.post("/adapters", json=body_of(upload), headers={"authorization": "Bearer nope"})
    assert r.status_code == 401 and "token" in r.json()["detail"]
    readonly = TestClient(create_app(tmp_path / "ro", None))
    assert readonly.post("/adapters", json=body_of(upload), headers=AUTH).status_code == 403
    assert api.get("/adapters").json() == []


@pytest.mark.parametrize("name, why", [
    ("adapter_model.bin", "pickle"), ("weights.pt", "pickle"), ("state.pkl", "pickle"),
    ("../card.json", "path separators"), ("sub/manifest.json", "path separators"),
    ("a\\b.json", "path separators"), ("notes.txt", "only")])
def test_refuses_pickles_paths_and_other_files(api, upload, tmp_path, name, why):
    r = api.post("/adapters", json=body_of(upload | {name: b"\x80\x04K\x01."}), headers=AUTH)
    assert r.status_code == 400 and why in r.json()["detail"]
    assert api.get("/adapters").json() == []
    assert not any((tmp_path / "server" / "blobs").iterdir())
    assert api.get(f"/adapters/01ARZ3NDEKTSV4RRFFQ69G5FAV/files/{name}").status_code in (400, 404)


def test_size_limits(tmp_path, upload):
    small = TestClient(create_app(tmp_path / "s", TOKEN, Limits(safetensors_bytes=1024,
                                                                 json_bytes=4096)))
    r = small.post("/adapters", json=body_of(upload), headers=AUTH)
    assert r.status_code == 413 and "adapter_model.safetensors" in r.json()["detail"]
    big_card = upload | {"card.json": b" " * 5000 + upload["card.json"]}
    limits = Limits(json_bytes=4096)
    r = TestClient(create_app(tmp_path / "t", TOKEN, limits)).post(
        "/adapters", json=body_of(big_card), headers=AUTH)
    assert r.status_code == 413 and "card.json" in r.json()["detail"]
    too_big = Limits(safetensors_bytes=1024, json_bytes=4096).publish_body + 10
    r = small.post("/adapters", content=b"x" * too_big, headers=AUTH)
    assert r.status_code == 413
    assert small.post("/match", content=b" " * 5000).status_code == 413


def test_integrity_checks(api, upload):
    bad_sha = body_of(upload)
    bad_sha["files"]["adapter_config.json"]["sha256"] = "0" * 64
    assert "sha256" in api.post("/adapters", json=bad_sha, headers=AUTH).json()["detail"]
    cfg = json.loads(upload["adapter_config.json"]) | {"r": 3}
    r = api.post("/adapters", json=body_of(upload | {"adapter_config.json":
                                                     json.dumps(cfg).encode()}), headers=AUTH)
    assert r.status_code == 400 and "manifest" in r.json()["detail"]
    manifest = json.loads(upload["manifest.json"])
    for broken in ({"base": "tiny"}, {"recipe": None}, {"id": "../../etc"}):
        r = api.post("/adapters", json=body_of(upload | {"manifest.json": json.dumps(
            manifest | broken).encode()}), headers=AUTH)
        assert r.status_code == 400 and "manifest.json" in r.json()["detail"], broken
    import torch
    from safetensors.torch import save

    other = Card.from_dict(json.loads(upload["card.json"]) | {"base_digest": "cd" * 32})
    r = api.post("/adapters", json=body_of(upload | {"card.json": other.to_json().encode()}),
                 headers=AUTH)
    assert r.status_code == 400 and "base digest" in r.json()["detail"]
    r = api.post("/adapters", json=body_of(upload | {"card.json": b'{"style": "x"}'}),
                 headers=AUTH)
    assert r.status_code == 400 and "card" in r.json()["detail"]
    for junk, why in ((b"\x00" * 16, "not a LoRA safetensors"),
                      (save({"lm_head.weight": torch.zeros(2, 2)}), "not a LoRA A/B matrix")):
        r = api.post("/adapters", json=body_of(upload | {"adapter_model.safetensors": junk}),
                     headers=AUTH)
        assert r.status_code == 400 and why in r.json()["detail"]
    assert api.post("/adapters", json=body_of(upload), headers=AUTH).status_code == 201
    assert api.post("/adapters", json=body_of(upload), headers=AUTH).status_code == 409


def test_manifest_base_name_must_be_a_string(tmp_path, upload):
    """Found by tests/reliability/test_catalog_fuzz.py: a list, object or huge number as the base
    name was a 500 (sqlite could not bind it), and null a 409 'already published'."""
    api = TestClient(create_app(tmp_path / "server", TOKEN), raise_server_exceptions=False)
    manifest = json.loads(upload["manifest.json"])
    for name in (["x"], {"a": 1}, 10 ** 30, None, 5, "n" * 201):
        broken = manifest | {"base": manifest["base"] | {"name": name}}
        r = api.post("/adapters", json=body_of(upload | {"manifest.json": json.dumps(
            broken).encode()}), headers=AUTH)
        assert r.status_code == 400, (name, r.status_code, r.text[:200])
        assert "manifest.json: base name must be a string" in r.json()["detail"]
    assert api.get("/adapters").json() == []
    assert api.post("/adapters", json=body_of(upload), headers=AUTH).status_code == 201


def test_publish_list_download(api, upload):
    r = api.post("/adapters", json=body_of(upload), headers=AUTH)
    assert r.status_code == 201, r.text
    entry = r.json()
    rows = api.get("/adapters").json()
    assert [x["id"] for x in rows] == [entry["id"]]
    assert api.get("/adapters", params={"base_digest": "cd" * 32}).json() == []
    for name, data in upload.items():
        assert rows[0]["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(),
                                          "size": len(data)}
        got = api.get(f"/adapters/{entry['id']}/files/{name}")
        assert got.content == data and got.headers["x-sha256"] == hashlib.sha256(data).hexdigest()
    assert rows[0]["recipe"]["rank"] == 2 and "enthusiastic" in rows[0]["summary"]
    assert api.get(f"/adapters/{entry['id']}/files/model.bin").status_code == 400
    assert api.get(f"/adapters/{entry['id']}/files/..%2Fcatalog.db").status_code in (400, 404)
    assert api.get("/adapters/NOPE").status_code == 404
    assert api.get("/openapi.json").json()["info"]["title"] == "idiolect catalog"


def test_match_ranks_the_same_style_first(api, tmp_path):
    ids = {}
    for style, seed in (("plain", 1), ("shout", 2)):
        folder = fake_adapter(tmp_path / style, OTHER_DIGEST, seed)
        files = files_of(folder, style_card(style, OTHER_DIGEST, user=f"pub-{style}"))
        ids[style] = api.post("/adapters", json=body_of(files), headers=AUTH).json()["id"]
    for style in ("plain", "shout"):
        query = style_card(style, OTHER_DIGEST, user=f"device-{style}", seed=7)
        matches = api.post("/match", content=query.to_json()).json()["matches"]
        assert [m["id"] for m in matches][0] == ids[style]
        assert matches[0]["score"] > matches[1]["score"]
        assert matches[0]["explanation"]["text"] and matches[0]["recipe"]["rank"] == 2
    shout = style_card("shout", OTHER_DIGEST, user="x", seed=9)
    why = api.post("/match", content=shout.to_json()).json()["matches"][0]["explanation"]
    assert "enthusiastic" in {d["word"] for d in why["agree"]}
    elsewhere = Card.from_dict(shout.to_dict() | {"base_digest": "cd" * 32})
    assert api.post("/match", content=elsewhere.to_json()).json()["matches"] == []
    assert api.post("/match", content=b'{"base_digest": "nope"}').status_code == 400


def test_entries_and_matches_tell_each_adapters_prompt_format(api, tmp_path):
    """A device merges or confirms only adapters asked alike: the catalog tells which were
    trained with shots, from each manifest (a shots field that is not a number is none)."""
    from idiolect.catalog.warm_start import merge_pair

    ids = {}
    for name, shots in (("s1", 2), ("p1", None), ("s2", 2), ("p2", "2")):
        folder = fake_adapter(tmp_path / name, OTHER_DIGEST, len(ids))
        m = json.loads((folder / "manifest.json").read_text())
        if shots is not None:
            m["recipe"]["shots"] = shots
        (folder / "manifest.json").write_text(json.dumps(m))
        files = files_of(folder, style_card("shout", OTHER_DIGEST, user=f"pub-{name}"))
        ids[name] = api.post("/adapters", json=body_of(files), headers=AUTH).json()["id"]
    by_id = {e["id"]: e["recipe"] for e in api.get("/adapters").json()}
    assert by_id[ids["s1"]] == by_id[ids["s2"]] == {
        "rank": 2, "alpha": 4.0, "target_modules": ["q_proj"], "lora_layers": 0, "shots": 2,
        "shot_tokens": 64}
    assert by_id[ids["p1"]]["shots"] == by_id[ids["p2"]]["shots"] == 0
    query = style_card("shout", OTHER_DIGEST, user="device", seed=7)
    matches = api.post("/match", content=query.to_json()).json()["matches"]
    assert {m["id"]: m["recipe"] for m in matches} == by_id
    pair = {m["id"] for m in merge_pair(matches)}
    assert pair in ({ids["s1"], ids["s2"]}, {ids["p1"], ids["p2"]})


# ----------------------------------------------------------------------------- real sockets
@pytest.fixture
def server(tmp_path):
    url, stop = serve_in_thread(create_app(tmp_path / "server", TOKEN))
    yield url, tmp_path / "server"
    stop()


def _tiny_digest() -> str:
    from idiolect.bases import load as bases
    from conftest import open_home

    return bases.read_fingerprint(bases.resolve(open_home(), "tiny"))["digest"]


@pytest.fixture
def bob(tmp_path, tiny_base, cli_run):
    src = write_jsonl(tmp_path / "bob.jsonl", synthetic_messages("bob", 20))
    assert cli_run("user", "import", "bob", src).exit_code == 0
    return "bob"


def test_pull_verifies_digests_and_installs_a_candidate(server, bob, tmp_path):
    from idiolect import adapters
    from conftest import open_home

    url, _ = server
    digest = _tiny_digest()
    folder = fake_adapter(tmp_path / "pub", digest)
    client = CatalogClient(url, TOKEN)
    published = client.publish(folder, style_card("shout", digest))
    assert client.health()["adapters"] == 1
    assert [a["id"] for a in client.list()] == [published["id"]]
    home = open_home()
    conn = home.conn
    local = client.pull(home, published["id"], "bob", base="tiny")
    row = adapters.get(conn, local)
    assert (row["state"], row["user"], row["base"], row["base_digest"]) == (
        "candidate", "bob", "tiny", digest)
    installed = Path(row["path"])
    assert {p.name for p in installed.iterdir()} == {
        "adapter_model.safetensors", "adapter_config.json", "manifest.json", "card.json",
        "catalog.json"}
    adapters.verify_files(installed)
    m = json.loads((installed / "manifest.json").read_text())
    assert m["user"].startswith("anon-") and "cohort" not in m["metrics"]["eval"]
    assert client.pull(home, published["id"], "bob", base="tiny") == local
    assert conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0] == 1


def test_tampered_blob_is_rejected_and_nothing_installed(server, bob, tmp_path):
    from conftest import open_home

    url, root = server
    digest = _tiny_digest()
    client = CatalogClient(url, TOKEN)
    pid = client.publish(fake_adapter(tmp_path / "pub", digest), style_card("shout", digest))["id"]
    sha = client.get(pid)["files"]["adapter_model.safetensors"]["sha256"]
    blob = root / "blobs" / sha
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    home = open_home()
    conn = home.conn
    home_adapters = Path(conn.execute("PRAGMA database_list").fetchone()[2]).parent / "adapters"

    def nothing_installed():
        assert conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0] == 0
        assert not home_adapters.exists() or not any(home_adapters.iterdir())

    with pytest.raises(InputError, match="sha256"):
        client.pull(home, pid, "bob", base="tiny")
    nothing_installed()
    # a server that also lies about the digest: the manifest's own digests still refuse it
    new_sha = hashlib.sha256(bytes(data)).hexdigest()
    blob.rename(root / "blobs" / new_sha)
    with sqlite3.connect(root / "catalog.db") as db:
        db.execute("UPDATE files SET sha256=? WHERE sha256=?", (new_sha, sha))
    with pytest.raises(InputError, match="does not match the manifest"):
        client.pull(home, pid, "bob", base="tiny")
    nothing_installed()
    with pytest.raises(IdiolectError, match="unknown user"):
        client.pull(home, pid, "nobody", base="tiny")


class Recorder:
    """ASGI wrapper keeping every request's method, path, query, headers and body bytes."""

    def __init__(self, app):
        self.app, self.requests = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rec = {"method": scope["method"], "path": scope["path"], "query": scope["query_string"],
               "headers": b"\n".join(k + b": " + v for k, v in scope["headers"]), "body": b""}
        self.requests.append(rec)

        async def recv():
            msg = await receive()
            if msg["type"] == "http.request":
                rec["body"] += msg.get("body", b"")
            return msg

        await self.app(scope, recv, send)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture
def one_thread():
    """Torch on one thread for this test (a shared 2-core machine thrashes with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_selection_sends_the_card_only_never_text(tmp_path, tiny_base, cli_run, one_thread):
    from idiolect.catalog.warm_start import card_for_user
    from idiolect.cli import cli
    from idiolect.commands.catalog import catalog
    from conftest import open_home
    from idiolect.vault import store

    if "catalog" not in cli.commands:
        cli.add_command(catalog)
    src = write_jsonl(tmp_path / "ada.jsonl", synthetic_messages("ada", 40, style="shout"))
    assert cli_run("user", "import", "ada", src).exit_code == 0
    assert cli_run("user", "freeze-eval", "ada", "--size", "8").exit_code == 0
    recorder = Recorder(create_app(tmp_path / "server", TOKEN))
    url, stop = serve_in_thread(recorder)
    try:
        home = open_home()
        conn = home.conn
        digest = _tiny_digest()
        CatalogClient(url, TOKEN).publish(fake_adapter(tmp_path / "pub", digest),
                                          card_for_user(home, "ada", "tiny", limit=16,
                                                        embedder="hash"))
        recorder.requests.clear()
        r = cli_run("catalog", "select", "ada", "--base", "tiny", "--url", url,
                    "--texts", 16, "--embedder", "hash", "--json")
        assert r.exit_code == 0, r.stderr
        assert len(json.loads(r.stdout)["matches"]) == 1
    finally:
        stop()
    assert [(q["method"], q["path"]) for q in recorder.requests] == [("POST", "/match")]
    sent = recorder.requests[0]
    card = json.loads(sent["body"])
    assert set(card) == set(Card().to_dict()) and card["base_digest"] == digest
    wire = b"\n".join([sent["path"].encode(), sent["query"], sent["headers"], sent["body"]])
    wire_words = _words(wire.decode())
    wire_grams = {tuple(wire_words[i:i + 8]) for i in range(len(wire_words) - 7)}
    for m in store.all_messages(conn, "ada"):
        assert m.body not in wire.decode()
        w = _words(m.body)
        assert not wire_grams & {tuple(w[i:i + 8]) for i in range(len(w) - 7)}, m.body


# ----------------------------------------------------------------------------- hostile JSON (#20)
DEEP = b"[" * 200_000 + b"]" * 200_000   # 400 KB: under every size limit, past any recursion


def _one_line_400(r, *words: str) -> str:
    assert r.status_code == 400, (r.status_code, r.text[:200])
    detail = r.json()["detail"]
    assert "\n" not in detail and "Recursion" not in detail
    for w in words:
        assert w in detail
    return detail


def test_deeply_nested_json_is_a_clean_400_everywhere(api, upload):
    """TestClient raises the server's own exceptions: a RecursionError fails the test itself."""
    _one_line_400(api.post("/match", content=DEEP), "request body", "nested deeper than 64")
    _one_line_400(api.post("/adapters", content=DEEP, headers=AUTH), "request body", "nested")
    r = api.post("/adapters", json=body_of(upload | {"card.json": DEEP}), headers=AUTH)
    _one_line_400(r, "card.json", "nested deeper than 64")
    deep_object = b'{"a":' * 100 + b"1" + b"}" * 100
    r = api.post("/adapters", json=body_of(upload | {"manifest.json": deep_object}), headers=AUTH)
    _one_line_400(r, "manifest.json", "nested")
    header = b'{"x":' + DEEP + b"}"
    weights = len(header).to_bytes(8, "little") + header
    r = api.post("/adapters", json=body_of(upload | {"adapter_model.safetensors": weights}),
                 headers=AUTH)
    _one_line_400(r, "adapter_model.safetensors", "nested")
    assert api.get("/adapters").json() == []
    # at the limit it is an ordinary JSON (refused for what it is, not for its depth)
    r = api.post("/match", content=b"[" * 64 + b"]" * 64)
    assert "nested" not in _one_line_400(r, "a card is a JSON object")


def test_match_validates_the_card_in_the_apis_words(api):
    card = style_card("plain", OTHER_DIGEST).to_dict()
    for version in ("abc", 1.5, None, True, [1]):
        r = api.post("/match", json=card | {"schema_version": version})
        detail = _one_line_400(r, "match body", "schema_version must be an integer")
        assert "invalid literal" not in detail and "int()" not in detail
    _one_line_400(api.post("/match", json=card | {"schema_version": 99}), "newer")
    huge = json.dumps(card | {"style": {"shouting": 10 ** 400}})
    _one_line_400(api.post("/match", content=huge), "match body", "invalid card")
    assert api.post("/match", json=card).status_code == 200


def test_card_from_dict_refuses_bad_versions_and_huge_numbers_as_input_errors():
    card = style_card("plain", OTHER_DIGEST).to_dict()
    with pytest.raises(InputError, match="schema_version must be an integer"):
        Card.from_dict(card | {"schema_version": "abc"})
    with pytest.raises(InputError, match="invalid card"):
        Card.from_dict(card | {"style": {"shouting": 10 ** 400}})
    assert Card.from_dict(card).to_dict() == card


def test_openapi_documents_bodies_refusals_and_downloads(api):
    """Found by tests/reliability/test_catalog_fuzz.py (runs without schemathesis too): the
    refusals were undocumented status codes, /match and publish had no request body, and a
    download's application/octet-stream was an undocumented content type."""
    paths = api.get("/openapi.json").json()["paths"]
    documented = {(path, method): set(op["responses"]) for path, ops in paths.items()
                  for method, op in ops.items()}
    assert {"201", "400", "401", "403", "409", "413"} <= documented[("/adapters", "post")]
    assert {"200", "404"} <= documented[("/adapters/{adapter_id}", "get")]
    assert {"200", "400", "413"} <= documented[("/match", "post")]
    download = paths["/adapters/{adapter_id}/files/{name}"]["get"]["responses"]
    assert {"400", "404"} <= set(download) and "X-Sha256" in download["200"]["headers"]
    assert {"application/octet-stream", "application/json"} <= set(download["200"]["content"])
    for path in ("/adapters", "/match"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == (["files"] if path == "/adapters" else ["base_digest"])
    assert paths["/adapters"]["post"]["security"] == [{"HTTPBearer": []}]
