"""XPerT on the xpert-styles corpus: does starting from the catalog's nearest adapter save compute
and data? SKELETON: written against the library API, not yet run on a real base.

Protocol (Wang et al., MobiSys 2025, adapted to idiolect):
1. Publisher: for each style in --catalog-styles, import ``K_train.jsonl`` as user ``style-K``
   (Context -> subject, Response -> body), freeze an eval set, compile a pre-personalized adapter
   on --publish-examples messages, compute its card from its generations, publish it.
2. Device: for each style in --user-styles, import as user ``new-K`` from ``K_test.jsonl`` (other
   texts of the same style), freeze its eval set, then for each --examples N:
   - select: card of its own N training messages -> /match (records the ranking and whether the
     top match is its own style, when that style is in the catalog),
   - cold: compile from the bare base; warm: compile with ``warm_start_auto`` (pull or merge),
   - record step-1 loss, the first step whose loss reaches the cold run's final loss (compute to
     target), train seconds, and the eval scores (fingerprint distance, authorship probability).
3. Write bench/results/xpert.json (run_info / meta_info / results) and print a table.

    .venv/bin/python bench/xpert.py --plan        # print the runs it would make, and exit
    .venv/bin/python bench/xpert.py --base smollm2-135m --examples 50 100   # hours on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import idiolect  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import CORPORA, Run  # noqa: E402

STYLES = CORPORA / "xpert-styles"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--catalog-styles", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--user-styles", type=int, nargs="+", default=[1, 2, 7, 8])
    p.add_argument("--publish-examples", type=int, default=250)
    p.add_argument("--examples", type=int, nargs="+", default=[50, 100])
    p.add_argument("--eval-size", type=int, default=50)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--recipe", type=Path, help="Recipe JSON for every compile.")
    p.add_argument("--home", type=Path, help="State folder (default: a temporary one).")
    p.add_argument("--plan", action="store_true", help="Print the runs and exit.")
    return p.parse_args(argv)


def read_style(path: Path, user: str, limit: int | None = None):
    from idiolect.vault.message import Message

    out = []
    with path.open() as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            subject = " ".join((row["Context"] + " " + row.get("Input", "")).split())[:200]
            out.append(Message(subject=subject, body=row["Response"], to=[],
                               source_id=f"{path.name}:{i}"))
    return out


def first_step_at(curve: list[float], target: float) -> int | None:
    """1-based first optimizer step whose loss is at or below ``target``."""
    return next((i + 1 for i, x in enumerate(curve) if x <= target), None)


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = ([f"publish style {k} ({args.publish_examples} examples)" for k in args.catalog_styles]
            + [f"user style {k}: N={n}: select, cold compile, warm compile, eval x2"
               for k in args.user_styles for n in args.examples])
    if args.plan:
        print("\n".join(plan))
        return 0
    os.environ["IDIOLECT_HOME"] = str(args.home or tempfile.mkdtemp(prefix="xpert-"))
    from idiolect.catalog.client import publish_adapter
    from idiolect.catalog.select import warm_start_plan
    from idiolect.catalog.server import create_app, serve_in_thread
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.evaluate.run import evaluate
    from idiolect.home import connect
    from idiolect.vault.store import freeze_eval, import_messages

    recipe = Recipe.from_file(args.recipe) if args.recipe else Recipe()
    run = Run("xpert", vars(args) | {"recipe": recipe.to_dict()})
    conn = connect()
    token = "bench"
    url, stop = serve_in_thread(create_app(Path(os.environ["IDIOLECT_HOME"]) / "server", token))
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    try:
        published = {}
        for k in args.catalog_styles:
            user = f"style-{k}"
            import_messages(conn, user, read_style(STYLES / f"{k}_train.jsonl", user),
                            source=f"{k}_train.jsonl", fmt="jsonl")
            freeze_eval(conn, user, size=args.eval_size)
            m = compile_adapter(conn, CompileRequest(user, args.base, args.publish_examples,
                                                     recipe), log=log)
            published[k] = publish_adapter(conn, m["id"], url, token, log=log)["id"]
        rows = []
        for k in args.user_styles:
            user = f"new-{k}"
            import_messages(conn, user, read_style(STYLES / f"{k}_test.jsonl", user),
                            source=f"{k}_test.jsonl", fmt="jsonl")
            freeze_eval(conn, user, size=args.eval_size)
            for n in args.examples:
                sel = warm_start_plan(conn, user, args.base, url, recipe=recipe, limit=n,
                                      threshold=args.threshold, log=log)
                cold = compile_adapter(conn, CompileRequest(user, args.base, n, recipe,
                                                            activate=False), log=log)
                warm = (compile_adapter(conn, CompileRequest(user, args.base, n, recipe,
                                                             parent=sel["adapter"],
                                                             activate=False), log=log)
                        if sel["adapter"] else None)
                target = cold["metrics"]["train_loss_last"]
                row = {"style": k, "examples": n, "decision": sel["decision"],
                       "top": sel["matches"][0]["id"] if sel["matches"] else None,
                       "top_is_own_style": bool(sel["matches"]) and
                       sel["matches"][0]["id"] == published.get(k),
                       "cold": {"loss_first": cold["metrics"]["train_loss_first"],
                                "loss_last": target, "steps": cold["tokens"]["steps"],
                                "train_s": cold["timings"]["train_s"],
                                "eval": evaluate(conn, user, cold["id"])["adapter_scores"]}}
                if warm:
                    row["warm"] = {"loss_first": warm["metrics"]["train_loss_first"],
                                   "loss_last": warm["metrics"]["train_loss_last"],
                                   "steps_to_cold_final": first_step_at(
                                       warm["metrics"]["train_loss_curve"], target),
                                   "train_s": warm["timings"]["train_s"],
                                   "eval": evaluate(conn, user, warm["id"])["adapter_scores"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
        run.results["published"] = published
        run.results["runs"] = rows
        print(f"wrote {run.write()}")
    except BaseException:
        run.write(status="failed")
        raise
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
