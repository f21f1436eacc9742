"""Export an adapter for other runtimes: a GGUF LoRA for llama.cpp / Ollama, or merged weights.

The GGUF LoRA follows llama.cpp's own ``convert_lora_to_gguf.py`` conventions:

- metadata ``general.architecture`` (the llama.cpp name of the base's architecture),
  ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha`` (f32);
- per adapted linear layer two tensors named after the base tensor, ``blk.N.attn_q.weight.lora_a``
  and ``...lora_b``. PEFT's ``lora_A`` is (r, in) and ``lora_B`` (out, r); written as numpy arrays
  of those shapes they become GGUF ``ne = [in, r]`` and ``ne = [r, out]``, which is what
  llama.cpp checks (``a.ne[0] == W.ne[0]``, ``b.ne[1] == W.ne[1]``, ``a.ne[1] == b.ne[0]``);
- llama.cpp applies ``W x + scale * B (A x)`` with ``scale = alpha / rank`` (rank read from
  ``lora_b``), the same as PEFT's plain LoRA. rsLoRA (alpha / sqrt(r)) is written as an alpha
  of ``alpha * sqrt(r)``; per-module rank/alpha patterns are folded into ``lora_b``;
- Llama's ``q_proj`` / ``k_proj`` rows are permuted by the HF -> GGUF converter (the rotary
  layout llama.cpp expects, ``LlamaModel.permute``). The base GGUF holds permuted weights, so
  ``lora_b`` of q and k gets the same row permutation (``lora_a`` acts on the input side and is
  unchanged). Qwen2 and Gemma3 are converted without that permutation.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import lora
from .errors import IdiolectError, Incompatible, InputError
from .home import Home, atomic_write_bytes
from .manifest import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, Manifest


@dataclass(frozen=True)
class ArchSupport:
    gguf_arch: str        # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    permute_qk: bool      # the HF -> GGUF converter permutes q/k rows (rotary layout)
    verified: bool        # checked end to end in llama.cpp (log-likelihoods match PyTorch)


SUPPORTED_ARCHS: dict[str, ArchSupport] = {
    "LlamaForCausalLM": ArchSupport("llama", True, True),
    "Qwen2ForCausalLM": ArchSupport("qwen2", False, False),
    "Gemma3ForCausalLM": ArchSupport("gemma3", False, False),
}


def arch_support(config: dict) -> tuple[str, ArchSupport]:
    """(HF architecture, support) of a base's config.json, or a clear refusal."""
    arch = (config.get("architectures") or [""])[0]
    if arch not in SUPPORTED_ARCHS:
        raise Incompatible(
            f"cannot export to GGUF: base architecture {arch or config.get('model_type')!r} has no"
            f" mapping to llama.cpp tensor names here (supported: {', '.join(SUPPORTED_ARCHS)});"
            " use --format merged for a plain Hugging Face folder instead"
        )
    return arch, SUPPORTED_ARCHS[arch]


def permute_rows(w, n_head: int):
    """llama.cpp's q/k row order from Hugging Face's (``LlamaModel.permute`` on rows)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w, n_head: int):
    """Inverse of :func:`permute_rows`."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read_adapter(adapter_folder: Path) -> tuple[dict, dict]:
    from safetensors.numpy import load_file

    cfg_path, weights = adapter_folder / ADAPTER_CONFIG, adapter_folder / ADAPTER_WEIGHTS
    if not cfg_path.exists() or not weights.exists():
        raise InputError(f"{adapter_folder}: not a PEFT adapter folder ({ADAPTER_CONFIG} and"
                         f" {ADAPTER_WEIGHTS} needed)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise Incompatible(f"{adapter_folder}: peft_type {cfg.get('peft_type')!r}: llama.cpp"
                           " takes LoRA adapters only")
    refusals = [(cfg.get("use_dora"), "DoRA magnitude vectors"),
                (cfg.get("lora_bias"), "LoRA bias terms"),
                (cfg.get("modules_to_save"), "fully trained modules (modules_to_save)")]
    for present, what in refusals:
        if present:
            raise Incompatible(f"{adapter_folder}: llama.cpp LoRA adapters cannot hold {what}")
    return cfg, load_file(str(weights))


def _module_pairs(tensors: dict) -> dict[str, dict[str, object]]:
    """{'model.layers.0.self_attn.q_proj': {'A': ..., 'B': ...}} from PEFT's saved names."""
    pairs, others = lora.group(tensors)
    if others:
        raise Incompatible(f"adapter tensor {others[0]!r} is not a LoRA A/B matrix: llama.cpp"
                           " cannot apply it (embedding or bias adapters are not supported)")
    broken = lora.incomplete(pairs)
    if broken:
        raise InputError(f"adapter: LoRA pair incomplete for {broken[0]}")
    return {m: {"A": p[lora.A], "B": p[lora.B]} for m, p in pairs.items()}


def gguf_lora_tensors(adapter_folder: Path, base_config: dict, dtype: str = "f32",
                      base_modules: dict | None = None) -> tuple[str, float, dict[str, object]]:
    """(llama.cpp arch, alpha, {gguf tensor name: numpy array}) of a PEFT LoRA folder.
    ``base_modules`` (a fingerprint's {module: [out, in]}) checks the shapes against the base."""
    import gguf
    import numpy as np

    if dtype not in ("f32", "f16"):
        raise InputError(f"GGUF LoRA dtype must be f32 or f16, not {dtype!r}")
    _, support = arch_support(base_config)
    cfg, tensors = _read_adapter(adapter_folder)
    pairs = _module_pairs(tensors)
    if not pairs:
        raise InputError(f"{adapter_folder}: the adapter holds no LoRA matrices")
    n_layers = int(base_config["num_hidden_layers"])
    n_head = int(base_config["num_attention_heads"])
    n_kv = int(base_config.get("num_key_value_heads") or n_head)
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == support.gguf_arch)
    names = gguf.TensorNameMap(arch_id, n_layers)
    ranks = {int(p["A"].shape[0]) for p in pairs.values()}
    rank0 = int(cfg.get("r") or min(ranks))
    alpha = lora.scale(cfg, "", rank0) * rank0   # llama.cpp's scale is alpha / rank
    out: dict[str, object] = {}
    for module, pair in sorted(pairs.items()):
        base_name = names.get_name(module)
        if base_name is None or not base_name.startswith("blk."):
            raise Incompatible(f"cannot export to GGUF: adapted module {module!r} has no"
                               f" llama.cpp counterpart in architecture {support.gguf_arch!r}"
                               " (only the linear layers of the transformer blocks map)")
        a = np.asarray(pair["A"], dtype=np.float32)
        b = np.asarray(pair["B"], dtype=np.float32)
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise InputError(f"adapter: {module}: lora_A {a.shape} and lora_B {b.shape} disagree")
        want = (base_modules or {}).get(module)
        if want and [b.shape[0], a.shape[1]] != list(want):
            raise Incompatible(f"adapter: {module} is {b.shape[0]}x{a.shape[1]}, the base's is"
                               f" {want[0]}x{want[1]}: compiled for another base")
        fold = lora.scale(cfg, module, rank) * rank / alpha
        if abs(fold - 1.0) > 1e-6:
            b = b * np.float32(fold)
        if support.permute_qk and base_name.endswith(".attn_q"):
            b = permute_rows(b, n_head)
        elif support.permute_qk and base_name.endswith(".attn_k"):
            b = permute_rows(b, n_kv)
        np_dtype = np.float16 if dtype == "f16" else np.float32
        out[f"{base_name}.weight.lora_a"] = np.ascontiguousarray(a.astype(np_dtype))
        out[f"{base_name}.weight.lora_b"] = np.ascontiguousarray(b.astype(np_dtype))
    return support.gguf_arch, float(alpha), out


def _check_base(adapter_folder: Path, base_fingerprint: dict) -> Manifest | None:
    """The adapter's manifest (when it has one) must name this very base."""
    if not (adapter_folder / MANIFEST).exists():
        return None
    from .adapters import verify_files

    manifest = Manifest.read(adapter_folder)
    verify_files(adapter_folder, manifest)
    want = manifest.base["fingerprint"].get("digest")
    if base_fingerprint and want and want != base_fingerprint.get("digest"):
        raise Incompatible(
            f"adapter {manifest.id} was compiled for base {manifest.base_name!r} ({want[:12]}),"
            f" not this one ({str(base_fingerprint.get('digest'))[:12]}): recompile it for this"
            " base"
        )
    return manifest


def export_gguf_lora(adapter_folder: Path, base_hf_dir: Path, out: Path, base_fingerprint: dict,
                     dtype: str = "f32") -> Path:
    """Write the adapter as a llama.cpp GGUF LoRA file at ``out`` (atomically). Returns ``out``."""
    import gguf

    from . import __version__

    adapter_folder, out = Path(adapter_folder), Path(out)
    base_config = json.loads((Path(base_hf_dir) / "config.json").read_text())
    manifest = _check_base(adapter_folder, base_fingerprint)
    arch, alpha, tensors = gguf_lora_tensors(adapter_folder, base_config, dtype,
                                             base_fingerprint.get("modules"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("." + out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(f"idiolect adapter {manifest.id if manifest else adapter_folder.name}")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16"
                             else gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string("idiolect.version", __version__)
        if manifest:
            writer.add_string("idiolect.adapter_id", manifest.id)
            writer.add_string("idiolect.base_name", manifest.base_name)
        if base_fingerprint.get("digest"):
            writer.add_string("idiolect.base_digest", base_fingerprint["digest"])
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(out)
    return out


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file (a base or an adapter)."""
    import gguf

    field = gguf.GGUFReader(str(path)).get_field(gguf.Keys.General.ARCHITECTURE)
    if field is None:
        raise InputError(f"{path}: no general.architecture in this GGUF file")
    return field.contents()


def export_merged(adapter_folder: Path, base_hf_dir: Path, out: Path) -> Path:
    """Base + adapter merged into plain weights (safetensors, config, tokenizer) in ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .bases.load import quiet_transformers
    from .home import atomic_write_json, publish_dir

    quiet_transformers()
    adapter_folder, out = Path(adapter_folder), Path(out)
    _read_adapter(adapter_folder)
    model = AutoModelForCausalLM.from_pretrained(base_hf_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base_hf_dir)
    merged = PeftModel.from_pretrained(model, str(adapter_folder)).merge_and_unload()
    staging = out.with_name("." + out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, safe_serialization=True)
    tok.save_pretrained(staging)
    manifest = adapter_folder / MANIFEST
    info = {"adapter_folder": str(adapter_folder), "base": str(base_hf_dir)}
    if manifest.exists():
        m = json.loads(manifest.read_text())
        info |= {"adapter_id": m.get("id"), "base_name": m.get("base", {}).get("name"),
                 "base_digest": m.get("base", {}).get("fingerprint", {}).get("digest")}
    atomic_write_json(staging / "idiolect_export.json", info)
    shutil.rmtree(out, ignore_errors=True)
    publish_dir(staging, out)
    return out


def ollama_modelfile(base_gguf: Path, lora_gguf: Path) -> str:
    """An Ollama Modelfile: the base GGUF with the LoRA adapter on top (absolute paths), and
    `idiolect draft`'s sampling (``GenerationConfig``) in place of Ollama's own defaults
    (temperature 0.8, top-k 40, top-p 0.9)."""
    from .generate import GenerationConfig as G

    return (f"# idiolect: base + LoRA adapter; `ollama create NAME -f Modelfile`\n"
            f"FROM {Path(base_gguf).resolve()}\n"
            f"ADAPTER {Path(lora_gguf).resolve()}\n"
            f"PARAMETER temperature {G.temperature:g}\n"
            f"PARAMETER top_p {G.top_p:g}\n"
            f"PARAMETER top_k {G.top_k}\n"
            f"PARAMETER repeat_penalty {G.repetition_penalty:g}\n")


# ------------------------------------------------------------------------------ llama.cpp runtime
def llamacpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCpp:
    """A base GGUF (optionally with a GGUF LoRA) loaded in llama.cpp via llama-cpp-python."""

    def __init__(self, base_gguf: Path, lora_gguf: Path | None = None, n_ctx: int = 1024,
                 n_threads: int | None = None, seed: int = 0, logits_all: bool = True) -> None:
        """``logits_all`` keeps every position's logits (needed to score; off for drafting)."""
        if not llamacpp_available():
            raise IdiolectError("llama.cpp is not installed: pip install llama-cpp-python==0.3.36"
                                " (the `llama` extra)")
        import os

        from llama_cpp import Llama

        self.lora_gguf = lora_gguf
        self.llm = Llama(model_path=str(base_gguf), lora_path=str(lora_gguf) if lora_gguf else None,
                         n_ctx=n_ctx, n_batch=min(n_ctx, 512), logits_all=logits_all, seed=seed,
                         n_threads=n_threads or os.cpu_count(), verbose=False)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def loglik_ids(self, prompt_ids: Sequence[int], ids: Sequence[int]) -> tuple[float, int]:
        """(sum of log p(ids | prompt_ids), number of scored tokens); without a prompt the first
        token is context only."""
        import numpy as np

        seq = list(prompt_ids) + list(ids)
        seq = seq[: self.llm.n_ctx()]
        start = max(len(prompt_ids), 1)
        if len(seq) <= start:
            return 0.0, 0
        self.llm.reset()
        self.llm.eval(seq)
        logits = np.asarray(self.llm.scores[start - 1: len(seq) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logz = np.log(np.exp(logits).sum(axis=1))
        picked = logits[np.arange(len(logits)), seq[start:]]
        return float((picked - logz).sum()), len(logits)

    def loglik(self, texts: Sequence[str | tuple[str, str]]) -> float:
        """Mean per-token log-likelihood over ``texts``; a (prompt, completion) pair scores the
        completion's tokens given the prompt."""
        total, count = 0.0, 0
        for item in texts:
            prompt, text = item if isinstance(item, tuple) else ("", item)
            s, n = self.loglik_ids(self.tokenize(prompt) if prompt else [], self.tokenize(text))
            total, count = total + s, count + n
        return total / max(count, 1)

    def generate(self, prompt: str, max_tokens: int = 160, seed: int = 0,
                 temperature: float | None = None, top_p: float | None = None,
                 repeat_penalty: float | None = None, top_k: int | None = None
                 ) -> tuple[str, int, float]:
        """(text, generated tokens, seconds) for one prompt (prompt evaluation included);
        sampling settings left out are `idiolect draft`'s (``GenerationConfig``). llama.cpp
        applies the temperature after top-k and top-p, transformers before: the same tokens
        at the default temperature 1.0, not at others."""
        from .generate import GenerationConfig as G

        temperature = G.temperature if temperature is None else temperature
        top_p = G.top_p if top_p is None else top_p
        repeat_penalty = G.repetition_penalty if repeat_penalty is None else repeat_penalty
        top_k = G.top_k if top_k is None else top_k  # llama.cpp's own default is 40
        self.llm.reset()
        self.llm.set_seed(seed)
        t0 = time.perf_counter()
        out = self.llm.create_completion(self.tokenize(prompt), max_tokens=max_tokens, seed=seed,
                                         temperature=temperature, top_p=top_p, top_k=top_k,
                                         min_p=0.0, typical_p=1.0,  # off: llama.cpp's own
                                         repeat_penalty=repeat_penalty)  # min_p is 0.05
        seconds = time.perf_counter() - t0
        return out["choices"][0]["text"], int(out["usage"]["completion_tokens"]), seconds


def llamacpp_generate(base_gguf: Path, lora_gguf: Path | None, prompt: str, max_tokens: int = 160,
                      seed: int = 0, **sampling) -> tuple[str, float]:
    """Generate with llama.cpp: (text, tokens per second); ``sampling``: temperature, top_p,
    repeat_penalty (default: `idiolect draft`'s)."""
    runner = LlamaCpp(base_gguf, lora_gguf, seed=seed, logits_all=False)
    text, n, seconds = runner.generate(prompt, max_tokens, seed, **sampling)
    return text, n / max(seconds, 1e-9)


def llamacpp_loglik(base_gguf: Path, lora_gguf: Path | None,
                    texts: Sequence[str | tuple[str, str]]) -> float:
    """Mean per-token log-likelihood of ``texts`` in llama.cpp (see :meth:`LlamaCpp.loglik`)."""
    return LlamaCpp(base_gguf, lora_gguf).loglik(texts)


# ------------------------------------------------------------------------------ one adapter
def export_adapter(home: Home, adapter_id: str, fmt: str = "gguf",
                   out: Path | None = None, dtype: str = "f32", log=None) -> dict:
    """Export one adapter; returns what was written. ``out``: a .gguf file or a folder."""
    from . import adapters
    from .bases import load as bases
    from .compile.retrieve import adapter_recipe

    row = adapters.get(home.conn, adapter_id)
    folder = Path(row["path"])
    ref = bases.resolve(home, row["base"])
    hf_dir = bases.ensure_cached(ref, progress=log)
    fp = bases.read_fingerprint(ref)
    target = Path(out) if out else home.exports_dir / row["id"]
    result = {"adapter": row["id"], "user": row["user"], "base": ref.name, "format": fmt}
    if fmt == "merged":
        merged = target if out else target / "merged"
        result["path"] = str(export_merged(folder, hf_dir, merged))
        return result
    lora_file = (target if target.suffix == ".gguf"
                 else target / f"{row['user']}-{row['id']}.lora.gguf")
    export_gguf_lora(folder, hf_dir, lora_file, fp, dtype=dtype)
    arch = gguf_architecture(lora_file)
    result |= {"path": str(lora_file), "dtype": dtype, "architecture": arch,
               "bytes": lora_file.stat().st_size, "base_gguf": None, "modelfile": None}
    if ref.packaged is None:
        result["note"] = (f"base {ref.name!r} is a local Hugging Face folder with no GGUF: convert it"
                          " with llama.cpp's convert_hf_to_gguf.py, then use it as FROM (base) with"
                          " this file as ADAPTER; no Modelfile written")
        return result
    base_gguf = bases.gguf_path(ref)
    base_arch = gguf_architecture(base_gguf)
    if base_arch != arch:
        raise Incompatible(f"{base_gguf}: base GGUF architecture {base_arch!r} differs from the"
                           f" adapter's {arch!r}")
    modelfile = lora_file.parent / "Modelfile"
    atomic_write_bytes(modelfile, ollama_modelfile(base_gguf, lora_file).encode())
    result |= {"base_gguf": str(base_gguf), "modelfile": str(modelfile)}
    shots = adapter_recipe(row).shots
    if shots:
        result["note"] = (f"this adapter was trained with {shots} of the user's own messages before"
                          " each prompt (shots); Ollama and a plain llama.cpp prompt do not add"
                          " them, so their drafts are asked otherwise than it learned:"
                          " `idiolect draft --runtime llama.cpp` adds them")
    return result
