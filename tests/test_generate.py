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


def test_transformers_generate_samples_with_top_k_50_unless_told(tiny_lm):
    """The premise of GenerationConfig.top_k: ``generate`` left without a top_k samples what
    it samples with 50 (and not what it samples without a cut)."""
    import torch

    model, tok = tiny_lm
    enc = tok(["fix the parser", "x"], return_tensors="pt", padding=True)

    def sample(**kw):
        torch.manual_seed(5)
        return model.generate(**enc, max_new_tokens=10, do_sample=True, temperature=1.0,
                              top_p=1.0, pad_token_id=tok.pad_token_id, **kw).tolist()

    assert sample() == sample(top_k=50) != sample(top_k=0)


def test_static_cache_samples_what_the_dynamic_cache_samples(tiny_lm):
    """transformers' two caches, both through ``generate`` (the lean loop has its own)."""
    from idiolect.generate import GenerationConfig, generate_bodies

    model, tok = tiny_lm
    prompts = [(f"subject {i} " + "word " * i, ["a@x.org"]) for i in range(5)]
    runs = [generate_bodies(model, tok, prompts, GenerationConfig(
                max_new_tokens=12, batch_size=5, seed=11, cache=cache, decoder="hf"))
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
        self.model, self.logits, self.config, self.caches = model, [], model.config, []
        self.parameters = model.parameters

    def __call__(self, **kw):
        out = self.model(**kw)
        self.logits.append(out.logits[:, -1])
        self.caches.append(kw.get("past_key_values"))
        self.rows = getattr(self, "rows", []) + [len(kw["input_ids"])]
        return out


@pytest.mark.parametrize("cache", [None, "dynamic"])
def test_the_lean_loops_steps_read_what_a_whole_forward_reads(tiny_lm, cache):
    """Each step's logits through the KV cache (left padding, position ids, the growing mask)
    equal a forward over the whole sampled sequence at that position: with the preallocated
    cache written in place (None) and with transformers' concatenated one."""
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
    cfg = GenerationConfig(max_new_tokens=8, temperature=3.0, top_k=200, decoder="lean",
                           cache=cache)
    new = lean_generate(rec, enc, cfg, eos=[], pad=0)
    assert new.shape == (3, 8) and len({tuple(r) for r in new.tolist()}) == 3
    width = enc["input_ids"].shape[1]
    kinds = {type(layer).__name__ for layer in rec.caches[-1].layers}
    assert kinds == ({"InPlaceLayer"} if cache is None else {"DynamicLayer"})
    if cache is None:  # the prompt and every new token but the last, in one buffer
        assert {layer.key_buf.shape[-2] for layer in rec.caches[-1].layers} == {width + 8}
    ids = torch.cat([enc["input_ids"], new], dim=-1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(new)], dim=-1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    for step, got in enumerate(rec.logits):
        assert torch.allclose(got, whole[:, width - 1 + step], atol=1e-4), step


def test_lean_decoding_is_greedy_alike_and_falls_back_where_it_does_not_apply(tiny_lm):
    from idiolect.generate import GenerationConfig, generate_bodies

    model, tok = tiny_lm
    prompts = [("x", ["list@example.org"]), ("a much longer subject line", ["a@x.org"]),
               ("fix the parser", [])]
    for run in (dict(do_sample=False), dict(do_sample=False, repetition_penalty=3.0),
                dict(top_k=0, repetition_penalty=3.0), dict(cache="static")):
        run = dict(max_new_tokens=12, batch_size=3, cut_echo=False, **run)
        assert (generate_bodies(model, tok, prompts, GenerationConfig(decoder="lean", **run))
                == generate_bodies(model, tok, prompts, GenerationConfig(decoder="hf", **run))
                ), run
    assert GenerationConfig().decoder == "lean"  # the default since generation_lean.json


def test_the_preallocated_cache_draws_what_the_concatenated_one_draws(tiny_lm):
    """Sampling through the in-place cache gives the dynamic cache's tokens for a seed, and
    the cache refuses a write past its capacity instead of growing."""
    import torch

    from idiolect.generate import GenerationConfig, generate_bodies, preallocated_cache

    model, tok = tiny_lm
    prompts = [("x", ["list@example.org"]), ("a much longer subject line", ["a@x.org"]),
               ("fix the parser", [])]
    run = dict(max_new_tokens=16, batch_size=3, cut_echo=False, temperature=2.0, top_k=100)
    assert (generate_bodies(model, tok, prompts, GenerationConfig(**run))
            == generate_bodies(model, tok, prompts, GenerationConfig(cache="dynamic", **run)))
    cache = preallocated_cache(model, 4)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == 3
        with pytest.raises(RuntimeError, match="capacity 4"):
            model(input_ids=ids[:, :2], past_key_values=cache, use_cache=True)
    cache.crop(-2)  # cropping and resetting move the filled length
    assert cache.get_seq_length() == 1 and cache.layers[0].keys.shape[-2] == 1
    cache.reset()
    assert cache.get_seq_length() == 0
    with pytest.raises(NotImplementedError):  # repeating rows needs a new cache
        cache.batch_repeat_interleave(2)


def test_the_preallocated_cache_keeps_sliding_window_layers_as_they_are():
    """Gemma-3's sliding-window layers stay transformers' own (a window of 8 over 12 prompt
    and 20 new tokens): the lean loop draws what it draws with the dynamic cache."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from idiolect.generate import GenerationConfig, lean_generate, preallocated_cache

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8)).eval()
    kinds = [type(layer).__name__ for layer in preallocated_cache(model, 8).layers]
    assert kinds == ["DynamicSlidingWindowLayer"] * 5 + ["InPlaceLayer"]
    ids = torch.randint(3, 300, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    draws = []
    for cache in (None, "dynamic"):
        torch.manual_seed(1)
        draws.append(lean_generate(model, {"input_ids": ids, "attention_mask": mask},
                                   GenerationConfig(max_new_tokens=20, temperature=2.0,
                                                    cache=cache), eos=[], pad=0).tolist())
    assert draws[0] == draws[1]


def _with_and_without_shrink(model, tok, **run):
    """24 prompts of different lengths, end-of-sequence the three tokens ``model`` writes most
    (a run without ends), then the loop without and with ``shrink`` from one seed: (token
    lists, ``_Recorder`` of each run, the end-of-sequence tokens)."""
    import torch

    from idiolect.generate import GenerationConfig, lean_generate

    tok.padding_side, side = "left", tok.padding_side
    try:
        enc = tok([f"subject {i} " + "x " * (i % 7) for i in range(24)], return_tensors="pt",
                  padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    torch.manual_seed(0)
    free = lean_generate(model, enc, GenerationConfig(**run, shrink=False), eos=[], pad=0)
    vals, counts = free.flatten().unique(return_counts=True)
    eos = vals[counts.argsort(descending=True)[:3]].tolist()
    outs, recs = [], []
    for shrink in (False, True):
        torch.manual_seed(3)
        recs.append(_Recorder(model))
        outs.append(lean_generate(recs[-1], enc, GenerationConfig(**run, shrink=shrink),
                                  eos=eos, pad=0).tolist())
    return outs, recs, eos


@pytest.mark.parametrize("cache", [None, "dynamic"])
def test_rows_that_ended_leave_the_batch_and_every_row_keeps_its_tokens(tiny_lm, cache):
    """With ``shrink`` the model computes fewer rows once rows end, and every row keeps its
    draws: the tokens are those of the loop that computes all rows to the end (which the
    test below checks against ``generate``)."""
    model, tok = tiny_lm
    outs, recs, eos = _with_and_without_shrink(model, tok, max_new_tokens=40, temperature=1.5,
                                               cache=cache)
    assert outs[0] == outs[1]
    assert set(recs[0].rows) == {24} and min(recs[1].rows) < 24 <= max(recs[1].rows)
    assert sorted(recs[1].rows, reverse=True) == recs[1].rows  # shrinks, never grows
    ended = [next((i for i, t in enumerate(r) if t in eos), None) for r in outs[1]]
    assert len(set(ended)) > 2  # rows ended at different steps


def test_a_bfloat16_model_keeps_every_row_in_the_batch(tiny_lm):
    """bfloat16 logits tie with the top-k-th value nearly every step, and how many candidates
    ``nucleus`` draws among depends on the rows computed: such a model never shrinks, so its
    tokens are the full batch's (shrinking them changed 16 of 24 rows)."""
    import copy

    import torch

    model, tok = tiny_lm
    half = copy.deepcopy(model).to(torch.bfloat16)
    outs, recs, eos = _with_and_without_shrink(half, tok, max_new_tokens=30, temperature=1.5,
                                               top_k=20)
    assert outs[0] == outs[1]
    assert set(recs[1].rows) == {24}
    assert any(t in eos for r in outs[1] for t in r)  # rows did end: shrinking was possible


class _StopsAt:
    """A model that makes ``token`` certain for the rows and steps of ``at`` ({step: rows}):
    the end-of-sequence token, to check where each loop stops and pads."""

    def __init__(self, model, token: int, at: dict):
        self.model, self.token, self.at, self.step = model, token, at, 0
        self.generation_config = model.generation_config
        self.config, self.device, self.main_input_name = model.config, model.device, "input_ids"

    def __call__(self, **kw):
        out = self.model(**kw)
        for row in self.at.get(self.step, ()):
            out.logits[row, -1] = -1e4
            out.logits[row, -1, self.token] = 1e4
        self.step += 1
        return out


def test_the_lean_loop_stops_and_pads_rows_at_end_of_sequence_as_generate_does(tiny_lm):
    """Greedy, with row 1 made to end at its 3rd token and the others at their 6th: the lean
    loop's ids equal ``generate``'s (rows padded after their end, no step after the last
    row's), and it stops on the model's generation config's end-of-sequence token."""
    import torch

    from idiolect.generate import GenerationConfig, _eos_ids, lean_generate

    model, tok = tiny_lm
    tok.padding_side, side = "left", tok.padding_side
    try:
        enc = tok(["x", "a much longer subject line", "fix it"], return_tensors="pt",
                  padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    eos = _eos_ids(model, tok)
    assert eos == [model.generation_config.eos_token_id]
    at = {2: [1], 5: [0, 2]}  # rows by their place in the batch: all rows stay in it
    cfg = GenerationConfig(max_new_tokens=12, do_sample=False, shrink=False)
    stub = _StopsAt(model, eos[0], at)
    lean = lean_generate(stub, enc, cfg, eos, pad=tok.pad_token_id)
    assert stub.step == 6 and lean.shape == (3, 6)
    assert lean[1, 2] == eos[0] and (lean[1, 3:] == tok.pad_token_id).all()
    with torch.no_grad():
        want = model.generate(**enc, max_new_tokens=12, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos[0],
                              logits_processor=[_ForceAt(eos[0], at, enc["input_ids"].shape[1])])
    assert lean.tolist() == want[:, enc["input_ids"].shape[1]:].tolist()


def test_generate_bodies_says_which_rows_the_token_limit_cut(tiny_lm):
    """``cut``: the rows that wrote no end-of-sequence token within ``max_new_tokens``."""
    from idiolect.generate import GenerationConfig, _eos_ids, generate_bodies

    model, tok = tiny_lm
    eos = _eos_ids(model, tok)[0]
    prompts = [("x", []), ("a much longer subject line", []), ("fix it", [])]
    cfg = GenerationConfig(max_new_tokens=4, do_sample=False, shrink=False, batch_size=3)
    for at, want in (({2: [1]}, [True, False, True]), ({0: [0, 1, 2]}, [False] * 3),
                     ({}, [True] * 3)):
        cut: list[bool] = []
        bodies = generate_bodies(_StopsAt(model, eos, at), tok, prompts, cfg, cut=cut)
        assert len(bodies) == 3 and cut == want, at


class _ForceAt:
    """The same forcing as a logits processor, for ``generate``."""

    def __init__(self, token, at, width):
        self.token, self.at, self.width = token, at, width

    def __call__(self, input_ids, scores):
        for row in self.at.get(input_ids.shape[1] - self.width, ()):
            scores[row] = -1e4
            scores[row, self.token] = 1e4
        return scores


def test_cache_and_protocol_keys_of_the_old_settings_are_unchanged():
    """Fields added later (top_k at transformers' 50, decoder "hf") stay out of the keys of
    base generations and eval protocols, so those made before them still match; the lean
    decoder, which draws other tokens, is in them."""
    from idiolect.generate import GenerationConfig

    old = {"max_new_tokens", "do_sample", "temperature", "top_p", "repetition_penalty",
           "batch_size", "seed", "cache", "cut_echo"}
    assert set(GenerationConfig(decoder="hf").key()) == old
    assert GenerationConfig().key()["decoder"] == "lean"
    assert GenerationConfig(decoder="hf", top_k=40).key()["top_k"] == 40


@pytest.mark.parametrize("cache", [None, "dynamic"])
def test_rows_of_one_prompt_share_its_prefill_and_keep_their_tokens(tiny_lm, cache):
    """Best-of-N asks each prompt N times in one batch: the prefill runs once per distinct
    prompt and its keys and values are repeated for the others, and every row draws the tokens
    it draws when each row is prefilled (rows ending and leaving the batch as before). A
    bfloat16 model prefills every row (as it never shrinks)."""
    import copy

    import torch

    from idiolect.generate import GenerationConfig, lean_generate

    model, tok = tiny_lm
    tok.padding_side, side = "left", tok.padding_side
    try:
        enc = tok([f"subject {i} " + "x " * i for i in range(5) for _ in range(4)],
                  return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    for m, prefilled in ((model, 5), (copy.deepcopy(model).to(torch.bfloat16), 20)):
        outs, recs = [], []
        for share in (False, True):
            torch.manual_seed(3)
            recs.append(_Recorder(m))
            outs.append(lean_generate(recs[-1], enc, GenerationConfig(
                max_new_tokens=30, temperature=1.5, cache=cache, share_prefill=share),
                eos=[5, 6, 7], pad=0).tolist())
        assert outs[0] == outs[1]
        assert recs[0].rows[0] == 20 and recs[1].rows[0] == prefilled
        assert recs[1].rows[1] <= 20 and len({tuple(r) for r in outs[1]}) > 5  # rows differ


def test_shared_prefills_and_prompts_hold_for_sliding_window_layers():
    """Gemma-3's sliding-window layers (a window of 8 under prompts of 12 tokens and more):
    rows of one prompt sharing its prefill draw what rows prefilled alone draw, and bodies
    read after one shared prompt score as each read after its own copy of it."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from idiolect.evaluate.sense import _after_shared_prompt, _batched_rows
    from idiolect.generate import GenerationConfig, lean_generate

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8)).eval()
    ids = torch.randint(3, 300, (2, 12)).repeat_interleave(3, dim=0)
    mask = torch.ones_like(ids)
    mask[:3, :4] = 0  # the first prompt is left-padded
    draws = []
    for cache in (None, "dynamic"):
        for share in (False, True):
            torch.manual_seed(1)
            draws.append(lean_generate(model, {"input_ids": ids, "attention_mask": mask},
                                       GenerationConfig(max_new_tokens=16, temperature=2.0,
                                                        cache=cache, share_prefill=share),
                                       eos=[], pad=0).tolist())
    assert draws[0] == draws[1] and draws[2] == draws[3]
    prompt = torch.randint(3, 300, (14,)).tolist()
    bodies = [torch.randint(3, 300, (k,)).tolist() for k in (3, 9, 5)]
    shared = _after_shared_prompt(model, prompt, bodies, pad=0)
    alone = _batched_rows(model, [(prompt, b) for b in bodies], pad=0)
    for (a, n), (b, m) in zip(shared, alone):
        assert n == m and a == pytest.approx(b, abs=1e-3)


def test_adapters_in_turn_gives_each_model_as_a_load_of_its_own(tmp_path, tiny_base, home,
                                                                 monkeypatch):
    """The base loaded once with each adapter put on it in turn (one on attention, one on the
    MLP too; the bare base last, after both) computes what a load of its own computes."""
    import torch

    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.generate import adapters_in_turn, load_for_inference
    from test_transport import RECIPE, add_user

    add_user(tmp_path, "ada", "plain")
    ids = [compile_adapter(home, CompileRequest("ada", tiny_base, recipe=Recipe.from_dict(
        {**RECIPE, "lr": 1e-2, **over}))).id for over in (
            {}, {"target_modules": ["q_proj", "v_proj", "gate_proj", "down_proj"]})]
    x = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])

    def logits(model):
        with torch.no_grad():
            return model(input_ids=x).logits

    alone = {aid: logits(load_for_inference(home, tiny_base, aid)[0]) for aid in [*ids, None]}
    for a, b in ((ids[0], ids[1]), (ids[0], None), (ids[1], None)):
        assert not torch.allclose(alone[a], alone[b])  # the test can tell them apart
    from idiolect.bases import load as bases

    loads, load = [], bases.load
    monkeypatch.setattr(bases, "load", lambda *a, **k: loads.append(1) or load(*a, **k))
    seen = []
    for model, _, row in adapters_in_turn(home, tiny_base, [ids[0], ids[1], None, ids[0]]):
        aid = row["id"] if row is not None else None
        torch.testing.assert_close(logits(model), alone[aid])
        seen.append(aid)
    assert seen == [ids[0], ids[1], None, ids[0]] and len(loads) == 1  # the base once


def test_race_probes_the_better_half_and_keeps_the_full_probes_values(tmp_path, tiny_base, home):
    """Local confirmation by successive halving: every candidate sees the first quarter of the
    probe messages, the better half the next quarter, the better half of those all of them; the
    base sees all. What saw every message has the full probe's perplexity; each one dropped was
    worse, on the messages seen when it was dropped, than every one that went on."""
    import math

    from idiolect.catalog.warm_start import probe_perplexities, race_rounds
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.evaluate.run import EvalConfig, token_nll
    from idiolect.vault import store
    from test_transport import RECIPE, add_user

    assert race_rounds(16) == [4, 8, 16] and race_rounds(8) == [2, 4, 8]
    assert race_rounds(2) == [1, 2] and race_rounds(1) == [1] and race_rounds(0) == [0]
    add_user(tmp_path, "ada", "plain")
    ids = [compile_adapter(home, CompileRequest("ada", tiny_base, recipe=Recipe.from_dict(
        {**RECIPE, "lr": lr}))).id for lr in (1e-3, 1e-2, 3e-2)]
    full = probe_perplexities(home, "ada", tiny_base, ids, probe=8)
    raced = probe_perplexities(home, "ada", tiny_base, ids, probe=8, race=True)
    assert full["probed_on"] == dict.fromkeys([None, *ids], 8) and not full["race"]
    assert not probe_perplexities(home, "ada", tiny_base, ids[:1], probe=8, race=True)["race"]
    on, ppl = raced["probed_on"], raced["perplexity"]
    assert on[None] == 8 and sorted(on[a] for a in ids) == [2, 4, 8]  # 3, then 2, then 1
    for a in [None, *ids]:
        if on[a] == 8:
            assert ppl[a] == pytest.approx(full["perplexity"][a], rel=1e-4)
    assert len(set(full["perplexity"].values())) == 4  # the candidates differ
    msgs = store.training_messages(home.conn, "ada", examples=8, seed=0)[0]
    from idiolect.generate import load_for_inference

    def ppl_on(aid, n):
        model, tok, _ = load_for_inference(home, tiny_base, aid)
        total, count = token_nll(model, tok, msgs[:n], EvalConfig().perplexity_tokens)
        return math.exp(total / count)

    for n in (2, 4):  # each one dropped after n messages was worse there than those kept
        dropped = [a for a in ids if on[a] == n]
        kept = [a for a in ids if on[a] > n]
        assert dropped and kept
        assert min(ppl_on(a, n) for a in dropped) >= max(ppl_on(a, n) for a in kept)
        assert all(ppl[a] == pytest.approx(ppl_on(a, n), rel=1e-4) for a in dropped)
