"""Honest style scores (issue #17, part 1): the old protocol beside the new one, in one run.

On the 12 git authors (../shared/corpora/git-authors), each imported into a fresh home and frozen
the way `idiolect user freeze-eval USER --size 50` does (seed 0):

- old protocol: training = every message outside the eval set by id; the style scaler and the
  authorship classifier fitted on those training messages (at most 500 per author);
- new protocol: the reference split (frozen with the eval set) is held out too, training loses
  whatever repeats an eval or reference body (vault/split.py), and the scorers are fitted on the
  reference split only (what `idiolect eval` now does).

For both: how many eval bodies repeat a training message (equal, or half their 8-grams inside
one), the ceiling (the author's own held-out text) and floor (other authors' held-out text) of
both scores, and a *memorizer*: for each eval prompt, a training message of the author returned
as is. A score that rewards echoing training text gives the memorizer more than the ceiling.

    .venv/bin/python bench/honest_scores.py      # a few minutes on 2 cores

Writes bench/results/honest_scores.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import CORPORA, Run  # noqa: E402


def leaks(held: list[str], train: list[str]) -> dict:
    """Eval bodies equal to a training body, and with at least half their 8-grams in one."""
    from idiolect.vault.message import normalize_text
    from idiolect.vault.split import ContentIndex, ngrams

    exact = {normalize_text(t) for t in train}
    index = ContentIndex(train)  # protected = training, asked about each eval body
    equal = sum(normalize_text(h) in exact for h in held)
    mostly = 0
    for h in held:
        grams = ngrams(h)
        if not grams:
            continue
        counts: dict[int, int] = {}
        for g in grams:
            for k in index.postings.get(g, ()):
                counts[k] = counts.get(k, 0) + 1
        mostly += any(c >= 0.5 * len(grams) for c in counts.values())
    return {"eval": len(held), "equal": equal, "half_inside_one": mostly}


def score_protocol(name: str, fit_on: dict, train: dict, held: dict, seed: int, log
                   ) -> tuple[dict, dict]:
    """Ceiling, floors and the memorizer's scores per author, scorers fitted on ``fit_on``;
    and the classifier's top-1 accuracy and log loss on every author's held-out messages."""
    from idiolect.evaluate.authorship import AuthorshipModel
    from idiolect.evaluate.calibrate import calibrate, score_texts
    from idiolect.evaluate.novelty import novelty
    from idiolect.evaluate.stylometry import StyleScaler

    t = time.perf_counter()
    scaler = StyleScaler.from_cohort(fit_on)
    clf = AuthorshipModel().fit(fit_on, seed=seed)
    log(f"{name}: scorers fitted on {sum(map(len, fit_on.values()))} texts in"
        f" {time.perf_counter() - t:.1f}s")
    out = {}
    for user in sorted(held):
        others = {u: h for u, h in held.items() if u != user}
        c = calibrate(user, held[user], fit_on[user], others, scaler, clf, seed=seed)
        rng = random.Random(f"{seed}:{user}")
        memorized = rng.sample(train[user], len(held[user]))
        mem = score_texts(memorized, user, held[user], scaler, clf, seed=seed)
        nov = novelty(memorized, train[user])
        out[user] = {
            m: {"ceiling": c[m]["ceiling"], "ceiling_interval": c[m].get("ceiling_interval"),
                "floor": c[m]["floor"], "floor_best": c[m]["floor_best"], "memorizer": mem[m],
                "memorizer_interval": mem["intervals"][m]}
            for m in ("authorship_probability", "fingerprint_distance")}
        out[user]["memorizer_verbatim"] = nov["verbatim"]
    # the classifier on every author's held-out messages: top-1 accuracy and log loss
    import numpy as np

    truth = np.repeat(np.arange(len(clf.users)), [len(held[u]) for u in clf.users])
    proba = clf.predict_proba([t for u in clf.users for t in held[u]])
    classifier = {
        "top1_accuracy": float((proba.argmax(axis=1) == truth).mean()),
        "log_loss": float(-np.log(np.maximum(proba[np.arange(len(truth)), truth], 1e-15)).mean()),
        "chance": clf.chance, "texts": int(len(truth))}
    return out, classifier


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", type=Path, default=CORPORA / "git-authors")
    p.add_argument("--size", type=int, default=50)
    p.add_argument("--reference", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="honest_scores")
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    from idiolect.home import Home
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    files = sorted(args.corpora.glob("*.jsonl"))
    if not files:
        sys.exit(f"error: no *.jsonl in {args.corpora}")
    run = Run(args.name, vars(args) | {"corpora": str(args.corpora)})
    with tempfile.TemporaryDirectory() as tmp, Home.open(Path(tmp) / "home") as home:
        conn = home.conn
        old_train, new_train, held, reference = {}, {}, {}, {}
        for f in files:
            user = f.stem
            store.import_messages(conn, user, read_source(f, "jsonl"), source=str(f), fmt="jsonl")
            ev = store.freeze_eval(conn, user, size=args.size, seed=args.seed,
                                   reference=args.reference)
            eval_ids = set(ev["message_ids"])
            every = store.all_messages(conn, user)
            held[user] = [m.body for m in every if m.id in eval_ids]
            old_train[user] = [m.body for m in every if m.id not in eval_ids]
            reference[user] = [m.body for m in store.reference_messages(conn, user)]
            new_train[user] = [m.body for m in store.training_messages(conn, user)[0]]
            log(f"{user}: {len(every)} messages, eval {len(held[user])}, reference"
                f" {len(reference[user])}, training {len(old_train[user])} -> {len(new_train[user])}")
        run.results["split"] = {u: {"messages": len(old_train[u]) + len(held[u]),
                                    "eval": len(held[u]), "reference": len(reference[u]),
                                    "train_old": len(old_train[u]), "train_new": len(new_train[u]),
                                    "leaks_old": leaks(held[u], old_train[u]),
                                    "leaks_new": leaks(held[u] + reference[u], new_train[u])}
                                for u in held}
        run.results["classifier"] = {}
        for proto, fit_on, train in (("old", old_train, old_train), ("new", reference, new_train)):
            run.results[proto], run.results["classifier"][proto] = score_protocol(
                proto, fit_on, train, held, args.seed, log)
    path = run.write()
    old, new = run.results["old"], run.results["new"]
    print(f"{'author':<22}{'AP ceiling old/new':>20}{'memorizer old/new':>20}"
          f"{'FD ceiling old/new':>20}{'memorizer old/new':>20}")
    for u in sorted(old):
        a, b = old[u], new[u]
        print(f"{u:<22}"
              f"{a['authorship_probability']['ceiling']:>10.3f}{b['authorship_probability']['ceiling']:>10.3f}"
              f"{a['authorship_probability']['memorizer']:>10.3f}{b['authorship_probability']['memorizer']:>10.3f}"
              f"{a['fingerprint_distance']['ceiling']:>10.3f}{b['fingerprint_distance']['ceiling']:>10.3f}"
              f"{a['fingerprint_distance']['memorizer']:>10.3f}{b['fingerprint_distance']['memorizer']:>10.3f}")
    s = run.results["split"]
    print("leaks old:", sum(v["leaks_old"]["equal"] for v in s.values()), "equal,",
          sum(v["leaks_old"]["half_inside_one"] for v in s.values()), "half inside one training"
          " message; new:", sum(v["leaks_new"]["equal"] for v in s.values()), "/",
          sum(v["leaks_new"]["half_inside_one"] for v in s.values()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
