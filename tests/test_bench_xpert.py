"""bench/xpert.py --windows: a catalog of several adapters per git author, from disjoint windows of
their earlier messages, with the new user's messages after every window."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.fixture
def authors(tmp_path, monkeypatch):
    import xpert

    for name in ("ann", "bob"):
        with (tmp_path / f"{name}.jsonl").open("w") as f:
            for i in range(40):
                f.write(json.dumps({"id": f"{name}{i}", "user": name, "subject": f"{name} {i}",
                                    "to": [], "body": f"Body number {i} of {name}, long enough"
                                    " to be kept by the importer's cleaning."}) + "\n")
    monkeypatch.setattr(xpert, "AUTHORS", tmp_path)
    return xpert


def _args(xpert, *extra):
    return xpert.parse_args(["--corpus", "git-authors", "--catalog-styles", "ann",
                             "--user-styles", "bob", "--publish-examples", "6", "--eval-size",
                             "2", "--examples", "4", *extra])


def _subjects(msgs):
    return [m.subject for m in msgs]


def test_one_window_is_the_split_of_before(authors):
    args = _args(authors)
    pubs, new = authors.corpus_messages(args, "ann")
    assert [(k, u) for k, u, _ in pubs] == [("ann", "pub-ann")]
    assert _subjects(pubs[0][2]) == [f"ann {i}" for i in range(8)]
    assert _subjects(new) == [f"ann {i}" for i in range(8, 14)]
    pubs, new = authors.corpus_messages(args, "bob")  # outside the catalog: same new window
    assert pubs == [] and _subjects(new) == [f"bob {i}" for i in range(8, 14)]


def test_windows_are_disjoint_and_the_new_user_follows_them(authors):
    args = _args(authors, "--windows", "3")
    pubs, new = authors.corpus_messages(args, "ann")
    assert [(k, u) for k, u, _ in pubs] == [("ann", "pub-ann"), ("ann~2", "pub2-ann"),
                                            ("ann~3", "pub3-ann")]
    seen = [set(_subjects(m)) for _, _, m in pubs] + [set(_subjects(new))]
    assert all(len(s) == 8 for s in seen[:3]) and len(seen[3]) == 6
    assert sum(len(s) for s in seen) == len(set().union(*seen))  # no message twice
    assert _subjects(new) == [f"ann {i}" for i in range(24, 30)]
    assert [authors.author_of(k) for k, _, _ in pubs] == ["ann"] * 3
    assert authors.author_of(None) is None


def test_too_few_messages_and_no_window_are_refused(authors):
    with pytest.raises(SystemExit, match="40 messages, need 46"):
        authors.corpus_messages(_args(authors, "--windows", "5"), "ann")
    with pytest.raises(SystemExit):
        authors.parse_args(["--corpus", "styles", "--windows", "0"])


def test_style_windows_come_from_the_train_file_and_the_new_user_from_the_test_file(
        tmp_path, monkeypatch):
    import xpert

    for part in ("train", "test"):
        with (tmp_path / f"3_{part}.jsonl").open("w") as f:
            for i in range(20):
                f.write(json.dumps({"Context": f"{part} {i}", "Input": "",
                                    "Response": f"{part} text {i}"}) + "\n")
    monkeypatch.setattr(xpert, "STYLES", tmp_path)
    args = xpert.parse_args(["--catalog-styles", "3", "--user-styles", "7", "--windows", "2",
                             "--publish-examples", "6", "--eval-size", "2", "--examples", "4"])
    pubs, new = xpert.corpus_messages(args, "3")
    assert [(k, u) for k, u, _ in pubs] == [("3", "style-3"), ("3~2", "style2-3")]
    assert _subjects(pubs[0][2]) == [f"train {i}" for i in range(8)]
    assert _subjects(pubs[1][2]) == [f"train {i}" for i in range(8, 16)]
    assert _subjects(new) == [f"test {i}" for i in range(6)]
    with pytest.raises(SystemExit, match="20 texts, need 24"):
        xpert.corpus_messages(xpert.parse_args(["--catalog-styles", "3", "--windows", "3",
                                                "--publish-examples", "6", "--eval-size",
                                                "2"]), "3")


def test_a_home_holding_another_split_is_refused(authors, tmp_path):
    from idiolect.home import Home
    from idiolect.vault import store

    home = Home.open(tmp_path / "home")

    def wanted(args):
        return authors.split_users({k: authors.corpus_messages(args, k) for k in ("ann", "bob")})

    one = wanted(_args(authors))
    for user, msgs in one.items():
        store.import_messages(home.conn, user, msgs, source="t", fmt="jsonl")
        store.freeze_eval(home.conn, user, size=2)
    authors.check_home(home, one)  # the same split again: reused
    with pytest.raises(SystemExit, match="new-ann holds other messages"):
        authors.check_home(home, wanted(_args(authors, "--windows", "2")))
    with pytest.raises(SystemExit, match="holds other messages"):
        authors.check_home(home, wanted(_args(authors, "--examples", "5")))
    two = wanted(_args(authors, "--windows", "2"))
    store.import_messages(home.conn, "pub2-ann", two["pub2-ann"], source="t", fmt="jsonl")
    with pytest.raises(SystemExit, match="pub2-ann, a window this run does not publish"):
        authors.check_home(home, {u: m for u, m in one.items() if u != "new-ann"})
    store.import_messages(home.conn, "style2-3", two["pub2-ann"], source="t", fmt="jsonl")
    with pytest.raises(SystemExit, match="style2-3, a window this run does not publish"):
        authors.check_home(home, {u: two[u] for u in ("pub-ann", "pub2-ann")})
    home.close()


def test_authorship_is_scored_among_the_new_users_only(home):
    """The publisher windows of an author are not classes of their own in the evaluation's
    cohort (they would split the author's authorship probability): one class per person."""
    import xpert

    from conftest import synthetic_messages
    from idiolect.vault.message import Message
    from idiolect.vault.store import freeze_eval, import_messages

    for user, style in (("pub-ann", "plain"), ("new-ann", "plain"), ("new-bob", "shout")):
        msgs = [Message(subject=m["subject"], body=m["body"], to=m["to"], date=m["date"],
                        source_id=m["id"]) for m in synthetic_messages(user, 40, style=style)]
        import_messages(home.conn, user, msgs, source="test", fmt="jsonl")
        freeze_eval(home.conn, user, size=8)
    c = xpert.new_users_cohort(home.conn)
    assert c.users == ["new-ann", "new-bob"]
    assert set(c.train) == set(c.held) == {"new-ann", "new-bob"}
    assert c.reference["new-ann"] and c.held["new-bob"]


def _rung(messages, tokens, ppl, dist, auth, se=0.05):
    return {"messages": messages, "tokens": tokens, "perplexity": ppl,
            "fingerprint_distance": dist, "authorship_probability": auth,
            "intervals": {"fingerprint_distance": {"se": se},
                          "authorship_probability": {"se": se}}}


def test_reach_strictly_and_within_noise():
    """A warm rung reaches the cold compile on a metric strictly (point scores) or within noise
    (the gate's test on the style scores, 2% on perplexity); the goal needs all three at once
    with >= 80% less compute and >= 50% less data."""
    import xpert

    row = {"cold": _rung(250, 100_000, 20.0, 1.00, 0.40),
           "warm": [_rung(0, 0, 21.0, 1.02, 0.38),        # ppl 5% above: not within noise
                    _rung(25, 10_000, 20.3, 1.05, 0.35),  # all within noise, none strictly
                    _rung(50, 30_000, 19.0, 0.99, 0.41)]}  # all strictly
    r = xpert.reaches(row)
    assert r["by"]["perplexity"]["messages"] == 50 and r["all"]["messages"] == 50
    assert r["within_noise"]["fingerprint_distance"]["messages"] == 0
    assert r["within_noise"]["perplexity"]["messages"] == 25
    best = r["all_within_noise"]
    assert (best["messages"], best["compute_saved"], best["data_saved"]) == (25, 0.9, 0.9)
    assert best["goal"] and not r["all"]["goal"]  # 30,000 of 100,000 tokens: 70% saved
    assert xpert.reach(row, None, noise=True, ppl_tol=0.01)["messages"] == 50
    # a tight interval makes the same gap a real one; a score without one is judged strictly
    tight = {"cold": _rung(250, 100_000, 20.0, 1.00, 0.40, se=0.001),
             "warm": [_rung(25, 10_000, 19.0, 1.05, 0.35, se=0.001)]}
    assert xpert.reach(tight, "authorship_probability", noise=True) is None
    del tight["warm"][0]["intervals"]
    assert xpert.reach(tight, "fingerprint_distance", noise=True) is None
    assert xpert.goal_summary({"a": row | {"reach": r}, "b": tight}) == {
        "met": ["a"], "of": 2, "goal": xpert.GOAL, "needed": 6}
    # data saved counts the messages each compile trained on where recorded: the vault's eval,
    # reference and quarantine leave the cold compile fewer than it asked for
    row["cold"]["trained_messages"] = 190
    for w in row["warm"]:
        w["trained_messages"] = w["messages"]
    assert xpert.reach(row, None, noise=True)["data_saved"] == round(1 - 25 / 190, 3)


def test_ladder_options(authors):
    args = _args(authors, "--confirm", "3", "--warm-over", '{"epochs": 1}')
    assert args.start == "confirmed" and args.warm_over == {"epochs": 1}
    assert _args(authors).start == "card"
    with pytest.raises(SystemExit):
        _args(authors, "--start", "confirmed")  # nothing confirmed to start from
    assert _args(authors, "--confirm", "2", "--start", "merged").start == "merged"
    with pytest.raises(SystemExit):  # a merge needs two confirmed candidates
        _args(authors, "--confirm", "1", "--start", "merged")
    with pytest.raises(SystemExit):
        _args(authors, "--warm-over", "[1]")
    with pytest.raises(SystemExit):  # would change which adapters can seed it: not here
        _args(authors, "--warm-over", '{"shots": 0}')


def test_reuse_finds_only_the_same_cold_compile(tiny_base, home):
    """--reuse scores a ladder's cold compile of an earlier run again instead of training it
    again, but only one made for the same user, messages, parent and recipe (resolved: the
    registry's "auto" base dtype too), never a copy registered to another user."""
    import xpert

    from conftest import synthetic_messages
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.vault.message import Message
    from idiolect.vault.store import freeze_eval, import_messages

    msgs = [Message(subject=m["subject"], body=m["body"], to=m["to"], date=m["date"],
                    source_id=m["id"]) for m in synthetic_messages("ada", 40)]
    for user in ("ada", "bob"):  # the same messages: the same snapshot digest
        import_messages(home.conn, user, msgs, source="test", fmt="jsonl")
        freeze_eval(home.conn, user, size=8)
    recipe = Recipe.from_dict({"rank": 4, "alpha": 8, "epochs": 1, "max_tokens": 96,
                               "batch_tokens": 384, "checkpoint_every": 2,
                               "base_dtype": "auto"})
    req = CompileRequest("ada", "tiny", 12, recipe)
    assert xpert.compiled(home, req) is None
    m = compile_adapter(home, req)
    assert xpert.compiled(home, req).id == m.id
    assert xpert.compiled(home, CompileRequest("bob", "tiny", 12, recipe)) is None
    assert xpert.compiled(home, CompileRequest("ada", "tiny", 11, recipe)) is None
    other = Recipe.from_dict(recipe.to_dict() | {"lr": recipe.lr * 2})
    assert xpert.compiled(home, CompileRequest("ada", "tiny", 12, other)) is None
    assert xpert.compiled(home, CompileRequest("ada", "tiny", 12, recipe, parent=m.id)) is None
    # a copy registered to bob (as the bench scores a pulled neighbour "as is") has bob's row
    # and the snapshot of ada's messages, which are bob's too: still not bob's cold compile
    xpert.own_copy(home, m.id, "bob")
    assert xpert.compiled(home, CompileRequest("bob", "tiny", 12, recipe)) is None


def test_select_for_the_ladder_users_only():
    """--select-for ladder runs selection only for the ladder users (a rerun with another warm
    recipe); the oracle needs every new user's selection."""
    import xpert

    args = xpert.parse_args(["--corpus", "git-authors", "--catalog-styles", "ann", "bob",
                             "--user-styles", "cy", "--ladder-styles", "bob", "cy",
                             "--select-for", "ladder"])
    assert args.select_keys == ["bob", "cy"]
    assert xpert.parse_args(["--catalog-styles", "1", "--user-styles", "7"]).select_keys == [
        "1", "7"]
    with pytest.raises(SystemExit):
        xpert.parse_args(["--select-for", "ladder", "--oracle"])
    with pytest.raises(SystemExit):
        xpert.parse_args(["--select-for", "ladder", "--no-ladder"])
    with pytest.raises(SystemExit):  # a ladder user nobody selects for
        xpert.parse_args(["--catalog-styles", "1", "--user-styles", "7", "--ladder-styles", "9"])


def test_goal_tables_group_users_by_what_they_started_from(tmp_path, monkeypatch):
    """readme_tables' warm-start goal tables: a new user counts once however many runs it met the
    goal in, "own" is the user's author (a catalog key ``K`` or ``K~2``; a merge of two
    (``--start merged``) is own when it holds the user's, and a group of its own), a row where
    no warm rung ran is no try of a warm start, and a listed run without its file is
    skipped."""
    import readme_tables as t

    def ladder(selected, goal, warm=True, messages=25, decision="pull"):
        best = {"messages": messages, "tokens": 1, "compute_saved": 0.9, "data_saved": 0.9,
                "goal": goal} if goal is not None else None
        return {"selected": selected, "decision": decision if warm else "none",
                "start": "merged" if decision == "merge" else "confirmed",
                "warm": [{"messages": messages}] if warm else [],
                "reach": {"all_within_noise": best}}

    def run(name, corpus, publish, ladders):
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "run_info": {"config": {"corpus": corpus, "publish_examples": str(publish),
                                    "examples": 250}, "git": "abc1234"},
            "meta_info": {"cpu": {"model": "Test CPU"}}, "published": {}, "ladders": ladders,
            "warm_goal": {"met": [k for k, v in ladders.items() if (v["reach"]["all_within_noise"]
                                                                    or {}).get("goal")]}}))

    run("a", "git-authors", 500, {"ann": ladder("ann~2", True), "bob": ladder("ann", False),
                                  "cy": ladder("ann", None, warm=False)})
    run("b", "git-authors", 500, {"ann": ladder("ann", True, messages=0)})
    run("c", "styles", 100, {"ann": ladder("bob", None)})  # same key, another corpus
    run("d", "git-authors", 500, {"dee": ladder("ann+bob", False, decision="merge"),
                                  "eve": ladder("ann+eve~2", False, decision="merge")})
    monkeypatch.setattr(t, "RESULTS", tmp_path)
    monkeypatch.setattr(t, "XPERT_LADDERS", ["a", "b", "c", "d", "missing"])
    users = t._ladder_users(t.XPERT_LADDERS)
    assert [(u["run"], u["user"], u["own"], u["neighbour"]) for u in users] == [
        ("a", "ann", True, "ann~2"), ("a", "bob", False, "ann"), ("a", "cy", False, None),
        ("b", "ann", True, "ann"), ("c", "ann", False, "bob"), ("d", "dee", False, "ann+bob"),
        ("d", "eve", True, "ann+eve~2")]
    assert list(t._met_by(users)) == [("git-authors", "ann")]
    goal = t.xpert_goal(t.XPERT_LADDERS)
    assert "in some run: 1 of the 6 needed: ann (git-authors, from own adapter, 500 messages)." in goal
    assert "| a | git-authors | cy | none (none) |" in goal
    assert "| d | git-authors | dee | ann + bob merged (others', 500 messages each) |" in goal
    assert "| d | git-authors | eve | ann + eve~2 merged (own and another's, 500 messages each) |" in goal
    table = t.xpert_neighbour()
    assert "own author or style (publisher asked for 500 messages; catalog of 0;" \
           " git-authors): new users meeting the goal | 1 of 1 (ann) |" in table
    assert "another author or style (publisher asked for 500 messages; catalog of 0;" \
           " git-authors): new users meeting the goal | 0 of 1 |" in table  # bob; not cy
    assert "from a merge of two other authors' or styles' adapters (publisher asked for 500" \
           " messages; catalog of 0; git-authors): new users meeting the goal | 0 of 1 |" in table
    assert "(publisher asked for 100 messages; catalog of 0; styles): new users meeting the" \
           " goal | 0 of 1 |" in table


def test_base_rungs_are_planned_plotted_and_tabled(authors, tmp_path, monkeypatch, capsys):
    """--base-rungs: each ladder rung's messages also compiled from the bare base with the warm
    recipe (what the neighbour adds); the plan says so, the plot draws them, and the ladder table
    lists them after the warm rungs."""
    import readme_tables as t

    assert authors.main(["--corpus", "git-authors", "--catalog-styles", "ann",
                         "--ladder-styles", "ann", "--base-rungs", "--plan"]) == 0
    assert "and the same rungs from the bare base" in capsys.readouterr().out

    def rung(messages, ppl):
        return {"messages": messages, "tokens": 100 * messages, "steps": messages, "train_s": 1.0,
                "perplexity": ppl, "fingerprint_distance": 1.0, "authorship_probability": 0.5}

    row = {"selected": "ann", "decision": "pull", "start": "confirmed",
           "cold": rung(250, 20.0) | {"base": rung(0, 30.0)},
           "warm": [rung(0, 22.0), rung(25, 21.0)], "base_rungs": [rung(25, 25.0)]}
    doc = {"ladders": {"ann": row},
           "run_info": {"config": {"examples": 250, "warm_over": '{"epochs": 1}'}, "git": "abc",
                        "command": "python bench/xpert.py", "wall_s": 1.0, "status": "ok"},
           "meta_info": {"cpu": {"model": "Test CPU"}}}
    (tmp_path / "run.json").write_text(json.dumps(doc))
    monkeypatch.setattr(authors, "RESULTS", tmp_path)
    assert authors.main(["--replot", str(tmp_path / "run.json"), "--name", "plot"]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 0
    monkeypatch.setattr(t, "RESULTS", tmp_path)
    table = t.xpert_ladder("run")
    assert "| ann | from the base, warm recipe, 25 | 25 | 2,500 | 1 | 25.00 |" in table


def test_selection_tables_name_the_corpus_and_count_the_catalogs_styles(tmp_path, monkeypatch):
    """A styles run's selection line (README's XPerT table) says styles, and counts the top-1
    matches among the new users whose style is in the catalog (issue #21's styles goal)."""
    import readme_tables as t

    users = {"1": {"best": "1~2", "selected_rank": 1, "confirmed_rank": 1},
             "2": {"best": "2", "selected_rank": 3, "confirmed_rank": 1},
             "3": {"best": "3", "selected_rank": 2, "confirmed_rank": 2},
             "7": {"best": "1", "selected_rank": 1, "confirmed_rank": 1}}
    (tmp_path / "xpert_styles_w2.json").write_text(json.dumps({
        "run_info": {"config": {"corpus": "styles", "confirm": "12", "probe": "16"},
                     "git": "abc1234"},
        "meta_info": {"cpu": {"model": "Test CPU"}}, "published": {"1": {}, "1~2": {}},
        "oracle": {"users": users, "of": 4, "in_catalog": 3, "selected_is_best": 2,
                   "confirmed_is_best": 3},
        "selection": {u: {"in_catalog": u != "7", "confirmed": {"seconds": 60.0 + i}}
                      for i, u in enumerate(users)}}))
    monkeypatch.setattr(t, "RESULTS", tmp_path)
    d = t._load("xpert_styles_w2")
    assert t._in_catalog_best(d) == (1, 2, 3)  # style 7 (not in the catalog) not counted
    table = t.xpert_neighbour()
    assert ("| top-1 equal to the oracle's best, 4 new users of the XPerT styles (3 of styles"
            " with adapters of their training texts in the catalog), catalog of 2: card alone;"
            " card then confirming its top 12 on 16 of the user's messages | 2 of 4; 3 of 4"
            " (60-63 s a user); of the 3 in the catalog: 1; 2 |") in table
    assert "new git authors" not in table
