"""Importers: mbox, maildir, .eml, JSONL, plain text and git history into cleaned Messages.

Every problem with the input is an ``InputError`` whose one-line message names the file. In a
folder, a file that cannot be read is skipped, and ``read_source`` says which and why.
"""

from __future__ import annotations

import codecs
import json
import mailbox
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field, replace
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
# A mail header line, and the headers that tell a mail from a note with a "Subject:" line
# (a From header counts where it holds an address).
_HEADER_LINE = re.compile(rb"^([A-Za-z][A-Za-z0-9-]*):[ \t]")
_FROM_ADDRESS = re.compile(rb"^From:.*(?:@|\sat\s)", re.IGNORECASE)
_MAIL_HEADERS = {b"from-address", b"received", b"return-path", b"message-id", b"mime-version",
                 b"delivered-to", b"in-reply-to"}
# A mailing-list archive's spam-proofed address: "a at example.com".
_OBFUSCATED = re.compile(r"([\w.+-]+) at ([\w-]+(?:\.[\w-]+)+)")


# Readers yield (message as read, its From addresses or None where the format has no
# sender); read_source filters and cleans.
_Read = Iterator[tuple[Message, "list[str] | None"]]
_MAIL = ("mbox", "maildir", "eml")


@dataclass
class _Report:
    """What a reader passed over: ``skipped`` (path, reason) pairs and one-line ``warnings``."""

    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append((str(path), reason))


class SourceMessages(list):
    """``read_source``'s result: the cleaned messages (a list), plus ``skipped``, the
    (path, reason) pairs of the files in a folder that were not read, and ``warnings``, one
    line each, about what was assumed (e.g. a .txt file read as mail)."""

    def __init__(self, messages: Iterable[Message] = (), report: _Report | None = None):
        super().__init__(messages)
        report = report or _Report()
        self.skipped = list(report.skipped)
        self.warnings = list(report.warnings)


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
        return _mail_kind(_head(path)) or "text"
    head = _check_file(path)
    if head.startswith(b"From "):
        return "mbox"
    if _mail_kind(head):
        return "eml"
    raise InputError(f"{path}: cannot tell the format (give one of: {', '.join(FORMATS)})")


def read_source(
    path: Path | str,
    fmt: str = "auto",
    *,
    addresses: Iterable[str] = (),
    author: str | None = None,
) -> SourceMessages:
    """Cleaned messages of one source, in source order; empty bodies dropped.

    ``addresses`` keeps only mail whose From matches one of them (all when empty; an
    obfuscated ``a at example.com`` matches ``a@example.com``); ``author`` is required for git
    (a ``git log --author`` pattern) and unused otherwise. A source that leaves no message, a
    filter that matches none, and a filter on a format without senders are InputErrors.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if fmt == "auto":
        fmt = detect_format(path)
    report = _Report()
    readers = {
        "mbox": _read_mbox,
        "maildir": _read_maildir,
        "eml": lambda p: _read_eml(p, report),
        "jsonl": _read_jsonl,
        "text": lambda p: _read_text(p, report),
        "git": lambda p: _read_git(p, author),
    }
    if fmt not in readers:
        raise InputError(f"{path}: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt in _MAIL and path.is_file() and path.suffix.lower() in _TEXT_SUFFIXES:
        report.warnings.append(f"{path}: read as {fmt}: its content is mail (headers first)")
    wanted = {_norm_address(a) for a in addresses if a.strip()}
    seen: Counter = Counter()  # senders of the messages read
    read = unfiltered = 0
    out = []
    for msg, sender in readers[fmt](path):
        read += 1
        if sender is None:
            unfiltered += 1
        else:
            seen.update({_norm_address(a) for a in sender} or {"(no From)"})
            if wanted and not wanted.intersection(_norm_address(a) for a in sender):
                continue
        body = clean_body(_scrub(msg.body))
        if body:
            out.append(replace(msg, subject=clean_subject(_scrub(msg.subject)), body=body,
                               to=[_scrub(t) for t in msg.to],
                               source_id=None if msg.source_id is None else _scrub(msg.source_id),
                               source_user=_scrub_opt(msg.source_user)))
    if wanted:
        _check_filter(path, fmt, wanted, seen, unfiltered, report)
    if not out:
        raise InputError(_nothing_kept(path, fmt, read, author, report))
    return SourceMessages(out, report)


def _norm_address(addr: str) -> str:
    """Lowercased, without <>, an archive's ``a at example.com`` read as ``a@example.com``."""
    addr = addr.strip().strip("<>").strip().lower()
    return _OBFUSCATED.sub(r"\1@\2", addr) if "@" not in addr else addr


def _check_filter(path: Path, fmt: str, wanted: set, seen: Counter, unfiltered: int,
                  report: _Report) -> None:
    """The From filter applies to mail only; one that matches no message is an error."""
    if not seen:
        raise InputError(f"{path}: the address filter (--address) applies to mail, but {fmt}"
                         " messages have no sender: leave it out for this source")
    if not wanted.intersection(seen):
        top = ", ".join(f"{a} ({n})" for a, n in seen.most_common(3))
        raise InputError(f"{path}: no message is from {', '.join(sorted(wanted))}"
                         f" ({sum(seen.values())} read; most frequent senders: {top})")
    if unfiltered:
        report.warnings.append(f"{path}: {unfiltered} messages have no sender; kept unfiltered")


def _nothing_kept(path: Path, fmt: str, read: int, author: str | None, report: _Report) -> str:
    """Why a source gave no message to import (one line)."""
    if fmt == "git":
        if not read:
            return f"{path}: no commits by author {author!r} (outside merges)"
        return (f"{path}: {read} commits by author {author!r} were found, but none has a body"
                " beyond its subject line (trailers do not count): nothing to import")
    why = (f"{read} messages read, none with text of its own left after cleaning (quotes,"
           " signatures, trailers and patches are removed)" if read else "no messages found")
    return f"{path}: nothing to import ({why}{_skip_note(report)})"


# A lone UTF-16 surrogate is no text: JSON allows "\ud800" escapes and the mail parser keeps
# undecodable header bytes as surrogates; neither can be stored as UTF-8 (or digested).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (as undecodable bytes are)."""
    return _SURROGATE.sub("\ufffd", text)


def _scrub_opt(text: str | None) -> str | None:
    return None if text is None else _scrub(text)


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


def _head(path: Path) -> bytes:
    """A file's first bytes, or none where it cannot be read (reading it says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(_HEAD_BYTES)
    except OSError:
        return b""


def _mail_kind(head: bytes) -> str | None:
    """'mbox' (a From_ line, then headers) or 'eml' (a mail's headers) where the first bytes
    of a file are mail, else None; one "Subject:" line above a note is no mail."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    kind = "eml"
    if _FROM_LINE.match(lines[0]):
        kind, lines = "mbox", lines[1:]
    names: set[bytes] = set()
    for i, ln in enumerate(lines):
        if not ln.strip():
            break
        m = _HEADER_LINE.match(ln)
        if m:
            names.add(b"from-address" if _FROM_ADDRESS.match(ln) else m.group(1).lower())
        elif not (i and ln[:1] in (b" ", b"\t")):  # neither a header nor its continuation
            return None
    if kind == "mbox":
        return kind if names else None
    return kind if len(names) >= 2 and names & _MAIL_HEADERS else None


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


def _decode(data: bytes, charset: str | None) -> str:
    """Bytes in their declared charset, else UTF-8, else cp1252 (as mail in the wild is)."""
    if charset:
        try:
            codecs.lookup(charset)
            return data.decode(charset, errors="replace")
        except (LookupError, ValueError):
            pass  # unknown or non-text charset: guess below
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _decode_payload(part) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    if isinstance(payload, str):
        return payload
    return _decode(payload, part.get_content_charset())


def _body_part(msg):
    """The first text/plain part that is not an attachment, else the first text/html one."""
    html = None
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            return part
        if ctype == "text/html" and html is None:
            html = part
    return html


def _body(part) -> str:
    if part is None:
        return ""
    text = _decode_payload(part)
    return text if part.get_content_type() == "text/plain" else html_to_text(text)


# Undecodable header bytes: the parser keeps 8-bit bytes as U+DC80..U+DCFF (surrogateescape).
_ESCAPED = re.compile("[\udc80-\udcff]")


def _raw_headers(msg, name: str) -> list[str]:
    """A header's values as written, unfolded (8-bit bytes still escaped)."""
    return [re.sub(r"\r?\n(?=[ \t])", "", v) for k, v in msg.raw_items()
            if k.lower() == name.lower() and isinstance(v, str)]


def _header_text(msg, name: str, charset: str | None) -> str:
    """The first value of a header; undeclared 8-bit bytes decoded as the body is."""
    raw = _raw_headers(msg, name)[:1]
    if raw and _ESCAPED.search(raw[0]):
        try:
            return _decode(raw[0].encode("ascii", "surrogateescape"), charset).strip()
        except UnicodeEncodeError:
            pass  # not the parser's escapes: take the parsed value
    return (_headers(msg, name)[:1] or [""])[0]


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
    """The addresses of headers as written; an archive's "a at example.com" read as a@."""
    values = [v if "@" in v else _OBFUSCATED.sub(r"\1@\2", v)
              for n in names for v in _raw_headers(msg, n)]
    seen, out = set(), []
    for _, addr in getaddresses(values):
        addr = addr.strip()
        if addr and "@" in addr and addr.lower() not in seen:
            seen.add(addr.lower())
            out.append(addr)
    return out


def _mail_fields(msg, source: str, fallback_id: str | None) -> tuple[Message, list[str]]:
    def first(name: str) -> str:
        return (_headers(msg, name)[:1] or [""])[0]

    part = _body_part(msg)
    return Message(
        subject=_header_text(msg, "Subject", part.get_content_charset() if part else None),
        body=_body(part),
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


def _files(path: Path, suffixes: tuple[str, ...], what: str, report: _Report) -> list[Path]:
    """The files to read: ``path`` itself, or a folder's files with a suffix of ``suffixes``;
    every other entry of the folder goes to ``report.skipped`` with the reason."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: not a file or directory")
    files = []
    for p in sorted(path.iterdir()):
        why = _not_a_candidate(p, suffixes, what)
        if why:
            report.skip(p, why)
        else:
            files.append(p)
    if not files:
        raise InputError(f"{path}: nothing importable (no {what} files{_skip_note(report)})")
    return files


def _not_a_candidate(p: Path, suffixes: tuple[str, ...], what: str) -> str | None:
    if p.is_symlink() and not p.exists():
        return "dangling symbolic link"
    if p.is_dir():
        return "a folder (sub-folders are not read)"
    if not p.is_file():
        return "not a regular file"
    if p.name.startswith("."):
        return "hidden file"
    if p.suffix.lower() not in suffixes:
        return f"not a {what} file"
    return None


def _skip_note(report: _Report) -> str:
    if not report.skipped:
        return ""
    where, reason = report.skipped[0]
    return f"; skipped {len(report.skipped)}, e.g. {Path(where).name}: {reason}"


def _each_file(path: Path, files: list[Path], report: _Report, read_file) -> _Read:
    """``read_file(p, name)``'s messages of each file; in a folder, a file that cannot be
    read is skipped (``report.skipped`` says why) instead of failing the whole folder."""
    for p in files:
        name = p.name if p == path else str(p.relative_to(path))
        try:
            items = list(read_file(p, name))
        except InputError as e:
            if p == path:
                raise
            report.skip(p, str(e).removeprefix(f"{p}: ").removeprefix(f"{p}:"))
            continue
        yield from items


def _read_one(p: Path) -> bytes:
    """A whole file that is one message."""
    _check_file(p)
    if (size := p.stat().st_size) > MAX_MESSAGE_BYTES:
        raise _too_big(f"{p}: message", size)
    return p.read_bytes()


def _read_eml(path: Path, report: _Report) -> _Read:
    files = _files(path, (".eml",), ".eml", report)
    yield from _each_file(path, files, report, _eml_file)


def _eml_file(p: Path, name: str) -> _Read:
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
            yield _jsonl_message(obj, where, src), None


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
    mid, user = obj.get("id"), obj.get("user")
    return Message(subject, body, _date(obj.get("date")), list(to), src,
                   None if mid is None else str(mid),
                   user if isinstance(user, str) and user.strip() else None)


def _read_text(path: Path, report: _Report) -> _Read:
    files = _files(path, _TEXT_SUFFIXES, ".txt or .md", report)
    yield from _each_file(path, files, report, lambda p, name: _text_file(p, name, report))


def _text_file(p: Path, name: str, report: _Report) -> _Read:
    """One note; a file whose content is a whole mail (or an mbox) is read as mail."""
    data = _read_one(p)
    kind = _mail_kind(data[:_HEAD_BYTES])
    if kind == "mbox":
        report.warnings.append(f"{p}: read as mbox: its content is mail (headers first)")
        yield from _read_mbox(p)
        return
    if kind == "eml":
        report.warnings.append(f"{p}: read as eml: its content is mail (headers first)")
        yield _parse_mail(data, str(p.resolve()), name, str(p))
        return
    text = _utf8(data, str(p)).removeprefix("\ufeff")
    first, _, rest = text.partition("\n")
    subject = ""
    if first.lower().startswith("subject:"):
        subject, text = first[len("subject:") :].strip(), rest
    yield Message(subject, text, source=str(p.resolve()), source_id=name), None


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
        yield Message(subject, body, _date(date), [], src, sha), None
