"""Draft a message in a user's voice with their active adapter."""

from __future__ import annotations

import sqlite3
from typing import Sequence

from . import adapters
from .bases import load as bases
from .generate import GenerationConfig, generate_bodies, load_for_inference
from .vault import store


def draft(conn: sqlite3.Connection, user: str, subject: str, to: Sequence[str] = (),
          base: str | None = None, adapter_id: str | None = None,
          cfg: GenerationConfig | None = None, log=None) -> dict:
    store.require_user(conn, user)
    ref = bases.resolve(conn, base)
    if adapter_id is None:
        adapter_id = adapters.require_active(conn, user, ref.name)["id"]
    model, tok, row = load_for_inference(conn, ref.name, adapter_id, log=log)
    body = generate_bodies(model, tok, [(subject, list(to))], cfg or GenerationConfig())[0]
    return {"user": user, "base": ref.name, "adapter": row["id"], "subject": subject,
            "to": list(to), "body": body}
