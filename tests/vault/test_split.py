"""Held out in content (vault/split.py): no eval or reference body is equal to, mostly inside,
or mostly containing a message the adapter trains on; the reference split is frozen with the
eval set, and an old eval set gets one once."""

from __future__ import annotations

import json

from conftest import synthetic_messages


def _import(home, user: str, rows: list[dict]) -> None:
    from idiolect.vault.message import Message
    from idiolect.vault.store import import_messages

    msgs = [Message(subject=r["subject"], body=r["body"], to=r["to"], date=r["date"],
                    source_id=r["id"]) for r in rows]
    import_messages(home.conn, user, msgs, source="test", fmt="jsonl")


def test_content_index_equal_contained_and_containing():
    from idiolect.vault.split import ContentIndex

    long = ("the cache index must be rebuilt when the object tree changes so we read it twice"
            " and then write the new file back")
    idx = ContentIndex([long, "Thanks, applied."])
    assert idx.overlaps("  THANKS,   applied. ")            # equal once normalized
    assert idx.overlaps("Hi all,\n" + long + "\nMore soon.")  # the protected body, inside
    assert idx.overlaps(" ".join(long.split()[:14]))          # most of it: half its 8-grams
    assert idx.overlaps(" ".join(long.split()[:8]))           # a short message all inside it
    # one shared 8-gram is neither most of the protected body nor most of this long message
    assert not idx.overlaps(" ".join(long.split()[:8]) + " but then " + "other words here " * 6)
    assert not idx.overlaps("Thanks, applied. I also fixed the leak in the config path.")
    assert not idx.overlaps("a completely different message about memory leaks in refs")


def test_duplicates_across_the_split_are_never_trained_on(home):
    """The same body under two subjects (deduplication keys on subject + body) and bodies that
    quote most of another: whatever is held out, nothing repeating it is in the training pool."""
    from idiolect.vault import store
    from idiolect.vault.split import ContentIndex

    rows = synthetic_messages("ada", 60)
    for i in range(0, 60, 3):  # every third message: its body again under another subject
        rows.append(rows[i] | {"id": f"dup-{i}", "subject": "Re: " + rows[i]["subject"]})
    for i in range(1, 60, 6):  # and a reply that quotes it whole, with a line added
        rows.append(rows[i] | {"id": f"quote-{i}", "subject": "Fwd: x",
                               "body": "See below.\n" + rows[i]["body"] + "\nThanks"})
    _import(home, "ada", rows)
    ev = store.freeze_eval(home.conn, "ada", size=20, seed=0)
    held = store.eval_messages(home.conn, "ada") + store.reference_messages(home.conn, "ada")
    assert len(ev["reference_ids"]) > 0 and not set(ev["reference_ids"]) & set(ev["message_ids"])
    train, _ = store.training_messages(home.conn, "ada")
    index = ContentIndex([m.body for m in held])
    assert [m.id for m in train if index.overlaps(m.body)] == []
    ids = {m.id for m in train}
    assert not ids & set(ev["message_ids"]) and not ids & set(ev["reference_ids"])
    # the quarantine is real work here: some copies of held-out bodies were set aside
    assert len(train) + len(held) < len(store.all_messages(home.conn, "ada"))
    # a message imported later that repeats an eval body is not trained on either
    late = store.eval_messages(home.conn, "ada")[0]
    _import(home, "ada", [{"id": "late", "subject": "resend", "body": late.body,
                           "to": [], "date": None}])
    again, _ = store.training_messages(home.conn, "ada")
    assert late.body not in {m.body for m in again}


def test_an_old_eval_set_gets_its_reference_split_once(home):
    from idiolect.vault import store

    _import(home, "bo", synthetic_messages("bo", 40))
    store.freeze_eval(home.conn, "bo", size=8)
    home.conn.execute("UPDATE eval_sets SET reference_ids=NULL, reference_digest=NULL,"
                      " reference_at=NULL")  # as frozen before reference splits existed
    first = [m.id for m in store.reference_messages(home.conn, "bo")]
    row = home.conn.execute("SELECT reference_ids, reference_at FROM eval_sets").fetchone()
    assert first and json.loads(row["reference_ids"]) == sorted(first) and row["reference_at"]
    assert [m.id for m in store.reference_messages(home.conn, "bo")] == first  # frozen now
    assert store.eval_set(home.conn, "bo")["size"] == 8


def test_the_classifier_is_fitted_on_the_reference_split_only(home):
    """What the style scorers learn from is never what an adapter trains on."""
    from idiolect.evaluate.authorship import cohort_digest
    from idiolect.evaluate.run import EvalConfig, cohort, protocol_digest
    from idiolect.vault import store

    for user, style in (("ada", "plain"), ("bo", "shout")):
        _import(home, user, synthetic_messages(user, 40, style=style))
        store.freeze_eval(home.conn, user, size=8)
    c = cohort(home.conn)
    assert c.users == ["ada", "bo"]
    for user in c.users:
        assert not set(c.reference[user]) & set(c.train[user])
        assert not set(c.reference[user]) & set(c.held[user])
    ev = store.eval_set(home.conn, "ada")
    assert protocol_digest(EvalConfig(), ev["digest"], c.reference) != protocol_digest(
        EvalConfig(), ev["digest"], c.train)
    assert cohort_digest(c.reference) != cohort_digest(c.train)
    # what evaluate fits and caches is keyed by the reference splits' digest, never training's
    from idiolect.evaluate.run import cohort_models

    _, clf = cohort_models(home, c.reference)
    cached = sorted(p.name for p in home.cache_dir.glob("authorship-*.pkl"))
    assert cached == [f"authorship-{cohort_digest(c.reference)[:16]}.pkl"]
    assert clf.digest == cohort_digest(c.reference)
