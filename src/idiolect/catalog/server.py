"""The catalog server: adapters + cards over HTTP (FastAPI), metadata in SQLite, files as blobs.

Root layout::

    catalog.db        adapters (id, base, card, manifest, recipe), files (name, sha256, size)
    blobs/SHA256      every accepted file, content-addressed

Endpoints (OpenAPI at /docs and /openapi.json):
    GET  /healthz                        liveness and the number of adapters
    POST /adapters                       publish (bearer token): {"files": {name: {sha256, data}}}
                                         with data base64; exactly the four protocol.ALLOWED
    GET  /adapters[?base_digest=]        list
    GET  /adapters/{id}                  one adapter's metadata
    POST /match[?limit=]                 body: a card, nothing else; ranked adapters of its base
    GET  /adapters/{id}/files/{name}     download (X-Sha256 header)

Only safetensors + JSON are accepted: pickle formats (.bin/.pt/.pkl), path separators and '..'
are refused by name, the safetensors header is parsed and must hold only LoRA tensors, every
sha256 is recomputed, and the manifest's own file digests must match what was uploaded. Every
JSON (request bodies, the uploaded files, the safetensors header) nests at most
``protocol.MAX_JSON_DEPTH`` deep, checked before it is parsed. Cards are ranked by ``match``.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request class of create_app.

import base64
import binascii
import hashlib
import hmac
import json
import re
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import lora
from ..errors import InputError
from ..manifest import ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS, MANIFEST
from . import protocol
from .card import Card
from .match import rank
from .protocol import ALLOWED, CARD_FILE, ID_RE, TOKEN_ENV

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Limits:
    safetensors_bytes: int = 64 << 20   # the adapter's weights (ADAPTER_WEIGHTS)
    json_bytes: int = 1 << 20           # each JSON file, and a /match body

    @property
    def publish_body(self) -> int:      # base64 (4/3) of all four files plus JSON framing
        return (self.safetensors_bytes + 3 * self.json_bytes) * 4 // 3 + 65536


class Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def check_name(name: str) -> None:
    """Refuse any file name but the four ALLOWED, saying why."""
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise Refused(400, f"refused file name {name!r}: no path separators or '..'")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise Refused(400, f"refused {name!r}: pickle-based formats are never accepted"
                           " (safetensors + JSON only)")
    if name not in ALLOWED:
        raise Refused(400, f"refused {name!r}: only {', '.join(ALLOWED)} are accepted")


def check_safetensors(data: bytes) -> None:
    """Parse the header (no tensor is loaded): offsets in bounds, LoRA A/B tensors only."""
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > len(data) - 8:
            raise ValueError("header length out of bounds")
        header = protocol.loads(data[8:8 + n], "header")
        size = len(data) - 8 - n
        for key, t in header.items():
            if key == "__metadata__":
                continue
            lo, hi = t["data_offsets"]
            if not (0 <= lo <= hi <= size) or not isinstance(t["shape"], list):
                raise ValueError(f"tensor {key!r} out of bounds")
            if lora.split(key) is None:
                raise ValueError(f"tensor {key!r} is not a LoRA A/B matrix")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise Refused(400, f"{ADAPTER_WEIGHTS}: not a LoRA safetensors file ({e})") from None


class CatalogStore:
    """SQLite metadata + content-addressed blobs under ``root``. One connection per call."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS adapters (
            id TEXT PRIMARY KEY, base_name TEXT NOT NULL, base_digest TEXT NOT NULL,
            card TEXT NOT NULL, manifest TEXT NOT NULL, recipe TEXT NOT NULL,
            published_at TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS adapters_base ON adapters(base_digest);
        CREATE TABLE IF NOT EXISTS files (
            adapter TEXT NOT NULL REFERENCES adapters(id), name TEXT NOT NULL,
            sha256 TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (adapter, name));
        PRAGMA user_version = 1;
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(self.SCHEMA)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.root / "catalog.db", timeout=30.0)
        conn.row_factory = sqlite3.Row
        try:
            with conn:  # commit, or roll back on an exception
                yield conn
        finally:
            conn.close()

    def blob(self, sha: str) -> Path:
        return self.root / "blobs" / sha

    def add(self, adapter_id: str, files: dict[str, bytes], manifest: dict, card: Card) -> dict:
        from ..home import atomic_write_bytes

        digests = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
        if self.get(adapter_id) is not None:
            raise Refused(409, f"adapter {adapter_id} is already published")
        for name, data in files.items():
            if not self.blob(digests[name]).exists():
                atomic_write_bytes(self.blob(digests[name]), data)
        try:
            self._insert(adapter_id, files, digests, manifest, card)
        except sqlite3.IntegrityError:  # a concurrent publish of the same id won
            if self.get(adapter_id) is None:  # any other constraint is a bug, not a conflict
                raise
            raise Refused(409, f"adapter {adapter_id} is already published") from None
        return self.get(adapter_id)

    def _insert(self, adapter_id, files, digests, manifest, card) -> None:
        from ..home import utcnow

        recipe = wire_recipe(manifest)
        with self._conn() as c:
            c.execute("INSERT INTO adapters VALUES (?,?,?,?,?,?,?)",
                      (adapter_id, manifest["base"].get("name", ""), card.base_digest,
                       card.to_json(), json.dumps(manifest), json.dumps(recipe), utcnow()))
            c.executemany("INSERT INTO files VALUES (?,?,?,?)",
                          [(adapter_id, n, digests[n], len(files[n])) for n in files])

    def _entry(self, c: sqlite3.Connection, row: sqlite3.Row) -> dict:
        files = {r["name"]: {"sha256": r["sha256"], "size": r["size"]} for r in c.execute(
            "SELECT name, sha256, size FROM files WHERE adapter=?", (row["id"],))}
        card = json.loads(row["card"])
        return {"id": row["id"], "base": {"name": row["base_name"], "digest": row["base_digest"]},
                "published_at": row["published_at"],
                "recipe": wire_recipe(json.loads(row["manifest"])),
                "summary": card["summary"], "style": card["style"], "keywords": card["keywords"],
                "n_texts": card["n_texts"], "card_source": card["source"], "files": files}

    def get(self, adapter_id: str) -> dict | None:
        with self._conn() as c:
            row = c.execute("SELECT * FROM adapters WHERE id=?", (adapter_id,)).fetchone()
            return None if row is None else self._entry(c, row)

    def entries(self, base_digest: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM adapters", ()
        if base_digest:
            sql, args = sql + " WHERE base_digest=?", (base_digest,)
        with self._conn() as c:
            return [self._entry(c, r) for r in c.execute(sql + " ORDER BY id", args)]

    def cards(self, base_digest: str) -> list[dict]:
        with self._conn() as c:
            return [{"id": r["id"], "recipe": wire_recipe(json.loads(r["manifest"])),
                     "card": Card.from_dict(json.loads(r["card"]))}
                    for r in c.execute("SELECT id, manifest, card FROM adapters WHERE"
                                       " base_digest=? ORDER BY id", (base_digest,))]


def wire_recipe(manifest: dict) -> dict:
    """What an entry and a match tell of an adapter's recipe: its LoRA's shape and the format
    of the prompts it was trained on (shots), read from its manifest (rows published before
    the format was told get it too); a shots field that is not a whole number counts as none."""
    from ..compile.recipe import prompt_format

    r = manifest.get("recipe") or {}
    whole = {k: r[k] for k in ("shots", "shot_tokens")
             if isinstance(r.get(k), int) and not isinstance(r.get(k), bool)}
    return ({k: r.get(k) for k in ("rank", "alpha", "target_modules", "lora_layers")}
            | prompt_format(whole))


def validate_publish(body: dict, limits: Limits) -> tuple[str, dict[str, bytes], dict, Card]:
    """(adapter id, files, manifest, card) of a publish request, or Refused."""
    files_in = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files_in, dict):
        raise Refused(400, 'body must be {"files": {name: {"sha256": ..., "data": base64}}}')
    for name in files_in:
        check_name(name)
    missing = [n for n in ALLOWED if n not in files_in]
    if missing:
        raise Refused(400, f"missing files: {', '.join(missing)}")
    files: dict[str, bytes] = {}
    for name, item in files_in.items():
        cap = limits.safetensors_bytes if name.endswith(".safetensors") else limits.json_bytes
        data_b64 = item.get("data") if isinstance(item, dict) else None
        if not isinstance(data_b64, str):
            raise Refused(400, f"{name}: data must be a base64 string")
        if len(data_b64) * 3 // 4 > cap + 3:
            raise Refused(413, f"{name}: larger than the {cap} bytes limit")
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(400, f"{name}: data is not valid base64") from None
        if len(data) > cap:
            raise Refused(413, f"{name}: {len(data)} bytes, over the {cap} bytes limit")
        if hashlib.sha256(data).hexdigest() != item.get("sha256"):
            raise Refused(400, f"{name}: sha256 does not match the data sent")
        files[name] = data
    check_safetensors(files[ADAPTER_WEIGHTS])
    parsed = {}
    for name in (ADAPTER_CONFIG, MANIFEST, CARD_FILE):
        try:
            parsed[name] = protocol.loads(files[name], name)
        except protocol.TooDeep as e:
            raise Refused(400, str(e)) from None
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, f"{name}: not JSON") from None
        if not isinstance(parsed[name], dict):
            raise Refused(400, f"{name}: must be a JSON object")
    manifest = parsed[MANIFEST]
    adapter_id = str(manifest.get("id", ""))
    if not ID_RE.fullmatch(adapter_id):
        raise Refused(400, f"{MANIFEST}: id {adapter_id!r} is not an adapter id (ULID)")
    for key in ("base", "recipe", "files"):
        if not isinstance(manifest.get(key), dict):
            raise Refused(400, f"{MANIFEST}: {key!r} must be a JSON object")
    base_name = manifest["base"].get("name", "")
    if not isinstance(base_name, str) or len(base_name) > 200:
        raise Refused(400, f"{MANIFEST}: base name must be a string of at most 200 characters")
    fp = manifest["base"].get("fingerprint")
    digest = fp.get("digest", "") if isinstance(fp, dict) else ""
    if not HEX64.fullmatch(str(digest)):
        raise Refused(400, f"{MANIFEST}: no base fingerprint digest")
    for name in ADAPTER_FILES:
        if manifest["files"].get(name) != hashlib.sha256(files[name]).hexdigest():
            raise Refused(400, f"{name}: sha256 does not match {MANIFEST}")
    try:
        card = Card.from_dict(parsed[CARD_FILE], source=CARD_FILE)
    except Exception as e:  # noqa: BLE001 - any invalid card is the client's error
        raise Refused(400, str(e)) from None
    if card.base_digest != digest:
        raise Refused(400, f"{CARD_FILE}: base digest differs from the manifest's")
    return adapter_id, files, manifest, card


HEX64_PATTERN = "^[0-9a-f]{64}$"
_STYLE = {"type": "object", "maxProperties": 64,
          "additionalProperties": {"type": "number"}, "propertyNames": {"maxLength": 40}}
# What a /match body is (Card.from_dict): documented so that clients (and fuzzers) see the card.
CARD_SCHEMA = {
    "type": "object", "title": "Card", "required": ["base_digest"],
    "description": "A card (idiolect.catalog.card.Card); unknown keys are ignored.",
    "properties": {
        "base_digest": {"type": "string", "pattern": HEX64_PATTERN},
        "base_name": {"type": "string", "maxLength": 80},
        "source": {"type": "string", "maxLength": 80},
        "n_texts": {"type": "integer", "minimum": 0},
        "style": _STYLE, "deltas": _STYLE, "llm_style": _STYLE,
        "summary": {"type": "string", "maxLength": 2000},
        "summarizer": {"type": "string", "maxLength": 80},
        "keywords": {"type": "array", "maxItems": 50, "items": {"type": "string", "maxLength": 40}},
        "embedding": {"type": "array", "maxItems": 4096, "items": {"type": "number"}},
        "embedding_model": {"type": "string", "maxLength": 80},
        "schema_version": {"type": "integer", "maximum": 1}}}
PUBLISH_SCHEMA = {
    "type": "object", "title": "Publish", "required": ["files"],
    "properties": {"files": {
        "type": "object", "required": list(ALLOWED),
        "description": "exactly the four files " + ", ".join(ALLOWED),
        "additionalProperties": {
            "type": "object", "required": ["sha256", "data"],
            "properties": {"sha256": {"type": "string", "pattern": HEX64_PATTERN},
                           "data": {"type": "string", "contentEncoding": "base64"}}}}}}


def _json_body(schema: dict) -> dict:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def _models():
    """Pydantic models of what the routes return: documentation only (the routes return dicts;
    the schema fuzz in tests/reliability/test_catalog_fuzz.py checks that they conform)."""
    from pydantic import BaseModel

    class Problem(BaseModel):
        detail: str

    class Health(BaseModel):
        status: str
        adapters: int
        version: str
        publishing: bool

    class Base(BaseModel):
        name: str
        digest: str

    class FileInfo(BaseModel):
        sha256: str
        size: int

    class Adapter(BaseModel):
        id: str
        base: Base
        published_at: str
        recipe: dict
        summary: str
        style: dict[str, float]
        keywords: list[str]
        n_texts: int
        card_source: str
        files: dict[str, FileInfo]

    class Matches(BaseModel):
        base_digest: str
        matches: list[dict]

    return Problem, Health, Adapter, Matches


def create_app(root: Path, token: str | None = None, limits: Limits | None = None):
    """The FastAPI app. ``token`` None: read-only catalog (publishing refused)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse
    from fastapi.security import HTTPBearer

    from .. import __version__

    limits = limits or Limits()
    store = CatalogStore(root)
    app = FastAPI(title="idiolect catalog", version=__version__,
                  description="Explained LoRA adapters for warm starts (XPerT). The device sends a"
                              " card, never raw text.")
    Problem, Health, Adapter, Matches = _models()
    bearer = HTTPBearer(auto_error=False, description="the catalog's publish token")

    def errors(*codes: int) -> dict:
        """The refusals a route may answer, each {"detail": "why"}, documented in the schema."""
        why = {400: "refused: the reason in the API's words", 401: "no valid bearer token",
               403: "publishing is disabled", 404: "not found", 409: "already published",
               413: "over a size limit"}
        return {c: {"model": Problem, "description": why[c]} for c in codes}

    async def read_body(request: Request, cap: int) -> dict:
        if int(request.headers.get("content-length") or 0) > cap:
            raise HTTPException(413, f"request body over the {cap} bytes limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise HTTPException(413, f"request body over the {cap} bytes limit")
            chunks.append(chunk)
        try:
            return protocol.loads(b"".join(chunks), "request body")
        except protocol.TooDeep as e:
            raise HTTPException(400, str(e)) from None
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(400, "request body is not JSON") from None

    @app.get("/healthz", response_model=None, responses={200: {"model": Health}})
    def healthz() -> dict:
        return {"status": "ok", "adapters": len(store.entries()), "version": __version__,
                "publishing": token is not None}

    @app.post("/adapters", status_code=201, response_model=None,
              responses={201: {"model": Adapter}} | errors(400, 401, 403, 409, 413),
              dependencies=[Depends(bearer)], openapi_extra=_json_body(PUBLISH_SCHEMA))
    async def publish(request: Request) -> dict:
        if token is None:
            raise HTTPException(403, "publishing is disabled: start the server with --token"
                                     f" or {TOKEN_ENV}")
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "publishing needs a valid bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        body = await read_body(request, limits.publish_body)
        try:
            return store.add(*validate_publish(body, limits))
        except Refused as e:
            raise HTTPException(e.status, e.detail) from None

    @app.get("/adapters", response_model=None, responses={200: {"model": list[Adapter]}})
    def list_adapters(base_digest: str | None = None) -> list[dict]:
        return store.entries(base_digest)

    @app.get("/adapters/{adapter_id}", response_model=None,
             responses={200: {"model": Adapter}} | errors(404))
    def get_adapter(adapter_id: str) -> dict:
        entry = store.get(adapter_id) if ID_RE.fullmatch(adapter_id) else None
        if entry is None:
            raise HTTPException(404, f"no adapter {adapter_id!r}")
        return entry

    @app.post("/match", response_model=None, responses={200: {"model": Matches}}
              | errors(400, 413), openapi_extra=_json_body(CARD_SCHEMA))
    async def match(request: Request, limit: int = 10) -> dict:
        body = await read_body(request, limits.json_bytes)
        try:
            card = Card.from_dict(body, source="match body")
        except InputError as e:  # the card's own words: which field, and why
            raise HTTPException(400, str(e)) from None
        except Exception as e:  # noqa: BLE001 - anything else is still the client's card
            raise HTTPException(400, f"match body: not a card ({type(e).__name__})") from None
        ranked = rank(card, store.cards(card.base_digest), limit=max(1, min(limit, 100)))
        return {"base_digest": card.base_digest, "matches": ranked}

    @app.get("/adapters/{adapter_id}/files/{name}", response_class=FileResponse, responses={
        200: {"description": "the file's bytes (JSON files as application/json)",
              "headers": {"X-Sha256": {"schema": {"type": "string", "pattern": HEX64_PATTERN},
                                       "description": "sha256 of the bytes sent"}},
              "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                  "format": "binary"}},
                          "application/json": {}}}} | errors(400, 404))
    def download(adapter_id: str, name: str):
        try:
            check_name(name)
        except Refused as e:
            raise HTTPException(e.status, e.detail) from None
        entry = store.get(adapter_id) if ID_RE.fullmatch(adapter_id) else None
        if entry is None or name not in entry["files"]:
            raise HTTPException(404, f"no file {name!r} for adapter {adapter_id!r}")
        sha = entry["files"][name]["sha256"]
        media = "application/json" if name.endswith(".json") else "application/octet-stream"
        return FileResponse(store.blob(sha), media_type=media,
                            headers={"X-Sha256": sha, "ETag": f'"{sha}"'})

    return app


def resolve_token(token: str | None) -> str | None:
    return protocol.default_token(token)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0):
    """Run ``app`` with uvicorn in a daemon thread; returns (base url, stop function)."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("catalog server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://{host}:{bound}", stop
