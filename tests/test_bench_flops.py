"""The FLOP accounting of the benches (bench/common.py): what a figure of achieved GFLOP/s means."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_matmul_params_counts_every_linear_once_and_no_embedding(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from common import matmul_params

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linears = {id(m.weight): m.weight.numel() for m in model.modules()
               if isinstance(m, torch.nn.Linear)}
    assert matmul_params(model) == sum(linears.values())
    # the vocabulary projection is a matmul (counted), the embedding lookup is not
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is emb
    total = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # not the norms
    assert matmul_params(model) == (total if tied else total - emb.numel())


def test_flops_per_token_and_share_of_peak():
    from common import flops

    fwd = flops(100_000_000, 1000, 2.0, "forward", peak_gflops=200.0)
    assert fwd["gflop_per_token"] == 0.2 and fwd["achieved_gflops"] == 100.0
    assert fwd["share_of_peak"] == 0.5
    train = flops(100_000_000, 1000, 2.0, "train", peak_gflops=None)
    assert train["achieved_gflops"] == 200.0 and "share_of_peak" not in train


def test_load_bench_times_a_load_in_a_new_process(tiny_base, isolated_home):
    """bench/load.py: one load in its own process, timed from outside (wall) and inside (load
    alone), with that process's peak RSS; a base that does not load is an error, not a row."""
    import pytest

    from load import one_load

    r = one_load(isolated_home, tiny_base, "float32")
    assert set(r) == {"wall_s", "import_s", "load_s", "params", "peak_rss_mb"}
    assert 0 < r["load_s"] < r["wall_s"] and r["peak_rss_mb"] > 0
    assert r["params"] > 0
    with pytest.raises(SystemExit, match="loading nope"):
        one_load(isolated_home, "nope", "float32")


def test_step_profile_groups_operators_by_what_they_do():
    from step_profile import group

    rank, vocab = 16, 49152
    assert group("aten::mm", [[1024, 576], [576, 16]], rank, vocab) == "LoRA matmuls"
    assert group("aten::mm", [[1024, 576], [576, 1536]], rank, vocab) == "base matmuls"
    assert group("aten::mm", [[256, 576], [576, 49152]], rank, vocab) == "vocabulary projection"
    assert group("aten::_to_copy", [[1024, 576]], rank, vocab) == "casts and copies"
    assert group("aten::_scaled_dot_product_flash_attention_for_cpu", [], rank,
                 vocab) == "attention"
    assert group("aten::_log_softmax", [[256, 49152]], rank, vocab) == "loss softmax"
    assert group("aten::_log_softmax_backward_data", [], rank, vocab) == "loss softmax"
    assert group("aten::_softmax_backward_data", [], rank, vocab) == "attention"
    assert group("aten::_foreach_addcdiv_", [], rank, vocab) == "optimizer and clipping"
    assert group("aten::mul", [[1024, 576], [1024, 576]], rank, vocab) == "other"


def test_step_profile_counts_the_optimizers_operators_as_the_optimizers():
    import torch
    from torch.profiler import ProfilerActivity, profile

    from step_profile import grouped

    lin = torch.nn.Linear(48, 24)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, foreach=False)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        lin(torch.randn(8, 48)).pow(2).sum().backward()
        opt.step()
    rows = grouped(prof.events(), rank=16, vocab=49152)
    # AdamW's per-parameter mul_/addcmul_/add_ run inside its step: the optimizer's, not "other"
    assert "aten::addcmul_" in rows["optimizer and clipping"]["ops"]
    assert "aten::addcmul_" not in rows.get("other", {}).get("ops", {})
    assert "aten::addmm" in rows["base matmuls"]["ops"]  # no operand as wide as the rank
    total = sum(e.self_cpu_time_total for e in prof.events()) / 1e3
    assert abs(sum(r["self_ms"] for r in rows.values()) - total) < 1e-6 * max(total, 1)


def test_step_profile_counts_real_and_padded_tokens_from_the_schedule():
    from idiolect.compile.prompts import Example
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.train import collate, schedule
    from step_profile import step_tokens

    examples = [Example(list(range(1, n + 1)), 2) for n in (20, 60, 62, 128, 200, 14, 100, 180)]
    recipe = Recipe(batch_tokens=256, shots=0, epochs=1.0)
    real, padded = step_tokens(examples, recipe, 3)
    # what the loop feeds the model at each step: its mask's ones and its padded batch's cells
    fed = [collate([examples[i] for i in s], 0) for s in schedule(examples, recipe)[:3]]
    assert real == [int(mask.sum()) for _, mask, _ in fed]
    assert padded == [ids.numel() for ids, _, _ in fed]
