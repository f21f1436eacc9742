"""Fleet run records: one ``fleets`` row per upgrade run, one ``fleet_users`` row per user.

A worker writes its own user's row as it goes (running -> promoted / rejected / failed), so the
record survives a killed driver; running the same upgrade again resumes the unfinished run.
"""

from __future__ import annotations

import json
import sqlite3

from .. import adapters
from ..errors import NotFound
from ..home import new_id, transaction, utcnow
from ..vault import store

DONE = ("promoted", "rejected")
USER_STATES = ("pending", "running", "promoted", "rejected", "failed")


def set_row(conn: sqlite3.Connection, fleet: str, user: str, **fields) -> None:
    """Update one user's row of a fleet run (column names are ours, never user input)."""
    sets = ", ".join(f"{k}=?" for k in fields)
    with transaction(conn):
        conn.execute(f"UPDATE fleet_users SET {sets} WHERE fleet=? AND user=?",
                     (*fields.values(), fleet, user))


def plan(conn: sqlite3.Connection, to_base: str, users: list[str] | None = None,
         redo: bool = False, from_base: str | None = None) -> list[dict]:
    """Who to upgrade: ``{"user", "old_adapter", "old_base", "skip"}`` per user, sorted.

    The old adapter is the user's most recent active adapter on a base other than ``to_base``
    (on ``from_base`` only, when given). ``skip`` says why a user is not upgraded (nothing to
    upgrade, or already done earlier for the same old adapter and target base, unless ``redo``).
    """
    rows = conn.execute("SELECT * FROM adapters WHERE state='active' AND base != ? AND"
                        " (? IS NULL OR base = ?) ORDER BY created_at DESC, rowid DESC",
                        (to_base, from_base, from_base)).fetchall()
    latest: dict[str, sqlite3.Row] = {}
    for r in rows:
        latest.setdefault(r["user"], r)
    names = sorted(latest) if users is None else list(dict.fromkeys(users))
    out = []
    for name in names:
        store.require_user(conn, name)
        r = latest.get(name)
        if r is None:
            out.append({"user": name, "old_adapter": None, "old_base": None,
                        "skip": f"no active adapter on {from_base}" if from_base else
                        f"no active adapter on a base other than {to_base}"})
            continue
        done = None if redo else conn.execute(
            "SELECT fu.fleet, fu.status, fu.candidate, fu.reason FROM fleet_users fu JOIN fleets f"
            " ON f.id = fu.fleet WHERE fu.user=? AND fu.old_adapter=? AND f.to_base=? AND"
            " fu.status IN ('promoted', 'rejected') ORDER BY fu.finished_at DESC LIMIT 1",
            (name, r["id"], to_base)).fetchone()
        skip = (f"already {done['status']} in fleet {done['fleet']} (candidate"
                f" {done['candidate']})" if done else None)
        out.append({"user": name, "old_adapter": r["id"], "old_base": r["base"], "skip": skip})
    return out


def open_fleet(conn: sqlite3.Connection, to_base: str, config: dict) -> tuple[str, bool]:
    """The unfinished fleet run to ``to_base`` to resume, or a new one. (id, resumed)"""
    with transaction(conn):
        row = conn.execute("SELECT id FROM fleets WHERE to_base=? AND status IN"
                           " ('running', 'interrupted', 'partial') ORDER BY created_at DESC,"
                           " id DESC LIMIT 1", (to_base,)).fetchone()
        if row:
            conn.execute("UPDATE fleets SET status='running', config=?, updated_at=? WHERE id=?",
                         (json.dumps(config), utcnow(), row["id"]))
            return row["id"], True
        fleet = new_id()
        conn.execute("INSERT INTO fleets (id, to_base, status, config, created_at, updated_at)"
                     " VALUES (?,?,?,?,?,?)", (fleet, to_base, "running", json.dumps(config),
                                              utcnow(), utcnow()))
    return fleet, False


def recover(conn: sqlite3.Connection, fleet: str, user: str) -> dict | None:
    """A row a killed run left behind: its candidate promoted -> done; else it is redone (an
    abandoned candidate is marked rejected)."""
    row = conn.execute("SELECT * FROM fleet_users WHERE fleet=? AND user=?",
                       (fleet, user)).fetchone()
    if row is None or row["status"] in DONE or not row["candidate"]:
        return None
    try:
        cand = adapters.get(conn, row["candidate"])
    except NotFound:
        return None
    if cand["state"] == "active":
        reason = "promoted before the fleet run was interrupted"
        set_row(conn, fleet, user, status="promoted", reason=reason, finished_at=utcnow())
        return {"user": user, "status": "promoted", "reason": reason, "candidate": cand["id"],
                "old_adapter": row["old_adapter"], "old_base": row["old_base"]}
    if cand["state"] == "candidate":  # compiled, never gated: abandoned with the run
        adapters.decide(conn, cand["id"], "rejected", {
            "status": "rejected", "passed": None, "forced": False, "at": utcnow(),
            "reason": "abandoned: its fleet run was interrupted before the gate ran"})
    return None


def close_fleet(conn: sqlite3.Connection, fleet: str, status: str, summary: dict) -> None:
    with transaction(conn):
        conn.execute("UPDATE fleets SET status=?, summary=?, updated_at=? WHERE id=?",
                     (status, json.dumps(summary), utcnow(), fleet))


def fleet_status(conn: sqlite3.Connection, fleet: str | None = None) -> dict:
    """A recorded fleet run (default: the latest) with its per-user rows and ``counts`` of the
    rows by status, read live. ``summary`` is the last attempt's report counts, written when it
    ends; its ``skipped`` users have no row (or a row from an earlier attempt of the run)."""
    row = conn.execute("SELECT * FROM fleets WHERE id=?", (fleet,)).fetchone() if fleet else \
        conn.execute("SELECT * FROM fleets ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    if row is None:
        raise NotFound(f"no fleet run {fleet!r} (see `idiolect fleet list`)" if fleet
                       else "no fleet run yet (`idiolect upgrade --to NAME` starts one)")
    users = [dict(r) | {"result": json.loads(r["result"])} for r in conn.execute(
        "SELECT * FROM fleet_users WHERE fleet=? ORDER BY user", (row["id"],))]
    return dict(row) | {"config": json.loads(row["config"]), "summary": json.loads(row["summary"]),
                        "counts": _counts(u["status"] for u in users), "users": users}


def list_fleets(conn: sqlite3.Connection) -> list[dict]:
    """Every recorded fleet run, newest first: id, target base, status, executor, counts."""
    rows = conn.execute("SELECT * FROM fleets ORDER BY created_at DESC, rowid DESC").fetchall()
    out = []
    for r in rows:
        statuses = [u[0] for u in conn.execute("SELECT status FROM fleet_users WHERE fleet=?",
                                               (r["id"],))]
        config = json.loads(r["config"])
        out.append({"id": r["id"], "to_base": r["to_base"], "status": r["status"],
                    "executor": config.get("executor") or {}, "created_at": r["created_at"],
                    "updated_at": r["updated_at"], "counts": _counts(statuses),
                    "skipped": json.loads(r["summary"]).get("skipped", 0)})
    return out


def _counts(statuses) -> dict[str, int]:
    counts = dict.fromkeys(USER_STATES, 0)
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return counts
