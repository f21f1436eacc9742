"""The catalog client: publish, list, match (a card, never text), and pull (digest-checked install).

A pulled adapter is installed in the local home as a *candidate* adapter row of the local user
who asked for it (the adapters.state CHECK allows candidate/active/retired/rejected; a candidate
is never activated or rolled back to by anything but an explicit `promote`). Its folder holds the
publisher's files unchanged plus ``catalog.json`` (where it came from, when, every sha256). Pulling
the same id again returns the installed one after re-verifying its files.

Plain HTTP and files: cards are computed (and published with an adapter) in ``warm_start``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from ..errors import IdiolectError, Incompatible, InputError, NotFound
from ..home import Home
from ..manifest import ADAPTER_CONFIG, ADAPTER_FILES, MANIFEST, Manifest
from .card import Card
from .protocol import ALLOWED, CARD_FILE, ID_RE, PROVENANCE, TOKEN_ENV, default_token, default_url


def public_manifest(manifest: dict) -> dict:
    """What a catalog sees of a manifest: the local user name becomes a pseudonym and the eval
    cohort's user names are dropped. File digests, base fingerprint, recipe, metrics stay."""
    out = json.loads(json.dumps(manifest))
    out["user"] = "anon-" + hashlib.sha256(f"{manifest.get('user')}:{manifest.get('id')}"
                                           .encode()).hexdigest()[:10]
    ev = (out.get("metrics") or {}).get("eval")
    if isinstance(ev, dict):
        ev.pop("cohort", None)
    return out


class CatalogClient:
    """HTTP client of one catalog. ``transport``: an httpx transport (tests, recording)."""

    def __init__(self, url: str | None = None, token: str | None = None, transport=None,
                 timeout: float = 120.0):
        import httpx

        self.url = default_url(url)
        self.token = default_token(token)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def _request(self, method: str, path: str, **kw):
        import httpx

        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise IdiolectError(f"catalog {self.url}: unreachable ({e})") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            cls = NotFound if r.status_code == 404 else IdiolectError
            raise cls(f"catalog {self.url} refused {method} {path} ({r.status_code}): {detail}")
        return r

    def health(self) -> dict:
        return self._request("GET", "/healthz").json()

    def list(self, base_digest: str | None = None) -> list[dict]:
        params = {"base_digest": base_digest} if base_digest else None
        return self._request("GET", "/adapters", params=params).json()

    def get(self, adapter_id: str) -> dict:
        return self._request("GET", f"/adapters/{adapter_id}").json()

    def match(self, card: Card, limit: int = 10) -> list[dict]:
        """Ranked adapters of the card's base. The request body is the card's JSON, nothing else."""
        r = self._request("POST", "/match", params={"limit": limit}, content=card.to_json(),
                          headers={"content-type": "application/json"})
        return r.json()["matches"]

    def publish(self, folder: Path, card: Card) -> dict:
        """Upload an adapter folder (verified against its manifest first) with its card."""
        from .. import adapters

        folder = Path(folder)
        manifest = Manifest.read(folder)
        adapters.verify_files(folder, manifest)
        if not self.token:
            raise IdiolectError(f"publishing needs a token: --token or {TOKEN_ENV}")
        blobs = {n: (folder / n).read_bytes() for n in ADAPTER_FILES}
        blobs[MANIFEST] = json.dumps(public_manifest(manifest.to_dict()), indent=2,
                                     sort_keys=True).encode()
        blobs[CARD_FILE] = card.to_json().encode()
        body = {"files": {n: {"sha256": hashlib.sha256(b).hexdigest(),
                              "data": base64.b64encode(b).decode()} for n, b in blobs.items()}}
        return self._request("POST", "/adapters", json=body,
                             headers={"authorization": f"Bearer {self.token}"}).json()

    def download(self, adapter_id: str, name: str, sha256: str) -> bytes:
        """A file's bytes, refused unless they hash to ``sha256`` (from the listing)."""
        data = self._request("GET", f"/adapters/{adapter_id}/files/{name}").content
        if hashlib.sha256(data).hexdigest() != sha256:
            raise InputError(f"catalog {self.url}: {adapter_id}/{name} does not match its sha256"
                             " (corrupt or tampered): nothing installed")
        return data

    def pull(self, home: Home, adapter_id: str, user: str, base: str | None = None) -> str:
        """Download, verify (every sha256, then the manifest's file digests, then the base
        fingerprint) and install as a candidate adapter of ``user``. Returns the local id.
        Anything that does not match is refused and nothing is installed."""
        from .. import adapters
        from ..bases import load as bases
        from ..home import atomic_write_json, utcnow
        from ..vault import store

        if not ID_RE.fullmatch(adapter_id):
            raise InputError(f"{adapter_id!r} is not an adapter id")
        conn = home.conn
        store.require_user(conn, user)
        entry = self.get(adapter_id)
        ref = bases.resolve(home, base or entry["base"]["name"])
        digest = bases.read_fingerprint(ref)["digest"]
        if digest != entry["base"]["digest"]:
            raise Incompatible(f"catalog adapter {adapter_id} is for base fingerprint"
                               f" {entry['base']['digest'][:12]}, local {ref.name!r} is"
                               f" {digest[:12]}: cannot warm-start from it")
        row = conn.execute("SELECT * FROM adapters WHERE id=?", (adapter_id,)).fetchone()
        if row is not None:
            adapters.verify_files(Path(row["path"]))
            return row["id"]
        if set(entry["files"]) != set(ALLOWED):
            raise InputError(f"catalog adapter {adapter_id}: unexpected file set"
                             f" {sorted(entry['files'])}")
        with adapters.staging(home, adapter_id) as staging:
            for name in ALLOWED:
                (staging / name).write_bytes(
                    self.download(adapter_id, name, entry["files"][name]["sha256"]))
            manifest = self._check_manifest(staging, adapter_id, digest)
            atomic_write_json(staging / PROVENANCE, {
                "url": self.url, "id": adapter_id, "pulled_at": utcnow(), "user": user,
                "files": {n: entry["files"][n]["sha256"] for n in ALLOWED}})
            local = replace(manifest, user=user, base={"name": ref.name,
                                                       "fingerprint": {"digest": digest}},
                            metrics={"catalog": {"url": self.url, "id": adapter_id}})
            try:
                adapters.install(home, staging, local)
            except (OSError, sqlite3.IntegrityError) as e:
                return self._installed_meanwhile(conn, adapter_id, e)
        return adapter_id

    @staticmethod
    def _installed_meanwhile(conn: sqlite3.Connection, adapter_id: str, error: Exception,
                             wait_s: float = 2.0) -> str:
        """After a failed install: the same id installed by another process at the same time
        (two fleet workers pulling one neighbour; its rename won, its row follows within
        milliseconds) is used once verified; otherwise ``error`` stands."""
        from .. import adapters

        deadline = time.monotonic() + wait_s
        while True:
            row = conn.execute("SELECT * FROM adapters WHERE id=?", (adapter_id,)).fetchone()
            if row is not None:
                adapters.verify_files(Path(row["path"]))
                return row["id"]
            if time.monotonic() > deadline:
                raise error
            time.sleep(0.05)

    @staticmethod
    def _check_manifest(folder: Path, adapter_id: str, digest: str) -> Manifest:
        from .. import adapters

        manifest = Manifest.read(folder)
        if manifest.id != adapter_id or set(manifest.files) != set(ADAPTER_FILES):
            raise InputError(f"catalog adapter {adapter_id}: manifest id or file digests missing")
        adapters.verify_files(folder, manifest)
        if manifest.base["fingerprint"].get("digest") != digest:
            raise Incompatible(f"catalog adapter {adapter_id}: manifest base differs")
        if not (manifest.snapshot or {}).get("digest"):
            raise InputError(f"catalog adapter {adapter_id}: manifest has no snapshot digest")
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
        if cfg.get("peft_type") != "LORA" or not isinstance(cfg.get("r"), int):
            raise InputError(f"catalog adapter {adapter_id}: {ADAPTER_CONFIG} is not a LoRA")
        return manifest

