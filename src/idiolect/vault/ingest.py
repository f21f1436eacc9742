"""Importers: mbox, maildir, .eml, JSONL, plain text and git history into cleaned Messages.

Every problem with the input is an ``InputError`` whose one-line message names the file.
"""

from __future__ import annotations

import codecs
import json
import mailbox
import re
import subprocess
from dataclasses import replace
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Iterable, Iterator

from idiolect.errors import InputError
from idiolect.vault.clean import clean_body, clean_subject, html_to_text
from idiolect.vault.message import Message

FORMATS = ("mbox", "maildir", "eml", "jsonl", "text", "git")
MAX_FILE_BYTES = 1 << 30
MAX_MESSAGE_BYTES = 16 << 20
_HEAD_BYTES = 8192
_TEXT_SUFFIXES = (".txt", ".md")
# A From_ line between messages carries a date with a time ("... Mon Jan  3 10:00:00 2022").
_FROM_LINE = re.compile(rb"^From \S+.*\d\d?:\d\d")


# Readers yield (message as read, its From addresses); read_source filters and cleans.
_Read = Iterator[tuple[Message, list[str]]]


def detect_format(path: Path) -> str:
    """The format of a source file or folder, from its layout, suffix and first bytes."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            return "maildir"
        bare = all((path / p).exists() for p in ("HEAD", "objects", "refs"))
        if (path / ".git").exists() or bare:
            return "git"
        names = [p.suffix.lower() for p in path.iterdir() if p.is_file()]
        if ".eml" in names:
            return "eml"
        if any(s in _TEXT_SUFFIXES for s in names):
            return "text"
        raise InputError(
            f"{path}: nothing importable (no maildir, .eml, .txt/.md files or git repository)"
        )
    suffix = path.suffix.lower()
    by_suffix = {".mbox": "mbox", ".eml": "eml", ".jsonl": "jsonl", ".ndjson": "jsonl"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix in _TEXT_SUFFIXES:
        return "text"
    if _check_file(path).startswith(b"From "):
        return "mbox"
    raise InputError(f"{path}: cannot tell the format (give one of: {', '.join(FORMATS)})")


def read_source(
    path: Path | str,
    fmt: str = "auto",
    *,
    addresses: Iterable[str] = (),
    author: str | None = None,
) -> list[Message]:
    """Cleaned messages of one source, in source order; empty bodies dropped.

    ``addresses`` keeps only mail whose From matches one of them (all when empty);
    ``author`` is required for git (a ``git log --author`` pattern) and unused otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if fmt == "auto":
        fmt = detect_format(path)
    readers = {
        "mbox": _read_mbox,
        "maildir": _read_maildir,
        "eml": _read_eml,
        "jsonl": _read_jsonl,
        "text": _read_text,
        "git": lambda p: _read_git(p, author),
    }
    if fmt not in readers:
        raise InputError(f"{path}: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    # The From filter applies to mail only.
    mail = fmt in ("mbox", "maildir", "eml")
    wanted = {a.strip().lower() for a in addresses if a.strip()} if mail else set()
    out = []
    for msg, sender in readers[fmt](path):
        if wanted and not wanted.intersection(a.lower() for a in sender):
            continue
        body = clean_body(_scrub(msg.body))
        if body:
            out.append(replace(msg, subject=clean_subject(_scrub(msg.subject)), body=body,
                               to=[_scrub(t) for t in msg.to],
                               source_id=None if msg.source_id is None else _scrub(msg.source_id)))
    return out


# A lone UTF-16 surrogate is no text: JSON allows "\ud800" escapes and the mail parser keeps
# undecodable header bytes as surrogates; neither can be stored as UTF-8 (or digested).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (as undecodable bytes are)."""
    return _SURROGATE.sub("\ufffd", text)


# --- checks -----------------------------------------------------------------------------


def _check_file(path: Path) -> bytes:
    """Refuse a missing, non-regular, too large, empty or binary file; return its first bytes."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path}: file too large ({size} bytes, limit {MAX_FILE_BYTES})")
        if size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
            if b"\x00" in head:
                raise InputError(f"{path}: binary file (NUL byte at offset {head.index(0)})")
            chunk = head
            while chunk and not chunk.strip():
                chunk = f.read(1 << 16)
            if not chunk:
                raise InputError(f"{path}: empty file (only whitespace)")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    return head


def _too_big(what: str, n: int) -> InputError:
    return InputError(f"{what} is over {MAX_MESSAGE_BYTES} bytes ({n} bytes)")


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = f"byte 0x{data[e.start]:02x} at offset {e.start}"
        raise InputError(f"{where}: not UTF-8 text ({bad})") from e


# --- dates ------------------------------------------------------------------------------


def _iso(dt: datetime) -> str | None:
    try:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError):
        return None


def _date(value: object) -> str | None:
    """ISO 8601 UTC from an ISO string, an RFC 2822 date or epoch seconds; None if unparseable."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _iso(datetime.fromtimestamp(value, timezone.utc))
        if not isinstance(value, str) or not value.strip():
            return None
        try:
            return _iso(datetime.fromisoformat(value.strip()))
        except ValueError:
            return _iso(parsedate_to_datetime(value))
    except (ValueError, TypeError, IndexError, OverflowError, OSError):
        return None


# --- mail -------------------------------------------------------------------------------


def _decode_payload(part) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    if isinstance(payload, str):
        return payload
    charset = part.get_content_charset()
    if charset:
        try:
            codecs.lookup(charset)
            return payload.decode(charset, errors="replace")
        except (LookupError, ValueError):
            pass  # unknown or non-text charset: guess below
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("cp1252", errors="replace")


def _body(msg) -> str:
    """The first text/plain part that is not an attachment, else the first text/html one."""
    html = None
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            return _decode_payload(part)
        if ctype == "text/html" and html is None:
            html = part
    return html_to_text(_decode_payload(html)) if html is not None else ""


def _headers(msg, name: str) -> list[str]:
    values = msg.get_all(name) or []
    if msg.policy is policy.compat32:
        from email.header import decode_header, make_header

        decoded = []
        for v in values:
            try:
                decoded.append(str(make_header(decode_header(str(v)))))
            except (ValueError, LookupError, UnicodeError):
                decoded.append(str(v))
        return decoded
    return [str(v) for v in values]


def _addresses(msg, *names: str) -> list[str]:
    seen, out = set(), []
    for _, addr in getaddresses([v for n in names for v in _headers(msg, n)]):
        addr = addr.strip()
        if addr and "@" in addr and addr.lower() not in seen:
            seen.add(addr.lower())
            out.append(addr)
    return out


def _mail_fields(msg, source: str, fallback_id: str | None) -> tuple[Message, list[str]]:
    def first(name: str) -> str:
        return (_headers(msg, name)[:1] or [""])[0]

    return Message(
        subject=first("Subject"),
        body=_body(msg),
        date=_date(first("Date")),
        to=_addresses(msg, "To", "Cc"),
        source=source,
        source_id=first("Message-ID").strip() or fallback_id,
    ), _addresses(msg, "From")


def _parse_mail(data: bytes, source: str, fallback_id: str | None, where: str):
    """Parse with the modern policy; on a stdlib parser failure retry with compat32."""
    for pol in (policy.default, policy.compat32):
        try:
            return _mail_fields(BytesParser(policy=pol).parsebytes(data), source, fallback_id)
        except Exception as e:  # malformed mail can trip header parsers inside the stdlib
            err = e
    raise InputError(f"{where}: cannot parse message ({type(err).__name__})") from err


def _has_body(data: bytes) -> bool:
    data = data.replace(b"\r\n", b"\n")
    return data.startswith(b"\n") or b"\n\n" in data


def _mbox_chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, bytes) of each message of an mbox, streamed; '>From ' unescaped (mboxrd)."""
    n, buf, size, prev_blank = 0, [], 0, True
    with open(path, "rb") as f:
        for line in iter(lambda: f.readline(MAX_MESSAGE_BYTES + 1), b""):
            if n == 0 and not line.strip():
                continue
            if line.startswith(b"From ") and (n == 0 or (prev_blank and _FROM_LINE.match(line))):
                if n:
                    yield n, b"".join(buf)
                n, buf, size, prev_blank = n + 1, [], 0, False
                continue
            if n == 0:
                raise InputError(f"{path}: truncated mbox (does not start with 'From ')")
            if line.startswith(b">") and line.lstrip(b">").startswith(b"From "):
                line = line[1:]
            size += len(line)
            if size > MAX_MESSAGE_BYTES:
                raise _too_big(f"{path}: message {n}", size)
            buf.append(line)
            prev_blank = not line.strip()
    if n:
        yield n, b"".join(buf)


def _read_mbox(path: Path) -> _Read:
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an mbox file")
    _check_file(path)
    src = str(path.resolve())
    for n, data in _mbox_chunks(path):
        if not _has_body(data):
            raise InputError(f"{path}: truncated mbox (message {n} has no body)")
        yield _parse_mail(data, src, None, f"{path}: message {n}")


def _read_maildir(path: Path) -> _Read:
    if not ((path / "cur").is_dir() and (path / "new").is_dir()):
        raise InputError(f"{path}: not a maildir (expected a folder with cur/ and new/)")
    box = mailbox.Maildir(path, factory=None, create=False)
    keys = sorted(box.keys())
    if not keys:
        raise InputError(f"{path}: empty maildir (no messages in cur/ or new/)")
    for key in keys:
        with box.get_file(key) as f:
            data = f.read(MAX_MESSAGE_BYTES + 1)
        if len(data) > MAX_MESSAGE_BYTES:
            raise _too_big(f"{path}: message {key}", len(data))
        yield _parse_mail(data, str(path.resolve()), key, f"{path}: message {key}")


def _files(path: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: not a file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{path}: nothing importable (no {what} files)")
    return files


def _read_one(p: Path) -> bytes:
    """A whole file that is one message."""
    _check_file(p)
    if (size := p.stat().st_size) > MAX_MESSAGE_BYTES:
        raise _too_big(f"{p}: message", size)
    return p.read_bytes()


def _read_eml(path: Path) -> _Read:
    for p in _files(path, (".eml",), ".eml"):
        name = p.name if p == path else str(p.relative_to(path))
        yield _parse_mail(_read_one(p), str(p.resolve()), name, str(p))


# --- JSONL, text, git -------------------------------------------------------------------


def _read_jsonl(path: Path) -> _Read:
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .jsonl file")
    _check_file(path)
    src = str(path.resolve())
    with open(path, "rb") as f:
        for lineno, line in enumerate(iter(lambda: f.readline(MAX_MESSAGE_BYTES + 1), b""), 1):
            where = f"{path}:{lineno}"
            if len(line) > MAX_MESSAGE_BYTES:
                raise _too_big(f"{where}: line", len(line))
            text = _utf8(line, where).removeprefix("\ufeff" if lineno == 1 else "")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not JSON ({e.msg} at column {e.colno})") from e
            except (ValueError, RecursionError) as e:
                raise InputError(f"{where}: not JSON ({type(e).__name__})") from e
            if not isinstance(obj, dict):
                raise InputError(f"{where}: not a JSON object")
            yield _jsonl_message(obj, where, src), []


def _jsonl_message(obj: dict, where: str, src: str) -> Message:
    body = obj.get("body", obj.get("text"))
    if not isinstance(body, str):
        raise InputError(f'{where}: no "body" (or "text") string')
    subject = obj.get("subject") or ""
    if not isinstance(subject, str):
        raise InputError(f'{where}: "subject" is not a string')
    to = obj.get("to") or []
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not all(isinstance(t, str) for t in to):
        raise InputError(f'{where}: "to" is not a list of strings')
    mid = obj.get("id")
    return Message(subject, body, _date(obj.get("date")), list(to), src,
                   None if mid is None else str(mid))


def _read_text(path: Path) -> _Read:
    for p in _files(path, _TEXT_SUFFIXES, ".txt or .md"):
        text = _utf8(_read_one(p), str(p)).removeprefix("\ufeff")
        first, _, rest = text.partition("\n")
        subject = ""
        if first.lower().startswith("subject:"):
            subject, text = first[len("subject:") :].strip(), rest
        name = p.name if p == path else str(p.relative_to(path))
        yield Message(subject, text, source=str(p.resolve()), source_id=name), []


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        # fsmonitor off: reading history must not start a repository's configured hooks
        argv = ["git", "-C", str(repo), "-c", "core.fsmonitor=false", *args]
        return subprocess.run(argv, capture_output=True, check=False)
    except OSError as e:
        raise InputError(f"{repo}: cannot run git ({e.strerror or e})") from e


def _read_git(path: Path, author: str | None) -> _Read:
    if not author:
        raise InputError(f"{path}: an author (--author) is required to import a git repository")
    if not path.is_dir():
        raise InputError(f"{path}: not a git repository (not a directory)")
    if _git(path, "rev-parse", "--git-dir").returncode != 0:
        raise InputError(f"{path}: not a git repository")
    fmt = "--format=%H%x00%aI%x00%s%x00%b%x1e"
    proc = _git(path, "-c", "log.showSignature=false", "log", "--no-merges", "--no-color",
                "--encoding=UTF-8", f"--author={author}", fmt)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(f"{path}: git log failed ({err[0] if err else proc.returncode})")
    src = str(path.resolve())
    for record in proc.stdout.decode("utf-8", "replace").split("\x1e"):
        record = record.lstrip("\n")
        if not record:
            continue
        sha, date, subject, body = (record.split("\x00", 3) + ["", "", ""])[:4]
        if len(body) > MAX_MESSAGE_BYTES:
            raise _too_big(f"{path}: commit {sha}", len(body))
        yield Message(subject, body, _date(date), [], src, sha), []
