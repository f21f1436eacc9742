"""One decode step of a mixed batch, per way of applying its adapters, and the batch's sampler
beside the former per-row one: the two per-step costs of `idiolect serve` that issue #19 cut.

    .venv/bin/python bench/serve_step.py                 # bench/serve_load.py's home (SmolLM2)
    .venv/bin/python bench/serve_step.py --base tiny     # 2-layer random Llama, random adapters

Decode: --rows rows (prompts of 24 to 40 random tokens, left-padded as the batcher pads them)
spread round robin over the first --adapters users' active adapters; a prefill, then --steps
decode steps timed one by one, for PEFT's mixed batch (``lora="peft"``: a loop over the batch's
adapters in every LoRA layer), the stacked LoRA (``lora="stacked"``) and the bare base (every
row ``__base__``: the floor), the three taking turns for --rounds rounds (two copies of the base
loaded, so that a busy machine's slow spells fall on all three alike). Sampler: the stacked
way's last round's logits (--rows x vocabulary, --steps of them, --rounds times over) at the
server's defaults (repetition penalty 1.1, temperature 0.7, top_p 0.9), through
``BatchSampler`` and through the former per-row sampler (tests/serve/live.py's
``sample_alone``) in turn, with the same seeds (the tokens are checked equal). Median and
fastest ms of a step.

The serve home is reused as bench/serve_load.py left it (nothing is trained here); ``--base
tiny`` builds a throwaway one. Writes bench/results/serve_step.json (serve_step_tiny.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Run  # noqa: E402

sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "serve")]


def tiny_home(users: int):
    """A throwaway home: the tests' tiny base, ``users`` users with random active adapters."""
    from conftest import make_tiny_model
    from live import add_user, random_adapter

    from idiolect.bases.load import add_local
    from idiolect.home import Home

    root = Path(tempfile.mkdtemp(prefix="serve-step-"))
    home = Home.open(root / "home")
    add_local(home, "tiny", make_tiny_model(root / "tiny-model"))
    for i in range(users):
        add_user(home, f"u{i:02d}")
        random_adapter(home, f"u{i:02d}", "tiny", seed=i)
    return home, "tiny"


def prompts(rows: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    lens = [24 + (7 * b) % 17 for b in range(rows)]
    ids = torch.full((rows, max(lens)), 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lens):
        ids[b, -n:] = torch.randint(4, vocab, (n,), generator=g)
        mask[b, -n:] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def decode(models, names: list[str], steps: int) -> tuple[float, list[float], list]:
    """Prefill, then ``steps`` greedy decode steps: seconds of the prefill and of each step,
    each step's next-token logits."""
    import torch

    ids, mask, pos = prompts(len(names), models.tokenizer.vocab_size)
    t = time.perf_counter()
    out = models.forward(names, input_ids=ids, attention_mask=mask, position_ids=pos,
                         use_cache=True)
    prefill, times, logits = time.perf_counter() - t, [], []
    for _ in range(steps):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos[:, -1:] + 1
        t = time.perf_counter()
        out = models.forward(names, input_ids=nxt, attention_mask=mask, position_ids=pos,
                             past_key_values=out.past_key_values, use_cache=True)
        times.append(time.perf_counter() - t)
        logits.append(out.logits[:, -1].float())
    return prefill, times, logits


def summary(seconds: list[float]) -> dict:
    return {"median_ms": round(statistics.median(seconds) * 1000, 2),
            "fastest_ms": round(min(seconds) * 1000, 2), "n": len(seconds)}


def sampling(steps: list) -> dict:
    """Seconds per step of the batch sampler and of the per-row one, on the same logits (a
    list of (rows, vocab) tensors), and how often top-p sorted a row whole."""
    from live import fake_rows, sample_alone

    from idiolect.serve import sampler as module

    rows, vocab = steps[0].shape
    settings = [{} for _ in range(rows)]
    batched, alone = fake_rows(settings, vocab), fake_rows(settings, vocab)
    for r in (*batched, *alone):
        r.job.prompt_ids = r.job.prompt_ids * 8  # 40-100 prompt tokens, as a real prompt
    sampler, eos = module.BatchSampler(batched, {0}, 1.1), {0}
    whole, sorted_rows = module._top_p_sorted, []
    module._top_p_sorted = lambda p, t: (sorted_rows.append(len(p)), whole(p, t))[1]
    new, old = [], []
    for logits in steps:
        t = time.perf_counter()
        got = sampler.sample(logits.clone())
        new.append(time.perf_counter() - t)
        t = time.perf_counter()
        want = [sample_alone(r, logits[b].clone(), eos, 1.1) for b, r in enumerate(alone)]
        old.append(time.perf_counter() - t)
        if got != want:
            raise SystemExit("the batch sampler drew other tokens than the per-row one")
        for r, token in zip(alone, want):
            r.ids.append(token)
    module._top_p_sorted = whole
    return {"batched": summary(new), "per_row": summary(old),
            "rows_sorted_whole": f"{sum(sorted_rows)} of {rows * len(steps)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="default", help="a base name, 'default' or 'tiny' (smoke)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=12)
    ap.add_argument("--steps", type=int, default=6, help="timed decode steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="turns of peft, stacked, bare")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "serve-home")
    args = ap.parse_args()

    import torch

    from idiolect.home import Home
    from idiolect.serve.models import BASE_ROW, PREFIX, ServedModels

    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run("serve_step" + ("_tiny" if args.base == "tiny" else ""),
              vars(args) | {"home": str(args.home)})
    if args.base == "tiny":
        home, base = tiny_home(args.adapters)
    else:
        home, base = Home.open(args.home), (None if args.base == "default" else args.base)
    ways = {"peft": ServedModels(home, base, lora="peft"), "stacked": ServedModels(home, base)}
    models = ways["stacked"]
    users = list(models.active())[:args.adapters]
    if len(users) < args.adapters:
        raise SystemExit(f"{len(users)} users with an active adapter on {models.base}; run"
                         " bench/serve_load.py first to build its home")
    targets = [models.resolve(PREFIX + u) for u in users]
    names = [targets[b % len(targets)].name for b in range(args.rows)]
    load = {}
    for lora, m in ways.items():
        t = time.perf_counter()
        for target in targets:
            m.ensure_loaded(target)
        load[lora] = round(time.perf_counter() - t, 2)
    runs = {"peft": (ways["peft"], names), "stacked": (models, names),
            "bare": (models, [BASE_ROW] * args.rows)}
    steps = {way: [] for way in runs}
    prefill = {way: [] for way in runs}
    for _ in range(args.rounds):
        for way, (m, rows) in runs.items():
            p, times, logits = decode(m, rows, args.steps)
            prefill[way].append(p)
            steps[way] += times
            if way == "stacked":
                real = logits  # the sampler's input: a real step's logits
    ids, mask, pos = prompts(len(names), models.tokenizer.vocab_size)  # both ways agree?
    logits = [m.forward(names, input_ids=ids, attention_mask=mask, position_ids=pos).logits
              for m in ways.values()]
    vocab = models.model.config.vocab_size
    run.meta |= {"base": models.base, "users": users, "torch_threads": torch.get_num_threads()}
    run.results = {
        "decode_step": {w: summary(t) for w, t in steps.items()},
        "prefill": {w: summary(t) for w, t in prefill.items()}, "load_s": load,
        "max_abs_logit_diff": float((logits[0] - logits[1]).abs().max()),
        "sampler": sampling(real * args.rounds) | {"vocab": vocab}}
    path = run.write()
    r = run.results
    for what, ms in [*(("decode " + w, s) for w, s in r["decode_step"].items()),
                     *(("sampler " + w, r["sampler"][w]) for w in ("batched", "per_row"))]:
        print(f"{what:16} median {ms['median_ms']:8.1f} ms  fastest {ms['fastest_ms']:8.1f} ms")
    print(f"{args.rows} rows over {len(users)} adapters on {models.base}, vocab {vocab};"
          f" |peft - stacked| logits {r['max_abs_logit_diff']:.1e}; top-p sorted"
          f" {r['sampler']['rows_sorted_whole']} rows whole; wrote {path}")


if __name__ == "__main__":
    main()
