"""Prefix caching (serve/prefix.py): rows that start from a cached prompt opening write exactly
what they write when the server computes the whole prompt, in one batch with rows of other
adapters, other openings or none; the opening is computed once per adapter; an adapter that
goes takes its entries along."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from live import random_adapter, serve, two_users  # noqa: F401 - fixtures
from test_batching import SUBJECT, ask, sliding_base, wait_for  # noqa: F401 - a fixture

OTHER = "To: bob@example.org\nRe: the release schedule"
SAMPLED = dict(max_tokens=10, temperature=1.0, top_p=0.9, seed=3, extra_body={"ignore_eos": True})


def one_batch(live) -> list[str]:
    """ada (greedy), bob (seeded sample, another subject) and the bare base, in one batch."""
    calls = [lambda: ask(live, "idiolect/ada"),
             lambda: live.client.chat.completions.create(
                 model="idiolect/bob", messages=[{"role": "user", "content": OTHER}], **SAMPLED),
             lambda: ask(live, "tiny")]
    with ThreadPoolExecutor(3) as pool:
        return [f.result().choices[0].message.content for f in [pool.submit(c) for c in calls]]


def test_the_openings_end_before_anything_a_request_fills_in(tiny_model_dir):
    from transformers import AutoTokenizer

    from idiolect.compile.prompts import prompt_text
    from idiolect.serve.prefix import PrefixCache

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = PrefixCache(tok, 4)
    assert cache.templates and all(cache.templates)
    for subject, to, shots in [("fix: x", ["zed@example.org"], []), ("", [], []),
                               ("Re: y", ["a@b.example"], [("old", "a body")])]:
        ids = tok(prompt_text(tok, subject, to, shots), add_special_tokens=False)["input_ids"]
        n = len(cache.opening(ids))
        assert 0 < n < len(ids)
        opening = tok.decode(ids[:n])
        assert all(part not in opening for part in [subject or "(none)", *to, "a body"])
    cache.put("ada", (1, 2), ["a"])  # another opening of the same length is another entry
    assert cache.get("ada", (3, 4)) is None and cache.get("ada", (1, 2)) == ["a"]
    off = PrefixCache(tok, 0)
    assert off.templates == [] and off.opening(ids) == ()


@pytest.mark.parametrize("openings", ["the-server's", "two-rows-only", "two-lengths"])
def test_rows_from_cached_openings_write_what_the_whole_prompt_writes(serve, two_users,
                                                                      openings):
    """The server's openings (every row's the same length), or ada's and the base's own prompt
    but its last tokens (SUBJECT's) as the only opening (bob's row starts from nothing), or as
    well as the server's (bob's row starts from a shorter prefix, padded on the left)."""
    on = serve(max_batch=3, max_wait_ms=5000)  # each batch starts when its third row arrives
    off = serve(max_batch=3, max_wait_ms=5000, prefix_cache=0)
    prefix = on.app.state.batcher.prefix
    if openings != "the-server's":
        from idiolect.compile.prompts import prompt_text

        tok = on.app.state.batcher.models.tokenizer
        ids = tok(prompt_text(tok, "fix: the cache index is read twice", ["list@example.org"]),
                  add_special_tokens=False)["input_ids"]
        own = tuple(ids[:-3])
        prefix.templates = [own] + ([] if openings == "two-rows-only" else prefix.templates)
    rounds = [(one_batch(on), one_batch(off)) for _ in range(2)]  # the second: from the cache
    for with_cache, without in rounds:
        assert with_cache == without
    assert rounds[0][0] == rounds[1][0]
    s, rows = on.stats, 2 * (2 if openings == "two-rows-only" else 3)
    assert (s["batches"], s["prefix_fills"], s["prefix_rows"]) == (2, 1, rows)
    assert off.stats["prefix_rows"] == off.stats["prefix_fills"] == 0
    assert prefix.names() == ({two_users["ada"], "__base__"} if openings == "two-rows-only"
                              else {two_users["ada"], two_users["bob"], "__base__"})


def test_an_unloaded_adapter_takes_its_cached_opening_along(serve, two_users, home):
    from idiolect import adapters

    live = serve(max_batch=2, max_wait_ms=0)
    batcher = live.app.state.batcher
    before = ask(live, "idiolect/bob").choices[0].message.content
    assert two_users["bob"] in batcher.prefix.names()
    new = random_adapter(home, "bob", "tiny", seed=9)  # promoted: bob's old adapter goes
    assert adapters.active(home.conn, "bob", "tiny")["id"] == new
    after = ask(live, "idiolect/bob").choices[0].message.content
    wait_for(lambda: two_users["bob"] not in batcher.prefix.names(), "the old entry to go")
    assert new in batcher.prefix.names() and after != before


def test_a_sliding_window_base_serves_without_the_cache(serve, sliding_base):
    live = serve(base=sliding_base, max_batch=2, max_wait_ms=0)
    assert live.app.state.batcher.prefix.templates == []
    assert live.client.chat.completions.create(
        model=sliding_base, messages=[{"role": "user", "content": SUBJECT}],
        max_tokens=4, temperature=0).choices[0].message.content is not None
    assert live.stats["prefix_fills"] == 0
