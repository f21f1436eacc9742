"""`idiolect eval`: generate on the frozen eval set with an adapter and score it, calibrated.

Protocol: for each held-out message, prompt with its subject and recipients and generate the body
with fixed settings and seed (``GenerationConfig``). The same prompts go to the bare base (the
adapter disabled), and the scores of both sit beside the user's own real text (ceiling) and other
users' (floor). The cohort is every user in the home with a frozen eval set.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import adapters
from ..bases import load as bases
from ..errors import IdiolectError
from ..generate import (GenerationConfig, base_generations, generate_bodies, load_for_inference,
                        merged)
from ..compile.retrieve import adapter_recipe, user_shots
from ..home import Home, atomic_write_json
from ..vault import store


@dataclass
class EvalConfig:
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        max_new_tokens=128, batch_size=64, seed=1234))  # one batch: the eval set's 50 prompts
    limit: int | None = None        # score only the first N eval messages (quick looks)
    perplexity_tokens: int = 384    # prompt + body tokens per held-out message for perplexity
    samples: int = 3                # generations shown beside real messages in the report
    seed: int = 0
    # a base that reads each body's fit to its subject (issue #17's sense score), or None; not
    # part of the protocol: it changes no style score
    reader: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise IdiolectError(f"--limit must be at least 1, got {self.limit}")


@dataclass
class Cohort:
    """Every user with a frozen eval set, by user: ``train`` (what their adapters train on: for
    the novelty check), ``held`` (the eval set: scored against), ``reference`` (the reference
    split: what the style scaler and authorship classifier are fitted on, never trained on)."""

    train: dict[str, list[str]]
    held: dict[str, list[str]]
    reference: dict[str, list[str]]

    @property
    def users(self) -> list[str]:
        return sorted(self.reference)


def cohort(conn: sqlite3.Connection) -> Cohort:
    """The cohort of this home. A user with nothing left to train on, or no reference split
    (a vault too small to spare one), cannot be part of it."""
    c = Cohort({}, {}, {})
    for u in store.list_users(conn):
        if not u["eval_size"]:
            continue
        try:
            bodies = [m.body for m in store.training_messages(conn, u["user"])[0]]
        except IdiolectError:
            continue
        reference = [m.body for m in store.reference_messages(conn, u["user"])]
        if not reference:
            continue
        c.train[u["user"]] = bodies
        c.held[u["user"]] = [m.body for m in store.eval_messages(conn, u["user"])]
        c.reference[u["user"]] = reference
    return c


def cohort_models(home: Home, train: dict[str, list[str]]):
    """The style scaler and authorship classifier fitted on ``train`` (the cohort's reference
    splits: never what an adapter trained on), cached by its digest."""
    from .authorship import cohort_digest
    from .stylometry import StyleScaler

    if len(train) < 2:
        names = ", ".join(train) or "none"
        raise IdiolectError(
            f"evaluation needs a cohort of at least 2 users with frozen eval sets, got"
            f" {len(train)} ({names}): import and freeze another user to compare against")
    digest = cohort_digest(train)
    scaler_path = home.cache_dir / f"style-scaler-{digest[:16]}.json"
    if scaler_path.exists():
        scaler = StyleScaler.from_dict(json.loads(scaler_path.read_text()))
    else:
        scaler = StyleScaler.from_cohort(train)
        atomic_write_json(scaler_path, scaler.to_dict())
    return scaler, cached_classifier(home, train, "authorship")


# Classifier caches kept per prefix: the most recently used. Each holds n-grams of the users'
# texts, so the ones of cohorts that changed (a new import, a new freeze) do not pile up.
CACHES_KEPT = 4


def cached_classifier(home: Home, texts_by_user: dict[str, list[str]], prefix: str):
    """An authorship classifier fitted on ``texts_by_user``, cached in the home's cache as
    ``PREFIX-<digest>.pkl`` (refitted when the cache is stale: other data, settings, version).
    Only the ``CACHES_KEPT`` most recently used of a prefix stay (``prune_caches``)."""
    import os

    from .authorship import AuthorshipModel, AuthorshipParams, cohort_digest

    digest = cohort_digest(texts_by_user)
    path = home.cache_dir / f"{prefix}-{digest[:16]}.pkl"
    if path.exists():
        try:
            clf = AuthorshipModel.load(path, expect_digest=digest,
                                       expect_params=AuthorshipParams())
        except IdiolectError:
            pass  # stale (or pruned meanwhile by another process): refit below
        else:
            try:
                os.utime(path)  # used now: the last to be pruned
            except OSError:
                pass
            return clf
    clf = AuthorshipModel().fit(texts_by_user)
    clf.save(path)
    try:
        prune_caches(home, prefix, keep_path=path)
    except OSError:
        pass  # a cache left behind is not worth failing the fit that worked
    return clf


def prune_caches(home: Home, prefix: str, keep: int = CACHES_KEPT,
                 keep_path: Path | None = None) -> list[str]:
    """Delete all but the ``keep`` most recently used ``PREFIX-<16 hex>.pkl`` classifier caches
    (``keep_path``, the one just written, always stays) with their JSON sidecars, and sidecars
    left without their pickle; returns the names deleted. A process still loading one of them
    finds it gone and refits (``cached_classifier``)."""
    import re

    from .authorship import _sidecar

    name = re.compile(rf"{re.escape(prefix)}-[0-9a-f]{{16}}\.pkl")

    def used(p):
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    found = sorted((p for p in home.cache_dir.glob(f"{prefix}-*.pkl") if name.fullmatch(p.name)),
                   key=lambda p: (p == keep_path, used(p)), reverse=True)
    gone = []
    for p in found[keep:]:
        for f in (p, _sidecar(p)):
            f.unlink(missing_ok=True)
        gone.append(p.name)
    for side in home.cache_dir.glob(f"{prefix}-*.pkl.json"):  # a crash between two unlinks
        if name.fullmatch(side.name[:-5]) and not side.with_name(side.name[:-5]).exists():
            side.unlink(missing_ok=True)
            gone.append(side.name)
    return gone


def protocol_digest(cfg: EvalConfig, eval_digest: str, train: dict[str, list[str]]) -> str:
    """What makes two evaluations comparable: the settings, the frozen eval set and the cohort's
    data (the classifier and scaler are fitted on it). Equal digests, equal protocol: stored
    scores of one adapter can stand in for scoring it again (the gate's bar)."""
    from .. import __version__
    from .authorship import AuthorshipParams, cohort_digest
    from .intervals import B, LEVEL

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("samples", "reader")}
    settings["generation"] = cfg.generation.key()  # fields added since keep old digests
    scorers = {"idiolect": __version__, "authorship": asdict(AuthorshipParams()),
               "bootstrap": [B, LEVEL]}
    return hashlib.sha256(json.dumps([settings, eval_digest, cohort_digest(train), scorers],
                                     sort_keys=True, default=list).encode()).hexdigest()[:24]


def perplexity(model, tokenizer, msgs, max_tokens: int, shots=None, batch: int = 8) -> float:
    """exp(mean cross-entropy) of the held-out bodies given their prompts (teacher forcing), in
    batches of ``batch`` messages of similar length. ``shots``: each message's (cut) shots, for
    an adapter compiled with them."""
    import math

    total, count = token_nll(model, tokenizer, msgs, max_tokens, shots, batch)
    return math.exp(total / max(count, 1))


def token_nll(model, tokenizer, msgs, max_tokens: int, shots=None,
              batch: int = 8) -> tuple[float, int]:
    """The summed cross-entropy (nats) of the bodies' tokens given their prompts and how many
    tokens: ``perplexity`` is exp(sum / count), and sums over parts of a message list add up."""
    import torch
    import torch.nn.functional as F

    from ..compile.prompts import encode
    from ..compile.train import body_loss, collate

    if batch < 1:
        raise ValueError(f"perplexity: batch must be at least 1, got {batch}")
    shots = shots or [()] * len(msgs)  # (encode: the same body tokens with shots or without)
    examples = [encode(tokenizer, m.subject, m.to, m.body, max_tokens, shots=sh)
                for m, sh in zip(msgs, shots)]
    # batches of similar length (padding to the longest of 8 messages in eval order costs more
    # than the real tokens: bench/results/perplexity_speed.json); a sum: the same value
    examples = sorted((e for e in examples if e.body_tokens > 0), key=lambda e: len(e.input_ids))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    plain_head = not any(getattr(inner.config, k, None) for k in PLAIN_HEAD_UNLESS)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            ids, mask, target = collate(examples[i:i + batch], tokenizer.pad_token_id)
            sel = target != -100
            if not plain_head:  # the model's own forward transforms its logits: use it whole
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][sel]
                total += float(F.cross_entropy(logits.float(), target[sel], reduction="sum"))
            else:  # training's loss: the vocabulary projection of the body positions only,
                # NLL_ROWS at a time ([batch, length, vocab] logits never exist: Gemma's 262k)
                mean, n = body_loss(model, ids, mask, target, loss_chunk=NLL_ROWS)
                total += float(mean) * n
            count += int(sel.sum())
    return total, count


#: ``token_nll`` projects this many body positions onto the vocabulary at a time
NLL_ROWS = 256
#: config fields by which a model's forward changes its logits after the projection (soft
#: capping, scaling): ``token_nll`` then takes the logits from the forward, as before
PLAIN_HEAD_UNLESS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def evaluate(home: Home, user: str, adapter_id: str | None = None,
             base: str | None = None, cfg: EvalConfig | None = None, log=None,
             members: Cohort | None = None) -> dict:
    """Scores of an adapter (default: the user's active one on ``base``) on the frozen eval set.
    ``members``: the home's ``cohort`` when the caller already has it (the gate does)."""
    from .calibrate import calibrate, placements, score_texts
    from .novelty import novelty

    cfg = cfg or EvalConfig()
    log = log or (lambda s: None)
    conn = home.conn
    store.require_user(conn, user)
    ev = store.require_eval_set(conn, user)
    row = adapters.get(conn, adapter_id) if adapter_id else None
    if row is not None and row["user"] != user:
        raise IdiolectError(f"adapter {row['id']} belongs to {row['user']!r}, not {user!r}")
    ref = bases.resolve(home, row["base"] if row is not None else base)
    if row is None:
        row = adapters.require_active(conn, user, ref.name)
    c = members if members is not None else cohort(conn)
    if user not in c.reference:
        raise IdiolectError(f"user {user!r} has no reference split to fit the style scorers on"
                            " (too few messages outside the eval set): import more")
    scaler, clf = cohort_models(home, c.reference)  # before loading the model: fail fast
    if cfg.reader:  # an unknown or missing reader fails here, not after generating
        bases.ensure_cached(bases.resolve(home, cfg.reader))
    protocol = protocol_digest(cfg, ev["digest"], c.reference)

    held_msgs = store.eval_messages(conn, user)[: cfg.limit]
    heldout = [m.body for m in held_msgs]
    prompts = [(m.subject, m.to) for m in held_msgs]
    t0 = time.perf_counter()
    model, tok, row = load_for_inference(home, ref.name, row["id"], log=log)
    shots = user_shots(conn, user, adapter_recipe(row), tok, [m.subject for m in held_msgs])
    log("generating with the bare base (cached after the first time)")
    base_generated = base_generations(home, ref, prompts, cfg.generation, model=model, tok=tok)
    log(f"generating {len(prompts)} bodies with adapter {row['id']}")
    t_gen = time.perf_counter()
    with merged(model):  # after the bare base's: unmerging leaves rounding in its weights
        generated = generate_bodies(model, tok, [(*p, sh) for p, sh in zip(prompts, shots)],
                                    cfg.generation)
    gen_s = time.perf_counter() - t_gen
    log("perplexity of the held-out bodies")
    ppl_adapter = perplexity(model, tok, held_msgs, cfg.perplexity_tokens, shots)
    with model.disable_adapter():
        ppl_base = perplexity(model, tok, held_msgs, cfg.perplexity_tokens)

    scores = score_texts(generated, user, heldout, scaler, clf, seed=cfg.seed)
    base_scores = score_texts(base_generated, user, heldout, scaler, clf, seed=cfg.seed)
    others = {u: t for u, t in c.held.items() if u != user}
    calib = calibrate(user, heldout, c.reference[user], others, scaler, clf, seed=cfg.seed)
    nov = novelty(generated, c.train[user])
    metrics = {
        "fingerprint_distance": scores["fingerprint_distance"],
        "authorship_probability": scores["authorship_probability"],
        "perplexity": ppl_adapter,
        "novelty_copied_share": nov["copied_ngram_share"],
        "novelty_flagged": nov["flagged"],
        "novelty_verbatim": nov["verbatim"],
        "intervals": scores["intervals"],
    }
    result = {
        "user": user, "adapter": row["id"], "base": ref.name, "eval_digest": ev["digest"],
        "protocol": protocol,
        "n": len(held_msgs), "cohort": c.users, "chance": clf.chance,
        "adapter_scores": metrics,
        "base_scores": {"fingerprint_distance": base_scores["fingerprint_distance"],
                        "authorship_probability": base_scores["authorship_probability"],
                        "perplexity": ppl_base, "intervals": base_scores["intervals"]},
        "placement": {"adapter": placements(scores, calib),
                      "base": placements(base_scores, calib)},
        "calibration": calib,
        "novelty": nov,
        "generation": {**asdict(cfg.generation), "seconds": round(gen_s, 2),
                       "new_tokens": sum(len(tok(g)["input_ids"]) for g in generated)},
        "samples": [{"subject": m.subject, "real": m.body, "adapter": g, "base": b}
                    for m, g, b in list(zip(held_msgs, generated, base_generated))[: cfg.samples]],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if cfg.reader:
        from .sense import read_sense

        result["sense"] = read_sense(
            home, cfg.reader, [m.subject for m in held_msgs],
            [m.subject for m in store.reference_messages(conn, user)],
            {"adapter": generated, "base": base_generated, "real": heldout}, log=log)
        result["seconds"] = round(time.perf_counter() - t0, 2)  # the reader's time included
    adapters.update_metrics(conn, row["id"], {"eval": {
        k: result[k] for k in ("eval_digest", "protocol", "n", "cohort", "adapter_scores",
                               "base_scores", "placement")} | {"calibration": {
            m: {k: calib[m][k] for k in ("ceiling", "ceiling_interval", "floor")}
            for m in ("fingerprint_distance", "authorship_probability")}}})
    return result
