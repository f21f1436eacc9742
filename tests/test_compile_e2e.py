"""End to end on the tiny model: import -> freeze -> compile -> exact artifact -> PEFT loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import synthetic_messages, write_jsonl

EXPECTED_FILES = {"adapter_model.safetensors", "adapter_config.json", "manifest.json", "recipe.json"}
RECIPE = {"rank": 4, "alpha": 8, "epochs": 1, "max_tokens": 96, "batch_tokens": 384,
          "checkpoint_every": 2}


@pytest.fixture
def vault_user(tmp_path, tiny_base, cli_run):
    src = write_jsonl(tmp_path / "ada.jsonl", synthetic_messages("ada", 40))
    r = cli_run("user", "import", "ada", src)
    assert r.exit_code == 0, r.stderr
    assert cli_run("user", "freeze-eval", "ada", "--size", "8").exit_code == 0
    (tmp_path / "recipe.json").write_text(json.dumps(RECIPE))
    return "ada"


def test_compile_writes_exact_peft_folder_and_manifest(vault_user, tiny_base, cli_run, tmp_path):
    r = cli_run("compile", "ada", "--base", "tiny", "--recipe", tmp_path / "recipe.json", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    from idiolect import adapters
    from conftest import open_home

    row = adapters.get(open_home().conn, out["id"])
    folder = Path(row["path"])
    # ada is alone in this home: the gate cannot run, so the new adapter stays a candidate
    assert row["state"] == out["state"] == "candidate"
    assert "the gate cannot run" in out["gate"]["reason"] and out["gate"]["passed"] is None
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
    m = json.loads((folder / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["user"] == "ada" and m["parent"] is None
    assert m["gate"]["status"] == "candidate" and m["gate"]["forced"] is False
    assert m["base"]["name"] == "tiny"
    fp = m["base"]["fingerprint"]
    assert fp["architecture"] == "LlamaForCausalLM"
    assert fp["modules"]["model.layers.0.self_attn.q_proj"] == [64, 64]
    assert len(fp["weights_digest"]) == len(fp["tokenizer_digest"]) == 64
    # 40 messages: 8 frozen for evaluation, 8 reserved as the reference split, 24 to train on
    assert m["snapshot"]["messages"] == 24 and len(m["snapshot"]["digest"]) == 64
    assert m["eval_set"]["size"] == 8
    assert m["recipe"]["rank"] == 4 and m["recipe"]["target_modules"] == [
        "q_proj", "k_proj", "v_proj", "o_proj"]
    assert m["tokens"]["seen"] > m["tokens"]["body"] > 0 and m["tokens"]["steps"] >= 2
    assert set(m["timings"]) == {"load_s", "train_s", "save_s", "total_s", "tokens_per_s"}
    assert m["peak_rss_mb"] > 0 and "torch" in m["packages"] and "peft" in m["packages"]
    assert set(m["files"]) == {"adapter_model.safetensors", "adapter_config.json"}
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "idiolect/tiny" and cfg["r"] == 4

    # plain PEFT loads it onto the base, and the LoRA weights are trained (B no longer zero)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir(folder))
    model = PeftModel.from_pretrained(base, str(folder))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)


def tiny_base_dir(folder: Path) -> str:
    from conftest import open_home

    return open_home().conn.execute("SELECT path FROM local_bases WHERE name='tiny'").fetchone()[0]


def test_training_never_sees_eval_set(vault_user, tiny_base, home):
    from idiolect.vault import store

    conn = home.conn
    held = {m.id for m in store.eval_messages(conn, "ada")}
    train, _ = store.training_messages(conn, "ada")
    assert len(held) == 8 and not held & {m.id for m in train}


def test_interrupted_compile_resumes_from_checkpoint(vault_user, tiny_base, tmp_path, home):
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, Resume, compile_adapter

    conn = home.conn
    recipe = Recipe.from_dict(RECIPE | {"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        compile_adapter(home, CompileRequest("ada", "tiny", recipe=recipe, stop_after=3))
    run = conn.execute("SELECT status FROM runs").fetchone()
    assert run["status"] == "interrupted"
    steps, status = [], []
    m = compile_adapter(home, CompileRequest("ada", "tiny", resume=Resume.LAST),
                        progress=lambda p: (steps.append(p["step"]), status.append(
                            conn.execute("SELECT status FROM runs").fetchone()["status"])))
    assert m.tokens["resumed_from_step"] == 3 and steps[0] == 4
    assert set(status) == {"running"}  # while it runs again, not still "interrupted"
    assert conn.execute("SELECT status FROM runs").fetchone()["status"] == "done"
    assert m.tokens["steps"] == steps[-1]
    # the same schedule run without interruption ends at the same step count and loss
    full = compile_adapter(home, CompileRequest("ada", "tiny", recipe=recipe))
    assert full.tokens["steps"] == m.tokens["steps"]
    assert full.metrics["train_loss_last"] == pytest.approx(m.metrics["train_loss_last"],
                                                                rel=1e-3)


def test_resume_if_same_continues_only_the_same_request(vault_user, tiny_base, home):
    """Resume.IF_SAME (what an upgrade rerun uses): an interrupted compile started with another
    recipe is left alone and a new one starts from step 0; one started with this request
    continues."""
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, Resume, compile_adapter

    conn = home.conn
    recipe = Recipe.from_dict(RECIPE | {"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        compile_adapter(home, CompileRequest("ada", "tiny", recipe=recipe, stop_after=3))
    other = Recipe.from_dict(RECIPE | {"epochs": 2, "lr": recipe.lr * 2})
    with pytest.raises(KeyboardInterrupt):  # not the same request: a new run, from step 0
        compile_adapter(home, CompileRequest("ada", "tiny", recipe=other, resume=Resume.IF_SAME,
                                             stop_after=2))
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    steps = []
    m = compile_adapter(home, CompileRequest("ada", "tiny", recipe=other, resume=Resume.IF_SAME),
                        progress=lambda p: steps.append(p["step"]))
    assert m.tokens["resumed_from_step"] == 2 and steps[0] == 3  # the second run, continued
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    fresh = compile_adapter(home, CompileRequest("ada", "tiny", recipe=recipe, examples=3,
                                                 resume=Resume.IF_SAME))  # other examples: anew
    assert not fresh.tokens["resumed_from_step"]
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 3


def test_draft_uses_active_adapter(vault_user, tiny_base, cli_run, tmp_path):
    r = cli_run("compile", "ada", "--base", "tiny", "--recipe", tmp_path / "recipe.json", "--json")
    assert r.exit_code == 0
    no_active = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix the cache")
    assert no_active.exit_code == 3 and "no active adapter" in no_active.stderr
    adapter_id = json.loads(r.stdout)["id"]
    forced = cli_run("adapter", "promote", adapter_id, "--force")
    assert forced.exit_code == 0 and "(forced)" in forced.stdout, forced.stderr
    r = cli_run("draft", "ada", "--base", "tiny", "--subject", "fix the cache", "--to", "x@y.z",
                "--max-new-tokens", "12", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["user"] == "ada" and d["adapter"] and isinstance(d["body"], str)


def test_low_memory_flag_sets_the_exact_memory_savers(vault_user, cli_run, tmp_path):
    from idiolect.compile.recipe import LOW_MEMORY

    r = cli_run("compile", "ada", "--base", "tiny", "--recipe", tmp_path / "recipe.json",
                "--low-memory", "--candidate", "--json")
    assert r.exit_code == 0, r.stderr
    recipe = json.loads(r.stdout)["recipe"]
    assert {k: recipe[k] for k in LOW_MEMORY} == LOW_MEMORY
    assert recipe["rank"] == RECIPE["rank"]  # the rest of the recipe is the file's
