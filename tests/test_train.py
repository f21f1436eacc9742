"""The training loop's pieces: batching to a token budget, body-only loss, exact layer caching."""

from __future__ import annotations

import json
import time

import pytest

from idiolect.compile.prompts import Example
from idiolect.compile.recipe import Recipe
from idiolect.compile.train import collate, make_batches, schedule


def _examples(lengths):
    return [Example(list(range(1, n + 1)), prompt_len=n // 2) for n in lengths]


def test_batches_respect_token_budget_and_cover_every_example():
    ex = _examples([10, 50, 20, 90, 33, 64, 12, 7, 100, 45] * 5)
    recipe = Recipe(max_tokens=128, batch_tokens=256)
    batches = make_batches(ex, recipe, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(ex)))
    for b in batches:
        assert max(len(ex[i].input_ids) for i in b) * len(b) <= 256 or len(b) == 1
    assert make_batches(ex, recipe, 0) == batches and make_batches(ex, recipe, 1) != batches


def test_fractional_epochs_schedule():
    ex = _examples([30] * 40)
    full = schedule(ex, Recipe(max_tokens=64, batch_tokens=120, epochs=1))
    half = schedule(ex, Recipe(max_tokens=64, batch_tokens=120, epochs=1.5))
    assert len(half) == len(full) + len(full) // 2


def test_collate_targets_are_body_tokens_only():
    ids, mask, target = collate([Example([5, 6, 7, 8, 9], 3), Example([1, 2, 3], 1)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # position t predicts token t+1; only body tokens (index >= prompt_len) are targets
    assert target.tolist() == [[-100, -100, 8, 9], [2, 3, -100, -100]]


def test_recipe_rejects_bad_fields_naming_them():
    from idiolect.errors import InputError

    with pytest.raises(InputError, match="batch_tokens"):
        Recipe(max_tokens=256, batch_tokens=100)
    with pytest.raises(InputError, match="rank"):
        Recipe(rank=0)
    with pytest.warns(UserWarning, match="unknown recipe keys"):
        r = Recipe.from_dict({"rank": 8, "flux_capacitor": 1, "schema_version": 1})
    assert r.rank == 8 and r.alpha == Recipe().alpha


def test_cached_lower_layers_give_the_same_loss(tiny_model_dir):
    """LoRA on the top layer with cached lower hidden states == the full forward."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from idiolect.compile.train import body_loss, cache_lower

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                            layers_to_transform=[1], init_lora_weights=False))
    ex = [Example(list(range(3, 3 + n)), prompt_len=4) for n in (12, 20, 9)]
    ids, mask, target = collate(ex, pad_id=0)
    full, n_full = body_loss(peft, ids, mask, target)
    cache = cache_lower(peft, ex, cut=1, pad_id=0, batch_tokens=64)
    cached, n_cached = body_loss(peft, ids, mask, target, cache, cut=1)
    assert n_full == n_cached
    assert float(cached) == pytest.approx(float(full), rel=1e-5)
    cached.backward()
    grads = [p.grad for n, p in peft.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("grad_checkpoint,loss_chunk", [(True, 0), (False, 5), (True, 7)])
def test_memory_savers_give_the_same_loss_and_gradients(tiny_model_dir, grad_checkpoint,
                                                        loss_chunk):
    """Recomputing layer activations and chunking the vocabulary projection change memory,
    not the maths: same loss, same LoRA gradients as the plain step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from idiolect.compile.train import body_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.train()
    ex = [Example(list(range(3, 3 + n)), prompt_len=4) for n in (12, 20, 9)]
    ids, mask, target = collate(ex, pad_id=0)

    def step(**kw):
        peft.zero_grad(set_to_none=True)
        loss, n = body_loss(peft, ids, mask, target, **kw)
        loss.backward()
        return float(loss), n, {k: p.grad.clone() for k, p in peft.named_parameters()
                                if p.requires_grad}

    ref_loss, ref_n, ref_grads = step()
    if grad_checkpoint:
        peft.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        assert peft.get_base_model().is_gradient_checkpointing
    loss, n, grads = step(loss_chunk=loss_chunk)
    assert n == ref_n and n > max(loss_chunk, 1)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for k, g in grads.items():
        assert torch.allclose(g, ref_grads[k], rtol=1e-4, atol=1e-6), k


def test_perplexity_projects_body_positions_only_with_the_same_result(tiny_model_dir):
    """The eval perplexity (vocabulary projection on body tokens only) equals the one computed
    from the model's full logits, for a plain model and for a PeftModel."""
    import math

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import synthetic_messages
    from idiolect.compile.prompts import encode
    from idiolect.evaluate import run
    from idiolect.evaluate.run import perplexity
    from idiolect.vault.message import Message

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [Message(subject=m["subject"], body=m["body"], to=m.get("to", []))
            for m in synthetic_messages("ppl", 11)]
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    for model in (plain, peft.eval()):
        total, count = 0.0, 0
        with torch.no_grad():
            for m in msgs:
                e = encode(tok, m.subject, m.to, m.body, 96)
                ids = torch.tensor([e.input_ids])
                logits = model(input_ids=ids).logits[0, :-1]
                start = max(e.prompt_len, 1)
                total += float(F.cross_entropy(logits[start - 1:], ids[0, start:],
                                               reduction="sum"))
                count += len(e.input_ids) - start
        assert perplexity(model, tok, msgs, 96) == pytest.approx(math.exp(total / count),
                                                                 rel=1e-4)
        # the projection a few rows at a time (the vocabulary's logits never whole): the same
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(run, "NLL_ROWS", 3)
            assert perplexity(model, tok, msgs, 96) == pytest.approx(
                math.exp(total / count), rel=1e-4)
        # a model whose forward transforms its logits (soft capping) is read from its forward
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        def no_decoder():
            raise AssertionError("a capping model's NLL came from its decoder")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(inner.config, "final_logit_softcapping", 0.5, raising=False)
            mp.setattr(inner, "get_decoder", no_decoder)
            capped = perplexity(model, tok, msgs, 96)
        assert capped == pytest.approx(perplexity(model, tok, msgs, 96), rel=1e-4)


def test_a_base_compiles_with_its_registry_recipe_under_what_the_user_sets(tmp_path, monkeypatch):
    import dataclasses
    import json

    from idiolect.bases import registry
    from idiolect.compile.recipe import Recipe, for_base

    spec = registry.REGISTRY["qwen2.5-coder-0.5b"]
    monkeypatch.setitem(registry.REGISTRY, spec.name, dataclasses.replace(
        spec, recipe=(("lr", 5e-4), ("epochs", 1.0), ("target_modules", ("q_proj", "up_proj")))))
    r = for_base("qwen2.5-coder-0.5b")
    assert (r.lr, r.epochs, r.rank) == (5e-4, 1.0, Recipe().rank)
    # the registry's tuples (it is frozen) arrive as the lists a manifest's recipe holds
    assert r.target_modules == ["q_proj", "up_proj"] and Recipe.from_dict(r.to_dict()) == r
    assert for_base("qwen2.5-coder-0.5b", epochs=3.0).epochs == 3.0   # the user's word wins
    assert for_base("some-local-base") == Recipe()                  # local bases: the defaults
    assert for_base(None) == for_base(registry.DEFAULT_BASE)
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"rank": 4}))
    r = Recipe.from_file(f, "qwen2.5-coder-0.5b")          # a file's missing fields: the base's
    assert (r.rank, r.lr, r.epochs) == (4, 5e-4, 1.0)
    assert Recipe.from_file(f).lr == for_base(None).lr


def test_an_invalid_field_in_a_recipe_file_names_the_file(tmp_path):
    import json

    from idiolect.compile.recipe import Recipe
    from idiolect.errors import InputError

    f = tmp_path / "r.json"
    f.write_text(json.dumps({"orpo": 0.1, "loss_chunk": 64}))
    with pytest.raises(InputError, match="with orpo, lora_layers and loss_chunk must be 0") as e:
        Recipe.from_file(f)
    assert str(e.value).startswith(f"{f}: recipe: invalid orpo=0.1")  # the file is named
    with pytest.raises(InputError) as e:  # a recipe not read from a file: named once
        Recipe.from_dict({"rank": 0})
    assert str(e.value).startswith("recipe: invalid rank=0")


def test_a_bfloat16_base_trains_float32_lora_close_to_the_float32_step(tiny_model_dir):
    """base_dtype=bfloat16 halves the frozen weights; the LoRA weights stay float32, and the
    loss and gradients stay close to the float32 step's (not equal: the base is rounded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from idiolect.bases.load import _load_hf
    from idiolect.compile.train import body_loss

    ex = [Example(list(range(3, 3 + n)), prompt_len=4) for n in (12, 20, 9)]
    ids, mask, target = collate(ex, pad_id=0)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model, _ = _load_hf(tiny_model_dir, dtype)
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        peft.train()
        lora = {k: p for k, p in peft.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 for p in lora.values())
        frozen = [p.dtype for k, p in peft.named_parameters() if not p.requires_grad]
        assert set(frozen) == {dtype}
        loss, _ = body_loss(peft, ids, mask, target, loss_chunk=5)
        loss.backward()
        out[dtype] = float(loss), torch.cat([p.grad.flatten() for p in lora.values()])
    (l32, g32), (l16, g16) = out[torch.float32], out[torch.bfloat16]
    assert l16 == pytest.approx(l32, rel=2e-2) and l16 != l32
    assert float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)) > 0.98


def test_recipe_base_dtype_is_checked():
    from idiolect.errors import InputError

    with pytest.raises(InputError, match=r"base_dtype='float16' \(one of float32, bfloat16, auto\)"):
        Recipe(base_dtype="float16")
    assert Recipe.from_dict({"base_dtype": "bfloat16"}).base_dtype == "bfloat16"


def test_compile_on_a_bfloat16_base_saves_a_float32_adapter(tmp_path, tiny_base, home):
    from pathlib import Path

    from safetensors.torch import load_file

    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.generate import load_for_inference
    from test_transport import RECIPE, add_user

    add_user(tmp_path, "ada", "plain")
    m = compile_adapter(home, CompileRequest("ada", "tiny", recipe=Recipe.from_dict(
        RECIPE | {"base_dtype": "bfloat16", "lora_layers": 1})))
    assert m.recipe["base_dtype"] == "bfloat16"
    row = home.conn.execute("SELECT path FROM adapters WHERE id=?", (m.id,)).fetchone()
    tensors = load_file(str(Path(row["path"]) / "adapter_model.safetensors"))
    import torch

    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    model, _, _ = load_for_inference(home, "tiny", m.id)  # inference: the float32 base
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_bfloat16_copy_of_a_base_is_made_in_shards_and_loads_as_the_cast(tiny_model_dir,
                                                                            tmp_path):
    import shutil

    import torch

    from idiolect.bases.load import WEIGHTS_INDEX, _load_hf, ensure_dtype_copy

    src = shutil.copytree(tiny_model_dir, tmp_path / "hf")
    out = ensure_dtype_copy(src, "bfloat16", shard_bytes=1 << 16)
    assert out == tmp_path / "hf-bfloat16" and not list(tmp_path.glob("hf-bfloat16.staging*"))
    index = json.loads((out / WEIGHTS_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    copy, _ = _load_hf(out, torch.bfloat16)
    cast, _ = _load_hf(src, torch.bfloat16)
    a, b = copy.state_dict(), cast.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert ensure_dtype_copy(src, "bfloat16") == out  # made once


def test_concurrent_first_compiles_make_the_bfloat16_copy_once(tiny_model_dir, tmp_path,
                                                               monkeypatch):
    """bf16 is the default where the CPU has it, so two compiles of one home may both find no
    copy: the second waits for the first's and uses it (before, both staged in one folder)."""
    import shutil
    import threading

    from idiolect.bases import load

    src = shutil.copytree(tiny_model_dir, tmp_path / "hf")
    made, make = [], load._make_dtype_copy
    monkeypatch.setattr(load, "_make_dtype_copy",
                        lambda *a: (made.append(1), time.sleep(0.3), make(*a))[2])
    outs, go = [], threading.Barrier(4)

    def first_compile():
        go.wait()
        outs.append(load.ensure_dtype_copy(src, "bfloat16", shard_bytes=1 << 16))

    threads = [threading.Thread(target=first_compile) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outs == [tmp_path / "hf-bfloat16"] * 4 and made == [1]
    assert (outs[0] / load.WEIGHTS_INDEX).exists() and not list(tmp_path.glob("*.staging*"))


def test_an_interrupted_run_recorded_before_a_recipe_field_existed_still_resumes():
    from idiolect.compile.run import CompileRequest, _same_request

    recipe = Recipe(rank=4)
    old = {k: v for k, v in recipe.to_dict().items() if k != "base_dtype"}  # an older idiolect's
    row = {"config": json.dumps({"examples": 8, "parent": None, "recipe": old, "snapshot": "s"})}
    req = CompileRequest("ada", "tiny", 8, recipe)
    assert _same_request(row, req, recipe, "s")
    assert not _same_request(row, req, Recipe(rank=4, base_dtype="bfloat16"), "s")


def test_base_dtype_auto_is_bfloat16_where_the_cpu_has_it(tmp_path, monkeypatch):
    """SmolLM2's recipe asks for "auto": resolved when a compile starts, from the CPU's flags
    (avx512_bf16 or amx_bf16), and recorded resolved; other values pass through."""
    from idiolect.compile import recipe as module
    from idiolect.compile.recipe import Recipe, for_base, native_bfloat16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert native_bfloat16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_vnni\n")
    assert not native_bfloat16(info)
    assert not native_bfloat16(tmp_path / "missing")
    assert for_base("smollm2-135m").base_dtype == "auto"
    for native, want in [(True, "bfloat16"), (False, "float32")]:
        monkeypatch.setattr(module, "native_bfloat16", lambda: native)
        assert Recipe(base_dtype="auto").resolved().base_dtype == want
        assert Recipe(base_dtype="float32").resolved().base_dtype == "float32"


def test_a_compile_resolves_auto_before_it_starts_and_records_that(home, tiny_base, monkeypatch):
    from idiolect.compile import recipe as module
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, resolve_recipe

    monkeypatch.setattr(module, "native_bfloat16", lambda: True)
    req = CompileRequest("u", tiny_base, 8, Recipe(base_dtype="auto"))
    assert resolve_recipe(req, None).base_dtype == "bfloat16"


def test_eager_attention_trains_like_sdpa_and_is_put_back(tiny_model_dir, tmp_path):
    """Recipe.attention="eager" trains with plain-matmul attention (same losses as sdpa's up to
    rounding, padded rows included) and leaves the model's own kernel in place afterwards."""
    import torch
    from peft import LoraConfig, get_peft_model

    from idiolect.bases.load import _load_hf
    from idiolect.compile.train import train

    ex = [Example(list(range(3, 3 + n)), prompt_len=4) for n in (12, 20, 9, 15, 7, 18)]
    losses, seen = {}, {}
    for kernel in ("sdpa", "eager"):
        torch.manual_seed(0)
        model, _ = _load_hf(tiny_model_dir)
        model.set_attn_implementation("sdpa")
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        layer = model.model.layers[0].self_attn
        forward = layer.forward

        def spy(*a, _f=forward, **k):
            seen.setdefault(kernel, set()).add(layer.config._attn_implementation)
            return _f(*a, **k)

        layer.forward = spy
        recipe = Recipe(rank=4, alpha=8, target_modules=["q_proj", "v_proj"], epochs=2,
                        max_tokens=32, batch_tokens=64, warmup_steps=0, lr=1e-2,
                        attention=kernel)
        state = train(peft, ex, recipe, pad_id=0, run_dir=tmp_path / kernel)
        losses[kernel] = state.losses
        assert model.config._attn_implementation == "sdpa"  # put back
    assert seen == {"sdpa": {"sdpa"}, "eager": {"eager"}}
    assert losses["eager"] == pytest.approx(losses["sdpa"], abs=1e-4)
    from idiolect.errors import InputError

    with pytest.raises(InputError, match=r"attention='flash' \(one of sdpa, eager\)"):
        Recipe(attention="flash")


@pytest.mark.parametrize("dtype,dropout", [("float32", 0.0), ("bfloat16", 0.0),
                                           ("bfloat16", 0.1)])
def test_fused_lora_gives_pefts_numbers_and_is_put_back(tiny_model_dir, dtype, dropout,
                                                         monkeypatch):
    """Recipe.lora_compute: "float32" replaces PEFT's LoRA forward with one fused multiply-add
    (the same loss and LoRA gradients to float32 rounding, on a float32 and a bfloat16 base,
    with LoRA dropout too: cast, then dropout, as PEFT does); "base" computes it in the base's
    dtype (the same on a float32 base, close on a bfloat16 one). Every LoRA layer gets the
    fused forward inside and PEFT's back afterwards."""
    import torch
    from peft import LoraConfig, get_peft_model

    from idiolect.bases.load import _load_hf
    from idiolect.compile.train import body_loss, collate, lora_compute

    torch.manual_seed(0)
    model, _ = _load_hf(tiny_model_dir)
    model = model.to(getattr(torch, dtype))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout,
                                            target_modules=["q_proj", "v_proj", "gate_proj",
                                                            "down_proj"]))
    peft.train()  # dropout draws: each run from the same seed
    for n, p in peft.named_parameters():
        if "lora_B" in n:  # B = 0 at init would hide the update's path
            torch.nn.init.normal_(p, std=0.5)
    lora = [m for m in peft.modules() if hasattr(m, "lora_A")]
    ex = [Example(list(range(3, 3 + n)), prompt_len=4) for n in (12, 20, 9)]
    ids, mask, target = collate(ex, 0)

    def run():
        torch.manual_seed(1)
        loss, _ = body_loss(peft, ids, mask, target)
        grads = torch.autograd.grad(loss, [p for p in peft.parameters() if p.requires_grad])
        return float(loss.detach()), grads

    ref_loss, ref = run()
    from peft.tuners.lora.layer import Linear as LoraLinear

    pefts = []  # calls of PEFT's own forward: none while the fused one computes
    monkeypatch.setattr(LoraLinear, "forward", lambda self, *a, _f=LoraLinear.forward, **k: (
        pefts.append(1), _f(self, *a, **k))[1])
    for mode in ("float32", "base"):
        with lora_compute(peft, mode) as n:
            assert n == len(lora) == 4 * model.config.num_hidden_layers
            assert all("forward" in m.__dict__ for m in lora)
            loss, grads = run()
            assert not pefts
        assert not any("forward" in m.__dict__ for m in lora)  # PEFT's forward again
        exact = mode == "float32" or dtype == "float32"
        tol = 1e-5 if exact else 5e-2
        assert loss == pytest.approx(ref_loss, rel=tol)
        for g, r in zip(grads, ref):
            assert (g - r).norm() <= tol * r.norm() + 1e-8
        if not exact:  # the bfloat16 products do change the numbers: the path is live
            assert any((g - r).norm() > 1e-6 * r.norm() for g, r in zip(grads, ref))
    with lora_compute(peft, "peft") as n:
        assert n == 0
    from idiolect.errors import InputError

    with pytest.raises(InputError, match=r"lora_compute='half' \(one of float32, base, peft\)"):
        Recipe(lora_compute="half")


def test_fused_lora_leaves_a_bias_on_b_to_pefts_forward(tiny_model_dir):
    """A LoRA with a bias on B (PEFT's lora_bias) is not what the fused update computes: those
    layers keep PEFT's forward, so the loss is PEFT's exactly."""
    import torch
    from peft import LoraConfig, get_peft_model

    from idiolect.bases.load import _load_hf
    from idiolect.compile.train import body_loss, collate, lora_compute

    torch.manual_seed(0)
    model, _ = _load_hf(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], lora_bias=True))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    ids, mask, target = collate([Example(list(range(3, 15)), prompt_len=4)], 0)
    ref = float(body_loss(peft, ids, mask, target)[0].detach())
    with lora_compute(peft, "base"):
        assert float(body_loss(peft, ids, mask, target)[0].detach()) == ref


def test_training_with_the_fused_lora_is_trainings_with_pefts(tiny_model_dir, tmp_path):
    """Through train() itself, interrupted and resumed: the fused float32 update (the default)
    gives the losses of PEFT's own forward, and every LoRA layer has PEFT's forward again after
    the interruption and after the end."""
    import torch
    from peft import LoraConfig, get_peft_model

    from idiolect.bases.load import _load_hf
    from idiolect.compile.train import train

    ex = [Example(list(range(3, 3 + n)), prompt_len=4) for n in (12, 20, 9, 15, 7, 18)]
    losses = {}
    for mode in ("peft", "float32"):
        torch.manual_seed(0)
        model, _ = _load_hf(tiny_model_dir)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[
            "q_proj", "v_proj", "up_proj"]))
        lora = [m for m in peft.modules() if hasattr(m, "lora_A")]
        recipe = Recipe(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        epochs=2, max_tokens=32, batch_tokens=64, warmup_steps=0, lr=1e-2,
                        checkpoint_every=1, lora_compute=mode)
        with pytest.raises(KeyboardInterrupt):
            train(peft, ex, recipe, pad_id=0, run_dir=tmp_path / mode, stop_after=2)
        assert not any("forward" in m.__dict__ for m in lora)
        fused = []  # while it trains: the fused forward on every LoRA layer, or none
        state = train(peft, ex, recipe, pad_id=0, run_dir=tmp_path / mode, resume=True,
                      progress=lambda p: fused.append(all("forward" in m.__dict__
                                                          for m in lora)))
        assert set(fused) == {mode == "float32"}
        assert state.resumed_from == 2 and not any("forward" in m.__dict__ for m in lora)
        losses[mode] = state.losses
    assert len(losses["float32"]) > 2  # steps after the resume too
    assert losses["float32"] == pytest.approx(losses["peft"], abs=1e-4)


def test_release_memory_hands_freed_heap_pages_back():
    """What a compile's gate gains: memory freed after training stops counting as resident."""
    import gc
    from pathlib import Path

    from idiolect.compile.train import release_memory

    import os

    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc/self/status (not Linux)")
    if any(k in os.environ.get("LD_PRELOAD", "") for k in ("jemalloc", "tcmalloc", "mimalloc")):
        pytest.skip("another allocator preloaded: malloc_trim is glibc's")

    def rss_mb() -> float:
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    # heap chunks below mmap's threshold, written (so resident: calloc'd fresh pages are not)
    blocks = [b"\x01" * (64 * 1024) for _ in range(3000)]
    keep = b"\x02" * (64 * 1024)  # above them: the freed pages are not at the heap's top
    del blocks
    gc.collect()
    before = rss_mb()
    if not release_memory():
        pytest.skip("not glibc: no malloc_trim")
    assert before - rss_mb() > 100, "about 190 MB freed by Python stayed resident"
    assert keep
