"""Peak memory of the gate's evaluation, phase by phase, per base (issue #18): what set the 17 GB
peak of a compile with its gate on Gemma and Qwen (bench/results/base_cost.json).

    .venv/bin/python bench/eval_memory.py --home bench/_work/base-cost-home --user jeff-king

For each base with an adapter of --user in --home (a home that bench/base_cost.py made: its
newest adapter on each base), two new processes, each reading its own high-water mark of resident
memory (``VmHWM``, /proc/self/status):

- ``eval``: ``idiolect eval``'s evaluation (what the gate runs after a compile) on a copy of the
  home without the bare base's cached generations (a first compile makes them), the mark read at
  each phase's start: load, the bare base's generations, the adapter's, the held-out perplexity,
  the scores;
- ``forward``: the held-out perplexity alone as evaluation computed it until session 28 (each
  batch's whole forward: [batch, length, vocabulary] logits, then the cross-entropy of the body
  positions), after the same load.

The difference of the two perplexity phases is what projecting only the body positions, 256 at a
time (``evaluate.run.token_nll``, session 28), saves; the two perplexities must agree. Writes
bench/results/NAME.json after each base.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Run, newest_adapter  # noqa: E402


def hwm_mb() -> dict:
    """This process's resident memory now and its high-water mark, MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def copy_home(src: Path, dst: Path) -> None:
    """``src`` at ``dst``: the bases hard-linked (read only), the cache without the bare bases'
    generations, everything else copied (evaluation writes to the database)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name == "bases":
            shutil.copytree(p, dst / p.name, copy_function=os.link)
        elif p.name == "cache":
            (dst / "cache").mkdir()
            for f in p.iterdir():
                if f.is_file() and not f.name.startswith("basegen-"):
                    shutil.copy2(f, dst / "cache" / f.name)
        elif p.is_dir():
            shutil.copytree(p, dst / p.name)
        elif p.suffix in (".db", ".db-wal", ".db-shm") or p.name.startswith("idiolect.db"):
            shutil.copy2(p, dst / p.name)


def child_eval(home_dir: Path, user: str, adapter: str) -> dict:
    from idiolect.evaluate.run import EvalConfig, evaluate
    from idiolect.home import Home

    phases, t0 = [], time.perf_counter()

    def log(msg: str) -> None:
        phases.append({"t_s": round(time.perf_counter() - t0, 1), "phase": msg[:60], **hwm_mb()})

    # beside the home: the bases are hard-linked, so on the same file system
    with tempfile.TemporaryDirectory(prefix="evalmem-", dir=home_dir.parent) as tmp:
        copy_home(home_dir, Path(tmp) / "home")
        log("start")
        with Home.open(Path(tmp) / "home", create=False) as home:
            r = evaluate(home, user, adapter, cfg=EvalConfig(), log=log)
        log("done")
    return {"phases": phases, "perplexity": r["adapter_scores"]["perplexity"],
            "eval_seconds": r["seconds"]}


def child_forward(home_dir: Path, user: str, adapter: str) -> dict:
    """The held-out perplexity the way evaluation computed it before session 28."""
    import math

    import torch
    import torch.nn.functional as F

    from idiolect.compile.prompts import encode
    from idiolect.compile.retrieve import adapter_recipe, user_shots
    from idiolect.compile.train import collate
    from idiolect.evaluate.run import EvalConfig
    from idiolect.generate import load_for_inference
    from idiolect.home import Home
    from idiolect.vault import store

    cfg = EvalConfig()
    t0 = time.perf_counter()
    with Home.open(home_dir, create=False) as home:
        held = store.eval_messages(home.conn, user)[: cfg.limit]
        row = dict(home.conn.execute("SELECT base FROM adapters WHERE id=?", (adapter,)).fetchone())
        model, tok, arow = load_for_inference(home, row["base"], adapter)
        shots = user_shots(home.conn, user, adapter_recipe(arow), tok, [m.subject for m in held])
    loaded = hwm_mb()
    examples = sorted((e for e in (encode(tok, m.subject, m.to, m.body, cfg.perplexity_tokens,
                                          shots=sh) for m, sh in zip(held, shots))
                       if e.body_tokens > 0), key=lambda e: len(e.input_ids))
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            ids, mask, target = collate(examples[i:i + 8], tok.pad_token_id)
            sel = target != -100
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][sel]
            total += float(F.cross_entropy(logits.float(), target[sel], reduction="sum"))
            count += int(sel.sum())
    return {"loaded": loaded, "done": hwm_mb(), "perplexity": math.exp(total / max(count, 1)),
            "seconds": round(time.perf_counter() - t0, 1)}


def in_child(way: str, home: Path, user: str, adapter: str) -> dict:
    """``way`` run by this script in a new process (its own high-water mark): its JSON."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", way, "--home", str(home),
                           "--user", user, "--adapter", adapter], capture_output=True,
                          text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{way} on {adapter} failed: "
                         + (proc.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--user", default="jeff-king")
    ap.add_argument("--bases", nargs="+",
                    default=["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--name", default="eval_memory")
    ap.add_argument("--child", choices=["eval", "forward"], help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        fn = child_eval if args.child == "eval" else child_forward
        print(json.dumps(fn(args.home, args.user, args.adapter)))
        return 0

    from idiolect.home import Home

    if not (args.home / "idiolect.db").exists():
        raise SystemExit(f"{args.home}: no idiolect home (make one with bench/base_cost.py)")
    with Home.open(args.home, create=False) as home:
        rows = {b: newest_adapter(home.conn, args.user, b) for b in args.bases}
    missing = [b for b, r in rows.items() if r is None]
    if missing:
        raise SystemExit(f"{args.home}: no adapter of {args.user} on {', '.join(missing)}")
    run = Run(args.name, {k: str(v) for k, v in vars(args).items() if v is not None})
    run.results = {"rows": []}
    for base, row in rows.items():
        ev = in_child("eval", args.home, args.user, row["id"])
        fw = in_child("forward", args.home, args.user, row["id"])
        at = [p["phase"].startswith("perplexity") for p in ev["phases"]].index(True)
        # high-water marks: at the start of the perplexity phase, and at the next phase's
        r = {"base": base, "adapter": row["id"], "eval": ev, "forward": fw,
             "eval_peak_mb": ev["phases"][-1]["VmHWM"],
             "eval_peak_before_perplexity_mb": ev["phases"][at]["VmHWM"],
             "eval_peak_through_perplexity_mb": ev["phases"][at + 1]["VmHWM"],
             "forward_perplexity_peak_mb": fw["done"]["VmHWM"],
             "perplexity_relative_difference": abs(fw["perplexity"] / ev["perplexity"] - 1)}
        run.results["rows"].append(r)
        run.write("partial" if base != args.bases[-1] else "ok")
        print(f"{base}: evaluation peak {r['eval_peak_mb']:.0f} MB (before its perplexity"
              f" {r['eval_peak_before_perplexity_mb']:.0f}); load and the whole-forward"
              f" perplexity {r['forward_perplexity_peak_mb']:.0f} MB; perplexities differ by"
              f" {r['perplexity_relative_difference']:.1e}", flush=True)
    print(f"wrote {run.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
