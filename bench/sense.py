"""A score for sense (issue #17): can a stronger local model tell a draft from the real message?

For each user (in --home, with a frozen eval set): the user's adapter on --base (the newest one;
compiled here with --examples / --epochs when there is none, kept a candidate) writes a body for
each of the first --limit eval prompts, and so does the bare base (the `idiolect eval` settings).
A judge (evaluate/sense.py, --judge, default Qwen2.5-Coder-0.5B) then answers A-or-B questions,
both orders averaged:

- sense: P(the judge picks the body over a real message of the same user written for another
  subject), mean over prompts with a bootstrap interval, for the real held-out bodies (ceiling),
  the adapter's and the bare base's;
- tells apart: P(the judge picks the real body over the generated one for the same subject)
  (0.5: it cannot tell), for the adapter and the bare base; and as a control the real body
  against a real body written for another subject (the judge does read the subject).

One row per user is written to bench/results/NAME.json as soon as it is done.

    .venv/bin/python bench/sense.py --home bench/_work/sense-home --users demo --limit 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import Run  # noqa: E402


def newest_adapter(conn, user: str, base: str):
    return conn.execute("SELECT * FROM adapters WHERE user=? AND base=? ORDER BY created_at DESC,"
                        " id DESC LIMIT 1", (user, base)).fetchone()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--users", required=True, help="comma-separated")
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--judge", default="qwen2.5-coder-0.5b")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--examples", type=int, default=250)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-body-tokens", type=int, default=120)
    p.add_argument("--name", default="sense")
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    import torch

    from idiolect.bases import load as bases
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest
    from idiolect.evaluate.run import EvalConfig
    from idiolect.evaluate.sense import Judge, JudgeConfig, distractors, sense, tells_apart
    from idiolect.generate import base_generations, generate_bodies, load_for_inference
    from idiolect.home import Home
    from idiolect.pipeline import build
    from idiolect.vault import store

    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    run.results["rows"] = []
    gen_cfg = EvalConfig().generation
    with Home.open(args.home) as home:
        jref = bases.resolve(home, args.judge)
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
            jmodel, jtok = bases.load(jref, progress=log)
            judge = Judge(jmodel, jtok, JudgeConfig(base=args.judge,
                                                    max_body_tokens=args.max_body_tokens))
            subjects = [m.subject for m in held]
            real = [m.body for m in held]
            pool = [(m.subject, m.body) for m in store.reference_messages(home.conn, user)]
            t = time.perf_counter()
            out = {"user": user, "adapter": row["id"], "n": len(held),
                   "sense": {"real": sense(judge, subjects, real, pool),
                             "adapter": sense(judge, subjects, adapter_bodies, pool),
                             "base": sense(judge, subjects, base_bodies, pool)},
                   "tells_apart": {
                       "adapter": tells_apart(judge, subjects, real, adapter_bodies),
                       "base": tells_apart(judge, subjects, real, base_bodies),
                       "control_other_subject": tells_apart(judge, subjects, real,
                                                            distractors(subjects, pool, seed=1))},
                   "samples": [{"subject": s, "real": r, "adapter": a, "base": b}
                               for s, r, a, b in list(zip(subjects, real, adapter_bodies,
                                                          base_bodies))[:5]],
                   "seconds": {"generate": round(gen_s, 1),
                               "judge": round(time.perf_counter() - t, 1),
                               "total": round(time.perf_counter() - t0, 1)}}
            del jmodel
            torch.set_num_threads(torch.get_num_threads())
            run.results["rows"].append(out)
            run.write()
            s = out["sense"]
            log(f"{user}: sense real {s['real']['score']:.3f} {s['real']['interval']['ci']},"
                f" adapter {s['adapter']['score']:.3f} {s['adapter']['interval']['ci']},"
                f" base {s['base']['score']:.3f}; tells apart adapter"
                f" {out['tells_apart']['adapter']['score']:.3f}, base"
                f" {out['tells_apart']['base']['score']:.3f}, control"
                f" {out['tells_apart']['control_other_subject']['score']:.3f}")
    print(f"wrote {run.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
