"""A score for sense (issue #17): does a body answer its own subject, read by a stronger model?

For each user (in --home, with a frozen eval set): the user's newest adapter on --base (compiled
here with --examples / --epochs when there is none, kept a candidate) writes a body for each of
the first --limit eval prompts, and so does the bare base (the `idiolect eval` settings). A
reader model (--reader, default Qwen2.5-Coder-0.5B-Instruct) then gives each body its
*subject fit* (evaluate/sense.py): log P(body | its subject) - log P(body | another subject of
the same user), nats per token, mean over prompts with a bootstrap interval, for

- the real held-out bodies (the ceiling), the adapter's, the bare base's, and
- a control: the real bodies each paired with another eval message's subject (they were not
  written for it: the measure must fall to about 0).

One row per user is written to bench/results/NAME.json as soon as it is done.

    .venv/bin/python bench/sense.py --home bench/_work/sense-home --users demo --limit 20

(The A-or-B judge tried first is in bench/results/sense_ab_judge.json: no signal at this size.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import Run, newest_adapter  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--users", required=True, help="comma-separated")
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--reader", default="qwen2.5-coder-0.5b")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--examples", type=int, default=250)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-body-tokens", type=int, default=120)
    p.add_argument("--name", default="sense")
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    from idiolect.bases import load as bases
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest
    from idiolect.evaluate.run import EvalConfig
    from idiolect.evaluate.sense import other_subjects, subject_fit
    from idiolect.generate import base_generations, generate_bodies, load_for_inference
    from idiolect.home import Home
    from idiolect.pipeline import build
    from idiolect.vault import store

    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    run.results["rows"] = []
    gen_cfg = EvalConfig().generation
    with Home.open(args.home) as home:
        rref = bases.resolve(home, args.reader)
        for user in [u.strip() for u in args.users.split(",") if u.strip()]:
            t0 = time.perf_counter()
            row = newest_adapter(home.conn, user, args.base)
            if row is None:
                log(f"{user}: compiling {args.examples} messages on {args.base}")
                req = CompileRequest(user, args.base, args.examples, Recipe(epochs=args.epochs))
                m, _ = build(home, req, evaluate=False, log=log)
                row = newest_adapter(home.conn, user, args.base)
            held = store.eval_messages(home.conn, user)[: args.limit]
            prompts = [(m.subject, m.to) for m in held]
            model, tok, _ = load_for_inference(home, args.base, row["id"], log=log)
            t = time.perf_counter()
            adapter_bodies = generate_bodies(model, tok, prompts, gen_cfg)
            base_bodies = base_generations(home, bases.resolve(home, args.base), prompts, gen_cfg,
                                           model=model, tok=tok)
            gen_s = time.perf_counter() - t
            del model
            rmodel, rtok = bases.load(rref, progress=log)
            subjects = [m.subject for m in held]
            real = [m.body for m in held]
            pool = [m.subject for m in store.reference_messages(home.conn, user)]
            others = other_subjects(subjects, pool, seed=1)
            t = time.perf_counter()

            def fit(bodies, subs=subjects):
                return subject_fit(rmodel, rtok, subs, bodies, others,
                                   max_body_tokens=args.max_body_tokens)

            out = {"user": user, "adapter": row["id"], "n": len(held),
                   "subject_fit": {"real": fit(real), "adapter": fit(adapter_bodies),
                                   "base": fit(base_bodies),
                                   "real_wrong_subject": fit(real[1:] + real[:1])},
                   "samples": [{"subject": s, "real": r, "adapter": a, "base": b}
                               for s, r, a, b in list(zip(subjects, real, adapter_bodies,
                                                          base_bodies))[:5]],
                   "seconds": {"generate": round(gen_s, 1),
                               "read": round(time.perf_counter() - t, 1),
                               "total": round(time.perf_counter() - t0, 1)}}
            run.results["rows"].append(out)
            run.write()
            f = out["subject_fit"]
            log(f"{user}: subject fit real {f['real']['score']:.3f} {f['real']['interval']['ci']},"
                f" adapter {f['adapter']['score']:.3f} {f['adapter']['interval']['ci']},"
                f" base {f['base']['score']:.3f} {f['base']['interval']['ci']}, real with a"
                f" wrong subject {f['real_wrong_subject']['score']:.3f}")
    print(f"wrote {run.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
