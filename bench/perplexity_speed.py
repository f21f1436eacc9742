"""Held-out perplexity in batches of similar length vs in eval order (issue #18): the same value,
how much padding and wall time each way costs.

    .venv/bin/python bench/perplexity_speed.py --users jeff-king,taylor-blau,rene-scharfe

``evaluate.run.perplexity`` scores the eval bodies given their prompts 8 messages a batch, each
batch padded to its longest message. Until session 22 the batches followed the eval set's order;
now the messages are sorted by length first. Here, in a fresh home with each --users author
imported and the eval set frozen as ``bench/levers.py`` freezes it (50 messages, seed 0), the
default base loaded as ``idiolect eval`` loads it scores each author's eval bodies with the default
recipe's shots (what an adapter compiled with it is asked with) both ways: the old way is each
consecutive 8 messages scored on their own and combined by token count (the same batches the old
loop ran). The two ways run alternately, --repeats times after an untimed warm-up, timed on wall
and process CPU ("alone": CPU time at least 90% of threads x wall). Padded and real tokens are
counted for every author of the corpus, both ways (no model). Writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPORA, Run, cpu_label, old_new_summary, time_alternately  # noqa: E402

BATCH = 8


def padded_tokens(lengths: list[int], batch: int = BATCH) -> int:
    """Tokens a forward pass over ``lengths`` in batches of ``batch``, in this order, computes."""
    return sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch])
               for i in range(0, len(lengths), batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="jeff-king,taylor-blau,rene-scharfe",
                    help="authors whose eval sets are timed (comma-separated)")
    ap.add_argument("--count-users", help="authors whose padding is counted (comma-separated;"
                    " default: every author of the corpus)")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="perplexity_speed")
    args = ap.parse_args()

    import torch

    from idiolect.bases import load as bases
    from idiolect.compile.prompts import encode
    from idiolect.compile.recipe import for_base
    from idiolect.compile.retrieve import UserShots
    from idiolect.evaluate.run import EvalConfig, perplexity
    from idiolect.home import Home
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    run = Run(args.name, vars(args))
    timed = args.users.split(",")
    corpus = ([CORPORA / "git-authors" / f"{u}.jsonl" for u in args.count_users.split(",")]
              if args.count_users else sorted((CORPORA / "git-authors").glob("*.jsonl")))
    corpus += [CORPORA / "git-authors" / f"{u}.jsonl" for u in timed
               if CORPORA / "git-authors" / f"{u}.jsonl" not in corpus]
    if not corpus or not all(p.exists() for p in corpus):
        raise SystemExit(f"{CORPORA / 'git-authors'}: the authors are needed (shared corpora)")
    max_tokens = EvalConfig().perplexity_tokens
    with tempfile.TemporaryDirectory(prefix="idiolect-ppl-") as tmp:
        home = Home.open(Path(tmp) / "home")
        ref = bases.resolve(home, args.base)
        model, tok = bases.load(ref)
        recipe = for_base(args.base).resolved()
        sets, counts, chunks = {}, {}, {}
        for path in corpus:
            user = path.stem
            store.import_messages(home.conn, user, read_source(path, "jsonl"), source=str(path),
                                  fmt="jsonl")
            store.freeze_eval(home.conn, user, 50, seed=0)
            held = store.eval_messages(home.conn, user)
            shots_of = UserShots(home.conn, user, recipe, tok,
                                 store.training_messages(home.conn, user)[0])
            shots = [shots_of(m.subject) for m in held]
            encoded = [encode(tok, m.subject, m.to, m.body, max_tokens, shots=sh)
                       for m, sh in zip(held, shots)]
            kept = [(m, sh, e) for m, sh, e in zip(held, shots, encoded) if e.body_tokens]
            lengths = [len(e.input_ids) for _, _, e in kept]
            counts[user] = {"real": sum(lengths), "eval_order": padded_tokens(lengths),
                            "sorted": padded_tokens(sorted(lengths))}
            sets[user] = (held, shots)
            # the loop before: the messages with a body token, in eval order, 8 a batch (each
            # batch's token count taken here, outside the timing)
            chunks[user] = [([m for m, _, _ in kept[i:i + BATCH]],
                             [sh for _, sh, _ in kept[i:i + BATCH]],
                             sum(e.body_tokens for _, _, e in kept[i:i + BATCH]))
                            for i in range(0, len(kept), BATCH)]
            print(f"{user}: {counts[user]}", flush=True)

        def old(user: str) -> float:  # one perplexity call per old batch: its padding, its work
            nll = sum(n * math.log(perplexity(model, tok, ms, max_tokens, sh))
                      for ms, sh, n in chunks[user])
            return math.exp(nll / sum(n for _, _, n in chunks[user]))

        def new(user: str) -> float:
            held, shots = sets[user]
            return perplexity(model, tok, held, max_tokens, shots)

        for way in (old, new):  # untimed: one-time costs would go to whichever ran first
            way(timed[0])
        ways = {"old": lambda: {u: old(u) for u in timed},
                "new": lambda: {u: new(u) for u in timed}}
        times, values = time_alternately(ways, args.repeats)
        tot = {k: sum(c[k] for c in counts.values()) for k in ("real", "eval_order", "sorted")}
        run.results = {
            "threads": torch.get_num_threads(), "shots": recipe.shots, "batch": BATCH,
            "max_tokens": max_tokens, "timed_users": timed, **old_new_summary(times),
            "perplexity": {k: {u: round(v, 4) for u, v in vs.items()} for k, vs in values.items()},
            "max_relative_difference": max(abs(values["old"][u] / values["new"][u] - 1)
                                           for u in timed),
            "tokens": counts, "tokens_total": tot,
            "padding": {k: round(tot[k] / tot["real"], 3) for k in ("eval_order", "sorted")},
        }
        print(f"{cpu_label(run.meta['cpu'])}: {run.results['speedup_wall']}x on wall (medians of"
              f" {args.repeats}); padded/real tokens {run.results['padding']}; largest relative"
              f" perplexity difference {run.results['max_relative_difference']:.1e}")
        home.close()
    print(run.write())


if __name__ == "__main__":
    main()
