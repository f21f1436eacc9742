"""LoRA tensor names and scale (idiolect.lora), read once for transport, export, merge and the
catalog server; the scale agrees with what PEFT itself applies."""

from __future__ import annotations

import math

import pytest

from idiolect import lora


def test_split_and_key_are_inverse_and_refuse_other_tensors():
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert lora.split(name) == ("model.layers.0.self_attn.q_proj", "lora_A")
    assert lora.key(*lora.split(name)) == name
    assert lora.split("model.layers.1.mlp.up_proj.lora_B.default.weight") == (
        "model.layers.1.mlp.up_proj", "lora_B")
    for other in ("base_model.model.model.embed_tokens.weight", "x.lora_B.bias",
                  "x.lora_embedding_A", "x.lora_magnitude_vector.weight", "lora_A.weight"):
        assert lora.split(other) is None, other


def test_group_and_incomplete():
    tensors = {"base_model.model.m.q.lora_A.weight": 1, "base_model.model.m.q.lora_B.weight": 2,
               "base_model.model.m.k.lora_A.weight": 3, "base_model.model.lm_head.weight": 4}
    pairs, others = lora.group(tensors)
    assert pairs == {"m.q": {"lora_A": 1, "lora_B": 2}, "m.k": {"lora_A": 3}}
    assert others == ["base_model.model.lm_head.weight"]
    assert lora.incomplete(pairs) == ["m.k"]


def test_scale_plain_rslora_and_alpha_pattern():
    assert lora.scale({"r": 8, "lora_alpha": 16}) == 2.0
    assert lora.scale({"r": 16, "lora_alpha": 16, "use_rslora": True}) == 4.0
    assert lora.scale({"r": 8}) == 1.0                       # PEFT's default alpha is 8
    cfg = {"r": 8, "lora_alpha": 16, "alpha_pattern": {"v_proj": 4}}
    assert lora.scale(cfg, "model.layers.0.self_attn.v_proj") == 0.5
    assert lora.scale(cfg, "model.layers.0.self_attn.q_proj", rank=4) == 4.0


@pytest.mark.parametrize("rslora", [False, True])
def test_scale_is_the_one_peft_applies(tiny_model_dir, rslora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"],
                     use_rslora=rslora, rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 3})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    saved = cfg.to_dict()
    checked = 0
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)   # LoRA layers: {adapter name: scale}
        if isinstance(scaling, dict) and "default" in scaling:
            mod = name.removeprefix("base_model.model.")
            rank = module.lora_A["default"].weight.shape[0]
            assert lora.scale(saved, mod, rank) == pytest.approx(scaling["default"]), mod
            checked += 1
    assert checked == 4
    assert not math.isclose(lora.scale(saved, "model.layers.0.self_attn.v_proj", 2),
                            lora.scale(saved, "model.layers.0.self_attn.q_proj", 4))
