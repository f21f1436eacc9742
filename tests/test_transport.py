"""Transport diagnosis: a wider base is incompatible (shape list), a same-shape base with other
weights is loadable-other-weights, the same base is compatible; --try reports PEFT's real error
in one line; every diagnosis is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from conftest import synthetic_messages, write_jsonl

RECIPE = {"rank": 4, "alpha": 8, "epochs": 1, "max_tokens": 96, "batch_tokens": 384}


def make_variant(folder: Path, like: Path, hidden: int, seed: int) -> Path:
    """A tiny Llama like conftest's ``tiny_model_dir`` (same tokenizer), of another width or
    with other random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(like)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_wide_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """hidden 96 instead of 64, same tokenizer."""
    return make_variant(tmp_path_factory.mktemp("tiny-wide"), tiny_model_dir, 96, 0)


@pytest.fixture(scope="session")
def tiny_other_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Same shapes as tiny, other random weights (seed 1)."""
    return make_variant(tmp_path_factory.mktemp("tiny-other"), tiny_model_dir, 64, 1)


@pytest.fixture
def more_bases(tiny_base, tiny_wide_dir, tiny_other_dir) -> tuple[str, str]:
    from idiolect.bases.load import add_local
    from conftest import open_home

    home = open_home()
    add_local(home, "tiny-wide", tiny_wide_dir)
    add_local(home, "tiny-other", tiny_other_dir)
    return "tiny-wide", "tiny-other"


def add_user(tmp_path: Path, name: str, style: str = "plain", n: int = 40, eval_size: int = 8):
    from conftest import open_home
    from idiolect.vault.ingest import read_source
    from idiolect.vault.store import freeze_eval, import_messages

    src = write_jsonl(tmp_path / f"{name}.jsonl", synthetic_messages(name, n, style=style))
    home = open_home()
    conn = home.conn
    import_messages(conn, name, read_source(src, "jsonl"), source=str(src), fmt="jsonl")
    freeze_eval(conn, name, size=eval_size)


def compile_on(user: str, base: str, activate: bool = True, **recipe):
    """A compiled adapter's manifest; ``activate``: made active without the gate (forced), as a
    fixture for what the tests below examine."""
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from conftest import force_promote, open_home

    home = open_home()
    m = compile_adapter(home, CompileRequest(user, base, recipe=Recipe.from_dict(RECIPE | recipe)))
    if activate:
        force_promote(home, m.id)
    return m


def root_cli():
    """The main group's error handling with our commands on it (cli.py registers them too)."""
    from idiolect.cli import _Group
    from idiolect.commands.upgrade import transport, upgrade_cmd

    @click.group(cls=_Group)
    def root() -> None:
        pass

    root.add_command(transport)
    root.add_command(upgrade_cmd)
    return root


@pytest.fixture
def run_cli():
    from click.testing import CliRunner

    root = root_cli()

    def run(*args):
        return CliRunner().invoke(root, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def ada_adapter(tmp_path, tiny_base, more_bases) -> str:
    add_user(tmp_path, "ada")
    return compile_on("ada", "tiny").id


def test_wider_base_is_incompatible_with_the_shape_list(ada_adapter):
    from conftest import open_home
    from idiolect.transport import diagnose

    home = open_home()

    conn = home.conn
    d = diagnose(home, ada_adapter, "tiny-wide")
    assert d["verdict"] == "incompatible"
    assert d["architecture"]["same"] and d["tokenizer"]["same"]
    assert not d["weights"]["same"] and not d["digest"]["same"]
    assert d["modules"] == {"adapted": 8, "present": 8, "missing": [], "other_tensors": []}
    # q/o: A [4,64] vs [4,96] and B [64,4] vs [96,4]; k/v: A differs, B [32,4] vs [48,4]
    assert d["shapes"]["checked"] == 16 and d["shapes"]["differ"] == 16
    assert d["shapes"]["first"][0] == "model.layers.0.self_attn.q_proj lora_A [4,64] vs [4,96]"
    assert "model.layers.0.self_attn.k_proj lora_B [32,4] vs [48,4]" in d["shapes"]["first"]
    assert "\n" not in d["message"] and d["message"].startswith("incompatible: 16 of 16 tensor")
    assert "model.layers.0.self_attn.q_proj lora_A [4,64] vs [4,96]" in d["message"]
    row = conn.execute("SELECT * FROM transports WHERE id=?", (d["id"],)).fetchone()
    assert row["verdict"] == "incompatible" and row["adapter"] == ada_adapter
    assert row["from_base"] == "tiny" and row["to_base"] == "tiny-wide"
    assert json.loads(row["report"])["shapes"]["differ"] == 16


def test_same_shapes_other_weights_and_same_base(ada_adapter):
    from conftest import open_home
    from idiolect.transport import diagnose, history

    home = open_home()

    conn = home.conn
    other = diagnose(home, ada_adapter, "tiny-other")
    assert other["verdict"] == "loadable-other-weights"
    assert other["shapes"]["differ"] == 0 and other["tokenizer"]["same"]
    assert "mechanically loadable but compiled for other weights" in other["message"]
    same = diagnose(home, ada_adapter, "tiny")
    assert same["verdict"] == "compatible" and same["digest"]["same"] and not same["reasons"]
    assert [h["verdict"] for h in history(conn, ada_adapter)] == [
        "compatible", "loadable-other-weights"]
    assert diagnose(home, ada_adapter, "tiny", record=False)["verdict"] == "compatible"
    assert len(history(conn)) == 2


def test_compare_names_architecture_tokenizer_and_missing_modules():
    from idiolect.transport import compare

    src = {"architecture": "LlamaForCausalLM", "model_type": "llama", "tokenizer_digest": "a",
           "weights_digest": "w1", "digest": "d1",
           "modules": {"model.layers.0.self_attn.q_proj": [64, 64],
                       "model.layers.0.mlp.gate_proj": [128, 64]}}
    dst = {"architecture": "Qwen2ForCausalLM", "model_type": "qwen2", "tokenizer_digest": "b",
           "weights_digest": "w2", "digest": "d2",
           "modules": {"model.layers.0.self_attn.q_proj": [64, 64]}}
    shapes = {"model.layers.0.self_attn.q_proj": {"lora_A": [4, 64], "lora_B": [64, 4]},
              "model.layers.0.mlp.gate_proj": {"lora_A": [4, 64], "lora_B": [128, 4]}}
    d = compare(src, dst, shapes)
    assert d["verdict"] == "incompatible" and d["shapes"]["differ"] == 0
    assert d["modules"]["missing"] == ["model.layers.0.mlp.gate_proj"]
    assert d["message"] == (
        "incompatible: the architecture differs (LlamaForCausalLM vs Qwen2ForCausalLM), 1 of 2"
        " adapted modules are missing on the target (first: model.layers.0.mlp.gate_proj) and"
        " the tokenizer differs.")
    # tensors that do not match the adapter's own manifest are called out too
    bad = compare(src, src, {"model.layers.0.self_attn.q_proj": {"lora_A": [4, 32]}})
    assert bad["verdict"] == "incompatible" and bad["manifest_mismatch"]


def test_a_chat_template_alone_does_not_make_the_tokenizer_differ():
    """Qwen2.5-Coder 0.5B and 1.5B share the vocabulary; their chat templates differ by one
    escape. Token ids are what an adapter depends on: the tokenizer counts as the same."""
    from idiolect.transport import compare

    mods = {"model.layers.0.self_attn.q_proj": [64, 64]}
    shapes = {"model.layers.0.self_attn.q_proj": {"lora_A": [4, 64], "lora_B": [64, 4]}}
    src = {"architecture": "Qwen2ForCausalLM", "model_type": "qwen2", "tokenizer_digest": "t1",
           "vocab_digest": "v", "chat_template_digest": "c1", "weights_digest": "w1",
           "digest": "d1", "modules": mods}
    dst = src | {"tokenizer_digest": "t2", "chat_template_digest": "c2", "weights_digest": "w2",
                 "digest": "d2", "modules": {"model.layers.0.self_attn.q_proj": [64, 96]}}
    d = compare(src, dst, shapes)
    assert d["tokenizer"]["same"] and not d["tokenizer"]["chat_template_same"]
    assert d["message"] == (
        "incompatible: 1 of 2 tensor shapes differ (first: model.layers.0.self_attn.q_proj"
        " lora_A [4,64] vs [4,96]); the tokenizer has the same vocabulary, only its chat"
        " template differs.")
    # another vocabulary is another tokenizer; a fingerprint without vocab_digest (older
    # manifests) falls back to the whole tokenizer
    assert not compare(src, dst | {"vocab_digest": "v2"}, shapes)["tokenizer"]["same"]
    # the template compared on its own digest: same template, other vocabulary
    other_vocab = compare(src, dst | {"vocab_digest": "v2", "chat_template_digest": "c1"}, shapes)
    assert other_vocab["tokenizer"]["chat_template_same"]
    assert not other_vocab["tokenizer"]["same"]
    old = {k: v for k, v in src.items() if k != "vocab_digest"}
    assert not compare(old, dst, shapes)["tokenizer"]["same"]


def test_fingerprint_splits_vocabulary_and_template_and_keeps_old_digests(tiny_model_dir):
    from transformers import AutoTokenizer

    from idiolect.bases.load import tokenizer_digests

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    d = tokenizer_digests(tok)
    fp = json.loads((tiny_model_dir / "fingerprint.json").read_text()) if (
        tiny_model_dir / "fingerprint.json").exists() else None
    if fp is not None:
        assert fp["tokenizer_digest"] == d["tokenizer_digest"]
    tok.chat_template = (tok.chat_template or "") + " "
    e = tokenizer_digests(tok)
    assert e["vocab_digest"] == d["vocab_digest"]
    assert e["chat_template_digest"] != d["chat_template_digest"]
    assert e["tokenizer_digest"] != d["tokenizer_digest"]


def test_a_fingerprint_cached_before_vocab_digest_gains_it_once(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from idiolect.bases.load import BaseRef, fingerprint, read_fingerprint, tokenizer_digests

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "old"))
    tok = AutoTokenizer.from_pretrained(folder)
    fp = fingerprint(AutoModelForCausalLM.from_pretrained(folder), tok)
    old = {k: v for k, v in fp.items() if k not in ("vocab_digest", "chat_template_digest")}
    (folder / "fingerprint.json").write_text(json.dumps(old))
    got = read_fingerprint(BaseRef("old", "local", folder))
    assert got == fp and got["digest"] == old["digest"]  # the pinned digest does not move
    assert json.loads((folder / "fingerprint.json").read_text()) == fp
    assert got["vocab_digest"] == tokenizer_digests(tok)["vocab_digest"]
    # a folder whose tokenizer cannot be loaded keeps its fingerprint as it is
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    (bare / "fingerprint.json").write_text(json.dumps(old))
    assert read_fingerprint(BaseRef("bare", "local", bare)) == old


def test_unreadable_adapter_tensors_are_one_clean_error(ada_adapter):
    from idiolect import adapters
    from idiolect.errors import InputError
    from conftest import open_home
    from idiolect.transport import diagnose

    home = open_home()

    conn = home.conn
    folder = Path(adapters.get(conn, ada_adapter)["path"])
    (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="unreadable safetensors"):
        diagnose(home, ada_adapter, "tiny-wide")


def test_cli_check_exit_codes_and_one_line_real_error(ada_adapter, run_cli):
    r = run_cli("transport", "check", ada_adapter, "--base", "tiny-wide", "--try", "--json")
    assert r.exit_code == 5
    d = json.loads(r.stdout)  # the report is still one JSON document on stdout
    assert d["verdict"] == "incompatible" and d["load"]["loaded"] is False
    err = d["load"]["error"]
    assert "\n" not in err and len(err) <= 400
    assert err.startswith("RuntimeError: Error(s) in loading state_dict for PeftModelForCausalLM:"
                          " size mismatch for base_model.model.model.layers.")
    assert err.endswith("more)") or err.endswith("...")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: incompatible: 16 of 16 tensor shapes")

    r = run_cli("transport", "check", ada_adapter, "--base", "tiny-other", "--try")
    assert r.exit_code == 0, r.stderr
    assert "load          loaded" in r.stdout
    assert "verdict: loadable-other-weights: mechanically loadable" in r.stdout
    r = run_cli("transport", "check", ada_adapter, "--base", "tiny")
    assert r.exit_code == 0 and "verdict: compatible" in r.stdout

    from conftest import open_home

    rows = open_home().conn.execute("SELECT to_base, loaded, load_error FROM transports"
                             " ORDER BY created_at, id").fetchall()
    assert [(r["to_base"], r["loaded"]) for r in rows] == [
        ("tiny-wide", 0), ("tiny-other", 1), ("tiny", None)]
    assert rows[0]["load_error"] == err
    r = run_cli("transport", "list", "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 3
    for args in (["transport", "--help"], ["transport", "check", "--help"], ["upgrade", "--help"]):
        assert run_cli(*args).exit_code == 0
    r = run_cli("transport", "check", "NOPE", "--base", "tiny")
    assert r.exit_code == 3 and r.stderr.startswith("error: unknown adapter")
