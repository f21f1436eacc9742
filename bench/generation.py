"""Eval generation throughput: one prompt at a time (plain ``generate``) vs idiolect's batches.

    .venv/bin/python bench/generation.py --batches 16 32 64 --prompts 64

On the home of bench/levers.py (jeff-king's frozen eval prompts), SmolLM2-135M: new
tokens per second generating eval bodies (sampling as in `idiolect eval`, 128 new tokens), with
the bare base and with the user's newest adapter (a PEFT model, as evaluation runs it; with
``--merge`` also merged into the base weights). Each row has its achieved GFLOP/s (2 x the
matmul weights per prompt and new token) beside the fp32 matmul peak measured in the same run,
and its speedup over plain unbatched ``generate`` with the PEFT adapter. The
unbatched baseline runs on the first --unbatched-prompts prompts (its tokens/s does not depend on
how many); each batch size on --prompts prompts. Writes bench/results/generation.json and .png.

    .venv/bin/python bench/generation.py --compile --name generation_compile

``--compile`` wraps the model's forward in ``torch.compile(dynamic=True)`` (inductor, CPU) first;
one untimed warm-up generation per batch size pays the compilation (its seconds are recorded).

    .venv/bin/python bench/generation.py --caches dynamic static --batches 64 \
        --name generation_static

``--caches dynamic static`` runs each batch size with transformers' dynamic KV cache (concatenated
every step) and then its static one (preallocated to prompt + 128 tokens, written in place).

    .venv/bin/python bench/generation.py --decoders hf lean --batches 64 --merge \
        --name generation_lean

``--decoders hf lean`` runs each batch size with transformers' ``generate`` and then with
idiolect's own decode loop (``GenerationConfig.decoder = "lean"``: the same sampling
distribution, drawn among the top-k tokens only); the unbatched baseline is always plain
``generate``.

    .venv/bin/python bench/generation.py --decoders hf lean --caches dynamic inplace \
        --batches 64 --merge --name generation_inplace

``inplace`` is the lean loop's own KV cache (its default since this bench: preallocated to
prompt + 128 tokens, written in place, attention over the filled part); ``dynamic`` with the
lean loop is transformers' cache, concatenated every step (the lean loop's cache before).
``generate`` has no ``inplace``: those rows are skipped. ``shrink`` is ``inplace`` with the rows
that ended leaving the batch (``GenerationConfig.shrink``, the lean loop's default since
session 16: the same tokens); the other lean rows compute every row to the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, Run, flops, matmul_params, matmul_peak_gflops, newest_adapter  # noqa: E402,E501


def gen_throughput(model, tok, prompts, batch_size: int, cache: str = "dynamic",
                   decoder: str = "hf") -> dict:
    """New tokens per second generating one body per prompt with ``batch_size`` prompts a batch
    (``cache``: dynamic, static or inplace, see the module's text; ``decoder``: hf or lean)."""
    from idiolect.generate import GenerationConfig, generate_bodies, lean_applies

    cfg = GenerationConfig(max_new_tokens=128, batch_size=batch_size, seed=7,
                           cache={"inplace": None, "shrink": None, "dynamic": None
                                  if decoder == "hf" else "dynamic"}.get(cache, cache),
                           cut_echo=False, decoder=decoder, shrink=cache == "shrink",
                           # the eval prompts repeat to fill big batches; `idiolect eval`'s are
                           # distinct, so no row shares its prompt's prefill here either
                           share_prefill=False)
    t = time.perf_counter()
    bodies = generate_bodies(model, tok, prompts, cfg)
    dt = time.perf_counter() - t
    toks = sum(len(tok(b, add_special_tokens=False)["input_ids"]) for b in bodies)
    from idiolect.compile.prompts import prompt_text

    prompt_toks = sum(len(tok(prompt_text(tok, s, to), add_special_tokens=False)["input_ids"])
                      for s, to in prompts)
    decoder = "lean" if lean_applies(cfg, model) else "hf"  # what ran (lean falls back)
    return {"batch_size": batch_size, "cache": cache, "decoder": decoder,
            "prompts": len(prompts), "new_tokens": toks,
            "prompt_tokens": prompt_toks,
            "seconds": round(dt, 2), "tokens_per_s": round(toks / dt, 1)}


def compile_forward(model, tok, prompts, batches: list[int], log) -> dict:
    """Compile the (base) model's forward in place; the warm-up seconds per batch size."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.forward = torch.compile(inner.forward, dynamic=True)
    warm = {}
    for bs in [1, *batches]:
        t = time.perf_counter()
        gen_throughput(model, tok, prompts[:bs], bs)
        warm[bs] = round(time.perf_counter() - t, 1)
        log(f"warm-up (compilation) batch {bs}: {warm[bs]} s")
    return warm


def sweep(model, tok, prompts, unbatched_prompts: int, batches: list[int], log,
          caches: tuple[str, ...] = ("dynamic",), decoders: tuple[str, ...] = ("hf",)) -> dict:
    """The plain unbatched baseline (``generate``, dynamic cache), then each decoder x cache x
    batch size."""
    rows = [gen_throughput(model, tok, prompts[:unbatched_prompts], 1)]
    log(f"unbatched: {rows[0]['tokens_per_s']} tok/s")
    for decoder in decoders:
        for cache in caches:
            if decoder == "hf" and cache in ("inplace", "shrink"):
                continue  # the lean loop's own
            for bs in batches:
                rows.append(gen_throughput(model, tok, prompts, bs, cache, decoder))
                log(f"batch {bs}, {cache} cache, {decoder}: {rows[-1]['tokens_per_s']} tok/s")
    for r in rows:
        r["speedup"] = round(r["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    return {"rows": rows, "best_speedup": max(r["speedup"] for r in rows)}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [str(r["batch_size"]) + ("" if r["cache"] == "dynamic" else f" {r['cache']}")
              + ("" if r.get("decoder", "hf") == "hf" else " lean")
              for r in next(iter(res.values()))["rows"]]
    width = 0.8 / len(res)
    for i, (name, sw) in enumerate(res.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [r["tokens_per_s"] for r in sw["rows"]], width, label=name)
        for x, r in zip(xs, sw["rows"]):
            ax.annotate(f"{r['speedup']}x", (x, r["tokens_per_s"]), ha="center", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    ax.set_xticks([j + width * (len(res) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_xlabel("prompts per batch (1 = plain unbatched generate)")
    ax.set_ylabel("new tokens / s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--user", default="jeff-king")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--unbatched-prompts", type=int, default=16)
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "levers-home")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward first")
    ap.add_argument("--caches", nargs="+", choices=["dynamic", "static", "inplace", "shrink"],
                    default=["dynamic"],
                    help="KV cache implementations to run the batches with, one after the other")
    ap.add_argument("--decoders", nargs="+", choices=["hf", "lean"], default=["hf"],
                    help="decode loops to run the batches with: transformers' generate, idiolect's")
    ap.add_argument("--merge", action="store_true",
                    help="also the adapter merged into the base's weights (one adapter)")
    ap.add_argument("--name", default="generation", help="results file name")
    args = ap.parse_args()
    from idiolect.generate import load_for_inference
    from idiolect.home import Home
    from idiolect.vault import store

    def log(s):
        print("   " + s, file=sys.stderr, flush=True)

    home = Home.open(args.home)
    conn = home.conn
    msgs = store.eval_messages(conn, args.user)
    prompts = [(m.subject, m.to) for m in (msgs * (1 + args.prompts // len(msgs)))[:args.prompts]]
    row = newest_adapter(conn, args.user, args.base)
    if row is None:
        sys.exit(f"error: {args.user} has no adapter on {args.base} in {args.home}")
    adapter = row["id"]
    run = Run(args.name, {k: str(v) for k, v in vars(args).items()} | {"adapter": adapter})
    import torch

    run.meta["threads"] = torch.get_num_threads()
    run.meta["matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    variants = [("bare base", None, False), ("with adapter (PEFT)", adapter, False)]
    if args.merge:
        variants.append(("with adapter (merged)", adapter, True))
    for name, aid, merge in variants:
        model, tok, _ = load_for_inference(home, args.base, aid)
        if merge:
            model = model.merge_and_unload()
        log(name)
        warm = compile_forward(model, tok, prompts, args.batches, log) if args.compile else None
        res = sweep(model, tok, prompts, args.unbatched_prompts, args.batches, log,
                    tuple(args.caches), tuple(args.decoders))
        params = matmul_params(model.get_base_model() if hasattr(model, "get_base_model")
                               else model)
        for r in res["rows"]:
            r["flops"] = flops(params, r["new_tokens"] + r["prompt_tokens"], r["seconds"],
                               "forward", run.meta["matmul_peak_gflops"])
        if warm:
            res["compile_warmup_s"] = warm
        run.results[name] = res
        run.write("partial")
        del model
    peft = run.results["with adapter (PEFT)"]["rows"][0]["tokens_per_s"]
    for name in run.results:  # every row against plain unbatched generate with the adapter
        for r in run.results[name]["rows"]:
            r["speedup_vs_peft_unbatched"] = round(r["tokens_per_s"] / peft, 2)
    path = run.write()
    plot(run.results, RESULTS / f"{args.name}.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
