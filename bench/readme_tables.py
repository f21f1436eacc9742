"""Generate the README's measured tables from bench/results/*.json, so no number is typed by hand.

The README marks each generated block:

    <!-- generated: NAME -->
    ...
    <!-- /generated -->

and this script rewrites what is between the markers from the results file(s) that NAME reads,
in README.md (the one summary table) and bench/README.md (the details).
`tests/test_docs.py` checks the README is up to date with the results in the repo.

    .venv/bin/python bench/readme_tables.py          # rewrite README.md in place
    .venv/bin/python bench/readme_tables.py --check  # exit 1 if it would change
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BENCH_README = ROOT / "bench" / "README.md"
DOCS = (README, BENCH_README, ROOT / "docs" / "metrics.md")   # the files with generated blocks
sys.path.insert(0, str(ROOT / "bench"))  # levers.summary: the lever tables' cohort means
from common import cpu_label  # noqa: E402
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)",
                   re.S)


#: the runs that time `idiolect compile`'s default recipe at 250 messages, newest first: the
#: summary's compile lines come from the first that finished its "default" variant
COMPILE_DEFAULT_RUNS = ("compile_lora_250", "compile_default_250")


def _has_default(name: str) -> bool:
    path = RESULTS / f"{name}.json"
    return path.exists() and any(v.get("variant") == "default" and "compile_wall_s" in v
                                 for v in json.loads(path.read_text()).get("variants", []))


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _provenance(doc: dict) -> str:
    ri = doc["run_info"]
    cpu = cpu_label(doc.get("meta_info", {}).get("cpu"))
    dirty = {True: ", uncommitted changes", False: "", None: ""}[ri.get("git_dirty")]
    return (f"`{ri['command']}`; commit {ri.get('git') or '?'}{dirty}; {cpu};"
            f" {ri['wall_s']:.0f} s; status {ri['status']}")


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _gb(mb: float) -> str:
    """Megabytes as the tables show memory: GB of 1024 MB, one decimal."""
    return f"{mb / 1024:.1f} GB"


def honest_scores() -> str:
    d = _load("honest_scores")
    rows = []
    for proto, label in (("old", "first protocol: scorers fitted on training messages"),
                         ("new", "now: scorers fitted on the reference split")):
        r = d[proto]
        ap = [v["authorship_probability"] for v in r.values()]
        fd = [v["fingerprint_distance"] for v in r.values()]
        above = sum(v["memorizer"] > v["ceiling"] for v in ap)
        closer = sum(v["memorizer"] < v["ceiling"] for v in fd)
        rows.append(f"| {label} | {_mean(v['ceiling'] for v in ap):.3f} |"
                    f" {_mean(v['memorizer'] for v in ap):.3f} ({above} of {len(ap)}) |"
                    f" {_mean(v['floor'] for v in ap):.3f} |"
                    f" {_mean(v['ceiling'] for v in fd):.3f} |"
                    f" {_mean(v['memorizer'] for v in fd):.3f} ({closer} of {len(fd)}) |")
    split = d["split"].values()
    n = len(d["split"])
    eq_old = sum(v["leaks_old"]["equal"] for v in split)
    half_old = sum(v["leaks_old"]["half_inside_one"] for v in split)
    eq_new = sum(v["leaks_new"]["equal"] for v in split)
    half_new = sum(v["leaks_new"]["half_inside_one"] for v in split)
    evals = sum(v["eval"] for v in split)
    return "\n".join([
        f"Means over the {n} git authors ({_provenance(d)}). A *memorizer* answers each eval prompt"
        " with one of the author's training messages; in parentheses, for how many authors it"
        " scores better than the author's own held-out text (the ceiling).",
        "",
        "| protocol | authorship: ceiling | memorizer | floor | distance: ceiling | memorizer |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Eval bodies repeating a training message: {eq_old} of {evals} equal and {half_old} with"
        f" half their 8-grams inside one under the first split; {eq_new} and {half_new} now"
        " (eval and reference bodies, against the training pool).",
    ]) + "\n"


def metrics_reference() -> str:
    """docs/metrics.md's reference: each protocol's ceilings and floors (means over the
    authors) and its classifier's top-1 accuracy and log loss on the held-out messages."""
    d = _load("honest_scores")
    rows = ["| scorers fitted on | distance: ceiling / floor / closest other | authorship:"
            " ceiling / floor / closest other | top-1 accuracy (log loss) | chance |",
            "|---|---|---|---|---|"]
    for proto, label in (("new", "the reference split (now)"),
                         ("old", "the training messages (first protocol)")):
        r, c = d[proto], (d.get("classifier") or {}).get(proto)
        cells = []
        for m in ("fingerprint_distance", "authorship_probability"):
            v = [x[m] for x in r.values()]
            best = (f"{_mean(x['floor_best'] for x in v):.3f}" if all("floor_best" in x for x in v)
                    else "not in this run")
            cells.append(f"{_mean(x['ceiling'] for x in v):.3f} / {_mean(x['floor'] for x in v):.3f}"
                         f" / {best}")
        acc = f"{c['top1_accuracy']:.2f} ({c['log_loss']:.2f} nats)" if c else "not in this run"
        rows.append(f"| {label} | {cells[0]} | {cells[1]} | {acc} |"
                    f" {1 / len(r):.3f} |")
    return (f"Means over the {len(d['new'])} git authors, 50 held-out messages each"
            f" ({_provenance(d)}).\n\n" + "\n".join(rows) + "\n")


def sense() -> str:
    d = _load("sense")
    head = ["| user | n | subject fit: real (ceiling) | adapter | bare base | real body, wrong"
            " subject (control) |", "|---|---|---|---|---|---|"]
    rows = []

    def f(x: dict) -> str:
        lo, hi = x["interval"]["ci"]
        return f"{x['score']:.3f} [{lo:.3f}, {hi:.3f}]"

    for r in d["rows"]:
        s = r["subject_fit"]
        rows.append(f"| {r['user']} | {r['n']} | {f(s['real'])} | {f(s['adapter'])} |"
                    f" {f(s['base'])} | {f(s['real_wrong_subject'])} |")
    return "\n".join([f"{_provenance(d)}. Reader {d['run_info']['config'].get('reader')};"
                      " nats per token; 95% bootstrap intervals over the prompts.", "", *head,
                      *rows]) + "\n"


def decoding() -> str:
    d = _load("decoding")
    cfg = d["run_info"]["config"]

    def ci(x: dict) -> str:
        lo, hi = x["ci"]
        return f"[{lo:.3f}, {hi:.3f}]"

    rows = ["| decoding (temperature / top-p / repetition penalty) | authorship | fingerprint"
            " distance | subject fit | verbatim copies |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        iv = r["intervals"]
        rows.append(f"| {r['setting']} | {r['authorship_probability']:.3f}"
                    f" {ci(iv['authorship_probability'])} | {r['fingerprint_distance']:.3f}"
                    f" {ci(iv['fingerprint_distance'])} | {r['subject_fit']['score']:.3f}"
                    f" {ci(r['subject_fit']['interval'])} | {r['novelty']['verbatim']} |")
    return "\n".join([f"{_provenance(d)}. User {cfg.get('user')}, {d['rows'][0]['n']} eval prompts,"
                      " 95% bootstrap intervals.", "", *rows]) + "\n"


def serve_load(name: str = "serve_load") -> str:
    d = _load(name)
    cells = d["cells"]
    rows = ["| mode | clients | adapters | tokens/s | TTFT p50 / p95 ms | per token p50 / p95 ms |"
            " rows per pass | rows that joined a running batch |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        rows.append(f"| {c['mode']} | {c['clients']} | {c['adapters']} | {c['tokens_per_s']} |"
                    f" {c['ttft_ms']['p50']:.0f} / {c['ttft_ms']['p95']:.0f} |"
                    f" {c['tpot_ms']['p50']:.0f} / {c['tpot_ms']['p95']:.0f} |"
                    f" {c.get('rows_per_pass', '')} | {c.get('joined_rows', 'not recorded')} |")
    by = {(c["mode"], c["clients"], c["adapters"]): c for c in cells}
    goal = ""
    mixed, serial = by.get(("mixed", 16, 12)), by.get(("serial", 16, 12))
    if mixed and serial:
        goal = (f" With 16 clients over 12 adapters, mixed batching gives"
                f" {mixed['tokens_per_s'] / serial['tokens_per_s']:.1f}x the tokens/s of one"
                f" request at a time (goal 5x); p95 time to first token"
                f" {mixed['ttft_ms']['p95'] / 1000:.2f} s (goal under 2 s).")
    nojoin = by.get(("mixed-nojoin", 16, 12))
    if mixed and nojoin:
        goal += (f" Rows joining a running batch (mixed) vs waiting for it to end (mixed-nojoin):"
                 f" {mixed['tokens_per_s'] / nojoin['tokens_per_s']:.1f}x the tokens/s, p95 time"
                 f" to first token {mixed['ttft_ms']['p95'] / 1000:.2f} vs"
                 f" {nojoin['ttft_ms']['p95'] / 1000:.2f} s.")
    peft = by.get(("mixed-peft", 16, 12))
    if mixed and peft:
        goal += (f" Stacked LoRA (mixed, the default) vs PEFT's mixed batch (mixed-peft):"
                 f" {mixed['tokens_per_s'] / peft['tokens_per_s']:.1f}x the tokens/s.")
    return "\n".join([f"{_provenance(d)}; base {d['meta_info'].get('base')}.{goal}", "",
                      *rows]) + "\n"


def serve_repeats(name: str = "serve_load_repeats") -> str:
    """A ``--repeats`` run of serve_load: per cell and mode the rounds' mean with its 95%
    t-interval, the speedup paired within rounds, and what the goals' intervals say."""
    d = _load(name)
    rows = ["| mode | clients | adapters | rounds | tokens/s | speedup vs serial |"
            " TTFT p95 s (per round) | TTFT p95 s (pooled) |", "|---|---|---|---|---|---|---|---|"]
    goals = ""
    for s in d["summary"]:
        sp = s.get("speedup_vs_serial")
        speedup = f"{sp['mean']:.2f}x {_ci(sp, 2)}" if sp else ""
        rows.append(f"| {s['mode']} | {s['clients']} | {s['adapters']} | {s['rounds']} |"
                    f" {s['tokens_per_s']['mean']:.1f} {_ci(s['tokens_per_s'], 1)} |"
                    f" {speedup} |"
                    f" {s['ttft_p95_s']['mean']:.2f} {_ci(s['ttft_p95_s'], 2)} |"
                    f" {s['ttft_p95_pooled_s']:.2f} |")
        if "goals" in s and s["mode"] == "mixed" and sp:
            g = s["goals"]
            goals = (f" With 16 clients over 12 adapters, over {s['rounds']} rounds: mixed batching"
                     f" gives {sp['mean']:.2f}x {_ci(sp, 2)} the tokens/s of one request at a time"
                     f" (goal 5x: {g['speedup']}); p95 time to first token"
                     f" {s['ttft_p95_s']['mean']:.2f} s {_ci(s['ttft_p95_s'], 2)} (goal under 2 s:"
                     f" {g['ttft_p95']}).")
    return "\n".join([f"{_provenance(d)}; base {d['meta_info'].get('base')}. 95% t-intervals"
                      f" over rounds.{goals}", "", *rows]) + "\n"


def _ci(x: dict, digits: int = 3) -> str:
    lo, hi = x["ci"]
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _paired(diff: dict) -> str:
    """A paired difference's scores: authorship, distance, subject fit (and perplexity); the
    bootstrap interval, and the t-interval where the file has one."""
    def both(x: dict, digits: int) -> str:
        t = f" (t {_ci({'ci': x['t_ci']}, digits)})" if "t_ci" in x else ""
        return _ci(x, digits) + t

    parts = [f"{what} {diff[key]['mean']:+.3f} {both(diff[key], 3)}" for what, key in (
        ("authorship", "authorship_probability"), ("distance", "fingerprint_distance"),
        ("subject fit", "subject_fit"))]
    if "perplexity" in diff:
        parts.append(f"held-out perplexity {diff['perplexity']['mean']:+.2f}"
                     f" {both(diff['perplexity'], 3)}")
    return ", ".join(parts)


def levers(name: str = "levers_e1-250") -> str:
    """The cohort summary of one bench/levers.py run: a row per decoding setting."""
    from levers import summary  # the cohort means, from the per-user rows

    d = _load(name)
    rec = d.get("recipe", {})
    rows = ["| setting (T / top-p / rep. x best-of) | users | authorship (ceiling) | share of"
            " ceiling | distance below floor | subject fit (real bodies) | copies: verbatim /"
            " 20-word span |",
            "|---|---|---|---|---|---|---|"]
    for k, v in summary(d["rows"]).items():
        ap, share, fit, real = (v["authorship_probability"], v["share_of_ceiling"],
                                v["subject_fit"], v["real_subject_fit"])
        rows.append(f"| {k} | {v['users']} | {ap['mean']:.3f} {_ci(ap)} ({v['ceiling']:.3f}) |"
                    f" {share['mean']:.2f} {_ci(share)} | {v['distance_below_floor']} of"
                    f" {v['users']} | {fit['mean']:.3f} {_ci(fit)} ({real['mean']:.3f}) |"
                    f" {v['verbatim']} / {v['flagged']} |")
    paired = []
    for k, v in summary(d["rows"]).items():
        if "subject_overlap" in v:
            ov, real_ov = v["subject_overlap"], v["real_subject_overlap"]
            paired.append(f"{k}: subject overlap {ov['mean']:.3f} {_ci(ov)} (real bodies"
                          f" {real_ov['mean']:.3f} {_ci(real_ov)}).")
        for name, diff in v.items():
            if name.startswith("minus_"):
                paired.append(f"{k} minus {name[6:]}, paired by user: {_paired(diff)}"
                              + (f", subject overlap {diff['subject_overlap']['mean']:+.3f}"
                                 f" {_ci(diff['subject_overlap'])}"
                                 if "subject_overlap" in diff else "") + ".")
    n = d["rows"][0]["n"] if d["rows"] else 0
    # each row's CPU is that of the run that scored it (--resume keeps earlier runs' rows)
    runs = {e.get("started"): (e.get("git"), e.get("cpu") or {})
            for e in d.get("earlier_runs", []) if isinstance(e.get("cpu") or {}, dict)}
    runs[d["run_info"]["started"]] = (d["run_info"].get("git"),
                                      (d.get("meta_info") or {}).get("cpu") or {})
    by_run: dict = {}
    for r in d["rows"]:  # a row of a run not listed: counted as an unknown run's
        by_run.setdefault(r.get("run_started", d["run_info"]["started"]), []).append(r)
    for t in by_run:
        runs.setdefault(t, ("?", {}))
    kept: dict = {}  # the earlier runs' rows, by commit and CPU
    for t, rs in by_run.items():
        if t != d["run_info"]["started"]:
            kept.setdefault((runs[t][0], cpu_label(runs[t][1])), []).extend(r["user"] for r in rs)
    earlier = [f"{len(us)}" + (" (" + ", ".join(us) + ")" if len(us) <= 3 else "")
               + f" at {git} on {label}" for (git, label), us in kept.items()]
    cpu = (f" Rows of earlier runs kept by --resume: {'; '.join(earlier)}." if earlier else "")
    by_cpu: dict = {}  # the compile costs of one CPU (name and cores) each
    for t, rs in by_run.items():
        info = runs[t][1]
        by_cpu.setdefault((cpu_label(info), info.get("cores")), (info, []))[1].extend(rs)
    for (label, _), (info, rs) in by_cpu.items():
        # a compile resumed from an earlier run's checkpoint timed only its own part: left out
        comp = [r["compile"] for r in rs
                if r.get("compile") and not r["compile"].get("resumed_from_step")]
        if not comp:
            continue
        cores = info.get("cores")
        # the compile's torch threads: the recipe's, or all cores (the default 0)
        threads = (min((rec.get("over_defaults") or {}).get("threads") or cores, cores)
                   if cores else None)
        alone = [c for c in comp if threads and had_the_cpu(c, threads)]
        cpu += (f" Compile per user on {label}: {_mean(c['cpu_s'] for c in comp) / 60:.1f} CPU"
                f" min (mean of {len(comp)})" + (
                    f", {_mean(c['wall_s'] for c in alone) / 60:.1f} min wall (mean of the"
                    f" {len(alone)} that had {'the' if threads == cores else f'{threads} of the'}"
                    f" {cores} cores to themselves)." if alone else
                    ", no wall time (none had the cores it ran on to itself)."))
    return "\n".join([f"{_provenance(d)}. Recipe {rec.get('name')} ({rec.get('examples')}"
                      f" messages, {rec.get('over_defaults')} over the defaults) on"
                      f" {d['run_info']['config'].get('base')}; {n} eval prompts per user;"
                      f" means over users with 95% bootstrap intervals over users.{cpu}", "",
                      *rows, *(["", *paired] if paired else [])]) + "\n"


def had_the_cpu(timing: dict, cores: int) -> bool:
    """Whether a timed step ran on all ``cores`` for (nearly) all its wall time: its process's
    CPU time is at least 90% of cores x wall. A step that shared the machine, or sat stopped
    while another job was timed, falls below that, and its wall time is no measurement."""
    return timing.get("cpu_s") is not None and timing["cpu_s"] >= 0.9 * cores * timing["wall_s"]


def personalize(names: tuple[str, ...] = ("personalize", "personalize_honest")) -> str:
    """bench/personalize.py's runs one above the other, per user: the bare base and the adapter
    beside the author's ceiling and floor (their protocol and recipe differ: each run's line)."""
    rows = ["| user | run | authorship: base -> adapter [interval] (ceiling / floor) |"
            " distance: base -> adapter (ceiling / floor) | perplexity: base -> adapter |"
            " compile s | gate |", "|---|---|---|---|---|---|---|"]
    runs = []
    for name in names:
        try:
            runs.append((name, _load(name)))
        except FileNotFoundError:
            continue
    users = sorted({r["user"] for _, d in runs for r in d["users"]})
    for u in users:
        for name, d in runs:
            r = next((x for x in d["users"] if x["user"] == u), None)
            if r is None:
                continue
            a, b, c = r["adapter"], r["base"], r["calibration"]
            iv = (a.get("intervals") or {}).get("authorship_probability")
            g = r.get("gate") or {}
            rows.append(
                f"| {u} | `{name}` | {b['authorship_probability']:.3f} ->"
                f" {a['authorship_probability']:.3f}{' ' + _ci(iv) if iv else ''}"
                f" ({c['authorship_probability']['ceiling']:.3f} /"
                f" {c['authorship_probability']['floor']:.3f}) |"
                f" {b['fingerprint_distance']:.3f} -> {a['fingerprint_distance']:.3f}"
                f" ({c['fingerprint_distance']['ceiling']:.3f} /"
                f" {c['fingerprint_distance']['floor']:.3f}) |"
                f" {b['perplexity']:.1f} -> {a['perplexity']:.1f} |"
                f" {r['compile'].get('total_s', 0):.0f} | {_verdict(g)} |")
    lines = []
    for name, d in runs:
        cfg, rec = d["run_info"]["config"], d.get("recipe")
        proto = next((r.get("protocol") for r in d["users"] if r.get("protocol")), None)
        recipe = (f"recipe: lr {rec['lr']:g}, {rec['epochs']:g} epochs, {rec.get('shots', 0)}"
                  f" shots, LoRA on {', '.join(rec['target_modules'])}, base"
                  f" {rec.get('base_dtype', 'float32')}"
                  + (f" ({rec['base_dtype_resolved']} on its CPU)"
                     if rec.get("base_dtype_resolved") not in (None, rec.get("base_dtype")) else "")
                  if rec else
                  f"epochs {float(cfg.get('epochs')):g}, the rest of the recipe of its day (not"
                  " in the file)")
        lines.append(f"`{name}`: {_provenance(d)}. {cfg.get('examples')} messages, {recipe};"
                     " scorers: "
                     + (f"protocol {proto} (fitted on the reference splits)." if proto else
                        "the first protocol (fitted on the training messages)."))
    return "\n\n".join(lines) + "\n\n" + "\n".join(rows) + "\n"


def _verdict(g: dict) -> str:
    """A gate record in words: passed, refused (promoted regardless when forced), not run."""
    if not g:
        return "not recorded"
    said = {True: "passed", False: "refused", None: "not run"}[g.get("passed")]
    return said + (", promoted by force" if g.get("forced") and not g.get("passed") else "")


def levers_recipes(name: str = "levers_recipes") -> str:
    """Recipes of separate bench/levers.py runs against the first, paired by user (levers.compare)."""
    d = _load(name)
    cfg = d["run_info"]["config"]
    rows = ["| recipe (results file: CPU; commit) | users | authorship | share of ceiling |"
            " distance below floor | subject fit (real bodies) | held-out ppl |"
            " copies: verbatim / 20-word span |",
            "|---|---|---|---|---|---|---|---|"]
    paired = []
    bases = {r.get("base") for r in d["recipes"]}  # a base lever: each row names its base
    for r in d["recipes"]:
        v = r["summary"]
        ap, share, fit, real = (v["authorship_probability"], v["share_of_ceiling"],
                                v["subject_fit"], v["real_subject_fit"])
        ppl = _mean(u["perplexity"] for u in r["per_user"].values())
        dirty = " (uncommitted changes)" if r.get("git_dirty") else ""
        status = "" if r["status"] == "ok" else f", status {r['status']}"
        earlier = [f"{e['git']}{' (uncommitted changes)' if e.get('git_dirty') else ''}"
                   + (f" on {e['cpu']}" if e.get("cpu") not in (None, r["cpu"]) else "")
                   for e in r.get("earlier_runs", [])]
        if earlier:
            status += "; rows resumed from " + ", ".join(dict.fromkeys(earlier))
        on = f" on {r['base']}" if "base" in r and len(bases) > 1 else ""
        rows.append(f"| {r['recipe']['name']}{on} (`{r['file']}`: {r['cpu']}; {r['git']}{dirty}"
                    f"{status}) | {v['users']} | {ap['mean']:.3f} {_ci(ap)} |"
                    f" {share['mean']:.2f} {_ci(share)} | {v['distance_below_floor']} of"
                    f" {v['users']} | {fit['mean']:.3f} {_ci(fit)} ({real['mean']:.3f}) |"
                    f" {ppl:.2f} | {v['verbatim']} / {v['flagged']} |")
        diff = r.get("minus_first")
        if diff:
            first = d["recipes"][0]
            paired.append(f"{r['recipe']['name']}{on} minus {first['recipe']['name']}"
                          + (f" on {first['base']}" if on else "")
                          + f", paired by user ({diff['users']}): {_paired(diff)}.")
    left = sorted({u for r in d["recipes"] for u in r.get("left_out", [])})
    if left:
        paired.append(f"Left out (not scored by every run, or on other eval sets):"
                      f" {', '.join(left)}.")
    return "\n".join([f"{_provenance(d)}. Decoding {cfg['setting']}; means over users with 95%"
                      " bootstrap intervals over users; a user pairs only where both runs"
                      " scored the same frozen eval and reference sets (equal ceilings, floors"
                      " and real subject fit). Quality only: the runs' times are not compared."
                      " Copies: the generated texts, over all users, equal to a training message"
                      " or repeating 20 words of one (the gate refuses an adapter when one of"
                      " its own eval generations does)."
                      + (" Perplexity counts each base's own tokens: not comparable across"
                         " bases, and not paired." if len(bases) > 1 else ""),
                      "", *rows, "", *paired]) + "\n"


def _src(name: str, doc: dict) -> str:
    ri = doc["run_info"]
    cpu = cpu_label(doc.get("meta_info", {}).get("cpu"))
    peak = doc.get("meta_info", {}).get("matmul_peak_gflops")
    half = doc.get("meta_info", {}).get("matmul_peak_gflops_bf16")
    dirty = " (uncommitted changes)" if ri.get("git_dirty") else ""
    return (f"`{name}.json`: {cpu}{f', {peak:.0f} GFLOP/s peak' if peak else ''}"
            f"{f' ({half:.0f} in bfloat16)' if half else ''};"
            f" {ri.get('git') or '?'}{dirty}")


#: issue #17's goal run: the default compile on 500 messages (bench/levers.py --recipe
#: default-bf16-500); once it holds all 12 authors, the summary's quality lines are its own
GOAL_LEVERS_RUN = "levers_default-bf16-500"


def best_levers_run() -> str:
    """The summary's quality lines: the goal run once complete; before, the complete 12-author
    bench/levers.py run (status ok) whose best decoding setting, best-of 1, has the highest
    share of the ceiling."""
    from levers import summary as lever_summary

    goal = RESULTS / f"{GOAL_LEVERS_RUN}.json"
    if goal.exists() and len(json.loads(goal.read_text()).get("rows", [])) >= 12:
        return GOAL_LEVERS_RUN
    best, score = "levers_e1-250", -1.0
    for path in sorted(RESULTS.glob("levers_*.json")):
        d = json.loads(path.read_text())
        if d["run_info"].get("status") != "ok" or "rows" not in d or len(d["rows"]) < 12:
            continue
        for k, v in lever_summary(d["rows"]).items():
            if k.endswith(" x1") and v["share_of_ceiling"]["mean"] > score:
                best, score = path.stem, v["share_of_ceiling"]["mean"]
    return best


def summary() -> str:
    """The README's one measured table: a line per goal, the figure reached, its file."""
    rows = ["| what | measured | goal | results file: CPU; commit |", "|---|---|---|---|"]

    def add(name: str, make) -> None:
        try:
            d = _load(name)
        except FileNotFoundError:
            rows.append(f"| {name} | not measured yet | | |")
            return
        for what, figure, goal in make(d):
            rows.append(f"| {what} | {figure} | {goal} | {_src(name, d)} |")

    def honest(d):
        ap = {proto: [v["authorship_probability"] for v in d[proto].values()]
              for proto in ("old", "new")}
        yield ("a memorizer (returns training messages) vs the author's real held-out text,"
               f" authorship probability, {len(ap['new'])} authors",
               f"{_mean(v['memorizer'] for v in ap['new']):.3f} vs"
               f" {_mean(v['ceiling'] for v in ap['new']):.3f} (first protocol:"
               f" {_mean(v['memorizer'] for v in ap['old']):.3f} vs"
               f" {_mean(v['ceiling'] for v in ap['old']):.3f})", "not above real text")

    def quality(d):
        from levers import summary as lever_summary

        # the setting `idiolect draft` uses by default (its sampling, best-of and ranking) where
        # the run has it; else the best decoding of one sample a prompt
        from idiolect.draft import BEST_OF, DEFAULT_RANK_BY
        from idiolect.generate import GenerationConfig as G

        default = (f"{G.temperature}/{G.top_p}/{G.repetition_penalty} x{BEST_OF}"
                   + (f" {DEFAULT_RANK_BY}" if BEST_OF > 1 and DEFAULT_RANK_BY != "style" else ""))
        every = lever_summary(d["rows"])
        s = ({default: every[default]} if default in every
             else {k: v for k, v in every.items() if k.endswith(" x1")})
        if not s:
            return
        k, v = max(s.items(), key=lambda kv: kv[1]["share_of_ceiling"]["mean"])
        rec = d.get("recipe", {}).get("name")
        which = "draft's default sampling and ranking" if k == default else "best decoding"
        tokens = d["run_info"]["config"].get("max_new_tokens")
        yield (f"drafts' authorship probability, share of the author's ceiling, cohort mean"
               f" ({v['users']} git authors, recipe {rec}, {which} {k},"
               f" {tokens} new tokens as sampled)",
               f"{v['share_of_ceiling']['mean']:.2f} {_ci(v['share_of_ceiling'])}"
               f" ({v['authorship_probability']['mean']:.3f} absolute)", ">= 0.9 (0.60 absolute)")
        yield ("fingerprint distance below the floor (closer than another author's text)",
               f"{v['distance_below_floor']} of {v['users']}", "12 of 12")
        yield ("subject fit of the drafts vs the real bodies (nats/token, read by"
               f" {d['run_info']['config'].get('reader')})",
               f"{v['subject_fit']['mean']:.3f} {_ci(v['subject_fit'])} vs"
               f" {v['real_subject_fit']['mean']:.3f} {_ci(v['real_subject_fit'])}",
               "within the real bodies' interval")

    def compile_speed(d):
        v = {r["variant"]: r for r in d["variants"] if "compile_wall_s" in r}
        if "default" in v:  # exactly what `idiolect compile` runs (the registry's recipe)
            r = v["default"]
            shots = f", {r['recipe']['shots']} shots" if r["recipe"].get("shots") else ""
            if "gate_proj" in r["recipe"].get("target_modules", ()):
                shots += ", LoRA on the MLP too"
            yield (f"compile with the default recipe ({r['recipe']['epochs']:g} epochs{shots},"
                   f" base in {r['recipe'].get('base_dtype', 'float32')}), {r['examples']}"
                   " messages, wall incl. load", f"{r['compile_wall_s']:.0f} s"
                   f" ({r['tokens_per_s']:.0f} tokens/s)", "<= 120 s at quality parity")
            f = r.get("flops", {})
            peak = ("share_of_bf16_peak" if r["recipe"].get("base_dtype") == "bfloat16"
                    else "share_of_peak")
            if peak in f:
                yield (f"compile with the default recipe: training FLOP/s, share of the"
                       f" {'bfloat16' if peak != 'share_of_peak' else 'float32'} matmul peak"
                       " measured in the run", f"{f[peak]:.0%} ({f['achieved_gflops']:.0f}"
                       " GFLOP/s)", ">= 70%")
        elif "idiolect" in v:
            r = v["idiolect"]
            yield (f"compile, {r['examples']} messages, {r['recipe']['epochs']:g} epoch, wall incl."
                   " load", f"{r['compile_wall_s']:.0f} s ({r['tokens_per_s']:.0f} tokens/s)",
                   "<= 120 s at quality parity")

    def memory(d):
        v = {r["variant"]: r for r in d["variants"] if "compile_peak_rss_mb" in r}
        if "idiolect_lowmem" in v:
            yield ("compile peak memory, `--low-memory` (default in parentheses)",
                   f"{v['idiolect_lowmem']['compile_peak_rss_mb'] / 1000:.2f} GB"
                   f" ({v['idiolect']['compile_peak_rss_mb'] / 1000:.2f} GB)", "<= 2 GB")

    def memory_large(d):
        v = {r["variant"]: r for r in d["variants"] if "compile_peak_rss_mb" in r}
        if "idiolect_lowmem_bf16" in v:
            yield (f"compile peak memory, {d['run_info']['config']['base']}, `--low-memory` with"
                   " the base in bfloat16 (recipe `base_dtype`)",
                   f"{v['idiolect_lowmem_bf16']['compile_peak_rss_mb'] / 1000:.2f} GB",
                   "<= 8 GB")

    def generation(d):
        # what eval and draft run: the adapter (merged when measured), against plain unbatched
        # `generate` with the adapter as a PEFT model (the bare base's rows are not counted)
        name = "with adapter (merged)" if "with adapter (merged)" in d else "with adapter (PEFT)"
        # the batch `idiolect eval` generates with, where the run has it; else the fastest
        from idiolect.evaluate.run import EvalConfig

        rows = d[name]["rows"]
        at = [r for r in rows if r["batch_size"] == EvalConfig().generation.batch_size]
        best = max(at or rows, key=lambda r: r["tokens_per_s"])
        x = best.get("speedup_vs_peft_unbatched", best.get("speedup"))
        yield (f"eval generation with an adapter ({name[14:-1]}), batched vs plain unbatched"
               " `generate`", f"{x:.1f}x ({best['tokens_per_s']:.0f} tokens/s, batch"
               f" {best['batch_size']})", ">= 10x")
        if "share_of_peak" in best.get("flops", {}):
            yield (f"eval generation with an adapter ({name[14:-1]}), batched: share of the"
                   " float32 matmul peak measured in the run",
                   f"{best['flops']['share_of_peak']:.0%} ({best['flops']['achieved_gflops']}"
                   f" of {d['meta_info']['matmul_peak_gflops']} GFLOP/s)", ">= 50%")

    def serving(d):
        by = {(c["mode"], c["clients"], c["adapters"]): c for c in d["cells"]}
        mixed, serial = by.get(("mixed", 16, 12)), by.get(("serial", 16, 12))
        if mixed and serial:
            yield ("serving 16 clients over 12 adapters: mixed batches vs one request at a time",
                   f"{mixed['tokens_per_s'] / serial['tokens_per_s']:.1f}x", ">= 5x")
            yield ("serving 16 clients over 12 adapters: p95 time to first token",
                   f"{mixed['ttft_ms']['p95'] / 1000:.2f} s", "< 2 s")

    def serving_repeats(d):
        (s,) = [s for s in d["summary"] if (s["mode"], s["clients"], s["adapters"])
                == ("mixed", 16, 12)]
        sp, g = s["speedup_vs_serial"], s["goals"]
        yield (f"serving 16 clients over 12 adapters, {s['rounds']} rounds: mixed batches vs one"
               " request at a time", f"{sp['mean']:.2f}x {_ci(sp, 2)}: {g['speedup']}", ">= 5x")
        yield (f"serving 16 clients over 12 adapters, {s['rounds']} rounds: p95 time to first"
               " token", f"{s['ttft_p95_s']['mean']:.2f} s {_ci(s['ttft_p95_s'], 2)}:"
               f" {g['ttft_p95']}", "< 2 s")

    def load(d):
        for r in d["rows"]:
            if r["base"] != "smollm2-135m":
                continue
            w = r["warm"][r["compile_dtype"]]
            yield (f"load of the default base ({r['base']}, {r['compile_dtype']}) in a new process,"
                   " wall incl. Python's imports: warm (first use, dequantizing, in parentheses)",
                   f"{w['wall_s_median']:.1f} s ({r['cold']['wall_s']:.0f} s)", "a few seconds")

    def selection(d):
        o, cfg = d["oracle"], d["run_info"]["config"]
        if cfg.get("corpus", "git-authors") == "git-authors":
            yield (f"neighbour selection, {o['of']} new git authors, catalog of"
                   f" {len(d['published'])}: top-1 equal to the oracle's (best held-out"
                   f" perplexity), card then local confirmation of the top {cfg['confirm']}"
                   " (card alone in parentheses)", f"{o['confirmed_is_best']} of {o['of']}"
                   f" ({o['selected_is_best']} of {o['of']})", ">= 7 of 8 (issue #21)")
            return
        card, conf, n = _in_catalog_best(d)
        yield (f"neighbour selection, the {n} XPerT styles in the catalog (new users of their"
               f" test texts), catalog of {len(d['published'])}: top-1 equal to the oracle's,"
               f" card then local confirmation of the top {cfg['confirm']} (card alone in"
               " parentheses)", f"{conf} of {n} ({card} of {n})",
               "the styles in the catalog (issue #21)")

    def warm_goal() -> None:
        """One line over the ladder runs (``XPERT_LADDERS``): the new users that met issue
        #21's warm-start goal in some run, what they started from, and the files."""
        from xpert import GOAL_USERS

        users = _ladder_users(XPERT_LADDERS)
        if not users:
            rows.append("| warm start from a catalog neighbour | not measured yet | | |")
            return
        met = _met_by(users)
        tried = {(u["corpus"], u["user"]) for u in users if u["neighbour"] is not None}
        runs = {u["run"]: u["d"] for u in users}
        files = sorted({r["run"] for rs in met.values() for r in rs}) or sorted(runs)
        said = ", ".join(f"{_who(rs[0])} (from {'/'.join(sorted({_kind(r) for r in rs}))})"
                         for rs in met.values()) or "none"
        rows.append("| warm start from a catalog neighbour: new users within noise of the cold"
                    " compile on all three scores with >= 80% less training compute and >= 50%"
                    f" less data (of {len(tried)} tried in {len(runs)} 250-message ladder runs) |"
                    f" {len(met)}: {said} | {GOAL_USERS} across both corpora |"
                    f" {'; '.join(_src(n, runs[n]) for n in files)} |")

    add("honest_scores", honest)
    add(best_levers_run(), quality)
    add("xpert_git_confirm6", selection)
    if (RESULTS / "xpert_styles_w2.json").exists():
        add("xpert_styles_w2", selection)
    warm_goal()
    add(GENERATION_RESULT, generation)
    add(next((n for n in COMPILE_DEFAULT_RUNS if _has_default(n)), "compile_speed_quiet"),
        compile_speed)
    if (RESULTS / "load.json").exists():
        add("load", load)
    add("compile_memory", memory)
    add("compile_memory_1.5b_bf16", memory_large)
    if (RESULTS / "serve_load_repeats.json").exists():  # rounds with intervals: the one line
        add("serve_load_repeats", serving_repeats)    # (the single runs stay in bench/README)
    else:
        add("serve_load", serving)
        add("serve_load_s12", serving)  # the same grid again, quiet: how much is noise
    return "\n".join(rows) + "\n"


def xpert_merges(name: str = "xpert_git_pub500_merges", line: bool = False) -> str:
    """What ``--confirm-merge`` would start each new user from: the confirmation's choice and
    the merge of it with the next best, both probed on the same messages (``--start merged``).
    ``line``: the tally alone, with its file and CPU (the README's sentence)."""
    d = _load(name)
    rows = ["| new user | own adapter in the catalog | confirmation's choice (probe ppl) |"
            " merged with (merge's probe ppl) | base's probe ppl | --confirm-merge starts from |",
            "|---|---|---|---|---|---|"]
    tally = {True: [0, 0], False: [0, 0]}  # own in catalog: [kept the choice, of]
    for user, sel in d["selection"].items():
        m = sel.get("merged")
        if not m:
            continue
        chosen, ppl = m["styles"][0], m["sources_perplexity"][0]
        keep = m["perplexity"] >= ppl
        own = bool(sel.get("in_catalog"))
        tally[own][0] += keep and (not own or chosen == user)  # returning: kept their own
        tally[own][1] += 1
        rows.append(f"| {user} | {'yes' if own else 'no'} | {chosen} ({ppl:.2f}) |"
                    f" {m['styles'][1]} ({m['perplexity']:.2f}, {100 * (m['perplexity'] / ppl - 1):+.1f}%) |"
                    f" {m['base_perplexity']:.2f} | {'the choice' if keep else '**the merge**'} |")
    if line:
        return (f"returning authors whose own adapter is in the catalog kept it {tally[True][0]}"
                f" of {tally[True][1]} times, and newcomers started from the merge"
                f" {tally[False][1] - tally[False][0]} of {tally[False][1]} times"
                f" ({_src(name, d)})\n")
    msgs = next(s["merged"]["messages"] for s in d["selection"].values() if s.get("merged"))
    return "\n".join([f"{_provenance(d)}. Probe perplexity on each user's {msgs} probe messages,"
                      " every adapter on every message (the choice is the race's; the merge of it"
                      " with the next best at equal weights).", "", *rows, "",
                      f"Returning authors (own adapter in the catalog) keeping it:"
                      f" {tally[True][0]} of {tally[True][1]}; newcomers starting from the merge:"
                      f" {tally[False][1] - tally[False][0]} of {tally[False][1]}."]) + "\n"


def base_cost(name: str = "base_cost", line: bool = False) -> str:
    """bench/base_cost.py: a user's compile (with its gate) and drafts on each base, one run
    (``line``: one sentence for the README's Bases section)."""
    d = _load(name)
    if line:
        rs = d["rows"]
        return (f"Measured on one CPU ({cpu_label(d['meta_info']['cpu'])},"
                f" `bench/base_cost.py`, `{name}.json`, commit {d['run_info']['git']}), for one"
                f" author's {d['recipe']['examples']} messages, each base on the recipe"
                f" {d['recipe']['name']} (SmolLM2's default): `idiolect compile` with its gate"
                " takes " + ", ".join(f"{r['compile']['wall_s'] / 60:.0f} min on {r['base']}"
                                      f" (peak {_gb(r['compile']['peak_rss_mb'])})"
                                      for r in rs)
                + "; one `idiolect draft` (best of 4) "
                + ", ".join(f"{_mean(x['wall_s'] for x in r['drafts']):.0f} s" for r in rs)
                + ". How the drafts compare: bench/README.md, \"The base lever\".\n")
    peak = d["matmul_peak_gflops"]
    rows = []
    for r in d["rows"]:
        c, dr = r["compile"], r["drafts"]
        walls = [x["wall_s"] for x in dr]
        err = c.get("last_stderr", "")  # a refusal's reason, as the command printed it
        why = (": " + err.split("refused by the gate (", 1)[1].split("); it is kept", 1)[0]
               if "refused by the gate (" in err else "")
        rows.append(
            f"| {r['base']} | {c['wall_s']:.0f} s ({c['cpu_s'] / 60:.1f}) | {c['train_s']:.0f} s"
            f" ({c['tokens_per_s']:.0f}) | {_gb(c['peak_rss_mb'])}"
            f" ({c['compile_peak_rss_mb'] / 1024:.1f}) |"
            f" {c['state']}{why} | {_mean(walls):.0f} s [{min(walls):.0f}, {max(walls):.0f}]"
            f" ({_mean(x['cpu_s'] for x in dr):.0f}) | {max(x['peak_rss_mb'] for x in dr) / 1024:.1f}"
            " GB |")
    rec = d["recipe"]
    return (f"{_provenance(d)}. Matmul peaks measured in the run: {peak['float32']:.0f} GFLOP/s"
            f" float32, {peak['bfloat16']:.0f} bfloat16. Author {d['rows'][0]['author']},"
            f" recipe {rec['name']} on {rec['examples']} messages; each command in a new process,"
            " wall from before its start, CPU seconds and peak RSS of that process.\n\n"
            "| base | `compile`: wall (CPU min) | of it, training (tokens/s) | `compile` peak"
            " (training's) |"
            " gate | `draft`: wall per draft [min, max] (CPU s) | `draft` peak |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def step_profile(name: str = "step_profile") -> str:
    """bench/step_profile.py: a compile step's operators' self time, grouped."""
    d = _load(name)
    t, pr = d["timed"], d["profiled"]
    steps = t["steps"]
    rows = [f"| {g} | {r['self_ms'] / steps:.0f} ms | {r['share']:.0%} | "
            + ", ".join(f"{k.replace('aten::', '')} {v['self_ms'] / steps:.0f}"
                        for k, v in sorted(r["top_ops"].items(),
                                           key=lambda kv: -kv[1]["self_ms"])[:3]) + " |"
            for g, r in sorted(pr["groups"].items(), key=lambda kv: -kv[1]["self_ms"])]
    peak = d["matmul_peak_gflops"]
    return (f"{_provenance(d)}. Base {d['base']}, recipe as `idiolect compile` resolves it here"
            f" ({d['recipe']['base_dtype']} base, LoRA products in {d['recipe']['lora_compute']},"
            f" attention {d['recipe']['attention']}), {d['threads']} threads. Timed without the"
            f" profiler: {steps} steps, {t['wall_s'] / steps:.2f} s a step,"
            f" {t['tokens_per_s']:.0f} tokens/s (prompt and body),"
            f" {t['flops']['achieved_gflops']:.0f} GFLOP/s ({t['flops']['share_of_peak']:.0%} of"
            f" the {peak.get('bfloat16', peak['float32']):.0f} GFLOP/s peak; float32 peak"
            f" {peak['float32']:.0f})"
            + (f"; counting the padded positions too ({t['padded_positions'] / steps:.0f} a step"
               f" against {t['tokens'] / steps:.0f} tokens),"
               f" {t['flops_padded']['achieved_gflops']:.0f} GFLOP/s"
               f" ({t['flops_padded']['share_of_peak']:.0%})" if "flops_padded" in t else "")
            + f". Under the profiler, the same steps' operators' own time"
            f" ({pr['self_ms_total'] / steps:.0f} ms a step in all):\n\n"
            "| group | per step | share | largest operators (ms a step) |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def eval_memory(name: str = "eval_memory", line: bool = False) -> str:
    """bench/eval_memory.py: the gate's evaluation's peak memory per base, and the held-out
    perplexity the whole-forward way (``line``: one sentence for the README's Bases section)."""
    d = _load(name)
    if line:
        rs = d["rows"]
        cost = _load("base_cost")  # the line follows base_cost's, whose peaks it explains
        cost_older = cost["run_info"]["started"] < d["run_info"]["started"]
        return ("The gate's held-out perplexity then projected every position onto the"
                " vocabulary at once (in a process of its own, with the load: "
                + ", ".join(f"{_gb(r['forward_perplexity_peak_mb'])} on {r['base']}" for r in rs)
                + "); it now projects the body positions 256 at a time, and the gate's whole"
                  " evaluation peaks at "
                + ", ".join(_gb(r["eval_peak_mb"]) for r in rs)
                + f" (`bench/eval_memory.py`, `{name}.json`, commit {d['run_info']['git']}, "
                + ("the same CPU" if cost["meta_info"]["cpu"] == d["meta_info"]["cpu"] else
                   cpu_label(d["meta_info"]["cpu"]))
                + ")." + (" The whole compile has not been measured again since." if cost_older
                   else "") + "\n")
    rows = [f"| {r['base']} | {_gb(r['eval_peak_before_perplexity_mb'])} |"
            f" {_gb(r['eval_peak_mb'])} | {_gb(r['forward_perplexity_peak_mb'])} |"
            f" {r['eval']['eval_seconds']:.0f} s | {r['perplexity_relative_difference']:.0e} |"
            for r in d["rows"]]
    return (f"{_provenance(d)}. User {d['run_info']['config']['user']}, the newest adapter per"
            " base; each column a new process's high-water mark of resident memory.\n\n"
            "| base | evaluation: peak through both generations | whole evaluation (the"
            " perplexity projecting 256 body positions at a time) | load and the perplexity"
            " from the whole forward (before session 28) | evaluation wall | perplexities"
            " differ by |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def gate_residue(name: str = "gate_residue") -> str:
    """bench/gate_residue.py: one compile with its gate, resident memory through it."""
    d = _load(name)
    cfg = d["run_info"]["config"]
    return (f"{_provenance(d)}. {cfg['base']}, {cfg['user']}'s {cfg['examples']} messages"
            f" ({d['tokens']} tokens), the gate {d['decision']}: resident after the base's load"
            f" {_gb(d['resident_after_load_mb'])}, training's peak {_gb(d['training_peak_mb'])},"
            f" resident when the gate began {_gb(d['resident_at_gate_start_mb'])}, the gate's own"
            f" resident peak {_gb(d['gate_resident_peak_mb'])}, the command's peak"
            f" {_gb(d['command_peak_mb'])}.\n")


def compile_memory_large(names=("compile_memory_1.5b", "compile_memory_1.5b_bf16"),
                         beside: str = "the machine was shared, so tokens/s are not comparable"
                                       " across rows.") -> str:
    """Peak memory of the large base's compiles, a row per variant of each results file;
    ``beside``: what else ran on the machine (and so which tokens/s compare)."""
    rows = ["| variant (results file: CPU; commit) | base weights | compile peak | training"
            " tokens/s | held-out ppl (eval messages) |", "|---|---|---|---|---|"]
    cmds = []
    for name in names:
        d = _load(name)
        cfg = d["run_info"]["config"]
        cmds.append(f"`{d['run_info']['command']}`")
        for r in d["variants"]:
            if "compile_peak_rss_mb" not in r:
                rows.append(f"| {r['variant']} ({_src(name, d)}) | | {r.get('status')} | | |")
                continue
            rows.append(f"| {r['variant']} ({_src(name, d)}) | {r['recipe']['base_dtype']} |"
                        f" {r['compile_peak_rss_mb']:.0f} MB | {r['tokens_per_s']:.1f} |"
                        f" {r['eval_perplexity']:.3f} ({cfg['eval_limit']}) |")
    return "\n".join(["; ".join(cmds) + f". Base {cfg['base']}, {cfg['examples']} training"
                      f" messages; {beside}", "", *rows]) + "\n"


def llamacpp() -> str:
    d = _load("export_llamacpp")
    ll, gen = d["loglik"], d.get("generation", {})
    speed = ""
    if "llamacpp_batch1" in gen and "pytorch_batch1" in gen:
        speed = (f" One prompt at a time, llama.cpp generates {gen['llamacpp_batch1']['tokens_per_s']}"
                 f" tokens/s, PyTorch {gen['pytorch_batch1']['tokens_per_s']}.")
    return (f"on {ll['texts']} held-out messages the exported SmolLM2 adapter raises the mean"
            f" per-token log-likelihood by {ll['delta_llamacpp']:.4f} in llama.cpp vs"
            f" {ll['delta_pytorch']:.4f} in PyTorch.{speed} (`{d['run_info']['command']}`,"
            f" {d['run_info']['cpu_count']} cores, {d['run_info']['started_at'][:10]}.)\n")


def generation_merge(name: str | None = None) -> str:
    d = _load(name or GENERATION_RESULT)
    runs = {k: v for k, v in d.items() if isinstance(v, dict) and "rows" in v}
    decoders = any(r.get("decoder", "hf") != "hf" for v in runs.values() for r in v["rows"])
    inplace = any(r.get("cache") in ("inplace", "shrink") for v in runs.values()
                  for r in v["rows"])
    rows = ["| model | batch |" + (" decode loop |" if decoders else "") + " new tokens/s |"
            " vs unbatched PEFT `generate` | GFLOP/s (share of peak) |",
            "|---|---|" + ("---|" if decoders else "") + "---|---|---|"]
    for name, v in runs.items():
        for r in v["rows"]:
            f = r.get("flops", {})
            share = f" ({f['share_of_peak']:.0%})" if "share_of_peak" in f else ""
            loop = {"hf": " `generate` |", "lean": " idiolect's |"}[r.get("decoder", "hf")]
            if inplace and r.get("decoder") == "lean":  # which KV cache the lean loop ran with
                loop = loop[:-2] + {"inplace": ", cache in place |",
                                    "shrink": ", cache in place, ended rows leave |"}.get(
                    r.get("cache"), ", cache concatenated |")
            rows.append(f"| {name} | {r['batch_size']} |" + (loop if decoders else "")
                        + f" {r['tokens_per_s']} |"
                        f" {r.get('speedup_vs_peft_unbatched', r.get('speedup'))}x |"
                        f" {f.get('achieved_gflops', '')}{share} |")
    return "\n".join([f"{_provenance(d)}; matmul peak"
                      f" {d['meta_info'].get('matmul_peak_gflops')} GFLOP/s measured in the run.",
                      "", *rows]) + "\n"


def xpert_confirm(name: str = "xpert_git_confirm") -> str:
    """Selection by card, and by card then local confirmation, against the oracle (every
    published adapter's held-out perplexity on each new user)."""
    d = _load(name)
    users, sel = d["oracle"]["users"], d["selection"]
    rows = ["| new user | best fitting (oracle perplexity) | card's pick, oracle rank |"
            f" confirmed pick of the card's top {d['run_info']['config']['confirm']} on"
            f" {d['run_info']['config'].get('probe', 8)} probe messages, oracle rank |"
            " confirmation s |",
            "|---|---|---|---|---|"]
    for u, v in users.items():
        c = sel[u].get("confirmed") or {}
        own = "" if sel[u].get("in_catalog") else " (not in catalog)"
        rows.append(f"| {u}{own} | {v['best']} ({v['perplexity'][v['best']]:.2f}) |"
                    f" {sel[u]['top_style']}, {v['selected_rank']} |"
                    f" {c.get('style')}, {v.get('confirmed_rank')} | {c.get('seconds', 0):.0f} |")
    o = d["oracle"]
    from xpert import author_of as author  # a catalog key's author: "K~2" -> "K"

    windows = int(d["run_info"]["config"].get("windows") or 1)
    inside = _in_catalog_best(d)
    k = int(d["run_info"]["config"]["confirm"])
    # the card as a shortlist: is the oracle's best among the card's top K (what confirmation
    # probes when K is below the catalog's size)?
    listed = {u: [m["style"] for m in sel[u]["ranking"]] for u in users}
    shortlist = [f"the card's top {n} held the oracle's best for"
                 f" {sum(v['best'] in listed[u][:n] for u, v in users.items())} of {len(users)}"
                 for n in sorted({3, k}) if n < len(next(iter(listed.values())))]
    terms = []  # the card score's two terms alone (recorded since session 20)
    returned = min(len(listed[u]) for u in users)
    among = (f" among the {returned} the catalog returned" if returned < len(d["published"])
             else "")  # the run records the matches the catalog returned, not every adapter
    for term, said in (("style_cos", "style words"), ("embedding_cos", "embedding")):
        picks = {u: max((m for m in sel[u]["ranking"] if m.get(term) is not None),
                        key=lambda m: m[term], default=None) for u in users}
        if all(p is not None for p in picks.values()):
            hits = sum(picks[u]["style"] == v["best"] for u, v in users.items())
            terms.append(f"its {said} term alone {hits} of {len(users)}{among}")
    return "\n".join([f"{_provenance(d)}.", "", *rows, "",
                      f"Top-1 equal to the oracle's: card {o['selected_is_best']} of {o['of']}"
                      + (f" ({', '.join(terms)})" if terms else "") + ","
                      f" card then confirmation {o['confirmed_is_best']} of {o['of']}"
                      + (f"; one of the oracle's best author's {windows} adapters: card"
                         f" {sum(author(sel[u]['top_style']) == author(v['best']) for u, v in users.items())},"
                         f" confirmation {sum(author((sel[u].get('confirmed') or {}).get('style')) == author(v['best']) for u, v in users.items())}"
                         if windows > 1 else "")
                      + (f"; {'; '.join(shortlist)}" if shortlist else "")
                      + f"; in the catalog ({inside[2]} new users): card {inside[0]},"
                      f" confirmation {inside[1]}"
                      + f"; each in-catalog author's own adapter fits best for"
                      f" {o['own_is_best']} of {o['in_catalog']}."]) + "\n"


def _in_catalog_best(d: dict) -> tuple[int, int, int]:
    """Of one run's new users whose author or style is in the catalog: how many the card's top-1
    and the confirmed pick match the oracle's best for, and how many there are."""
    users, sel = d["oracle"]["users"], d["selection"]
    inside = [u for u in users if sel[u].get("in_catalog")]
    confirmed = (sum(users[u].get("confirmed_rank") == 1 for u in inside)
                 if any("confirmed_rank" in users[u] for u in inside) else None)
    return sum(users[u]["selected_rank"] == 1 for u in inside), confirmed, len(inside)


def xpert_cards(name: str = "xpert_cards_w2") -> str:
    """bench/xpert_cards.py: each candidate card similarity against the oracle of one run."""
    d = _load(name)
    rows = ["| similarity of the two cards | top-1 = oracle's best | one of the best's author's |"
            " oracle's best in its top 3 | perplexity over the best's (mean) |",
            "|---|---|---|---|---|"]
    fitted_here = d.get("fitted_here", [])
    for n, t in sorted(d["totals"].items(), key=lambda kv: (kv[0] in fitted_here, kv[0] != (
            "score (current)"), kv[0])):  # the card's score, each term alone, then blends
        fitted = " (weights fitted on these users)" if n in fitted_here else ""
        rows.append(f"| {n}{fitted} | {t['top1']} of {t['of']} | {t['author']} of {t['of']} |"
                    f" {t['in_top3']} of {t['of']} | +{t['mean_regret']:.2f} |")
    return (f"{_provenance(d)}. {d['published']} published adapters; the cards of"
            f" `{Path(d['source']).name}` (checked: they score as in that run).\n\n"
            + "\n".join(rows) + "\n")


def compile_parity(name: str = "compile_bf16_parity") -> str:
    """Each compile_speed variant of one run: wall time including load, tokens/s, held-out
    perplexity beside the first variant's, peak memory."""
    d = _load(name)
    rows = ["| variant | base dtype | lr | epochs | shots | LoRA on (products in) |"
            " compile wall incl. load |"
            " tokens/s | GFLOP/s (share of the fp32 peak; bf16 peak) | held-out ppl (vs first) |"
            " compile peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    vs = [v for v in d["variants"] if "compile_wall_s" in v]
    first = vs[0]["eval_perplexity"] if vs else None
    for v in vs:
        r = v["recipe"]
        rel = f" ({100 * (v['eval_perplexity'] / first - 1):+.1f}%)" if first else ""
        mods = "attention + MLP" if "gate_proj" in r["target_modules"] else "attention"
        if r.get("lora_layers"):
            mods += f" (top {r['lora_layers']} layers)"
        # Recipe.lora_compute (session 18); runs before it had PEFT's forward
        mods += {"peft": " (PEFT's forward)", "float32": " (fused, float32)",
                 "base": f" (fused, {r.get('base_dtype', 'float32')})"}[
                     r.get("lora_compute", "peft")]
        f = v.get("flops", {})
        share = "; ".join(f"{f[k]:.0%}" for k in ("share_of_peak", "share_of_bf16_peak")
                          if k in f)
        rows.append(f"| {v['variant']} | {r.get('base_dtype', 'float32')} | {r['lr']:g} |"
                    f" {r['epochs']:g} | {r.get('shots', 0)} | {mods} |"
                    f" {v['compile_wall_s']:.0f} s |"
                    f" {v['tokens_per_s']:.0f} | {f.get('achieved_gflops', '?')}"
                    f"{f' ({share})' if share else ''} | {v['eval_perplexity']:.3f}{rel} |"
                    f" {v['compile_peak_rss_mb'] / 1024:.2f} GB |")
    bf16 = d.get("meta_info", {}).get("matmul_peak_gflops_bf16")
    half = any(v["recipe"].get("base_dtype") == "bfloat16" for v in vs)
    peaks = (f" Matmul peaks measured in the run: {d['meta_info']['matmul_peak_gflops']:.0f}"
             f" GFLOP/s in float32{f', {bf16:.0f} in bfloat16' if bf16 else ''}"
             + ("" if bf16 or not half else " (none in bfloat16: the bf16 rows' share is of the"
                " float32 peak, which a bfloat16 matmul can pass)") + ".")
    return "\n".join([f"{_provenance(d)}.{peaks}", "", *rows]) + "\n"


def load_times(name: str = "load") -> str:
    """Cold and warm loads of each base, a new process per load (bench/load.py)."""
    d = _load(name)
    rows = ["| base | compile loads it in | cold: first use (wall) | warm, compile's dtype: wall"
            " (load alone) | warm, float32: wall (load alone) | peak RSS after a warm float32 load |",
            "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        w, f = r["warm"][r["compile_dtype"]], r["warm"]["float32"]
        rows.append(f"| {r['base']} | {r['compile_dtype']} | {r['cold']['wall_s']:.1f} s |"
                    f" {w['wall_s_median']:.2f} s ({w['load_s_median']:.2f} s) |"
                    f" {f['wall_s_median']:.2f} s ({f['load_s_median']:.2f} s) |"
                    f" {f['peak_rss_mb_max']:.0f} MB |")
    n = d["run_info"]["config"]["warm"]
    return "\n".join([f"{_provenance(d)}. Warm figures: the median of {n} loads.", "",
                      *rows]) + "\n"


def demo(name: str = "demo_transcript.txt") -> str:
    """What `make demo` printed (bench/results/demo_transcript.txt: the command, the output,
    then the lines ``cpu: ...`` and the commit), as the README shows it: without the compile's
    config, the load line, the progress steps before the last, the gate's working lines and a
    line printed twice; then where it ran."""
    lines = (RESULTS / name).read_text().rstrip("\n").split("\n")
    meta = {k: v for k, v in (x.split(": ", 1) for x in lines if x.startswith(("cpu: ", "commit: ")))}
    out = [x for x in lines[1:] if not x.startswith(("cpu: ", "commit: "))]
    last_step = max((i for i, x in enumerate(out) if x.startswith("step ")), default=None)
    drop = re.compile(r"^\s+(config \{|loaded base |generating |perplexity of )")
    keep = [x for i, x in enumerate(out)
            if not drop.match(x) and not (x.startswith("step ") and i != last_step)
            and not (x.strip().startswith("gate: ") and x in out[i + 1:])]
    where = ", ".join(filter(None, (meta.get("cpu"), f"commit {meta.get('commit', '?')}")))
    return (f"What `make demo` printed here (`{lines[0]}`, {where}; the whole log is"
            f" [bench/results/{name}](bench/results/{name})):\n\n```\n" + "\n".join(keep)
            + "\n```\n")


GENERATION_RESULT = next((n for n in ("generation_b128", "generation_shrink",  # what eval runs
                                     "generation_inplace",
                                     "generation_lean", "generation_merge") if (RESULTS / f"{n}.json").exists()),
                         "generation")


def best_of_speed(name: str = "best_of_speed") -> str:
    """bench/best_of_speed.py: generation and the sense ranker, old way and new, same inputs."""
    d = _load(name)
    med, sp = d["median"], d["speedup_wall"]
    cfg = d["run_info"]["config"]
    names = {"generate": f"generate {d['candidates']} candidates ({cfg['n']} per"
                         " prompt, prefill per row vs once per prompt)",
             "fit": f"rank them by sense (each of {1 + d['others']} prompts per candidate vs"
                    " once for all)"}
    rows = ["| step | old: wall (CPU) | new: wall (CPU) | speedup on wall |", "|---|---|---|---|"]
    for step in ("generate", "fit"):
        o, n = med[step]["old"], med[step]["new"]
        rows.append(f"| {names[step]} | {o['wall_s']:.1f} s ({o['cpu_s']:.0f} s) |"
                    f" {n['wall_s']:.1f} s ({n['cpu_s']:.0f} s) | {sp[step]:.2f}x |")
    rows.append(f"| both | {d['total_wall_s']['old']:.1f} s | {d['total_wall_s']['new']:.1f} s |"
                f" {sp['total']:.2f}x |")
    alone = ("every timed run had the cores to itself" if d.get("all_alone") else
             "some timed runs shared the machine (CPU time under 90% of threads x wall)")
    return (f"{_provenance(d)}. Medians of {cfg['repeats']} runs a way, {d['threads']}"
            f" threads; {alone}. Bodies equal between the ways: {d['same_bodies']} of"
            f" {d['candidates']}; largest difference of a fit: {d['max_fit_difference']:.0e}"
            " nats/token.\n\n" + "\n".join(rows) + "\n")


def xpert_ladder(name: str) -> str:
    """bench/xpert.py's ladders: cold compile vs warm rungs from the neighbour, with intervals,
    and issue #21's warm-start goal (all three metrics within noise, >= 80% less compute and
    >= 50% less data)."""
    d = _load(name)
    ladders, goal = d["ladders"], d.get("warm_goal") or {}
    cfg = d["run_info"]["config"]

    rows = ["| new user | rung | messages | training tokens | train s | perplexity"
            " | fingerprint distance (± se) | authorship (± se) |", "|---" * 8 + "|"]
    notes = []
    for k, row in sorted(ladders.items()):
        base = row["cold"]["base"]
        rows.append(f"| {k} | bare base | - | - | - | {base['perplexity']:.2f} |"
                    f" {base['fingerprint_distance']:.3f} | {base['authorship_probability']:.3f} |")
        named = [("cold", row["cold"])] + [
            (f"warm {r['messages']}" + (f" ({row['selected']}, {row['decision']})"
                                         if r["messages"] == 0 else ""), r) for r in row["warm"]
        ] + [(f"from the base, warm recipe, {r['messages']}", r)
             for r in row.get("base_rungs") or []]
        for label, r in named:
            rows.append(f"| {k} | {label} | {_messages(r)} | {r['tokens']:,} |"
                        f" {r['train_s']:.0f} | {r['perplexity']:.2f} |"
                        f" {_with_se(r, 'fingerprint_distance')} |"
                        f" {_with_se(r, 'authorship_probability')} |")
        notes.append(f"{k}: {_ladder_note(row)}")
        if m := (d.get("selection") or {}).get(k, {}).get("merged"):
            notes[-1] += f" ({_merge_probe(m, cfg)})"
    head = (f"{_provenance(d)}. Cold: {cfg['examples']} messages from the base; warm: from the"
            f" {next(iter(ladders.values())).get('start', 'card')} neighbour"
            + (f", with {cfg['warm_over']} over the recipe" if cfg.get("warm_over") not in
               (None, "{}") else "") + ".")
    tail = (f"Goal (issue #21: >= 80% less compute and >= 50% less data, all three metrics within"
            f" noise): {len(goal.get('met', []))} of {goal.get('of', len(ladders))} new users"
            f" here (needed: {goal.get('needed', 6)} across both corpora).")
    return head + "\n\n" + "\n".join(rows) + "\n\n" + ".\n".join(notes) + ".\n\n" + tail + "\n"


def xpert_ladder_vs(name: str, against: str) -> str:
    """A rerun of bench/xpert.py's ladders with another warm recipe (``name``) beside the first
    run (``against``): each new user's rungs of the same size, from the same neighbour, against
    its own run's cold compile (the same adapter when the rerun reused it). "Within noise" is
    bench/xpert.py's ``as_good`` with each run's own perplexity tolerance."""
    from xpert import METRICS, PPL_TOL, as_good

    new, old = _load(name), _load(against)

    def cells(r: dict, cold: dict | None, d: dict) -> str:
        style = "".join(f" {_with_se(r, m)} |"
                        for m in ("fingerprint_distance", "authorship_probability"))
        if cold is None:
            return f" {r['perplexity']:.2f} | - |{style} - |"
        tol = float(d["run_info"]["config"].get("ppl_tol", PPL_TOL))
        within = [m.replace("_", " ") for m in METRICS
                  if as_good(r, cold, m, noise=True, ppl_tol=tol)]
        return (f" {r['perplexity']:.2f} ({r['perplexity'] / cold['perplexity'] - 1:+.1%}) |"
                f" {1 - r['tokens'] / cold['tokens']:.0%} |{style}"
                f" {', '.join(within) or 'none'} |")

    def label(d: dict) -> str:
        cfg = d["run_info"]["config"]
        return f"{cfg['name']}: {cfg.get('warm_over') or '{}'}"

    rows = ["| new user | run: warm recipe over the run's | messages | perplexity (vs cold) |"
            " training compute saved | fingerprint distance (± se) | authorship (± se) |"
            " within noise of cold |", "|---" * 8 + "|"]
    skipped = []
    for k, row in sorted(new["ladders"].items()):
        first = old["ladders"].get(k)
        if first is None or first["selected"] != row["selected"]:
            skipped.append(f"{k} ({'not in ' + against if first is None else 'another neighbour'})")
            continue
        same = all(first["cold"][m] == row["cold"][m] for m in METRICS)
        for d, c in ((old, first["cold"]),) + (() if same else ((new, row["cold"]),)):
            epochs = d["run_info"]["config"]["recipe"]["epochs"]
            rows.append(f"| {k} | {'both runs' if same else d['run_info']['config']['name']}:"
                        f" cold ({c['messages']} messages, {epochs:g} epochs) | - |"
                        + cells(c, None, d))
        for r in row["warm"]:
            twin = next((w for w in first["warm"] if w["messages"] == r["messages"]), None)
            for d, rr, cold in ((old, twin, first["cold"]), (new, r, row["cold"])):
                if rr is not None:
                    rows.append(f"| {k} | {label(d)} | {rr['messages']} |" + cells(rr, cold, d))
    return (f"{_provenance(new)}. Beside `{against}.json` (commit {old['run_info'].get('git')}):"
            " the same frozen eval prompts, each new user's rungs from the same neighbour in both"
            " runs; each rung against its own run's cold compile (one line where both runs scored"
            " it alike); compute is training tokens."
            + (f" Left out: {', '.join(skipped)}." if skipped else "") + "\n\n"
            + "\n".join(rows) + "\n")


def _merge_probe(m: dict, cfg: dict) -> str:
    """A ``--start merged`` probe in words: the merge's perplexity on the probe messages beside
    its sources' and the bare base's, each with the messages it was probed on (runs before
    8571ce2's successor kept the race's figures, where the second source saw fewer)."""
    from idiolect.catalog.warm_start import race_rounds

    n = m["messages"]
    seen = m.get("sources_messages") or [
        n, race_rounds(n)[-2] if cfg.get("race", "True") == "True" and len(race_rounds(n)) > 1
        else n]
    theirs = " and ".join(f"{x:.2f} ({s}, on {k})" for x, s, k in
                          zip(m["sources_perplexity"], m["styles"], seen))
    return (f"the merge of {' and '.join(m['styles'])}, equal weights: perplexity"
            f" {m['perplexity']:.2f} on {n} probe messages; theirs {theirs}; the bare base's"
            f" {m['base_perplexity']:.2f} on {n}")


def _ladder_users(names: list[str]) -> list[dict]:
    """Every new user of bench/xpert.py's ladder runs ``names`` (files not there are skipped):
    the run, its results, the user's ladder row, the neighbour it warm-started from (None when
    no rung ran), whether that was a merge of two (``--start merged``: "K1+K2") and whether it is
    (or, merged, holds) the user's own (a catalog key ``K`` or ``K~2`` of the same author or
    style), what the publisher was asked to compile on, the first rung within noise
    of the cold compile on all three metrics (None: never) and whether it met issue #21's
    goal."""
    out = []
    for name in names:
        if not (RESULTS / f"{name}.json").exists():
            continue
        d = _load(name)
        cfg = d["run_info"]["config"]
        for k, row in sorted(d["ladders"].items()):
            ran = bool(row["warm"])
            sel = row.get("selected") if ran else None
            best = (row.get("reach") or {}).get("all_within_noise")
            merged = sel is not None and row.get("start") == "merged"
            out.append({"run": name, "d": d, "corpus": cfg["corpus"], "user": k, "row": row,
                        "neighbour": sel, "merged": merged,
                        "own": sel is not None and any(s.split("~")[0] == k
                                                       for s in sel.split("+")),
                        "publish": int(cfg["publish_examples"]), "best": best,
                        "met": bool(best and best["goal"])})
    return out


def _met_by(users: list[dict]) -> dict:
    """(corpus, user) -> the runs in which that new user met issue #21's goal."""
    met: dict = {}
    for u in users:
        if u["met"]:
            met.setdefault((u["corpus"], u["user"]), []).append(u)
    return met


def _who(u: dict) -> str:
    """A ladder user as the tables name it: the git author, or "style K"."""
    return f"style {u['user']}" if u["corpus"] == "styles" else u["user"]


def _kind(u: dict) -> str:
    """What a ladder user warm-started from, in words: "own adapter, 500 messages" (own author
    or style, the publisher asked for 500), "another's adapter, 100 messages" or "a merge of
    two others' adapters, 500 messages each"."""
    if u["merged"]:
        whose = "the user's own and another's" if u["own"] else "two others'"
        return f"a merge of {whose} adapters, {u['publish']} messages each"
    whose = "own" if u["own"] else "another's"
    return f"{whose} adapter, {u['publish']} messages"


def xpert_goal(names: list[str]) -> str:
    """Issue #21's warm-start goal across bench/xpert.py's ladder runs: one line per new user and
    run (the corpus, the neighbour the ladder started from and what it was compiled on, the first
    rung within noise of the cold compile on all three metrics), then how many distinct new users
    met the goal in some run, per corpus."""
    from xpert import GOAL_USERS

    rows = ["| run | corpus | new user | neighbour (publisher asked for) | warm recipe (over the"
            " base's) | all three within noise from | compute saved | data saved | goal |",
            "|---" * 9 + "|"]
    users = _ladder_users(names)
    for u in users:
        d, sel, best = u["d"], u["neighbour"], u["best"]
        cfg = d["run_info"]["config"]
        pub = (d.get("published") or {}).get(sel) or {}
        neighbour = (f"none ({u['row']['decision']})" if sel is None else
                     f"{sel.replace('+', ' + ')} merged"
                     f" ({'own and another' + chr(39) + 's' if u['own'] else 'others' + chr(39)},"
                     f" {u['publish']} messages each)"
                     if u["merged"] else
                     f"{sel} ({'own' if u['own'] else 'another'},"
                     f" {_messages({'messages': u['publish'], **pub})} messages)")
        if sel is None:
            rest = "- | - | - | -"
        elif best is None:
            rest = "never | - | - | no"
        else:
            rest = (f"{best['messages']} messages | {best['compute_saved']:.0%} |"
                    f" {best['data_saved']:.0%} | {'yes' if best['goal'] else 'no'}")
        rows.append(f"| {u['run']} | {u['corpus']} | {u['user']} | {neighbour} |"
                    f" {cfg.get('warm_over') or '{}'} | {rest} |")
    met = _met_by(users)
    by = ", ".join(f"{_who(rs[0])} ({c}, from {'/'.join(sorted({_kind(r) for r in rs}))})"
                   for (c, _), rs in sorted(met.items())) or "none"
    sizes = sorted({u["d"]["run_info"]["config"]["examples"] for u in users})
    return ("Each rung against its own run's cold compile (the base's recipe on the new user's"
            f" {' or '.join(map(str, sizes))} messages asked for), within noise on perplexity,"
            " fingerprint distance and authorship probability; compute is training tokens, data"
            " the messages trained on where the run records them (else those asked for). Own:"
            " the new user's own author (git: an adapter of their earlier messages) or style"
            " (styles: of the same style's training texts). A user's authorship cohort is"
            " the run's new users, so probabilities compare within a run only.\n\n"
            + "\n".join(rows)
            + f"\n\nNew users meeting the goal (>= 80% less compute, >= 50% less data) in some run:"
              f" {len(met)} of the {GOAL_USERS} needed: {by}.\n")


def xpert_neighbour() -> str:
    """README's XPerT section: what the catalog's selection and warm starts measured, one line
    per question, each from its results files (bench/README.md has the per-user tables)."""
    from xpert import GOAL_USERS

    rows = ["| question | answer | results file: CPU; commit |", "|---|---|---|"]
    for name in ("xpert_git_confirm6", "xpert_git_w2", "xpert_styles_w2"):
        if not (RESULTS / f"{name}.json").exists():
            continue
        d = _load(name)
        o, sel, cfg = d["oracle"], d["selection"], d["run_info"]["config"]
        secs = [v["confirmed"]["seconds"] for v in sel.values() if v.get("confirmed")]
        if not secs:
            continue
        git = cfg.get("corpus", "git-authors") == "git-authors"
        who = (f"{o['of']} new git authors ({o['in_catalog']} with adapters of their earlier"
               " messages in the catalog)" if git else
               f"{o['of']} new users of the XPerT styles ({o['in_catalog']} of styles with"
               " adapters of their training texts in the catalog)")
        card, conf, n = _in_catalog_best(d)
        rows.append(f"| top-1 equal to the oracle's best, {who}, catalog of"
                    f" {len(d['published'])}: card alone; card then confirming its top"
                    f" {cfg['confirm']} on {cfg.get('probe', 8)} of the user's messages |"
                    f" {o['selected_is_best']} of {o['of']}; {o['confirmed_is_best']} of"
                    f" {o['of']} ({min(secs):.0f}-{max(secs):.0f} s a user)"
                    + ("" if git else f"; of the {n} in the catalog: {card}; {conf}") + " |"
                    f" {_src(name, d)} |")
    if (RESULTS / "confirm_race.json").exists():
        d = _load("confirm_race")
        rows.append(f"| confirmation by successive halving vs every candidate on every message"
                    f" ({d['candidates']} candidates, {len(d['per_user'])} users) | same choice"
                    f" for {d['same_choice']} of {len(d['per_user'])}, {d['speedup_wall']:.2f}x"
                    f" on wall time | {_src('confirm_race', d)} |")
    groups: dict = {}
    for u in _ladder_users(XPERT_LADDERS):
        if u["neighbour"] is None:  # no warm start ran: not a try of one
            continue
        g = groups.setdefault((u["publish"], u["own"], u["merged"]),
                              {"users": set(), "met": set(), "runs": {}})
        g["users"].add((u["corpus"], u["user"]))
        if u["met"]:
            g["met"].add(_who(u))
        g["runs"][u["run"]] = u["d"]
    for (n, own, merged), g in sorted(groups.items()):
        met = sorted(g["met"])
        corpora = sorted({c for c, _ in g["users"]})
        catalogs = sorted({len(d["published"]) for d in g["runs"].values()})
        files = "; ".join(_src(r, d) for r, d in g["runs"].items())
        start = (("a merge of the user's own author's or style's adapter and another's" if own
                  else "a merge of two other authors' or styles' adapters") if merged else
                 "an adapter of the user's own author or style" if own else
                 "an adapter of another author or style")
        rows.append(f"| warm start from {start} (publisher asked for {n} messages;"
                    f" catalog of {'-'.join(map(str, sorted({catalogs[0], catalogs[-1]})))};"
                    f" {', '.join(corpora)}): new users meeting the goal |"
                    f" {len(met)} of {len(g['users'])}{' (' + ', '.join(met) + ')' if met else ''}"
                    f" | {files} |")
    rows.append(f"\nThe goal (issue #21): within noise of the user's cold compile on perplexity,"
                " fingerprint distance and authorship probability, with >= 80% less training"
                f" compute and >= 50% less data, for {GOAL_USERS} new users across both corpora."
                " Own: on the git authors an adapter of the same person's earlier messages, on"
                " the styles one of the same style's training texts (the user holds its test"
                " texts).")
    return "\n".join(rows) + "\n"


def _messages(r: dict) -> str:
    """The messages a compile asked for, and those it trained on where the results record them
    and they differ (the vault's reference split and quarantine come first)."""
    n, t = r["messages"], r.get("trained_messages")
    return f"{n}" if t is None or t == n else f"{n} ({t} trained)"


def _with_se(r: dict, metric: str) -> str:
    """A ladder rung's style score with its standard error, where it has one."""
    se = ((r.get("intervals") or {}).get(metric) or {}).get("se")
    return f"{r[metric]:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def _ladder_note(row: dict) -> str:
    """What one new user's ladder reached: all three metrics within noise (where), each metric's
    first rung within noise, and the last two rungs' perplexity over cold and compute saved."""
    if not row["warm"]:
        return f"no neighbour to start from ({row['decision']})"
    reach = row.get("reach") or {}
    best = reach.get("all_within_noise")
    if best is None:
        note = "no warm rung reaches the cold compile on all three within noise"
    else:
        note = (f"all three within noise at {best['messages']} messages"
                f" ({best['compute_saved']:.0%} less compute, {best['data_saved']:.0%} less data"
                f"{': goal met' if best['goal'] else ''})")
    if each := reach.get("within_noise"):
        note += " (first rung within noise, in messages: " + ", ".join(
            f"{m.replace('_', ' ')} {r['messages'] if r else 'none'}"
            for m, r in sorted(each.items())) + ")"
    cold = row["cold"]
    for r in row["warm"][-2:]:
        if r["messages"]:
            note += (f"; warm {r['messages']}: perplexity"
                     f" {r['perplexity'] / cold['perplexity'] - 1:+.1%} over cold,"
                     f" {1 - r['tokens'] / cold['tokens']:.0%} less compute")
    return note


def _old_new(d: dict, what_old: str, what_new: str, unit: str) -> str:
    """A table of a bench's "old" and "new" ways (``common.old_new_summary``)."""
    med, runs = d["median_wall_s"], d["runs"]
    cpu = {k: statistics.median(t["cpu_s"] for t in ts) for k, ts in runs.items()}
    alone = ("every timed run had the cores to itself" if d.get("all_alone") else
             "some timed runs shared the machine (CPU time under 90% of threads x wall)")
    return (f"Medians of {len(runs['new'])} runs a way, {d['threads']} threads; {alone}.\n\n"
            f"| way | {unit}: wall (CPU) |\n|---|---|\n"
            f"| old: {what_old} | {med['old']:.1f} s ({cpu['old']:.0f} s) |\n"
            f"| new: {what_new} | {med['new']:.1f} s ({cpu['new']:.0f} s) |\n\n"
            f"Speedup on wall time: {d['speedup_wall']:.2f}x.")


def perplexity_speed(name: str = "perplexity_speed") -> str:
    """bench/perplexity_speed.py: held-out perplexity in eval order vs length-sorted batches."""
    d = _load(name)
    pad, tot = d["padding"], d["tokens_total"]
    return (f"{_provenance(d)}. Padded tokens per real token over {len(d['tokens'])} authors'"
            f" eval sets ({tot['real']:,} real tokens, shots {d['shots']}, batches of"
            f" {d['batch']}): {pad['eval_order']:.2f} in eval order, {pad['sorted']:.2f}"
            f" sorted by length. Largest relative difference of a perplexity between the"
            f" ways: {d['max_relative_difference']:.0e}. "
            + _old_new(d, "batches in eval order", "sorted by length",
                       f"perplexity of {len(d['timed_users'])} eval sets") + "\n")


def confirm_speed(name: str = "confirm_speed") -> str:
    """bench/confirm_speed.py: local confirmation with a load per candidate vs one for all."""
    d = _load(name)
    return (f"{_provenance(d)}. {d['candidates']} candidates and the bare base probed on"
            f" {d['probe']} training messages of each of {len(d['users'])} users, prompt"
            f" format {d['prompt_format']}. Per user: {d['per_user_wall_s']['old']:.1f} s old,"
            f" {d['per_user_wall_s']['new']:.1f} s new. Largest relative difference of a"
            f" perplexity between the ways: {d['max_relative_difference']:.0e}. "
            + _old_new(d, "the base loaded per candidate", "loaded once, adapters in turn",
                       "confirmation") + "\n")


def confirm_race(name: str = "confirm_race") -> str:
    """bench/confirm_race.py: local confirmation on every message vs by successive halving."""
    d = _load(name)
    rows = ["| new user | oracle's best | full probe's choice | race's choice |"
            " sequences: full / race |", "|---|---|---|---|---|"]
    for u, r in d["per_user"].items():
        rows.append(f"| {u} | {r.get('oracle', '-')} | {r['full']['choice']} |"
                    f" {r['race']['choice']} | {r['full']['sequences']} /"
                    f" {r['race']['sequences']} |")
    return (f"{_provenance(d)}. {d['candidates']} candidates and the bare base, {d['probe']}"
            f" probe messages a user, prompt format {d['prompt_format']}.\n\n"
            + "\n".join(rows) + "\n\n"
            f"Same choice both ways: {d['same_choice']} of {len(d['per_user'])}; the oracle's"
            f" best chosen: full {d['full_is_oracle']}, race {d['race_is_oracle']} of"
            f" {d['with_oracle']}. The race ran {d['sequence_share']:.0%} of the full probe's"
            f" sequences. "
            + _old_new(d, "every candidate on every probe message", "successive halving",
                       "confirmation of all users") + "\n")


XPERT_LADDERS = ["xpert_git_ladder", "xpert_styles_ladder", "xpert_git_ladder_lr15",
                 "xpert_styles_ladder_lr15", "xpert_git_pub500", "xpert_git_pub500b",
                 "xpert_git_pub500c", "xpert_git_pub500d", "xpert_styles_pub500",
                 "xpert_git_pub500e", "xpert_git_pub500f", "xpert_git_pub500g",
                 "xpert_git_pub500h", "xpert_git_pub500i"]
TABLES = {"honest-scores": honest_scores, "metrics-reference": metrics_reference, "demo": demo,
          "sense": sense, "decoding": decoding,
          "serve-load": serve_load, "levers": levers, "summary": summary, "llamacpp": llamacpp,
          "levers-best4": lambda: levers("levers_e1-250_best4"),
          "levers-recipes": levers_recipes,
          "compile-memory-large": compile_memory_large,
          "xpert-merges": xpert_merges,
          "xpert-merges-line": lambda: xpert_merges(line=True),
          "compile-memory-qwen05": lambda: compile_memory_large(
              ("compile_memory_qwen05", "compile_memory_qwen05_gc"),
              beside="nothing else ran beside them but a 20-second niced docs test during the"
                     " second file's first variant; tokens/s compare within a file."),
          "levers-recipes-lr6e2": lambda: levers_recipes("levers_recipes_lr6e2"),
          "levers-pick4": lambda: levers("levers_lr6-e1-250_pick4"),
          "levers-recipes-e2": lambda: levers_recipes("levers_recipes_e2"),
          "serve-stagger": lambda: serve_load("serve_stagger"),
          "levers-shots": lambda: levers_recipes("levers_shots"),
          "levers-shots-e2": lambda: levers_recipes("levers_shots_e2"),
          "levers-orpo": lambda: levers_recipes("levers_orpo"),
          "levers-bf16": lambda: levers_recipes("levers_bf16"),
          "levers-mlp": lambda: levers_recipes("levers_mlp"),
          "levers-mlp-shots": lambda: levers_recipes("levers_mlp_shots"),
          "personalize": personalize,
          "levers-goal": lambda: levers("levers_default-bf16-500"),
          "levers-default500": lambda: levers_recipes("levers_default500"),
          "levers-gemma": lambda: levers("levers_gemma-default-bf16-250"),
          "levers-base-gemma": lambda: levers_recipes("levers_base_gemma"),
          "levers-qwen": lambda: levers("levers_qwen-default-bf16-250"),
          "base-cost": base_cost,
          "step-profile": step_profile,
          "eval-memory": eval_memory,
          "gate-residue": gate_residue,
          "eval-memory-line": lambda: eval_memory(line=True),
          "base-cost-line": lambda: base_cost(line=True),
          "levers-base-qwen": lambda: levers_recipes("levers_base_qwen"),
          "levers-base-qwen-best4": lambda: levers_recipes("levers_base_qwen_best4"),
          "generation-lean": lambda: generation_merge("generation_lean"),
          "generation-inplace": lambda: generation_merge("generation_inplace"),
          "generation-shrink": lambda: generation_merge("generation_shrink"),
          "generation-b128": lambda: generation_merge("generation_b128"),
          "generation-merge": lambda: generation_merge("generation_merge"),
          "xpert-confirm": xpert_confirm,
          "xpert-confirm6": lambda: xpert_confirm("xpert_git_confirm6"),
          "xpert-w2": lambda: xpert_confirm("xpert_git_w2"),
          "xpert-styles-w2": lambda: xpert_confirm("xpert_styles_w2"),
          "xpert-cards-w2": xpert_cards,
          "xpert-cards-styles-w2": lambda: xpert_cards("xpert_cards_styles_w2"),
          "serve-load-s12": lambda: serve_load("serve_load_s12"),
          "serve-load-repeats": serve_repeats,
          "serve-load-grid": lambda: serve_load("serve_load_grid"),
          "compile-bf16-parity": compile_parity,
          "compile-bf16-parity-quiet": lambda: compile_parity("compile_bf16_parity_quiet"),
          "compile-default-250": lambda: compile_parity("compile_default_250"),
          "load": load_times,
          "compile-eager-250": lambda: compile_parity("compile_eager_250"),
          "compile-lora-250": lambda: compile_parity("compile_lora_250"),
          "compile-eager-zen5-250": lambda: compile_parity("compile_eager_zen5_250"),
          "compile-default-250-xeon": lambda: compile_parity("compile_default_250_xeon"),
          "best-of-speed": best_of_speed, "perplexity-speed": perplexity_speed,
          "confirm-speed": confirm_speed,
          "xpert-ladder": lambda: xpert_ladder("xpert_git_ladder"),
          "xpert-styles-ladder": lambda: xpert_ladder("xpert_styles_ladder"),
          "xpert-ladder-lr": lambda: xpert_ladder_vs("xpert_git_ladder_lr15", "xpert_git_ladder"),
          "xpert-styles-ladder-lr": lambda: xpert_ladder_vs("xpert_styles_ladder_lr15",
                                                            "xpert_styles_ladder"),
          "xpert-styles-ladder-lr-all": lambda: xpert_ladder("xpert_styles_ladder_lr15"),
          "xpert-pub500": lambda: xpert_ladder("xpert_git_pub500"),
          "xpert-pub500b": lambda: xpert_ladder("xpert_git_pub500b"),
          "xpert-pub500c": lambda: xpert_ladder("xpert_git_pub500c"),
          "xpert-pub500d": lambda: xpert_ladder("xpert_git_pub500d"),
          "xpert-styles-pub500": lambda: xpert_ladder("xpert_styles_pub500"),
          "xpert-pub500e": lambda: xpert_ladder("xpert_git_pub500e"),
          "xpert-pub500f": lambda: xpert_ladder("xpert_git_pub500f"),
          "xpert-pub500g": lambda: xpert_ladder("xpert_git_pub500g"),
          "xpert-pub500h": lambda: xpert_ladder("xpert_git_pub500h"),
          "xpert-pub500i": lambda: xpert_ladder("xpert_git_pub500i"),
          "xpert-goal": lambda: xpert_goal(XPERT_LADDERS),
          "xpert-neighbour": xpert_neighbour,
          "confirm-race": confirm_race}


def render(text: str) -> str:
    def one(m: re.Match) -> str:
        make = TABLES.get(m["name"])
        if make is None:
            raise SystemExit(f"error: README.md: unknown generated block {m['name']!r}")
        try:
            body = make()
        except FileNotFoundError as e:
            body = f"(not measured yet: {Path(e.filename).name} is missing)\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = render(text)
        if new != text:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        print(f"{', '.join(str(d.relative_to(ROOT)) for d in stale)}: generated tables are out"
              " of date: run bench/readme_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
