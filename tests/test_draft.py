"""`idiolect draft --n K`: K candidates from one batch, ranked by the user's own style scorer
(fitted on the training pools, never the reference splits), copies of training text last."""

from __future__ import annotations

import json

from test_transport import RECIPE, add_user


def test_draft_n_ranks_candidates_by_the_users_scorer(tmp_path, tiny_base, home, cli_run):
    from conftest import force_promote
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.draft import rank

    add_user(tmp_path, "ada", "plain")
    add_user(tmp_path, "bob", "shout")
    m = compile_adapter(home, CompileRequest("ada", "tiny", recipe=Recipe.from_dict(RECIPE)))
    force_promote(home, m.id)
    r = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--n", "3",
                "--max-new-tokens", "12", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    cands = d["candidates"]
    assert [c["rank"] for c in cands] == [1, 2, 3] and d["body"] == cands[0]["body"]
    scores = [c["score"] for c in cands]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    text = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--n", "2",
                   "--max-new-tokens", "8").stdout
    assert text.startswith("--- 1/2  P(ada) ") and "\n--- 2/2  P(ada) " in text
    # the scorer tells the two styles apart, and a copy of a training message goes last
    from idiolect.vault import store

    copy = store.training_messages(home.conn, "ada")[0][0].body
    shout = "Fix The Cache!\nAdd A Test!"
    ranked = rank(home, "ada", [shout, copy, "the cache index is read twice when we fix refs"])
    assert ranked[-1]["body"] == copy and ranked[-1]["copies_training"]
    assert ranked[0]["body"] != shout
    assert cli_run("draft", "ada", "--base", "tiny", "--subject", "x", "--n", "0").exit_code == 2
