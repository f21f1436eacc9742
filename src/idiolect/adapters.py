"""Adapters: the PEFT folder + manifest on disk, their rows in SQLite, and their life cycle.

States: candidate -> active -> retired (or rejected). At most one active adapter per
(user, base), enforced by a unique index; promotion and rollback are single transactions. A
candidate becomes active only through the build pipeline's gate (``pipeline.py``, which calls
``decide``); ``rollback`` re-activates a retired adapter that once passed it.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import IdiolectError, InputError, NotFound
from .home import Home, publish_dir, transaction
from .manifest import ADAPTER_FILES, MANIFEST, Manifest

__all__ = ["ADAPTER_FILES", "MANIFEST", "Manifest", "install", "staging", "get", "active",
           "require_active", "list_adapters", "rollback", "update_metrics", "decide",
           "verify_files", "file_digests"]


def file_digests(folder: Path) -> dict[str, str]:
    out = {}
    for name in ADAPTER_FILES:
        h = hashlib.sha256()
        with (folder / name).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def verify_files(folder: Path, manifest: Manifest | None = None) -> None:
    """Refuse an adapter folder whose files do not match the digests in its manifest."""
    manifest = manifest or Manifest.read(folder)
    for name in ADAPTER_FILES:
        if not (folder / name).exists():
            raise InputError(f"{folder}: missing {name}")
    actual = file_digests(folder)
    for name, digest in manifest.files.items():
        if actual.get(name) != digest:
            raise InputError(f"{folder / name}: sha256 does not match the manifest")


@contextmanager
def staging(home: Home, adapter_id: str) -> Iterator[Path]:
    """An empty folder beside ``adapters/ID`` to write an adapter into before ``install``.

    Its name is unique per call, so two processes installing the same catalog id never write
    into one folder; it is removed when the block ends (after ``install`` it has been renamed
    away, after a failure it is debris)."""
    path = home.adapters_dir / f".{adapter_id}.{secrets.token_hex(4)}.staging"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def install(home: Home, staging_dir: Path, manifest: Manifest) -> Path:
    """Publish a fully written staging folder as ``adapters/ID`` and record it: all or nothing.

    The folder appears in one rename (never half-written), its row (a candidate) in one
    transaction. If that transaction fails the published folder is removed, so no folder is left
    without a row. ``manifest`` is what the row records; the folder's own
    manifest.json is the caller's (a pulled adapter keeps the publisher's). Returns the folder.
    """
    missing = [n for n in (*ADAPTER_FILES, MANIFEST) if not (staging_dir / n).is_file()]
    if missing:
        raise InputError(f"{staging_dir}: missing {', '.join(missing)}: nothing installed")
    final = home.adapters_dir / manifest.id
    publish_dir(staging_dir, final)
    try:
        register(home.conn, manifest, final)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    return final


def register(conn: sqlite3.Connection, manifest: Manifest, folder: Path) -> None:
    """Record a written adapter as a candidate. Use ``install`` for a new folder; this is the
    row alone. Only the build pipeline's gate (``decide``) makes a candidate active."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO adapters (id, user, base, base_digest, state, path, parent, snapshot,"
            " created_at, metrics) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (manifest.id, manifest.user, manifest.base_name, manifest.base_digest, "candidate",
             str(folder), manifest.parent, manifest.snapshot["digest"], manifest.created_at,
             json.dumps(manifest.metrics)),
        )


def discard(home: Home, adapter_id: str) -> None:
    """Remove an adapter nothing came of: a candidate that no gate has judged and no adapter
    starts from (a catalog neighbour pulled only to be probed). Its row goes first, in one
    transaction that checks all that, then its folder."""
    conn = home.conn
    with transaction(conn):
        row = get(conn, adapter_id)
        if row["state"] != "candidate" or row["gate"]:
            raise IdiolectError(f"adapter {row['id']} is {row['state']}"
                                f"{' and was judged' if row['gate'] else ''}: kept")
        if conn.execute("SELECT 1 FROM adapters WHERE parent=?", (row["id"],)).fetchone():
            raise IdiolectError(f"adapter {row['id']} is the parent of another adapter: kept")
        conn.execute("DELETE FROM adapters WHERE id=?", (row["id"],))
    shutil.rmtree(row["path"], ignore_errors=True)


def _promote(conn: sqlite3.Connection, adapter_id: str) -> None:
    row = get(conn, adapter_id)
    conn.execute(
        "UPDATE adapters SET state='retired' WHERE user=? AND base=? AND state='active'",
        (row["user"], row["base"]),
    )
    conn.execute("UPDATE adapters SET state='active' WHERE id=?", (adapter_id,))


def rollback(conn: sqlite3.Connection, user: str, base: str) -> dict:
    """Re-activate the most recent retired adapter of (user, base); the current one is retired."""
    with transaction(conn):
        cur = conn.execute(
            "SELECT id FROM adapters WHERE user=? AND base=? AND state='active'", (user, base)
        ).fetchone()
        prev = conn.execute(
            "SELECT id FROM adapters WHERE user=? AND base=? AND state='retired'"
            " ORDER BY created_at DESC, rowid DESC LIMIT 1", (user, base)
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
    """Adapters (oldest first) with their state and whether the gate's decision was forced."""
    sql = "SELECT id, user, base, state, parent, created_at, path, gate FROM adapters"
    args: tuple = ()
    if user:
        sql, args = sql + " WHERE user=?", (user,)
    out = []
    for r in conn.execute(sql + " ORDER BY created_at, id", args):
        d = dict(r)
        gate = json.loads(d.pop("gate") or "null") or {}
        out.append(d | {"forced": bool(gate.get("forced"))})
    return out


def update_metrics(conn: sqlite3.Connection, adapter_id: str, metrics: dict) -> None:
    """Store scores with the adapter (DB row and manifest)."""
    row = get(conn, adapter_id)
    folder = Path(row["path"])
    manifest = Manifest.read(folder)
    manifest.metrics = {**manifest.metrics, **metrics}
    with transaction(conn):  # the row first: a failed write leaves the manifest as it was
        conn.execute("UPDATE adapters SET metrics=? WHERE id=?",
                     (json.dumps(manifest.metrics), row["id"]))
    manifest.write(folder)


_UNCHECKED = object()


def decide(conn: sqlite3.Connection, adapter_id: str, state: str, record: dict,
           expect_active: object = _UNCHECKED) -> None:
    """Record a gate decision (the row's ``gate``, then the manifest's) and set the state it led
    to: ``active`` (the previous active adapter of that user and base retired, in the same
    transaction), ``rejected`` or ``candidate``. Only the build pipeline calls this.

    Checked again inside the transaction, so two decisions racing cannot both win: the adapter
    must still be a candidate or rejected, and with ``expect_active`` (the id the gate compared
    against, or None) the user's active adapter must still be that one."""
    if state not in ("active", "rejected", "candidate"):
        raise ValueError(f"a gate decision leads to active, rejected or candidate, not {state!r}")
    with transaction(conn):
        row = get(conn, adapter_id)
        if row["state"] not in ("candidate", "rejected"):
            raise IdiolectError(f"adapter {row['id']} became {row['state']} meanwhile: nothing"
                                " changed")
        if state == "active" and expect_active is not _UNCHECKED:
            now = active(conn, row["user"], row["base"])
            if (now["id"] if now else None) != expect_active:
                raise IdiolectError(
                    f"another adapter of {row['user']!r} on {row['base']!r} became active while"
                    f" {row['id']} was evaluated: nothing changed; promote it again")
        conn.execute("UPDATE adapters SET gate=? WHERE id=?", (json.dumps(record), row["id"]))
        if state == "active":
            _promote(conn, row["id"])
        else:
            conn.execute("UPDATE adapters SET state=? WHERE id=?", (state, row["id"]))
    folder = Path(row["path"])
    manifest = Manifest.read(folder)
    manifest.gate = record
    manifest.write(folder)
