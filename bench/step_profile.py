"""Where a compile step's time goes (issue #18): torch.profiler over training steps of the default
recipe, the operators' own time grouped by what they do.

    .venv/bin/python bench/step_profile.py --user jeff-king --examples 250 --steps 12

In a fresh home the --user author is imported and the eval set frozen as ``bench/levers.py``
freezes it (50 messages, seed 0); the base and the training examples are prepared as ``idiolect
compile USER --examples N`` prepares them (the base's registry recipe, resolved on this CPU), and
the first --steps optimizer steps of the compile run twice: once timed without the profiler
(wall per step; tokens and padded positions from the schedule the loop follows), then under
torch.profiler (the first --warmup steps not recorded). Each operator's self time is put in one
group: the frozen base's matmuls, LoRA's (an operand with the rank as a dimension), the vocabulary
projection (an operand as wide as the vocabulary), dtype casts and copies, attention, the loss's
softmax, the optimizer (every operator inside its step) and gradient clipping, the step's time
outside every recorded operator (Python, module code), everything else. Self times sum to the
profiled steps' time on the calling thread (intra-op threads work inside the operator that
started them). Beside them the matmul peaks measured in the same run. Writes
bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPORA, Run, cpu_label, flops, matmul_params, matmul_peak_gflops  # noqa: E402

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_int_mm"}
CASTS = {"aten::_to_copy", "aten::copy_", "aten::to", "aten::clone", "aten::contiguous"}
LOSS = ("log_softmax", "nll_loss", "cross_entropy", "aten::logsumexp")
OPTIMIZER = ("adam", "_foreach", "aten::addcdiv", "aten::lerp", "aten::sqrt", "aten::norm",
             "aten::linalg_vector_norm", "aten::clamp")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::softmax",
             "_softmax_backward")


def group(name: str, shapes, rank: int, vocab: int) -> str:
    """The group an operator's self time goes to (``shapes``: its inputs' shapes)."""
    dims = {d for s in (shapes or []) if isinstance(s, (list, tuple)) for d in s
            if isinstance(d, int)}
    if name.startswith("ProfilerStep"):  # the step's time outside every recorded operator
        return "outside operators (Python, module code)"
    if name.lower().startswith("optimizer."):
        return "optimizer and clipping"
    if name in MATMULS:
        if vocab in dims:
            return "vocabulary projection"
        if rank in dims:
            return "LoRA matmuls"
        return "base matmuls"
    if name in CASTS:
        return "casts and copies"
    if any(k in name for k in LOSS):  # first: "_log_softmax_backward_data" is the loss's
        return "loss softmax"
    if any(k in name for k in ATTENTION):
        return "attention"
    if any(k in name for k in OPTIMIZER) and vocab not in dims:
        return "optimizer and clipping"
    return "other"


def grouped(events, rank: int, vocab: int) -> dict:
    """Self time (ms) by group and operator over the profiler's ``events``; an operator inside
    the optimizer's step (an ``Optimizer.step#...`` range above it) counts as the optimizer's."""
    rows: dict = {}
    in_step: dict = {}

    def under_optimizer(ev) -> bool:
        chain, p = [], ev.cpu_parent  # keyed by the event objects (ids may repeat or be 0)
        while p is not None and id(p) not in in_step:
            chain.append(p)
            p = p.cpu_parent
        found = in_step[id(p)] if p is not None else False
        for q in reversed(chain):
            found = found or q.name.lower().startswith("optimizer.step")
            in_step[id(q)] = found
        return found

    for ev in events:
        g = ("optimizer and clipping" if under_optimizer(ev)
             else group(ev.name, ev.input_shapes, rank, vocab))
        row = rows.setdefault(g, {"self_ms": 0.0, "ops": {}})
        op = row["ops"].setdefault(ev.name, {"self_ms": 0.0, "calls": 0})
        row["self_ms"] += ev.self_cpu_time_total / 1e3
        op["self_ms"] += ev.self_cpu_time_total / 1e3
        op["calls"] += 1
    return rows


def step_tokens(examples, recipe, n: int) -> tuple[list[int], list[int]]:
    """The first ``n`` optimizer steps' tokens (prompt and body) and padded positions, from
    the schedule ``train`` follows."""
    from idiolect.compile.train import schedule

    if recipe.orpo:  # each step would also hold the rejected rows
        raise SystemExit("step_profile: an ORPO recipe's steps are not counted here")
    steps = schedule(examples, recipe)[:n]
    real = [sum(len(examples[i].input_ids) for i in s) for s in steps]
    padded = [len(s) * max(len(examples[i].input_ids) for i in s) for s in steps]
    return real, padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user", default="jeff-king")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=250)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps, each pass")
    ap.add_argument("--warmup", type=int, default=2, help="of them, not recorded by the profiler")
    ap.add_argument("--name", default="step_profile")
    args = ap.parse_args()
    if not 0 <= args.warmup < args.steps:
        raise SystemExit("--warmup must be below --steps")

    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from idiolect.bases import load as bases
    from idiolect.compile.recipe import for_base
    from idiolect.compile.run import CompileRequest, _prepare, _wrap
    from idiolect.compile.train import train
    from idiolect.home import Home
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    src = CORPORA / "git-authors" / f"{args.user}.jsonl"
    if not src.exists():
        raise SystemExit(f"{src}: the author is needed (shared corpora)")
    run = Run(args.name, vars(args))
    with tempfile.TemporaryDirectory(prefix="idiolect-prof-") as tmp:
        home = Home.open(Path(tmp) / "home")
        store.import_messages(home.conn, args.user, read_source(src, "jsonl"), source=str(src),
                              fmt="jsonl")
        store.freeze_eval(home.conn, args.user, 50, seed=0)
        ref = bases.resolve(home, args.base)
        bases.ensure_cached(ref)
        recipe = for_base(ref.name).resolved()
        msgs, _ = store.training_messages(home.conn, args.user, args.examples, seed=recipe.seed)
        req = CompileRequest(user=args.user, base=ref.name, examples=args.examples)
        model, tok, fp, examples, _ = _prepare(ref, recipe, msgs, req, print, home)
        peak = {"float32": matmul_peak_gflops()}
        if recipe.base_dtype == "bfloat16":
            peak["bfloat16"] = matmul_peak_gflops(dtype="bfloat16")
        peft_model = _wrap(model, recipe, None, home.conn, fp)
        params = matmul_params(peft_model)
        vocab = peft_model.get_base_model().config.vocab_size

        def steps(run_dir: Path, on_step) -> int:
            done = []
            try:
                train(peft_model, examples, recipe, tok.pad_token_id, run_dir,
                      progress=lambda p: (done.append(p), on_step(p)), stop_after=args.steps)
            except KeyboardInterrupt as e:
                if not str(e).startswith("stopped after step"):  # a real Ctrl-C
                    raise
            if len(done) != args.steps:
                raise SystemExit(f"the schedule has {len(done)} steps, not --steps"
                                 f" {args.steps}: use fewer")
            return len(done)

        # pass 1: timed, no profiler (the LoRA weights train on; the shapes are what matter)
        marks = [time.perf_counter()]
        steps(Path(tmp) / "timed", lambda p: marks.append(time.perf_counter()))
        walls = [b - a for a, b in zip(marks, marks[1:])][args.warmup:]
        real, padded = (x[args.warmup:] for x in step_tokens(examples, recipe, args.steps))
        timed_s = sum(walls)
        # pass 2: profiled
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, acc_events=True,
                     schedule=schedule(wait=0, warmup=args.warmup,
                                       active=args.steps - args.warmup, repeat=1)) as prof:
            t0 = time.perf_counter()
            steps(Path(tmp) / "profiled", lambda p: prof.step())
            profiled_s = time.perf_counter() - t0
        rows = grouped(prof.events(), recipe.rank, vocab)
        total_ms = sum(r["self_ms"] for r in rows.values())
        groups = {g: {"self_ms": round(r["self_ms"], 1),
                      "share": round(r["self_ms"] / total_ms, 3),
                      "top_ops": {k: {"self_ms": round(v["self_ms"], 1), "calls": v["calls"]}
                                  for k, v in sorted(r["ops"].items(),
                                                     key=lambda kv: -kv[1]["self_ms"])[:15]}}
                  for g, r in sorted(rows.items(), key=lambda kv: -kv[1]["self_ms"])}
        top_peak = peak.get(recipe.base_dtype) or peak["float32"]
        fl = flops(params, sum(real), timed_s, "train", top_peak)
        fl_padded = flops(params, sum(padded), timed_s, "train", top_peak)
        run.results = {
            "threads": torch.get_num_threads(), "recipe": recipe.to_dict(), "base": ref.name,
            "examples": len(examples), "matmul_peak_gflops": {k: round(v, 1)
                                                             for k, v in peak.items()},
            "timed": {"steps": len(walls), "wall_s": round(timed_s, 2),
                      "step_wall_s": [round(w, 3) for w in walls], "tokens": sum(real),
                      "padded_positions": sum(padded),
                      "tokens_per_s": round(sum(real) / timed_s, 1), "flops": fl,
                      "flops_padded": fl_padded},
            "profiled": {"wall_s": round(profiled_s, 2), "self_ms_total": round(total_ms, 1),
                         "groups": groups},
        }
        home.close()
    print(f"{cpu_label(run.meta['cpu'])}: {run.results['timed']['tokens_per_s']} tokens/s,"
          f" {fl['achieved_gflops']} GFLOP/s ({fl.get('share_of_peak')} of the peak)")
    for g, r in groups.items():
        print(f"  {g:24s} {r['share']:6.1%}  {r['self_ms']:9.1f} ms")
    print(run.write())


if __name__ == "__main__":
    main()
