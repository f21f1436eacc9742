"""Size limits of the importers, through the CLI in a child process: a file over 1 GiB and a
single message over 200 MB are refused with one line naming the file, without reading them
into memory (peak RSS and bytes read are measured in the child). The files are sparse: they
cost no disk."""

from __future__ import annotations

import json
import mailbox
import time
from pathlib import Path

import pytest

import relhelp as rh
from idiolect.vault import ingest

GIB = 1 << 30
BIG_MESSAGE = 250 * 10**6     # one message of 250 MB
ONE_GB = 10**9                # "1 GB": under the 1 GiB file cap, so read as a stream


def sparse(path: Path, size: int, head: bytes = b"", tail: bytes = b"") -> Path:
    """A file of ``size`` bytes: ``head``, a hole (NUL bytes, no disk), then ``tail``."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size - len(tail))
        f.seek(size - len(tail))
        f.write(tail)
    assert path.stat().st_size == size
    return path


def refused(home: Path, tmp: Path, target: Path, *extra) -> tuple[str, dict, float]:
    """Import ``target`` in a child; assert a clean refusal; (stderr line, rusage, seconds)."""
    usage = tmp / "rusage.json"
    t0 = time.monotonic()
    r = rh.run(home, "user", "import", "ada", target, *extra, rusage=usage, timeout=120)
    seconds = time.monotonic() - t0
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])  # InputError's exit code
    assert r.stdout == ""
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("error: ") and str(target) in line, line
    rows = rh.db_rows(home, "SELECT COUNT(*) FROM messages")
    assert not rows or rows[0][0] == 0  # nothing imported (the vault is read after all sources)
    return line, json.loads(usage.read_text()), seconds


def assert_not_loaded(usage: dict, seconds: float, size: int) -> None:
    """Peak memory far below the input, at most the 16 MiB message cap (+ margin) read."""
    assert usage["maxrss_kb"] < 160 * 1024, usage
    if "read_bytes" in usage:  # includes the interpreter reading its own modules
        assert usage["read_bytes"] < ingest.MAX_MESSAGE_BYTES + (16 << 20), usage
        assert usage["read_bytes"] < size / 4, usage
    assert seconds < 60


@pytest.mark.parametrize("suffix", [".mbox", ".jsonl", ".txt", ".eml"])
def test_file_over_one_gib_refused_at_once(isolated_home, tmp_path, suffix):
    big = sparse(tmp_path / f"huge{suffix}", GIB + 1, head=b"From a Mon Jan  3 10:00:00 2022\n")
    line, usage, seconds = refused(isolated_home, tmp_path, big)
    assert f"file too large ({GIB + 1} bytes, limit {GIB})" in line
    assert_not_loaded(usage, seconds, GIB)


def _text_head(first: bytes) -> bytes:
    # more than the 8 KiB the format check reads, so the hole is not seen as binary data
    return first + b"word " * 2000


@pytest.mark.parametrize("fmt", ["mbox", "jsonl", "eml", "text", "maildir"])
def test_single_message_over_200_mb_refused(isolated_home, tmp_path, fmt):
    mbox_head = (b"From ada@example.org Mon Jan  3 10:00:00 2022\nFrom: ada@example.org\n"
                 b"Subject: huge\n\n")
    if fmt == "mbox":
        target = sparse(tmp_path / "one.mbox", BIG_MESSAGE, _text_head(mbox_head), b"\n")
        want = "one.mbox: message 1 is over"
    elif fmt == "jsonl":
        head = b'{"subject": "ok", "body": "fine"}\n{"body": "' + b"word " * 2000
        target = sparse(tmp_path / "one.jsonl", BIG_MESSAGE, head, b'"}\n')
        want = "one.jsonl:2: line is over"
    elif fmt == "eml":
        target = sparse(tmp_path / "one.eml", BIG_MESSAGE, _text_head(b"Subject: huge\n\n"))
        want = "one.eml: message is over"
    elif fmt == "text":
        target = sparse(tmp_path / "one.txt", BIG_MESSAGE, _text_head(b""))
        want = "one.txt: message is over"
    else:
        box = mailbox.Maildir(tmp_path / "md", create=True)
        box.add(b"Subject: fine\n\nA normal message.\n")
        sparse(tmp_path / "md" / "cur" / "2000000000.huge.host:2,S", BIG_MESSAGE,
               _text_head(b"Subject: huge\n\n"))
        target = tmp_path / "md"
        want = "md: message 2000000000.huge.host is over"
    line, usage, seconds = refused(isolated_home, tmp_path, target)
    assert want in line and f"over {ingest.MAX_MESSAGE_BYTES} bytes" in line, line
    assert_not_loaded(usage, seconds, BIG_MESSAGE)


def test_one_gb_mbox_under_the_file_cap_is_streamed_and_refused(isolated_home, tmp_path):
    """10^9 bytes is under the 1 GiB file cap: the mbox is read as a stream, one message at a
    time, and its first message (the whole file) is refused at the message cap."""
    head = _text_head(b"From ada@example.org Mon Jan  3 10:00:00 2022\nSubject: huge\n\n")
    big = sparse(tmp_path / "gb.mbox", ONE_GB, head, b"\n")
    line, usage, seconds = refused(isolated_home, tmp_path, big)
    assert "gb.mbox: message 1 is over" in line
    assert_not_loaded(usage, seconds, ONE_GB)
