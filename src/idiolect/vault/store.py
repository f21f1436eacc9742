"""The vault in SQLite: users, deduplicated messages, the frozen per-user eval set and reference
split, and the training pool: what is left, minus anything that repeats held-out text
(``vault/split.py``)."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import IdiolectError, InputError, NotFound
from ..home import new_id, transaction, utcnow
from .message import Message
from .split import quarantined


@dataclass
class StoredMessage:
    id: str
    user: str
    digest: str
    subject: str
    body: str
    date: str | None
    to: list[str]
    source: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "StoredMessage":
        return cls(
            id=row["id"], user=row["user"], digest=row["digest"], subject=row["subject"],
            body=row["body"], date=row["date"], to=json.loads(row["recipients"]),
            source=row["source"],
        )


@dataclass
class ImportResult:
    """One source's import. ``skipped``: (path, reason) of the files in it that were not read;
    ``warnings``: one line each, about what was assumed or looks wrong."""

    user: str
    source: str
    format: str
    read: int
    added: int
    duplicates: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def valid_user_name(name: str) -> str:
    """A user name: 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'
    (a leading '-' would read as an option on the command line afterwards)."""
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)
    if not ok or name[0] in ".-":
        raise InputError(f"invalid user name {name!r}: 1 to 64 letters, digits, '-', '_' or '.',"
                         " not starting with '-' or '.'")
    return name


def import_messages(
    conn: sqlite3.Connection,
    user: str,
    messages: Iterable[Message],
    *,
    source: str,
    fmt: str,
    addresses: Iterable[str] = (),
) -> ImportResult:
    """Add messages to a user's vault in one transaction; duplicates (by digest) are skipped."""
    return import_sources(conn, user, [(source, fmt, messages)], addresses=addresses)[0]


def import_sources(
    conn: sqlite3.Connection,
    user: str,
    batches: Iterable[tuple[str, str, Iterable[Message]]],
    *,
    addresses: Iterable[str] = (),
) -> list[ImportResult]:
    """Add several sources' messages, ``(source, format, messages)`` each, in ONE transaction:
    a killed or failed import leaves the vault exactly as it was. One result per source.

    A source with no message is an InputError (and no user is created). What a source's
    messages carry as ``skipped`` and ``warnings`` (``ingest.read_source``'s result) is passed
    on in its result, with a warning where messages name another user than ``user``."""
    valid_user_name(user)
    batches = [(source, fmt, list(messages), messages) for source, fmt, messages in batches]
    batches = [(source, fmt, listed, _notes(user, source, given, listed))
               for source, fmt, listed, given in batches]
    now = utcnow()
    results = []
    with transaction(conn):
        row = conn.execute("SELECT addresses FROM users WHERE name=?", (user,)).fetchone()
        known = json.loads(row["addresses"]) if row else []
        merged = sorted(set(known) | {a.lower() for a in addresses})
        if row is None:
            conn.execute("INSERT INTO users VALUES (?, ?, ?)", (user, now, json.dumps(merged)))
        elif merged != known:
            conn.execute("UPDATE users SET addresses=? WHERE name=?", (json.dumps(merged), user))
        for source, fmt, messages, (skipped, warnings) in batches:
            read = added = 0
            for m in messages:
                read += 1
                cur = conn.execute(
                    "INSERT OR IGNORE INTO messages (id, user, digest, source_id, date, subject,"
                    " recipients, body, source, imported_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (new_id(), user, m.digest, m.source_id, m.date, m.subject,
                     json.dumps(m.to), m.body, m.source or source, now),
                )
                added += cur.rowcount
            conn.execute(
                "INSERT INTO imports VALUES (?,?,?,?,?,?,?,?)",
                (new_id(), user, source, fmt, read, added, read - added, now),
            )
            results.append(ImportResult(user, source, fmt, read, added, read - added,
                                        skipped, warnings))
    return results


def _notes(user: str, source: str, given, messages: list[Message]) -> tuple[list, list[str]]:
    """(skipped, warnings) of a source: its reader's (on ``given``, the messages as passed),
    and one for messages whose source names another writer (a JSONL "user" field) than the
    user they are imported for. A source with no message is an InputError."""
    if not messages:
        raise InputError(f"{source}: nothing to import (no messages)")
    skipped = list(getattr(given, "skipped", []))
    warnings = list(getattr(given, "warnings", []))
    others = Counter(m.source_user for m in messages
                     if m.source_user is not None and m.source_user.lower() != user.lower())
    if others:
        names = ", ".join(f"{n!r} ({k})" for n, k in others.most_common(3))
        warnings.append(f'{source}: {sum(others.values())} messages name another user in their'
                        f' "user" field ({names}); imported as {user!r} all the same')
    return skipped, warnings


def require_user(conn: sqlite3.Connection, user: str) -> None:
    if not conn.execute("SELECT 1 FROM users WHERE name=?", (user,)).fetchone():
        raise NotFound(f"unknown user {user!r} (see `idiolect user list`)")


def list_users(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT u.name, u.created_at, (SELECT COUNT(*) FROM messages m WHERE m.user=u.name) n,"
        " (SELECT size FROM eval_sets e WHERE e.user=u.name) eval_size FROM users u ORDER BY u.name"
    ).fetchall()
    return [
        {"user": r["name"], "created_at": r["created_at"], "messages": r["n"],
         "eval_size": r["eval_size"]}
        for r in rows
    ]


def user_info(conn: sqlite3.Connection, user: str) -> dict:
    require_user(conn, user)
    info = next(u for u in list_users(conn) if u["user"] == user)
    row = conn.execute("SELECT addresses FROM users WHERE name=?", (user,)).fetchone()
    info["addresses"] = json.loads(row["addresses"])
    ev = eval_set(conn, user)
    info["eval_set"] = (
        {"size": ev["size"], "seed": ev["seed"], "digest": ev["digest"],
         "created_at": ev["created_at"],
         "reference": None if ev["reference_ids"] is None else len(ev["reference_ids"])}
        if ev else None
    )
    info["imports"] = [
        dict(r) for r in conn.execute(
            "SELECT source, format, read, added, duplicates, at FROM imports WHERE user=?"
            " ORDER BY at", (user,))
    ]
    info["adapters"] = [
        dict(r) for r in conn.execute(
            "SELECT id, base, state, created_at FROM adapters WHERE user=? ORDER BY created_at",
            (user,))
    ]
    return info


def all_messages(conn: sqlite3.Connection, user: str) -> list[StoredMessage]:
    rows = conn.execute(
        "SELECT * FROM messages WHERE user=? ORDER BY digest", (user,)
    ).fetchall()
    return [StoredMessage.from_row(r) for r in rows]


def eval_set(conn: sqlite3.Connection, user: str) -> dict | None:
    row = conn.execute("SELECT * FROM eval_sets WHERE user=?", (user,)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["message_ids"] = json.loads(row["message_ids"])
    out["reference_ids"] = json.loads(row["reference_ids"]) if row["reference_ids"] else None
    return out


def _ids_digest(digests: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


REFERENCE_SIZE = 100


def freeze_eval(conn: sqlite3.Connection, user: str, size: int = 50, seed: int = 0,
                reference: int = REFERENCE_SIZE) -> dict:
    """Pick the user's eval set and reference split once (seeded); refuse to change them.

    The eval set: ``size`` messages, a seeded sample of the vault. The reference split: up to
    ``reference`` (at most a quarter) of the messages left once the eval set and whatever
    repeats it are set aside; the authorship classifier and style scaler are fitted on it, and
    the adapter never trains on it either."""
    require_user(conn, user)
    if size < 1:
        raise InputError(f"--size must be at least 1, got {size}")
    if reference < 1:
        raise InputError(f"--reference must be at least 1, got {reference}")
    with transaction(conn):
        existing = eval_set(conn, user)
        if existing:
            raise IdiolectError(
                f"user {user!r} already has a frozen eval set ({existing['size']} messages,"
                f" digest {existing['digest'][:12]}); it never changes"
            )
        msgs = all_messages(conn, user)
        if size * 2 > len(msgs):
            raise InputError(
                f"user {user!r} has {len(msgs)} messages: an eval set of {size} would leave too"
                f" few to train on (use --size {max(1, len(msgs) // 5)} or import more)"
            )
        chosen = random.Random(seed).sample(msgs, size)
        digest = _ids_digest(m.digest for m in chosen)
        ref = _pick_reference(msgs, chosen, reference, seed)
        conn.execute(
            "INSERT INTO eval_sets (user, created_at, seed, size, digest, message_ids,"
            " reference_ids, reference_digest, reference_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (user, utcnow(), seed, size, digest, json.dumps(sorted(m.id for m in chosen)),
             json.dumps(sorted(m.id for m in ref)), _ids_digest(m.digest for m in ref), utcnow()),
        )
    return eval_set(conn, user)


def _pick_reference(msgs: list[StoredMessage], held: list[StoredMessage], reference: int,
                    seed: int) -> list[StoredMessage]:
    """A seeded sample of the messages outside ``held`` that do not repeat it."""
    ids = {m.id for m in held}
    rest = [m for m in msgs if m.id not in ids]
    bad = quarantined([m.body for m in held], {m.id: m.body for m in rest})
    rest = [m for m in rest if m.id not in bad]
    k = min(reference, max(1, len(rest) // 4))
    return random.Random(f"reference:{seed}").sample(rest, k) if len(rest) > k else []


def reference_messages(conn: sqlite3.Connection, user: str) -> list[StoredMessage]:
    """The user's reference split. An eval set frozen before reference splits existed gets one
    now, once (recorded with its time; those messages are not trained on from then on)."""
    ev = require_eval_set(conn, user)
    if ev["reference_ids"] is None:
        with transaction(conn):
            ev = eval_set(conn, user)
            if ev["reference_ids"] is None:
                msgs = all_messages(conn, user)
                held_ids = set(ev["message_ids"])
                held = [m for m in msgs if m.id in held_ids]
                ref = _pick_reference(msgs, held, REFERENCE_SIZE, ev["seed"])
                conn.execute("UPDATE eval_sets SET reference_ids=?, reference_digest=?,"
                             " reference_at=? WHERE user=?",
                             (json.dumps(sorted(m.id for m in ref)),
                              _ids_digest(m.digest for m in ref), utcnow(), user))
        ev = eval_set(conn, user)
    ids = set(ev["reference_ids"])
    return [m for m in all_messages(conn, user) if m.id in ids]


def require_eval_set(conn: sqlite3.Connection, user: str) -> dict:
    ev = eval_set(conn, user)
    if ev is None:
        raise IdiolectError(
            f"user {user!r} has no frozen eval set: run `idiolect user freeze-eval {user}` first"
        )
    return ev


def eval_messages(conn: sqlite3.Connection, user: str) -> list[StoredMessage]:
    ev = require_eval_set(conn, user)
    ids = set(ev["message_ids"])
    return [m for m in all_messages(conn, user) if m.id in ids]


def training_messages(
    conn: sqlite3.Connection, user: str, examples: int | None = None, seed: int = 0
) -> tuple[list[StoredMessage], str]:
    """The user's messages outside the frozen eval set and reference split, minus any message
    that repeats either in content (``vault/split.py``), a seeded sample of ``examples`` of them
    when given, and the snapshot digest of exactly that set."""
    require_eval_set(conn, user)
    held = {m.id: m.body for m in eval_messages(conn, user) + reference_messages(conn, user)}
    rest = {m.id: m for m in all_messages(conn, user) if m.id not in held}
    bad = quarantined(list(held.values()), {i: m.body for i, m in rest.items()})
    pool = [m for i, m in rest.items() if i not in bad]
    if not pool:
        raise InputError(f"user {user!r} has no messages outside the eval set to train on")
    if examples is not None:
        if examples < 1:
            raise InputError(f"--examples must be at least 1, got {examples}")
        key = lambda m: hashlib.sha256(f"{seed}:{m.digest}".encode()).hexdigest()  # noqa: E731
        pool = sorted(pool, key=key)[:examples]
    return pool, _ids_digest(m.digest for m in pool)
