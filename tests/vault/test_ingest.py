"""Importers, on files each test writes itself; bad input is always a one-line InputError."""

from __future__ import annotations

import json
import mailbox
import os
import shutil
import subprocess
import tempfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idiolect.errors import InputError
from idiolect.vault import ingest
from idiolect.vault.ingest import FORMATS, detect_format, read_source

CORPORA = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora"

MBOX = """\
From alice@example.com Mon Jan  3 10:00:00 2022
From: Alice <alice@example.com>
To: Bob <bob@example.com>
Cc: carol@example.com
Subject: Lunch plans
Date: Mon, 3 Jan 2022 10:00:00 -0500
Message-ID: <m1@example.com>

Shall we try the new place on Friday?
>From what I hear it is good.

From bob@example.com Mon Jan  3 11:00:00 2022
From: Bob <bob@example.com>
To: alice@example.com
Subject: Re: Lunch plans
Date: Mon, 3 Jan 2022 11:00:00 -0500
Message-ID: <m2@example.com>

Friday works.

From ALICE@example.com Mon Jan  3 12:00:00 2022
From: Alice <ALICE@Example.com>
To: bob@example.com
Subject: RE: Re: Lunch plans
Date: Mon, 3 Jan 2022 12:00:00 -0500
Message-ID: <m3@example.com>

Great, see you there.

On Mon, 3 Jan 2022 at 11:00, Bob <bob@example.com>
wrote:
> Friday works.

-- 
Alice
Example Corp
"""


def _err(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def _mail(frm: str, subject: str, body: str, **headers) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, "bob@example.com", subject
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg


# --- happy paths -----------------------------------------------------------------------


def test_mbox_reply_quote_signature_and_address_filter(tmp_path):
    path = tmp_path / "mail.mbox"
    path.write_text(MBOX)
    msgs = read_source(path, addresses=["alice@example.com"])
    assert [m.source_id for m in msgs] == ["<m1@example.com>", "<m3@example.com>"]
    first, reply = msgs
    assert first.subject == "Lunch plans"
    assert first.body == "Shall we try the new place on Friday?\nFrom what I hear it is good."
    assert first.date == "2022-01-03T15:00:00+00:00"
    assert first.to == ["bob@example.com", "carol@example.com"]
    assert first.source == str(path.resolve())
    assert reply.subject == "Lunch plans"
    assert reply.body == "Great, see you there."
    assert len(read_source(path, "mbox")) == 3  # no addresses: everyone


def test_maildir(tmp_path):
    box = mailbox.Maildir(tmp_path / "Mail", create=True)
    for i in range(3):
        box.add(_mail("Alice <alice@example.com>", f"Note {i}", f"Body {i}.\n",
                      Message_ID=f"<n{i}@x>", Date="Tue, 4 Jan 2022 09:00:00 +0000"))
    box.add(_mail("eve@example.com", "Spam", "Buy now.\n"))
    assert detect_format(tmp_path / "Mail") == "maildir"
    msgs = read_source(tmp_path / "Mail", addresses=["alice@example.com"])
    assert sorted(m.body for m in msgs) == ["Body 0.", "Body 1.", "Body 2."]
    assert {m.source_id for m in msgs} == {"<n0@x>", "<n1@x>", "<n2@x>"}
    assert all(m.date == "2022-01-04T09:00:00+00:00" for m in msgs)


def test_eml_folder_html_alternative_and_latin1(tmp_path):
    folder = tmp_path / "emls"
    folder.mkdir()
    html_only = _mail("a@x.org", "Fwd: HTML", "unused")
    html_only.set_content(
        "<html><head><style>p{}</style></head><body><p>Hello&nbsp;<b>there</b>,</p>"
        "<div>second line</div><div>On Mon, Bob wrote:</div>"
        "<blockquote>quoted text</blockquote></body></html>",
        subtype="html",
    )
    (folder / "1.eml").write_bytes(html_only.as_bytes())
    alt = _mail("a@x.org", "Both", "Plain wins.\n")
    alt.add_alternative("<p>HTML loses</p>", subtype="html")
    (folder / "2.eml").write_bytes(alt.as_bytes())
    latin = (b"From: a@x.org\nTo: b@x.org\nSubject: =?iso-8859-1?q?Caf=E9?=\n"
             b"MIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\n"
             b"Content-Transfer-Encoding: 8bit\n\nUn caf\xe9 cr\xe8me.\n")
    (folder / "3.eml").write_bytes(latin)
    weird = latin.replace(b"iso-8859-1\n", b"x-no-such-charset\n")
    (folder / "4.eml").write_bytes(weird)
    (folder / "notes.bin").write_bytes(b"\x00ignored")
    assert detect_format(folder) == "eml"
    msgs = read_source(folder)
    assert [m.source_id for m in msgs] == ["1.eml", "2.eml", "3.eml", "4.eml"]
    assert msgs[0].subject == "HTML"
    assert msgs[0].body == "Hello there,\n\nsecond line"
    assert msgs[1].body == "Plain wins."
    assert (msgs[2].subject, msgs[2].body) == ("Café", "Un café crème.")
    assert msgs[3].body.startswith("Un caf")  # unknown charset: decoded anyway, no error
    assert msgs[2].source == str((folder / "3.eml").resolve())
    assert read_source(folder / "2.eml")[0].source_id == "2.eml"


def test_jsonl(tmp_path):
    path = tmp_path / "u.jsonl"
    rows = [
        {"id": "a1", "user": "u", "date": "2019-05-09T17:32:29-04:00", "subject": "Re: hi",
         "to": ["x@y"], "body": "Hello.\n\n> quoted\n"},
        {"id": 2, "user": "u", "date": "yesterday", "text": "Text key works."},
        {"id": "a3", "user": "v", "body": "Someone else."},
        {"id": "a4", "user": "u", "body": "> only a quote"},
    ]
    lines = [json.dumps(r) for r in rows]
    path.write_text("\ufeff" + lines[0] + "\n\n  \n" + "\n".join(lines[1:]) + "\n")
    msgs = read_source(path)
    assert [m.source_id for m in msgs] == ["a1", "2", "a3"]
    assert msgs[0].subject == "hi" and msgs[0].body == "Hello." and msgs[0].to == ["x@y"]
    assert msgs[0].date == "2019-05-09T21:32:29+00:00"
    assert msgs[1].date is None and msgs[1].subject == ""


def test_text_file_and_folder(tmp_path):
    one = tmp_path / "note.txt"
    one.write_text("Subject: Hello there\n\nFirst paragraph.\n\nSecond.\n")
    (m,) = read_source(one)
    assert (m.subject, m.body, m.source_id, m.date) == (
        "Hello there", "First paragraph.\n\nSecond.", "note.txt", None)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "b.md").write_text("No subject line here.\n")
    (folder / "a.txt").write_text("\ufeffSubject: A\nbody a\n")
    (folder / "c.txt").write_text("Subject: only a subject\n")
    (folder / "skip.doc").write_text("ignored")
    assert detect_format(folder) == "text"
    msgs = read_source(folder)
    assert [(m.source_id, m.subject, m.body) for m in msgs] == [
        ("a.txt", "A", "body a"), ("b.md", "", "No subject line here.")]


def _git(repo: Path, *args: str, name: str = "Alice A", email: str = "alice@example.com",
         date: str = "2024-01-01T00:00:00+00:00") -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    subprocess.run(["git", "-C", str(repo), "-c", f"user.name={name}", "-c", f"user.email={email}",
                    "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
                   check=True, capture_output=True, env=env)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_authors_non_merge_commits(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")

    def commit(subject, body, day, **who):
        _git(repo, "commit", "-q", "--allow-empty", "-m", subject, "-m", body,
             date=f"2024-01-{day:02d}T12:00:00+02:00", **who)

    commit("first: start", "The first change.", 1)
    _git(repo, "checkout", "-q", "-b", "side")
    commit("second: on a branch", "The second change.\n\n"
           "Signed-off-by: Alice A <alice@example.com>\nReviewed-by: Bob B <bob@example.com>", 2)
    _git(repo, "checkout", "-q", "main")
    commit("bob: his change", "Written by Bob.", 3, name="Bob B", email="bob@example.com")
    commit("third: last", "The third change.", 4)
    _git(repo, "merge", "-q", "--no-ff", "side", "-m", "Merge side", "-m", "Merge body text.",
         date="2024-01-05T00:00:00+00:00")
    assert detect_format(repo) == "git"
    msgs = read_source(repo, author="Alice A")
    assert [m.subject for m in msgs] == ["third: last", "second: on a branch", "first: start"]
    assert [m.body for m in msgs] == [
        "The third change.", "The second change.", "The first change."]
    assert msgs[0].date == "2024-01-04T10:00:00+00:00"
    assert all(len(m.source_id) == 40 and m.to == [] for m in msgs)
    assert {m.source for m in msgs} == {str(repo.resolve())}
    with pytest.raises(InputError) as e:
        read_source(repo, "git")
    assert "repo" in _err(e) and "author" in _err(e)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputError) as e:
        read_source(plain, "git", author="Alice")
    assert "plain" in _err(e) and "not a git repository" in _err(e)


@pytest.mark.skipif(not (CORPORA / "git-authors" / "jeff-king.jsonl").exists(),
                    reason="../shared/corpora/git-authors/jeff-king.jsonl is absent")
def test_real_corpus_jeff_king():
    path = CORPORA / "git-authors" / "jeff-king.jsonl"
    msgs = read_source(path)
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(msgs) >= 0.99 * len(raw) and len(msgs) >= 500
    assert msgs[0].date == "2019-05-09T21:32:29+00:00"
    assert all(m.date and m.date.endswith("+00:00") and len(m.source_id) == 40 for m in msgs)
    # the corpus is already clean: cleaning must leave nearly all of it as written
    by_id = {r["id"]: r["body"].strip() for r in raw}
    unchanged = sum(by_id[m.source_id] == m.body for m in msgs)
    assert unchanged >= 0.9 * len(msgs)


# --- detection -------------------------------------------------------------------------


def test_detect_format(tmp_path):
    cases = {"a.mbox": "x", "a.eml": "x", "a.jsonl": "x", "a.ndjson": "x", "a.txt": "x",
             "a.md": "x", "noext": "From x Mon Jan  3 10:00:00 2022\n"}
    want = ["mbox", "eml", "jsonl", "jsonl", "text", "text", "mbox"]
    for (name, text), fmt in zip(cases.items(), want):
        (tmp_path / name).write_text(text)
        assert detect_format(tmp_path / name) == fmt
        assert fmt in FORMATS
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(InputError) as e:
        detect_format(tmp_path / "data.csv")
    assert "data.csv" in _err(e)


# --- bad input -------------------------------------------------------------------------


def _raises(path, fmt="auto", **kw) -> str:
    with pytest.raises(InputError) as e:
        read_source(path, fmt, **kw)
    return _err(e)


def test_missing_path(tmp_path):
    assert "nope.mbox" in _raises(tmp_path / "nope.mbox")


@pytest.mark.parametrize("name", ["e.mbox", "e.jsonl", "e.txt", "e.eml"])
@pytest.mark.parametrize("content", [b"", b" \n\t\n  "])
def test_empty_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    assert f"{name}: empty file" in _raises(tmp_path / name)


@pytest.mark.parametrize("name", ["b.mbox", "b.jsonl", "b.txt"])
def test_binary_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"From x Mon Jan  3 10:00:00 2022\n\x00\x01\x02" * 10)
    assert f"{name}: binary file" in _raises(tmp_path / name)


def test_mbox_not_starting_with_from(tmp_path):
    (tmp_path / "t.mbox").write_text("Subject: hi\n\nbody\n")
    assert "t.mbox: truncated mbox" in _raises(tmp_path / "t.mbox")


def test_mbox_last_message_cut_off(tmp_path):
    cut = MBOX + "\nFrom x@y Mon Jan  3 13:00:00 2022\nFrom: x@y\nSubject: cut"
    (tmp_path / "t.mbox").write_text(cut)
    assert "t.mbox: truncated mbox (message 4 has no body)" in _raises(tmp_path / "t.mbox")


def test_directory_with_nothing_importable(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.pdf").write_bytes(b"%PDF")
    assert "d: nothing importable" in _raises(tmp_path / "d")
    assert "d: nothing importable" in _raises(tmp_path / "d", "eml")
    assert "d: nothing importable" in _raises(tmp_path / "d", "text")
    assert "d: not a maildir" in _raises(tmp_path / "d", "maildir")
    mailbox.Maildir(tmp_path / "m", create=True)
    assert "m: empty maildir" in _raises(tmp_path / "m")


def test_file_over_size_limit_is_refused_before_reading(tmp_path):
    for name in ("huge.mbox", "huge.jsonl", "huge.txt"):
        with open(tmp_path / name, "wb") as f:  # sparse: no disk used
            f.truncate(ingest.MAX_FILE_BYTES + 1)
        assert f"{name}: file too large" in _raises(tmp_path / name)


def test_message_over_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "MAX_MESSAGE_BYTES", 1000)
    big = "word " * 400
    rows = [json.dumps({"body": "ok"}), json.dumps({"body": big})]
    (tmp_path / "big.jsonl").write_text("\n".join(rows))
    assert "big.jsonl:2: line is over 1000 bytes" in _raises(tmp_path / "big.jsonl")
    (tmp_path / "big.mbox").write_text(f"From x Mon Jan  3 10:00:00 2022\nSubject: s\n\n{big}\n")
    assert "big.mbox: message 1 is over 1000 bytes" in _raises(tmp_path / "big.mbox")
    (tmp_path / "big.txt").write_text(big)
    assert "big.txt: message is over" in _raises(tmp_path / "big.txt")
    (tmp_path / "big.eml").write_text(f"Subject: s\n\n{big}")
    assert "big.eml: message is over" in _raises(tmp_path / "big.eml")


@pytest.mark.parametrize("line,problem", [
    ("not json", "bad.jsonl:2: not JSON"),
    ("[1, 2]", "bad.jsonl:2: not a JSON object"),
    ('{"id": "x"}', 'bad.jsonl:2: no "body"'),
    ('{"body": 3}', 'bad.jsonl:2: no "body"'),
    ('{"body": "b", "to": 5}', 'bad.jsonl:2: "to"'),
    ("[" * 100000 + "]" * 100000, "bad.jsonl:2: not JSON"),
])
def test_jsonl_bad_lines(tmp_path, line, problem):
    (tmp_path / "bad.jsonl").write_text('{"body": "fine"}\n' + line + "\n")
    assert problem in _raises(tmp_path / "bad.jsonl")


def test_text_not_utf8(tmp_path):
    (tmp_path / "l1.txt").write_bytes(b"caf\xe9 au lait\n")
    assert "l1.txt: not UTF-8 text (byte 0xe9 at offset 3)" in _raises(tmp_path / "l1.txt")


def test_unknown_format(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    assert "a.txt: unknown format 'docx'" in _raises(tmp_path / "a.txt", "docx")


def test_wrong_kind_for_format(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    assert "a.txt" in _raises(tmp_path / "a.txt", "maildir")
    assert "a.txt" in _raises(tmp_path / "a.txt", "git", author="x")
    assert "is a directory" in _raises(tmp_path, "mbox")
    assert "is a directory" in _raises(tmp_path, "jsonl")


# --- never a traceback ------------------------------------------------------------------

_MBOX_START = b"From x@y Mon Jan  3 10:00:00 2022\n"
_HEADERS = st.sampled_from([b"From: ", b"To: ", b"Cc: ", b"Subject: ", b"Date: ", b"Content-Type: ",
                            b"Content-Transfer-Encoding: ", b"MIME-Version: 1.0\n", b"\n", b"=?",
                            b"multipart/mixed; boundary=", b"text/html; charset=", b"--", b"<p>",
                            b"\nFrom a Mon Jan  3 10:00:00 2022\n", b"base64", b"\xe9", b'"', b","])
_CONTENT = st.one_of(
    st.binary(max_size=300),
    st.tuples(*[st.lists(st.one_of(_HEADERS, st.binary(max_size=12)), max_size=15)] * 2).map(
        lambda xs: _MBOX_START + b"".join(xs[0]) + b"\n\n" + b"".join(xs[1])),
    st.lists(st.one_of(st.sampled_from([b"{", b"}", b'"body"', b'"to"', b'"date"', b":", b",",
                                        b'"x"', b"\n", b"[", b"]", b"null", b"1e999"]),
                       st.binary(max_size=5)), max_size=30).map(b"".join),
    st.lists(st.dictionaries(
        st.sampled_from(["id", "user", "date", "subject", "to", "body", "text"]),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=3), max_leaves=5),
    ), max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()),
)


@given(content=_CONTENT, suffix=st.sampled_from([".jsonl", ".mbox", ".txt", ".eml"]))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_give_messages_or_input_error(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random{suffix}"
        path.write_bytes(content)
        try:
            msgs = read_source(path)
        except InputError as e:
            assert "\n" not in str(e) and path.name in str(e)
        else:
            assert all(m.body.strip() and m.body == m.body.rstrip() for m in msgs)
