"""The batch's sampler (serve/sampler.py) draws, per row, what that row sampled alone draws: the
batcher's former per-row sampler (``live.sample_alone``, the reference) with the same
seeded generator, whatever the other rows' settings; and a mixed batch of seeded, sampled
requests writes the same completions through stacked LoRA as through PEFT's mixed batch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openai")

from live import fake_rows, sample_alone, serve, two_users  # noqa: E402,F401 - fixtures


SETTINGS = [dict(), dict(temperature=0.0), dict(temperature=1e-39), dict(top_p=1.0),
            dict(temperature=1.4, top_p=0.5, ignore_eos=True), dict(temperature=0.3, top_p=0.99),
            dict(ignore_eos=True), dict(top_k=0), dict(top_k=1), dict(top_k=3, top_p=0.5),
            dict(top_k=400, temperature=0.5)]


@pytest.mark.parametrize("penalty, first", [(1.1, 16), (1.0, 16), (1.1, 1024)])
def test_each_row_draws_what_it_draws_alone_step_after_step(penalty, first, monkeypatch):
    """``first`` 16: top-p's shortcut decides some rows, others are sorted whole (ties at the
    nucleus' edge, a nucleus past the first 16); 1024 (over the vocabulary): all sorted."""
    from idiolect.serve import sampler as module

    sorted_rows = []
    whole = module._top_p_sorted
    monkeypatch.setattr(module, "_top_p_sorted",
                        lambda p, t: (sorted_rows.append(len(p)), whole(p, t))[1])
    monkeypatch.setattr(module.BatchSampler, "FIRST", first)
    vocab, eos = 300, {0, 7}
    batched, alone = fake_rows(SETTINGS, vocab), fake_rows(SETTINGS, vocab)
    sampler = module.BatchSampler(batched, eos, penalty)
    g = torch.Generator().manual_seed(3)
    live = list(range(len(SETTINGS)))  # indices into ``alone`` of the rows still sampling
    nucleus_rows = 0
    for step in range(40):
        logits = torch.randn(len(live), vocab, generator=g) * (4 if step % 3 else 1)
        tied = slice(10, 14) if step % 2 else slice(0, 300, 7)  # among the first, or spread
        logits[:, tied] = logits.amax(-1, keepdim=True) if step % 4 == 1 else logits[:, 10:11]
        nucleus_rows += sum(SETTINGS[i].get("top_p", 0.9) < 1 and SETTINGS[i].get(
            "temperature", 0.7) > 1e-30 for i in live)
        got = sampler.sample(logits.clone())
        want = [sample_alone(alone[i], logits[b].clone(), eos, penalty)
                for b, i in enumerate(live)]
        assert got == want, f"step {step}"
        for i, token in zip(live, want):
            alone[i].ids.append(token)
        if step % 10 == 9:  # rows leave, as when they end
            keep = [b for b in range(len(live)) if b != step // 10]
            sampler.keep(keep)
            live = [live[b] for b in keep]
    assert len(live) == len(SETTINGS) - 4
    assert 0 < sum(sorted_rows) < nucleus_rows if first == 16 else sum(sorted_rows) == \
        nucleus_rows


def completions(live, requests: list[dict]) -> list[list[str]]:
    """The requests sent at once (one batch); each one's texts."""
    def ask(r):
        out = live.client.completions.create(prompt="fix: the cache index is read twice", **r)
        return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(ask, requests))


def test_seeded_completions_of_a_mixed_batch_are_the_same_stacked_as_through_peft(serve,
                                                                                  two_users):
    requests = [dict(model="idiolect/ada", n=2, seed=7, max_tokens=12),
                dict(model="tiny", seed=3, max_tokens=5),
                dict(model="idiolect/bob", seed=11, temperature=1.3, top_p=1.0, max_tokens=9),
                dict(model="idiolect/ada", seed=9, temperature=0.0, max_tokens=12),
                dict(model="idiolect/bob", seed=1, top_p=0.5, max_tokens=12,
                     extra_body={"ignore_eos": True})]
    texts = {}
    for lora in ("stacked", "peft"):
        live = serve(max_batch=6, max_wait_ms=5000, lora=lora)  # starts when 6 rows are in
        texts[lora] = completions(live, requests)
        assert live.stats["batches"] == 1 and live.stats["max_adapters_in_batch"] == 2
    assert texts["stacked"] == texts["peft"]
    assert len({t for ts in texts["stacked"] for t in ts}) == 6  # seeds and adapters differ
