"""Both papers at once (issue #5): a base change recompiles each user from the nearest catalog
adapter compiled for the NEW base (XPerT warm start), or from the bare base when none fits; the
report records the decision so a bench can compare the compute with a plain recompile."""

from __future__ import annotations

from idiolect.manifest import Manifest

import json
import pickle
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import home_at  # noqa: E402
from test_transport import (  # noqa: E402,F401  (fixtures)
    add_user, compile_on, more_bases, run_cli, tiny_other_dir, tiny_wide_dir)
from test_upgrade import OPEN, cohort, small_eval  # noqa: E402,F401  (cohort: a fixture)

TOKEN = "fleet-token"


@pytest.fixture(scope="module")
def catalog_on_wide(tmp_path_factory, tiny_model_dir, tiny_wide_dir):
    """A live catalog holding one 'shout' adapter compiled for tiny-wide (the upgrade's target),
    published from a home of its own. Yields (url, catalog adapter id)."""
    from idiolect.bases.load import add_local
    from idiolect.catalog.warm_start import publish_adapter
    from idiolect.catalog.server import create_app, serve_in_thread
    from idiolect.generate import GenerationConfig
    from conftest import open_home

    root = tmp_path_factory.mktemp("fleet-xpert")
    url, stop = serve_in_thread(create_app(root / "server", TOKEN))
    with home_at(root / "publisher"):
        home = open_home()
        add_local(home, "tiny", tiny_model_dir)
        add_local(home, "tiny-wide", tiny_wide_dir)
        add_user(root, "shouty", "shout")
        m = compile_on("shouty", "tiny-wide", epochs=3, lr=1e-2)  # a neighbour worth starting from
        published = publish_adapter(home, m.id, url, TOKEN, card_source="training",
                                    embedder="hash", limit=16,
                                    cfg=GenerationConfig(max_new_tokens=48, batch_size=16,
                                                         seed=1234))
    yield url, published["id"]
    stop()


def _upgrade(url: str, threshold: float, **kw) -> dict:
    from idiolect.fleet import LocalExecutor
    from conftest import open_home
    from idiolect.upgrade import GateConfig, WarmStartConfig, upgrade

    warm = WarmStartConfig(mode="auto", catalog_url=url, threshold=threshold, texts=8,
                           card_tokens=24, embedder="hash")
    return upgrade(open_home(), "tiny-wide", gate=GateConfig(**OPEN),
                   executor=LocalExecutor(max_workers=1), eval_config=small_eval(), warm=warm,
                   **kw)


def test_user_job_with_warm_start_stays_picklable():
    from idiolect.upgrade import UserJob, WarmStartConfig

    job = UserJob(home="/h", fleet="F", user="ada", old_adapter="A", to_base="tiny-wide",
                  warm_start=WarmStartConfig(mode="auto", catalog_url="http://x", threshold=0.3))
    assert pickle.loads(pickle.dumps(job)) == job
    merging = WarmStartConfig(mode="auto", catalog_url="http://x", confirm=2, merge=True)
    assert pickle.loads(pickle.dumps(merging)).merge is True
    from idiolect.errors import InputError

    # on by default where there are two to merge; off where there are not, or when told
    assert WarmStartConfig(mode="auto", confirm=2).merge is True
    assert WarmStartConfig(mode="auto", confirm=1).merge is False
    assert WarmStartConfig(mode="auto", confirm=4, merge=False).merge is False
    with pytest.raises(InputError, match="--warm-confirm-merge needs --warm-confirm 2"):
        WarmStartConfig(mode="auto", confirm=1, merge=True)


def test_upgrade_warm_starts_from_the_catalog_then_falls_back_to_the_base(cohort, catalog_on_wide):
    from idiolect import adapters
    from idiolect.fleet.records import fleet_status
    from conftest import open_home

    url, neighbour = catalog_on_wide
    r = _upgrade(url, threshold=-1.0)  # any match of the new base is pulled
    assert r["summary"]["promoted"] == 2, r["users"]
    home = open_home()
    conn = home.conn
    for u in r["users"]:
        w = u["warm_start"]
        assert (w["mode"], w["decision"], w["adapter"], w["sources"]) == (
            "auto", "pull", neighbour, [neighbour]), w
        assert -1.0 <= w["score"] <= 1.0 and w["reason"].startswith(f"{neighbour} scores ")
        assert w["catalog"] == url and w["seconds"] > 0 and u["seconds"]["warm_start"] > 0
        cand = Manifest.read(Path(adapters.get(conn, u["candidate"])["path"]))
        assert cand.parent == neighbour == u["compile"]["parent"]
        assert cand.base_name == "tiny-wide"
        assert u["compile"]["steps"] == len(u["compile"]["loss_curve"]) > 0
    # the pulled neighbour is installed once, as a candidate, and never promoted
    assert adapters.get(conn, neighbour)["state"] == "candidate"
    fs = fleet_status(conn, r["fleet"])
    assert fs["config"]["warm_start"]["mode"] == "auto"
    assert fs["users"][0]["result"]["warm_start"]["adapter"] == neighbour
    warm_ada = r["users"][0]
    from idiolect.commands.upgrade import _upgrade_text

    assert _upgrade_text(r).splitlines()[3].strip().startswith(
        f"warm start: pull: {neighbour} scores ")

    # nothing in the catalog reaches the bar and there is only one adapter to merge: bare base
    cold = _upgrade(url, threshold=1.01, users=["ada"], redo=True)
    (ada,) = cold["users"]
    w = ada["warm_start"]
    assert (w["decision"], w["adapter"], w["sources"]) == ("none", None, []), w
    assert "below 1.01 and fewer than two adapters to merge" in w["reason"]
    assert w["score"] == warm_ada["warm_start"]["score"]  # the same card, the same match
    cand = Manifest.read(Path(adapters.get(conn, ada["candidate"])["path"]))
    assert cand.parent is None and ada["compile"]["parent"] is None
    assert _upgrade_text(cold).splitlines()[3].strip().endswith(
        "fewer than two adapters to merge; from the bare base"
        f" ({ada['warm_start']['seconds']}s)")
    # same data, order and seed: only the starting weights differ, and the first loss shows it
    assert ada["compile"]["steps"] == warm_ada["compile"]["steps"]
    assert abs(ada["compile"]["loss_first"] - warm_ada["compile"]["loss_first"]) > 1e-3


def test_warm_start_needs_a_reachable_catalog_before_any_user_starts(cli_run):
    from conftest import open_home

    r = cli_run("upgrade", "--to", "tiny-wide", "--warm-start", "auto", "--catalog-url",
                "http://127.0.0.1:9", "--json")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("error: catalog http://127.0.0.1:9: unreachable")
    assert open_home().conn.execute("SELECT COUNT(*) FROM fleets").fetchone()[0] == 0
    r = cli_run("upgrade", "--to", "tiny-wide", "--catalog-url", "http://127.0.0.1:9")
    assert r.exit_code == 2 and "--catalog-url applies to --warm-start auto only" in r.stderr
    assert json.loads(cli_run("fleet", "list", "--json").stdout) == []
