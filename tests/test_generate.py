"""Batched generation (left padding, KV cache) gives what one prompt at a time gives."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    """(model, tokenizer) of the tiny random-weight Llama."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.mark.parametrize("cache", [None, "static"])
def test_batched_greedy_equals_one_at_a_time(tiny_lm, cache):
    from idiolect.generate import GenerationConfig, generate_bodies

    model, tok = tiny_lm
    # prompts of different lengths, so the batch is left-padded
    prompts = [("x", ["list@example.org"]),
               ("a much longer subject line for this one", ["a@x.org", "b@y.org", "c@z.org"]),
               ("fix the parser", [])]
    # a random model repeats one token (a newline, stripped): the penalty makes it write
    greedy = dict(max_new_tokens=12, do_sample=False, repetition_penalty=3.0)
    alone = generate_bodies(model, tok, prompts, GenerationConfig(batch_size=1, **greedy))
    batched = generate_bodies(model, tok, prompts,
                              GenerationConfig(batch_size=3, cache=cache, **greedy))
    assert all(alone)
    assert batched == alone


def test_static_cache_samples_what_the_dynamic_cache_samples(tiny_lm):
    from idiolect.generate import GenerationConfig, generate_bodies

    model, tok = tiny_lm
    prompts = [(f"subject {i} " + "word " * i, ["a@x.org"]) for i in range(5)]
    runs = [generate_bodies(model, tok, prompts, GenerationConfig(max_new_tokens=12, batch_size=5,
                                                                  seed=11, cache=cache))
            for cache in (None, "static")]
    assert sum(map(len, runs[0])) > 0
    assert runs[0] == runs[1]
