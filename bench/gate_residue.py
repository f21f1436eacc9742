"""Resident memory through one `idiolect compile` with its gate (issue #18): how much of training's
memory the process still holds when the gate begins, and how high the gate's own resident set
goes.

    .venv/bin/python bench/gate_residue.py --home bench/_work/base-cost-home --base gemma3-270m

On a copy of --home (a home bench/base_cost.py made: the authors imported, the base installed;
the copy without the bare bases' cached generations) the build pipeline compiles --user on
--examples messages with the home's recipe file and gates the result, in this process (as the
command does). At each of the pipeline's log lines the resident set and its high-water mark are
read from /proc; from the gate's first line on, a thread also samples the resident set every 0.1
s, so the gate's own peak shows under training's. Writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run  # noqa: E402
from eval_memory import copy_home, hwm_mb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--base", default="gemma3-270m")
    ap.add_argument("--user", default="jeff-king")
    ap.add_argument("--examples", type=int, default=60)
    ap.add_argument("--recipe", default="default-bf16-250.json", help="a recipe file in --home")
    ap.add_argument("--name", default="gate_residue")
    args = ap.parse_args(argv)
    if not (args.home / args.recipe).exists():
        raise SystemExit(f"{args.home / args.recipe}: no such recipe file (bench/base_cost.py"
                         " writes one)")

    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest
    from idiolect.evaluate.run import EvalConfig
    from idiolect.home import Home
    from idiolect.pipeline import build

    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    lines, gate_rss, t0 = [], [], time.perf_counter()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            gate_rss.append(hwm_mb()["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)

    def log(msg: str) -> None:
        if msg.startswith("gate: evaluating") and not sampler.is_alive():
            sampler.start()
        lines.append({"t_s": round(time.perf_counter() - t0, 1), "line": msg[:70], **hwm_mb()})
        print(lines[-1], flush=True)

    with tempfile.TemporaryDirectory(prefix="residue-", dir=args.home.parent) as tmp:
        copy_home(args.home, Path(tmp) / "home")
        recipe = Recipe.from_file(args.home / args.recipe, base=args.base)
        with Home.open(Path(tmp) / "home", create=False) as home:
            log("start")
            m, d = build(home, CompileRequest(user=args.user, base=args.base,
                                              examples=args.examples, recipe=recipe),
                         eval_cfg=EvalConfig(), log=log)
            log("done")
    stop.set()
    gate_start = next(x for x in lines if x["line"].startswith("gate: evaluating"))
    loaded = next(x for x in lines if x["line"].startswith("loaded base"))
    run.results = {
        "lines": lines, "decision": d.status, "training_peak_mb": m.peak_rss_mb,
        "tokens": m.tokens["seen"],
        "resident_after_load_mb": loaded["VmRSS"],
        "resident_at_gate_start_mb": gate_start["VmRSS"],
        "gate_resident_peak_mb": max(gate_rss, default=None),
        "command_peak_mb": lines[-1]["VmHWM"],
    }
    r = run.results
    print(f"{args.base}: training peak {r['training_peak_mb']:.0f} MB; resident after the load"
          f" {r['resident_after_load_mb']:.0f}, at the gate's start"
          f" {r['resident_at_gate_start_mb']:.0f}, the gate's peak {r['gate_resident_peak_mb']:.0f};"
          f" the command's {r['command_peak_mb']:.0f}")
    print(run.write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
