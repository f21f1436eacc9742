"""Best-of-N's cost, old way and new on the same inputs (issue #18): N candidates of each prompt
generated with the prefill run per row or once per distinct prompt, then ranked by sense with
each subject's prompt run per candidate or once for all of them.

    .venv/bin/python bench/best_of_speed.py --user jeff-king --prompts 16 --n 4 --repeats 3

``draft --n K --rank-by sense|both`` and ``bench/levers.py --best-of 4 --pick both`` do both
steps: ``generate_bodies`` with each prompt K times in a batch (``GenerationConfig.share_prefill``
runs the prefill once per distinct prompt and repeats its keys and values), then
``draft.self_fit``, which reads every candidate after its own subject and after
``SENSE_OTHERS`` other training subjects, each prompt with the adapter's shots
(``evaluate.sense._body_logprobs`` runs each prompt once for all candidates). Here, in a fresh
home with one author imported and the eval set frozen as ``bench/levers.py`` freezes it, the
default base in float32 (as ``draft`` loads it; no adapter: a merged one costs the same forward
passes) writes ``--n`` candidates for each of ``--prompts`` eval subjects with the default
recipe's shots, in batches of ``--batch`` rows, then fits them. Per step, the old and the new way
run alternately, ``--repeats`` times each after an untimed warm-up, timed on wall and process
CPU (a run is "alone" when its CPU time is at least 90% of threads x wall: nothing else had the
cores); the generated bodies of the two ways must be equal and their fits agree (recorded).
Writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPORA, Run, cpu_label  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user", default="jeff-king")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="candidates per prompt")
    ap.add_argument("--batch", type=int, default=32, help="rows per generation batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="best_of_speed")
    args = ap.parse_args()

    import torch

    from idiolect.bases import load as bases
    from idiolect.compile.recipe import for_base
    from idiolect.compile.retrieve import UserShots
    from idiolect.draft import other_training_subjects, self_fit
    from idiolect.generate import GenerationConfig, generate_bodies
    from idiolect.home import Home
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    run = Run(args.name, vars(args))
    path = CORPORA / "git-authors" / f"{args.user}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: not found (the shared corpora are needed)")
    with tempfile.TemporaryDirectory(prefix="idiolect-best-of-") as tmp:
        home = Home.open(Path(tmp) / "home")
        store.import_messages(home.conn, args.user, read_source(path, "jsonl"), source=str(path),
                              fmt="jsonl")
        store.freeze_eval(home.conn, args.user, 50, seed=0)
        held = store.eval_messages(home.conn, args.user)[:args.prompts]
        pool = store.training_messages(home.conn, args.user)[0]
        model, tok = bases.load(bases.resolve(home, args.base))
        recipe = for_base(args.base).resolved()
        shots_of = UserShots(home.conn, args.user, recipe, tok, pool)
        shots = [shots_of(m.subject) for m in held]
        rows = [(m.subject, [], sh) for m, sh in zip(held, shots) for _ in range(args.n)]
        others = [other_training_subjects(m.subject, [p.subject for p in pool]) for m in held]

        def generate(share: bool) -> list[str]:
            return generate_bodies(model, tok, rows, GenerationConfig(
                batch_size=args.batch, share_prefill=share))

        def fit(share: bool, bodies: list[str]) -> list[list[float]]:
            return [self_fit(model, tok, m.subject, bodies[i * args.n:(i + 1) * args.n], o,
                             shots=[sh, *map(shots_of, o)], share_prompts=share)
                    for i, (m, o, sh) in enumerate(zip(held, others, shots))]

        # untimed: the process's first generation and fits pay one-time costs (allocations,
        # kernels chosen) that would go to whichever way ran first
        for share in (False, True):
            generate_bodies(model, tok, rows[:2 * args.n], GenerationConfig(
                batch_size=args.batch, share_prefill=share))
            self_fit(model, tok, held[0].subject, [m.body for m in pool[:args.n]], others[0],
                     shots=[shots[0], *map(shots_of, others[0])], share_prompts=share)
        times = {step: {"old": [], "new": []} for step in ("generate", "fit")}
        out = {}
        for r in range(args.repeats):
            for way, share in (("old", False), ("new", True)):
                w, c = time.perf_counter(), time.process_time()
                bodies = generate(share)
                w2, c2 = time.perf_counter(), time.process_time()
                fits = fit(share, bodies)
                w3, c3 = time.perf_counter(), time.process_time()
                for step, wall, cpu in (("generate", w2 - w, c2 - c), ("fit", w3 - w2, c3 - c2)):
                    # alone: the process had its threads' cores for the whole wall time
                    times[step][way].append({"wall_s": wall, "cpu_s": cpu, "alone": cpu >= 0.9
                                             * torch.get_num_threads() * wall})
                out[way] = (bodies, fits)
                print(f"repeat {r + 1} {way}: generate {w2 - w:.1f} s, fit {w3 - w2:.1f} s wall",
                      flush=True)
        same = sum(a == b for a, b in zip(out["old"][0], out["new"][0]))
        diff = max(abs(a - b) for fa, fb in zip(out["old"][1], out["new"][1])
                   for a, b in zip(fa, fb))
        med = {step: {way: {k: round(statistics.median(t[k] for t in ts), 2)
                            for k in ("wall_s", "cpu_s")} for way, ts in ways.items()}
               for step, ways in times.items()}
        total = {way: round(med["generate"][way]["wall_s"] + med["fit"][way]["wall_s"], 2)
                 for way in ("old", "new")}
        tokens = sum(len(tok.encode(b, add_special_tokens=False)) for b in out["new"][0])
        run.results = {
            "threads": torch.get_num_threads(), "shots": recipe.shots,
            "shot_tokens": recipe.shot_tokens, "others": len(others[0]),
            "candidates": len(rows), "body_tokens": tokens,
            "runs": {step: {way: [{k: round(v, 2) if k != "alone" else v
                                   for k, v in t.items()} for t in ts]
                            for way, ts in ways.items()} for step, ways in times.items()},
            "median": med, "total_wall_s": total,
            "speedup_wall": {**{step: round(m["old"]["wall_s"] / m["new"]["wall_s"], 2)
                                for step, m in med.items()},
                             "total": round(total["old"] / total["new"], 2)},
            "same_bodies": same, "max_fit_difference": round(diff, 6),
            "all_alone": all(t["alone"] for ways in times.values() for ts in ways.values()
                             for t in ts),
        }
        print(f"{cpu_label(run.meta['cpu'])}: {run.results['speedup_wall']} on wall (medians of"
              f" {args.repeats}); bodies equal {same} of {len(rows)}, largest fit difference"
              f" {diff:.2e} nats/token")
    print(run.write())


if __name__ == "__main__":
    main()
