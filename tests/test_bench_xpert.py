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


def test_too_few_messages_and_windows_on_styles_are_refused(authors):
    with pytest.raises(SystemExit, match="40 messages, need 46"):
        authors.corpus_messages(_args(authors, "--windows", "5"), "ann")
    with pytest.raises(SystemExit):
        authors.parse_args(["--corpus", "styles", "--windows", "2"])


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
