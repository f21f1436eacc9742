"""Which card terms predict the best-fitting catalog adapter? (issue #21, "cards that predict fit")

Reads a finished ``bench/xpert.py --oracle`` run (its results file, its home and the catalog it
served), takes the published cards from the catalog's database and computes each new user's card
again in the home, as the device does (``card_for_user``: the user's training bodies against the
bare base's cached generations). Then, for every candidate similarity between the two cards, it
asks what ``--oracle`` measured: does the candidate's first choice equal the oracle's best fit
(held-out perplexity of every published adapter on the user's eval set), is it one of the same
author's adapters, is the oracle's best in its top 3, and how much perplexity the first choice
costs over the oracle's best (regret). No model is trained or run here but the card embedder.

Candidates: the card's two recorded terms (style words, embedding) and its current score
(``MatchWeights``), the topic keywords' overlap (Jaccard: the keywords are already in every card),
and blends of them. A blend's weight chosen on the same users is fitted to them; the summary says
so, and a weight is only adopted from one run when a second catalog confirms it.

    .venv/bin/python bench/xpert_cards.py --results bench/results/xpert_git_w2.json \\
        --home bench/_work/xpert-w2-home --catalog bench/_work/xpert-w2-home/server-xpert_git_w2 \\
        --name xpert_cards_w2
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import idiolect  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import Run  # noqa: E402


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 0.0


def candidates(query, card, w) -> dict:
    """Every candidate similarity of a device card and a published card."""
    from idiolect.catalog.match import similarity

    sim = similarity(query, card, w)
    emb = sim["embedding"] if sim["embedding"] is not None else 0.0
    kw = jaccard(query.keywords, card.keywords)
    out = {"score (current)": sim["score"], "style words": sim["style"], "embedding": emb,
           "keywords": kw}
    for a in (0.25, 0.5, 0.75):
        out[f"{a:g} embedding + {1 - a:g} keywords"] = a * emb + (1 - a) * kw
    out["0.5 style + 0.5 keywords"] = 0.5 * sim["style"] + 0.5 * kw
    return out


def judge(ppl: dict, scores: dict, author_of) -> dict:
    """One user: where a candidate's ranking puts the oracle's best fit."""
    best = min(ppl, key=ppl.get)
    order = sorted(scores, key=lambda k: (-scores[k], k))
    pick = order[0]
    return {"pick": pick, "best": best, "top1": pick == best,
            "author": author_of(pick) == author_of(best), "in_top3": best in order[:3],
            "oracle_rank": sorted(ppl, key=ppl.get).index(pick) + 1,
            "regret": round(ppl[pick] - ppl[best], 3)}


def main(argv=None) -> int:
    from xpert import author_of

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True, help="an xpert.py --oracle results file")
    p.add_argument("--home", type=Path, required=True, help="that run's home")
    p.add_argument("--catalog", type=Path, required=True, help="that run's catalog root")
    p.add_argument("--name", default="xpert_cards")
    args = p.parse_args(argv)

    from idiolect.catalog.card import Card
    from idiolect.catalog.match import MatchWeights
    from idiolect.catalog.warm_start import card_for_user
    from idiolect.home import Home

    res = json.loads(args.results.read_text())
    cfg = res["run_info"]["config"]
    run = Run(args.name, vars(args) | {"source_run": res["run_info"].get("git")})
    with sqlite3.connect(f"file:{args.catalog / 'catalog.db'}?mode=ro", uri=True) as db:
        stored = dict(db.execute("SELECT id, card FROM adapters"))
    pub = {k: Card.from_dict(json.loads(stored[v["id"]])) for k, v in res["published"].items()}
    home = Home.open(args.home, create=False)
    w = MatchWeights()
    users, totals = {}, {}
    try:
        for k, o in res["oracle"]["users"].items():
            # the card as the run computed it: of min(--examples, --card-limit) messages
            query = card_for_user(home, f"new-{k}", cfg["base"],
                                  limit=min(int(cfg["examples"]), int(cfg["card_limit"])))
            per = {key: candidates(query, c, w) for key, c in pub.items()}
            # the card computed again must score as the run's did (its recorded top matches)
            for m in res["selection"][k]["ranking"]:
                if abs(per[m["style"]]["score (current)"] - m["score"]) > 1e-3:
                    raise SystemExit(f"new-{k}: {m['style']} scores"
                                     f" {per[m['style']]['score (current)']} here, {m['score']}"
                                     " in the run: not the run's cards")
            names = next(iter(per.values())).keys()
            users[k] = {n: judge(o["perplexity"], {key: per[key][n] for key in per}, author_of)
                        for n in names}
            users[k]["in_catalog"] = res["selection"][k]["in_catalog"]
    finally:
        home.close()
    names = [n for n in next(iter(users.values())) if n != "in_catalog"]
    for n in names:
        rows = [u[n] for u in users.values()]
        totals[n] = {"top1": sum(r["top1"] for r in rows), "author": sum(r["author"] for r in rows),
                     "in_top3": sum(r["in_top3"] for r in rows),
                     "mean_regret": round(sum(r["regret"] for r in rows) / len(rows), 3),
                     "of": len(rows)}
    run.results.update({"source": str(args.results), "published": len(pub), "users": users,
                        "totals": totals, "fitted_here": [n for n in names if "+" in n]})
    for n, t in totals.items():
        print(f"{n:34s} top-1 {t['top1']}/{t['of']}  author {t['author']}/{t['of']}"
              f"  oracle's best in top 3 {t['in_top3']}/{t['of']}  regret {t['mean_regret']}")
    print(f"wrote {run.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
