"""Stacked LoRA (serve/stacked.py): a batch mixing adapters of different ranks, modules and
scales, and bare-base rows, gets PEFT's own mixed-batch logits; loading and unloading restack
without disturbing the others; what stacking cannot serve exactly is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-5, atol=1e-5)
# name: (r, {module suffix: rank of that module}, extra adapter_config)
ADAPTERS = {
    "a": (2, {"q_proj": 2, "v_proj": 2}, {"lora_alpha": 8}),
    "b": (4, {"q_proj": 4, "k_proj": 4, "v_proj": 4, "o_proj": 4},
          {"lora_alpha": 16, "use_rslora": True}),
    "c": (8, {"q_proj": 8, "gate_proj": 8, "up_proj": 8, "down_proj": 3},
          {"lora_alpha": 12, "rank_pattern": {"down_proj": 3}, "alpha_pattern": {"gate_proj": 4}}),
}


def write_adapter(folder: Path, name: str, seed: int, **cfg_extra) -> Path:
    """A PEFT LoRA folder for the tiny base with random A and B (B non-zero, so every adapted
    module moves the logits)."""
    from safetensors.torch import save_file

    r, modules, extra = ADAPTERS[name]
    shapes = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
              "gate_proj": (128, 64), "up_proj": (128, 64), "down_proj": (64, 128)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(2):
        for suffix, rank in modules.items():
            part = "mlp" if suffix in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{part}.{suffix}"
            out, inp = shapes[suffix]
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, inp, generator=g) * 0.3
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, rank, generator=g) * 0.3
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "target_modules": list(modules),
        "lora_dropout": 0.0, **extra, **cfg_extra}))
    return folder


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    return {n: write_adapter(tmp_path / n, n, seed) for seed, n in enumerate(ADAPTERS)}


def base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def peft_with(tiny_model_dir, folders: dict[str, Path]):
    from peft import PeftModel

    names = list(folders)
    model = PeftModel.from_pretrained(base(tiny_model_dir), str(folders[names[0]]),
                                      adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(str(folders[n]), adapter_name=n)
    return model.eval()


def batch(rows: int, width: int = 7):
    """Left-padded prompts of different lengths, as the batcher builds them."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 300, (rows, width), generator=g)
    mask = torch.ones_like(ids)
    for b in range(rows):
        mask[b, :b % 4] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def prefill_and_step(model, names, inputs, **extra):
    """Logits of the prompt pass and of one decode step on its KV cache (the greedy token)."""
    with torch.no_grad():
        out = model(**inputs, use_cache=True, **extra)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], dim=1)
        step = model(input_ids=nxt, attention_mask=mask, position_ids=inputs["position_ids"][:, -1:]
                     + 1, past_key_values=out.past_key_values, use_cache=True, **extra)
    return out.logits, step.logits


def stacked_logits(stack, names, inputs):
    with stack.rows(names):
        return prefill_and_step(stack.model, names, inputs)


def test_a_mixed_batch_of_three_ranks_and_bare_rows_gets_pefts_logits(tiny_model_dir, folders):
    from idiolect.serve.stacked import BASE_ROW, StackedLoRA

    names = ["a", BASE_ROW, "b", "c", "a", BASE_ROW, "c"]
    inputs = batch(len(names))
    want = prefill_and_step(peft_with(tiny_model_dir, folders), names, inputs,
                            adapter_names=names)
    stack = StackedLoRA(base(tiny_model_dir))
    for n, folder in folders.items():
        stack.add(n, folder)
    got = stacked_logits(stack, names, inputs)
    bare = prefill_and_step(stack.model, names, inputs)  # outside ``rows``: the bare base
    for g, w, b in zip(got, want, bare):
        torch.testing.assert_close(g, w, **TOL)
        moved = (w - b).abs().amax(dim=(1, 2))
        assert (moved[[0, 2, 3, 4, 6]] > 1e-2).all()  # each adapter's rows are its own...
        assert (moved[[1, 5]] == 0).all()              # ...and the base's rows are the base's
    # the same batch again reuses the gathered factors; other rows gather anew
    torch.testing.assert_close(stacked_logits(stack, names, inputs)[1], want[1], **TOL)
    first = {k: v[:3] for k, v in inputs.items()}
    torch.testing.assert_close(stacked_logits(stack, names[:3], first)[0], want[0][:3], **TOL)


def test_unloading_and_loading_restack_the_others_unchanged(tiny_model_dir, folders):
    from idiolect.serve.stacked import BASE_ROW, StackedLoRA

    stack = StackedLoRA(base(tiny_model_dir))
    for n, folder in folders.items():
        stack.add(n, folder)
    stack.remove("c")   # the largest rank goes: the stacks shrink to rank 4
    stack.remove("a")   # slots move down
    assert stack.names == ["b"] and {a.shape[2] for a, _ in stack._stacks.values()} == {4}
    stack.add("c", folders["c"])
    names = ["c", BASE_ROW, "b"]
    inputs = batch(3)
    want = prefill_and_step(peft_with(tiny_model_dir, {n: folders[n] for n in ("b", "c")}),
                            names, inputs, adapter_names=names)
    for g, w in zip(stacked_logits(stack, names, inputs), want):
        torch.testing.assert_close(g, w, **TOL)
    bare = prefill_and_step(base(tiny_model_dir), names, inputs)
    stack.clear()  # no hooks left: the model is the bare base again
    with stack.rows([BASE_ROW] * 3):
        torch.testing.assert_close(prefill_and_step(stack.model, names, inputs)[0], bare[0],
                                   rtol=0, atol=0)
    with pytest.raises(KeyError, match="not loaded"), stack.rows(["b"]):
        pass


@pytest.mark.parametrize("change, what", [
    ({"use_dora": True}, "use_dora"), ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "lora_only"}, "bias lora_only"), ({"peft_type": "IA3"}, "peft_type IA3")])
def test_what_stacking_cannot_serve_exactly_is_refused(tiny_model_dir, tmp_path, change, what):
    from idiolect.errors import IdiolectError
    from idiolect.serve.stacked import StackedLoRA

    stack = StackedLoRA(base(tiny_model_dir))
    with pytest.raises(IdiolectError, match=f"plain LoRA only, not {what}.*--lora peft"):
        stack.add("x", write_adapter(tmp_path / "x", "a", 0, **change))
    assert stack.names == [] and stack._hooks == {}


def test_an_adapter_of_another_shape_is_refused_before_anything_is_stacked(tiny_model_dir,
                                                                            tmp_path, folders):
    from safetensors.torch import load_file, save_file

    from idiolect.errors import IdiolectError
    from idiolect.serve.stacked import StackedLoRA

    stack = StackedLoRA(base(tiny_model_dir))
    stack.add("a", folders["a"])
    weights = folders["b"] / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"
    tensors[key] = torch.zeros(64, 4)  # k_proj's out is 32
    save_file(tensors, str(weights))
    with pytest.raises(IdiolectError, match="k_proj's LoRA .* does not fit"):
        stack.add("b", folders["b"])
    assert stack.names == ["a"] and len(stack._hooks) == 4  # a's q and v, two layers
