"""Draft a message in a user's voice with their active adapter.

With ``n`` > 1 the adapter writes ``n`` candidates in one batch and they are ranked (``by``):

- ``style``: the user's own style scorer, an authorship classifier fitted on the cohort's
  *training* pools (what the adapters learn from; never the reference splits the evaluation
  uses), cached in the home;
- ``sense``: how much the candidate answers its subject under the drafting model itself: its
  per-token log-likelihood after the subject minus after other subjects of the user's training
  messages (mutual-information reranking, as against generic replies in dialogue); no second
  model is loaded;
- ``both``: the sum of the two ranks (ties: sense first).

A candidate that copies a training message, or a span of 20 words of one, is ranked last.
"""

from __future__ import annotations

from typing import Sequence

from . import adapters
from .bases import load as bases
from .compile.retrieve import UserShots, adapter_recipe, user_shots
from .generate import GenerationConfig, generate_bodies, load_for_inference, merged
from .home import Home
from .vault import store


RANK_BY = ("style", "sense", "both")
#: ``draft``'s defaults: candidates written for one draft, and how they are ranked. The best of 4
#: by both ranks against one sample, paired over the 12 git authors (issue #17's goal run,
#: bench/results/levers_default-bf16-500.json): authorship and subject fit higher beyond noise,
#: fingerprint distance within noise; by style alone subject fit did not rise
BEST_OF, DEFAULT_RANK_BY = 4, "both"
#: other subjects each candidate is also read after (``sense``), and the tokens read of each body
SENSE_OTHERS, SENSE_TOKENS = 4, 64


def draft(home: Home, user: str, subject: str, to: Sequence[str] = (),
          base: str | None = None, adapter_id: str | None = None,
          cfg: GenerationConfig | None = None, n: int = 1, log=None,
          by: str = DEFAULT_RANK_BY, best_of: int = BEST_OF,
          whole_sentences: bool = True) -> dict:
    """One draft (``body``). ``max(n, best_of)`` candidates are written in one batch; with more
    than one, ``body`` is the best of them and ``candidates`` holds them all, ranked (body,
    score, fit, copies); the caller shows the first ``n``. ``whole_sentences``: a candidate
    cut by ``cfg.max_new_tokens`` ends at its last full sentence (``end_at_sentence``)."""
    from dataclasses import replace

    from .errors import InputError

    for opt, v in (("--n", n), ("--best-of", best_of)):
        if v < 1:
            raise InputError(f"{opt} must be at least 1, got {v}")
    n = max(n, best_of)
    if by not in RANK_BY:
        raise InputError(f"--rank-by must be one of {', '.join(RANK_BY)}, got {by!r}")
    conn = home.conn
    store.require_user(conn, user)
    ref = bases.resolve(home, base)
    if adapter_id is None:
        adapter_id = adapters.require_active(conn, user, ref.name)["id"]
    model, tok, row = load_for_inference(home, ref.name, adapter_id, log=log)
    recipe = adapter_recipe(row)
    cfg = cfg or GenerationConfig()
    if n > 1:
        cfg = replace(cfg, batch_size=n, do_sample=True)
    sense = n > 1 and by != "style"
    # the training pool (a quarantine pass over the vault) only when shots or sense need it
    pool = store.training_messages(conn, user)[0] if recipe.shots or sense else []
    shots_of = UserShots(conn, user, recipe, tok, pool)
    with merged(model):
        shots = shots_of(subject)
        cut: list[bool] = []
        bodies = generate_bodies(model, tok, [(subject, list(to), shots)] * n, cfg, cut=cut)
        if whole_sentences:  # what the reader sees is what is ranked
            bodies = [end_at_sentence(b) if c else b for b, c in zip(bodies, cut)]
        fits = None
        if sense:
            others = other_training_subjects(subject, [m.subject for m in pool])
            fits = self_fit(model, tok, subject, bodies, others,
                            shots=[shots, *map(shots_of, others)])
    out = {"user": user, "base": ref.name, "adapter": row["id"], "subject": subject,
           "to": list(to), "body": bodies[0]}
    if shots:  # which of the user's own messages the prompt showed (their subjects)
        out["shots"] = [s for s, _ in shots]
    if n > 1:
        out["candidates"] = rank(home, user, bodies, log=log, fits=fits, by=by)
        out["body"] = out["candidates"][0]["body"]
        out["rank_by"] = by
    return out


def end_at_sentence(body: str, keep: float = 0.5) -> str:
    """``body`` up to the end of its last full sentence (``.``, ``!`` or ``?``, or a closing
    bracket or quote after one, then white space or the end), or its last paragraph break;
    unchanged when that would keep less than ``keep`` of it. For a body cut mid-sentence by
    the token limit."""
    import re

    ends = [m.end() for m in re.finditer(r"[.!?][)\]\"'`]*(?=\s|$)|\n\s*\n", body)
            if not re.search(r"(?:\b(?:e\.g|i\.e|cf|vs)|\.\.)\.?$", body[:m.start() + 1])]
    at = ends[-1] if ends else 0
    return body[:at].rstrip() if at >= keep * len(body) else body


def other_training_subjects(subject: str, pool: Sequence[str], k: int = SENSE_OTHERS,
                            seed: int = 0) -> list[str]:
    """``k`` distinct subjects of ``pool`` (the user's training messages), none equal to
    ``subject``; seeded."""
    import random

    own = subject.strip().lower()
    choices = sorted({s for s in pool if s.strip() and s.strip().lower() != own})
    return random.Random(seed).sample(choices, min(k, len(choices)))


def self_fit(model, tok, subject: str, bodies: Sequence[str], others: Sequence[str],
             max_body_tokens: int = SENSE_TOKENS, shots=None, share_prompts: bool = True
             ) -> list[float]:
    """Each body's fit to ``subject`` under ``model`` (the drafting model): the per-token
    log-likelihood of its first tokens after ``subject`` minus the mean after each of
    ``others``, in nats per token; 0.0 for every body when there is no other subject.
    ``shots``: each prompt's (``subject``, then ``others``) when the adapter uses shots.
    Every body is read after each prompt, which runs once (``share_prompts``: see
    ``evaluate.sense._body_logprobs``)."""
    from .compile.prompts import prompt_text
    from .evaluate.sense import _body_logprobs

    if not others:
        return [0.0] * len(bodies)
    shots = shots or [()] * (1 + len(others))
    prompts = [prompt_text(tok, s, [], sh) for s, sh in zip((subject, *others), shots)]
    rows = [(p, b) for p in prompts for b in bodies]
    lps = _body_logprobs(model, tok, [p for p, _ in rows], [b for _, b in rows], max_body_tokens,
                         share_prompts=share_prompts)
    n = len(bodies)
    own, rest = lps[:n], lps[n:]
    return [(own[i][0] - sum(rest[j * n + i][0] for j in range(len(others))) / len(others))
            / max(own[i][1], 1) for i in range(n)]


def rank(home: Home, user: str, bodies: Sequence[str], log=None, members=None,
         fits: Sequence[float] | None = None, by: str = "style") -> list[dict]:
    """``bodies`` best first, copies of training text last: ``by`` "style", P(user | body) under
    the training-pool scorer (None when the home has no other user to tell the user from);
    "sense", ``fits`` (``self_fit``); "both", the sum of the two ranks.
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
    order = ranked_order(scores, fits, copied, by)
    return [{"rank": r + 1, "body": bodies[i], "score": scores[i], "copies_training": i in copied,
             **({"fit": round(float(fits[i]), 4)} if fits is not None else {})}
            for r, i in enumerate(order)]


def ranked_order(scores: Sequence[float | None], fits: Sequence[float] | None,
                 copied: set[int], by: str = "style") -> list[int]:
    """Indices best first (``rank``'s order): copies last; ``by`` style (``scores``, None as 0),
    sense (``fits``) or both (the sum of the two places, ties by sense), then by position.
    Places are counted among the bodies that are not copies (and among the copies), so a copy
    moves no other body; equal values share a place, so an unranked style (or equal fits)
    leaves "both" to the other ranker."""
    if by not in RANK_BY:
        raise ValueError(f"unknown ranking {by!r}: one of {', '.join(RANK_BY)}")
    if by != "style" and (fits is None or len(fits) != len(scores)):
        raise ValueError(f"ranking by {by} needs one fit per body")
    n = len(scores)
    groups = [[i for i in range(n) if i not in copied], sorted(copied)]

    def places(values) -> dict[int, int]:  # 0 for the highest value of its group
        return {i: sum(values[j] > values[i] for j in g) for g in groups for i in g}

    style = places([s or 0.0 for s in scores])
    sense = places(list(fits)) if by != "style" else {}
    key = {"style": lambda i: (style[i],), "sense": lambda i: (sense[i],),
           "both": lambda i: (style[i] + sense[i], sense[i])}[by]
    return sorted(range(n), key=lambda i: (i in copied, *key(i), i))


def draft_llamacpp(home: Home, user: str, subject: str, to: Sequence[str] = (),
                   base: str | None = None, adapter_id: str | None = None,
                   max_new_tokens: int = 200, seed: int = 0, log=None,
                   whole_sentences: bool = True, **sampling) -> dict:
    """The same draft through llama.cpp: the adapter exported as a GGUF LoRA on the base's GGUF."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from .commands.export import export_adapter
    from .compile.prompts import cut_echo, prompt_text
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
    shots = user_shots(conn, user, adapter_recipe(adapters.get(conn, exported["adapter"])), tok,
                       [subject])[0]
    prompt = prompt_text(tok, subject, list(to), shots)
    body, tps = llamacpp_generate(Path(exported["base_gguf"]), Path(exported["path"]), prompt,
                                  max_new_tokens, seed, **sampling)
    body = cut_echo(body)
    if whole_sentences and len(tok.encode(body, add_special_tokens=False)) >= max_new_tokens - 2:
        body = end_at_sentence(body)
    return {"user": user, "base": ref.name, "adapter": exported["adapter"], "subject": subject,
            "to": list(to), "body": body, "runtime": "llama.cpp",
            "tokens_per_s": round(tps, 1)}
