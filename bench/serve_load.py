"""Load test of ``idiolect serve``: throughput and latency under C concurrent streaming clients
spread over A users' adapters, for the ways to batch them.

    .venv/bin/python bench/serve_load.py                          # SmolLM2-135M, the full grid
    .venv/bin/python bench/serve_load.py --base tiny --clients 1,4 --adapters 1,4 --tokens 8

Modes (``BatchConfig``): ``mixed`` (the server's default: rows of any adapters in one forward
pass, the adapters' LoRA stacked per layer), ``mixed-peft`` (the same batches through PEFT's
mixed batch, ``lora="peft"``: the path ``mixed`` replaced), ``serial`` (``max_batch=1``: one
request at a time) and ``grouped`` (``group_by_adapter``: a batch holds one adapter's rows, the
others wait for a later batch); ``mixed-all-logits`` is ``mixed`` with every position's logits
computed in each forward (the server before session 11 kept them all), its control;
``mixed-noprefix`` is ``mixed`` without the prefix cache (``prefix_cache=0``: every prefill runs
the whole prompt, as before session 13).
The server is the real app (FastAPI + uvicorn on 127.0.0.1, in a thread of this process, the
models loaded once); each client is an async streaming chat client making ``--requests``
requests one after another, ``ignore_eos`` so every request writes exactly ``--tokens`` tokens.
Client i's r-th request asks for user ``(i + r * C) % A``, so every adapter of the A is used.
Per request: time to first token (TTFT: from sending to the first content delta) and time per
output token after it (TPOT); per cell: output tokens/s over the cell's wall time, p50/p95 of
both, rows per forward pass and the most adapters one batch held. A warm-up request per adapter
runs before each mode (adapters loaded, kernels warm) and is not counted.

``--repeats R`` measures the whole grid R times, the modes in a rotated order each round (drift
spreads over all of them), and adds a ``summary`` per cell: each mode's tokens/s and p95 time to
first token as a mean over rounds with a 95% t-interval, the same for its speedup over
``serial`` (paired within a round), and the p95 time to first token of all rounds' requests
pooled. A goal is called met or missed only when the interval is on one side of it.

The home is built once under bench/_work/serve-home: the first N of the 12 git authors
(../shared/corpora/git-authors) imported as users, each with an adapter compiled quickly on the
base (8 messages, 1 epoch) and promoted without the gate (``force=True, evaluate=False``): the
adapters are load, not quality. ``--base tiny`` registers a 2-layer random Llama (the tests'
``make_tiny_model``) for a smoke run. Writes bench/results/serve_load.json
(serve_load_tiny.json for --base tiny) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPORA, REPO, Run, add_tiny_base, t_interval  # noqa: E402

MODES = {"mixed": {}, "mixed-peft": {"lora": "peft"}, "serial": {"max_batch": 1, "max_n": 1},
         "grouped": {"group_by_adapter": True}, "mixed-nojoin": {"join": False},
         "mixed-all-logits": {}, "mixed-noprefix": {"prefix_cache": 0}}
#: modes that change the served models rather than the batcher: ``mixed-all-logits`` computes
#: every position's logits in each forward (before session 11), a control for ``mixed``
MODEL_MODES = {"mixed-all-logits": {"logits_to_keep": 0}}
SUBJECTS = ["fix: the cache index is read twice", "Re: the release schedule",
            "refs: drop the packed-refs lock early", "doc: explain the new config option"]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_home(root: Path, base: str, users: int, messages: int):
    """The bench's home: ``users`` git authors, each with an active adapter on ``base``.
    Returns (home, base name, user names). Reused across runs: only what is missing is made."""
    from idiolect import adapters
    from idiolect.bases.load import resolve as resolve_base
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.home import Home
    from idiolect.pipeline import promote
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    home = Home.open(root)
    if base == "tiny":
        add_tiny_base(home)
    name = resolve_base(home, None if base == "default" else base).name
    paths = sorted((CORPORA / "git-authors").glob("*.jsonl"))[:users]
    if len(paths) < users:
        raise SystemExit(f"--adapters asks for {users} users; the corpus has {len(paths)}")
    recipe = Recipe(epochs=1, max_tokens=128, batch_tokens=512)
    for path in paths:
        user = path.stem
        if store.eval_set(home.conn, user) is None:
            store.import_messages(home.conn, user, read_source(path, "jsonl"), source=str(path),
                                  fmt="jsonl")
            store.freeze_eval(home.conn, user, 8, seed=0)
        if adapters.active(home.conn, user, name) is not None:
            continue
        t = time.perf_counter()
        m = compile_adapter(home, CompileRequest(user, name, messages, recipe),
                            log=lambda s: None)
        promote(home, m.id, force=True, evaluate=False)
        log(f"serve_load: {user}'s adapter {m.id} on {name} ({time.perf_counter() - t:.0f} s)")
    return home, name, [p.stem for p in paths]


async def one_request(http, url: str, model: str, tokens: int, seed: int, subject: str) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": subject}],
            "max_tokens": tokens, "ignore_eos": True, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, done = None, 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if event.get("usage"):
                done = event["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in event["choices"]):
                first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"ttft_s": first - t0, "tpot_s": (end - first) / max(1, done - 1), "tokens": done,
            "latency_s": end - t0}


async def cell(url: str, users: list[str], clients: int, adapters: int, args) -> dict:
    """C clients at once, each making ``args.requests`` requests in turn; the cell's measures."""
    import httpx

    async def client(i: int, http) -> list[dict]:
        await asyncio.sleep(i * args.stagger_ms / 1000)  # client i starts i x stagger later
        out = []
        for r in range(args.requests):
            user = users[(i + r * clients) % adapters]
            out.append(await one_request(http, url, "idiolect/" + user, args.tokens,
                                         1000 * i + r, SUBJECTS[(i + r) % len(SUBJECTS)]))
        return out

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as http:
        t = time.perf_counter()
        per = await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t
    reqs = [r for rs in per for r in rs]
    # every request's time to first token, in rounds' order: the pooled p95 over repeats
    ttfts = [round(r["ttft_s"], 4) for r in reqs]

    def pct(key: str, q: float) -> float:
        return round(quantile([r[key] for r in reqs], q) * 1000, 1)

    tokens = sum(r["tokens"] for r in reqs)
    return {"requests": len(reqs), "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "ttft_ms": {"p50": pct("ttft_s", 50), "p95": pct("ttft_s", 95)},
            "tpot_ms": {"p50": pct("tpot_s", 50), "p95": pct("tpot_s", 95)}, "ttft_s": ttfts}


def run_mode(models, mode: str, users: list[str], args, repeat: int = 0) -> list[dict]:
    from idiolect.catalog.server import serve_in_thread
    from idiolect.serve.app import create_app
    from idiolect.serve.batcher import BatchConfig, Stats

    cfg = BatchConfig(**({"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                          "max_queue": 4 * max(args.clients) + 16} | MODES[mode]))
    for name, value in MODEL_MODES.get(mode, {}).items():
        setattr(models, name, value)
    app = create_app(models, cfg)
    url, stop = serve_in_thread(app)
    batcher, rows = app.state.batcher, []
    try:
        warm = argparse.Namespace(**(vars(args) | {"requests": 1, "tokens": 2}))
        asyncio.run(cell(url, users, len(users), len(users), warm))
        for adapters in args.adapters:
            for clients in args.clients:
                batcher.stats = Stats()  # the server is idle between cells
                m = asyncio.run(cell(url, users, clients, adapters, args))
                s = batcher.stats
                m |= {"mode": mode, "clients": clients, "adapters": adapters, "repeat": repeat,
                      "rows_per_pass": round(s.tokens / max(1, s.forward_passes), 2),
                      "max_rows_in_batch": s.max_rows_in_batch, "joined_rows": s.joined_rows,
                      "max_adapters_in_batch": s.max_adapters_in_batch}
                rows.append(m)
                log(f"serve_load: {mode} C={clients} A={adapters} round {repeat}:"
                    f" {m['tokens_per_s']} tok/s")
    finally:
        stop()
        batcher.stop()
        models.logits_to_keep = 1
    return rows


#: the issue's goals for 16 clients over 12 adapters
SPEEDUP_GOAL, TTFT_P95_GOAL_S = 5.0, 2.0


def quantile(vals: list[float], q: float) -> float:
    vals = sorted(vals)
    if len(vals) == 1:
        return vals[0]
    return statistics.quantiles(vals, n=100, method="inclusive")[int(q) - 1]


def verdict(iv: dict, goal: float, higher_is_better: bool, rounds: int) -> str:
    """'met' / 'missed' when the interval is on one side of ``goal``, else 'within noise';
    'too few rounds' under 3 (an interval over one or two rounds says little)."""
    if rounds < 3:
        return "too few rounds"
    lo, hi = iv["ci"]
    if (lo >= goal) if higher_is_better else (hi < goal):
        return "met"
    if (hi < goal) if higher_is_better else (lo >= goal):
        return "missed"
    return "within noise"


def summarize(rows: list[dict]) -> list[dict]:
    """Per (clients, adapters) cell and mode: the rounds' mean tokens/s and p95 time to first
    token with 95% t-intervals over rounds (a bootstrap over a few rounds is too narrow), the
    speedup over ``serial`` paired within each round, and the pooled p95 time to first token of
    every round's requests."""
    def stat(xs: list[float]) -> dict:
        mean, half = t_interval(xs)
        return {"mean": round(mean, 3), "ci": [round(mean - half, 3), round(mean + half, 3)],
                "min": round(min(xs), 3), "max": round(max(xs), 3)}

    out = []
    cells = sorted({(r["clients"], r["adapters"]) for r in rows})
    for clients, adapters in cells:
        here = [r for r in rows if (r["clients"], r["adapters"]) == (clients, adapters)]
        serial = {r["repeat"]: r for r in here if r["mode"] == "serial"}
        for mode in dict.fromkeys(r["mode"] for r in here):
            rs = sorted((r for r in here if r["mode"] == mode), key=lambda r: r["repeat"])
            s = {"clients": clients, "adapters": adapters, "mode": mode, "rounds": len(rs),
                 "tokens_per_s": stat([r["tokens_per_s"] for r in rs]),
                 "ttft_p95_s": stat([r["ttft_ms"]["p95"] / 1000 for r in rs]),
                 "ttft_p95_pooled_s": round(quantile([t for r in rs for t in r["ttft_s"]], 95),
                                            3)}
            pairs = [r["tokens_per_s"] / serial[r["repeat"]]["tokens_per_s"] for r in rs
                     if r["repeat"] in serial]
            if mode != "serial" and pairs:
                s["speedup_vs_serial"] = stat(pairs)
            if (clients, adapters) == (16, 12) and mode != "serial":
                s["goals"] = {"ttft_p95": verdict(s["ttft_p95_s"], TTFT_P95_GOAL_S, False,
                                                 len(rs))}
                if pairs:
                    s["goals"]["speedup"] = verdict(s["speedup_vs_serial"], SPEEDUP_GOAL, True,
                                                   len(pairs))
            out.append(s)
    return out


def plot(path: Path) -> Path:
    """The summary of a ``--repeats`` run (``path``) as a PNG beside it: per mode, the speedup
    over serial and the p95 time to first token with their intervals over rounds, per client
    count, the goals as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(path.read_text())
    summary = doc["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, goal, label in ((axes[0], "speedup_vs_serial", SPEEDUP_GOAL,
                                  "tokens/s over serial (same round)"),
                                 (axes[1], "ttft_p95_s", TTFT_P95_GOAL_S,
                                  "p95 time to first token, s")):
        cells = [s for s in summary if key in s]
        names = [f"{s['mode']}\nC={s['clients']} A={s['adapters']}" for s in cells]
        means = [s[key]["mean"] for s in cells]
        err = [[m - s[key]["ci"][0] for m, s in zip(means, cells)],
               [s[key]["ci"][1] - m for m, s in zip(means, cells)]]
        ax.bar(range(len(cells)), means, yerr=err, capsize=4, color="tab:blue")
        ax.axhline(goal, color="red", linestyle="--", label=f"goal ({goal:g}, C=16 A=12)")
        ax.set_xticks(range(len(cells)), names, fontsize=7)
        if key == "ttft_p95_s":
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    info = doc["run_info"]
    fig.suptitle(f"{info['name']}: {summary[0]['rounds']} rounds, 95% t-intervals;"
                 f" {doc['meta_info'].get('base')}, {doc['meta_info']['cpu'].get('model')},"
                 f" {info['git']}", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


HEAD = ("mode", "clients", "adapters", "tok/s", "TTFT p50 ms", "TTFT p95 ms", "TPOT p50 ms",
        "TPOT p95 ms", "rows/pass", "adapters/batch")


def line(m: dict) -> str:
    cells = (m["mode"], m["clients"], m["adapters"], m["tokens_per_s"], m["ttft_ms"]["p50"],
             m["ttft_ms"]["p95"], m["tpot_ms"]["p50"], m["tpot_ms"]["p95"], m["rows_per_pass"],
             m["max_adapters_in_batch"])
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="default", help="a base name, 'default' or 'tiny' (smoke)")
    ap.add_argument("--clients", type=ints, default=[1, 4, 16], help="concurrent clients")
    ap.add_argument("--adapters", type=ints, default=[1, 4, 12], help="users' adapters used")
    ap.add_argument("--modes", default="mixed,serial,grouped", help=", ".join(MODES))
    ap.add_argument("--tokens", type=int, default=32, help="output tokens per request")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, in turn")
    ap.add_argument("--max-batch", type=int, default=8, help="mixed and grouped (the default)")
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--name", default="", help="results file name (default serve_load)")
    ap.add_argument("--stagger-ms", type=float, default=0.0,
                    help="client i sends its first request i x this later (arrivals spread out:"
                         " what continuous batching is for; compare mixed with mixed-nojoin)")
    ap.add_argument("--messages", type=int, default=8, help="training messages per adapter")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per request")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "serve-home")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the whole grid, the modes rotated each round (intervals)")
    ap.add_argument("--plot", type=Path, metavar="FILE",
                    help="only draw FILE's (a --repeats results file) plot beside it")
    args = ap.parse_args()
    if args.plot:
        log(f"serve_load: wrote {plot(args.plot)}")
        return
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {bad} (known: {', '.join(MODES)})")
    config = vars(args) | {"home": str(args.home), "modes": modes}
    log(f"serve_load: config {json.dumps(config)}")

    import torch

    from idiolect.serve.models import ServedModels

    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run((args.name or "serve_load") + ("_tiny" if args.base == "tiny" else ""), config)
    home, base, users = build_home(args.home, args.base, max(args.adapters), args.messages)
    models = ServedModels(home, base)
    failed = models.preload()
    if failed:
        raise SystemExit(f"adapters failed to load: {failed}")
    rows = []
    print("| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD), flush=True)
    if args.repeats < 1:
        ap.error("--repeats: at least 1")
    for repeat in range(args.repeats):
        for mode in modes[repeat % len(modes):] + modes[:repeat % len(modes)]:
            for m in run_mode(models, mode, users, args, repeat):
                rows.append(m)
                print(line(m), flush=True)
            run.meta |= {"base": base, "users": users, "torch_threads": torch.get_num_threads()}
            run.results = {"cells": rows, "summary": summarize(rows)}
            run.write("partial")  # each mode's cells as soon as they are measured
    path = run.write()
    log(f"serve_load: wrote {path}" + (f" and {plot(path)}" if args.repeats > 1 else ""))


if __name__ == "__main__":
    main()
