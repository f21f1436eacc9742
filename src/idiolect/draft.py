"""Draft a message in a user's voice with their active adapter.

With ``n`` > 1 the adapter writes ``n`` candidates in one batch and they are ranked by the user's
own style scorer: an authorship classifier fitted on the cohort's *training* pools (what the
adapters learn from; never the reference splits the evaluation uses), cached in the home. A
candidate that copies a training message, or a span of 20 words of one, is ranked last.
"""

from __future__ import annotations

from typing import Sequence

from . import adapters
from .bases import load as bases
from .generate import GenerationConfig, generate_bodies, load_for_inference, merged
from .home import Home
from .vault import store


def draft(home: Home, user: str, subject: str, to: Sequence[str] = (),
          base: str | None = None, adapter_id: str | None = None,
          cfg: GenerationConfig | None = None, n: int = 1, log=None) -> dict:
    """One draft (``body``), or with ``n`` > 1 the best of ``n`` (``body``) and all of them,
    ranked (``candidates``: body, score, copies)."""
    from dataclasses import replace

    from .errors import InputError

    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    conn = home.conn
    store.require_user(conn, user)
    ref = bases.resolve(home, base)
    if adapter_id is None:
        adapter_id = adapters.require_active(conn, user, ref.name)["id"]
    model, tok, row = load_for_inference(home, ref.name, adapter_id, log=log)
    cfg = cfg or GenerationConfig()
    if n > 1:
        cfg = replace(cfg, batch_size=n, do_sample=True)
    with merged(model):
        bodies = generate_bodies(model, tok, [(subject, list(to))] * n, cfg)
    out = {"user": user, "base": ref.name, "adapter": row["id"], "subject": subject,
           "to": list(to), "body": bodies[0]}
    if n > 1:
        out["candidates"] = rank(home, user, bodies, log=log)
        out["body"] = out["candidates"][0]["body"]
    return out


def rank(home: Home, user: str, bodies: Sequence[str], log=None, members=None) -> list[dict]:
    """``bodies`` best first: by P(user | body) under the training-pool scorer (None when the
    home has no other user to tell the user from), copies of training text last.
    ``members``: the home's ``evaluate.run.cohort`` when the caller already has it."""
    from .evaluate.novelty import novelty
    from .evaluate.run import cached_classifier, cohort

    train = (members if members is not None else cohort(home.conn)).train
    scores: list[float | None] = [None] * len(bodies)
    if len(train) >= 2 and user in train:
        ranker = cached_classifier(home, train, "draft-ranker")  # training pools, on purpose
        scores = [float(p) for p in ranker.proba(list(bodies), user)]
    elif log:
        log("rank: no other user in this home to tell this user's style from: unranked")
    nov = novelty(list(bodies), train.get(user, []))
    copied = set(nov.get("verbatim_idx", [])) | set(nov.get("flagged_idx", []))
    order = sorted(range(len(bodies)), key=lambda i: (i in copied, -(scores[i] or 0.0), i))
    return [{"rank": r + 1, "body": bodies[i], "score": scores[i], "copies_training": i in copied}
            for r, i in enumerate(order)]


def draft_llamacpp(home: Home, user: str, subject: str, to: Sequence[str] = (),
                   base: str | None = None, adapter_id: str | None = None,
                   max_new_tokens: int = 200, seed: int = 0, log=None, **sampling) -> dict:
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
                                  max_new_tokens, seed, **sampling)
    return {"user": user, "base": ref.name, "adapter": exported["adapter"], "subject": subject,
            "to": list(to), "body": body.strip(), "runtime": "llama.cpp",
            "tokens_per_s": round(tps, 1)}
