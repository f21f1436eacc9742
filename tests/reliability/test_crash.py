"""kill -9 at chosen moments of compile, upgrade and import; then the home is consistent and
the same command (with --resume for compile) finishes the job.

Kill points are chosen by watching the home (runs table, checkpoint files, the WAL, stderr
progress) or, for windows too short to hit by polling (the rename that publishes an adapter
folder, the promotion transaction), by ``cli_driver.py`` killing the child at that call.
"""

from __future__ import annotations

import glob
import json
import random
import time
from pathlib import Path

import pytest

import relhelp as rh
from test_transport import tiny_wide_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


# ------------------------------------------------------------------------------ compile
def _first_checkpoint(home: Path, p, stderr: Path) -> bool:
    return rh.wait_for(lambda: bool(glob.glob(str(home / "runs/*/checkpoint/state.json"))), p)


def _mid_epoch(home: Path, p, stderr: Path) -> bool:
    # the CLI prints a progress line every 5 steps (no tty); checkpoints come every 2 steps,
    # so step 5 is between two checkpoints, in the first of 4 epochs
    return rh.wait_for(lambda: b"step 5/" in stderr.read_bytes(), p)


def _loading_base(home: Path, p, stderr: Path) -> bool:
    return rh.wait_for(lambda: bool(rh.db_rows(home, "SELECT 1 FROM runs")), p)


def _random_after_start(seed: int):
    def when(home: Path, p, stderr: Path) -> bool:
        if not _loading_base(home, p, stderr):
            return False
        # anywhere in loading (~5-10 s here), training (~2 s) or writing the adapter
        time.sleep(random.Random(seed).uniform(0.0, 10.0))
        return p.poll() is None
    return when


# name -> (how the moment is found, kill_at for the driver, what the kill leaves in adapters/)
COMPILE_KILLS = {
    "after-first-checkpoint": (_first_checkpoint, None, set()),
    "folder-written-not-renamed": (None, "idiolect.adapters:publish_dir", {"staging"}),
    "mid-epoch": (_mid_epoch, None, set()),
    "loading-base": (_loading_base, None, set()),
    "renamed-not-registered": (None, "idiolect.adapters:register", {"orphan"}),
    "after-last-checkpoint": (None, "idiolect.compile.train:save_checkpoint:after@15", set()),
}
FAST = ("after-first-checkpoint", "folder-written-not-renamed")
KILL_PARAMS = [pytest.param(k, marks=() if k in FAST else pytest.mark.slow)
               for k in COMPILE_KILLS]
KILL_PARAMS += [pytest.param(f"random-{s}", marks=pytest.mark.slow) for s in range(4)]


@pytest.fixture
def vault(isolated_home, tmp_path, tiny_model_dir):
    rh.setup_home(isolated_home, tmp_path, {"tiny": tiny_model_dir},
                  {"ada": "plain", "bob": "shout"})
    return isolated_home


@pytest.mark.parametrize("point", KILL_PARAMS)
def test_compile_killed_then_resumed(point, vault, tmp_path, tiny_model_dir, cli_run):
    home = vault
    recipe = rh.write_recipe(tmp_path / "recipe.json")  # 4 epochs x 8 steps, checkpoint every 2
    if point.startswith("random-"):
        when, kill_at, leaves = _random_after_start(int(point.split("-")[1])), None, None
    else:
        when, kill_at, leaves = COMPILE_KILLS[point]
    stderr = tmp_path / "compile.err"
    p = rh.spawn(home, "compile", "ada", "--base", "tiny", "--recipe", recipe, "--candidate",
                 "--json", kill_at=kill_at, stderr_path=stderr)
    if when is not None:
        reached = when(home, p, stderr)
        code = rh.kill9(p)
        if point.startswith("random-") and not reached:
            pytest.skip("the compile ended before the random moment")  # nothing was killed
        assert reached, stderr.read_text()[-2000:]
    else:
        code = p.wait(timeout=300)
    assert code == -9, stderr.read_text()[-2000:]

    # what the kill left: the run still 'running', no adapter row, maybe a staging/orphan folder
    assert rh.integrity(home) == "ok"
    runs = rh.db_rows(home, "SELECT id, status FROM runs")
    assert [r["status"] for r in runs] == ["running"]
    assert rh.db_rows(home, "SELECT id FROM adapters") == []
    _, other = rh.adapter_folders(home)
    if leaves is not None:
        assert {rh.debris_kind(n) for n in other} == leaves, other

    # the same compile with --resume finishes it: the same run, a valid adapter, no debris
    r = cli_run("compile", "ada", "--base", "tiny", "--resume", "--candidate", "--json")
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    total = m["tokens"]["steps"]
    assert total == 32 and m["run"] == runs[0]["id"]
    resumed = m["tokens"]["resumed_from_step"]
    if point == "after-first-checkpoint":
        assert resumed and resumed % 2 == 0 and resumed < total
    if point in ("folder-written-not-renamed", "renamed-not-registered", "after-last-checkpoint"):
        assert resumed == total - 2  # the last checkpoint; training had ended
    if point == "loading-base":
        assert not resumed  # no checkpoint yet: from step 0
    good, other = rh.adapter_folders(home)
    assert list(good) == [m["id"]] and other == [], other
    assert rh.db_rows(home, "SELECT status, adapter FROM runs")[0][:] == ("done", m["id"])
    assert rh.db_rows(home, "SELECT state FROM adapters")[0][0] == "candidate"
    assert rh.active_pairs(home) == {}  # compiled, not gated (--candidate)
    assert not (home / "runs" / m["run"] / "checkpoint").exists()
    rh.load_peft(good[m["id"]], tiny_model_dir)

    if point in FAST:
        return  # the default tier stops here (test_compile_e2e compares a Ctrl-C resume)
    # and it is the adapter an uninterrupted compile makes (same steps, same last loss)
    r = cli_run("compile", "ada", "--base", "tiny", "--recipe", recipe, "--candidate", "--json")
    assert r.exit_code == 0, r.stderr
    full = json.loads(r.stdout)
    assert full["tokens"]["steps"] == total
    assert full["metrics"]["train_loss_last"] == pytest.approx(m["metrics"]["train_loss_last"],
                                                               rel=1e-3)


# ------------------------------------------------------------------------------ upgrade
UPGRADE_ARGS = ("upgrade", "--to", "tiny-wide", "--workers", "1", "--limit", "4",
                "--max-new-tokens", "8", "--no-compare-old", "--authorship-tol", "0",
                "--distance-tol", "0", "--json")


@pytest.fixture
def cohort_home(isolated_home, tmp_path, tiny_model_dir, tiny_wide_dir):
    """ada and bob, each with an active adapter on tiny (4 epochs, checkpoint every 2) whose
    stored scores any candidate beats (so the gate passes without re-scoring the old one)."""

    from idiolect import adapters
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from conftest import open_home

    from conftest import force_promote

    home = isolated_home
    rh.setup_home(home, tmp_path, {"tiny": tiny_model_dir, "tiny-wide": tiny_wide_dir},
                  {"ada": "plain", "bob": "shout"})
    recipe = json.loads(rh.write_recipe(tmp_path / "recipe.json").read_text())
    old = {}
    with open_home() as h:
        for user in ("ada", "bob"):
            m = compile_adapter(h, CompileRequest(user, "tiny", recipe=Recipe.from_dict(recipe)))
            force_promote(h, m.id)
            adapters.update_metrics(h.conn, m.id, rh.bar_scores(h.conn, user, 0.0, 1e9))
            old[user] = m.id
    return home, old


def _fleet_user(home: Path, status: str):
    return lambda: bool(rh.db_rows(home, "SELECT 1 FROM fleet_users WHERE status=?", (status,)))


def _candidate_compiling(home: Path, p, stderr: Path) -> bool:
    """A tiny-wide compile is running and has written its first checkpoint."""
    def checkpointed() -> bool:
        running = rh.db_rows(
            home, "SELECT id FROM runs WHERE base='tiny-wide' AND status='running'")
        return any((home / "runs" / r[0] / "checkpoint" / "state.json").exists() for r in running)
    return rh.wait_for(checkpointed, p)


def _candidate_evaluating(home: Path, p, stderr: Path) -> bool:
    return rh.wait_for(lambda: bool(rh.db_rows(
        home, "SELECT 1 FROM adapters WHERE base='tiny-wide' AND state='candidate'")), p)


def _second_user(home: Path, p, stderr: Path) -> bool:
    return rh.wait_for(lambda: _fleet_user(home, "promoted")() and bool(rh.db_rows(
        home, "SELECT 1 FROM runs WHERE base='tiny-wide' AND user='bob'")), p)


# name -> (how the moment is found, kill_at for the driver)
UPGRADE_KILLS = {
    "inside-promotion-transaction": (None, "idiolect.adapters:_promote:after"),
    "candidate-compiling": (_candidate_compiling, None),
    "candidate-evaluating": (_candidate_evaluating, None),
    "promoted-not-recorded": (None, "idiolect.adapters:decide:after"),
    "candidate-folder-not-renamed": (None, "idiolect.adapters:publish_dir"),
    "second-user-compiling": (_second_user, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(UPGRADE_KILLS))
def test_upgrade_killed_then_rerun(point, cohort_home, tmp_path, tiny_wide_dir, cli_run):
    home, old = cohort_home
    when, kill_at = UPGRADE_KILLS[point]
    stderr = tmp_path / "upgrade.err"
    p = rh.spawn(home, *UPGRADE_ARGS, kill_at=kill_at, stderr_path=stderr)
    if when is not None:
        assert when(home, p, stderr), stderr.read_text()[-3000:]
        rh.kill9(p)
    else:
        p.wait(timeout=600)
    assert p.returncode == -9, stderr.read_text()[-3000:]

    # right after the kill: one active adapter per (user, base) at most, the old ones untouched,
    # every folder under adapters/ registered and intact, or a staging/orphan leftover
    assert rh.integrity(home) == "ok"
    pairs = rh.active_pairs(home)
    assert all(len(ids) == 1 for ids in pairs.values()), pairs
    assert {u: pairs[(u, "tiny")] for u in old} == {u: [a] for u, a in old.items()}
    _, other = rh.adapter_folders(home)
    assert {rh.debris_kind(n) for n in other} <= {"staging", "orphan"}, other
    if point == "inside-promotion-transaction":  # rolled back: still a candidate
        assert ("ada", "tiny-wide") not in pairs
        assert [r["state"] for r in rh.db_rows(
            home, "SELECT state FROM adapters WHERE base='tiny-wide'")] == ["candidate"]
    if point == "promoted-not-recorded":
        assert ("ada", "tiny-wide") in pairs
    if point == "candidate-folder-not-renamed":
        assert {rh.debris_kind(n) for n in other} == {"staging"}

    # the same command again finishes the fleet run: both users on tiny-wide, nothing left over
    r = cli_run(*UPGRADE_ARGS)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resumed"], out
    by = {u["user"]: u for u in out["users"]}
    assert {u: e["status"] for u, e in by.items()} == {"ada": "promoted", "bob": "promoted"} or (
        point == "second-user-compiling" and by["ada"]["status"] == "skipped")
    pairs = rh.active_pairs(home)
    assert set(pairs) == {(u, b) for u in old for b in ("tiny", "tiny-wide")}
    assert all(len(ids) == 1 for ids in pairs.values()), pairs
    assert {u: pairs[(u, "tiny")] for u in old} == {u: [a] for u, a in old.items()}
    good, other = rh.adapter_folders(home)
    assert other == []
    states = rh.db_rows(home, "SELECT status FROM fleets")
    assert [s[0] for s in states] == ["done"]
    assert {r[0] for r in rh.db_rows(home, "SELECT status FROM runs")} == {"done", "interrupted"} \
        or {r[0] for r in rh.db_rows(home, "SELECT status FROM runs")} == {"done"}
    rh.load_peft(good[pairs[("ada", "tiny-wide")][0]], tiny_wide_dir)
    if point == "candidate-compiling":  # the rerun continued the killed compile, not step 0
        folder = good[pairs[("ada", "tiny-wide")][0]]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["tokens"]["resumed_from_step"], manifest["tokens"]


# ------------------------------------------------------------------------------ import
def _wal_over(home: Path, size: int):
    wal = home / "idiolect.db-wal"
    return lambda: wal.exists() and wal.stat().st_size > size


def _sleep(s: float):
    return lambda: time.sleep(s) or True


# name -> (format, the moment: a condition polled after the start, or kill_at for the driver)
IMPORT_KILLS = {
    "jsonl-inserting": ("jsonl", _wal_over, None),
    "mbox-inserting": ("mbox", _wal_over, None),
    "jsonl-reading": ("jsonl", None, "idiolect.vault.store:import_sources"),
    "jsonl-committed": ("jsonl", None, "idiolect.vault.store:import_sources:after"),
    "mbox-early": ("mbox", lambda home, _: _sleep(0.5), None),
}


@pytest.mark.parametrize("point", [pytest.param(k, marks=() if k == "jsonl-inserting" else
                                                pytest.mark.slow) for k in IMPORT_KILLS])
def test_import_killed_is_all_or_nothing_then_rerun_completes(point, isolated_home, tmp_path):
    from idiolect.vault.ingest import read_source

    home = isolated_home
    fmt, moment, kill_at = IMPORT_KILLS[point]
    first = rh.big_jsonl(tmp_path / "first.jsonl", 300, start=10**6)
    assert rh.run(home, "user", "import", "ada", first).returncode == 0
    big = rh.big_jsonl(tmp_path / "big.jsonl", 20000) if fmt == "jsonl" else \
        rh.big_mbox(tmp_path / "big.mbox", 12000)
    before = rh.digests(home, "ada")
    full = before | {m.digest for m in read_source(big)}
    assert len(before) == 300 and len(full) > len(before) + 10000

    stderr = tmp_path / "import.err"
    p = rh.spawn(home, "user", "import", "ada", big, kill_at=kill_at, stderr_path=stderr)
    if moment is not None:
        assert rh.wait_for(moment(home, 256 << 10), p, every=0.002), stderr.read_text()
        rh.kill9(p)
    else:
        p.wait(timeout=300)
    assert p.returncode == -9, stderr.read_text()
    after_kill = rh.digests(home, "ada")
    assert after_kill in (before, full), (len(before), len(after_kill), len(full))
    if point in ("jsonl-inserting", "mbox-inserting", "jsonl-reading"):
        assert after_kill == before  # killed before the one transaction committed
    if point == "jsonl-committed":
        assert after_kill == full
    assert rh.integrity(home) == "ok"
    imports = rh.db_rows(home, "SELECT added FROM imports ORDER BY at")
    assert sum(r[0] for r in imports) == len(after_kill)  # the import log matches the vault

    r = rh.run(home, "user", "import", "ada", big, "--json")
    assert r.returncode == 0, r.stderr
    (report,) = json.loads(r.stdout)
    assert report["added"] == len(full) - len(after_kill)
    assert rh.digests(home, "ada") == full and rh.integrity(home) == "ok"


def test_import_sources_is_one_transaction_for_all_sources(isolated_home):
    """store.import_sources: several sources in one transaction; a failure in the second
    leaves no message of the first."""

    from conftest import open_home
    from idiolect.vault.message import Message
    from idiolect.vault.store import all_messages, import_sources

    good = [Message("s", f"body {i}") for i in range(5)]
    broken = [Message("s", "fine"), Message(None, "no subject")]  # digest raises TypeError
    with open_home() as home:
        conn = home.conn
        with pytest.raises(TypeError):
            import_sources(conn, "ada", [("a.jsonl", "jsonl", good), ("b.jsonl", "jsonl", broken)])
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM imports").fetchone()[0] == 0
        results = import_sources(conn, "ada", [("a.jsonl", "jsonl", good),
                                               ("b.jsonl", "jsonl", good[:2])])
        assert [(r.source, r.added, r.duplicates) for r in results] == [
            ("a.jsonl", 5, 0), ("b.jsonl", 0, 2)]
        assert len(all_messages(conn, "ada")) == 5


def test_cli_import_of_two_sources_killed_between_them_imports_neither(isolated_home,
                                                                      tmp_path):
    home = isolated_home
    a = rh.big_jsonl(tmp_path / "a.jsonl", 200)
    b = rh.big_jsonl(tmp_path / "b.jsonl", 200, start=10**6)
    # new_id is called once per message and once per import row: call 300 is inside b's
    # inserts, whichever way the sources are committed
    p = rh.spawn(home, "user", "import", "ada", a, b, kill_at="idiolect.vault.store:new_id@300")
    p.communicate(timeout=120)
    assert p.returncode == -9
    assert rh.digests(home, "ada") == set()  # all sources, or none
