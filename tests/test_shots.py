"""Shots (``Recipe.shots``): the user's nearest own training messages in every prompt, the same
in training, evaluation, drafting and serving; never the message itself, a near-copy of it, or
a message outside the training split."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from test_transport import RECIPE, add_user


@dataclass
class Msg:
    subject: str
    body: str
    id: str = ""


POOL = [
    Msg("refs: avoid reading packed-refs twice", "We read the packed-refs file twice here."),
    Msg("doc: fix a typo in git-log", "The manual page said 'teh'."),
    Msg("refs: drop a useless lock", "The lock on refs was taken for nothing."),
    Msg("t/perf: add a test", "A perf test for the index."),
]


def test_nearest_by_subject_words_then_pool_order():
    from idiolect.compile.retrieve import ShotIndex

    index = ShotIndex(POOL)
    assert index.nearest("refs: speed up the packed-refs reader", 2) == [0, 2]
    assert index.nearest("doc: typo", 1) == [1]
    # no word in common: still k shots, in pool order; fewer only when the pool is smaller
    assert index.nearest("zzz qqq", 2) == [0, 1]
    assert index.nearest("refs", 9, exclude={0}) == [2, 1, 3]
    assert index.nearest("refs", 0) == []
    assert ShotIndex([Msg("réunion: l'ordre du jour", "Bonjour"), *POOL]).nearest(
        "la réunion de lundi", 1) == [0]  # words are Unicode words


def test_training_shots_never_the_message_or_a_near_copy():
    from idiolect.compile.retrieve import shots_for

    body = "This one sentence about the refs lock is long enough to have several word 8-grams."
    pool = [Msg("refs: a", body), Msg("refs: b", body + " Thanks."), Msg("refs: c", "Other."),
            Msg("doc: d", "Unrelated text here.")]
    shots = shots_for(pool, pool, 2, training=True)
    assert shots[0] == [("refs: c", "Other."), ("doc: d", "Unrelated text here.")]
    assert all((m.subject, m.body) not in s for m, s in zip(pool, shots))
    assert shots_for(pool, ["refs: b"], 1) == [[("refs: b", body + " Thanks.")]]
    assert shots_for(pool, pool, 0) == [[]] * 4
    with pytest.raises(ValueError):
        shots_for(pool, pool[:2], 1, training=True)


def test_prompt_without_shots_is_unchanged_and_shots_are_cut(tiny_model_dir):
    from transformers import AutoTokenizer

    from idiolect.compile.prompts import SHOTS_HEADER, cut_shots, encode, prompt_text

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = prompt_text(tok, "fix: cache", ["a@b"])
    assert prompt_text(tok, "fix: cache", ["a@b"], []) == plain and SHOTS_HEADER not in plain
    long_body = " ".join(["the cache index is read twice"] * 30)
    (shot,) = cut_shots(tok, [("refs: x", long_body)], shot_tokens=10)
    assert shot[1].endswith(" [...]") and len(tok(shot[1][:-6])["input_ids"]) <= 11
    with_shots = prompt_text(tok, "fix: cache", ["a@b"], [shot])
    assert SHOTS_HEADER in with_shots and "Subject: refs: x" in with_shots
    assert with_shots.index("refs: x") < with_shots.index("Subject: fix: cache")
    # the body reads the same tokens with shots or without, whatever their length
    for subject in ("fix: cache", "x " * 200):
        for n in (96, 300):
            e0 = encode(tok, subject, [], long_body, n)
            e1 = encode(tok, subject, [], long_body, n, shots=[shot, ("s", "short")])
            assert e1.body_tokens == e0.body_tokens > 0
            assert e1.input_ids[e1.prompt_len:] == e0.input_ids[e0.prompt_len:]
    with_two = encode(tok, "fix: cache", [], long_body, 96, shots=[shot, ("s", "short")])
    room = with_two.prompt_len - encode(tok, "fix: cache", [], long_body, 96).prompt_len
    one = encode(tok, "fix: cache", [], long_body, 96, shots=[shot, ("s", "short")],
                 shot_room=room - 1)  # the last shot no longer fits: dropped, not the body
    assert one.prompt_len < with_two.prompt_len and one.body_tokens == with_two.body_tokens
    assert "short" not in tok.decode(one.input_ids[:one.prompt_len])


def test_recipe_fields_and_budget():
    from idiolect.compile.recipe import SHOT_OVERHEAD, Recipe
    from idiolect.errors import InputError

    r = Recipe(shots=2, shot_tokens=50)
    assert r.example_tokens == r.max_tokens + 2 * (50 + SHOT_OVERHEAD)
    assert Recipe.from_dict({"rank": 4}).shots == 0  # recipes saved before shots existed
    for bad in ({"shots": -1}, {"shot_tokens": 0}, {"shots": 8, "batch_tokens": 256}):
        with pytest.raises(InputError):
            Recipe(**bad)


def test_compile_eval_draft_and_serve_use_the_same_shots(tmp_path, tiny_base, home, cli_run):
    from conftest import force_promote
    from idiolect.bases.load import resolve
    from idiolect.compile.prompts import SHOTS_HEADER
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.retrieve import adapter_recipe, user_shots
    from idiolect.compile.run import CompileRequest, _prepare, compile_adapter
    from idiolect.vault import store

    add_user(tmp_path, "ada", "plain")
    recipe = Recipe.from_dict(RECIPE | {"shots": 1, "shot_tokens": 12, "max_tokens": 160,
                                        "batch_tokens": 512})
    msgs = store.training_messages(home.conn, "ada")[0]
    _, tok, _, examples, _ = _prepare(resolve(home, tiny_base), recipe, msgs,
                                      CompileRequest("ada", tiny_base), lambda s: None)
    texts = [tok.decode(e.input_ids[:e.prompt_len]) for e in examples]
    assert all(SHOTS_HEADER in t for t in texts)
    for m, t in zip(msgs, texts):  # never its own body in its prompt
        assert m.body[:40] not in t
    m = compile_adapter(home, CompileRequest("ada", tiny_base, recipe=recipe))
    assert m.recipe["shots"] == 1
    force_promote(home, m.id)
    row = home.conn.execute("SELECT * FROM adapters WHERE id=?", (m.id,)).fetchone()
    assert adapter_recipe(row).shots == 1
    shots = user_shots(home.conn, "ada", adapter_recipe(row), tok, ["fix: cache"])[0]
    assert len(shots) == 1
    held = {x.id for x in store.eval_messages(home.conn, "ada")
            + store.reference_messages(home.conn, "ada")}
    pool = store.training_messages(home.conn, "ada")[0]
    assert not held & {x.id for x in pool}
    assert shots[0][0] in {x.subject for x in pool}
    r = cli_run("draft", "ada", "--base", tiny_base, "--subject", "fix: cache",
                "--max-new-tokens", "6", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["adapter"] == m.id and out["shots"] == [shots[0][0]]

    from idiolect.serve.models import ServedModels

    served = ServedModels(home, tiny_base)
    target = served.resolve("idiolect/ada")
    assert not served.without_shots(target)  # (its index is built off the event loop)
    assert served.shots(target, "fix: cache") == shots
    assert not served.without_shots(target)  # it shows shots: asked for off the loop each time
    assert served.shots(served.resolve(tiny_base), "fix: cache") == []
    assert served.without_shots(served.resolve(tiny_base))


def test_eval_reads_the_held_out_bodies_after_the_same_shots(tmp_path, tiny_base, home):
    """The adapter's perplexity is read after its shots, on the same body tokens as without."""
    from conftest import force_promote
    from idiolect.compile.prompts import cut_shots
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.retrieve import shots_for
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.evaluate.run import EvalConfig, evaluate, perplexity
    from idiolect.generate import GenerationConfig, load_for_inference
    from idiolect.vault import store

    add_user(tmp_path, "ada", "plain")
    add_user(tmp_path, "bob", "shout")
    recipe = Recipe.from_dict(RECIPE | {"shots": 2, "shot_tokens": 8, "max_tokens": 160,
                                        "batch_tokens": 512})
    m = compile_adapter(home, CompileRequest("ada", tiny_base, recipe=recipe))
    force_promote(home, m.id)
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=8, batch_size=4, seed=1))
    r = evaluate(home, "ada", base=tiny_base, cfg=cfg)
    model, tok, _ = load_for_inference(home, tiny_base, m.id)
    held = store.eval_messages(home.conn, "ada")
    pool = store.training_messages(home.conn, "ada")[0]
    shots = [cut_shots(tok, s, 8) for s in shots_for(pool, held, 2)]
    with_shots = perplexity(model, tok, held, cfg.perplexity_tokens, shots)
    assert r["adapter_scores"]["perplexity"] == pytest.approx(with_shots)
    assert with_shots != pytest.approx(perplexity(model, tok, held, cfg.perplexity_tokens))


def test_a_body_that_goes_on_into_its_prompt_is_cut_there():
    from idiolect.compile.prompts import INSTRUCTION, SHOTS_HEADER, cut_echo

    body = "Keep the cache.\n\n"
    assert cut_echo(body + INSTRUCTION.format(to="x", subject="y")) == "Keep the cache."
    assert cut_echo(body + "Write the body of this message in our own voice") == "Keep the cache."
    assert cut_echo(body + SHOTS_HEADER + "\n\nSubject: z") == "Keep the cache."
    # only where a line starts with them, and never to nothing
    assert cut_echo("  Write the body of this message.") == "Write the body of this message."
    assert cut_echo("We Write the body of this message ") == "We Write the body of this message"
    assert cut_echo(" Write the tests first.\n") == "Write the tests first."
