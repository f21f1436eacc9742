"""Calibration of the style scores on the git-authors cohort (12 real writers).

Per author: a seeded hold-out of --heldout messages is the eval set; the rest is training. The
style scaler is fitted on the per-author profiles of all training messages, the authorship
classifier on at most --max-train training messages per author. For every author the ceiling
(own real text) and floor (other authors' held-out text) of fingerprint distance and authorship
probability are written to bench/results/calibration.json with run_info, and printed as a table.

    .venv/bin/python bench/calibration.py            # about 1 minute on 2 CPU cores

Definitions: docs/metrics.md. The corpora live beside the repo (../shared/corpora) and are read
in place, never copied.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import idiolect  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

from idiolect.compile.train import peak_rss_mb  # noqa: E402
from idiolect.evaluate.authorship import (  # noqa: E402
    AuthorshipModel, AuthorshipParams, cohort_digest)
from idiolect.evaluate.calibrate import calibrate  # noqa: E402
from idiolect.evaluate.novelty import novelty  # noqa: E402
from idiolect.evaluate.stylometry import FEATURE_NAMES, StyleScaler  # noqa: E402

DEFAULT_CORPORA = ROOT.parent / "shared" / "corpora" / "git-authors"
DEFAULT_OUT = ROOT / "bench" / "results" / "calibration.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA,
                   help="folder of <author>.jsonl files (fields id, user, date, subject, to, body)")
    p.add_argument("--heldout", type=int, default=50, help="held-out (eval) messages per author")
    p.add_argument("--max-train", type=int, default=500,
                   help="cap on training messages per author for the classifier")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out split and samples")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON path")
    return p.parse_args(argv)


def load_cohort(folder: Path) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Messages per author (file stem) and the sha256 of each file."""
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        sys.exit(f"error: no *.jsonl files in {folder} (the shared corpora live at "
                 f"{DEFAULT_CORPORA.parent})")
    messages, digests = {}, {}
    for path in files:
        raw = path.read_bytes()
        digests[path.name] = hashlib.sha256(raw).hexdigest()
        messages[path.stem] = [json.loads(line) for line in raw.decode("utf-8").splitlines()
                               if line.strip()]
    return messages, digests


def split(messages: list[dict], heldout: int, seed: int, author: str
          ) -> tuple[list[str], list[str]]:
    """Seeded (seed, author) hold-out of message bodies: (train, eval)."""
    rng = np.random.default_rng([seed, zlib.crc32(author.encode("utf-8"))])
    order = rng.permutation(len(messages))
    bodies = [messages[i]["body"] for i in order]
    return bodies[heldout:], bodies[:heldout]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("idiolect", "numpy", "scikit-learn", "scipy", "joblib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    print(f"config: corpora={args.corpora} heldout={args.heldout} max_train={args.max_train} "
          f"seed={args.seed} out={args.out}", file=sys.stderr)
    messages, digests = load_cohort(args.corpora)
    train, held = {}, {}
    for author, msgs in messages.items():
        train[author], held[author] = split(msgs, args.heldout, args.seed, author)

    t = time.perf_counter()
    scaler = StyleScaler.from_cohort(train)
    scaler_s = time.perf_counter() - t
    print(f"style scaler: {len(train)} profiles x {len(FEATURE_NAMES)} features "
          f"in {scaler_s:.1f}s", file=sys.stderr)
    t = time.perf_counter()
    params = AuthorshipParams(max_texts_per_user=args.max_train)
    model = AuthorshipModel(params).fit(train, seed=args.seed)
    fit_s = time.perf_counter() - t
    print(f"authorship classifier: {len(model.users)} users in {fit_s:.1f}s", file=sys.stderr)

    per_user = {}
    for author in sorted(train):
        per_user[author] = calibrate(author, held[author], train[author], held, scaler, model,
                                     seed=args.seed)
        # Reference for the memorization check: how much an author's real held-out messages
        # share with their own training messages (boilerplate, quoted code, repeated phrasing).
        nov = novelty(held[author], train[author])
        per_user[author]["novelty_heldout_vs_train"] = {
            k: nov[k] for k in ("n", "copied_ngram_share", "max_span", "flag_words", "flagged",
                                "verbatim")}
    all_held = [t for u in model.users for t in held[u]]
    truth = np.repeat(np.arange(len(model.users)), [len(held[u]) for u in model.users])
    proba = model.predict_proba(all_held)
    accuracy = float((proba.argmax(axis=1) == truth).mean())
    log_loss = float(-np.log(np.maximum(proba[np.arange(len(truth)), truth], 1e-15)).mean())

    def mean_of(metric: str, key: str) -> float:
        return float(np.mean([c[metric][key] for c in per_user.values()]))

    summary = {f"{m}.{k}": mean_of(m, k)
               for m in ("fingerprint_distance", "authorship_probability")
               for k in ("ceiling", "floor", "floor_best")}
    summary["authorship_top1_accuracy"] = accuracy
    summary["authorship_log_loss"] = log_loss
    summary["novelty_heldout_vs_train.copied_ngram_share"] = float(np.mean(
        [c["novelty_heldout_vs_train"]["copied_ngram_share"] for c in per_user.values()]))
    summary["novelty_heldout_vs_train.flagged"] = int(sum(
        c["novelty_heldout_vs_train"]["flagged"] for c in per_user.values()))
    summary["chance"] = model.chance
    summary["fingerprint_ceiling_below_best_floor"] = sum(
        c["fingerprint_distance"]["ceiling"] < c["fingerprint_distance"]["floor_best"]
        for c in per_user.values())
    result = {
        "run_info": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started_at": started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - t0, 2),
            "status": "ok",
            "packages": versions(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "peak_memory_mb": round(peak_rss_mb(), 1),
        },
        "meta_info": {
            "corpora": str(args.corpora.resolve().relative_to(ROOT.parent)
                           if args.corpora.resolve().is_relative_to(ROOT.parent)
                           else args.corpora),
            "data_sha256": digests,
            "definitions": "docs/metrics.md",
        },
        "train_info": {
            "seed": args.seed,
            "heldout_per_user": args.heldout,
            "train_per_user": {u: len(t) for u, t in sorted(train.items())},
            "cohort_digest": cohort_digest(train),
            "scaler": {"features": len(FEATURE_NAMES), "fit_s": round(scaler_s, 2),
                       "rel_floor": scaler.rel_floor, "abs_floor": scaler.abs_floor},
            "classifier": {"params": vars(params) | {"char_ngrams": list(params.char_ngrams),
                                                     "word_ngrams": list(params.word_ngrams)},
                           "fit_s": round(fit_s, 2)},
        },
        "summary": summary,
        "per_user": per_user,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"\n{'author':<22} {'n_train':>7} | {'FD ceil':>7} {'FD floor':>8} {'FD best':>7} | "
          f"{'AP ceil':>7} {'AP floor':>8} {'AP best':>7} | {'nov8':>5} {'flag':>4}")
    print("-" * 100)
    for author, c in per_user.items():
        fd, ap, nv = (c["fingerprint_distance"], c["authorship_probability"],
                      c["novelty_heldout_vs_train"])
        print(f"{author:<22} {len(train[author]):>7} | {fd['ceiling']:>7.3f} {fd['floor']:>8.3f} "
              f"{fd['floor_best']:>7.3f} | {ap['ceiling']:>7.3f} {ap['floor']:>8.3f} "
              f"{ap['floor_best']:>7.3f} | {nv['copied_ngram_share']:>5.3f} {nv['flagged']:>4}")
    print("-" * 100)
    s = summary
    print(f"{'mean':<22} {'':>7} | {s['fingerprint_distance.ceiling']:>7.3f} "
          f"{s['fingerprint_distance.floor']:>8.3f} {s['fingerprint_distance.floor_best']:>7.3f} | "
          f"{s['authorship_probability.ceiling']:>7.3f} {s['authorship_probability.floor']:>8.3f} "
          f"{s['authorship_probability.floor_best']:>7.3f} | "
          f"{s['novelty_heldout_vs_train.copied_ngram_share']:>5.3f} "
          f"{s['novelty_heldout_vs_train.flagged']:>4}")
    print(f"\nchance (1/K) = {model.chance:.3f}; top-1 accuracy on held-out = {accuracy:.3f} "
          f"(log loss {log_loss:.3f}); "
          f"FD ceiling below the closest other author for "
          f"{s['fingerprint_ceiling_below_best_floor']}/{len(per_user)} authors")
    print("FD = fingerprint distance (lower is better), AP = authorship probability; best = the "
          "other author closest to the ceiling; nov8/flag = share of held-out 8-grams found in the "
          "author's own training messages / held-out messages with a copied span >= 20 words")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
