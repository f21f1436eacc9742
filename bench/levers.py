"""Quality levers on the 12 git authors (issue #17): one recipe per run, decoding and best-of-N.

    .venv/bin/python bench/levers.py --recipe e1-250 --settings 0.7/0.9/1.1 1.0/0.95/1.0
    .venv/bin/python bench/levers.py --recipe e1-250 --settings 1.0/0.95/1.0 --best-of 4 \\
        --name levers_e1-250_best4 --users jeff-king,taylor-blau
    .venv/bin/python bench/levers.py --recipe lr6-e1-250 --settings 1.0/0.95/1.0 --best-of 1 4 \
        --pick style,sense,both --name levers_lr6-e1-250_pick4
    .venv/bin/python bench/levers.py --plot bench/results/levers_e1-250.json
    .venv/bin/python bench/levers.py --drafts bench/results/levers_e1-250.json
    .venv/bin/python bench/levers.py --compare bench/results/levers_e1-250.json \\
        bench/results/levers_lr6-e1-250.json --setting "1.0/0.95/1.0 x1"

The home (--home, default bench/_work/levers-home) holds all 12 authors of
../shared/corpora/git-authors with the eval sets `idiolect user freeze-eval` makes (50 messages,
seed 0, a 100-message reference split). For each user in turn: the adapter of --recipe (RECIPES:
examples, epochs, learning rate, modules) is compiled unless the home already has one with that
exact recipe (a candidate: the bench judges, the gate is not asked), its compile wall and CPU
seconds recorded; then for each decoding setting (temperature/top-p/repetition penalty) the
first --limit eval prompts are answered, --best-of N samples per prompt ranked by
`draft.rank` as `idiolect draft --n N --rank-by` ranks them, once per --pick (style: the scorer
fitted on the training pools, never on the reference splits the scores below use; sense: the
adapter's own likelihood ratio of the body after its subject vs other training subjects; both),
and the chosen bodies get

- authorship probability and fingerprint distance (`idiolect eval`'s scorers, fitted on the
  reference splits, with bootstrap intervals) beside the user's ceiling and floor,
- novelty against the training pool, held-out perplexity of the adapter,
- subject fit (evaluate/sense.py, read by --reader, not the generator) beside the real bodies'.

A row per user is written to bench/results/NAME.json as soon as it is done (NAME: levers_RECIPE
unless --name), with the cohort summary (means with intervals over users, users below the
floor, verbatim copies) recomputed each time. Generation uses one batch of --batch rows (the
protocol of `idiolect eval` but for the batch size, which changes the random draws only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import CORPORA, REPO, RESULTS, Run, cpu_label, t_interval  # noqa: E402

MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (messages to train on, Recipe fields over the defaults)
RECIPES: dict[str, tuple[int | None, dict]] = {
    "e1-250": (250, {"epochs": 1.0}),
    "e2-250": (250, {}),
    "e1-500": (500, {"epochs": 1.0}),
    "default-500": (500, {}),
    "lr6-e1-250": (250, {"epochs": 1.0, "lr": 6e-4}),
    "lr6-e2-250": (250, {"lr": 6e-4}),
    "mlp-e1-250": (250, {"epochs": 1.0, "target_modules": MLP}),
    "r64-e1-250": (250, {"epochs": 1.0, "rank": 64, "alpha": 128.0}),
    # the user's 2 nearest own training messages in every prompt (compile/retrieve.py)
    "shots2-lr6-e1-250": (250, {"epochs": 1.0, "lr": 6e-4, "shots": 2}),
    "shots2-lr6-e2-250": (250, {"lr": 6e-4, "shots": 2}),
    # SmolLM2's recipe with the frozen base held in bfloat16 while training (issue #18: 1.44x
    # on wall time at perplexity parity; are the style scores the same?)
    "bf16-lr6-e2-250": (250, {"lr": 6e-4, "base_dtype": "bfloat16"}),
    # SmolLM2's recipe with LoRA on the MLP projections too (gate, up, down): about 2.7x the trained
    # parameters; do they move the style scores?
    "mlp-lr6-e2-250": (250, {"lr": 6e-4, "target_modules": MLP}),
    # the MLP lever on top of SmolLM2's recipe with its shots, to pair with shots2-lr6-e2-250
    "mlp-shots2-lr6-e2-250": (250, {"lr": 6e-4, "shots": 2, "target_modules": MLP}),
    # the same at one epoch (half the compile time), against shots2-lr6-e2-250
    "mlp-shots2-lr6-e1-250": (250, {"epochs": 1.0, "lr": 6e-4, "shots": 2, "target_modules": MLP}),
    # bf16 with the shots (bf16-lr6-e2-250 measured it without them), to pair likewise
    "bf16-shots2-lr6-e2-250": (250, {"lr": 6e-4, "shots": 2, "base_dtype": "bfloat16"}),
    # issue #17's goal run: SmolLM2's registry recipe as `idiolect compile` resolves it on a CPU
    # with bfloat16 (shots, MLP, base in bfloat16) on 500 messages
    "default-bf16-500": (500, {"lr": 6e-4, "shots": 2, "target_modules": MLP,
                               "base_dtype": "bfloat16"}),
    # the base lever: SmolLM2's registry recipe at 250 messages, to run on the other bases
    # (--base gemma3-270m, qwen2.5-coder-0.5b) against mlp-shots2-lr6-e2-250 on SmolLM2
    "default-bf16-250": (250, {"lr": 6e-4, "shots": 2, "target_modules": MLP,
                               "base_dtype": "bfloat16"}),
    # the real body preferred over the bare base's own body for the prompt (ORPO, lambda 0.1)
    "orpo-lr6-e1-250": (250, {"epochs": 1.0, "lr": 6e-4, "orpo": 0.1}),
}


def setup(home, eval_size: int = 50) -> list[str]:
    from idiolect.vault import store
    from idiolect.vault.ingest import read_source

    users = []
    for path in sorted((CORPORA / "git-authors").glob("*.jsonl")):
        users.append(path.stem)
        if store.eval_set(home.conn, path.stem) is None:
            store.import_messages(home.conn, path.stem, read_source(path, "jsonl"),
                                  source=str(path), fmt="jsonl")
            store.freeze_eval(home.conn, path.stem, eval_size, seed=0)
    return users


def find_adapter(home, user: str, base: str, examples: int | None, recipe) -> str | None:
    """The newest adapter of ``user`` on ``base`` compiled with exactly this recipe."""
    from idiolect.compile.recipe import Recipe
    from idiolect.manifest import Manifest

    for row in home.conn.execute("SELECT id, path FROM adapters WHERE user=? AND base=? ORDER BY"
                                 " created_at DESC, id DESC", (user, base)):
        try:
            m = Manifest.read(Path(row["path"]))
        except Exception:  # noqa: BLE001 - a broken folder is simply not a match
            continue
        same = Recipe.from_dict(m.recipe).to_dict() == recipe.to_dict()  # fields added since
        if same and m.snapshot.get("messages") == examples:  # the manifest: their defaults
            return row["id"]
    return None


def compile_for(home, user: str, base: str, recipe_name: str, log) -> tuple[str, dict | None]:
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, Resume, compile_adapter

    examples, over = RECIPES[recipe_name]
    recipe = Recipe(**over)
    found = find_adapter(home, user, base, examples, recipe)
    if found:
        return found, None
    w, c = time.perf_counter(), time.process_time()
    # a compile of this very request that an earlier run left unfinished continues from its
    # checkpoint (then wall_s and cpu_s cover this run's part only; train_s is the whole)
    m = compile_adapter(home, CompileRequest(user, base, examples, recipe,
                                             resume=Resume.IF_SAME),
                        log=lambda s: log("   " + s[:150]))
    timing = {"wall_s": round(time.perf_counter() - w, 1),
              "cpu_s": round(time.process_time() - c, 1)}
    timing.update({"tokens": m.tokens.get("seen"), "train_s": m.timings.get("train_s"),
                   "tokens_per_s": m.timings.get("tokens_per_s"), "peak_rss_mb": m.peak_rss_mb,
                   "resumed_from_step": m.tokens.get("resumed_from_step")})
    return m.id, timing


def pick_best(home, user: str, candidates: list[list[str]], members, by: str = "style",
              fits: list[list[float]] | None = None) -> list[str]:
    """The first of each prompt's candidates as ``idiolect draft --n N --rank-by BY`` ranks them."""
    from idiolect.draft import rank

    return [rank(home, user, c, members=members, by=by,
                 fits=None if fits is None else fits[k])[0]["body"]
            for k, c in enumerate(candidates)]


def mean_interval(xs: list[float]) -> dict:
    """The mean beside its bootstrap interval over ``xs`` (without the resamples) and its 95%
    t-interval (``t_ci``: wider than a percentile bootstrap over a handful of users, which
    is too narrow there)."""
    from idiolect.evaluate.intervals import mean_interval as interval

    ci = {k: v for k, v in interval(xs).items() if k != "resamples"}
    mean, half = t_interval(xs)
    return {"mean": mean, **ci, "t_ci": [round(mean - half, 4), round(mean + half, 4)]}


def summary(rows: list[dict]) -> dict:
    """Cohort means over users per setting, with a bootstrap interval over users."""
    out = {}
    keys = sorted({k for r in rows for k in r["settings"]})
    for k in keys:
        rs = [r for r in rows if k in r["settings"]]
        ap = [r["settings"][k]["authorship_probability"] for r in rs]
        frac = [r["settings"][k]["authorship_probability"]
                / r["calibration"]["authorship_probability"]["ceiling"] for r in rs]
        fit = [r["settings"][k]["subject_fit"]["score"] for r in rs]
        real_fit = [r["real_subject_fit"]["score"] for r in rs]
        out[k] = {
            "users": len(rs),
            "authorship_probability": mean_interval(ap),
            "share_of_ceiling": mean_interval(frac),
            "ceiling": sum(r["calibration"]["authorship_probability"]["ceiling"]
                           for r in rs) / len(rs),
            "distance_below_floor": sum(
                r["settings"][k]["fingerprint_distance"]
                < r["calibration"]["fingerprint_distance"]["floor"] for r in rs),
            "subject_fit": mean_interval(fit),
            "real_subject_fit": mean_interval(real_fit),
            "verbatim": sum(r["settings"][k]["novelty"]["verbatim"] for r in rs),
            "flagged": sum(r["settings"][k]["novelty"]["flagged"] for r in rs),
            "generate_cpu_s": round(sum(r["settings"][k]["generate_cpu_s"] for r in rs), 1),
        }
        ov = [(r["settings"][k].get("subject_overlap") or {}).get("score") for r in rs]
        real_ov = [(r.get("real_subject_overlap") or {}).get("score") for r in rs]
        if ov and None not in ov + real_ov:  # rows since session 10 (and a topic word each)
            out[k]["subject_overlap"] = mean_interval(ov)
            out[k]["real_subject_overlap"] = mean_interval(real_ov)
    if len(keys) > 1:  # each setting against the first, paired by user: "A beats B" needs this
        first = keys[0]
        for k in keys[1:]:
            rs = [r for r in rows if k in r["settings"] and first in r["settings"]]
            out[k]["minus_" + first] = {
                m: mean_interval([get(r["settings"][k]) - get(r["settings"][first])
                                  for r in rs])
                for m, get in (("authorship_probability", lambda v: v["authorship_probability"]),
                               ("fingerprint_distance", lambda v: v["fingerprint_distance"]),
                               ("subject_fit", lambda v: v["subject_fit"]["score"]))}
            if "subject_overlap" in out[k] and "subject_overlap" in out[first]:
                out[k]["minus_" + first]["subject_overlap"] = mean_interval(
                    [r["settings"][k]["subject_overlap"]["score"]
                     - r["settings"][first]["subject_overlap"]["score"] for r in rs])
    return out


def compare(paths: list[Path], setting: str, name: str = "levers_recipes") -> Path:
    """Recipes of separate runs, each against the first file's, paired by user on one decoding
    setting: the cohort summary of each and the paired differences with intervals over users.
    Runs pair only where a user's eval set is the same: the ceilings, floors and the real
    bodies' subject fit (computed from the frozen eval and reference sets, no model sampled)
    must agree, else the user is left out and listed. Every run is summarized over the users
    that all runs scored so (``left_out``: the others). Quality only: compile and generation
    times come from different runs and are not compared here."""
    def same_eval(a: dict, b: dict) -> bool:  # equal up to float noise across machines/BLAS
        return all(abs(a["calibration"][m][k] - b["calibration"][m][k]) < 1e-5
                   for m in ("authorship_probability", "fingerprint_distance")
                   for k in ("ceiling", "floor")) and abs(
            a["real_subject_fit"]["score"] - b["real_subject_fit"]["score"]) < 1e-3

    docs = [json.loads(Path(p).read_text()) for p in paths]
    base = {r["user"]: r for r in docs[0]["rows"] if setting in r["settings"]}
    common = set(base)  # the users every run scored on the same eval sets: every summary's
    for doc in docs[1:]:
        common &= {r["user"] for r in doc["rows"] if setting in r["settings"]
                   and r["user"] in base and same_eval(base[r["user"]], r)}
    run = Run(name, {"files": [Path(p).name for p in paths], "setting": setting})
    recipes = []
    for path, doc in zip(paths, docs):
        rows = [r for r in doc["rows"] if setting in r["settings"] and r["user"] in common]
        left_out = sorted({r["user"] for r in doc["rows"]} - common)
        entry = {"file": Path(path).name, "recipe": doc.get("recipe"),
                 "base": doc["run_info"]["config"].get("base", "smollm2-135m"),
                 "status": doc["run_info"]["status"], "git": doc["run_info"]["git"],
                 "git_dirty": doc["run_info"].get("git_dirty"),
                 "cpu": cpu_label(doc.get("meta_info", {}).get("cpu")),
                 # rows kept by --resume from earlier runs: their commits and CPUs too
                 "earlier_runs": [{k: e.get(k) for k in ("git", "git_dirty", "status")}
                                  | {"cpu": cpu_label(e["cpu"]) if e.get("cpu") else None}
                                  for e in doc.get("earlier_runs", [])],
                 "summary": summary([{**r, "settings": {setting: r["settings"][setting]}}
                                     for r in rows]).get(setting),
                 "per_user": {r["user"]: {
                     "authorship_probability": r["settings"][setting]["authorship_probability"],
                     "fingerprint_distance": r["settings"][setting]["fingerprint_distance"],
                     "subject_fit": r["settings"][setting]["subject_fit"]["score"],
                     "perplexity": r["perplexity"],
                     "verbatim": r["settings"][setting]["novelty"]["verbatim"],
                     "compile_cpu_s": (r.get("compile") or {}).get("cpu_s")} for r in rows},
                 "left_out": left_out}
        if path != paths[0]:
            pairs = [(base[r["user"]], r) for r in rows]
            # perplexities of two bases count tokens of two tokenizers: not paired
            same_base = entry["base"] == recipes[0]["base"]
            if pairs:
                entry["minus_first"] = {"users": len(pairs), **{
                    m: mean_interval([get(r) - get(b) for b, r in pairs])
                    for m, get in (
                        ("authorship_probability",
                         lambda r: r["settings"][setting]["authorship_probability"]),
                        ("fingerprint_distance",
                         lambda r: r["settings"][setting]["fingerprint_distance"]),
                        ("subject_fit", lambda r: r["settings"][setting]["subject_fit"]["score"]),
                        ("perplexity", lambda r: r["perplexity"]))
                    if same_base or m != "perplexity"}}
        recipes.append(entry)
    run.results["recipes"] = recipes
    return run.write()


def setting_cfg(spec: str, batch: int, max_new_tokens: int):
    from idiolect.evaluate.run import EvalConfig
    from idiolect.generate import GenerationConfig

    t, p, r = map(float, spec.split("/"))
    return GenerationConfig(**asdict(EvalConfig().generation) | {
        "temperature": t, "top_p": p, "repetition_penalty": r, "batch_size": batch,
        "max_new_tokens": max_new_tokens})


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(path.read_text())
    rows = doc["rows"]
    keys = sorted({k for r in rows for k in r["settings"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = range(len(rows))
    for ax, metric in ((axes[0], "authorship_probability"), (axes[1], "subject_fit")):
        if metric == "authorship_probability":
            ax.scatter(x, [r["calibration"][metric]["ceiling"] for r in rows], marker="_", s=300,
                       color="green", label="real held-out text (ceiling)")
            ax.scatter(x, [r["calibration"][metric]["floor"] for r in rows], marker="_", s=300,
                       color="red", label="other users (floor)")
        else:
            ax.scatter(x, [r["real_subject_fit"]["score"] for r in rows], marker="_", s=300,
                       color="green", label="real held-out bodies")
        for j, k in enumerate(keys):
            vals = [r["settings"].get(k, {}) for r in rows]
            ys = [v.get(metric) if metric != "subject_fit" else v.get(metric, {}).get("score")
                  for v in vals]
            ax.scatter([i + 0.12 * (j - len(keys) / 2) for i in x], ys, label=k, s=18, zorder=3)
        ax.set_xticks(list(x), [r["user"].split("-")[0] for r in rows], fontsize=7, rotation=45)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(f"{doc['run_info']['config'].get('recipe')} on "
                 f"{doc['run_info']['config'].get('base')}", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def drafts_markdown(path: Path, per_user: int = 5) -> Path:
    """The drafts of every setting beside the real message on the same subject, per user
    (the first ``per_user`` eval prompts), as Markdown beside the results file."""
    doc = json.loads(path.read_text())
    cfg = doc["run_info"]["config"]
    lines = [f"# Drafts beside the real messages: {cfg.get('recipe')} on {cfg.get('base')}", "",
             f"Generated by `bench/levers.py --drafts {path.name}` from {path.name} (run"
             f" {doc['run_info']['started']}, commit {doc['run_info']['git']}"
             f"{' dirty' if doc['run_info'].get('git_dirty') else ''}). The first {per_user}"
             " frozen eval prompts of each user; the real message was never trained on.", ""]
    quote = lambda t: "\n".join("> " + x if x else ">" for x in t.strip().splitlines())  # noqa
    for r in doc["rows"]:
        lines += [f"## {r['user']}", ""]
        keys = sorted(r["settings"])
        for i in range(min(per_user, len(r["settings"][keys[0]]["samples"]))):
            sample = r["settings"][keys[0]]["samples"][i]
            lines += [f"### {sample['subject']}", "", "**real**", "", quote(sample["real"]), ""]
            for k in keys:
                lines += [f"**{k}**", "", quote(r["settings"][k]["samples"][i]["draft"]), ""]
    out = path.with_name(path.stem + "_drafts.md")
    out.write_text("\n".join(lines) + "\n")
    return out


#: the config keys a resumed run must share with the rows it keeps (what and how it scores)
SCORING_KEYS = ("recipe", "settings", "best_of", "pick", "limit", "batch", "max_new_tokens",
                "fit_tokens", "base", "reader", "home")
#: what a results file made before a key existed was scored with
BEFORE = {"pick": "style"}


def resumed(path: Path, config: dict) -> tuple[list[dict], list[dict]]:
    """The rows of an earlier run of this results file, and its run_info (plus CPU) under
    ``earlier_runs``; refused with a one-line error when it scored differently."""
    if not path.exists():
        return [], []
    doc = json.loads(path.read_text())
    info = doc["run_info"]
    old = {k: info["config"].get(k, BEFORE.get(k)) for k in SCORING_KEYS}
    differ = [k for k in SCORING_KEYS if old[k] != config.get(k)]
    if differ:
        raise SystemExit(f"{path}: cannot resume, it was scored with other "
                         + ", ".join(f"{k} ({old[k]!r} vs {config.get(k)!r})"
                                     for k in differ))
    rows = doc.get("rows", [])
    for r in rows:
        r.setdefault("run_started", info["started"])
    earlier = [*doc.get("earlier_runs", []),
               {**info, "cpu": doc.get("meta_info", {}).get("cpu")}]
    return rows, earlier


def main(argv: list[str] | None = None) -> int:
    from idiolect.evaluate.sense import FIT_TOKENS  # the same reader tokens as `eval --reader`

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="e1-250")
    ap.add_argument("--settings", nargs="+", default=["0.7/0.9/1.1"],
                    help="temperature/top_p/repetition_penalty")
    ap.add_argument("--best-of", type=int, nargs="+", default=[1],
                    help="N samples per prompt, best by the training-pool scorer (several: one"
                         " generation of the largest N, each N scored on its first N samples)")
    ap.add_argument("--pick", default="style",
                    help="with --best-of N > 1: comma-separated rankers of idiolect.draft.rank"
                         " (style, sense, both), each scored on the same samples")
    ap.add_argument("--users", default="", help="comma-separated (default: all 12)")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--reader", default="qwen2.5-coder-0.5b")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--fit-tokens", type=int, default=FIT_TOKENS,
                    help="reader tokens per body for subject fit (real and generated alike)")
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "levers-home")
    ap.add_argument("--name", default="")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of this run's results file (same recipe and scoring"
                         " settings, else refused) and score only the users it lacks")
    ap.add_argument("--plot", type=Path, help="only redraw the plot of this results file")
    ap.add_argument("--drafts", type=Path, help="only write the drafts Markdown of this file")
    ap.add_argument("--compare", type=Path, nargs="+",
                    help="only compare these results files' recipes with the first's, paired"
                         " by user on --setting (written to --name, default levers_recipes)")
    ap.add_argument("--setting", default="1.0/0.95/1.0 x1", help="with --compare")
    args = ap.parse_args(argv)
    if args.plot:
        print(plot(args.plot))
        return 0
    if args.drafts:
        print(drafts_markdown(args.drafts))
        return 0
    if args.compare:
        print(compare(args.compare, args.setting, args.name or "levers_recipes"))
        return 0
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731


    from idiolect.bases import load as bases
    from idiolect.evaluate.calibrate import calibrate, score_texts
    from idiolect.evaluate.novelty import novelty
    from idiolect.evaluate.run import EvalConfig, cohort, cohort_models, perplexity
    from idiolect.evaluate.sense import other_subjects, subject_fit, subject_overlap
    from idiolect.draft import other_training_subjects, self_fit
    from idiolect.compile.retrieve import UserShots, adapter_recipe
    from idiolect.generate import generate_bodies, load_for_inference, merged
    from idiolect.home import Home
    from idiolect.vault import store

    pickers = sorted(set(args.pick.split(",")))
    args.pick = ",".join(pickers)  # as the run's config records it (and --resume compares)
    if bad := set(pickers) - {"style", "sense", "both"}:
        ap.error(f"--pick: unknown ranker {', '.join(sorted(bad))}")
    name = args.name or f"levers_{args.recipe}"
    run = Run(name, {k: str(v) for k, v in vars(args).items()})
    run.results["recipe"] = {"name": args.recipe, "examples": RECIPES[args.recipe][0],
                             "over_defaults": RECIPES[args.recipe][1]}
    run.results["rows"] = []
    if args.resume:
        run.results["rows"], run.results["earlier_runs"] = resumed(RESULTS / f"{name}.json",
                                                                   run.config)
        if run.results["rows"]:
            run.results["summary"] = summary(run.results["rows"])
    with Home.open(args.home) as home:
        users = setup(home)
        if args.users:
            users = [u for u in users if u in args.users.split(",")]
        done = {r["user"] for r in run.results["rows"]}
        if done:
            log(f"resuming: {len(done)} users already scored ({', '.join(sorted(done))})")
        users = [u for u in users if u not in done]
        members = cohort(home.conn)
        scaler, clf = cohort_models(home, members.reference)
        reader, rtok = bases.load(bases.resolve(home, args.reader), progress=log)
        for user in users:
            t_user = time.perf_counter()
            adapter_id, timing = compile_for(home, user, args.base, args.recipe, log)
            log(f"{user}: adapter {adapter_id} " + (json.dumps(timing) if timing else "(found)"))
            held = store.eval_messages(home.conn, user)[: args.limit]
            prompts = [(m.subject, m.to) for m in held]
            heldout, subjects = [m.body for m in held], [m.subject for m in held]
            others_subj = other_subjects(subjects, [m.subject for m in store.reference_messages(
                home.conn, user)], seed=1)
            others = {u: t for u, t in members.held.items() if u != user}
            calib = calibrate(user, heldout, members.reference[user], others, scaler, clf)
            real_fit = subject_fit(reader, rtok, subjects, heldout, others_subj,
                                   max_body_tokens=args.fit_tokens)
            model, tok, arow = load_for_inference(home, args.base, adapter_id)
            recipe = adapter_recipe(arow)  # shots: the same prompts as `idiolect eval` builds
            shots_of = UserShots(home.conn, user, recipe, tok)
            shots = [shots_of(s) for s in subjects]
            prompts = [(*p, sh) for p, sh in zip(prompts, shots)]
            ppl = perplexity(model, tok, held, EvalConfig().perplexity_tokens, shots)
            row = {"user": user, "adapter": adapter_id, "compile": timing, "n": len(held),
                   "run_started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.start)),
                   "perplexity": round(ppl, 3),
                   "calibration": {m: {k: calib[m][k] for k in ("ceiling", "floor")}
                                   for m in ("authorship_probability", "fingerprint_distance")},
                   "real_subject_fit": {k: real_fit[k] for k in ("score", "interval")},
                   "real_subject_overlap": {k: v for k, v in subject_overlap(
                       subjects, heldout).items() if k in ("score", "interval")},
                   "settings": {}}

            def score(row, key, cfg, texts, gen_wall, gen_cpu):  # this user's: called here
                s = score_texts(texts, user, heldout, scaler, clf)
                nov = novelty(texts, members.train[user])
                fit = subject_fit(reader, rtok, subjects, texts, others_subj,
                                  max_body_tokens=args.fit_tokens)
                ov = subject_overlap(subjects, texts)
                row["settings"][key] = {
                    "generation": asdict(cfg),
                    "authorship_probability": s["authorship_probability"],
                    "fingerprint_distance": s["fingerprint_distance"],
                    "intervals": s["intervals"],
                    "subject_fit": {k: fit[k] for k in ("score", "interval")},
                    "subject_overlap": {k: ov[k] for k in ("score", "interval")},
                    "novelty": {k: nov[k] for k in ("copied_ngram_share", "flagged", "verbatim")},
                    "generate_wall_s": round(gen_wall, 1), "generate_cpu_s": round(gen_cpu, 1),
                    "samples": [{"subject": m.subject, "real": m.body, "draft": t}
                                for m, t in list(zip(held, texts))[:5]],
                }
                log(f"{user} {key}: authorship {s['authorship_probability']:.3f}"
                    f" (ceiling {calib['authorship_probability']['ceiling']:.3f}), distance"
                    f" {s['fingerprint_distance']:.3f} (floor"
                    f" {calib['fingerprint_distance']['floor']:.3f}), subject fit"
                    f" {fit['score']:.3f} (real {real_fit['score']:.3f}), verbatim"
                    f" {nov['verbatim']}, {gen_wall:.0f}s")
            for spec in args.settings:
                cfg = setting_cfg(spec, args.batch, args.max_new_tokens)
                most = max(args.best_of)
                w, c = time.perf_counter(), time.process_time()
                fits, fit_wall, fit_cpu = None, 0.0, 0.0
                with merged(model):  # as `idiolect eval` and `draft` generate
                    flat = generate_bodies(model, tok, [p for p in prompts for _ in range(most)],
                                           cfg)
                    gen_wall, gen_cpu = time.perf_counter() - w, time.process_time() - c
                    groups = [flat[i:i + most] for i in range(0, len(flat), most)]
                    if most > 1 and set(pickers) - {"style"}:
                        t, tc = time.perf_counter(), time.process_time()  # the first n of the
                        # largest N's fits are the n's: each body's is its own
                        pool = [m.subject for m in store.training_messages(home.conn, user)[0]]
                        fits = []
                        for m, g, sh in zip(held, groups, shots):
                            others = other_training_subjects(m.subject, pool)
                            fits.append(self_fit(model, tok, m.subject, g, others,
                                                 shots=[sh, *map(shots_of, others)]))
                        fit_wall, fit_cpu = time.perf_counter() - t, time.process_time() - tc
                for n in args.best_of:  # x1: each prompt's first sample; xN: the best of N
                    for by in (["style"] if n == 1 else pickers):
                        texts = ([g[0] for g in groups] if n == 1 else pick_best(
                            home, user, [g[:n] for g in groups], members, by,
                            None if by == "style" else [f[:n] for f in fits]))
                        key = f"{spec} x{n}" + ("" if by == "style" or n == 1 else f" {by}")
                        fit = by != "style" and n > 1  # the fits' cost is the ranker's
                        score(row, key, cfg, texts, (gen_wall + fit * fit_wall) * n / most,
                              (gen_cpu + fit * fit_cpu) * n / most)
            del model
            row["seconds"] = round(time.perf_counter() - t_user, 1)
            run.results["rows"].append(row)
            run.results["summary"] = summary(run.results["rows"])
            run.write("partial")
    path = run.write()
    print(f"wrote {path}, {plot(path)} and {drafts_markdown(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
