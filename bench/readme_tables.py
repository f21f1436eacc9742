"""Generate the README's measured tables from bench/results/*.json, so no number is typed by hand.

The README marks each generated block:

    <!-- generated: NAME -->
    ...
    <!-- /generated -->

and this script rewrites what is between the markers from the results file(s) that NAME reads.
`tests/test_docs.py` checks the README is up to date with the results in the repo.

    .venv/bin/python bench/readme_tables.py          # rewrite README.md in place
    .venv/bin/python bench/readme_tables.py --check  # exit 1 if it would change
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)",
                   re.S)


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _provenance(doc: dict) -> str:
    ri = doc["run_info"]
    cpu = doc.get("meta_info", {}).get("cpu", {}).get("model") or "?"
    dirty = {True: ", uncommitted changes", False: "", None: ""}[ri.get("git_dirty")]
    return (f"`{ri['command']}`; commit {ri.get('git') or '?'}{dirty}; {cpu};"
            f" {ri['wall_s']:.0f} s; status {ri['status']}")


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


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


def serve_load() -> str:
    d = _load("serve_load")
    cells = d["cells"]
    rows = ["| mode | clients | adapters | tokens/s | TTFT p50 / p95 ms | per token p50 / p95 ms |"
            " rows per pass |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        rows.append(f"| {c['mode']} | {c['clients']} | {c['adapters']} | {c['tokens_per_s']} |"
                    f" {c['ttft_ms']['p50']:.0f} / {c['ttft_ms']['p95']:.0f} |"
                    f" {c['tpot_ms']['p50']:.0f} / {c['tpot_ms']['p95']:.0f} |"
                    f" {c.get('rows_per_pass', '')} |")
    by = {(c["mode"], c["clients"], c["adapters"]): c for c in cells}
    goal = ""
    mixed, serial = by.get(("mixed", 16, 12)), by.get(("serial", 16, 12))
    if mixed and serial:
        goal = (f" With 16 clients over 12 adapters, mixed batching gives"
                f" {mixed['tokens_per_s'] / serial['tokens_per_s']:.1f}x the tokens/s of one"
                f" request at a time (goal 5x); p95 time to first token"
                f" {mixed['ttft_ms']['p95'] / 1000:.2f} s (goal under 2 s).")
    return "\n".join([f"{_provenance(d)}; base {d['meta_info'].get('base')}.{goal}", "",
                      *rows]) + "\n"


TABLES = {"honest-scores": honest_scores, "sense": sense, "decoding": decoding,
          "serve-load": serve_load}


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
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md: generated tables are out of date: run bench/readme_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
