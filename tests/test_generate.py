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


def test_sampling_keeps_the_configs_top_k(tiny_lm):
    """top_k reaches ``generate``: top-k 1 samples the greedy text; the default (50, what
    transformers applied unasked) samples what an explicit 50 samples, and no cut samples other
    text (a random model's flat distribution puts mass far past its 50 likeliest tokens)."""
    from idiolect.generate import GenerationConfig, generate_bodies

    model, tok = tiny_lm
    prompts = [(f"subject {i} " + "word " * i, ["a@x.org"]) for i in range(4)]
    run = dict(max_new_tokens=10, batch_size=4, repetition_penalty=3.0)
    greedy = generate_bodies(model, tok, prompts, GenerationConfig(do_sample=False, **run))
    assert generate_bodies(model, tok, prompts, GenerationConfig(top_k=1, **run)) == greedy
    default = generate_bodies(model, tok, prompts, GenerationConfig(**run))
    assert GenerationConfig().top_k == 50
    assert default != greedy
    assert generate_bodies(model, tok, prompts, GenerationConfig(top_k=0, **run)) != default


def test_static_cache_samples_what_the_dynamic_cache_samples(tiny_lm):
    from idiolect.generate import GenerationConfig, generate_bodies

    model, tok = tiny_lm
    prompts = [(f"subject {i} " + "word " * i, ["a@x.org"]) for i in range(5)]
    runs = [generate_bodies(model, tok, prompts, GenerationConfig(max_new_tokens=12, batch_size=5,
                                                                  seed=11, cache=cache))
            for cache in (None, "static")]
    assert sum(map(len, runs[0])) > 0
    assert runs[0] == runs[1]


def test_base_generations_are_the_bare_bases_and_cached_once(home, tiny_base, tiny_model_dir,
                                                             monkeypatch):
    """The one cache of bare-base bodies (eval's base scores, the catalog's cards): an adapter on
    the model is disabled for it, a second call reads the cache without loading or generating,
    other settings are another entry."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect import generate
    from idiolect.bases import load as bases
    from idiolect.generate import GenerationConfig, base_generations, generate_bodies

    ref = bases.resolve(home, tiny_base)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = GenerationConfig(max_new_tokens=10, do_sample=False, repetition_penalty=3.0)
    prompts = [("fix the parser", ["a@x.org"]), ("release notes", [])]
    bare = generate_bodies(base, tok, prompts, cfg)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    assert generate_bodies(peft, tok, prompts, cfg) != bare   # the adapter changes what it writes
    assert base_generations(home, ref, prompts, cfg, model=peft, tok=tok) == bare
    assert len(list(home.cache_dir.glob("basegen-*.json"))) == 1

    def no_model(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(generate, "generate_bodies", no_model)
    monkeypatch.setattr(generate.bases, "load", no_model)
    assert base_generations(home, ref, prompts, cfg) == bare      # no model given: cache only
    with pytest.raises(AssertionError, match="cache was not used"):
        base_generations(home, ref, prompts, GenerationConfig(max_new_tokens=11))


def test_merged_lora_generates_what_the_unmerged_adapter_generates(tiny_model_dir):
    """``merged`` folds a (non-zero) LoRA into the weights for generation: the same bodies as the
    PEFT model's own per-module LoRA path, and the base weights are back (to rounding) after."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.generate import GenerationConfig, generate_bodies, merged

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: make the adapter change something
            p.data.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    prompts = [(f"subject {i}", ["a@x.org"]) for i in range(4)]
    cfg = GenerationConfig(max_new_tokens=10, batch_size=4, seed=3, repetition_penalty=3.0)
    plain = generate_bodies(model, tok, prompts, cfg)
    with model.disable_adapter():
        bare = generate_bodies(model, tok, prompts, cfg)
    with merged(model) as m:
        assert all(layer.merged for layer in m.modules() if hasattr(layer, "lora_A"))
        folded = generate_bodies(m, tok, prompts, cfg)
    assert not any(layer.merged for layer in model.modules() if hasattr(layer, "lora_A"))
    assert folded == plain and plain != bare  # the adapter matters, and merging keeps it exact
    for n, p in model.named_parameters():
        if n in before:
            torch.testing.assert_close(p, before[n], rtol=0, atol=1e-5)


def test_nucleus_gives_the_probabilities_of_transformers_warpers():
    """``nucleus`` (among the top-k only) against transformers' temperature, top-k and top-p
    warpers over the whole vocabulary, with ties at the k-th value in some rows."""
    import torch
    from transformers.generation.logits_process import (LogitsProcessorList,
                                                        TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    from idiolect.generate import nucleus

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 500, generator=g) * torch.tensor([[0.5], [1], [3], [8], [1], [2]])
    logits[4, 100:110] = logits[4].topk(5).values[-1]  # the 5th value tied ten more times
    logits[5, :] = 0.0                                 # every value tied
    for t, k, p in [(1.0, 50, 0.95), (0.7, 5, 0.9), (1.3, 1, 0.5), (1.0, 50, 1.0),
                    (0.5, 500, 0.3), (2.0, 7, 0.99)]:
        warp = LogitsProcessorList([TemperatureLogitsWarper(t), TopKLogitsWarper(k)]
                                   + ([TopPLogitsWarper(p)] if p < 1 else []))
        want = torch.softmax(warp(None, logits.clone()), dim=-1)
        cand, probs = nucleus(logits.clone(), t, k, p)
        got = torch.zeros_like(want).scatter_add_(-1, cand, probs)
        got = got / got.sum(-1, keepdim=True)    # top-p's zeros are not renormalized
        assert torch.allclose(got[:4], want[:4], atol=1e-6), (t, k, p)
        # where values tie, which of them top-p drops is the sort's choice: the same
        # probabilities, not on the same tokens
        assert torch.allclose(got.sort(-1).values, want.sort(-1).values, atol=1e-6), (t, k, p)


class _Recorder:
    """A model whose calls' logits are kept (the lean loop calls the model, nothing else)."""

    def __init__(self, model):
        self.model, self.logits = model, []

    def __call__(self, **kw):
        out = self.model(**kw)
        self.logits.append(out.logits[:, -1])
        return out


def test_the_lean_loops_steps_read_what_a_whole_forward_reads(tiny_lm):
    """Each step's logits through the KV cache (left padding, position ids, the growing mask)
    equal a forward over the whole sampled sequence at that position."""
    import torch

    from idiolect.generate import GenerationConfig, lean_generate

    model, tok = tiny_lm
    tok.padding_side = "left"
    try:
        enc = tok(["x", "a much longer subject line for this one, with words", "fix it"],
                  return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = "right"
    torch.manual_seed(0)
    rec = _Recorder(model)
    cfg = GenerationConfig(max_new_tokens=8, temperature=3.0, top_k=200, decoder="lean")
    new = lean_generate(rec, enc, cfg, eos=[], pad=0)
    assert new.shape == (3, 8) and len({tuple(r) for r in new.tolist()}) == 3
    ids = torch.cat([enc["input_ids"], new], dim=-1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(new)], dim=-1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    width = enc["input_ids"].shape[1]
    for step, got in enumerate(rec.logits):
        assert torch.allclose(got, whole[:, width - 1 + step], atol=1e-4), step


def test_lean_decoding_is_greedy_alike_and_falls_back_where_it_does_not_apply(tiny_lm):
    from idiolect.generate import GenerationConfig, generate_bodies

    model, tok = tiny_lm
    prompts = [("x", ["list@example.org"]), ("a much longer subject line", ["a@x.org"]),
               ("fix the parser", [])]
    for run in (dict(do_sample=False), dict(do_sample=False, repetition_penalty=3.0),
                dict(top_k=0, repetition_penalty=3.0)):
        run = dict(max_new_tokens=12, batch_size=3, **run)
        assert (generate_bodies(model, tok, prompts, GenerationConfig(decoder="lean", **run))
                == generate_bodies(model, tok, prompts, GenerationConfig(**run))), run
    # sampled: the same kind of text, other draws
    lean = generate_bodies(model, tok, prompts, GenerationConfig(
        decoder="lean", max_new_tokens=12, batch_size=3))
    assert len(lean) == 3
