"""The sense judge (evaluate/sense.py) on the tiny model: order effects cancel, distractors come
from other subjects, scores carry intervals. (Whether a real judge separates drafts from real
mail is measured by bench/sense.py, not here.)"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.evaluate.sense import Judge, JudgeConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return Judge(model, AutoTokenizer.from_pretrained(tiny_model_dir),
                 JudgeConfig(max_body_tokens=24, batch_size=3))


def test_both_orders_are_asked_so_position_cancels(judge):
    items = [("fix: the cache", "the cache index is read twice", "add a test for refs"),
             ("add: patch", "Shout Line Here!", "")]
    ab = judge.prefer(items)
    ba = judge.prefer([(s, b, a) for s, a, b in items])
    assert all(0.0 <= p <= 1.0 for p in ab)
    assert ab == pytest.approx([1 - p for p in ba], abs=1e-5)
    assert judge.prefer([(items[0][0], items[0][1], items[0][1])]) == pytest.approx([0.5])


def test_distractors_and_scores(judge):
    from idiolect.evaluate.sense import distractors, sense, tells_apart

    pool = [("fix: a", "body a"), ("Fix: A ", "body a2"), ("add: b", "body b")]
    assert distractors(["fix: a"], pool, seed=3) == ["body b"]  # never the same subject
    s = sense(judge, ["fix: a", "add: b"], ["body a", "body b"], pool)
    assert s["n"] == 2 and len(s["fits"]) == 2 and s["interval"]["ci"][0] <= s["score"] + 1e-9
    t = tells_apart(judge, ["fix: a"], ["body a"], ["noise noise"])
    assert 0.0 <= t["score"] <= 1.0 and t["n"] == 1


def test_subject_overlap_counts_the_subjects_topic_words_a_body_repeats():
    from idiolect.evaluate.sense import subject_overlap, subject_words

    assert subject_words("[PATCH v2 3/5] refs: avoid reading the packed-refs file twice") == {
        "refs", "avoid", "reading", "packed", "file", "twice"}
    subjects = ["refs: avoid reading the packed-refs file twice", "Re: fix", "t/t1234: add test"]
    parrot = ["refs avoid reading packed file twice", "anything", "nothing to see"]
    real = ["We read the packed file twice when the refs are loose.", "ok", "Looks good."]
    p, r = subject_overlap(subjects, parrot), subject_overlap(subjects, real)
    assert p["n"] == r["n"] == 2  # "Re: fix" has no topic word
    assert p["score"] == 0.5 and r["score"] == (4 / 6) / 2
    assert p["interval"]["ci"][1] >= p["score"] >= p["interval"]["ci"][0]
    assert subject_overlap(["Re: ok"], ["ok"]) == {"score": None, "interval": None, "n": 0}


def test_body_logprobs_equal_the_full_sequence_computation(tiny_model_dir):
    """Reading logits only from the first body position on changes nothing: each body's summed
    log-probability is the one of a plain full forward pass of that row alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.evaluate.sense import _body_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = ["Subject: fix the cache\n\n", "Subject: a much longer subject about refs and"
               " the packed-refs file that we read twice\n\n", "x\n\n"]
    bodies = ["We read it twice.", "The lock is taken for nothing, so drop it.", "ok"]
    got = _body_logprobs(model, tok, prompts, bodies, max_body_tokens=6, batch_size=3)
    for (lp, n), p, b in zip(got, prompts, bodies):
        pi = tok.encode(p, add_special_tokens=False)
        bi = tok.encode(b, add_special_tokens=False)[:6]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([pi + bi])).logits[0], -1)
        want = sum(float(logp[len(pi) - 1 + k, t]) for k, t in enumerate(bi))
        assert n == len(bi) and lp == pytest.approx(want, abs=1e-3)


def test_bodies_after_a_shared_prompt_score_as_alone(tiny_model_dir, monkeypatch):
    """Bodies asked after the same prompt (``draft.self_fit``'s rows: every candidate after
    each subject) share the prompt's forward pass; each still gets the log-probability of a full
    forward pass of its own row, bodies of unequal lengths and rows of a prompt of their own
    alike, in the order asked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.evaluate.sense import _body_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    subjects = ["Subject: fix the cache\n\n", "Subject: refs: read packed-refs once\n\n"]
    bodies = ["We read it twice.", "The lock is taken for nothing, so drop it.", "ok",
              "A longer body that is cut to the first few tokens by the cap.", "",
              "one", "two words", "three more words", "and a fourth", "the tenth body"]
    # 10 bodies a subject: more than one shared group of 8; "" is read as the end token
    rows = [(p, b) for p in subjects for b in bodies] + [("x\n\n", "alone")]

    class NoCache(torch.nn.Module):  # a model that keeps no cache: each row is read whole
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            out = self.m(**kw)
            out.past_key_values = None
            return out

    from idiolect.evaluate import sense

    whole_rows, batched = [], sense._batched_rows

    def spied(model, rows, pad):  # the real function, counting the rows it reads whole
        whole_rows.extend(rows)
        return batched(model, rows, pad)

    monkeypatch.setattr(sense, "_batched_rows", spied)
    for m, whole in ((model, 1), (NoCache(model), len(rows))):
        whole_rows.clear()
        got = _body_logprobs(m, tok, [p for p, _ in rows], [b for _, b in rows],
                             max_body_tokens=8, batch_size=3)
        assert len(whole_rows) == whole  # with a cache, only the row of a prompt of its own
        assert len(got) == len(rows)
        for (lp, n), (p, b) in zip(got, rows):
            pi = tok.encode(p, add_special_tokens=False)
            bi = tok.encode(b, add_special_tokens=False)[:8] or [tok.eos_token_id]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([pi + bi])).logits[0], -1)
            want = sum(float(logp[len(pi) - 1 + k, t]) for k, t in enumerate(bi))
            assert n == len(bi) and lp == pytest.approx(want, abs=1e-3), (p, b)
