"""Does an adapter move the style scores toward the user's own text? Base vs adapter, calibrated.

    .venv/bin/python bench/personalize.py --users jeff-king,patrick-steinhardt,taylor-blau \\
        --examples 250 --epochs 1 --name personalize_honest

Imports all 12 git authors of ../shared/corpora/git-authors into a bench home (the cohort), freezes
a 50-message eval set each (seed 0, with its reference split), compiles a SmolLM2 adapter for
each named user on 250 training messages with the base's recipe (`idiolect compile`'s; --epochs
overrides its epochs), and runs it through the build pipeline's gate (`idiolect eval`'s
evaluation: 50 held-out prompts, 128 new tokens, fixed seed, the scorers fitted on the reference
splits; then the gate's verdict against the calibrated floor, or the user's previous adapter's
stored scores). The adapter is made active whatever the verdict (a forced promotion is recorded
as such): bench/generation.py and bench/upgrade_cohort.py use these adapters. The verdict is
recorded per user (``gate``).
Also measures eval generation throughput, batched (KV cache, left padding) vs one prompt at a
time, on the same prompts (not with --skip-gen-bench). Writes bench/results/NAME.json and
NAME.png (--name, default personalize).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPORA, REPO, RESULTS, Run, file_digest  # noqa: E402


def setup(home, eval_size: int) -> list[str]:
    """Import the 12 git authors into ``home`` (a ``Home``) and freeze their eval sets."""
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    conn = home.conn
    users = []
    for path in sorted((CORPORA / "git-authors").glob("*.jsonl")):
        user = path.stem
        users.append(user)
        if store.eval_set(conn, user) is None:
            store.import_messages(conn, user, read_source(path, "jsonl"), source=str(path),
                                  fmt="jsonl")
            store.freeze_eval(conn, user, eval_size, seed=0)
    return users


def personalize(home, user: str, args, recipe):
    """Compile ``user``'s adapter (a candidate) with ``recipe``, then evaluate and gate it in the
    pipeline and make it active. Returns (manifest, decision, the evaluation result, evaluation
    seconds)."""
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.evaluate.report import save_result
    from idiolect.evaluate.run import EvalConfig, evaluate
    from idiolect.pipeline import GateConfig, promote

    def log(s: str) -> None:
        print("   " + s, file=sys.stderr, flush=True)

    m = compile_adapter(home, CompileRequest(user, args.base, args.examples, recipe),
                        log=lambda s: log(s[:160]))
    t = time.perf_counter()
    # pipeline.build() is compile_adapter + promote; split here to time the evaluation alone.
    # The gate evaluates the candidate with EvalConfig() (what this bench always scored) and its
    # verdict is recorded, but this bench's point is the scores, not the gate: the adapter is a
    # fixture of bench/generation.py and bench/upgrade_cohort.py (which upgrade active adapters),
    # so it is promoted even if refused (force, recorded as forced). compare_old=False: the bar is
    # the previous adapter's stored scores or the floor, never a second evaluation.
    d = promote(home, m.id, force=True, eval_cfg=EvalConfig(),
                gate_cfg=GateConfig(compare_old=False), log=log)
    r = d.evaluation
    if r is None:  # the gate could not run (cohort of one): promoted unevaluated; score it here
        r = evaluate(home, user, m.id, cfg=EvalConfig(), log=log)
        save_result(home, r)
    return m, d, r, round(time.perf_counter() - t, 1)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, m, title in ((axes[0], "fingerprint_distance", "fingerprint distance (lower is better)"),
                         (axes[1], "authorship_probability", "authorship probability (higher is better)")):
        for i, r in enumerate(rows):
            c = r["calibration"][m]
            ax.plot([i, i], [c["floor"], c["ceiling"]], color="#ccc", lw=8, solid_capstyle="butt")
            ax.scatter([i], [c["ceiling"]], marker="_", s=300, color="green", label="ceiling" if i == 0 else None)
            ax.scatter([i], [c["floor"]], marker="_", s=300, color="red", label="floor" if i == 0 else None)
            ax.scatter([i], [r["base"][m]], color="#888", label="bare base" if i == 0 else None, zorder=3)
            ax.scatter([i], [r["adapter"][m]], color="#3b7dd8", label="adapter" if i == 0 else None, zorder=3)
        ax.set_xticks(range(len(rows)), [r["user"] for r in rows], fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[1].axhline(rows[0]["chance"], ls=":", color="#999", lw=1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="jeff-king,patrick-steinhardt,taylor-blau")
    ap.add_argument("--examples", type=int, default=250)
    ap.add_argument("--epochs", type=float, default=None, help="default: the base's recipe's")
    ap.add_argument("--lora-layers", type=int, default=0)
    ap.add_argument("--eval-size", type=int, default=50)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "cohort-home")
    ap.add_argument("--skip-gen-bench", action="store_true")
    ap.add_argument("--replot", action="store_true", help="redraw the plot from the results JSON")
    ap.add_argument("--name", default="personalize", help="results name (bench/results/NAME.json)")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((RESULTS / f"{args.name}.json").read_text())["users"],
             RESULTS / f"{args.name}.png")
        return
    from idiolect.home import Home

    home = Home.open(args.home)
    cohort = setup(home, args.eval_size)
    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    from idiolect.compile.recipe import for_base

    # the recipe `idiolect compile` uses for this base (the registry's), with these epochs/layers
    recipe = for_base(args.base, lora_layers=args.lora_layers,
                      **({"epochs": args.epochs} if args.epochs is not None else {}))
    # base_dtype "auto" as this machine resolves it (what the compiles trained with)
    run.results["recipe"] = recipe.to_dict() | {"base_dtype_resolved": recipe.resolved().base_dtype}
    run.meta["data"] = {p.name: file_digest(p) for p in sorted((CORPORA / "git-authors").glob("*.jsonl"))}
    run.meta["cohort"] = cohort
    rows = []
    for user in args.users.split(","):
        print(f"== {user}", file=sys.stderr, flush=True)
        m, d, r, eval_s = personalize(home, user, args, recipe)
        rows.append({"user": user, "adapter_id": m.id, "chance": r["chance"],
                     "gate": {k: d.record()[k] for k in ("status", "passed", "forced", "reason",
                                                         "against")},
                     "compile": {**m.timings, "tokens": m.tokens["seen"],
                                 "peak_rss_mb": m.peak_rss_mb},
                     "eval_seconds": eval_s,
                     "adapter": r["adapter_scores"], "base": r["base_scores"],
                     "placement": r["placement"],
                     "protocol": r.get("protocol"),
                     "calibration": {k: {x: r["calibration"][k][x]
                                         for x in ("ceiling", "ceiling_interval", "floor",
                                                   "floor_best") if x in r["calibration"][k]}
                                     for k in ("fingerprint_distance", "authorship_probability")},
                     "generation": r["generation"], "samples": r["samples"][:2]})
        print(json.dumps({k: rows[-1][k] for k in ("user", "adapter", "base", "placement")}),
              file=sys.stderr, flush=True)
        run.results["users"] = rows
        run.write("partial")
    if not args.skip_gen_bench:
        from generation import sweep
        from idiolect.bases import load as bases
        from idiolect.vault import store

        model, tok = bases.load(bases.resolve(home, args.base))
        prompts = [(m.subject, m.to)
                   for m in store.eval_messages(home.conn, args.users.split(",")[0])]
        res = sweep(model, tok, prompts[:16], 16, [16], lambda s: None)
        run.results["generation_throughput"] = {"unbatched": res["rows"][0],
                                                "batched": res["rows"][1],
                                                "speedup": res["best_speedup"]}
    path = run.write()
    plot(rows, RESULTS / f"{args.name}.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
