"""Compile speed, memory and quality: a plain HF + PEFT loop vs idiolect's compile, same data.

    .venv/bin/python bench/compile_speed.py --author jeff-king --examples 250 --epochs 2

Each variant runs in its own subprocess (clean peak RSS), on the same training messages (the
vault's seeded sample) with the same recipe (LoRA r=16 on q/k/v/o, lr 2e-4, max 256 tokens), and
is scored by the perplexity of the user's frozen eval set (50 held-out messages). Writes
bench/results/compile_speed.json and bench/results/compile_speed.png.
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
from common import (  # noqa: E402
    CORPORA, REPO, RESULTS, Run, file_digest, flops, matmul_params, matmul_peak_gflops,
    peak_rss_mb)
from levers import RECIPES  # noqa: E402

# levers.py's default-bf16 recipe, the vocabulary loss whole (whatever the base's registry says)
LEVERS_BF16 = RECIPES["default-bf16-250"][1] | {"loss_chunk": 0}
VARIANTS = {
    # name: (loop, recipe overrides)
    "hf_plain": ("hf", {}),
    "idiolect": ("idiolect", {}),
    "idiolect_top10": ("idiolect", {"lora_layers": 10}),
    "idiolect_top6": ("idiolect", {"lora_layers": 6}),
    # memory savers (exact: same loss and gradients, tests/test_train.py), each on its own
    "idiolect_gc": ("idiolect", {"grad_checkpoint": True}),
    "idiolect_chunk": ("idiolect", {"loss_chunk": 128}),
    "idiolect_b512": ("idiolect", {"batch_tokens": 512}),
    "idiolect_lowmem": ("idiolect", {"grad_checkpoint": True, "loss_chunk": 128,
                                     "batch_tokens": 512}),
    # not exact: the frozen base in bfloat16 (half its memory; LoRA, loss and adapter float32)
    "idiolect_bf16": ("idiolect", {"base_dtype": "bfloat16"}),
    "idiolect_lowmem_bf16": ("idiolect", {"grad_checkpoint": True, "loss_chunk": 128,
                                          "batch_tokens": 512, "base_dtype": "bfloat16"}),
    # closing top-10's quality gap: more capacity in the trained layers, or a larger step
    "idiolect_top10_mlp": ("idiolect", {"lora_layers": 10, "target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
    "idiolect_top10_lr4": ("idiolect", {"lora_layers": 10, "lr": 4e-4}),
    # half the passes at twice the step
    "idiolect_1ep_lr4": ("idiolect", {"epochs": 1.0, "lr": 4e-4}),
    # SmolLM2's registry recipe (lr 6e-4, bench/results/levers_recipes_lr6e2.json): what `idiolect
    # compile` runs by default on the default base, in float32 and with the base in bfloat16
    "idiolect_lr6": ("idiolect", {"lr": 6e-4}),
    "idiolect_lr6_bf16": ("idiolect", {"lr": 6e-4, "base_dtype": "bfloat16"}),
    # SmolLM2's registry recipe of session 14 (two shots, attention only, base in bfloat16),
    # beside "default" when the registry adds the MLP's LoRA: what the MLP costs, in one run
    "idiolect_lr6_shots2_bf16": ("idiolect", {"lr": 6e-4, "shots": 2, "base_dtype": "bfloat16"}),
    # the compile `idiolect compile USER --examples N` runs: the base's registry recipe (its own
    # epochs; --epochs is ignored), resolved on this CPU; perplexity in the adapter's own prompt
    # format (with its shots, where the recipe has them). Timed to the candidate: the command's
    # gate (an evaluation) comes after it
    "default": ("idiolect", None),
    # the default with attention in plain matmuls while training (Recipe.attention): on an AMD
    # EPYC with the base in bfloat16, PyTorch's fused CPU attention took about a quarter of a
    # training step in a profile (session 17); "registry" = the base's recipe, then these fields
    "default_eager": ("idiolect", ("registry", {"attention": "eager"})),
    # the default with PEFT's own LoRA forward (Recipe.lora_compute "peft", the loop before
    # session 18: a float32 copy of each LoRA layer's input, separate scale, add and casts), and
    # with the LoRA products in the base's bfloat16 ("base": not exact); "default" itself runs
    # the fused float32 multiply-add (PEFT's numbers to float32 rounding)
    "default_peft": ("idiolect", ("registry", {"lora_compute": "peft"})),
    "default_lorabase": ("idiolect", ("registry", {"lora_compute": "base"})),
    # issue #18 on a large-vocabulary base: levers.py's default-bf16 recipe (SmolLM2's registry
    # recipe with the base in bfloat16, what the Qwen2.5-Coder-0.5B lever ran at a 12.2 GB peak)
    # as is, with the vocabulary loss in chunks (Qwen2.5's 151,936 rows: a 1024-token batch's
    # float32 logits alone are 0.6 GB, their gradient as much), and with all exact savers
    "levers_bf16": ("idiolect", ("registry", LEVERS_BF16)),
    "levers_bf16_chunk": ("idiolect", ("registry", LEVERS_BF16 | {"loss_chunk": 128})),
    # the exact savers that keep the batches (and so the optimizer's steps) as they are
    "levers_bf16_gc_chunk": ("idiolect", ("registry", LEVERS_BF16 | {
        "grad_checkpoint": True, "loss_chunk": 128})),
    "levers_bf16_lowmem": ("idiolect", ("registry", LEVERS_BF16 | {
        "grad_checkpoint": True, "loss_chunk": 128, "batch_tokens": 512})),
}


def setup_home(root: Path, author: str, eval_size: int):
    """The bench's ``Home`` at ``root``, with ``author`` imported and an eval set frozen."""
    from idiolect.home import Home
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    home = Home.open(root)
    conn = home.conn
    if store.eval_set(conn, author) is None:
        src = CORPORA / "git-authors" / f"{author}.jsonl"
        store.import_messages(conn, author, read_source(src, "jsonl"), source=str(src), fmt="jsonl")
        store.freeze_eval(conn, author, eval_size, seed=0)
    return home


def hf_plain(model, tok, msgs, recipe, log):
    """The straightforward loop: padded batches of 4 in data order, full logits, labels=."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model

    from idiolect.compile.prompts import encode

    torch.manual_seed(recipe.seed)
    peft = get_peft_model(model, LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha,
                                            target_modules=list(recipe.target_modules),
                                            task_type="CAUSAL_LM"))
    ex = [encode(tok, m.subject, m.to, m.body, recipe.max_tokens) for m in msgs]
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=recipe.lr)
    rng = random.Random(recipe.seed)
    tokens, t0 = 0, time.perf_counter()
    peft.train()
    for epoch in range(int(recipe.epochs)):
        order = list(range(len(ex)))
        rng.shuffle(order)
        for s in range(0, len(order), 4):
            batch = [ex[i] for i in order[s:s + 4]]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for b, e in enumerate(batch):
                n = len(e.input_ids)
                ids[b, :n] = torch.tensor(e.input_ids)
                mask[b, :n] = 1
                labels[b, e.prompt_len:n] = ids[b, e.prompt_len:n]
            loss = peft(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            tokens += int(mask.sum())
            log(f"hf step {s // 4} loss {loss.item():.3f} {tokens / (time.perf_counter() - t0):.0f} tok/s")
    peft.eval()
    return peft, {"tokens": tokens, "train_s": time.perf_counter() - t0}


def run_variant(home, name: str, args) -> dict:
    """One variant in this process: load, train, score. Returns its result dict."""
    import torch

    from idiolect.compile.recipe import Recipe, for_base
    from idiolect.compile.retrieve import user_shots
    from idiolect.evaluate.run import perplexity
    from idiolect.vault import store

    t_wall = time.perf_counter()
    loop, overrides = VARIANTS[name]
    if overrides is None:
        recipe = for_base(args.base).resolved()
    elif isinstance(overrides, tuple):  # ("registry", fields): the base's recipe, then fields
        recipe = for_base(args.base, **overrides[1]).resolved()
    else:
        recipe = Recipe(**({"epochs": args.epochs} | overrides))
    conn = home.conn
    msgs, snapshot = store.training_messages(conn, args.author, args.examples, seed=recipe.seed)
    held = store.eval_messages(conn, args.author)[: args.eval_limit or None]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    if loop == "hf":
        from idiolect.bases import load as bases

        t = time.perf_counter()
        model, tok = bases.load(bases.resolve(home, args.base))
        load_s = time.perf_counter() - t
        model, info = hf_plain(model, tok, msgs, recipe, log)
        tokens, train_s = info["tokens"], info["train_s"]
        compile_rss = peak_rss_mb()
    else:
        from idiolect.compile.run import CompileRequest, compile_adapter
        from idiolect.generate import load_for_inference

        # a candidate (never evaluated or activated): only its perplexity is scored here
        m = compile_adapter(home, CompileRequest(args.author, args.base, args.examples,
                                                 None if overrides is None else recipe),
                            log=log, progress=lambda p: log(
                                f"step {p['step']}/{p['total']} loss {p['loss']:.3f} "
                                f"{p['tokens_per_s']:.0f} tok/s"))
        load_s, train_s, tokens = m.timings["load_s"], m.timings["train_s"], m.tokens["seen"]
        recipe = Recipe.from_dict(m.recipe)  # what it trained with, as its manifest says
        compile_rss = m.peak_rss_mb
        compile_wall = time.perf_counter() - t_wall
        model, tok, _ = load_for_inference(home, args.base, m.id)
    wall = compile_wall if loop != "hf" else time.perf_counter() - t_wall
    params = matmul_params(model.get_base_model() if hasattr(model, "get_base_model") else model)
    shots = user_shots(conn, args.author, recipe, tok, [h.subject for h in held])
    ppl = perplexity(model, tok, held, 384, shots)
    return {"variant": name, "recipe": recipe.to_dict(), "snapshot": snapshot,
            "examples": len(msgs), "load_s": round(load_s, 2), "train_s": round(train_s, 2),
            "compile_wall_s": round(wall, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / train_s, 1), "eval_perplexity": round(ppl, 4),
            "compile_peak_rss_mb": round(compile_rss, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(),
            "matmul_params": params}


def base_perplexity(home, args) -> float:
    from idiolect.bases import load as bases
    from idiolect.evaluate.run import perplexity
    from idiolect.vault import store

    model, tok = bases.load(bases.resolve(home, args.base))
    return perplexity(model, tok, store.eval_messages(home.conn, args.author)[
        : args.eval_limit or None], 384)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in results]
    labels = {"tokens_per_s": "training tokens/s (higher is better)",
              "compile_wall_s": "compile wall s incl. load (lower is better)",
              "eval_perplexity": "held-out perplexity (lower is better)",
              "compile_peak_rss_mb": "compile peak RSS MB (lower is better)"}
    keys = [k for k in labels if all(k in r for r in results)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 3.8))
    for ax, key in zip(axes, keys):
        label = labels[key]
        ax.bar(names, [r[key] for r in results], color=["#888"] + ["#3b7dd8"] * (len(names) - 1))
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        for i, r in enumerate(results):
            ax.annotate(f"{r[key]:.1f}", (i, r[key]), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--author", default="jeff-king")
    ap.add_argument("--examples", type=int, default=250)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--eval-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--eval-limit", type=int, default=0,
                    help="score perplexity on the first N eval messages (0: all --eval-size)")
    ap.add_argument("--variants", default="hf_plain,idiolect_top10,idiolect")
    ap.add_argument("--name", default="compile_speed", help="results file name (bench/results/NAME.json)")
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "compile-home")
    ap.add_argument("--malloc-mmap-threshold", type=int, help="glibc MALLOC_MMAP_THRESHOLD_ for"
                    " the variants (bytes): a fixed threshold returns freed buffers to the OS")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    ap.add_argument("--base-ppl", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    home = setup_home(args.home, args.author, args.eval_size)
    if args.variant:
        print(json.dumps(run_variant(home, args.variant, args)))
        return
    if args.base_ppl:
        print(json.dumps({"base_perplexity": base_perplexity(home, args)}))
        return
    home.close()  # each variant runs in its own process, on the same --home
    run = Run(args.name, {k: str(v) for k, v in vars(args).items()})
    run.meta["matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    # a base held in bfloat16 does its frozen matmuls in bfloat16: judged against that peak too
    run.meta["matmul_peak_gflops_bf16"] = round(matmul_peak_gflops(dtype="bfloat16"), 1)
    run.meta["data"] = {"file": f"git-authors/{args.author}.jsonl",
                        "sha256": file_digest(CORPORA / "git-authors" / f"{args.author}.jsonl")}
    results = []
    base = [sys.executable, __file__, "--author", args.author, "--examples", str(args.examples),
            "--epochs", str(args.epochs), "--base", args.base, "--home", str(args.home),
            "--threads", str(args.threads), "--eval-limit", str(args.eval_limit)]
    out = subprocess.run(base + ["--base-ppl"], capture_output=True, text=True, check=True)
    run.results["base_perplexity"] = json.loads(out.stdout.strip().splitlines()[-1])["base_perplexity"]
    for name in args.variants.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        env = dict(os.environ)
        if args.malloc_mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        proc = subprocess.run(base + ["--variant", name], stdout=subprocess.PIPE, text=True,
                              env=env)
        if proc.returncode != 0:
            results.append({"variant": name, "status": f"failed (exit {proc.returncode})"})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
        run.results["variants"] = results
        run.write("partial")
    ok = [r for r in results if "tokens_per_s" in r]
    for r in ok:  # training FLOP/s (train seconds) beside the peak measured in this run
        r["flops"] = flops(r["matmul_params"], r["tokens"], r["train_s"], "train",
                           run.meta["matmul_peak_gflops"])
        if r["recipe"].get("lora_layers"):  # the lower layers run once (cached): less work
            r["flops"]["full_depth_equivalent"] = True
        if r["recipe"].get("base_dtype") == "bfloat16":
            r["flops"]["share_of_bf16_peak"] = round(
                r["flops"]["achieved_gflops"] / run.meta["matmul_peak_gflops_bf16"], 3)
    ref = next((r for r in ok if r["variant"] == "hf_plain"), None)
    if ref:
        for r in ok:
            r["speedup_tokens_per_s"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2)
            r["speedup_wall"] = round(ref["compile_wall_s"] / r["compile_wall_s"], 2)
    run.results["variants"] = results
    path = run.write()
    if ok:
        plot(ok, RESULTS / f"{args.name}.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
