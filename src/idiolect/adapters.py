"""Adapters: the PEFT folder + manifest on disk, their rows in SQLite, and their life cycle.

States: candidate -> active -> retired (or rejected). At most one active adapter per
(user, base), enforced by a unique index; promotion and rollback are single transactions.

Every way an adapter arrives (compile, catalog pull, merge) writes its folder in ``staging`` and
hands it to ``install``: the folder appears in one rename and its row in one transaction, and a
failed row write removes the folder, so a folder never exists without its row.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sqlite3
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import IdiolectError, InputError, NotFound
from .home import atomic_write_json, home_dir, publish_dir, transaction

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MANIFEST_KEYS = {
    "schema_version", "id", "user", "base", "snapshot", "eval_set", "recipe", "parent", "metrics",
    "timings", "tokens", "peak_rss_mb", "packages", "files", "created_at", "run", "warm_start",
}


def adapters_dir() -> Path:
    return home_dir() / "adapters"


def file_digests(folder: Path) -> dict[str, str]:
    out = {}
    for name in ADAPTER_FILES:
        h = hashlib.sha256()
        with (folder / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load a manifest tolerantly: unknown keys dropped with a warning, missing keys defaulted."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not an idiolect adapter (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a manifest is a JSON object")
    version = data.get("schema_version", 1)
    if version > MANIFEST_SCHEMA:
        raise InputError(f"{path}: manifest schema {version} is newer than this idiolect knows")
    unknown = sorted(set(data) - MANIFEST_KEYS)
    if unknown:
        warnings.warn(f"{path}: ignoring unknown manifest keys {unknown}", stacklevel=2)
        data = {k: v for k, v in data.items() if k in MANIFEST_KEYS}
    for key, default in (("parent", None), ("metrics", {}), ("timings", {}), ("tokens", {}),
                         ("files", {}), ("warm_start", None)):
        data.setdefault(key, default)
    return data


def verify_files(folder: Path, manifest: dict | None = None) -> None:
    """Refuse an adapter folder whose files do not match the digests in its manifest."""
    manifest = manifest or read_manifest(folder)
    for name in ADAPTER_FILES:
        if not (folder / name).exists():
            raise InputError(f"{folder}: missing {name}")
    expected = manifest.get("files") or {}
    actual = file_digests(folder)
    for name, digest in expected.items():
        if actual.get(name) != digest:
            raise InputError(f"{folder / name}: sha256 does not match the manifest")


@contextmanager
def staging(adapter_id: str) -> Iterator[Path]:
    """An empty folder beside ``adapters/ID`` to write an adapter into before ``install``.

    Its name is unique per call, so two processes installing the same catalog id never write
    into one folder; it is removed when the block ends (after ``install`` it has been renamed
    away, after a failure it is debris)."""
    path = adapters_dir() / f".{adapter_id}.{secrets.token_hex(4)}.staging"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def install(conn: sqlite3.Connection, staging_dir: Path, manifest: dict,
            activate: bool = False) -> Path:
    """Publish a fully written staging folder as ``adapters/ID`` and record it: all or nothing.

    The folder appears in one rename (never half-written); its row, and the promotion with
    ``activate``, in one transaction. If that transaction fails the published folder is removed,
    so no folder is left without a row. ``manifest`` is what the row records; the folder's own
    manifest.json is the caller's (a pulled adapter keeps the publisher's). Returns the folder.
    """
    missing = [n for n in (*ADAPTER_FILES, MANIFEST) if not (staging_dir / n).is_file()]
    if missing:
        raise InputError(f"{staging_dir}: missing {', '.join(missing)}: nothing installed")
    final = adapters_dir() / manifest["id"]
    publish_dir(staging_dir, final)
    try:
        register(conn, manifest, final, activate=activate)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    return final


def register(conn: sqlite3.Connection, manifest: dict, folder: Path, activate: bool) -> None:
    """Record a written adapter; when ``activate``, it replaces the active one (retired).
    Use ``install`` for a new folder; this is the row alone."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO adapters (id, user, base, base_digest, state, path, parent, snapshot,"
            " created_at, metrics) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (manifest["id"], manifest["user"], manifest["base"]["name"],
             manifest["base"]["fingerprint"]["digest"], "candidate", str(folder),
             manifest.get("parent"), manifest["snapshot"]["digest"], manifest["created_at"],
             json.dumps(manifest.get("metrics", {}))),
        )
        if activate:
            _promote(conn, manifest["id"])


def _promote(conn: sqlite3.Connection, adapter_id: str) -> None:
    row = get(conn, adapter_id)
    conn.execute(
        "UPDATE adapters SET state='retired' WHERE user=? AND base=? AND state='active'",
        (row["user"], row["base"]),
    )
    conn.execute("UPDATE adapters SET state='active' WHERE id=?", (adapter_id,))


def promote(conn: sqlite3.Connection, adapter_id: str) -> None:
    with transaction(conn):
        _promote(conn, adapter_id)


def set_state(conn: sqlite3.Connection, adapter_id: str, state: str) -> None:
    with transaction(conn):
        conn.execute("UPDATE adapters SET state=? WHERE id=?", (state, adapter_id))


def rollback(conn: sqlite3.Connection, user: str, base: str) -> dict:
    """Re-activate the most recent retired adapter of (user, base); the current one is retired."""
    with transaction(conn):
        cur = conn.execute(
            "SELECT id FROM adapters WHERE user=? AND base=? AND state='active'", (user, base)
        ).fetchone()
        prev = conn.execute(
            "SELECT id FROM adapters WHERE user=? AND base=? AND state='retired'"
            " ORDER BY created_at DESC, id DESC LIMIT 1", (user, base)
        ).fetchone()
        if prev is None:
            raise IdiolectError(f"no retired adapter of {user!r} on {base!r} to roll back to")
        if cur:
            conn.execute("UPDATE adapters SET state='retired' WHERE id=?", (cur["id"],))
        conn.execute("UPDATE adapters SET state='active' WHERE id=?", (prev["id"],))
    return {"active": prev["id"], "retired": cur["id"] if cur else None}


def get(conn: sqlite3.Connection, adapter_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM adapters WHERE id=?", (adapter_id,)).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT * FROM adapters WHERE id LIKE ? || '%'", (adapter_id.upper(),)
        ).fetchall()
        if len(row) != 1:
            raise NotFound(f"unknown adapter {adapter_id!r} (see `idiolect adapter list`)")
        row = row[0]
    return row


def active(conn: sqlite3.Connection, user: str, base: str) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT * FROM adapters WHERE user=? AND base=? AND state='active'", (user, base)
    ).fetchone()


def require_active(conn: sqlite3.Connection, user: str, base: str) -> sqlite3.Row:
    row = active(conn, user, base)
    if row is None:
        raise NotFound(f"user {user!r} has no active adapter on base {base!r}: run"
                       f" `idiolect compile {user} --base {base}` first")
    return row


def list_adapters(conn: sqlite3.Connection, user: str | None = None) -> list[dict]:
    sql = "SELECT id, user, base, state, parent, created_at, path FROM adapters"
    args: tuple = ()
    if user:
        sql, args = sql + " WHERE user=?", (user,)
    return [dict(r) for r in conn.execute(sql + " ORDER BY created_at, id", args)]


def update_metrics(conn: sqlite3.Connection, adapter_id: str, metrics: dict) -> None:
    """Store scores with the adapter (DB row and manifest)."""
    row = get(conn, adapter_id)
    folder = Path(row["path"])
    manifest = read_manifest(folder)
    manifest["metrics"] = {**manifest.get("metrics", {}), **metrics}
    atomic_write_json(folder / MANIFEST, manifest)
    with transaction(conn):
        conn.execute("UPDATE adapters SET metrics=? WHERE id=?",
                     (json.dumps(manifest["metrics"]), row["id"]))
