"""Selection: similarity of two cards, the explanation of a match, cards computed with a model,
and ``warm_start_auto`` (card of the user's own data -> /match -> pull, or merge two).

Similarity (in [-1, 1]) = w_style * cos([style_a, k], [style_b, k]) + w_emb * cos(emb_a, emb_b).
The style vectors run over the union of style words, each scaled by sqrt(its word weight); ``k``
(``anchor``) is one constant coordinate standing for the base itself: two cards that are both
close to the base agree (cosine near 1) instead of comparing two noise vectors, and a card far
from the base is far from one near it. The embedding term counts only when both cards were
embedded by the same model (same ``embedding_model`` and length); otherwise the style term alone
is the score.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from ..errors import IdiolectError
from ..home import Home
from .card import Card, Summarizer, card_from_texts

Log = Callable[[str], None]


@dataclass
class MatchWeights:
    style: float = field(default=0.7, metadata={"help": "weight of the style-coefficient cosine"})
    embedding: float = field(default=0.3, metadata={"help": "weight of the embedding cosine"})
    anchor: float = field(default=0.5, metadata={"help": "constant 'the base' coordinate"})
    words: dict[str, float] = field(default_factory=dict, metadata={
        "help": "per style word weight (default 1)"})


def _cos(a: Sequence[float], b: Sequence[float]) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b)) / (na * nb)


def similarity(a: Card, b: Card, w: MatchWeights | None = None) -> dict:
    """{score, style, embedding (None when not comparable)} of two cards."""
    w = w or MatchWeights()
    words = sorted(set(a.style) | set(b.style))
    scale = [math.sqrt(w.words.get(k, 1.0)) for k in words]
    va = [s * a.style.get(k, 0.0) for s, k in zip(scale, words)] + [w.anchor]
    vb = [s * b.style.get(k, 0.0) for s, k in zip(scale, words)] + [w.anchor]
    style = _cos(va, vb)
    emb = None
    if (a.embedding and a.embedding_model == b.embedding_model
            and len(a.embedding) == len(b.embedding)):
        emb = _cos(a.embedding, b.embedding)
    if emb is None or w.embedding <= 0:
        score = style
    else:
        score = (w.style * style + w.embedding * emb) / (w.style + w.embedding)
    return {"score": round(score, 4), "style": round(style, 4),
            "embedding": None if emb is None else round(emb, 4)}


def explain(query: Card, other: Card, strong: float = 0.25, apart: float = 0.5) -> dict:
    """Which style words agree (same direction, both at least ``strong``) and which differ
    (at least ``apart`` apart), in plain words."""
    agree, differ = [], []
    for word in sorted(set(query.style) | set(other.style)):
        q, o = query.style.get(word, 0.0), other.style.get(word, 0.0)
        if abs(q) >= strong and abs(o) >= strong and (q > 0) == (o > 0):
            agree.append({"word": word, "query": q, "adapter": o})
        elif abs(q - o) >= apart:
            differ.append({"word": word, "query": q, "adapter": o})
    agree.sort(key=lambda d: -min(abs(d["query"]), abs(d["adapter"])))
    differ.sort(key=lambda d: -abs(d["query"] - d["adapter"]))
    fmt = lambda d: f"{d['word']} ({d['query']:+.2f} vs {d['adapter']:+.2f})"  # noqa: E731
    parts = []
    if agree:
        parts.append("both " + ", ".join(f"{'more' if d['query'] > 0 else 'less'} {fmt(d)}"
                                         for d in agree[:5]) + " than the base")
    if differ:
        parts.append("differ on " + ", ".join(fmt(d) for d in differ[:5]))
    shared = [k for k in query.keywords if k in set(other.keywords)]
    if shared:
        parts.append("shared topics: " + ", ".join(shared[:6]))
    return {"agree": agree, "differ": differ, "shared_keywords": shared,
            "text": "; ".join(parts) or "no style word stands out on either side"}


def rank(query: Card, entries: Sequence[dict], w: MatchWeights | None = None,
         limit: int = 10) -> list[dict]:
    """Entries ({id, card: Card, ...}) of the query's base, best first, with score + why."""
    out = []
    for e in entries:
        card = e["card"]
        if card.base_digest != query.base_digest:
            continue
        sim = similarity(query, card, w)
        out.append({k: v for k, v in e.items() if k != "card"} | sim
                   | {"explanation": explain(query, card), "summary": card.summary})
    out.sort(key=lambda m: (-m["score"], m["id"]))
    return out[:limit]


def incompatible(entry_recipe: dict, recipe) -> str | None:
    """Why an adapter cannot seed this recipe's LoRA as is (shapes and scale), or None."""
    if recipe is None:
        return None
    want = {"rank": recipe.rank, "alpha": float(recipe.alpha),
            "target_modules": sorted(recipe.target_modules), "lora_layers": recipe.lora_layers}
    have = {"rank": entry_recipe.get("rank"), "alpha": float(entry_recipe.get("alpha") or 0),
            "target_modules": sorted(entry_recipe.get("target_modules") or []),
            "lora_layers": entry_recipe.get("lora_layers", 0)}
    bad = [k for k in want if want[k] != have[k]]
    return None if not bad else ", ".join(f"{k} {have[k]} != {want[k]}" for k in bad)


# ----------------------------------------------------------------------------- cards with a model
def base_generations(home: Home, ref, prompts, cfg, log: Log | None = None, model=None, tok=None):
    """The bare base's bodies for (subject, recipients) prompts, cached per base/prompts/cfg."""
    from ..bases import load as bases
    from ..generate import generate_bodies
    from ..home import atomic_write_json

    key = hashlib.sha256(json.dumps([bases.read_fingerprint(ref)["digest"], prompts, asdict(cfg)],
                                    default=list).encode()).hexdigest()[:24]
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


def _gen_cfg(cfg):
    from ..generate import GenerationConfig

    return cfg or GenerationConfig(max_new_tokens=96, batch_size=8, seed=1234)


def card_for_user(home: Home, user: str, base: str | None = None, limit: int = 32,
                  cfg=None, embedder: str = "auto", summarizer: Summarizer | None = None,
                  log: Log | None = None) -> Card:
    """On the device: the card of the user's own training bodies vs the bare base's generations
    on the same prompts. Nothing here leaves the machine; only the card does."""
    from ..bases import load as bases
    from ..vault import store

    conn = home.conn
    store.require_user(conn, user)
    ref = bases.resolve(home, base)
    msgs, _ = store.training_messages(conn, user, examples=limit)
    prompts = [(m.subject, list(m.to)) for m in msgs]
    base_texts = base_generations(home, ref, prompts, _gen_cfg(cfg), log)
    return card_from_texts([m.body for m in msgs], base_texts,
                           base_digest=bases.read_fingerprint(ref)["digest"], base_name=ref.name,
                           source="user-data", embedder=embedder, summarizer=summarizer)


def card_for_adapter(home: Home, adapter_id: str, source: str = "generations",
                     limit: int = 32, cfg=None, embedder: str = "auto",
                     summarizer: Summarizer | None = None, log: Log | None = None) -> Card:
    """An adapter's card (publisher side). ``generations`` (XPerT): the adapter's bodies on its
    user's frozen eval prompts vs the bare base's on the same prompts. ``training``: the
    adapter's user's own training bodies instead (the publisher owns that data)."""
    from .. import adapters
    from ..bases import load as bases
    from ..generate import generate_bodies, load_for_inference
    from ..vault import store

    conn = home.conn
    row = adapters.get(conn, adapter_id)
    ref = bases.resolve(home, row["base"])
    cfg = _gen_cfg(cfg)
    if source == "training":
        msgs, _ = store.training_messages(conn, row["user"], examples=limit)
        prompts = [(m.subject, list(m.to)) for m in msgs]
        texts, base_texts = [m.body for m in msgs], base_generations(home, ref, prompts, cfg, log)
    elif source == "generations":
        msgs = store.eval_messages(conn, row["user"])[:limit]
        prompts = [(m.subject, list(m.to)) for m in msgs]
        model, tok, _ = load_for_inference(home, ref.name, row["id"], log=log)
        texts = generate_bodies(model, tok, prompts, cfg)
        base_texts = base_generations(home, ref, prompts, cfg, log, model=model, tok=tok)
    else:
        raise IdiolectError(f"unknown card source {source!r} (generations or training)")
    return card_from_texts(texts, base_texts, base_digest=row["base_digest"], base_name=ref.name,
                           source=source, embedder=embedder, summarizer=summarizer)


# ----------------------------------------------------------------------------- warm start
def warm_start_plan(home: Home, user: str, base: str | None, url: str | None = None,
                    *, recipe=None, threshold: float = 0.5, client=None, card: Card | None = None,
                    embedder: str = "auto", limit: int = 32, cfg=None,
                    log: Log | None = None) -> dict:
    """Decide where a compile starts: the nearest catalog adapter (pulled), a merge of the two
    nearest when none reaches ``threshold``, or the bare base. Returns the decision and why:
    ``decision`` (pull / merge / none), ``adapter`` (the local parent id or None), ``sources``
    (the catalog ids used), ``score`` (the best source's, or the best usable match's), ``reason``.
    The user's card is computed here (``limit`` training messages, generation ``cfg`` for the
    base) unless ``card`` is given; only the card is sent."""
    from ..bases import load as bases
    from .client import CatalogClient
    from .merge import merge_adapters

    log = log or (lambda s: None)
    client = client or CatalogClient(url)
    ref = bases.resolve(home, base)
    card = card or card_for_user(home, user, ref.name, limit=limit, cfg=cfg, embedder=embedder,
                                 log=log)
    matches = client.match(card, limit=10)
    usable, skipped = [], []
    for m in matches:
        why = incompatible(m.get("recipe") or {}, recipe)
        (skipped if why else usable).append(m | ({"skipped": why} if why else {}))
    plan = {"user": user, "base": ref.name, "threshold": threshold, "adapter": None,
            "sources": [], "score": None,
            "matches": [{k: m.get(k) for k in ("id", "score", "style", "embedding")}
                        | {"why": m["explanation"]["text"]} for m in usable],
            "skipped": [{"id": m["id"], "reason": m["skipped"]} for m in skipped]}
    best = usable[0] if usable else None
    if best and best["score"] >= threshold:
        plan["decision"] = "pull"
        plan["reason"] = f"{best['id']} scores {best['score']:.3f} >= {threshold}"
        plan["adapter"] = client.pull(home, best["id"], user, base=ref.name)
        plan["sources"], plan["score"] = [best["id"]], best["score"]
    else:
        merge_from = [m for m in (skipped if recipe is not None else []) + usable
                      if _mergeable(m, recipe)]
        merge_from = sorted(merge_from, key=lambda m: -m["score"])[:2]
        if len(merge_from) == 2 and min(m["score"] for m in merge_from) > 0:
            s = [m["score"] for m in merge_from]
            weights = [x / sum(s) for x in s]
            local = [client.pull(home, m["id"], user, base=ref.name) for m in merge_from]
            merged = merge_adapters(home, list(zip(local, weights)), user,
                                    rank=recipe.rank if recipe else None,
                                    alpha=recipe.alpha if recipe else None)
            plan["decision"], plan["adapter"] = "merge", merged.id
            plan["sources"], plan["score"] = [m["id"] for m in merge_from], s[0]
            plan["reason"] = (f"best score {s[0]:.3f} < {threshold}: merged {merge_from[0]['id']}"
                              f" and {merge_from[1]['id']} with weights "
                              f"{weights[0]:.2f}/{weights[1]:.2f}")
        else:
            plan["decision"], plan["score"] = "none", best["score"] if best else None
            plan["reason"] = ("no adapter of this base in the catalog fits" if not matches else
                              f"best score {best['score'] if best else None} below {threshold}"
                              " and fewer than two adapters to merge")
    log(f"warm start: {plan['decision']} ({plan['reason']})")
    return plan


def _mergeable(match: dict, recipe) -> bool:
    """A merge re-factors to the recipe's rank and alpha: only the modules and layers matter."""
    if recipe is None:
        return True
    r = match.get("recipe") or {}
    return (sorted(r.get("target_modules") or []) == sorted(recipe.target_modules)
            and r.get("lora_layers", 0) == recipe.lora_layers)


def warm_start_auto(home: Home, user: str, base: str | None, url: str | None = None,
                    **kwargs) -> str | None:
    """The local adapter id to use as ``CompileRequest.parent``, or None (start from the base).
    For ``idiolect compile --warm-start auto``; pass ``recipe=`` so that only adapters whose
    LoRA shapes and scale fit it are used as is (others may still be merged and re-factored)."""
    return warm_start_plan(home, user, base, url, **kwargs)["adapter"]
