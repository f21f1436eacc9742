"""GGUF LoRA export checked in llama.cpp: held-out log-likelihoods and generation speed.

For a user's adapter on SmolLM2 (the active one, or --adapter), in the home --home:
export it to GGUF, then score up to --texts held-out messages (the body given its prompt, the
exact token ids of the PyTorch tokenizer) under the bare base and under base + adapter, in
PyTorch (the dequantized fp32 base + PEFT) and in llama.cpp (the packaged Q4_1 GGUF + the
exported LoRA). Controls: the same export without the q/k row permutation, and an f16 export.
Then generation tokens/s of llama.cpp vs the PyTorch path (idiolect.generate.generate_bodies),
same prompts and sampling settings. Results: bench/results/export_llamacpp.json.

    export IDIOLECT_HOME=bench/_work/export-home   # for the idiolect commands; the bench: --home
    .venv/bin/idiolect user import u ../shared/corpora/git-authors/jeff-king.jsonl
    .venv/bin/idiolect user freeze-eval u --size 20
    nice -n 19 .venv/bin/idiolect compile u --examples 40 --epochs 1 --candidate
    .venv/bin/idiolect adapter promote ID --force   # a one-user home cannot gate: forced
    nice -n 19 .venv/bin/python bench/export_llamacpp.py --home $IDIOLECT_HOME --user u

(``idiolect compile`` gates the adapter it makes, and the gate needs a cohort of two users: in
this one-user home the adapter stays a candidate until promoted with ``--force``; or skip the
promotion and pass ``--adapter ID``.)

Needs llama-cpp-python (the `llama` extra).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import idiolect  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

from idiolect import adapters, export  # noqa: E402
from idiolect.bases import load as bases  # noqa: E402
from idiolect.compile.prompts import completion_text, prompt_text  # noqa: E402
from idiolect.compile.train import peak_rss_mb  # noqa: E402
from idiolect.export import export_adapter  # noqa: E402
from idiolect.generate import GenerationConfig, generate_bodies, load_for_inference  # noqa: E402
from idiolect.home import Home  # noqa: E402
from idiolect.manifest import Manifest  # noqa: E402
from idiolect.vault import store  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "export_llamacpp.json"
DEFAULT_HOME = ROOT / "bench" / "_work" / "export-home"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--user", default="u")
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--adapter", help="adapter id (default: the user's active one on --base)")
    p.add_argument("--texts", type=int, default=20, help="held-out messages to score")
    p.add_argument("--max-body-tokens", type=int, default=192, help="scored tokens per message")
    p.add_argument("--prompts", type=int, default=8, help="prompts for the generation timing")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--parts", default="loglik,speed",
                   help="loglik and/or speed; a single part updates that part of an existing --out")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--home", type=Path, default=DEFAULT_HOME,
                   help="state folder of the user and adapter (default: bench/_work/export-home)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def torch_loglik(model, pairs) -> tuple[float, float]:
    """(mean log p per completion token, seconds), one sequence at a time."""
    import torch

    total, count, t0 = 0.0, 0, time.perf_counter()
    with torch.no_grad():
        for prompt, ids in pairs:
            seq = torch.tensor([prompt + ids])
            logits = model(seq).logits[0, len(prompt) - 1:-1].double()
            target = seq[0, len(prompt):]
            total += float(torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum())
            count += len(ids)
    return total / count, time.perf_counter() - t0


def cpp_loglik(base_gguf: Path, lora: Path | None, pairs) -> tuple[float, float]:
    runner = export.LlamaCpp(base_gguf, lora, n_ctx=1024)
    t0 = time.perf_counter()
    parts = [runner.loglik_ids(p, c) for p, c in pairs]
    return sum(s for s, _ in parts) / sum(n for _, n in parts), time.perf_counter() - t0


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("idiolect", "torch", "transformers", "peft", "gguf", "llama_cpp_python"):
        try:
            out[pkg] = metadata.version(pkg.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def stamp(label: str, t0: float) -> None:
    log(f"[{time.perf_counter() - t0:7.1f}s] {label}  (load {os.getloadavg()[0]:.2f})")


def loglik_part(ctx: dict, args, t0: float) -> dict:
    model, tok, held = ctx["model"], ctx["tok"], ctx["held"]
    base_gguf, lora, controls = ctx["base_gguf"], ctx["lora"], ctx["controls"]
    pairs, same_tokens = [], 0
    probe = export.LlamaCpp(base_gguf, None, n_ctx=64)   # tokenizer agreement with HF
    for m in held:
        p = tok(prompt_text(tok, m.subject, m.to), add_special_tokens=False)["input_ids"]
        full = completion_text(tok, m.subject, m.to, m.body)
        c = tok(full, add_special_tokens=False)["input_ids"]
        same_tokens += probe.tokenize(full) == c
        pairs.append((p, c[: args.max_body_tokens]))
    del probe
    scored = sum(len(c) for _, c in pairs)
    stamp(f"scoring {len(pairs)} held-out messages ({scored} tokens)", t0)
    ll, secs = {}, {}
    ll["pytorch_adapter"], secs["pytorch_adapter"] = torch_loglik(model, pairs)
    with model.disable_adapter():
        ll["pytorch_base"], secs["pytorch_base"] = torch_loglik(model, pairs)
    stamp("pytorch done", t0)
    runs = {"llamacpp_base": None, "llamacpp_adapter": lora,
            "llamacpp_adapter_f16": controls["f16"],
            "llamacpp_adapter_unpermuted_control": controls["unpermuted"]}
    for key, path in runs.items():
        ll[key], secs[key] = cpp_loglik(base_gguf, path, pairs)
        stamp(f"{key} {ll[key]:.4f}", t0)
    for k, v in ll.items():
        log(f"  {k:<38} {v:.4f}")
    return {
        "texts": len(pairs), "tokens": scored,
        "llamacpp_tokenizer_matches_hf": f"{same_tokens}/{len(pairs)}",
        **{k: round(v, 4) for k, v in ll.items()},
        "delta_pytorch": round(ll["pytorch_adapter"] - ll["pytorch_base"], 4),
        "delta_llamacpp": round(ll["llamacpp_adapter"] - ll["llamacpp_base"], 4),
        "delta_llamacpp_unpermuted_control": round(
            ll["llamacpp_adapter_unpermuted_control"] - ll["llamacpp_base"], 4),
        "abs_diff_adapter_llamacpp_vs_pytorch": round(
            abs(ll["llamacpp_adapter"] - ll["pytorch_adapter"]), 4),
        "scoring_seconds": {k: round(v, 2) for k, v in secs.items()},
    }


def speed_part(ctx: dict, args, t0: float) -> dict:
    import torch

    model, tok, held = ctx["model"], ctx["tok"], ctx["held"]
    prompts = [(m.subject, list(m.to)) for m in held[: args.prompts]]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=1, seed=0,
                           cut_echo=False)  # every generated token counted
    gen = {}
    for batch in (1, len(prompts)):
        cfg.batch_size = batch
        t = time.perf_counter()
        bodies = generate_bodies(model, tok, prompts, cfg)
        secs = time.perf_counter() - t
        n = sum(len(tok(b, add_special_tokens=False)["input_ids"]) for b in bodies)
        gen[f"pytorch_batch{batch}"] = {"tokens": n, "seconds": round(secs, 2),
                                        "tokens_per_s": round(n / secs, 1),
                                        "load_avg_1m_after": round(os.getloadavg()[0], 2)}
        stamp(f"pytorch batch {batch}: {n / secs:.1f} tok/s", t0)
    runner = export.LlamaCpp(ctx["base_gguf"], ctx["lora"], n_ctx=1024, logits_all=False)
    n = n_retok = 0
    secs = 0.0
    samples = []
    for i, (s, to) in enumerate(prompts):
        text, k, dt_s = runner.generate(prompt_text(tok, s, to), args.max_new_tokens, seed=i)
        n, secs = n + k, secs + dt_s
        n_retok += len(tok(text.strip(), add_special_tokens=False)["input_ids"])
        samples.append(text.strip()[:200])
    gen["llamacpp_batch1"] = {"tokens": n, "tokens_retokenized": n_retok, "seconds": round(secs, 2),
                              "tokens_per_s": round(n / secs, 1),
                              "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    stamp(f"llama.cpp: {n / secs:.1f} tok/s", t0)
    return {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
            "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p,
                         "repetition_penalty": cfg.repetition_penalty},
            "threads": {"torch": torch.get_num_threads(),
                        "llamacpp": os.cpu_count()},
            **gen, "llamacpp_samples": samples[:2]}


def main(argv=None) -> int:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    load_before = os.getloadavg()
    home = Home.open(args.home)
    conn = home.conn
    log(f"config: home={home.root} {json.dumps(vars(args), default=str)}")
    ref = bases.resolve(home, args.base)
    adapter_id = args.adapter or adapters.require_active(conn, args.user, ref.name)["id"]
    exported = export_adapter(home, adapter_id, "gguf", log=log)
    fp = bases.read_fingerprint(ref)
    folder = Path(adapters.get(conn, adapter_id)["path"])
    lora = Path(exported["path"])
    cdir = lora.parent / "controls"
    controls = {"f16": export.export_gguf_lora(folder, ref.hf_dir, cdir / "f16.gguf", fp,
                                               dtype="f16")}
    keep = export.SUPPORTED_ARCHS["LlamaForCausalLM"]
    export.SUPPORTED_ARCHS["LlamaForCausalLM"] = export.ArchSupport("llama", False, False)
    try:
        controls["unpermuted"] = export.export_gguf_lora(folder, ref.hf_dir,
                                                         cdir / "unpermuted.gguf", fp)
    finally:
        export.SUPPORTED_ARCHS["LlamaForCausalLM"] = keep
    stamp(f"exported {lora} ({exported['bytes']} bytes)", t0)
    model, tok, _ = load_for_inference(home, ref.name, adapter_id, log=log)
    ctx = {"model": model, "tok": tok, "held": store.eval_messages(conn, args.user)[: args.texts],
           "base_gguf": Path(exported["base_gguf"]), "lora": lora, "controls": controls}
    stamp("loaded PyTorch base + adapter", t0)

    old = json.loads(args.out.read_text()) if args.out.exists() and parts != {"loglik", "speed"} \
        else {}
    result = {
        "run_info": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started_at": started.isoformat(timespec="seconds"), "status": "ok",
            "packages": versions(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        },
        "meta_info": {
            "base": ref.name, "base_gguf": ctx["base_gguf"].name, "base_digest": fp["digest"],
            "adapter": adapter_id, "user": args.user,
            "recipe": Manifest.read(folder).recipe,
            "export": {k: exported[k] for k in ("architecture", "dtype", "bytes")},
            "definitions": "loglik: mean natural-log probability per body token given its prompt"
                           " (chat template), the same token ids in both runtimes; tokens/s:"
                           " generated tokens / wall seconds, prompt evaluation included",
        },
        "loglik": old.get("loglik"), "generation": old.get("generation"),
    }
    if "loglik" in parts:
        result["loglik"] = loglik_part(ctx, args, t0)
    if "speed" in parts:
        result["generation"] = speed_part(ctx, args, t0)
    result["run_info"] |= {
        "parts": sorted(parts), "duration_s": round(time.perf_counter() - t0, 2),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "peak_memory_mb": round(peak_rss_mb(), 1),
    }
    if old and old.get("run_info"):
        result["run_info"]["previous_parts_run"] = {
            k: old["run_info"].get(k) for k in ("parts", "started_at", "load_average_before_after")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
