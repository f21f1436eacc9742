"""XPerT on the xpert-styles corpus or the git authors: does starting from the catalog's nearest
adapter save compute and data?

Protocol (Wang et al., MobiSys 2025, adapted to idiolect):
1. Publisher: for each style in --catalog-styles, import ``K_train.jsonl`` as user ``style-K``
   (Context + Input -> subject, Response -> body), freeze an eval set, compile a pre-personalized
   adapter on --publish-examples messages (made active without the gate, recorded as forced:
   ``--reuse`` publishes it again on a later run), compute its card from its generations (XPerT: the
   adapter's outputs vs the bare base's on the same prompts), publish it to a catalog served on
   loopback.
2. Selection: for each style in --catalog-styles + --user-styles, a new user ``new-K`` holds
   other texts of that style (``K_test.jsonl``); the device computes the card of its own
   --examples training messages and sends only the card to /match. Accuracy = the top match is
   the catalog adapter of the user's own style (for styles in the catalog); for the others the
   ranking and the decision (pull / merge / none) are recorded. With --confirm K the device also
   pulls the card's top K and keeps the one that fits --probe (8) of its training messages best
   (issue #21: select by card, confirm locally); --oracle then ranks both choices.
3. Compute and data: for each style in --ladder-styles, a cold compile from the bare base on N
   (--examples) messages, and warm compiles from the selected catalog adapter on a ladder of
   fractions of N (0 = the pulled adapter as is); with --base-rungs also each rung's messages
   from the bare base with the warm recipe (what the neighbour adds). Each adapter is scored on
   the user's frozen eval set (held-out perplexity, fingerprint distance, authorship probability with its
   interval; the authorship classifier's classes are the new users only, one per person, since a
   publisher window as a class of its own would split its author's probability). The smallest
   warm rung whose held-out perplexity reaches the cold adapter's gives the compute (training
   tokens) and data (messages) needed from the neighbour vs from the base; the smallest that
   reaches it on all three metrics within noise (the gate's test for the style scores, 2% for
   perplexity) decides issue #21's goal (>= 80% less compute, >= 50% less data). The warm rungs
   start from the card's choice, or with --confirm the confirmed one (--start), and may train
   with other recipe fields than the cold compile (--warm-over, e.g. one epoch).

Every compile uses the base's own recipe (what `idiolect compile` uses) unless --recipe names
another; runs before session 22 used Recipe()'s plain defaults (``--recipe plain``; their
results record the recipe).

    .venv/bin/python bench/xpert.py --plan        # print the runs it would make, and exit
    .venv/bin/python bench/xpert.py               # ~30 min on a 2-core CPU (--recipe plain)

With ``--corpus git-authors`` the same protocol runs on ../shared/corpora/git-authors: a catalog
author ``K`` is published as user ``pub-K`` from the first messages of their file (publish-examples
+ eval), and the new user ``new-K`` holds the *next* messages of the same file (disjoint: other
commits of the same person); authors outside the catalog only have a ``new-K``. The keys given to
--catalog-styles / --user-styles / --ladder-styles are then author slugs. With ``--windows W`` each
catalog author is published W times, from W disjoint windows of their earlier messages (``pub-K``,
``pub2-K``, ...; keys ``K``, ``K~2``, ...), and ``new-K`` holds the messages after the last window:
a catalog of W adapters per author, where a selection is right when it picks one of the author's
own (the oracle still names the single best-fitting adapter). On the styles, ``--windows W``
publishes style K from W disjoint windows of ``K_train.jsonl`` (``style-K``, ``style2-K``, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import idiolect  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import CORPORA, RESULTS, Run, file_digest, fresh_catalog  # noqa: E402

STYLES = CORPORA / "xpert-styles"
AUTHORS = CORPORA / "git-authors"
DEFAULT_KEYS = {  # catalog, users outside it, ladders
    "styles": (["1", "2", "3", "6"], ["7", "8"], ["2", "7"]),
    "git-authors": (["brian-m-carlson", "derrick-stolee", "elijah-newren", "jeff-king",
                     "junio-c-hamano", "patrick-steinhardt"], ["rene-scharfe", "taylor-blau"],
                    ["jeff-king", "taylor-blau"]),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--corpus", choices=sorted(DEFAULT_KEYS), default="styles")
    p.add_argument("--catalog-styles", nargs="+", help="published styles (or authors)")
    p.add_argument("--user-styles", nargs="+",
                   help="styles not in the catalog (their new users test nearest/merge)")
    p.add_argument("--ladder-styles", nargs="+")
    p.add_argument("--publish-examples", type=int, default=100)
    p.add_argument("--examples", type=int, default=60)
    p.add_argument("--ladder", type=float, nargs="+", default=[0, 0.25, 0.5, 1.0])
    p.add_argument("--eval-size", type=int, default=50, help="frozen eval set of each user")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="score only the first N eval prompts (default: all of them)")
    p.add_argument("--card-limit", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--summarizer", help="instruct base that writes the published cards'"
                   " explanations (XPerT's summarizer LLM); default: the rules summary only")
    p.add_argument("--card-source", choices=["generations", "training"], default="generations",
                   help="published cards from the adapter's generations (XPerT) or from its"
                   " training texts (the same kind of text the device's card is made of)")
    p.add_argument("--reuse", action="store_true",
                   help="publish the style users' adapters already in the home, if any, and score"
                   " a ladder's cold compile of an earlier run (same user, messages and recipe)"
                   " instead of compiling it again")
    p.add_argument("--no-ladder", action="store_true", help="publish and select only")
    p.add_argument("--oracle", action="store_true",
                   help="also score every published adapter, as is, on every new user's eval"
                   " set (held-out perplexity): is the selected one the best fitting one?")
    p.add_argument("--confirm", type=int, default=0,
                   help="also select with local confirmation: pull the card's top K and keep the"
                   " one with the lowest perplexity on --probe of the new user's training messages"
                   " (issue #21); recorded beside the card-only choice, and ranked by --oracle."
                   " K at the catalog's size is confirmation only (every adapter probed)")
    p.add_argument("--race", action=argparse.BooleanOptionalAction, default=True,
                   help="--confirm by successive halving (the product's default since session"
                   " 23); --no-race probes every candidate on every message, as runs before it")
    p.add_argument("--probe", type=int, default=8,
                   help="training messages of the new user each --confirm candidate is probed on")
    p.add_argument("--windows", type=int, default=1,
                   help="publish each catalog author (style) from this many disjoint windows of"
                   " their earlier messages (of K_train.jsonl): W adapters per author (style)"
                   " in the catalog")
    p.add_argument("--name", default="xpert", help="results name (bench/results/NAME.json)")
    p.add_argument("--recipe", help="Recipe JSON for every compile (fields it leaves out: the"
                   " base's own recipe); default: the base's recipe, what `idiolect compile` uses;"
                   " 'plain': Recipe()'s defaults, which every run before session 22 used")
    p.add_argument("--warm-over", type=json.loads, default={},
                   help="JSON object of schedule fields (epochs, lr, warmup_steps,"
                   " weight_decay) the warm rungs change over --recipe (e.g."
                   " '{\"epochs\": 1}'); the cold compile keeps --recipe")
    p.add_argument("--start", choices=["card", "confirmed", "merged"],
                   help="the neighbour the warm rungs start from: the card's choice, the"
                   " confirmed one (needs --confirm; the default with it), or the two that fit"
                   " the probe messages best merged with equal weights at the recipe's rank"
                   " (needs --confirm 2 or more; its probe perplexity recorded beside theirs)")
    p.add_argument("--ppl-tol", type=float, default=PPL_TOL,
                   help="a warm rung's held-out perplexity is within noise of the cold one's when"
                   " at most this share above it (no interval: issue #18's parity bound)")
    p.add_argument("--base-rungs", action="store_true",
                   help="also compile each ladder rung's messages from the bare base with the"
                   " warm recipe (same messages, same schedule, no neighbour): what the"
                   " neighbour adds over starting from nothing")
    p.add_argument("--select-for", choices=["all", "ladder"], default="all",
                   help="select (card, confirmation) for every new user, or only for the ladder"
                   " users (a rerun of the ladders with another warm recipe)")
    p.add_argument("--home", type=Path, help="State folder (default: bench/_work/xpert-home).")
    p.add_argument("--plan", action="store_true", help="Print the runs and exit.")
    p.add_argument("--replot", nargs="+", type=Path, metavar="RESULTS_JSON",
                   help="plot the ladders of these results files together into"
                   " bench/results/NAME.png (with reach by each metric), and exit")
    args = p.parse_args(argv)
    cat, users, ladder = DEFAULT_KEYS[args.corpus]
    args.catalog_styles = args.catalog_styles or cat
    args.user_styles = args.user_styles or users
    if args.ladder_styles and (stray := [k for k in args.ladder_styles
                                         if k not in args.catalog_styles + args.user_styles]):
        p.error(f"--ladder-styles {' '.join(stray)}: not among --catalog-styles or --user-styles")
    args.ladder_styles = args.ladder_styles or ladder
    if args.windows < 1:
        p.error("--windows: 1 or more")
    args.select_keys = (args.catalog_styles + args.user_styles if args.select_for == "all" else
                        [k for k in args.catalog_styles + args.user_styles
                         if k in args.ladder_styles])
    if args.select_for == "ladder" and (args.no_ladder or args.oracle):
        p.error("--select-for ladder: only with the ladders, without --oracle")
    if args.probe < 1:
        p.error("--probe: at least 1 message")
    if args.start == "confirmed" and not args.confirm:
        p.error("--start confirmed: needs --confirm K")
    if args.start == "merged" and args.confirm < 2:
        p.error("--start merged: needs --confirm K of 2 or more")
    args.start = args.start or ("confirmed" if args.confirm else "card")
    if not isinstance(args.warm_over, dict) or not set(args.warm_over) <= WARM_FIELDS:
        fields = ", ".join(sorted(WARM_FIELDS))
        p.error(f"--warm-over: a JSON object of the schedule's fields ({fields}): the"
                " neighbour is chosen for the run's recipe")
    return args


# what --warm-over may change: the training schedule, not what decides which catalog adapters
# can seed the compile or how they are prompted (the selection ran with the run's recipe)
WARM_FIELDS = {"epochs", "lr", "warmup_steps", "weight_decay"}


def window_key(k: str, w: int) -> str:
    """The catalog key of author ``k``'s window ``w`` (1-based): ``k`` itself for the first."""
    return k if w == 1 else f"{k}~{w}"


def author_of(key: str | None) -> str | None:
    """The author (or style) a catalog key belongs to: ``K~2`` -> ``K``."""
    return None if key is None else key.split("~")[0]


def read_style(path: Path, user: str, limit: int | None = None):
    from idiolect.vault.message import Message

    out = []
    with path.open() as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            subject = " ".join((row["Context"] + " " + row.get("Input", "")).split())[:200]
            out.append(Message(subject=subject, body=row["Response"], to=[],
                               source_id=f"{path.name}:{i}"))
    return out


def corpus_messages(args, k: str) -> tuple[list[tuple[str, str, list]], list]:
    """([(catalog key, publisher user, its messages)], the new user's messages) for key ``k``:
    publish-examples + eval-size messages for each publisher (none when ``k`` is not in the
    catalog; --windows of them, disjoint, for a git author), examples + eval-size other messages
    of the same style or author for the new user."""
    from idiolect.vault.ingest import read_source

    pub_n, new_n = args.publish_examples + args.eval_size, args.examples + args.eval_size
    published = k in args.catalog_styles
    if args.corpus == "styles":  # windows of K_train; the new user's texts from K_test
        rows = read_style(STYLES / f"{k}_train.jsonl", f"style-{k}",
                          args.windows * pub_n) if published else []
        if published and len(rows) < args.windows * pub_n:
            raise SystemExit(f"{STYLES / k}_train.jsonl: {len(rows)} texts,"
                             f" need {args.windows * pub_n}")
        pubs = [(window_key(k, w), f"style{w if w > 1 else ''}-{k}",
                 rows[(w - 1) * pub_n:w * pub_n]) for w in range(1, args.windows + 1)]
        return (pubs if published else [],
                read_style(STYLES / f"{k}_test.jsonl", f"new-{k}", new_n))
    msgs = read_source(AUTHORS / f"{k}.jsonl", "jsonl")
    skip = args.windows * pub_n  # the new user's messages follow the windows, published or not
    if len(msgs) < skip + new_n:
        raise SystemExit(f"{AUTHORS / k}.jsonl: {len(msgs)} messages, need {skip + new_n}")
    pubs = [(window_key(k, w), f"pub{w if w > 1 else ''}-{k}", msgs[(w - 1) * pub_n:w * pub_n])
            for w in range(1, args.windows + 1)]
    return pubs if published else [], msgs[skip:skip + new_n]


def split_users(splits: dict) -> dict:
    """User -> the messages it holds, from ``corpus_messages`` per key: the publishers' and
    the new users'."""
    return {u: ms for pubs, _ in splits.values() for _, u, ms in pubs} | {
        f"new-{k}": new for k, (_, new) in splits.items()}


def new_users_cohort(conn):
    """The home's evaluation cohort without the publishers: ``new-K`` users, one per person."""
    from idiolect.evaluate.run import Cohort, cohort

    c = cohort(conn)
    keep = [u for u in c.users if u.startswith("new-")]
    return Cohort(*({u: part[u] for u in keep} for part in (c.train, c.held, c.reference)))


def check_home(home, wanted: dict) -> None:
    """Refuse (SystemExit) a home that holds a user of ``wanted`` (user -> the messages this run
    gives it) with other messages (another --windows, --examples or --publish-examples split), or
    a publisher window this run does not make (``pubN-K``: another authorship cohort)."""
    from idiolect.vault import store

    for user in [u["user"] for u in store.list_users(home.conn)]:
        if user not in wanted and re.fullmatch(r"(pub|style)\d+-.+", user):
            raise SystemExit(f"{home.root}: holds {user}, a window this run does not publish"
                             " (another authorship cohort); use another --home")
        if user in wanted and store.eval_set(home.conn, user) is not None and (
                {m.digest for m in store.all_messages(home.conn, user)}
                != {m.digest for m in wanted[user]}):
            raise SystemExit(f"{home.root}: user {user} holds other messages than this run's"
                             " split; use another --home")


def reusable(conn, user: str, base: str):
    """The ``Manifest`` of ``user``'s active adapter on ``base`` (a previous run's), or None."""
    from idiolect.manifest import Manifest

    row = conn.execute("SELECT id, path FROM adapters WHERE user=? AND base=? AND state='active'"
                       " ORDER BY created_at DESC LIMIT 1", (user, base)).fetchone()
    return Manifest.read(Path(row["path"])) if row else None


def compiled(home, req):
    """``--reuse``: the adapter an earlier run compiled for exactly ``req`` (user, base by name
    and fingerprint, parent, training snapshot, resolved recipe; not a copy of another user's),
    or None. A ladder's cold compile is then scored again, not trained again."""
    from idiolect.bases import load as bases
    from idiolect.compile.recipe import Recipe, for_base
    from idiolect.manifest import MANIFEST, Manifest
    from idiolect.vault import store

    recipe = (req.recipe or for_base(req.base)).resolved()
    digest = bases.read_fingerprint(bases.resolve(home, req.base))["digest"]
    _, snapshot = store.training_messages(home.conn, req.user, req.examples, seed=recipe.seed)
    for row in home.conn.execute(
            "SELECT path FROM adapters WHERE user=? AND base=? AND base_digest=? AND parent IS ?"
            " AND snapshot=? ORDER BY created_at DESC, rowid DESC",
            (req.user, req.base, digest, req.parent, snapshot)):
        folder = Path(row["path"])
        if not (folder / MANIFEST).exists():
            continue  # its folder removed by hand: compile again
        m = Manifest.read(folder)
        if not m.metrics.get("copied_from") and Recipe.from_dict(m.recipe) == recipe:
            return m
    return None


METRICS = {"perplexity": -1, "fingerprint_distance": -1, "authorship_probability": 1}
PPL_TOL = 0.02
GOAL = {"compute_saved": 0.8, "data_saved": 0.5}  # issue #21's warm-start goal
GOAL_USERS = 6  # ... for at least this many new users across both corpora


def as_good(rung: dict, cold: dict, metric: str, noise: bool = False,
            ppl_tol: float = PPL_TOL) -> bool:
    """Is ``rung`` at least as good as ``cold`` on ``metric``? Strictly (``noise`` False: the
    point scores), or within noise: not worse beyond noise by the gate's test
    (``worse_beyond_noise``, both standard errors) for the style scores, at most ``ppl_tol``
    above for perplexity. A score without a standard error is judged strictly."""
    from idiolect.evaluate.intervals import worse_beyond_noise

    sign = METRICS[metric]
    if sign * (rung[metric] - cold[metric]) >= 0:
        return True
    if not noise:
        return False
    if metric == "perplexity":
        return rung[metric] <= cold[metric] * (1 + ppl_tol)
    se = [((r.get("intervals") or {}).get(metric) or {}).get("se") for r in (rung, cold)]
    return None not in se and not worse_beyond_noise(rung[metric], se[0], cold[metric], se[1],
                                                     higher_is_better=sign > 0)


def reach(row: dict, metric: str | None, noise: bool = False,
          ppl_tol: float = PPL_TOL) -> dict | None:
    """The smallest warm rung at least as good as the cold adapter on ``metric`` (lower is
    better for perplexity and distance, higher for authorship; None: on all three at once),
    strictly or within noise (``as_good``), with the compute (training tokens) and data
    (messages) it saved and whether that meets issue #21's goal; None when no rung gets there."""
    cold = row["cold"]
    wanted = list(METRICS) if metric is None else [metric]
    hit = next((r for r in row["warm"]
                if all(as_good(r, cold, m, noise, ppl_tol) for m in wanted)), None)
    if hit is None:
        return None
    trained = lambda r: r.get("trained_messages") or r["messages"]  # noqa: E731 (asked, before)
    saved = {"compute_saved": round(1 - hit["tokens"] / cold["tokens"], 3),
             "data_saved": round(1 - trained(hit) / trained(cold), 3)}
    return {"messages": hit["messages"], "tokens": hit["tokens"], **saved,
            "goal": all(saved[k] >= v for k, v in GOAL.items())}


def reaches(row: dict, ppl_tol: float = PPL_TOL) -> dict:
    """``reach`` by each metric and on all three, strictly and within noise."""
    return {"by": {m: reach(row, m) for m in METRICS}, "all": reach(row, None),
            "within_noise": {m: reach(row, m, True, ppl_tol) for m in METRICS},
            "all_within_noise": reach(row, None, True, ppl_tol)}


def own_copy(home, adapter_id: str, user: str) -> str:
    """``adapter_id`` if it is ``user``'s, else a copy registered to ``user`` (new id, a
    candidate).

    The bench's publisher and devices share one home, so a pulled catalog adapter may already be
    here as the publisher's (or another new user's) own; scoring it "as is" on this user's eval
    set needs it to be the user's (evaluation records its scores on the adapter)."""
    from idiolect import adapters
    from idiolect.home import new_id
    from idiolect.manifest import Manifest

    row = adapters.get(home.conn, adapter_id)
    if row["user"] == user:
        return adapter_id
    src = Path(row["path"])
    local = replace(Manifest.read(src), id=new_id(), user=user,
                    metrics={"copied_from": adapter_id}, gate=None)  # same files, never gated
    with adapters.staging(home, local.id) as staging:
        for name in adapters.ADAPTER_FILES:
            shutil.copy2(src / name, staging / name)
        local.write(staging)
        adapters.install(home, staging, local)
    return local.id


def oracle(home, args, published: dict, selections: dict) -> dict:
    """Held-out perplexity of every published adapter on every new user's eval messages (the
    first --eval-limit): which catalog adapter fits each user best, and where the selected one
    and the user's own style (or author) rank."""
    from idiolect.evaluate.run import EvalConfig, perplexity
    from idiolect.generate import load_for_inference
    from idiolect.vault import store

    tokens = EvalConfig().perplexity_tokens
    held = {k: store.eval_messages(home.conn, f"new-{k}")[:args.eval_limit] for k in selections}
    ppl: dict = {k: {} for k in selections}
    for pk, pub in published.items():
        model, tok, _ = load_for_inference(home, args.base, pub["local"])
        for k in selections:
            ppl[k][pk] = round(perplexity(model, tok, held[k], tokens), 3)
        del model
    out = {}
    for k, row in ppl.items():
        order = sorted(row, key=row.get)
        sel = selections[k]["top_style"]
        conf = (selections[k].get("confirmed") or {}).get("style")
        out[k] = {"perplexity": row, "best": order[0],
                  "selected_rank": order.index(sel) + 1 if sel in order else None,
                  **({"confirmed_rank": order.index(conf) + 1 if conf in order else None}
                     if "confirmed" in selections[k] else {}),
                  "own_rank": next((i + 1 for i, key in enumerate(order)
                                    if author_of(key) == k), None)}
        log(f"oracle new-{k}: best {order[0]}, selected {sel} ranks {out[k]['selected_rank']}")
    return {"users": out,
            "selected_is_best": sum(o["selected_rank"] == 1 for o in out.values()),
            **({"confirmed_is_best": sum(o.get("confirmed_rank") == 1 for o in out.values())}
               if any("confirmed_rank" in o for o in out.values()) else {}),
            "own_is_best": sum(o["own_rank"] == 1 for o in out.values() if o["own_rank"]),
            "of": len(out), "in_catalog": sum(o["own_rank"] is not None for o in out.values())}


def merge_best_two(home, user: str, args, url: str, conf: dict, by_id: dict, recipe) -> dict:
    """``--start merged``: the two catalog adapters that fit ``user``'s probe messages best in
    the confirmation ``conf`` (with the race: the one it chose, then the best of those it
    dropped last), pulled again and merged with equal weights at the recipe's rank and alpha.
    The merge and both sources are then probed together on all the probe messages (the race
    saw the second on fewer), beside the bare base: would a merge have beaten the choice?"""
    from idiolect.catalog.client import CatalogClient
    from idiolect.catalog.warm_start import merge_equal, probe_merge, rank_candidates

    c = conf.get("confirmed") or {}
    best = rank_candidates(c.get("perplexity") or {}, c.get("probed_on") or {})
    if len(best) < 2:
        raise SystemExit(f"{user}: --start merged needs two confirmed candidates, got"
                         f" {len(best)} ({conf['reason']})")
    two = best[:2]
    client = CatalogClient(url)
    local = [client.pull(home, cid, user, base=args.base) for cid in two]
    merged = merge_equal(home, user, local, recipe)
    probed = probe_merge(home, user, args.base, merged, local, args.probe, recipe, log,
                         sources=True)  # every one on every message
    p = probed["perplexity"]
    log(f"{user}: merged {' + '.join(by_id.get(cid, cid) for cid in two)} -> {merged.id},"
        f" probe perplexity {p[merged.id]} (theirs {[p[lid] for lid in local]}, base {p[None]})")
    return {"styles": [by_id.get(cid, cid) for cid in two], "decision": "merge",
            "confirmation": conf["decision"], "adapter": merged.id, "weights": [0.5, 0.5],
            "perplexity": p[merged.id], "sources_perplexity": [p[lid] for lid in local],
            "sources_messages": [probed["messages"]] * 2,
            "base_perplexity": p[None], "messages": probed["messages"]}


def goal_summary(ladders: dict) -> dict:
    """Issue #21's warm-start goal over the ladder users: how many reach the cold compile on
    all three metrics within noise with >= 80% less compute and >= 50% less data."""
    met = sorted(k for k, row in ladders.items()
                 if ((row.get("reach") or {}).get("all_within_noise") or {}).get("goal"))
    return {"met": met, "of": len(ladders), "goal": GOAL, "needed": GOAL_USERS}


def log(s: str) -> None:
    print("   " + str(s)[:200], file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    n = args.examples
    plan = ([f"publish {window_key(k, w)} ({args.publish_examples} examples)"
             for k in args.catalog_styles for w in range(1, args.windows + 1)]
            + [f"select for new-{k} (card of {args.card_limit} of its messages)"
               for k in args.select_keys]
            + [f"ladder new-{k}: cold on {n}, warm on {[round(f * n) for f in args.ladder]}"
               f" from the {args.start} neighbour"
               + (f" with {json.dumps(args.warm_over)} over the recipe" if args.warm_over else "")
               + (", and the same rungs from the bare base" if args.base_rungs else "")
               for k in ([] if args.no_ladder else args.ladder_styles)])
    if args.plan:
        print("\n".join(plan))
        return 0
    if args.replot:
        ladders = {}
        for path in args.replot:
            ladders |= json.loads(path.read_text()).get("ladders") or {}
        for k, row in sorted(ladders.items()):
            print(f"new-{k} from {row['decision']} of {row['selected']}: "
                  + json.dumps(reaches(row, args.ppl_tol)))
        plot({"ladders": ladders}, RESULTS / f"{args.name}.png")
        return 0
    from idiolect.catalog.warm_start import publish_adapter, warm_start_plan
    from idiolect.compile.recipe import Recipe, for_base
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.evaluate.run import EvalConfig, evaluate
    from idiolect.home import Home
    from idiolect.pipeline import promote
    from idiolect.vault import store

    recipe = (Recipe() if args.recipe == "plain" else
              Recipe.from_file(Path(args.recipe), args.base) if args.recipe else
              for_base(args.base))
    warm_recipe = replace(recipe, **args.warm_over)
    run = Run(args.name, {k: json.dumps(v) if isinstance(v, dict) else str(v)
                          for k, v in vars(args).items()} | {
        "recipe": recipe.to_dict(), "warm_recipe": warm_recipe.to_dict()})
    run.meta["data"] = {p.name: file_digest(p) for p in
                        sorted((STYLES if args.corpus == "styles" else AUTHORS).glob("*.jsonl"))}
    # more windows put more users (classes of the eval's authorship cohort) in the home: their own
    home = Home.open(args.home or ROOT / "bench" / "_work" / ("xpert-home" if args.windows == 1
                                                              else f"xpert-home-w{args.windows}"))
    conn = home.conn
    splits = {k: corpus_messages(args, k) for k in args.catalog_styles + args.user_styles}
    check_home(home, split_users(splits))  # before anything is written
    ecfg = EvalConfig(limit=args.eval_limit)
    url, stop = fresh_catalog(home.root / f"server-{args.name}")  # per run: no duplicates

    def ensure_user(user: str, messages: list) -> None:
        if store.eval_set(conn, user) is None:
            store.import_messages(conn, user, messages, source=args.corpus, fmt="jsonl")
            store.freeze_eval(conn, user, size=args.eval_size)

    def scores(user: str, adapter_id: str) -> dict:
        # one class per real person: the new users only (a publisher window of the same author
        # as a class of its own would split the author's authorship probability, issue #21)
        r = evaluate(home, user, adapter_id, cfg=ecfg, log=log, members=new_users_cohort(conn))
        return {k: r["adapter_scores"][k] for k in
                ("perplexity", "fingerprint_distance", "authorship_probability", "intervals")} | {
            "base": r["base_scores"], "eval_s": r["seconds"]}

    try:
        # every user first: the authorship classifier is trained on the whole cohort
        publisher = {}
        for k, (pubs, new) in splits.items():
            for key, pub_user, pub in pubs:
                ensure_user(pub_user, pub)
                publisher[key] = pub_user
            ensure_user(f"new-{k}", new)
        summ = None
        if args.summarizer:
            from idiolect.catalog.summarize import local_summarizer
            summ = local_summarizer(home, args.summarizer)
        published = {}
        for k in publisher:
            m = reusable(conn, publisher[k], args.base) if args.reuse else None
            if m is not None and Recipe.from_dict(m.recipe) != recipe.resolved():
                raise SystemExit(f"{home.root}: {publisher[k]}'s adapter {m.id} was compiled with"
                                 " another recipe than this run's (--recipe plain for the runs"
                                 " before session 22); use another --home or --recipe")
            if m is None:
                m = compile_adapter(home, CompileRequest(publisher[k], args.base,
                                                         args.publish_examples, recipe), log=log)
                # A fixture, not the gate's test: the publisher's adapter is made active (forced,
                # unevaluated, recorded as such) as compile did before the pipeline, so that
                # --reuse finds it on a later run.
                promote(home, m.id, force=True, evaluate=False, log=log)
            pub = publish_adapter(home, m.id, url, "bench", limit=args.card_limit, log=log,
                                  summarizer=summ, card_source=args.card_source)
            published[k] = {"id": pub["id"], "local": m.id, "tokens": m.tokens["seen"],
                            "trained_messages": m.snapshot.get("messages"),
                            "train_s": m.timings["train_s"],
                            "summary": pub["card"].get("summary"),
                            "summarizer": pub["card"].get("summarizer"),
                            "llm_style": pub["card"].get("llm_style")}
            log(f"published {publisher[k]}: {pub['id']}")
        by_id = {v["id"]: k for k, v in published.items()}
        if summ is not None:
            run.results["summarizer"] = {"base": args.summarizer, **summ.stats,
                                         "complied": sum(v["summarizer"] == "llm"
                                                         for v in published.values()),
                                         "of": len(published)}
        run.results["published"] = published

        selections = {}
        for k in args.select_keys:
            sel = warm_start_plan(home, f"new-{k}", args.base, url, recipe=recipe,
                                  limit=min(n, args.card_limit), threshold=args.threshold,
                                  log=log)
            # the two terms of the card's score too (style words, embedding): what predicts fit
            ranking = [{"style": by_id.get(m["id"]), "score": round(m["score"], 4),
                        "style_cos": m.get("style"), "embedding_cos": m.get("embedding")}
                       for m in sel["matches"]]
            selections[k] = {"in_catalog": k in args.catalog_styles, "decision": sel["decision"],
                             "reason": sel["reason"], "ranking": ranking,
                             "top_style": ranking[0]["style"] if ranking else None,
                             "correct": (author_of(ranking[0]["style"]) == k)
                             if k in args.catalog_styles and ranking
                             else None, "adapter": sel["adapter"]}
            log(f"new-{k}: top {ranking[:3]} -> {sel['decision']}")
            if args.confirm:
                conf = warm_start_plan(home, f"new-{k}", args.base, url, recipe=recipe,
                                       limit=min(n, args.card_limit), confirm=args.confirm,
                                       probe=args.probe, race=args.race, merge=False,
                                       log=log)  # --start merged merges on its own
                c = conf.get("confirmed") or {}
                selections[k]["confirmed"] = {
                    "style": by_id.get(conf["sources"][0]) if conf["sources"] else None,
                    "decision": conf["decision"], "reason": conf["reason"],
                    "adapter": conf["adapter"],
                    "perplexity": {by_id.get(i, i): v for i, v in c.get("perplexity",
                                                                      {}).items()},
                    "base_perplexity": c.get("base_perplexity"), "messages": c.get("messages"),
                    "seconds": c.get("seconds")}
                log(f"new-{k}: confirmed {selections[k]['confirmed']['style']}"
                    f" ({conf['reason']})")
                if args.start == "merged":
                    selections[k]["merged"] = merge_best_two(home, f"new-{k}", args, url, conf,
                                                             by_id, recipe)
            run.results["selection"] = selections
            run.write("partial")
        judged = [s for s in selections.values() if s["correct"] is not None]
        run.results["selection_accuracy"] = {"correct": sum(s["correct"] for s in judged),
                                             "of": len(judged)}
        if args.confirm:
            run.results["selection_accuracy"]["confirmed_correct"] = sum(
                author_of(s["confirmed"]["style"]) == k for k, s in selections.items()
                if s["correct"] is not None)
        if args.oracle:
            run.results["oracle"] = oracle(home, args, published, selections)
            run.write("partial")

        def rung(req, m) -> dict:
            """A ladder compile ``m`` made for ``req`` (the messages asked for), scored."""
            return {"messages": req.examples, "trained_messages": m.snapshot.get("messages"),
                    "tokens": m.tokens["seen"], "steps": m.tokens["steps"],
                    "train_s": m.timings["train_s"], **scores(req.user, m.id)}

        ladders = {}
        for k in [] if args.no_ladder else args.ladder_styles:
            user, sel = f"new-{k}", selections[k]
            if args.start == "confirmed":  # the neighbour local confirmation chose
                sel = {"top_style": sel["confirmed"]["style"], **sel["confirmed"]}
            elif args.start == "merged":
                sel = {"top_style": "+".join(sel["merged"]["styles"]), **sel["merged"]}
            if not sel["adapter"]:
                log(f"{user}: no neighbour to start from ({sel['decision']}): the cold compile"
                    " only")
            req = CompileRequest(user, args.base, n, recipe)
            cold = compiled(home, req) if args.reuse else None
            reused = cold is not None
            if reused:
                log(f"{user}: the cold compile {cold.id} of an earlier run, scored again")
            else:
                cold = compile_adapter(home, req, log=log)
            row = {"selected": sel["top_style"], "decision": sel["decision"],
                   "start": args.start, "cold_reused": reused,
                   "cold": {"adapter": cold.id, "created_at": cold.created_at,
                            **rung(req, cold)}, "warm": []}
            if sel["adapter"]:
                for f in args.ladder:
                    k_msgs = round(f * n)
                    if k_msgs == 0:
                        r = {"messages": 0, "trained_messages": 0, "tokens": 0, "steps": 0,
                             "train_s": 0.0, **scores(user, own_copy(home, sel["adapter"], user))}
                    else:
                        warm_req = CompileRequest(user, args.base, k_msgs, warm_recipe,
                                                  parent=sel["adapter"])
                        r = rung(warm_req, compile_adapter(home, warm_req, log=log))
                    row["warm"].append(r)
                    log(f"{user} warm {k_msgs}: ppl {r['perplexity']:.2f}"
                        f" (cold {row['cold']['perplexity']:.2f})")
                row["reach"] = reaches(row, args.ppl_tol)  # ("reach_by" in runs before it)
            if args.base_rungs and sel["adapter"]:  # the same rungs from the bare base: what
                row["base_rungs"] = []                # the neighbour adds
                for f in args.ladder:
                    if k_msgs := round(f * n):
                        base_req = CompileRequest(user, args.base, k_msgs, warm_recipe)
                        done = compiled(home, base_req) if args.reuse else None
                        r = rung(base_req, done or compile_adapter(home, base_req, log=log))
                        row["base_rungs"].append(r | ({"reused": True} if done else {}))
                        log(f"{user} from the base on {k_msgs}: ppl {r['perplexity']:.2f}")
            ladders[k] = row
            run.results["ladders"] = ladders
            run.write("partial")
        if ladders:
            run.results["warm_goal"] = goal_summary(ladders)
        path = run.write()
        plot(run.results, RESULTS / f"{args.name}.png")
        print(f"wrote {path}")
    except BaseException:
        run.write(status="failed")
        raise
    finally:
        stop()
        home.close()
    return 0


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladders = res.get("ladders") or {}
    if not ladders:
        return
    fig, axes = plt.subplots(1, len(ladders), figsize=(5.5 * len(ladders), 3.6), squeeze=False)
    for ax, (k, row) in zip(axes[0], sorted(ladders.items())):
        w = row["warm"]
        ax.plot([r["tokens"] for r in w], [r["perplexity"] for r in w], "o-", color="#3b7dd8",
                label=f"warm from {row['selected']} ({row['decision']})")
        if b := row.get("base_rungs"):
            ax.plot([r["tokens"] for r in b], [r["perplexity"] for r in b], "^--",
                    color="#7a7a7a", label="the same rungs from the base")
        ax.scatter([row["cold"]["tokens"]], [row["cold"]["perplexity"]], color="#e08a2c",
                   marker="s", zorder=3, label="cold (from the base)")
        ax.axhline(row["cold"]["base"]["perplexity"], ls=":", color="#999", label="bare base")
        ax.axhline(row["cold"]["perplexity"], ls="--", color="#e08a2c", lw=0.8)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"new user {k}" if not k.isdigit() else f"new user of style {k}",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
