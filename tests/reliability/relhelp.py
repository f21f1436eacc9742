"""Helpers of the reliability tests: child idiolect processes, kill -9, and home invariants.

Child processes run ``cli_driver.py`` (the real CLI, optionally killing itself at a named point)
with ``IDIOLECT_HOME`` set to the test's home. The parent inspects the home with plain sqlite3
connections (never ``home.connect``: its live lock would tell the child it is not alone).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "cli_driver.py"
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def child_env(home: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(IDIOLECT_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for k in ("IDIOLECT_TEST_KILL_AT", "IDIOLECT_TEST_RUSAGE"):
        env.pop(k, None)
    env.update(extra)
    return env


def spawn(home: Path, *args, kill_at: str | None = None, rusage: Path | None = None,
          stderr_path: Path | None = None) -> subprocess.Popen:
    """Start ``idiolect ARGS`` as a child; stdout piped, stderr to ``stderr_path`` or piped."""
    extra = {}
    if kill_at:
        extra["IDIOLECT_TEST_KILL_AT"] = kill_at
    if rusage:
        extra["IDIOLECT_TEST_RUSAGE"] = str(rusage)
    err = open(stderr_path, "wb") if stderr_path else subprocess.PIPE
    try:
        return subprocess.Popen([sys.executable, str(DRIVER), *map(str, args)],
                                env=child_env(home, **extra), stdout=subprocess.PIPE,
                                stderr=err, cwd=str(home.parent))
    finally:
        if stderr_path:
            err.close()


def run(home: Path, *args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``idiolect ARGS`` in a child process, to the end."""
    p = spawn(home, *args, **kw)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out.decode(),
                                       (err or b"").decode())


def kill9(p: subprocess.Popen) -> int:
    """SIGKILL the child (if still alive) and reap it; its return code."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    return p.returncode


def wait_for(cond, p: subprocess.Popen | None = None, timeout: float = 300,
             every: float = 0.005) -> bool:
    """Poll ``cond()`` until true (True) or the child ended first / timeout (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if p is not None and p.poll() is not None:
            return bool(cond())
        time.sleep(every)
    return False


def db_rows(home: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    """Rows of a query on the home's database, through a plain (lock-free) connection."""
    path = home / "idiolect.db"
    if not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=30)) as c:
        c.row_factory = sqlite3.Row
        return c.execute(sql, args).fetchall()


def integrity(home: Path) -> str:
    return db_rows(home, "PRAGMA integrity_check")[0][0]


def adapter_folders(home: Path) -> tuple[dict[str, Path], list[str]]:
    """(registered adapter folders by id, everything else under adapters/), checking that each
    registered folder's files match its manifest and a registered row has its folder."""
    from idiolect import adapters

    root = home / "adapters"
    rows = {r["id"]: r for r in db_rows(home, "SELECT id, path FROM adapters")}
    good, other = {}, []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.name in rows:
            adapters.verify_files(p)
            assert Path(rows[p.name]["path"]) == p
            good[p.name] = p
        else:
            other.append(p.name)
    missing = sorted(set(rows) - set(good))
    assert not missing, f"registered adapters without their folder: {missing}"
    return good, other


def debris_kind(name: str) -> str:
    """What a leftover under adapters/ is: 'staging' (a temp folder a later run removes) or
    'orphan' (a folder that looks installed but has no row)."""
    if name.startswith(".") and name.endswith((".staging", ".pull", ".tmp")):
        return "staging"
    return "orphan" if ULID.fullmatch(name) else "unknown"


def active_pairs(home: Path) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for r in db_rows(home, "SELECT id, user, base FROM adapters WHERE state='active'"):
        out.setdefault((r["user"], r["base"]), []).append(r["id"])
    return out


def load_peft(folder: Path, base_dir: Path):
    """PEFT loads the adapter folder onto its base (the test that it is a usable artifact)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(folder))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    return model


def setup_home(home: Path, tmp: Path, bases: dict[str, Path], users: dict[str, str],
               n: int = 50, eval_size: int = 8) -> None:
    """Register bases, import and freeze users (style by user; 50 messages: 8 eval, 10
    reference, 32 to train on), in this process; the
    connection is closed before returning so child processes find the home unlocked."""
    from conftest import home_at, synthetic_messages, write_jsonl
    from idiolect.bases.load import add_local
    from idiolect.home import Home
    from idiolect.vault.ingest import read_source
    from idiolect.vault.store import freeze_eval, import_messages

    with home_at(home), Home.open(home) as h:
        conn = h.conn
        for name, folder in bases.items():
            add_local(h, name, folder)
        for user, style in users.items():
            src = write_jsonl(tmp / f"{user}.jsonl", synthetic_messages(user, n, style=style))
            import_messages(conn, user, read_source(src, "jsonl"), source=str(src),
                            fmt="jsonl")
            freeze_eval(conn, user, size=eval_size)


def write_recipe(path: Path, **over) -> Path:
    recipe = {"rank": 4, "alpha": 8, "epochs": 4, "max_tokens": 96, "batch_tokens": 384,
              "checkpoint_every": 2, "threads": 1, "warmup_steps": 2}
    path.write_text(json.dumps(recipe | over))
    return path


def big_jsonl(path: Path, n: int, start: int = 0) -> Path:
    """n distinct JSONL messages (ids and bodies numbered from ``start``)."""
    rng = random.Random(n)
    words = ("alpha beta gamma delta cache index tree blob commit patch fix test memory leak"
             " write read path config object refs merge rebase push pull").split()
    with open(path, "w") as f:
        for i in range(start, start + n):
            body = " ".join(rng.choice(words) for _ in range(rng.randint(10, 60))) + f" #{i}."
            f.write(json.dumps({"id": f"m{i}", "subject": f"note {i % 97}", "to": ["x@y.z"],
                                "date": "2024-02-01T10:00:00Z", "body": body}) + "\n")
    return path


def big_mbox(path: Path, n: int) -> Path:
    """An mbox of n distinct messages from ada@example.org."""
    rng = random.Random(n)
    words = "alpha beta gamma delta cache index tree blob commit patch fix test".split()
    with open(path, "w") as f:
        for i in range(n):
            body = " ".join(rng.choice(words) for _ in range(rng.randint(10, 60)))
            f.write(f"From ada@example.org Mon Jan  3 10:{i % 60:02d}:00 2022\n"
                    f"From: Ada <ada@example.org>\nTo: x@y.z\nSubject: note {i}\n"
                    f"Message-ID: <m{i}@example.org>\nDate: Mon, 3 Jan 2022 10:00:00 +0000\n\n"
                    f"{body} #{i}.\n\n")
    return path


def digests(home: Path, user: str) -> set[str]:
    return {r[0] for r in db_rows(home, "SELECT digest FROM messages WHERE user=?", (user,))}


def bar_scores(conn, user: str, authorship: float, distance: float, limit: int = 4,
               max_new_tokens: int = 8) -> dict:
    """Stored eval scores for a user's old adapter, made under the protocol that `idiolect
    upgrade --limit LIMIT --max-new-tokens N` evaluates with (stored scores set the gate's bar
    only under the same protocol)."""
    from dataclasses import replace

    from idiolect.evaluate.run import EvalConfig, cohort, protocol_digest
    from idiolect.vault import store

    cfg = EvalConfig(limit=limit)
    cfg.generation = replace(cfg.generation, max_new_tokens=max_new_tokens)
    digest = store.eval_set(conn, user)["digest"]
    return {"eval": {"eval_digest": digest, "n": limit,
                     "protocol": protocol_digest(cfg, digest, cohort(conn).reference),
                     "adapter_scores": {"authorship_probability": authorship,
                                        "fingerprint_distance": distance}}}
