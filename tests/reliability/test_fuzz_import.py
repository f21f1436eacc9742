"""Fuzz the importers with hypothesis: valid mbox / .eml / maildir / JSONL / text inputs,
mutated (bit flips, truncations, NUL bytes, random unicode, deleted or duplicated spans,
format tokens, odd JSON field values, odd mail headers), are imported into a scratch vault.
Every case is either a correct import (well-formed messages, the vault holds exactly their
digests) or an InputError whose one-line message names the file: never a traceback.

The mutations and the outcome check are bench/fuzz_importers.py's (its --cases N run is the
big, recorded one); here hypothesis drives them and shrinks a failure to a small case."""

from __future__ import annotations

import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fuzz_importers as fz  # noqa: E402

OP = st.tuples(st.sampled_from(fz.OPS), st.floats(0, 1), st.integers(0, (1 << 16) - 1))
CASE = st.tuples(st.sampled_from(fz.FORMATS), st.lists(OP, min_size=1, max_size=5),
                 st.integers(0, 2**32 - 1))


def _fuzz(examples: int) -> Counter:
    from conftest import open_home

    seeds = fz.seeds()
    outcomes: Counter = Counter()
    with open_home() as home, tempfile.TemporaryDirectory() as tmp:
        conn = home.conn

        @given(case=CASE)
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def one(case):
            fmt, ops, seed = case
            rng = random.Random(seed)
            files = fz.mutate_files(seeds[fmt], ops, rng)
            folder = Path(tempfile.mkdtemp(dir=tmp))
            path = fz.write_case(folder, fmt, files)
            outcome, detail = fz.run_case(conn, fmt, path, f"u{sum(outcomes.values())}")
            outcomes[(fmt, outcome)] += 1
            assert outcome != "crash", f"{fmt} {ops} seed {seed}:\n{detail}"

        one()
    return outcomes


def _report(outcomes: Counter, record_property) -> None:
    total = sum(outcomes.values())
    by = {o: sum(n for (_, k), n in outcomes.items() if k == o) for o in ("imported", "error")}
    line = (f"fuzz: {total} cases, {by['imported']} imported, {by['error']} clean errors;"
            f" per format: " + ", ".join(
                f"{f} {outcomes[(f, 'imported')]}/{outcomes[(f, 'error')]}" for f in fz.FORMATS))
    print("\n" + line)
    record_property("fuzz_cases", total)
    # every format is exercised, and both outcomes happen: the mutations do reach the parsers
    assert all(outcomes[(f, "imported")] + outcomes[(f, "error")] > 0 for f in fz.FORMATS)
    assert by["imported"] > 0 and by["error"] > 0


def test_fuzz_importers_never_crash(isolated_home, record_property):
    outcomes = _fuzz(examples=300)
    assert sum(outcomes.values()) >= 250  # hypothesis may stop early only on duplicates
    _report(outcomes, record_property)


@pytest.mark.slow
def test_fuzz_importers_never_crash_long(isolated_home, record_property):
    _report(_fuzz(examples=6000), record_property)


def test_the_seeds_import_cleanly(isolated_home, tmp_path):
    """Unmutated, every seed input is a correct import (so a mutated error is the mutation's)."""
    from conftest import open_home

    with open_home() as home:
        conn = home.conn
        for fmt, files in fz.seeds().items():
            (tmp_path / fmt).mkdir()
            path = fz.write_case(tmp_path / fmt, fmt, files)
            assert fz.run_case(conn, fmt, path, f"seed-{fmt}")[0] == "imported", fmt


def test_lone_surrogates_are_replaced_not_a_traceback(isolated_home, tmp_path, cli_run):
    """The case the fuzzer found: JSON allows "\\ud800" escapes, which are no text and cannot
    be stored or digested; they become U+FFFD like any undecodable byte."""
    src = tmp_path / "s.jsonl"
    src.write_text('{"subject": "x\\udfff", "body": "a \\ud800 b", "to": ["\\udc80@x"],'
                   ' "id": "\\ud83d"}\n')
    r = cli_run("user", "import", "zed", src, "--json")
    assert r.exit_code == 0, r.stderr
    from conftest import open_home
    from idiolect.vault import store

    with open_home() as home:
        conn = home.conn
        (m,) = store.all_messages(conn, "zed")
    assert (m.subject, m.body, m.to) == ("x\ufffd", "a \ufffd b", ["\ufffd@x"])
