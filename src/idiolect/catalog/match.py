"""Matching: the similarity of two cards, the explanation of a match, the ranking of a catalog's
cards for a query card, and whether an adapter's LoRA fits a recipe. Pure: no model, no home, no
HTTP (the server ranks with it; the device's warm start decides with it).

Similarity (in [-1, 1]) = w_style * cos([style_a, k], [style_b, k]) + w_emb * cos(emb_a, emb_b).
The style vectors run over the union of style words, each scaled by sqrt(its word weight); ``k``
(``anchor``) is one constant coordinate standing for the base itself: two cards that are both
close to the base agree (cosine near 1) instead of comparing two noise vectors, and a card far
from the base is far from one near it. The embedding term counts only when both cards were
embedded by the same model (same ``embedding_model`` and length); otherwise the style term alone
is the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from .card import Card


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


def incompatible(entry_recipe: dict, recipe, n_layers: int | None = None) -> str | None:
    """Why an adapter cannot seed this recipe's LoRA, or None. Rank and scale must be equal;
    the adapter's modules and layers may be a part of the recipe's (an attention-only adapter
    seeds a recipe with the MLP too): the recipe's other LoRA pairs start as in a cold compile
    (B = 0), so the seeded model starts as the adapter's exactly (``fresh_modules``).
    ``n_layers``: the base's depth, where known (``outside``)."""
    if recipe is None:
        return None
    bad = []
    for k, want, have in (("rank", recipe.rank, entry_recipe.get("rank")),
                          ("alpha", float(recipe.alpha), float(entry_recipe.get("alpha") or 0))):
        if want != have:
            bad.append(f"{k} {have} != {want}")
    return ", ".join(bad + outside(entry_recipe, recipe, n_layers)) or None


def outside(entry_recipe: dict, recipe, n_layers: int | None = None) -> list[str]:
    """Where an adapter's LoRA pairs lie outside ``recipe``'s (its modules not a part of the
    recipe's, or other layers): what neither a seed nor a merge re-factored to the recipe's
    rank can fill. Empty when they lie within. ``lora_layers`` k means the top k layers, 0 all
    of them; with the base's depth ``n_layers`` known, k >= n_layers also means all of them
    (as the training loop reads it), else it is taken as written."""
    bad = []
    have_m = sorted(entry_recipe.get("target_modules") or [])
    extra = sorted(set(have_m) - set(recipe.target_modules))
    if not have_m or extra:
        bad.append(f"target_modules {have_m} not within {sorted(recipe.target_modules)}")
    have_k, want_k = entry_recipe.get("lora_layers", 0) or 0, recipe.lora_layers
    have_l, want_l = (_all_as_0(k, n_layers) for k in (have_k, want_k))
    if want_l and not 0 < have_l <= want_l:  # top-k layers: the adapter's must be among them
        bad.append(f"lora_layers {have_k} not within {want_k}")  # as written in each recipe
    return bad


def _all_as_0(k: int, n_layers: int | None) -> int:
    return 0 if n_layers and k >= n_layers else k


def fresh_modules(entry_recipe: dict, recipe) -> list[str]:
    """The recipe's LoRA modules that a compatible adapter does not seed (they start fresh)."""
    if recipe is None:
        return []
    have = set(entry_recipe.get("target_modules") or [])
    return [m for m in recipe.target_modules if m not in have]
