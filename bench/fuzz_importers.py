"""Fuzz the importers: mutate valid mbox / .eml / maildir / JSONL / text inputs (bit flips,
truncations, NUL bytes, random unicode, deleted or duplicated spans, format tokens) and import
each through ``read_source`` + ``import_messages`` into a scratch home.

Every case must end in one of two outcomes: ``imported`` (the messages are well formed and the
vault holds exactly their digests) or ``clean error`` (an ``InputError`` whose one-line message
names the file). Anything else (another exception, a multi-line message, an error that does
not name the file, a malformed message) is a ``crash``, recorded with its traceback and the
case's seed so it can be replayed: ``--replay FORMAT:SEED``.

    .venv/bin/python bench/fuzz_importers.py --cases 5000

writes bench/results/fuzz_importers.json (cases per format and outcome). The test tier runs
the same mutations through hypothesis (tests/reliability/test_fuzz_import.py).
"""

from __future__ import annotations

import argparse
import json
import mailbox
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

FORMATS = ("mbox", "eml", "maildir", "jsonl", "text")

# ------------------------------------------------------------------------------ seed inputs
_MBOX = b"""\
From alice@example.com Mon Jan  3 10:00:00 2022
From: Alice <alice@example.com>
To: Bob <bob@example.com>
Cc: carol@example.com
Subject: =?utf-8?q?Caf=C3=A9?= plans
Date: Mon, 3 Jan 2022 10:00:00 -0500
Message-ID: <m1@example.com>

Shall we try the new place on Friday?
>From what I hear it is good.

-- 
Alice

From bob@example.com Mon Jan  3 11:00:00 2022
From: Bob <bob@example.com>
To: alice@example.com
Subject: Re: plans
Date: Mon, 3 Jan 2022 11:00:00 -0500
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="XX"

--XX
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Friday works, caf=E9 at noon.

On Mon, 3 Jan 2022, Alice wrote:
> Shall we?
--XX
Content-Type: text/html; charset=utf-8

<p>Friday <b>works</b></p>
--XX--

From alice@example.com Mon Jan  3 12:00:00 2022
From: Alice <alice@example.com>
To: bob@example.com
Subject: RE: Re: plans
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

R3JlYXQsIHNlZSB5b3UgdGhlcmUg8J+Ygi4K
"""

_JSONL = (
    b'\xef\xbb\xbf{"id": "1", "subject": "fix the cache", "to": ["list@example.org"], '
    b'"date": "2024-01-02T10:00:00Z", "body": "We should fix the cache first; then test."}\n'
    b'{"id": 2, "subject": "Re: index", "to": "a@b.c", "date": 1700000000, '
    b'"body": "caf\\u00e9 and \\ud83d\\ude00, the index is fine.\\n\\n> quoted\\n"}\n'
    b'{"text": "Only text here, no subject.", "date": "Tue, 4 Jan 2022 09:00:00 +0000"}\n'
    b'{"body": "tabs\\tand \\"quotes\\" stay", "to": []}\n'
)

_TEXT = (b"Subject: notes on the release\n"
         b"The release is on Friday.\nI will write the notes \xe2\x80\x94 all of them.\n")


def _eml() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@x.org", "b@x.org, c@x.org", "Both parts"
    msg["Date"], msg["Message-ID"] = "Tue, 4 Jan 2022 09:00:00 +0000", "<e1@x.org>"
    msg.set_content("Plain wins, with an accent: d\u00e9j\u00e0 vu.\n")
    msg.add_alternative("<p>HTML <i>loses</i></p>", subtype="html")
    return msg.as_bytes()


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs per format (maildir: its message files)."""
    second = EmailMessage()
    second["From"], second["Subject"] = "a@x.org", "Second"
    second.set_content("Another body, plain ASCII.\n")
    return {"mbox": [_MBOX], "eml": [_eml()], "jsonl": [_JSONL], "text": [_TEXT],
            "maildir": [_eml(), second.as_bytes()]}


def write_case(folder: Path, fmt: str, files: list[bytes]) -> Path:
    """Write a case's bytes as a source of ``fmt`` under ``folder``; the path to import."""
    if fmt == "maildir":
        mailbox.Maildir(folder / "Mail", create=True)  # makes cur/ new/ tmp/
        for i, data in enumerate(files):
            (folder / "Mail" / "cur" / f"{1700000000 + i}.M{i}P1.host:2,S").write_bytes(data)
        return folder / "Mail"
    suffix = {"mbox": ".mbox", "eml": ".eml", "jsonl": ".jsonl", "text": ".txt"}[fmt]
    path = folder / f"case{suffix}"
    path.write_bytes(files[0])
    return path


# ------------------------------------------------------------------------------ mutations
TOKENS = [b"\nFrom x@y Mon Jan  3 10:00:00 2022\n", b"\n\n", b"\r\n", b"\r", b"=?utf-8?b?",
          b"=?iso-8859-1?q?=E9?=", b"Content-Type: multipart/mixed; boundary=\"XX\"\n",
          b"Content-Transfer-Encoding: base64\n", b"Content-Transfer-Encoding: quoted-printable\n",
          b"charset=x-unknown", b"--XX\n", b"--XX--", b"<html>", b"</p>", b"&#x10FFFF;", b"&#0;",
          b'"body": ', b'"to": [1]', b"{", b"}", b"[", b"]", b'"\\ud800"', b'"\\udfff\\ud800"',
          b"1e999", b"null", b"Subject: ", b"Date: 99 Foo 99999 99:99:99", b">", b"-- \n",
          b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3", b"\xe2\x80", b"\xed\xa0\x80"]
OPS = ("flip", "truncate", "nul", "unicode", "delete", "duplicate", "token", "bytes", "field",
       "header")
# JSON values a "field" mutation puts under a message key (lone surrogates included: JSON
# allows "\ud800" escapes, which are no text)
ODD_VALUES = ["a \ud800 b", "\udfff", "x\udc80\ud83d", None, True, 0, -1, 1e308, 10**30, "",
              " \n\t ", "\x00", [], ["a@b.c", 7], [None], {"a": 1}, "2024-13-45T99:00:00Z",
              "9" * 400, "\u202e\u0301\ufeff", "<p>html &amp; <b>tags</b></p>", ">" * 50,
              "-- \nsig", "On Mon, Bob wrote:\n> quoted", "Re: Fwd: [PATCH 1/2] s"]
KEYS = ["id", "subject", "to", "date", "body", "text", "user"]


def _rand_unicode(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.3:  # anywhere in the code space, surrogates excluded (not encodable)
        return "".join(chr(rng.choice([rng.randrange(0x20, 0xD800),
                                       rng.randrange(0xE000, 0x110000)]))
                       for _ in range(rng.randint(1, 8)))
    specials = ["\u202e", "\u200b", "\ufeff", "\u2028", "\u0301" * 20, "\U0001F600", "\x7f",
                "\u00a0", "\ufffd", "\U000E0001", "\x85", "\x0c", "\x1e", "\x00"]
    return "".join(rng.choice(specials) for _ in range(rng.randint(1, 6)))


def apply_op(data: bytes, op: str, pos: float, arg: int, rng: random.Random) -> bytes:
    """One mutation at relative position ``pos`` (0..1); ``arg`` sizes it."""
    i = int(pos * len(data)) if data else 0
    if op == "flip" and data:
        i = min(i, len(data) - 1)
        return data[:i] + bytes([data[i] ^ (1 << (arg % 8))]) + data[i + 1:]
    if op == "truncate":
        return data[:i]
    if op == "nul":
        return data[:i] + b"\x00" * (1 + arg % 4) + data[i:]
    if op == "unicode":
        text = _rand_unicode(rng).encode("utf-8", "surrogatepass")
        return data[:i] + text + data[i:]
    if op == "delete":
        return data[:i] + data[i + 1 + arg % 64:]
    if op == "duplicate":
        return data[:i] + data[i:i + 1 + arg % 256] * 2 + data[i + 1 + arg % 256:]
    if op == "token":
        return data[:i] + TOKENS[arg % len(TOKENS)] + data[i:]
    if op == "bytes":
        return data[:i] + rng.randbytes(1 + arg % 16) + data[i:]
    if op == "field":  # JSONL: one line's key gets an odd value (still valid JSON)
        lines = data.split(b"\n")
        k = min(i * len(lines) // max(len(data), 1), len(lines) - 1)
        try:
            obj = json.loads(lines[k])
        except ValueError:
            return data
        if isinstance(obj, dict):
            obj[KEYS[arg % len(KEYS)]] = ODD_VALUES[(arg >> 4) % len(ODD_VALUES)]
            lines[k] = json.dumps(obj).encode()
        return b"\n".join(lines)
    if op == "header":  # mail: a header line with random unicode or bytes at a line start
        start = data.rfind(b"\n", 0, i) + 1
        name = [b"Subject", b"To", b"Cc", b"From", b"Date", b"Message-ID",
                b"Content-Type"][arg % 7]
        value = (_rand_unicode(rng).encode("utf-8") if arg & 8 else rng.randbytes(1 + arg % 24))
        return data[:start] + name + b": " + value.replace(b"\n", b" ") + b"\n" + data[start:]
    return data


def op_weights(fmt: str) -> list[int]:
    """How often each of OPS is drawn for ``fmt``: the structural op that keeps the format
    valid (JSONL fields, mail headers) often, the other one never."""
    structural = {"field": 4 if fmt == "jsonl" else 0,
                  "header": 3 if fmt in ("mbox", "eml", "maildir") else 0}
    return [structural.get(op, 1) for op in OPS]


def random_mutations(rng: random.Random, fmt: str) -> list[tuple[str, float, int]]:
    n = rng.choice((1, 1, 2, 2, 3, 5))
    ops = rng.choices(OPS, weights=op_weights(fmt), k=n)
    return [(op, rng.random(), rng.randrange(1 << 16)) for op in ops]


def mutate_files(files: list[bytes], ops, rng: random.Random) -> list[bytes]:
    """Apply ``ops`` to one of the files (the first; for a maildir a chosen one)."""
    files = list(files)
    k = rng.randrange(len(files))
    for op, pos, arg in ops:
        files[k] = apply_op(files[k], op, pos, arg, rng)
    return files


# ------------------------------------------------------------------------------ one case
class Crash(Exception):
    """The importer misbehaved on a case (not an InputError, or a bad one, or bad messages)."""


def check_messages(msgs) -> None:
    for m in msgs:
        for name in ("subject", "body"):
            if not isinstance(getattr(m, name), str):
                raise Crash(f"{name} is not a str: {getattr(m, name)!r}")
        if not m.body.strip() or m.body != m.body.rstrip():
            raise Crash(f"body not cleaned: {m.body[:60]!r}")
        if "\n" in m.subject or m.subject != m.subject.strip():
            raise Crash(f"subject not cleaned: {m.subject[:60]!r}")
        if not (isinstance(m.to, list) and all(isinstance(t, str) for t in m.to)):
            raise Crash(f"to is not a list of str: {m.to!r}")
        if m.date is not None:
            datetime.fromisoformat(m.date)
        for text in (m.subject, m.body, *m.to, m.source_id or ""):
            text.encode("utf-8")  # storable: no lone surrogates


def run_case(conn, fmt: str, path: Path, user: str) -> tuple[str, str]:
    """('imported' | 'error' | 'crash', detail)."""
    from idiolect.errors import InputError
    from idiolect.vault.ingest import read_source
    from idiolect.vault.store import import_messages

    try:
        msgs = read_source(path, fmt if fmt != "jsonl" or user[-1] in "02468" else "auto")
        check_messages(msgs)
        r = import_messages(conn, user, msgs, source=str(path), fmt=fmt)
        stored = {row[0] for row in conn.execute("SELECT digest FROM messages WHERE user=?",
                                                 (user,))}
        if r.read != len(msgs) or stored != {m.digest for m in msgs}:
            raise Crash(f"vault holds {len(stored)} digests for {len(msgs)} messages read")
        return "imported", f"{len(msgs)} messages"
    except InputError as e:
        msg = str(e)
        if "\n" in msg or path.name not in msg:
            return "crash", f"bad error message: {msg!r}"
        return "error", msg
    except Exception:  # noqa: BLE001 - that is what a fuzzer looks for
        return "crash", traceback.format_exc(limit=6)


# ------------------------------------------------------------------------------ the run
def fuzz(cases: int, seed: int = 0, log=print) -> dict:
    from idiolect.home import Home

    base = seeds()
    counts = {f: Counter() for f in FORMATS}
    crashes: list[dict] = []
    errors: dict[str, Counter] = {f: Counter() for f in FORMATS}
    with tempfile.TemporaryDirectory(prefix="idiolect-fuzz-") as tmp:
        tmp = Path(tmp)
        home = Home.open(tmp / "home")  # a scratch home; the importers need its database only
        conn = home.conn
        t0 = time.perf_counter()
        for n in range(cases):
            fmt = FORMATS[n % len(FORMATS)]
            case_seed = seed * 1_000_003 + n
            outcome, detail = one(conn, tmp, fmt, case_seed, base, f"u{n}")
            counts[fmt][outcome] += 1
            if outcome == "error":  # which kind of refusal: the text after the file name
                errors[fmt][detail.split(": ", 1)[-1].split(" (")[0][:60]] += 1
            if outcome == "crash":
                crashes.append({"format": fmt, "seed": case_seed, "detail": detail})
                log(f"CRASH {fmt}:{case_seed}\n{detail}")
            if (n + 1) % 1000 == 0:
                log(f"{n + 1}/{cases} cases, {len(crashes)} crashes,"
                    f" {time.perf_counter() - t0:.0f}s")
        home.close()
    return {"counts": {f: dict(c) for f, c in counts.items()},
            "totals": dict(sum(counts.values(), Counter())), "crashes": crashes[:50],
            "top_errors": {f: dict(c.most_common(8)) for f, c in errors.items()}}


def one(conn, tmp: Path, fmt: str, case_seed: int, base=None, user: str = "u") -> tuple[str, str]:
    rng = random.Random(case_seed)
    files = mutate_files((base or seeds())[fmt], random_mutations(rng, fmt), rng)
    folder = tmp / f"c{case_seed}"
    folder.mkdir()
    try:
        return run_case(conn, fmt, write_case(folder, fmt, files), user)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", help="FORMAT:SEED of a recorded crash: run that case alone")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.replay:
        from idiolect.home import Home

        fmt, seed = args.replay.split(":")
        with tempfile.TemporaryDirectory() as tmp, Home.open(Path(tmp) / "home") as home:
            print(*one(home.conn, Path(tmp), fmt, int(seed)), sep="\n")
        return 0
    from common import Run

    run = Run("fuzz_importers", {"cases": args.cases, "seed": args.seed, "formats": FORMATS})
    t0 = time.perf_counter()
    res = fuzz(args.cases, args.seed)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["cases_per_s"] = round(args.cases / max(res["seconds"], 1e-9), 1)
    run.results = {"fuzz": res}
    path = run.write("ok" if not res["crashes"] else "crashes")
    t = res["totals"]
    print(f"{args.cases} cases in {res['seconds']}s: {t.get('imported', 0)} imported,"
          f" {t.get('error', 0)} clean errors, {t.get('crash', 0)} crashes -> {path}")
    return 1 if res["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
