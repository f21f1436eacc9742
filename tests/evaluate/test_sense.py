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
