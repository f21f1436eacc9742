"""ORPO (``Recipe.orpo``): each training body preferred over the bare base's own body for the
same prompt, with no reference model."""

from __future__ import annotations

import math

import pytest

from test_transport import RECIPE, add_user


def _batch(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.compile.prompts import encode

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    chosen = [encode(tok, "fix: cache", [], "the cache is read twice; fix it.", 96),
              encode(tok, "refs: lock", [], "drop the lock on refs, it is not needed", 96)]
    rejected = [encode(tok, "fix: cache", [], "Sure! Here is a message.", 96),
                encode(tok, "refs: lock", [], "As an AI I cannot write that", 96)]
    return tok, model, chosen, rejected


def test_orpo_loss_is_the_body_loss_plus_the_odds_ratio_term(tiny_model_dir):
    import torch

    from idiolect.compile.train import body_loss, collate, orpo_loss

    tok, model, chosen, rejected = _batch(tiny_model_dir)
    with torch.no_grad():
        ids, mask, target = collate(chosen, tok.pad_token_id)
        plain, n = body_loss(model, ids, mask, target)
        ids, mask, target = collate(chosen + chosen, tok.pad_token_id)
        same, n2 = orpo_loss(model, ids, mask, target, 2, weight=0.5)
        # equal bodies: equal odds, the term is -log sigmoid(0) = log 2 for each pair
        assert n2 == n and float(same) == pytest.approx(float(plain) + 0.5 * math.log(2),
                                                        abs=1e-4)
        ids, mask, target = collate(chosen + rejected, tok.pad_token_id)
        zero, _ = orpo_loss(model, ids, mask, target, 2, weight=0.0)
        assert float(zero) == pytest.approx(float(plain), abs=1e-4)
        more, _ = orpo_loss(model, ids, mask, target, 2, weight=1.0)
        assert float(more) > float(zero)


def test_orpo_term_pulls_the_chosen_body_up_against_the_rejected(tiny_model_dir):
    """One gradient step on the odds-ratio term alone widens the chosen-minus-rejected gap."""
    import torch

    from idiolect.compile.train import collate, orpo_loss

    tok, model, chosen, rejected = _batch(tiny_model_dir)
    ids, mask, target = collate(chosen + rejected, tok.pad_token_id)

    def gap() -> float:
        with torch.no_grad():
            return float(orpo_loss(model, ids, mask, target, 2, 1.0)[0]
                         - orpo_loss(model, ids, mask, target, 2, 0.0)[0])

    before = gap()
    loss = orpo_loss(model, ids, mask, target, 2, 1.0)[0] - orpo_loss(
        model, ids, mask, target, 2, 0.0)[0]
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad
    assert gap() < before


def test_orpo_keeps_the_plain_schedule():
    """Same steps, same examples per step as without ORPO: only the rejected rows are added."""
    from idiolect.compile.prompts import Example
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.train import schedule

    recipe = Recipe(max_tokens=64, batch_tokens=256, orpo=0.1)
    examples = [Example(list(range(10 + i)), 5, rejected_ids=list(range(60 - i)))
                for i in range(30)]
    plain = [Example(e.input_ids, e.prompt_len) for e in examples]
    assert schedule(examples, recipe) == schedule(plain, recipe)


def test_a_pair_without_a_rejected_body_adds_nothing(tiny_model_dir):
    import torch

    from idiolect.compile.prompts import Example
    from idiolect.compile.train import body_loss, collate, orpo_loss

    tok, model, chosen, rejected = _batch(tiny_model_dir)
    empty = Example(rejected[1].input_ids[:rejected[1].prompt_len], rejected[1].prompt_len)
    with torch.no_grad():
        ids, mask, target = collate(chosen[:1] + rejected[:1], tok.pad_token_id)
        one = orpo_loss(model, ids, mask, target, 1, 1.0)[0]
        ids, mask, target = collate(chosen + [rejected[0], empty], tok.pad_token_id)
        two = orpo_loss(model, ids, mask, target, 2, 1.0)[0]
        ids, mask, target = collate(chosen, tok.pad_token_id)
        nll = body_loss(model, ids, mask, target)[0]
        ids, mask, target = collate(chosen[:1], tok.pad_token_id)
        nll1 = body_loss(model, ids, mask, target)[0]
    # the pair with an empty rejected body is left out of the odds-ratio mean
    assert float(two - nll) == pytest.approx(float(one - nll1), abs=1e-4)


def test_recipe_refuses_orpo_where_the_loop_cannot_run_it():
    from idiolect.compile.recipe import Recipe
    from idiolect.errors import InputError

    assert Recipe(orpo=0.1).orpo == 0.1 and Recipe.from_dict({}).orpo == 0.0
    for bad in ({"orpo": -1.0}, {"orpo": 0.1, "lora_layers": 2}, {"orpo": 0.1, "loss_chunk": 64}):
        with pytest.raises(InputError, match="orpo"):
            Recipe(**bad)


def test_compile_with_orpo_generates_the_rejected_bodies_once(tmp_path, tiny_base, home):
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter

    add_user(tmp_path, "ada", "plain")
    recipe = Recipe.from_dict(RECIPE | {"orpo": 0.5})
    m = compile_adapter(home, CompileRequest("ada", tiny_base, recipe=recipe))
    assert m.recipe["orpo"] == 0.5 and m.tokens["steps"] > 0
    assert m.timings["orpo_generation_s"] > 0
    assert all(math.isfinite(x) for x in m.metrics["train_loss_curve"])
    cached = sorted(home.cache_dir.glob("basegen-*.json"))
    assert len(cached) == 1
    again = compile_adapter(home, CompileRequest("ada", tiny_base, recipe=recipe))
    assert sorted(home.cache_dir.glob("basegen-*.json")) == cached
    # the rejected rows are trained on too: more tokens seen than without orpo
    plain = compile_adapter(home, CompileRequest("ada", tiny_base,
                                                 recipe=Recipe.from_dict(RECIPE)))
    assert again.tokens["seen"] > plain.tokens["seen"]
    assert again.tokens["body"] == plain.tokens["body"]
