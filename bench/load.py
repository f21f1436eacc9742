"""Model load, cold and warm: how long a command waits for its base (issue #18).

    .venv/bin/python bench/load.py --bases smollm2-135m gemma3-270m qwen2.5-coder-0.5b --warm 3

For each installed base, in a fresh home: one *cold* load (first use: the GGUF verified,
dequantized and stored as safetensors, then the copy in the dtype compile trains with, then the
load) and ``--warm`` *warm* loads (everything cached). Each load runs in a new Python process, as a
CLI command would, timed from before the process starts (wall: interpreter and imports included)
and inside it (``bases.load.load`` alone); peak RSS of that process. The dtype is the one
``idiolect compile`` loads the base in on this CPU (the registry recipe's ``base_dtype``,
resolved), and float32 (what evaluation and drafting load) for the warm loads as well. Writes
bench/results/load.json; nothing is downloaded (the bases come from the installed packages).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Run  # noqa: E402

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from idiolect.bases.load import load, resolve
from idiolect.home import Home
t1 = time.perf_counter()
home = Home.open(sys.argv[1])
ref = resolve(home, sys.argv[2])
t2 = time.perf_counter()
model, tok = load(ref, dtype=sys.argv[3])
t3 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 3), "load_s": round(t3 - t2, 3),
                  "params": sum(p.numel() for p in model.parameters()),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def one_load(home: Path, base: str, dtype: str) -> dict:
    """One load in a new process: wall from before its start, and its own figures."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(home), base, dtype],
                          capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise SystemExit(f"loading {base} ({dtype}) failed: {last}")
    return {"wall_s": round(wall, 3), **json.loads(proc.stdout.strip().splitlines()[-1])}


def compile_dtype(base: str) -> str:
    from idiolect.compile.recipe import for_base

    return for_base(base).resolved().base_dtype


def main() -> None:
    from idiolect.bases.registry import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", nargs="+", default=["smollm2-135m"], choices=sorted(REGISTRY))
    ap.add_argument("--warm", type=int, default=3, help="warm loads per dtype")
    ap.add_argument("--name", default="load")
    args = ap.parse_args()

    run = Run(args.name, vars(args))
    rows = []
    for base in args.bases:
        if REGISTRY[base].part_paths() is None:
            print(f"{base}: not installed, skipped (`idiolect base install {base}`)")
            continue
        dtype = compile_dtype(base)
        with tempfile.TemporaryDirectory(prefix="idiolect-load-") as tmp:
            home = Path(tmp) / "home"
            cold = one_load(home, base, dtype)
            print(f"{base} cold ({dtype}): {cold['wall_s']:.1f} s wall, load {cold['load_s']:.1f} s")
            row = {"base": base, "compile_dtype": dtype, "cold": cold, "warm": {}}
            for d in dict.fromkeys([dtype, "float32"]):
                runs = [one_load(home, base, d) for _ in range(args.warm)]
                row["warm"][d] = {
                    "runs": runs,
                    "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 3),
                    "load_s_median": round(statistics.median(r["load_s"] for r in runs), 3),
                    "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
                }
                w = row["warm"][d]
                print(f"{base} warm ({d}): {w['wall_s_median']:.2f} s wall,"
                      f" load {w['load_s_median']:.2f} s (median of {args.warm})")
            row["cold_over_warm_wall"] = round(cold["wall_s"] / row["warm"][dtype]["wall_s_median"],
                                               1)
        rows.append(row)
        run.results["rows"] = rows
        run.write("partial")
    run.results["rows"] = rows
    print(run.write())


if __name__ == "__main__":
    main()
