"""Local confirmation's cost, old way and new on the same candidates (issues #18, #21): every
candidate adapter probed on the new user's training messages with the base loaded once per
candidate, or once for all of them (``generate.adapters_in_turn``).

    .venv/bin/python bench/confirm_speed.py --home bench/_work/xpert-w2-home \
        --users new-jeff-king,new-taylor-blau --repeats 2

In a home made by ``bench/xpert.py`` (its new users and their pulled or published adapters, read
only), for each --users user the bare base and every active adapter of --base whose user is a
publisher (``pub*-``) are probed on --probe of the user's training messages, in the prompt format
of the base's own recipe (shots as a compile to come would have them), as
``warm_start_plan(confirm=K)`` probes them: old (until session 22: ``load_for_inference`` and the
shots for each candidate) and new (``probe_perplexities``), alternately. Both ways call today's
``perplexity`` (batches sorted by length, ``bench/perplexity_speed.py`` times that change): the
difference measured here is the loads and the shots only. They run --repeats times after an untimed
warm-up, timed on wall and process CPU ("alone": CPU time at least 90% of threads x wall). The
perplexities of the two ways must be equal (recorded). Writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Run, cpu_label, old_new_summary, publisher_adapters,  # noqa: E402
                    time_alternately)


def old_probe(home, user: str, base: str, adapter_ids, probe: int, fmt: dict) -> dict:
    """``probe_perplexities`` as it was before session 22: a load of the base per candidate."""
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.retrieve import recipe_shots
    from idiolect.evaluate.run import EvalConfig, perplexity
    from idiolect.generate import load_for_inference
    from idiolect.vault import store
    from idiolect.vault.split import ContentIndex

    msgs = store.training_messages(home.conn, user, examples=probe, seed=0)[0]
    probed, pool, out = {m.id for m in msgs}, None, {}
    for aid in [None, *adapter_ids]:
        model, tok, _ = load_for_inference(home, base, aid)
        recipe, shots = Recipe(**fmt), None
        if recipe.shots:
            if pool is None:
                near = ContentIndex([m.body for m in msgs])
                pool = [m for m in store.training_messages(home.conn, user)[0]
                        if m.id not in probed and not near.overlaps(m.body)]
            shots = recipe_shots(tok, recipe, pool, msgs)
        out[aid] = round(perplexity(model, tok, msgs, EvalConfig().perplexity_tokens, shots), 4)
        del model
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--users", default="new-jeff-king,new-taylor-blau")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--probe", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="confirm_speed")
    args = ap.parse_args()

    import torch

    from idiolect.catalog.warm_start import probe_perplexities
    from idiolect.compile.recipe import for_base

    home, rows = publisher_adapters(args.home, args.base)
    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    ids = [r["id"] for r in rows]
    fmt = for_base(args.base).prompt_format()
    users = args.users.split(",")

    def new(user):
        return probe_perplexities(home, user, args.base, ids, args.probe, fmt=fmt)["perplexity"]

    def old(user):
        return old_probe(home, user, args.base, ids, args.probe, fmt)

    for way in (old, new):  # untimed: one-time costs would go to whichever ran first
        way(users[0])
    ways = {"old": lambda: {u: old(u) for u in users},
            "new": lambda: {u: new(u) for u in users}}
    times, values = time_alternately(ways, args.repeats)
    timing = old_new_summary(times)
    diff = max(abs(values["old"][u][a] - values["new"][u][a]) / values["old"][u][a]
               for u in users for a in values["old"][u])
    run.results = {
        "threads": torch.get_num_threads(), "candidates": len(ids), "users": users,
        "probe": args.probe, "prompt_format": fmt, **timing,
        "per_user_wall_s": {k: round(v / len(users), 2)
                            for k, v in timing["median_wall_s"].items()},
        "perplexity": {k: {u: {str(a): p for a, p in vs.items()} for u, vs in v.items()}
                       for k, v in values.items()},
        "max_relative_difference": diff,
    }
    print(f"{cpu_label(run.meta['cpu'])}: {run.results['speedup_wall']}x on wall (medians of"
          f" {args.repeats}; {len(ids)} candidates + the base, {args.probe} probes); largest"
          f" relative perplexity difference {diff:.1e}")
    home.close()
    print(run.write())


if __name__ == "__main__":
    main()
