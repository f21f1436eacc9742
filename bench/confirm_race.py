"""Local confirmation by successive halving, beside the full probe (issues #18, #21): does the
race choose what probing every candidate on every message chooses, at what cost?

    .venv/bin/python bench/confirm_race.py --home bench/_work/xpert-w2-home \
        --oracle bench/results/xpert_git_w2.json --users new-brian-m-carlson,new-jeff-king

In a home made by ``bench/xpert.py`` (read only), for each --users user the bare base and every
adapter of --base whose user is a publisher (``pub-K``: style K, ``pubN-K``: style K~N) are probed
on --probe of the user's training messages in the prompt format of the base's own recipe, as
``warm_start_plan(confirm=K)`` probes them: every candidate on every message (full) and by
successive halving (race: ``probe_perplexities(race=True)``), alternately, after an untimed
warm-up of both on a quarter of the probe. Recorded per user: each way's choice
(``choose_confirmed`` over the candidates that saw every message), the sequences it ran through
the model, and, with --oracle (an ``xpert.py --oracle`` results file of the same home), the
oracle's best-fitting style on the user's eval set. Timed on wall and process CPU ("alone": CPU
time at least 90% of threads x wall). Writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Run, cpu_label, old_new_summary, publisher_adapters,  # noqa: E402
                    time_alternately)


def style_of(user: str) -> str:
    """A publisher's style as ``xpert.py`` names it: pub-K -> K, pub2-K -> K~2."""
    m = re.fullmatch(r"pub(\d*)-(.+)", user)
    if not m:
        raise ValueError(f"{user!r} is not a publisher (pub-K or pubN-K)")
    return m[2] + (f"~{m[1]}" if m[1] else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--users", default="new-brian-m-carlson,new-jeff-king")
    ap.add_argument("--oracle", type=Path, help="xpert.py --oracle results of the same home")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--probe", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--name", default="confirm_race")
    args = ap.parse_args()

    import torch

    from idiolect.catalog.warm_start import choose_confirmed, probe_perplexities
    from idiolect.compile.recipe import for_base

    oracle = {}
    if args.oracle:
        try:
            oracle = json.loads(args.oracle.read_text())["oracle"]["users"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"{args.oracle}: no oracle results ({e})") from None
    home, rows = publisher_adapters(args.home, args.base)
    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    ids, style = [r["id"] for r in rows], {r["id"]: style_of(r["user"]) for r in rows}
    fmt = for_base(args.base).prompt_format()
    users = args.users.split(",")

    def probe(user, race, n=args.probe):
        return probe_perplexities(home, user, args.base, ids, n, fmt=fmt, race=race)

    for race in (False, True):  # untimed: one-time costs would go to whichever ran first
        probe(users[0], race, max(1, args.probe // 4))
    ways = {"old": lambda: {u: probe(u, False) for u in users},
            "new": lambda: {u: probe(u, True) for u in users}}
    times, values = time_alternately(ways, args.repeats)
    timing = old_new_summary(times)
    per_user = {}
    for u in users:
        row = {}
        for way, name in (("old", "full"), ("new", "race")):
            p, seen = values[way][u]["perplexity"], values[way][u]["probed_on"]
            chosen = choose_confirmed(p, seen)
            row[name] = {"choice": style[chosen] if chosen else None,
                         "sequences": sum(seen.values()),
                         "perplexity": {style.get(a, "base"): p[a] for a in p},
                         "probed_on": {style.get(a, "base"): seen[a] for a in seen}}
        author = u.removeprefix("new-")
        if author in oracle:
            row["oracle"] = oracle[author]["best"]
        per_user[u] = row
    with_oracle = [r for r in per_user.values() if "oracle" in r]
    run.results = {
        "threads": torch.get_num_threads(), "candidates": len(ids), "users": users,
        "probe": args.probe, "prompt_format": fmt, **timing,
        "per_user": per_user,
        "same_choice": sum(r["full"]["choice"] == r["race"]["choice"]
                           for r in per_user.values()),
        "full_is_oracle": sum(r["full"]["choice"] == r["oracle"] for r in with_oracle),
        "race_is_oracle": sum(r["race"]["choice"] == r["oracle"] for r in with_oracle),
        "with_oracle": len(with_oracle),
        "sequence_share": round(sum(r["race"]["sequences"] for r in per_user.values())
                                / sum(r["full"]["sequences"] for r in per_user.values()), 3),
    }
    r = run.results
    print(f"{cpu_label(run.meta['cpu'])}: race {r['speedup_wall']}x on wall (medians of"
          f" {args.repeats}), {r['sequence_share']} of the sequences; same choice for"
          f" {r['same_choice']} of {len(users)}; oracle's: full {r['full_is_oracle']}, race"
          f" {r['race_is_oracle']} of {r['with_oracle']}")
    home.close()
    print(run.write())


if __name__ == "__main__":
    main()
