"""Several idiolect processes writing one home at once: every one succeeds (no "database is
locked"), the database passes PRAGMA integrity_check, and the counts are exactly right."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import relhelp as rh

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _finish(procs) -> list:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append((p.returncode, stdout.decode(), stderr.decode()))
    return out


def _assert_clean(results) -> None:
    for code, _, err in results:
        assert code == 0, err
        assert "locked" not in err and "Traceback" not in err, err


def test_simultaneous_imports_of_different_users_into_a_new_home(isolated_home, tmp_path):
    """4 processes start together on a home with no database yet: they race to create and
    migrate it, then each writes a 4,000-message transaction."""
    home = isolated_home
    users = [f"user{i}" for i in range(4)]
    files = {u: rh.big_jsonl(tmp_path / f"{u}.jsonl", 4000, start=i * 10**6)
             for i, u in enumerate(users)}
    assert not (home / "idiolect.db").exists()
    results = _finish([rh.spawn(home, "user", "import", u, files[u], "--json") for u in users])
    _assert_clean(results)
    assert rh.integrity(home) == "ok"
    for u, (_, out, _) in zip(users, results):
        (report,) = json.loads(out)
        assert report["user"] == u and report["added"] == 4000 == len(rh.digests(home, u))
    assert rh.db_rows(home, "SELECT COUNT(*) FROM messages")[0][0] == 16000
    assert rh.db_rows(home, "SELECT COUNT(*) FROM imports")[0][0] == 4
    from idiolect.home import MIGRATIONS  # every migration applied once, by one of them

    assert sorted(r[0] for r in rh.db_rows(home, "SELECT name FROM _migrations")) == sorted(
        name for name, _ in MIGRATIONS)


def test_same_user_overlapping_imports_and_one_eval_freeze(isolated_home, tmp_path):
    """Two processes import overlapping files of one user at once: no message twice, the
    union is stored once. Then two processes freeze the eval set at once: exactly one wins,
    the other gets the clean one-line refusal."""
    home = isolated_home
    a = rh.big_jsonl(tmp_path / "a.jsonl", 6000, start=0)
    b = tmp_path / "b.jsonl"  # the second half of a, then 3,000 new ones
    lines = a.read_text().splitlines(keepends=True)
    b.write_text("".join(lines[3000:]) + rh.big_jsonl(tmp_path / "c.jsonl", 3000,
                                                     start=10**6).read_text())
    results = _finish([rh.spawn(home, "user", "import", "ada", f, "--json") for f in (a, b)])
    _assert_clean(results)
    reports = [json.loads(out)[0] for _, out, _ in results]
    assert len(rh.digests(home, "ada")) == 9000 == sum(r["added"] for r in reports)
    assert sorted(r["duplicates"] for r in reports) == [0, 3000]
    assert rh.integrity(home) == "ok"

    results = _finish([rh.spawn(home, "user", "freeze-eval", "ada", "--size", "50")
                       for _ in range(2)])
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    (loser,) = [err for code, _, err in results if code == 1]
    assert loser.strip().count("\n") == 0 and "already has a frozen eval set" in loser
    assert len(rh.db_rows(home, "SELECT * FROM eval_sets")) == 1


def _compile_home(home: Path, tmp: Path, tiny_model_dir: Path) -> Path:
    rh.setup_home(home, tmp, {"tiny": tiny_model_dir}, {"ada": "plain", "bob": "shout"})
    return rh.write_recipe(tmp / "recipe.json")


@pytest.mark.slow
def test_import_while_a_compile_finishes(isolated_home, tmp_path, tiny_model_dir):
    """bob's 30,000-message import starts when ada's compile is at its last steps, so the
    compile's adapter row, promotion and run update meet the import's long transaction."""
    home = isolated_home
    recipe = _compile_home(home, tmp_path, tiny_model_dir)
    big = rh.big_jsonl(tmp_path / "bob-big.jsonl", 30000, start=5 * 10**6)
    stderr = tmp_path / "compile.err"
    compile_p = rh.spawn(home, "compile", "ada", "--base", "tiny", "--recipe", recipe,
                         "--candidate", "--json", stderr_path=stderr)
    assert rh.wait_for(lambda: b"step 25/32" in stderr.read_bytes(), compile_p), \
        stderr.read_text()
    import_p = rh.spawn(home, "user", "import", "bob", big, "--json")
    t0 = time.monotonic()
    imp = _finish([import_p])[0]
    out, _ = compile_p.communicate(timeout=300)
    comp = (compile_p.returncode, out.decode(), stderr.read_text())
    _assert_clean([imp, comp])
    m = json.loads(comp[1])
    assert [tuple(r) for r in rh.db_rows(home, "SELECT id, state FROM adapters")] == [
        (m["id"], "candidate")]
    assert json.loads(imp[1])[0]["added"] == 30000
    assert len(rh.digests(home, "bob")) == 30050 and len(rh.digests(home, "ada")) == 50
    assert rh.integrity(home) == "ok"
    assert [tuple(r) for r in rh.db_rows(home, "SELECT status, adapter FROM runs")] == [
        ("done", m["id"])]
    good, other = rh.adapter_folders(home)
    assert list(good) == [m["id"]] and other == []
    assert time.monotonic() - t0 < 300


@pytest.mark.slow
def test_two_compiles_of_different_users_at_once(isolated_home, tmp_path, tiny_model_dir):
    home = isolated_home
    recipe = _compile_home(home, tmp_path, tiny_model_dir)
    procs = [rh.spawn(home, "compile", u, "--base", "tiny", "--recipe", recipe, "--candidate",
                      "--json") for u in ("ada", "bob")]
    results = _finish(procs)
    _assert_clean(results)
    ids = {u: json.loads(out)["id"] for u, (_, out, _) in zip(("ada", "bob"), results)}
    # and both promoted at once (the gate runs, refuses the tiny model's noise, --force)
    _assert_clean(_finish([rh.spawn(home, "adapter", "promote", i, "--force", "--limit", "4")
                           for i in ids.values()]))
    assert rh.active_pairs(home) == {(u, "tiny"): [i] for u, i in ids.items()}
    good, other = rh.adapter_folders(home)
    assert set(good) == set(ids.values()) and other == []
    assert rh.integrity(home) == "ok"


@pytest.mark.parametrize("locks", ["flock", "none"])
def test_many_connections_open_one_new_home_at_once(tmp_path, monkeypatch, locks):
    """The race the process tests hit about once in 40 runs, made frequent: 6 threads open one
    new home at the same instant, 100 times. Switching a new database to WAL takes an exclusive
    lock, and two connections switching it at once deadlock; SQLite then answers one "database
    is locked" without waiting. ``connect`` switches it only under the exclusive .live lock;
    where there is no such lock (no fcntl) it retries the switch."""
    import threading

    import idiolect.home
    from idiolect.home import connect

    if locks == "none":
        monkeypatch.setattr(idiolect.home, "_lock_live", lambda home: (None, False))

    failures = []
    for i in range(100):
        home = tmp_path / f"home{i}"
        home.mkdir()
        start = threading.Barrier(6)

        def open_close():
            start.wait()
            try:
                connect(home).close()
            except Exception as e:  # noqa: BLE001 -- collected, asserted below
                failures.append((i, repr(e)))

        threads = [threading.Thread(target=open_close) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
