"""The build pipeline: every new adapter is a candidate until the gate (or a recorded --force)
promotes it; first adapters are gated against the floor, later ones against the active one;
a gate that cannot run leaves a candidate; refusals change nothing."""

from __future__ import annotations

import json

import pytest

from test_transport import RECIPE, add_user  # noqa: F401

# A gate any candidate passes against an old adapter's scores (the tiny models write noise).
OPEN = dict(authorship_tol=1.0, distance_tol=1e6)


def small_eval():
    from idiolect.evaluate.run import EvalConfig
    from idiolect.generate import GenerationConfig

    return EvalConfig(generation=GenerationConfig(max_new_tokens=8, batch_size=4, seed=1),
                      limit=4, perplexity_tokens=96, samples=1)


def _request(user="ada"):
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest

    return CompileRequest(user, "tiny", recipe=Recipe.from_dict(RECIPE))


def _snapshot(home) -> list:
    return [tuple(r) for r in home.conn.execute(
        "SELECT id, state, gate FROM adapters ORDER BY id")]


@pytest.fixture
def pair(tmp_path, tiny_base, home):
    add_user(tmp_path, "ada", "plain")
    add_user(tmp_path, "bob", "shout")
    return home


def test_first_adapter_is_gated_against_the_floor_then_forced_then_replaced(pair):
    from idiolect import adapters
    from idiolect.manifest import Manifest
    from idiolect.pipeline import GateConfig, build, promote

    home = pair
    first, d1 = build(home, _request(), eval_cfg=small_eval())
    # the tiny model writes noise: it does not beat other users' real text, so it is refused
    assert d1.status == "rejected" and d1.passed is False and d1.against == "floor"
    assert any("floor" in r for r in d1.reasons) and d1.bar_adapter is None
    assert adapters.get(home.conn, first.id)["state"] == "rejected"
    assert adapters.active(home.conn, "ada", "tiny") is None
    stored = Manifest.read(home.adapters_dir / first.id).gate
    assert stored["status"] == "rejected" and stored["reasons"] == d1.reasons
    assert stored["candidate"] == d1.candidate and stored["forced"] is False

    forced = promote(home, first.id, force=True, eval_cfg=small_eval())
    assert forced.status == "promoted" and forced.forced and forced.passed is False
    assert forced.reason.startswith("forced despite the gate: ")
    assert adapters.active(home.conn, "ada", "tiny")["id"] == first.id
    assert Manifest.read(home.adapters_dir / first.id).gate["forced"] is True

    # a second adapter is gated against the active one (its stored scores, same protocol)
    second, d2 = build(home, _request(), eval_cfg=small_eval(), gate_cfg=GateConfig(**OPEN))
    assert d2.status == "promoted" and d2.passed and d2.against == "old" and not d2.forced
    assert d2.bar_adapter == first.id and d2.bar_source == f"stored scores of {first.id}" \
        " (same protocol)"
    assert d2.old == json.loads(adapters.get(home.conn, first.id)["metrics"])["eval"][
        "adapter_scores"]
    assert adapters.get(home.conn, first.id)["state"] == "retired"
    assert adapters.rollback(home.conn, "ada", "tiny") == {"active": first.id,
                                                           "retired": second.id}


def test_a_candidate_stays_a_candidate_when_the_gate_cannot_run(tmp_path, tiny_base, home):
    from idiolect import adapters
    from idiolect.pipeline import build, promote

    add_user(tmp_path, "solo", "plain")  # alone in the home: no cohort to compare against
    m, d = build(home, _request("solo"), eval_cfg=small_eval())
    assert d.status == "candidate" and d.passed is None
    assert "cohort of at least 2 users" in d.reason and "gate cannot run" in d.reason
    assert adapters.get(home.conn, m.id)["state"] == "candidate"
    again = promote(home, m.id)
    assert again.status == "candidate" and adapters.active(home.conn, "solo", "tiny") is None
    forced = promote(home, m.id, force=True)
    assert forced.status == "promoted" and forced.forced
    assert "without the gate" in forced.reason
    assert adapters.active(home.conn, "solo", "tiny")["id"] == m.id


def test_compile_without_evaluation_is_a_candidate_never_active(pair):
    from idiolect import adapters
    from idiolect.pipeline import build

    m, d = build(pair, _request(), evaluate=False)
    assert d.status == "candidate" and f"idiolect adapter promote {m.id}" in d.reason
    assert adapters.get(pair.conn, m.id)["state"] == "candidate"


def test_promote_refusals_change_nothing(pair, tmp_path):
    from idiolect.compile.run import compile_adapter
    from idiolect.errors import IdiolectError, NotFound
    from idiolect.pipeline import promote

    home = pair
    a = compile_adapter(home, _request())
    b = compile_adapter(home, _request())
    promote(home, a.id, force=True, evaluate=False)
    promote(home, b.id, force=True, evaluate=False)  # a is retired now, b active
    before = _snapshot(home)
    with pytest.raises(IdiolectError, match="already active"):
        promote(home, b.id)
    assert _snapshot(home) == before
    with pytest.raises(IdiolectError, match="is retired: `idiolect adapter rollback ada"):
        promote(home, a.id)
    assert _snapshot(home) == before
    c = compile_adapter(home, _request())
    before = _snapshot(home)
    with pytest.raises(IdiolectError, match="belongs to 'ada', not 'bob'"):
        promote(home, c.id, user="bob")
    assert _snapshot(home) == before
    with pytest.raises(IdiolectError, match="without evaluation needs force"):
        promote(home, c.id, evaluate=False)
    with pytest.raises(IdiolectError, match="must be another adapter of 'ada'"):
        promote(home, c.id, against=c.id)  # a bar of itself would pass trivially
    assert _snapshot(home) == before
    # its base's folder vanished (a local base removed by hand)
    home.conn.execute("UPDATE local_bases SET path=? WHERE name='tiny'", (str(tmp_path / "x"),))
    with pytest.raises(NotFound, match="folder .* is gone"):
        promote(home, c.id)
    assert _snapshot(home) == before


def test_a_decision_checks_the_state_again_when_it_writes(pair):
    """Two promotions racing: the gate compared against one active adapter, another became
    active meanwhile, so the write refuses and changes nothing."""
    from idiolect import adapters
    from idiolect.compile.run import compile_adapter
    from idiolect.errors import IdiolectError
    from idiolect.pipeline import promote

    home = pair
    a = compile_adapter(home, _request())
    b = compile_adapter(home, _request())
    promote(home, a.id, force=True, evaluate=False)
    before = _snapshot(home)
    with pytest.raises(IdiolectError, match="became active while"):
        adapters.decide(home.conn, b.id, "active", {"status": "promoted"}, expect_active=None)
    with pytest.raises(IdiolectError, match="became active meanwhile"):
        adapters.decide(home.conn, a.id, "rejected", {"status": "rejected"})
    assert _snapshot(home) == before


def test_a_gate_that_cannot_run_leaves_a_rejected_adapter_rejected(pair, tmp_path):
    from idiolect import adapters
    from idiolect.manifest import Manifest
    from idiolect.pipeline import build, promote

    home = pair
    m, d = build(home, _request(), eval_cfg=small_eval())
    assert d.status == "rejected"
    home.conn.execute("DELETE FROM eval_sets WHERE user='bob'")  # the cohort shrinks to one
    record = Manifest.read(home.adapters_dir / m.id).gate
    again = promote(home, m.id)
    assert again.passed is None and "cannot run" in again.reason
    assert adapters.get(home.conn, m.id)["state"] == "rejected"
    assert Manifest.read(home.adapters_dir / m.id).gate == record


def test_promote_refuses_a_base_that_is_not_installed(pair):
    from idiolect import adapters
    from idiolect.bases.registry import REGISTRY
    from idiolect.errors import NotFound
    from idiolect.manifest import Manifest
    from idiolect.pipeline import promote

    name = "qwen2.5-coder-1.5b"
    if REGISTRY[name].part_paths() is not None:
        pytest.skip(f"{name} is installed here")
    m = Manifest(id="01TESTNOTINSTALLED000000000", user="ada", created_at="2026-01-01T00:00:00",
                 base={"name": name, "fingerprint": {"digest": "d" * 64}},
                 snapshot={"digest": "s" * 64}, recipe={})
    adapters.register(pair.conn, m, pair.adapters_dir / m.id)
    before = _snapshot(pair)
    with pytest.raises(NotFound, match=f"base '{name}' is not installed: run `idiolect base"):
        promote(pair, m.id, force=True)
    assert _snapshot(pair) == before


def test_cli_compile_gated_and_adapter_promote(pair, cli_run, tmp_path):
    """The commands: a refused compile exits 4 and keeps the adapter as rejected; `adapter
    promote` without --force refuses it again (exit 4), with --force promotes and says so;
    `adapter show` and `adapter list` show that it was forced."""
    (tmp_path / "r.json").write_text(json.dumps(RECIPE))
    r = cli_run("compile", "ada", "--base", "tiny", "--recipe", tmp_path / "r.json",
                "--eval-limit", "4", "--json")
    assert r.exit_code == 4, r.stderr
    out = json.loads(r.stdout)
    assert out["state"] == "rejected" and out["gate"]["against"] == "floor"
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: adapter {out['id']} was refused by the gate (")
    assert last.endswith("it is kept as rejected; ada has no active adapter on tiny")
    again = cli_run("adapter", "promote", out["id"], "--limit", "4")
    assert again.exit_code == 4 and "--force" in again.stderr
    forced = cli_run("adapter", "promote", out["id"], "--limit", "4", "--force")
    assert forced.exit_code == 0 and forced.stdout.startswith(f"{out['id']}: promoted (forced):")
    show = cli_run("adapter", "show", out["id"])
    assert "state active" in show.stdout and "promoted (FORCED)" in show.stdout
    assert json.loads(cli_run("adapter", "show", out["id"], "--json").stdout)["forced"] is True
    listed = cli_run("adapter", "list").stdout.split()
    assert listed[listed.index(out["id"]):][:5] == [out["id"], "ada", "tiny", "active", "(forced)"]
    dup = cli_run("adapter", "promote", out["id"])
    assert dup.exit_code == 1 and dup.stderr.strip().endswith("nothing changed")
