"""The state directory: one SQLite database (WAL) with numbered migrations, plus files.

A ``Home`` (its root, its open connection and the folders under it) is made once at the edge (the
CLI, a bench, a test) and passed down; nothing below the CLI reads ``IDIOLECT_HOME``. Layout::

    idiolect.db          users, messages, eval sets, adapters, runs, transports
    bases/NAME/          dequantized base weights cached as safetensors
    adapters/ID/         PEFT folder + manifest.json
    runs/ID/             compile checkpoints (for --resume)
    .live                lock file: every open connection holds a shared lock on it

Crash recovery: a process killed with ``kill -9`` can leave a staging folder under ``adapters/``
(written, not yet renamed), a published folder whose row was never written, temp files of atomic
writes, and runs or fleet runs marked ``running``. ``connect`` cleans these up, but only when it
can take the ``.live`` lock exclusively, i.e. when no other connection to this home is open in
any process: then nothing still being written can be mistaken for debris (``recover``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

DB_NAME = "idiolect.db"

# Append-only: never edit a migration that has shipped, add a new one.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_initial",
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            addresses TEXT NOT NULL DEFAULT '[]'
        );
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users(name),
            digest TEXT NOT NULL,
            source_id TEXT,
            date TEXT,
            subject TEXT NOT NULL,
            recipients TEXT NOT NULL DEFAULT '[]',
            body TEXT NOT NULL,
            source TEXT NOT NULL,
            imported_at TEXT NOT NULL,
            UNIQUE (user, digest)
        );
        CREATE INDEX messages_user ON messages(user, date);
        CREATE TABLE imports (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            source TEXT NOT NULL,
            format TEXT NOT NULL,
            read INTEGER NOT NULL,
            added INTEGER NOT NULL,
            duplicates INTEGER NOT NULL,
            at TEXT NOT NULL
        );
        CREATE TABLE eval_sets (
            user TEXT PRIMARY KEY REFERENCES users(name),
            created_at TEXT NOT NULL,
            seed INTEGER NOT NULL,
            size INTEGER NOT NULL,
            digest TEXT NOT NULL,
            message_ids TEXT NOT NULL
        );
        CREATE TABLE local_bases (
            name TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            added_at TEXT NOT NULL
        );
        CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users(name),
            base TEXT NOT NULL,
            base_digest TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('candidate', 'active', 'retired', 'rejected')),
            path TEXT NOT NULL,
            parent TEXT,
            snapshot TEXT NOT NULL,
            created_at TEXT NOT NULL,
            metrics TEXT NOT NULL DEFAULT '{}'
        );
        CREATE UNIQUE INDEX one_active_adapter ON adapters(user, base) WHERE state = 'active';
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            base TEXT NOT NULL,
            status TEXT NOT NULL,
            config TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            adapter TEXT
        );
        """,
    ),
    (
        "002_transports",
        """
        CREATE TABLE transports (
            id TEXT PRIMARY KEY,
            adapter TEXT NOT NULL,
            user TEXT NOT NULL,
            from_base TEXT NOT NULL,
            to_base TEXT NOT NULL,
            from_digest TEXT NOT NULL,
            to_digest TEXT NOT NULL,
            verdict TEXT NOT NULL
                CHECK (verdict IN ('compatible', 'incompatible', 'loadable-other-weights')),
            message TEXT NOT NULL,
            report TEXT NOT NULL,
            loaded INTEGER,
            load_error TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX transports_adapter ON transports(adapter, to_base, created_at);
        """,
    ),
    (
        "003_fleet",
        """
        CREATE TABLE fleets (
            id TEXT PRIMARY KEY,
            to_base TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'interrupted', 'partial', 'done')),
            config TEXT NOT NULL,
            summary TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE fleet_users (
            fleet TEXT NOT NULL REFERENCES fleets(id),
            user TEXT NOT NULL,
            old_adapter TEXT NOT NULL,
            old_base TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'running', 'promoted', 'rejected', 'failed')),
            transport TEXT,
            candidate TEXT,
            reason TEXT,
            result TEXT NOT NULL DEFAULT '{}',
            started_at TEXT,
            finished_at TEXT,
            PRIMARY KEY (fleet, user)
        );
        CREATE INDEX fleet_users_done ON fleet_users(user, old_adapter, status);
        """,
    ),
    (
        "004_gate",
        """
        ALTER TABLE adapters ADD COLUMN gate TEXT;
        """,
    ),
    (
        "005_reference_split",
        """
        ALTER TABLE eval_sets ADD COLUMN reference_ids TEXT;
        ALTER TABLE eval_sets ADD COLUMN reference_digest TEXT;
        ALTER TABLE eval_sets ADD COLUMN reference_at TEXT;
        """,
    ),
]


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, sortable by time."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


LIVE_FILE = ".live"
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_STAGING_SUFFIXES = (".staging", ".pull", ".tmp")


class HomeConnection(sqlite3.Connection):
    """A connection to a home's database that holds a shared lock on the home's ``.live`` file
    while it is open: other processes can tell that this one may be writing into the home."""

    _live_fd: int | None = None

    def close(self) -> None:
        self._release_live()
        super().close()

    def __del__(self) -> None:
        self._release_live()

    def _release_live(self) -> None:
        fd, self._live_fd = self._live_fd, None
        if fd is not None:
            try:
                os.close(fd)  # releases the lock
            except OSError:
                pass


def _lock_live(home: Path) -> tuple[int | None, bool]:
    """Open ``home/.live`` and lock it exclusively if no one else holds it (then ``alone``),
    else shared. Returns (fd, alone); (None, False) where locks are unavailable."""
    try:
        import fcntl
    except ImportError:  # not POSIX: never recover automatically
        return None, False
    fd = os.open(home / LIVE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, True
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a lone process runs ``recover``
        return fd, False
    except OSError:
        os.close(fd)
        return None, False


class Home:
    """One state directory: its ``root``, one open connection to its database (``conn``) and the
    folders under it. Library code takes a ``Home`` wherever it reads or writes files, and a plain
    connection where it only queries the database (vault, fleet records, adapter rows)."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn

    @classmethod
    def open(cls, root: str | Path, create: bool = True) -> "Home":
        """Open (and create) the home at ``root``: its database migrated, debris recovered.

        With ``create=False`` (read-only commands) a home that does not exist yet is not
        created: it reads as an empty one (an in-memory database with the same schema)."""
        root = Path(root).expanduser().resolve()
        if not create and not (root / DB_NAME).exists():
            conn = sqlite3.connect(":memory:", isolation_level=None, factory=HomeConnection)
            conn.row_factory = sqlite3.Row
            migrate(conn)
            return cls(root, conn)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, connect(root))

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def bases_dir(self) -> Path:
        return self.root / "bases"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        """Derived files (bare-base generations, cohort models): safe to delete."""
        d = self.root / "cache"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Home":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Home({str(self.root)!r})"


def connect(home: Path) -> sqlite3.Connection:
    """Open the database of the home at ``home`` (WAL, busy timeout) and apply pending
    migrations. When no other connection to this home is open anywhere, first clean up after
    killed processes (``recover``). Use ``Home.open`` unless a bare connection is all you need."""
    home = Path(home)
    conn = sqlite3.connect(home / DB_NAME, timeout=30.0, isolation_level=None,
                           factory=HomeConnection)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    fd, alone = _lock_live(home)
    conn._live_fd = fd
    try:
        # After the .live lock: on a new database, two processes switching it to WAL at once
        # deadlock (each holds SHARED, each wants EXCLUSIVE) and SQLite answers one of them
        # "database is locked" at once, without waiting. The lone holder switches it; the others
        # wait for the lock and find WAL set (the mode is stored in the file).
        _set_wal(conn, locked=fd is not None)
        migrate(conn)
        if alone:
            recover(conn, home)
    finally:
        if alone:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_SH)  # from now on, one connection among others
    return conn


def _set_wal(conn: sqlite3.Connection, locked: bool, wait_s: float = 30.0) -> None:
    """WAL mode; without the .live lock (no ``fcntl``) a "database is locked" answer to the
    switch is retried until ``wait_s``, as SQLite's busy handler does not wait for it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if locked or "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def recover(conn: sqlite3.Connection, home: Path) -> dict[str, list[str]]:
    """Remove what killed processes left in ``home``; call only while no other connection is
    open (``connect`` does, under the exclusive ``.live`` lock). Returns what it did:

    - ``staging``: ``adapters/.ID.*.staging`` (or ``.pull``/``.tmp``) folders and files: written,
      never renamed into place;
    - ``orphans``: ``adapters/ID`` folders with no row (killed between the rename and the row
      write; the adapter is rebuilt by resuming or re-running the command);
    - ``temp_files``: ``.NAME.*.tmp`` files of atomic writes in adapters/*/, cache/, reports/;
    - ``runs`` and ``fleets``: ids whose status ``running`` became ``interrupted`` (their
      process is gone; ``compile --resume`` and re-running ``upgrade`` pick them up).
    """
    done: dict[str, list[str]] = {"staging": [], "orphans": [], "temp_files": [], "runs": [],
                                  "fleets": []}
    for table in ("runs", "fleets"):
        done[table] = [r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE"
                                                  " status='running'")]
        if done[table]:
            with transaction(conn):
                conn.execute(f"UPDATE {table} SET status='interrupted', updated_at=? WHERE"
                             " status='running'", (utcnow(),))
    root = home / "adapters"
    if root.is_dir():
        known = {r[0] for r in conn.execute("SELECT id FROM adapters")}
        for p in sorted(root.iterdir()):
            if p.name.startswith(".") and p.name.endswith(_STAGING_SUFFIXES):
                _remove(p)
                done["staging"].append(p.name)
            elif _ULID.fullmatch(p.name) and p.is_dir() and p.name not in known:
                _remove(p)
                done["orphans"].append(p.name)
    for folder in [*(p for p in root.glob("*") if p.is_dir()), home / "cache", home / "reports"]:
        for p in folder.glob(".*.tmp") if folder.is_dir() else ():
            if p.is_file():
                p.unlink(missing_ok=True)
                done["temp_files"].append(str(p.relative_to(home)))
    return done


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet recorded; each in its own transaction. Returns their names."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with transaction(conn):
            # Re-check under the write lock: another process may have migrated meanwhile.
            if conn.execute("SELECT 1 FROM _migrations WHERE name=?", (name,)).fetchone():
                continue
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, utcnow()))
        applied.append(name)
    return applied


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def publish_dir(staging: Path, final: Path) -> None:
    """Move a fully written staging folder to its final place in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(staging, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staging, final)
