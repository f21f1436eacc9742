"""Loading a base with an adapter, and batched generation of message bodies (KV cache, left padding)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import adapters
from .bases import load as bases
from .compile.prompts import cut_echo, prompt_text
from .errors import IdiolectError
from .home import Home


@dataclass
class GenerationConfig:
    """How bodies are sampled: by `idiolect draft`, `eval` (the frozen eval set's protocol) and,
    for fields a request leaves out, `idiolect serve`. The decoding defaults (temperature 1.0,
    top-p 0.95, no repetition penalty: the model's own distribution, its tail trimmed) beat
    0.7 / 0.9 / 1.1 on the 12 git authors on fingerprint distance and subject fit, paired by
    user, with authorship probability not worse beyond noise (bench/results/levers_e1-250.json);
    a repetition penalty above 1 penalizes the very words an author repeats.

    ``top_k`` 50 was transformers' own default under every one of those measurements (its
    ``generate`` applies it when a config leaves it unset); it is written out here so the
    server and llama.cpp sample the same way. 0 turns it off."""

    max_new_tokens: int = 160
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    batch_size: int = 8
    seed: int = 0
    cache: str | None = None  # transformers' cache_implementation ("static"); None: dynamic
    #: cut a body where a line goes on into the prompt's own words (``prompts.cut_echo``);
    #: False: every generated token kept (throughput benches count them)
    cut_echo: bool = True


def load_for_inference(home: Home, base: str, adapter_id: str | None = None, log=None):
    """(model, tokenizer, adapter row or None). The adapter is checked against the base first."""
    ref = bases.resolve(home, base)
    row = adapters.get(home.conn, adapter_id) if adapter_id else None
    if row is not None:
        fp = bases.read_fingerprint(ref)
        if row["base_digest"] != fp["digest"]:
            raise IdiolectError(
                f"adapter {row['id']} was compiled for base {row['base']!r}, not {ref.name!r}:"
                f" see `idiolect transport check {row['id']} --base {ref.name}`"
            )
    model, tok = bases.load(ref, progress=log)
    if row is not None:
        from peft import PeftModel

        folder = Path(row["path"])
        adapters.verify_files(folder)
        model = PeftModel.from_pretrained(model, str(folder))
        model.eval()
    return model, tok, row


@contextmanager
def merged(model):
    """A PEFT model with its LoRA folded into the base weights for the duration, unfolded after
    (any other model as it is). Generation then runs the plain matmuls instead of the base's
    plus LoRA's per module: on SmolLM2-135M 1.07x the tokens/s at batch 64 and 1.1x unbatched,
    same outputs (bench/results/generation_merge.json). Unfolding leaves rounding-level
    differences in the base weights: generate with the bare base (``disable_adapter``) before,
    not after."""
    if not (hasattr(model, "peft_config") and hasattr(model, "merge_adapter")):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def generate_bodies(model, tokenizer, prompts: Sequence[tuple[str, Sequence[str]]],
                    cfg: GenerationConfig | None = None) -> list[str]:
    """One generated body per (subject, recipients) or (subject, recipients, shots), in
    batches, deterministic for a seed. Shots as ``compile.prompts.prompt_text`` takes them."""
    import torch

    cfg = cfg or GenerationConfig()
    texts = [prompt_text(tokenizer, p[0], p[1], p[2] if len(p) > 2 else ()) for p in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(texts), cfg.batch_size):
            chunk = texts[start:start + cfg.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(cfg.seed + start)
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                    temperature=cfg.temperature if cfg.do_sample else None,
                    top_p=cfg.top_p if cfg.do_sample else None,
                    top_k=cfg.top_k if cfg.do_sample else None,
                    repetition_penalty=cfg.repetition_penalty,
                    pad_token_id=tokenizer.pad_token_id,
                    **({"cache_implementation": cfg.cache} if cfg.cache else {}),
                )
            new = out[:, enc["input_ids"].shape[1]:]
            texts_out = tokenizer.batch_decode(new, skip_special_tokens=True)
            outputs.extend(cut_echo(t) if cfg.cut_echo else t.strip() for t in texts_out)
    finally:
        tokenizer.padding_side = old_side
    return outputs


def base_generations(home: Home, ref, prompts: Sequence[tuple[str, Sequence[str]]],
                     cfg: GenerationConfig, model=None, tok=None, log=None) -> list[str]:
    """The bare base's bodies for (subject, recipients) prompts, cached under ``home.cache_dir``
    per base fingerprint, prompts and generation settings (the eval's base scores and the
    catalog's cards both compare with them).

    ``model`` (the base, or a PEFT model on it: its adapter is disabled here) and ``tok`` save a
    load; without them the base ``ref`` is loaded only when the cache misses."""
    import hashlib
    import json
    from dataclasses import asdict

    from .home import atomic_write_json

    parts = [bases.read_fingerprint(ref)["digest"], prompts, asdict(cfg)]
    dtype = str(next(model.parameters()).dtype) if model is not None else "torch.float32"
    if dtype != "torch.float32":  # a base held in bfloat16 samples other bodies (keys of
        parts.append(dtype)       # float32 generations stay as they were)
    key = hashlib.sha256(json.dumps(parts, default=list).encode()).hexdigest()[:24]
    path = home.cache_dir / f"basegen-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    if model is None:
        model, tok = bases.load(ref, progress=log)
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            out = generate_bodies(model, tok, prompts, cfg)
    else:
        out = generate_bodies(model, tok, prompts, cfg)
    atomic_write_json(path, out)
    return out
