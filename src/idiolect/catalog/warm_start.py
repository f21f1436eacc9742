"""The side that runs a model: cards computed with the base (and an adapter), publishing an adapter
with its card, and the warm start (card of the user's own data -> /match -> pull, or merge two).

With ``confirm`` K the card only shortlists: the device pulls the top K matches and keeps the one
with the lowest perplexity on a few of the user's own training messages (``probe``; none of them
ever leaves the device), and only if it beats the bare base there.

Both sides make their cards with the protocol's ``CARD_SETTINGS`` (texts, tokens, seed), so that a
device's card and a publisher's card compare; the bare base's generations are cached per base,
prompts and settings (``generate.base_generations``). Nothing but the card leaves the device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import IdiolectError, InputError
from ..home import Home
from .card import Card, Summarizer, card_from_texts
from .match import fresh_modules, incompatible, outside
from .protocol import CARD_SETTINGS

Log = Callable[[str], None]


def _gen_cfg(cfg):
    return cfg or CARD_SETTINGS.generation()


# ----------------------------------------------------------------------------- cards with a model
def card_for_user(home: Home, user: str, base: str | None = None,
                  limit: int = CARD_SETTINGS.texts, cfg=None,
                  embedder: str = CARD_SETTINGS.embedder, summarizer: Summarizer | None = None,
                  log: Log | None = None) -> Card:
    """On the device: the card of the user's own training bodies vs the bare base's generations
    on the same prompts. Nothing here leaves the machine; only the card does."""
    from ..bases import load as bases
    from ..generate import base_generations
    from ..vault import store

    conn = home.conn
    store.require_user(conn, user)
    ref = bases.resolve(home, base)
    msgs, _ = store.training_messages(conn, user, examples=limit)
    prompts = [(m.subject, list(m.to)) for m in msgs]
    base_texts = base_generations(home, ref, prompts, _gen_cfg(cfg), log=log)
    return card_from_texts([m.body for m in msgs], base_texts,
                           base_digest=bases.read_fingerprint(ref)["digest"], base_name=ref.name,
                           source="user-data", embedder=embedder, summarizer=summarizer)


def card_for_adapter(home: Home, adapter_id: str, source: str = "generations",
                     limit: int = CARD_SETTINGS.texts, cfg=None,
                     embedder: str = CARD_SETTINGS.embedder,
                     summarizer: Summarizer | None = None, log: Log | None = None) -> Card:
    """An adapter's card (publisher side). ``generations`` (XPerT): the adapter's bodies on its
    user's frozen eval prompts vs the bare base's on the same prompts. ``training``: the
    adapter's user's own training bodies instead (the publisher owns that data)."""
    from .. import adapters
    from ..bases import load as bases
    from ..compile.retrieve import adapter_recipe, user_shots
    from ..generate import base_generations, generate_bodies, load_for_inference
    from ..vault import store

    conn = home.conn
    row = adapters.get(conn, adapter_id)
    ref = bases.resolve(home, row["base"])
    cfg = _gen_cfg(cfg)
    if source == "training":
        msgs, _ = store.training_messages(conn, row["user"], examples=limit)
        prompts = [(m.subject, list(m.to)) for m in msgs]
        texts = [m.body for m in msgs]
        base_texts = base_generations(home, ref, prompts, cfg, log=log)
    elif source == "generations":
        msgs = store.eval_messages(conn, row["user"])[:limit]
        prompts = [(m.subject, list(m.to)) for m in msgs]
        model, tok, _ = load_for_inference(home, ref.name, row["id"], log=log)
        shots = user_shots(conn, row["user"], adapter_recipe(row), tok, [m.subject for m in msgs])
        texts = generate_bodies(model, tok, [(*p, sh) for p, sh in zip(prompts, shots)], cfg)
        base_texts = base_generations(home, ref, prompts, cfg, model=model, tok=tok, log=log)
    else:
        raise IdiolectError(f"unknown card source {source!r} (generations or training)")
    return card_from_texts(texts, base_texts, base_digest=row["base_digest"], base_name=ref.name,
                           source=source, embedder=embedder, summarizer=summarizer)


def publish_adapter(home: Home, adapter_id: str, url: str | None = None,
                    token: str | None = None, card: Card | None = None,
                    card_source: str = "generations", log=None, **card_kwargs) -> dict:
    """Compute the adapter's card (unless given) and publish adapter + card."""
    from .. import adapters
    from .client import CatalogClient

    row = adapters.get(home.conn, adapter_id)
    card = card or card_for_adapter(home, row["id"], source=card_source, log=log, **card_kwargs)
    client = CatalogClient(url, token)
    return client.publish(Path(row["path"]), card) | {"card": card.to_dict()}


# ----------------------------------------------------------------------------- warm start
# Training messages each confirmation candidate is probed on. On the git authors, probing the
# whole catalog (6 adapters) on 16 found the oracle's best fit for 7 of 8 new users, 63-88 s a
# user (bench/results/xpert_git_confirm6.json); 8 probes of the card's top 3 had separated one
# author's candidates by 0.05 of perplexity (xpert_git_confirm.json).
PROBE_MESSAGES = 16


def race_rounds(probe: int) -> list[int]:
    """How many probe messages the candidates still in the race have seen after each round of
    ``probe_perplexities(race=True)``: a quarter, a half, all (fewer rounds for a small probe)."""
    if probe < 1:
        return [probe]
    return sorted({max(1, probe // 4), max(1, probe // 2), probe})


def probe_perplexities(home: Home, user: str, base: str, adapter_ids,
                       probe: int = PROBE_MESSAGES,
                       log: Log | None = None, fmt: dict | None = None,
                       race: bool = False) -> dict:
    """Perplexity of the bare base (``None``) and of each adapter on a seeded sample of ``probe``
    of the user's training messages, and the seconds it took: the local confirmation. Every
    model is asked in the prompt format ``fmt`` (``Recipe.prompt_format``: the compile's to
    come, so shots help all alike, the bare base too), or without one each adapter in its own
    and the bare base without shots.

    ``race``: successive halving. All candidates see the first quarter of the probe messages,
    the better half of them (lowest perplexity so far; the card's order breaks ties) the next
    quarter, the better half of those the second half (``race_rounds``); the bare base sees all.
    ``probed_on`` says how many messages each one's perplexity is over: only those that saw all
    of them may be compared with the base."""
    import math
    import time

    from ..compile.recipe import Recipe
    from ..compile.retrieve import adapter_recipe, recipe_shots
    from ..evaluate.run import EvalConfig, token_nll
    from ..generate import adapters_in_turn
    from ..vault import store
    from ..vault.split import ContentIndex

    t0 = time.perf_counter()
    msgs = store.training_messages(home.conn, user, examples=probe, seed=0)[0]
    probed, pool, shots_of = {m.id for m in msgs}, None, {}
    nll = {aid: (0.0, 0) for aid in [None, *adapter_ids]}
    seen = dict.fromkeys(nll, 0)
    running = list(nll)
    bounds = race_rounds(len(msgs)) if race and len(adapter_ids) > 1 else [len(msgs)]

    def mean(aid):  # nats per token over the messages ``aid`` has seen
        return nll[aid][0] / max(nll[aid][1], 1)

    for r, end in enumerate(bounds):
        # the base loaded once a round, each candidate put on it in turn; shots once per format
        for model, tok, row in adapters_in_turn(home, base, running):
            aid = row["id"] if row is not None else None
            recipe = adapter_recipe(row) if fmt is None else Recipe(**fmt)
            fmt_key = json.dumps(recipe.prompt_format(), sort_keys=True)
            if recipe.shots and fmt_key not in shots_of:  # from this user's other training
                if pool is None:  # messages, as its compile would (read once for all)
                    near = ContentIndex([m.body for m in msgs])  # never a probe message or copy
                    pool = [m for m in store.training_messages(home.conn, user)[0]
                            if m.id not in probed and not near.overlaps(m.body)]
                shots_of[fmt_key] = recipe_shots(tok, recipe, pool, msgs)
            shots = shots_of.get(fmt_key) if recipe.shots else None
            part = token_nll(model, tok, msgs[seen[aid]:end], EvalConfig().perplexity_tokens,
                             shots[seen[aid]:end] if shots else None)
            nll[aid] = (nll[aid][0] + part[0], nll[aid][1] + part[1])
            seen[aid] = end
            if log:
                log(f"confirm: {aid or 'bare base'} perplexity {math.exp(mean(aid)):.4f} on"
                    f" {end} messages")
        if r < len(bounds) - 1:  # the better half of the adapters goes on, and the base
            ranked = sorted((a for a in running if a is not None), key=mean)
            keep = set(ranked[:math.ceil(len(ranked) / 2)])
            running = [a for a in running if a is None or a in keep]
    out = {aid: round(math.exp(mean(aid)), 4) for aid in nll}
    return {"perplexity": out, "messages": len(msgs), "prompt_format": fmt,
            "probed_on": seen, "race": len(bounds) > 1,
            "seconds": round(time.perf_counter() - t0, 2)}


def choose_confirmed(ppl: dict, probed_on: dict | None = None) -> str | None:
    """The adapter with the lowest probe perplexity (the card's order breaks ties), or None when
    none is below the bare base's (key ``None``). ``probed_on`` (``probe_perplexities``'s, by
    the same keys): only those that saw as many messages as the base are compared, never one
    that a race dropped (its perplexity is over fewer, maybe easier, messages)."""
    ids = [k for k in ppl if k is not None
           and (probed_on is None or probed_on[k] == probed_on[None])]
    if not ids:
        return None
    best = min(ids, key=ppl.get)  # min keeps the first of equals: the card's order
    return best if ppl[best] < ppl[None] else None


def merge_default(merge: bool | None, confirm: int,
                  flags: tuple[str, str] = ("merge", "confirm")) -> bool:
    """Whether a confirmation also tries the merge of its two best: ``merge`` as given, or (None)
    on where ``confirm`` >= 2, the default since bench/README.md's xpert_git_pub500_merges (a
    newcomer's merge fit better for 2 of 2, a returning author's own adapter for 4 of 4). Asked
    for with fewer than two to confirm: InputError naming ``flags`` (the merge's, the confirm's)."""
    if merge and confirm < 2:
        raise InputError(f"{flags[0]} needs {flags[1]} 2 or more (two matches to merge)")
    return confirm >= 2 if merge is None else bool(merge)


def warm_start_plan(home: Home, user: str, base: str | None, url: str | None = None,
                    *, recipe=None, threshold: float = 0.5, client=None, card: Card | None = None,
                    embedder: str = CARD_SETTINGS.embedder, limit: int = CARD_SETTINGS.texts,
                    cfg=None, confirm: int = 0, probe: int = PROBE_MESSAGES,
                    race: bool = True, merge: bool | None = None, log: Log | None = None) -> dict:
    """Decide where a compile starts: the nearest catalog adapter (pulled), a merge of the two
    nearest when none reaches ``threshold``, or the bare base. Returns the decision and why:
    ``decision`` (pull / merge / none), ``adapter`` (the local parent id or None), ``sources``
    (the catalog ids used), ``score`` (the best source's, or the best usable match's), ``reason``.
    The user's card is computed here (``limit`` training messages, generation ``cfg`` for the
    base) unless ``card`` is given; only the card is sent. With ``confirm`` K > 0 the top K
    usable matches are pulled and the one that fits ``probe`` of the user's training messages
    best is used (``confirmed``: each one's perplexity beside the base's, and the seconds); the
    threshold and the merge are not consulted. ``race`` (default): the candidates are probed by
    successive halving (``probe_perplexities``), and only those that saw every probe message are
    chosen from (the full probe's choice for 8 of 8 users at 1.84x on wall time:
    bench/results/confirm_race.json); False: every candidate on every message. ``merge`` (with
    ``confirm`` >= 2): the chosen one and the best of the others (the race: of those it dropped
    last) are also merged with equal weights at the recipe's rank, the merge is probed on the
    same messages, and it is used instead when it fits them better (``confirmed["merge"]``: both
    figures; bench/README.md's xpert_git_pub500_merges: a newcomer's start from two other
    people's adapters merged); None (default): on where ``confirm`` >= 2 (``merge_default``)."""
    from ..bases import load as bases
    from .client import CatalogClient
    from .merge import merge_adapters

    log = log or (lambda s: None)
    merge = merge_default(merge, confirm)
    client = client or CatalogClient(url)
    ref = bases.resolve(home, base)
    card = card or card_for_user(home, user, ref.name, limit=limit, cfg=cfg, embedder=embedder,
                                 log=log)
    matches = client.match(card, limit=max(10, confirm))  # --confirm K probes K, not 10
    n_layers = (bases.cached_fingerprint(ref) or {}).get("num_layers")
    usable, skipped = [], []
    for m in matches:
        why = incompatible(m.get("recipe") or {}, recipe, n_layers)
        (skipped if why else usable).append(m | ({"skipped": why} if why else {}))
    plan = {"user": user, "base": ref.name, "threshold": threshold, "adapter": None,
            "sources": [], "score": None,
            "matches": [{k: m.get(k) for k in ("id", "score", "style", "embedding")}
                        | {"why": m["explanation"]["text"]}
                        | ({"fresh": f} if (f := fresh_modules(m.get("recipe") or {}, recipe))
                           else {}) for m in usable],
            "skipped": [{"id": m["id"], "reason": m["skipped"]} for m in skipped]}
    best = usable[0] if usable else None
    if confirm > 0 and usable:
        short = usable[:confirm]
        before = {r["id"] for r in home.conn.execute("SELECT id FROM adapters")}
        local = {m["id"]: client.pull(home, m["id"], user, base=ref.name) for m in short}
        probed = probe_perplexities(home, user, ref.name, list(local.values()), probe, log,
                                    fmt=recipe.prompt_format() if recipe is not None else None,
                                    race=race)
        ppl, seen = probed["perplexity"], probed["probed_on"]

        def by_catalog_id(values: dict) -> dict:  # the pulled copies' values, by catalog id
            return {cid: values[lid] for cid, lid in local.items()}

        plan["confirmed"] = {"perplexity": by_catalog_id(ppl),
                             "base_perplexity": ppl[None], "messages": probed["messages"],
                             "prompt_format": probed["prompt_format"],
                             "seconds": probed["seconds"]}
        if race:
            plan["confirmed"]["probed_on"] = by_catalog_id(seen)
        chosen = choose_confirmed({None: ppl[None], **by_catalog_id(ppl)},
                                  {None: seen[None], **by_catalog_id(seen)})
        if chosen:
            rank = [m["id"] for m in short].index(chosen) + 1
            plan["decision"], plan["adapter"], plan["sources"] = "pull", local[chosen], [chosen]
            plan["score"] = short[rank - 1]["score"]
            plan["reason"] = (f"{chosen} (card rank {rank} of {len(short)}) fits the user's"
                              f" {probed['messages']} probe messages best: perplexity"
                              f" {ppl[local[chosen]]} vs the bare base's {ppl[None]}")
        else:
            plan["decision"], plan["score"] = "none", best["score"]
            plan["reason"] = (f"none of the top {len(short)} matches beats the bare base's"
                              f" perplexity {ppl[None]} on {probed['messages']} probe messages"
                              + (f" (the race probed"
                                 f" {sum(seen[lid] == seen[None] for lid in local.values())} of"
                                 " them on all; the others were dropped on fewer)"
                                 if probed["race"] else ""))
        kept = {chosen}
        if merge and chosen and len(short) >= 2:
            kept |= _confirm_merge(home, plan, local, ppl, seen, chosen, ref.name, probe, recipe,
                                   log)
        # the neighbours pulled only to be probed leave the home again (not those it had)
        gone = [lid for cid, lid in local.items() if cid not in kept and lid not in before]
        plan["confirmed"]["discarded"] = _discard(home, gone)
    elif best and best["score"] >= threshold:
        plan["decision"] = "pull"
        plan["reason"] = f"{best['id']} scores {best['score']:.3f} >= {threshold}"
        plan["adapter"] = client.pull(home, best["id"], user, base=ref.name)
        plan["sources"], plan["score"] = [best["id"]], best["score"]
    else:
        merge_from = merge_pair([m for m in (skipped if recipe is not None else []) + usable
                                 if _mergeable(m, recipe, n_layers)], recipe)
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
            if fresh := fresh_modules(merged.recipe, recipe):
                plan["reason"] += f"; neither has LoRA on {', '.join(fresh)}: those start fresh"
        else:
            plan["decision"], plan["score"] = "none", best["score"] if best else None
            plan["reason"] = ("no adapter of this base in the catalog fits" if not matches else
                              f"best score {best['score'] if best else None} below {threshold}"
                              " and fewer than two adapters to merge")
    if plan["decision"] == "pull":
        fresh = next((m.get("fresh") for m in plan["matches"] if m["id"] == plan["sources"][0]),
                     None)
        if fresh:
            plan["reason"] += f"; it has no LoRA on {', '.join(fresh)}: those start fresh"
    log(f"warm start: {plan['decision']} ({plan['reason']})")
    return plan


def _discard(home: Home, ids) -> list[str]:
    """Discard the pulled-only adapters ``ids`` where nothing rests on them (another user's plan
    in the same home may have made one a merge's parent meanwhile: kept). Returns those gone."""
    from .. import adapters

    gone = []
    for lid in ids:
        try:
            adapters.discard(home, lid)
        except IdiolectError:
            continue
        gone.append(lid)
    return gone


def rank_candidates(ppl: dict, seen: dict) -> list:
    """The probed candidates' keys (not the bare base's ``None``), best first: by the messages
    the race probed each on (the further it got, the better), then by perplexity. The race's
    choice comes first; the next is the best of those it dropped last."""
    return sorted((k for k in ppl if k is not None), key=lambda k: (-seen.get(k, 0), ppl[k]))


def merge_equal(home: Home, user: str, pair, recipe):
    """The two local adapters ``pair`` merged with equal weights at the recipe's rank and alpha.
    Raises IdiolectError when they cannot be merged (e.g. prompted differently); nothing is
    left then."""
    from .merge import merge_adapters

    return merge_adapters(home, [(lid, 0.5) for lid in pair], user,
                          rank=recipe.rank if recipe else None,
                          alpha=recipe.alpha if recipe else None)


def probe_merge(home: Home, user: str, base: str, merged, pair, probe: int, recipe, log: Log,
                sources: bool = False) -> dict:
    """``probe_perplexities`` of the merge (``sources``: and of both sources ``pair``, every one
    on every message) on ``probe`` of ``user``'s messages, the same seeded sample as the
    confirmation's. A probe that fails discards the merge before the error goes on. Shared by
    ``warm_start_plan(merge=True)`` and bench/xpert.py's ``--start merged``."""
    try:
        return probe_perplexities(home, user, base, [merged.id, *(pair if sources else [])],
                                  probe, log,
                                  fmt=recipe.prompt_format() if recipe is not None else None)
    except BaseException:
        _discard(home, [merged.id])
        raise


def _confirm_merge(home: Home, plan: dict, local: dict, ppl: dict, seen: dict, chosen: str,
                   base: str, probe: int, recipe, log: Log) -> set[str]:
    """``warm_start_plan(merge=True)``: merge the confirmation's choice with the best of the
    other candidates (``rank_candidates``), probe the merge on the same messages, and use it
    when it fits them better. Returns the catalog ids the plan now rests on; a merge that does
    not win is discarded again."""
    user = plan["user"]
    ranked = rank_candidates({cid: ppl[lid] for cid, lid in local.items()},
                             {cid: seen[lid] for cid, lid in local.items()})
    other = next(cid for cid in ranked if cid != chosen)
    pair = [local[chosen], local[other]]
    try:
        merged = merge_equal(home, user, pair, recipe)
    except IdiolectError as e:  # e.g. prompted differently: the choice stands
        plan["confirmed"]["merge"] = {"sources": [chosen, other], "skipped": str(e)}
        return {chosen}
    mp = probe_merge(home, user, base, merged, pair, probe, recipe, log)  # errors go on
    fit, against = mp["perplexity"][merged.id], ppl[local[chosen]]
    plan["confirmed"]["merge"] = {"sources": [chosen, other], "perplexity": fit,
                                  "against": against, "messages": mp["messages"],
                                  "base_perplexity": mp["perplexity"][None],
                                  "seconds": mp["seconds"]}
    if fit >= against:
        _discard(home, [merged.id])
        plan["reason"] += (f"; merged with {other} it fits worse ({fit} vs {against}):"
                           " not used")
        return {chosen}
    plan["decision"], plan["adapter"], plan["sources"] = "merge", merged.id, [chosen, other]
    plan["reason"] += (f"; merged with {other} (equal weights) it fits better still: perplexity"
                       f" {fit} vs {against}, the merge is used")
    if fresh := fresh_modules(merged.recipe, recipe):
        plan["reason"] += f"; the merge has no LoRA on {', '.join(fresh)}: those start fresh"
    return {chosen, other}


def _prompt(match: dict) -> dict:
    """A catalog match's prompt format (``compile.recipe.prompt_format`` of its recipe)."""
    from ..compile.recipe import prompt_format

    return prompt_format(match.get("recipe") or {})


def merge_pair(matches: list[dict], recipe=None) -> list[dict]:
    """The two best-scoring of ``matches`` that are asked with the same prompts (a merge is
    asked one way): with the ``recipe``'s prompt format where two such exist, else with the
    format of the best match that has a partner; [] when no two match."""
    ranked = sorted(matches, key=lambda m: -m["score"])
    formats = ([recipe.prompt_format()] if recipe is not None else []) + [_prompt(m)
                                                                          for m in ranked]
    for f in formats:
        pair = [m for m in ranked if _prompt(m) == f][:2]
        if len(pair) == 2:
            return pair
    return []


def _mergeable(match: dict, recipe, n_layers: int | None = None) -> bool:
    """A merge re-factors to the recipe's rank and alpha, so only the modules and layers
    matter: they must lie within the recipe's (an attention-only adapter merges into a recipe
    with the MLP too; the merge holds the union, and the recipe's other pairs start fresh)."""
    return recipe is None or not outside(match.get("recipe") or {}, recipe, n_layers)


def warm_start_auto(home: Home, user: str, base: str | None, url: str | None = None,
                    **kwargs) -> str | None:
    """The local adapter id to use as ``CompileRequest.parent``, or None (start from the base).
    For ``idiolect compile --warm-start auto``; pass ``recipe=`` so that only adapters whose
    LoRA shapes and scale fit it are used as is (others may still be merged and re-factored)."""
    return warm_start_plan(home, user, base, url, **kwargs)["adapter"]
