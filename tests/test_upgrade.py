"""Upgrade on a base change: 2 users recompiled from tiny to tiny-wide, evaluated, gated,
promoted or rejected with reasons; failures isolated; a killed fleet run resumes; executors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from test_transport import (  # noqa: F401  (fixtures)
    add_user, compile_on, more_bases, run_cli, tiny_other_dir, tiny_wide_dir)


def small_eval():
    from idiolect.evaluate.run import EvalConfig
    from idiolect.generate import GenerationConfig

    return EvalConfig(generation=GenerationConfig(max_new_tokens=8, batch_size=4, seed=1),
                      limit=4, perplexity_tokens=96, samples=1)


# A gate any candidate passes against the old adapter's scores (the tiny models write noise).
OPEN = dict(authorship_tol=1.0, distance_tol=1e6)


@pytest.fixture
def cohort(tmp_path, tiny_base, more_bases) -> dict[str, str]:
    """ada (plain prose) and bob (SHOUTED lines), each with an active adapter on tiny."""
    add_user(tmp_path, "ada", "plain")
    add_user(tmp_path, "bob", "shout")
    return {u: compile_on(u, "tiny").id for u in ("ada", "bob")}


def run_upgrade(**kw):
    from idiolect.fleet import LocalExecutor
    from conftest import open_home
    from idiolect.upgrade import GateConfig, upgrade

    kw.setdefault("gate", GateConfig(**OPEN))
    kw.setdefault("executor", LocalExecutor(max_workers=1))
    return upgrade(open_home(), "tiny-wide", eval_config=small_eval(), **kw)


def states(user: str) -> dict[str, list[str]]:
    from conftest import open_home

    out: dict[str, list[str]] = {}
    for r in open_home().conn.execute("SELECT id, base, state FROM adapters WHERE user=?"
                               " ORDER BY created_at, id", (user,)):
        out.setdefault(f"{r['base']}:{r['state']}", []).append(r["id"])
    return out


# ------------------------------------------------------------------------------ pure parts
def test_replay_recipe_keeps_settings_and_drops_missing_modules():
    from idiolect.upgrade import replay_recipe

    fp = {"modules": {"model.layers.0.self_attn.q_proj": [96, 96],
                      "model.layers.0.self_attn.v_proj": [48, 96]}}
    old = {"schema_version": 1, "rank": 8, "alpha": 16, "lr": 1e-4, "threads": 7,
           "target_modules": ["q_proj", "v_proj", "gate_proj"]}
    recipe, notes = replay_recipe(old, fp, threads=2)
    assert (recipe.rank, recipe.alpha, recipe.lr, recipe.threads) == (8, 16, 1e-4, 2)
    assert recipe.target_modules == ["q_proj", "v_proj"]
    assert notes == ["target modules ['gate_proj'] do not exist on the new base: dropped"]
    recipe, notes = replay_recipe(old | {"target_modules": ["c_attn"]}, fp)
    assert recipe.target_modules == ["q_proj", "v_proj"] and len(notes) == 2
    assert replay_recipe(old | {"target_modules": ["q_proj"]}, fp)[1] == []
    # adapting the top 8 of 30 layers becomes the top 10 of 36 on a deeper base
    deep = fp | {"num_layers": 36}
    recipe, notes = replay_recipe(old | {"lora_layers": 8, "target_modules": ["q_proj"]}, deep,
                                  source_fp={"num_layers": 30})
    assert recipe.lora_layers == 10 and notes == [
        "lora_layers: top 8 of 30 layers -> top 10 of 36 (same share of the depth)"]
    recipe, _ = replay_recipe(old | {"lora_layers": 8}, fp | {"num_layers": 2},
                              source_fp={"num_layers": 30})
    assert recipe.lora_layers == 1
    # the frozen base's dtype is the new base's own, not the one resolved for the old base
    recipe, notes = replay_recipe(old | {"base_dtype": "bfloat16", "target_modules": ["q_proj"]},
                                  fp, target_base="qwen2.5-coder-1.5b")
    assert recipe.base_dtype == "float32" and notes == [
        "base_dtype: bfloat16 -> float32 (the new base's own)"]
    recipe, notes = replay_recipe(old | {"target_modules": ["q_proj"]}, fp,
                                  target_base="smollm2-135m")
    assert recipe.base_dtype == "auto"
    assert notes == ["base_dtype: float32 -> auto (the new base's own)"]


def _result(ap, fd, verbatim=0, flagged=0):
    return {"adapter_scores": {"authorship_probability": ap, "fingerprint_distance": fd},
            "calibration": {"authorship_probability": {"floor": 0.3, "ceiling": 0.9},
                            "fingerprint_distance": {"floor": 2.0, "ceiling": 0.5}},
            "novelty": {"verbatim": verbatim, "flagged": flagged, "flag_words": 20}}


def test_gate_against_old_scores_floor_and_novelty():
    from idiolect.errors import InputError
    from idiolect.pipeline import GateConfig, gate

    old = {"authorship_probability": 0.44, "fingerprint_distance": 0.86}
    cfg = GateConfig(authorship_tol=0.02, distance_tol=0.02)
    assert gate(_result(0.51, 0.83), old, cfg)["passed"]           # the paper's recompile
    assert gate(_result(0.43, 0.87), old, cfg)["passed"]           # within tolerance
    g = gate(_result(0.40, 0.90), old, cfg)
    assert not g["passed"] and g["against"] == "old"
    assert g["reasons"] == ["authorship probability 0.400 < old 0.440 beyond noise (0.000 + 0.02)",
                            "fingerprint distance 0.900 > old 0.860 beyond noise (0.000 + 0.02)"]
    g = gate(_result(0.35, 1.5), None, cfg)                         # no old scores: the floor
    assert g["passed"] and g["against"] == "floor"
    g = gate(_result(0.25, 2.5), None, cfg)
    assert not g["passed"] and g["reasons"][0].startswith("authorship probability 0.250 is not"
                                                          " above the floor 0.300")
    g = gate(_result(0.9, 0.5, verbatim=1, flagged=2), old, cfg)   # great scores, but copies
    assert not g["passed"] and [r.split(":")[0] for r in g["reasons"]] == ["novelty", "novelty"]
    assert gate(_result(0.9, 0.5, verbatim=1), old, GateConfig(max_verbatim=1))["passed"]
    with pytest.raises(InputError, match="distance_tol"):
        GateConfig(distance_tol=-1)


def _with_se(scores: dict, ap_se: float, fd_se: float) -> dict:
    return scores | {"intervals": {"authorship_probability": {"se": ap_se},
                                   "fingerprint_distance": {"se": fd_se}}}


def test_gate_refuses_only_beyond_noise():
    """With bootstrap standard errors the bar moves by z * se of the difference: the same drop
    is noise on a few noisy prompts and a real loss on many steady ones."""
    from idiolect.pipeline import GateConfig, gate

    cfg = GateConfig()  # no fixed tolerance: z = 1.645 standard errors of the difference
    old = _with_se({"authorship_probability": 0.50, "fingerprint_distance": 0.80}, 0.05, 0.04)
    noisy = _result(0.42, 0.88)
    noisy["adapter_scores"] = _with_se(noisy["adapter_scores"], 0.05, 0.04)
    g = gate(noisy, old, cfg)  # 0.08 down, 0.08 up, allowance 1.645 * sqrt(2) * se
    assert g["passed"], g["reasons"]
    assert g["bar"]["authorship_probability"] == pytest.approx(0.50 - 1.645 * 0.05 * 2 ** 0.5)
    steady_old = _with_se(dict(old), 0.01, 0.01)
    steady = _result(0.42, 0.88)
    steady["adapter_scores"] = _with_se(steady["adapter_scores"], 0.01, 0.01)
    g = gate(steady, steady_old, cfg)
    assert not g["passed"] and len(g["reasons"]) == 2
    assert g["reasons"][0] == "authorship probability 0.420 < old 0.500 beyond noise (0.023)"
    assert gate(steady, steady_old, GateConfig(z=6))["passed"]  # a wider allowance


# ------------------------------------------------------------------------------ end to end
def test_upgrade_two_users_promotes_keeps_old_and_rolls_back(cohort):
    from conftest import open_home
    from idiolect import adapters
    from idiolect.manifest import Manifest
    from idiolect.upgrade import fleet_status, plan

    previous = compile_on("ada", "tiny-wide").id  # ada already has an adapter on tiny-wide
    assert [(p["user"], p["old_adapter"], p["skip"]) for p in plan(open_home().conn, "tiny-wide")] == [
        ("ada", cohort["ada"], None), ("bob", cohort["bob"], None)]
    assert plan(open_home().conn, "tiny-wide", from_base="tiny-other") == []
    assert plan(open_home().conn, "tiny-wide", ["bob"], from_base="tiny-other")[0]["skip"] == (
        "no active adapter on tiny-other")
    r = run_upgrade()
    assert r["summary"] == {"promoted": 2, "rejected": 0, "failed": 0, "skipped": 0}
    assert not r["resumed"] and [u["user"] for u in r["users"]] == ["ada", "bob"]
    home = open_home()
    conn = home.conn
    for u in r["users"]:
        assert u["status"] == "promoted" and u["old_base"] == "tiny"
        assert u["old_adapter"] == cohort[u["user"]]
        assert u["transport"]["verdict"] == "incompatible"
        assert "tensor shapes differ" in u["transport"]["message"]
        assert u["gate"]["passed"] and u["gate"]["against"] == "old"
        # the bar: the old adapter (no stored scores) was scored now, with the same protocol,
        # on its own base; its stored scores are exactly the bar the candidate was held to
        old_eval = json.loads(adapters.get(conn, cohort[u["user"]])["metrics"])["eval"]
        assert u["gate"]["bar_source"] == f"{cohort[u['user']]} scored on tiny now"
        assert u["gate"]["bar_adapter"] == cohort[u["user"]]
        assert old_eval["protocol"] == u["gate"]["protocol"] and old_eval["n"] == 4
        assert u["gate"]["old"] == old_eval["adapter_scores"]
        assert u["recipe"]["rank"] == 4 and u["recipe_notes"] == []
        assert u["examples"] == 24  # replayed: the old compile used the whole training pool
        m = Manifest.read(Path(adapters.get(conn, u["candidate"])["path"]))
        assert m.base_name == "tiny-wide" and m.recipe["alpha"] == 8
        assert m.metrics["eval"]["n"] == 4  # scored on the frozen eval set
        assert m.gate["status"] == "promoted" and m.gate["bar_adapter"] == cohort[u["user"]]
        # the old adapter on the OLD base stays as it was: active there
        assert adapters.active(conn, u["user"], "tiny")["id"] == cohort[u["user"]]
        assert adapters.active(conn, u["user"], "tiny-wide")["id"] == u["candidate"]
    ada_new = r["users"][0]["candidate"]
    assert states("ada")["tiny-wide:retired"] == [previous]
    n_diag = conn.execute("SELECT COUNT(*) FROM transports WHERE to_base='tiny-wide'").fetchone()
    assert n_diag[0] == 2
    fs = fleet_status(conn, r["fleet"])
    assert fs["status"] == "done" and [u["status"] for u in fs["users"]] == ["promoted"] * 2
    assert fs["users"][0]["result"]["candidate"] == ada_new

    # rollback on the new base restores the adapter that was active there before
    assert adapters.rollback(conn, "ada", "tiny-wide") == {"active": previous, "retired": ada_new}
    # the same upgrade again: everyone already done, nothing recompiled
    again = run_upgrade()
    assert again["summary"]["skipped"] == 2 and again["fleet"] != r["fleet"]
    assert all("already promoted" in u["reason"] for u in again["users"])


def test_refused_gate_rejects_with_reason_and_cli_exits_4(cohort, run_cli):
    from idiolect import adapters
    from conftest import open_home
    from idiolect.vault import store

    home = open_home()

    conn = home.conn
    # ada's old adapter has stored scores no candidate can match (distance 0.0), made under the
    # protocol the CLI's settings below give (stored scores count only under the same protocol)
    from dataclasses import replace

    from idiolect.evaluate.run import EvalConfig, protocol_digest
    from idiolect.evaluate.run import cohort as home_cohort

    cfg = EvalConfig(limit=4)
    cfg.generation = replace(cfg.generation, max_new_tokens=8)
    digest = store.eval_set(conn, "ada")["digest"]
    adapters.update_metrics(conn, cohort["ada"], {"eval": {
        "eval_digest": digest, "n": 4,
        "protocol": protocol_digest(cfg, digest, home_cohort(conn).reference),
        "adapter_scores": {"authorship_probability": 1.0, "fingerprint_distance": 0.0}}})
    r = run_cli("upgrade", "--to", "tiny-wide", "--users", "ada", "--no-compare-old",
                "--authorship-tol", "0", "--distance-tol", "0", "--limit", "4",
                "--max-new-tokens", "8", "--workers", "1", "--json")
    assert r.exit_code == 4, r.stderr
    out = json.loads(r.stdout)
    (ada,) = out["users"]
    assert ada["status"] == "rejected" and ada["gate"]["against"] == "old"
    assert "fingerprint distance" in ada["reason"] and "> old 0.000 beyond noise" in ada["reason"]
    assert ada["gate"]["bar_source"] == f"stored scores of {cohort['ada']} (same protocol)"
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the gate refused 1 of 1 users (ada); ada: ")
    assert lines[0].startswith("config {") and json.loads(lines[0][7:])["gate"]["distance_tol"] == 0
    assert lines[1].startswith("fleet ") and lines[2].startswith("[1/1] ada: rejected:")
    assert states("ada") == {"tiny:active": [cohort["ada"]],
                             "tiny-wide:rejected": [ada["candidate"]]}
    assert states("bob") == {"tiny:active": [cohort["bob"]]}  # not asked for


def test_one_user_failure_does_not_stop_the_other_then_resume(cohort, monkeypatch):
    import idiolect.compile.run as run

    real = run.compile_adapter

    def flaky(conn, req, *a, **kw):
        if req.user == "ada":
            raise RuntimeError("disk full\nwith a second line")
        return real(conn, req, *a, **kw)

    monkeypatch.setattr(run, "compile_adapter", flaky)
    r = run_upgrade()
    by = {u["user"]: u for u in r["users"]}
    assert by["ada"]["status"] == "failed" and by["ada"]["reason"] == (
        "RuntimeError: disk full (+1 more)")
    assert by["bob"]["status"] == "promoted"
    assert r["summary"] == {"promoted": 1, "rejected": 0, "failed": 1, "skipped": 0}
    from conftest import open_home
    from idiolect.upgrade import fleet_status

    assert fleet_status(open_home().conn, r["fleet"])["status"] == "partial"
    assert "tiny-wide:active" not in states("ada")

    monkeypatch.setattr(run, "compile_adapter", real)
    again = run_upgrade()
    assert again["resumed"] and again["fleet"] == r["fleet"]
    by = {u["user"]: u for u in again["users"]}
    assert by["bob"]["status"] == "skipped" and by["ada"]["status"] == "promoted"
    assert fleet_status(open_home().conn, r["fleet"])["status"] == "done"


class KilledAfterFirst:
    """An executor whose driver is killed (Ctrl-C) after the first user finished."""

    name, threads_per_job = "killed", 0

    def describe(self):
        return {"executor": self.name, "threads_per_job": 0}

    def map(self, fn, jobs):
        first, *rest = list(jobs)
        yield first, fn(first)
        raise KeyboardInterrupt


def test_killed_fleet_run_resumes_with_the_users_not_done(cohort):
    from idiolect import adapters
    from conftest import open_home
    from idiolect.upgrade import fleet_status

    with pytest.raises(KeyboardInterrupt):
        run_upgrade(executor=KilledAfterFirst())
    home = open_home()
    conn = home.conn
    fs = fleet_status(conn)
    assert fs["status"] == "interrupted"
    assert {u["user"]: u["status"] for u in fs["users"]} == {"ada": "promoted", "bob": "pending"}
    ada_new = fs["users"][0]["candidate"]
    # a hard kill right after ada's promotion, before her row was written, looks like this:
    conn.execute("UPDATE fleet_users SET status='running', finished_at=NULL WHERE user='ada'")

    again = run_upgrade()
    assert again["resumed"] and again["fleet"] == fs["id"]
    by = {u["user"]: u for u in again["users"]}
    assert by["ada"]["status"] == "promoted" and by["ada"]["candidate"] == ada_new
    assert "interrupted" in by["ada"]["reason"]  # recovered, not recompiled
    assert by["bob"]["status"] == "promoted"
    assert len(states("ada")["tiny-wide:active"]) == 1 and "tiny-wide:rejected" not in states("ada")
    assert adapters.active(conn, "bob", "tiny-wide")["id"] == by["bob"]["candidate"]
    assert fleet_status(conn)["status"] == "done"


# ------------------------------------------------------------------------------ executors
def test_local_executor_sizes_and_isolates_failures():
    from idiolect.fleet import LocalExecutor
    from idiolect.fleet.executors import cpu_count

    cores = cpu_count()
    ex = LocalExecutor()
    assert ex.max_workers == max(1, cores // min(4, cores))
    assert ex.threads_per_job == cores // ex.max_workers
    assert LocalExecutor(max_workers=2).threads_per_job == max(1, cores // 2)
    assert LocalExecutor(max_workers=1).threads_per_job == cores  # inline: all cores
    assert LocalExecutor(threads_per_job=1).max_workers == cores
    for workers in (1, 2):  # inline, then a spawn process pool
        out = dict(LocalExecutor(max_workers=workers).map(math.sqrt, [4.0, -1.0, 9.0]))
        assert out[4.0] == 2.0 and out[9.0] == 3.0 and isinstance(out[-1.0], ValueError)


def test_ray_executor_without_ray_is_a_clear_error(monkeypatch):
    import sys

    from idiolect.errors import IdiolectError
    from idiolect.fleet import RayExecutor, make_executor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(IdiolectError, match=r"pip install 'idiolect\[ray\]'"):
        RayExecutor()
    with pytest.raises(IdiolectError, match="ray"):
        make_executor("ray")


@pytest.mark.slow
def test_upgrade_on_a_local_ray_cluster(cohort):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'idiolect[ray]')")
    from idiolect.fleet import RayExecutor

    r = run_upgrade(executor=RayExecutor(num_cpus=2, threads_per_job=1))
    assert r["executor"]["executor"] == "ray"
    assert r["summary"] == {"promoted": 2, "rejected": 0, "failed": 0, "skipped": 0}
    for u in r["users"]:
        assert u["transport"]["verdict"] == "incompatible" and u["gate"]["passed"]


@pytest.mark.slow
def test_upgrade_with_a_process_pool(cohort):
    from idiolect.fleet import LocalExecutor

    r = run_upgrade(executor=LocalExecutor(max_workers=2, threads_per_job=1))
    assert r["summary"] == {"promoted": 2, "rejected": 0, "failed": 0, "skipped": 0}


# ------------------------------------------------------------------------------ fleet status
def test_fleet_status_and_list_show_each_run_live(cohort, cli_run):
    with pytest.raises(KeyboardInterrupt):
        run_upgrade(executor=KilledAfterFirst())
    r = cli_run("fleet", "status", "--json")
    assert r.exit_code == 0, r.stderr
    fs = json.loads(r.stdout)
    assert (fs["to_base"], fs["status"]) == ("tiny-wide", "interrupted")
    assert fs["config"]["executor"]["executor"] == "killed"
    assert fs["counts"] == {"pending": 1, "running": 0, "promoted": 1, "rejected": 0, "failed": 0}
    assert [(u["user"], u["status"]) for u in fs["users"]] == [("ada", "promoted"),
                                                               ("bob", "pending")]
    assert fs["users"][0]["result"]["warm_start"]["mode"] == "none"
    text = cli_run("fleet", "status").stdout.splitlines()
    assert text[0] == f"fleet {fs['id']} -> tiny-wide: interrupted (killed, all threads per user)"
    assert text[2].split() == ["ada", "promoted", "passed", "the", "gate", "against", "the", "old"]
    assert text[3].strip().startswith(f"{cohort['ada']} on tiny -> candidate ")
    assert text[4].split() == ["bob", "pending"] and text[-1] == "1 pending, 1 promoted"

    again = run_upgrade()  # resumes the same fleet; then one more run, all skipped
    latest = run_upgrade()
    r = cli_run("fleet", "list", "--json")
    rows = json.loads(r.stdout)
    assert [(x["id"], x["status"]) for x in rows] == [(latest["fleet"], "done"),
                                                      (again["fleet"], "done")]
    assert rows[1]["counts"]["promoted"] == 2 and rows[0]["skipped"] == 2
    listed = cli_run("fleet", "list").stdout.splitlines()
    assert listed[0].startswith(f"{latest['fleet']}  ") and listed[0].split()[2:5] == [
        "->", "tiny-wide", "done"]
    assert "  no user recompiled; the last attempt skipped 2  (local, inline, " in listed[0]
    assert listed[1].split()[2:6] == ["->", "tiny-wide", "done", "2"]
    r = cli_run("fleet", "status", again["fleet"])  # ada finished by the first attempt
    assert r.stdout.splitlines()[-1] == "2 promoted; the last attempt skipped 1"
    r = cli_run("fleet", "status", "NOPE")
    assert r.exit_code == 3 and r.stderr.startswith("error: no fleet run 'NOPE'")
