"""What an import says about its input: mail found in a .txt, filters that match nothing or
cannot apply, files skipped in a folder, subject-only commits, undeclared 8-bit headers and
JSONL rows that name another user. Each on files the test writes itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from idiolect.errors import InputError
from conftest import open_home
from idiolect.vault.ingest import detect_format, read_source
from idiolect.vault.store import import_sources, list_users

PIPERMAIL = """\
From ann at example.com  Thu Apr 14 11:06:00 2016
From: ann at example.com (Ann Example)
Date: Thu, 14 Apr 2016 11:06:00 +0200
Subject: [dev] Release plan
Message-ID: <p1@example.com>

Let us cut the release on Friday.

From bob at example.com  Thu Apr 14 12:00:00 2016
From: bob at example.com (Bob)
Date: Thu, 14 Apr 2016 12:00:00 +0200
Subject: Re: [dev] Release plan
Message-ID: <p2@example.com>

Fine by me.
"""

MAIL_TXT = """\
From ann@example.com Mon Jan  3 10:00:00 2022
From: Ann <ann@example.com>
To: bob@example.com
Subject: Notes
Date: Mon, 3 Jan 2022 10:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="BB"

--BB
Content-Type: text/plain; charset=utf-8

The plain words.
--BB
Content-Type: text/html; charset=utf-8

<p>The html words.</p>
--BB--
"""


def _err(path, fmt="auto", **kw) -> str:
    with pytest.raises(InputError) as e:
        read_source(path, fmt, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- item 5: a .txt that is a whole mail -------------------------------------------------


def test_txt_file_that_is_an_mbox_is_read_as_mail(tmp_path):
    path = tmp_path / "saved.txt"
    path.write_text(MAIL_TXT)
    assert detect_format(path) == "mbox"
    (msg,) = read_source(path, "mbox")
    assert (msg.subject, msg.body, msg.source_id) == ("Notes", "The plain words.", None)
    assert msg.date == "2022-01-03T10:00:00+00:00"
    assert any("saved.txt: read as mbox" in w for w in read_source(path, "mbox").warnings)


def test_txt_with_headers_only_is_eml_and_forced_text_reads_mail_too(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(MAIL_TXT.split("\n", 1)[1])  # no From_ line: one mail's headers and body
    assert detect_format(path) == "eml"
    (msg,) = read_source(path)
    assert msg.body == "The plain words." and msg.source_id == "one.txt"
    forced = read_source(path, "text")  # --format text on mail: read as mail, and said so
    assert [m.body for m in forced] == ["The plain words."]
    assert forced.warnings == [f"{path}: read as eml: its content is mail (headers first)"]


def test_note_with_a_subject_line_is_still_text(tmp_path):
    path = tmp_path / "note.txt"
    path.write_text("Subject: Hello\nFrom: me, a note\n\nbody\n")
    assert detect_format(path) == "text"
    (msg,) = read_source(path)
    assert (msg.subject, msg.body) == ("Hello", "From: me, a note\n\nbody")
    assert read_source(path).warnings == []


# --- item 6: address filters -------------------------------------------------------------


def test_address_filter_on_jsonl_is_an_error(tmp_path):
    path = _jsonl(tmp_path / "u.jsonl", [{"body": "Hello there."}])
    msg = _err(path, addresses=["ann@example.com"])
    assert msg.startswith(f"{path}: the address filter") and "no sender" in msg
    assert len(read_source(path)) == 1


def test_address_filter_matching_nothing_is_an_error_naming_the_senders(tmp_path):
    path = tmp_path / "list.mbox"
    path.write_text(PIPERMAIL)
    msg = _err(path, addresses=["carol@example.com"])
    assert msg.startswith(f"{path}: no message is from carol@example.com")
    assert "ann@example.com (1)" in msg and "bob@example.com (1)" in msg


def test_obfuscated_archive_address_matches(tmp_path):
    path = tmp_path / "list.mbox"
    path.write_text(PIPERMAIL)
    (msg,) = read_source(path, addresses=["Ann@Example.com"])
    assert (msg.subject, msg.body) == ("[dev] Release plan", "Let us cut the release on Friday.")
    (same,) = read_source(path, addresses=["ann at example.com"])
    assert same.source_id == "<p1@example.com>"


def test_filter_matching_nothing_creates_no_user(tmp_path):
    path = tmp_path / "list.mbox"
    path.write_text(PIPERMAIL)
    with open_home() as home:
        conn = home.conn
        with pytest.raises(InputError):
            batches = [(str(path), "mbox", read_source(path, addresses=["nobody@example.com"]))]
            import_sources(conn, "ann", batches, addresses=["nobody@example.com"])
        with pytest.raises(InputError) as e:  # the store refuses an empty source as well
            import_sources(conn, "ann", [(str(path), "mbox", [])])
        assert str(e.value) == f"{path}: nothing to import (no messages)"
        assert list_users(conn) == []


# --- item 7: a folder of mixed garbage -----------------------------------------------------


def test_folder_reports_what_it_skipped_and_why(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.txt").write_text("The one readable note.\n")
    (folder / "blob.txt").write_bytes(b"\x00\x01binary")
    (folder / "image.png").write_bytes(b"\x89PNG\x00")
    (folder / "random.mbox").write_bytes(os.urandom(64).replace(b"\x00", b"x"))
    (folder / "gone.txt").symlink_to(tmp_path / "missing.txt")
    (folder / "sub").mkdir()
    _jsonl(folder / "sub" / "more.jsonl", [{"body": "deeper"}])
    msgs = read_source(folder)
    assert [m.body for m in msgs] == ["The one readable note."]
    reasons = {Path(p).name: why for p, why in msgs.skipped}
    assert reasons == {
        "blob.txt": "binary file (NUL byte at offset 0)",
        "gone.txt": "dangling symbolic link",
        "image.png": "not a .txt or .md file",
        "random.mbox": "not a .txt or .md file",
        "sub": "a folder (sub-folders are not read)",
    }


def test_eml_folder_with_one_bad_file_skips_it_like_a_text_folder(tmp_path):
    folder = tmp_path / "emls"
    folder.mkdir()
    (folder / "1.eml").write_text("From: a@x.org\nSubject: One\n\nFirst mail.\n")
    (folder / "2.eml").write_bytes(b"")
    msgs = read_source(folder)
    assert [m.body for m in msgs] == ["First mail."]
    assert msgs.skipped == [(str(folder / "2.eml"), "empty file (0 bytes)")]
    assert "2.eml: empty file" in _err(folder / "2.eml")  # named on its own: an error
    (folder / "1.eml").write_bytes(b"\x00")
    msg = _err(folder)
    assert msg.startswith(f"{folder}: nothing to import") and "skipped 2, e.g. 1.eml: binary file" in msg


def test_skipped_and_warnings_reach_the_import_result(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("A note.\n")
    (folder / "b.txt").write_text(MAIL_TXT)
    (folder / "c.pdf").write_bytes(b"%PDF")
    msgs = read_source(folder)
    assert sorted(m.body for m in msgs) == ["A note.", "The plain words."]
    with open_home() as home:
        conn = home.conn
        (r,) = import_sources(conn, "ann", [(str(folder), "text", msgs)])
    assert (r.read, r.added) == (2, 2)
    assert r.skipped == [(str(folder / "c.pdf"), "not a .txt or .md file")]
    assert r.warnings == [f"{folder / 'b.txt'}: read as mbox: its content is mail (headers first)"]


# --- item 8: git, subject-only commits ---------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_author_with_only_subject_lines_is_an_error(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    git = ["git", "-C", str(repo), "-c", "user.name=Ann A", "-c", "user.email=ann@example.com",
           "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True, env=env)
    for i in range(3):
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", f"change {i}"],
                       check=True, env=env)
    msg = _err(repo, "git", author="Ann A")
    assert msg.startswith(f"{repo}: 3 commits by author 'Ann A' were found, but none has a body")
    assert "no commits by author 'Zed'" in _err(repo, "git", author="Zed")


# --- item 9: undeclared 8-bit headers --------------------------------------------------------


def test_latin1_mbox_without_charset_decodes_subject_like_body(tmp_path):
    path = tmp_path / "l1.mbox"
    path.write_bytes(b"From x@y Mon Jan  3 10:00:00 2022\nFrom: Ren\xe9 <rene@example.com>\n"
                     b"Subject: caf\xe9 cr\xe8me\n\nUn caf\xe9.\n")
    (msg,) = read_source(path, addresses=["rene@example.com"])
    assert (msg.subject, msg.body) == ("café crème", "Un café.")
    utf8 = tmp_path / "u8.mbox"  # undeclared UTF-8 stays UTF-8
    utf8.write_bytes("From x@y Mon Jan  3 10:00:00 2022\nSubject: naïve\n\nbody\n".encode())
    assert read_source(utf8)[0].subject == "naïve"


def test_undeclared_header_follows_the_body_charset(tmp_path):
    path = tmp_path / "k.eml"
    path.write_bytes(b"From: a@x.org\nSubject: \xf0\xd2\xc9\xd7\xc5\xd4\nMIME-Version: 1.0\n"
                     b"Content-Type: text/plain; charset=koi8-r\n\n\xf0\xd2\xc9\xd7\xc5\xd4\n")
    (msg,) = read_source(path)
    assert msg.subject == msg.body == "Привет"


# --- item 10: JSONL "user" naming someone else ---------------------------------------------


def test_jsonl_rows_of_another_user_are_imported_with_a_warning(tmp_path):
    path = _jsonl(tmp_path / "u.jsonl", [
        {"user": "ann", "body": "Mine."}, {"user": "bob", "body": "His."},
        {"user": "bob", "body": "His again."}, {"body": "Unnamed."}])
    msgs = read_source(path)
    assert [m.source_user for m in msgs] == ["ann", "bob", "bob", None]
    with open_home() as home:
        conn = home.conn
        (r,) = import_sources(conn, "Ann", [(str(path), "jsonl", msgs)])
        assert r.added == 4
        assert r.warnings == [f'{path}: 2 messages name another user in their "user" field'
                              f" ('bob' (2)); imported as 'Ann' all the same"]
        (clean,) = import_sources(conn, "bob", [(str(path), "jsonl", msgs[1:3])])
        assert clean.warnings == [] and clean.skipped == []
