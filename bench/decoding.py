"""Decoding as a quality lever (issue #17): one adapter, several sampling settings, the honest scores.

For one user's newest adapter on --base in --home: the first --limit eval prompts are answered
under each decoding setting of --grid (temperature / top-p / repetition penalty; "greedy" for
greedy decoding), and each set of bodies gets the style scores of `idiolect eval` (the cohort's
scorers, fitted on the reference splits, with bootstrap intervals), novelty against the training
pool, and the subject fit of evaluate/sense.py (reader --reader). One row per setting is written
to bench/results/NAME.json as soon as it is done.

    .venv/bin/python bench/decoding.py --home /tmp/demo-home --user demo --limit 20
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import Run, newest_adapter  # noqa: E402

GRID = ("0.7/0.9/1.1", "0.3/0.9/1.1", "1.0/0.95/1.0", "0.7/0.9/1.3", "greedy/1.2")


def setting(spec: str, max_new_tokens: int):
    """'T/top_p/rep' or 'greedy/rep' -> a GenerationConfig (seed and batch as `idiolect eval`)."""
    from idiolect.evaluate.run import EvalConfig

    base = EvalConfig().generation
    parts = spec.split("/")
    if parts[0] == "greedy":
        return asdict(base) | {"do_sample": False, "repetition_penalty": float(parts[1]),
                               "max_new_tokens": max_new_tokens}
    t, p, r = map(float, parts)
    return asdict(base) | {"temperature": t, "top_p": p, "repetition_penalty": r,
                           "max_new_tokens": max_new_tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--reader", default="qwen2.5-coder-0.5b")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--grid", nargs="+", default=list(GRID))
    ap.add_argument("--name", default="decoding")
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    from idiolect.bases import load as bases
    from idiolect.evaluate.calibrate import score_texts
    from idiolect.evaluate.novelty import novelty
    from idiolect.evaluate.run import cohort, cohort_models
    from idiolect.evaluate.sense import other_subjects, subject_fit
    from idiolect.generate import GenerationConfig, generate_bodies, load_for_inference
    from idiolect.home import Home
    from idiolect.vault import store

    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    run.results["rows"] = []
    with Home.open(args.home) as home:
        row = newest_adapter(home.conn, args.user, args.base)
        if row is None:
            sys.exit(f"error: {args.user} has no adapter on {args.base} in {args.home}")
        c = cohort(home.conn)
        scaler, clf = cohort_models(home, c.reference)
        held = store.eval_messages(home.conn, args.user)[: args.limit]
        prompts = [(m.subject, m.to) for m in held]
        heldout = [m.body for m in held]
        subjects = [m.subject for m in held]
        others = other_subjects(subjects, [m.subject for m in store.reference_messages(
            home.conn, args.user)], seed=1)
        model, tok, _ = load_for_inference(home, args.base, row["id"], log=log)
        bodies = {}
        for spec in args.grid:
            t = time.perf_counter()
            cfg = GenerationConfig(**setting(spec, args.max_new_tokens))
            bodies[spec] = (generate_bodies(model, tok, prompts, cfg), time.perf_counter() - t,
                            asdict(cfg))
            log(f"{spec}: generated in {bodies[spec][1]:.0f}s")
        del model
        reader, rtok = bases.load(bases.resolve(home, args.reader), progress=log)
        for spec, (texts, gen_s, cfg) in bodies.items():
            s = score_texts(texts, args.user, heldout, scaler, clf)
            nov = novelty(texts, c.train[args.user])
            fit = subject_fit(reader, rtok, subjects, texts, others)
            out = {"setting": spec, "generation": cfg, "adapter": row["id"], "n": len(texts),
                   "authorship_probability": s["authorship_probability"],
                   "fingerprint_distance": s["fingerprint_distance"],
                   "intervals": s["intervals"],
                   "subject_fit": {k: fit[k] for k in ("score", "interval")},
                   "novelty": {k: nov[k] for k in ("copied_ngram_share", "flagged", "verbatim")},
                   "generate_s": round(gen_s, 1), "sample": texts[0]}
            run.results["rows"].append(out)
            run.write()
            log(f"{spec}: authorship {out['authorship_probability']:.3f}"
                f" {s['intervals']['authorship_probability']['ci']}, distance"
                f" {out['fingerprint_distance']:.3f}, subject fit {fit['score']:.3f}"
                f" {fit['interval']['ci']}, verbatim {nov['verbatim']}")
    print(f"wrote {run.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
