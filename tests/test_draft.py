"""`idiolect draft --n K`: K candidates from one batch, ranked by the user's own style scorer
(fitted on the training pools, never the reference splits), copies of training text last."""

from __future__ import annotations

import json

import pytest

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
    style = ("--best-of", "1", "--rank-by", "style")  # N written, ranked by style alone
    r = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--n", "3", *style,
                "--max-new-tokens", "12", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    cands = d["candidates"]
    assert [c["rank"] for c in cands] == [1, 2, 3] and d["body"] == cands[0]["body"]
    scores = [c["score"] for c in cands]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    text = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--n", "2",
                   *style, "--max-new-tokens", "8").stdout
    assert text.startswith("--- 1/2  P(ada) ") and "\n--- 2/2  P(ada) " in text
    d = json.loads(cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--n", "3",
                           "--best-of", "1", "--max-new-tokens", "8", "--rank-by", "sense",
                           "--json").stdout)
    fits = [c["fit"] for c in d["candidates"] if not c["copies_training"]]
    assert d["rank_by"] == "sense" and len(fits) >= 2 and fits == sorted(fits, reverse=True)
    assert "  fit " in cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--n",
                               "2", "--max-new-tokens", "8", "--rank-by", "both").stdout
    assert cli_run("draft", "ada", "--base", "tiny", "--subject", "x", "--n", "2", "--rank-by",
                   "loud").exit_code == 2
    # the scorer tells the two styles apart, and a copy of a training message goes last
    from idiolect.vault import store

    copy = store.training_messages(home.conn, "ada")[0][0].body
    shout = "Fix The Cache!\nAdd A Test!"
    ranked = rank(home, "ada", [shout, copy, "the cache index is read twice when we fix refs"])
    assert ranked[-1]["body"] == copy and ranked[-1]["copies_training"]
    assert ranked[0]["body"] != shout
    assert cli_run("draft", "ada", "--base", "tiny", "--subject", "x", "--n", "0").exit_code == 2
    # one draft, the best of 3 written in one batch; --n 2 of them shows the first 2 of 3
    r = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--best-of", "3",
                "--rank-by", "both", "--max-new-tokens", "8", "--json")
    d = json.loads(r.stdout)
    assert len(d["candidates"]) == 3 and d["body"] == d["candidates"][0]["body"]
    assert d["rank_by"] == "both" and "best of 3 by both: P(ada) " in r.stderr
    text = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--best-of", "3",
                   "--n", "2", "--max-new-tokens", "8").stdout
    assert "--- 2/3  " in text and "--- 3/3" not in text
    assert cli_run("draft", "ada", "--base", "tiny", "--subject", "x", "--best-of",
                   "0").exit_code == 2
    # by default: the best of draft.BEST_OF candidates, ranked by DEFAULT_RANK_BY
    from idiolect.draft import BEST_OF, DEFAULT_RANK_BY

    r = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache", "--max-new-tokens",
                "8", "--json")
    d = json.loads(r.stdout)
    assert len(d.get("candidates", [None])) == BEST_OF
    if BEST_OF > 1:
        assert d["rank_by"] == DEFAULT_RANK_BY and d["body"] == d["candidates"][0]["body"]
        assert f"best of {BEST_OF} by {DEFAULT_RANK_BY}" in r.stderr
    # the same sample, as sampled and ended at its last full sentence
    from idiolect.draft import end_at_sentence

    raw, whole = (json.loads(cli_run("draft", "ada", "--base", "tiny", "--subject", "fix: cache",
                                     "--max-new-tokens", "12", "--best-of", "1", flag,
                                     "--json").stdout)["body"]
                  for flag in ("--as-sampled", "--whole-sentences"))
    assert whole == end_at_sentence(raw)


def test_rank_by_sense_and_both(tmp_path, home):
    """sense orders by the fits; both by the sum of the two ranks; copies stay last."""
    from idiolect.draft import rank
    from idiolect.vault import store

    add_user(tmp_path, "ada", "plain")
    add_user(tmp_path, "bob", "shout")
    copy = store.training_messages(home.conn, "ada")[0][0].body
    shout = "Fix The Cache!\nAdd A Test!"
    plain = "the cache index is read twice when we fix refs"
    bodies = [shout, copy, plain]
    style = [c["body"] for c in rank(home, "ada", bodies)]
    assert style[0] == plain and style[-1] == copy
    fits = [0.9, 2.0, 0.1]  # the copy fits best, and still goes last
    by_sense = rank(home, "ada", bodies, fits=fits, by="sense")
    assert [c["body"] for c in by_sense] == [shout, plain, copy]
    assert [c["fit"] for c in by_sense] == [0.9, 0.1, 2.0]
    # both: shout is style 2nd (1) + sense 1st (0) = 1, plain 0 + 1 = 1: a tie, sense decides
    assert [c["body"] for c in rank(home, "ada", bodies, fits=fits, by="both")][:2] == [shout, plain]
    assert [c["body"] for c in rank(home, "ada", bodies, fits=[0.1, 2.0, 0.9], by="both")][0] == plain
    with pytest.raises(ValueError, match="one fit per body"):
        rank(home, "ada", bodies, by="sense")


def test_self_fit_is_a_likelihood_ratio_that_batching_does_not_change(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.draft import other_training_subjects, self_fit

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    bodies = ["the cache index is read twice", "ok", "Add a test for the refs backend, and "
              "make sure it covers the packed case too"]
    assert self_fit(model, tok, "fix: cache", bodies, ["fix: cache"]) == pytest.approx(
        [0.0, 0.0, 0.0], abs=1e-5)
    assert self_fit(model, tok, "fix: cache", bodies, []) == [0.0, 0.0, 0.0]
    others = ["docs: typo", "refs: avoid reading the packed-refs file twice"]
    together = self_fit(model, tok, "fix: cache", bodies, others)
    alone = [self_fit(model, tok, "fix: cache", [b], others)[0] for b in bodies]
    assert together == pytest.approx(alone, abs=1e-4) and any(abs(x) > 1e-3 for x in together)
    pool = ["Fix: Cache", "a", "b", "c", "d", "e", "", "a"]
    picked = other_training_subjects("fix: cache", pool, k=4)
    assert len(picked) == 4 and len(set(picked)) == 4 and "Fix: Cache" not in picked
    assert picked == other_training_subjects("fix: cache", pool, k=4)
    assert other_training_subjects("x", ["x", "X "], k=4) == []


def test_ranked_order_sums_places_among_the_non_copies_and_ties_share_a_place():
    """both differs from sense and from style; a copy's style or fit moves no other body; an
    unranked style (all scores equal) leaves both to sense."""
    from idiolect.draft import ranked_order

    scores, fits = [0.9, 0.5, 0.1], [0.0, 1.0, 0.5]  # style 0, 1, 2; sense 1, 2, 0
    assert ranked_order(scores, fits, set(), "style") == [0, 1, 2]
    assert ranked_order(scores, fits, set(), "sense") == [1, 2, 0]
    assert ranked_order(scores, fits, set(), "both") == [1, 0, 2]  # 0+2, 1+0, 2+1
    # style 0, copy, 1; sense 1, 0, copy: among 0 and 1 alone the places tie, sense decides
    assert ranked_order([0.9, 0.1, 0.5], [0.5, 0.9, 0.1], {2}, "both") == [1, 0, 2]
    assert ranked_order([0.9, 0.1, 0.5], [0.5, 0.9, 2.0], {2}, "sense") == [1, 0, 2]
    # every style score equal (or none: one user in the home): both is sense
    assert ranked_order([0.5] * 3, [0.1, 0.9, 0.5], set(), "both") == [1, 2, 0]
    assert ranked_order([None] * 3, [0.1, 0.9, 0.5], set(), "both") == [1, 2, 0]
    assert ranked_order([None] * 3, [0.0] * 3, set(), "both") == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown ranking"):
        ranked_order(scores, fits, set(), "loud")


def test_end_at_sentence_keeps_whole_sentences_only_when_enough_is_left():
    from idiolect.draft import end_at_sentence

    cut = "We read it twice. This is an optimization. We should save (so that we"
    assert end_at_sentence(cut) == "We read it twice. This is an optimization."
    assert end_at_sentence("Done (see above.) and then") == "Done (see above.)"
    assert end_at_sentence("It is done.") == "It is done."
    # version numbers are no sentence end; too little left keeps the body as sampled
    assert end_at_sentence("Version 2.5 is out and") == "Version 2.5 is out and"
    tail = "Fix. " + "and a long unfinished tail " * 4
    assert end_at_sentence(tail) == tail
    assert end_at_sentence("First part done.\n\nSecond part cut sh") == "First part done."
