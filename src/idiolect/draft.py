"""Draft a message in a user's voice with their active adapter."""

from __future__ import annotations

from typing import Sequence

from . import adapters
from .bases import load as bases
from .generate import GenerationConfig, generate_bodies, load_for_inference
from .home import Home
from .vault import store


def draft(home: Home, user: str, subject: str, to: Sequence[str] = (),
          base: str | None = None, adapter_id: str | None = None,
          cfg: GenerationConfig | None = None, log=None) -> dict:
    conn = home.conn
    store.require_user(conn, user)
    ref = bases.resolve(home, base)
    if adapter_id is None:
        adapter_id = adapters.require_active(conn, user, ref.name)["id"]
    model, tok, row = load_for_inference(home, ref.name, adapter_id, log=log)
    body = generate_bodies(model, tok, [(subject, list(to))], cfg or GenerationConfig())[0]
    return {"user": user, "base": ref.name, "adapter": row["id"], "subject": subject,
            "to": list(to), "body": body}


def draft_llamacpp(home: Home, user: str, subject: str, to: Sequence[str] = (),
                   base: str | None = None, adapter_id: str | None = None,
                   max_new_tokens: int = 200, seed: int = 0, log=None) -> dict:
    """The same draft through llama.cpp: the adapter exported as a GGUF LoRA on the base's GGUF."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from .commands.export import export_adapter
    from .compile.prompts import prompt_text
    from .errors import IdiolectError
    from .export import llamacpp_generate

    conn = home.conn
    store.require_user(conn, user)
    ref = bases.resolve(home, base)
    if adapter_id is None:
        adapter_id = adapters.require_active(conn, user, ref.name)["id"]
    exported = export_adapter(home, adapter_id, "gguf", log=log)
    if not exported.get("base_gguf"):
        raise IdiolectError(exported.get("note", f"base {ref.name!r} has no GGUF for llama.cpp"))
    tok = AutoTokenizer.from_pretrained(bases.ensure_cached(ref))
    prompt = prompt_text(tok, subject, list(to))
    body, tps = llamacpp_generate(Path(exported["base_gguf"]), Path(exported["path"]), prompt,
                                  max_new_tokens, seed)
    return {"user": user, "base": ref.name, "adapter": exported["adapter"], "subject": subject,
            "to": list(to), "body": body.strip(), "runtime": "llama.cpp",
            "tokens_per_s": round(tps, 1)}
