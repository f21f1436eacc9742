"""The sense ranker's cost: ``draft.self_fit`` with each prompt run once for all candidates
(its keys and values shared) against once per candidate, on the same inputs (issue #18).

    .venv/bin/python bench/sense_speed.py --user jeff-king --prompts 20 --n 4 --repeats 3

``draft --n K --rank-by sense|both`` and ``bench/levers.py --pick both`` read every candidate
body after its own subject and after ``SENSE_OTHERS`` other training subjects, each prompt
carrying the adapter's shots (the default recipe's 2 nearest training messages). Here, in a
fresh home with one author imported and their eval set frozen as ``bench/levers.py`` freezes it,
the default base in float32 (as ``draft`` loads it) reads, for each of ``--prompts`` eval
subjects, ``--n`` candidates: other training bodies of the author (the cost depends on the
first ``SENSE_TOKENS`` tokens of each, as for generated bodies). Both ways run alternately,
``--repeats`` times each, timed on wall and process CPU; the fits of the two must agree (the
largest difference is recorded). No adapter: a merged adapter costs the same forward passes.
Writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPORA, Run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user", default="jeff-king")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--n", type=int, default=4, help="candidates per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="sense_speed")
    args = ap.parse_args()

    import torch

    from idiolect.bases import load as bases
    from idiolect.compile.recipe import for_base
    from idiolect.compile.retrieve import UserShots
    from idiolect.draft import other_training_subjects, self_fit
    from idiolect.home import Home
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    run = Run(args.name, vars(args))
    path = CORPORA / "git-authors" / f"{args.user}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: not found (the shared corpora are needed)")
    with tempfile.TemporaryDirectory(prefix="idiolect-sense-speed-") as tmp:
        home = Home.open(Path(tmp) / "home")
        store.import_messages(home.conn, args.user, read_source(path, "jsonl"), source=str(path),
                              fmt="jsonl")
        store.freeze_eval(home.conn, args.user, 50, seed=0)
        held = store.eval_messages(home.conn, args.user)[:args.prompts]
        pool = store.training_messages(home.conn, args.user)[0]
        model, tok = bases.load(bases.resolve(home, args.base))
        recipe = for_base(args.base).resolved()
        shots_of = UserShots(home.conn, args.user, recipe, tok, pool)
        rng = random.Random(0)
        cases = []
        for m in held:
            others = other_training_subjects(m.subject, [p.subject for p in pool])
            cases.append((m.subject, [b.body for b in rng.sample(pool, args.n)], others,
                          [shots_of(m.subject), *map(shots_of, others)]))

        def timed(share: bool) -> tuple[dict, list]:
            w, c = time.perf_counter(), time.process_time()
            fits = [self_fit(model, tok, s, bodies, others, shots=sh, share_prompts=share)
                    for s, bodies, others, sh in cases]
            return {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c}, fits

        times = {"per_candidate": [], "shared": []}
        fits = {}
        for r in range(args.repeats):
            for way, share in (("per_candidate", False), ("shared", True)):
                t, fits[way] = timed(share)
                times[way].append(t)
                print(f"repeat {r + 1} {way}: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU",
                      flush=True)
        diff = max(abs(a - b) for fa, fb in zip(fits["per_candidate"], fits["shared"])
                   for a, b in zip(fa, fb))
        med = {way: {k: round(statistics.median(t[k] for t in ts), 2) for k in ("wall_s", "cpu_s")}
               for way, ts in times.items()}
        run.results = {
            "threads": torch.get_num_threads(), "shots": recipe.shots,
            "shot_tokens": recipe.shot_tokens, "others": len(cases[0][2]),
            "runs": {way: [{k: round(v, 2) for k, v in t.items()} for t in ts]
                     for way, ts in times.items()},
            "median": med,
            "speedup_wall": round(med["per_candidate"]["wall_s"] / med["shared"]["wall_s"], 2),
            "max_fit_difference": round(diff, 6),
        }
        print(f"shared prompts: {run.results['speedup_wall']}x on wall (medians of"
              f" {args.repeats}); largest fit difference {diff:.2e} nats/token")
    print(run.write())


if __name__ == "__main__":
    main()
