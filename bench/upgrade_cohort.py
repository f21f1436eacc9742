"""Recompile, don't transport, on the 12-author cohort: the transport table and gated recompiles.

    # 1. transport table: every author's adapter on --from diagnosed (and really loaded) on --to
    .venv/bin/python bench/upgrade_cohort.py transport --from smollm2-135m --to qwen2.5-coder-0.5b
    # 2. recompile with `idiolect upgrade` (diagnose, compile, evaluate, gate, promote)
    .venv/bin/python bench/upgrade_cohort.py upgrade --from smollm2-135m --to qwen2.5-coder-0.5b \\
        --users jeff-king,patrick-steinhardt,taylor-blau --examples 250
    .venv/bin/python bench/upgrade_cohort.py plot
    # 3. both papers at once: the recompile starts from the best catalog adapter for --to
    .venv/bin/python bench/upgrade_cohort.py upgrade --from smollm2-135m --to qwen2.5-coder-0.5b \\
        --users jeff-king --examples 100 --warm-start auto --publish patrick-steinhardt,taylor-blau

Uses the cohort home of bench/personalize.py (12 authors imported, 50-message eval sets frozen,
SmolLM2 adapters compiled on 250 messages for the users it names, and made active there). The
upgrade phase recompiles the users' *active* adapters on --from: an original compiled by hand
with ``idiolect compile`` is active only if it passed the gate, so compile it with
``--candidate`` and make it the original with ``idiolect adapter promote ID --force``. An author
with no adapter on --from gets a short one for the transport table (``--short-examples``
messages, a candidate, never activated): a transport diagnosis depends only on the adapter's
structure (modules, shapes, base fingerprint), which does not change with the amount of data, so
the table says which rows use such adapters. Results accumulate in
bench/results/upgrade_cohort.json (one entry per transition and per upgrade) and the plot in
bench/results/upgrade_cohort.png. With ``--warm-start auto`` the ``--publish`` users' adapters on
--to are published (card from their generations) to a fresh loopback catalog first, and the entry
lists beside each user the plain recompiles of the same user at every size (``plain``), so that
compute and quality can be read against them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPORA, REPO, RESULTS, Run, file_digest, fresh_catalog  # noqa: E402

NAME = "upgrade_cohort"


def log(s: str) -> None:
    print("   " + s[:200], file=sys.stderr, flush=True)


def previous() -> dict:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def latest_adapter(conn, user: str, base: str):
    """The user's active adapter on ``base``, else their newest one there (any state)."""
    row = conn.execute("SELECT * FROM adapters WHERE user=? AND base=? ORDER BY"
                       " (state='active') DESC, created_at DESC LIMIT 1", (user, base)).fetchone()
    return row


def transport_table(home, users: list[str], src: str, dst: str, short_examples: int) -> list[dict]:
    from idiolect import transport
    from idiolect.compile.recipe import Recipe
    from idiolect.compile.run import CompileRequest, compile_adapter
    from idiolect.manifest import Manifest

    conn = home.conn
    rows = []
    for user in users:
        row, kind = latest_adapter(conn, user, src), "existing"
        if row is None:
            log(f"{user}: no adapter on {src}: compiling a short one ({short_examples} messages)")
            m = compile_adapter(home, CompileRequest(user, src, short_examples, Recipe(epochs=1)))
            row, kind = latest_adapter(conn, user, src), f"short ({short_examples} messages)"
            assert row["id"] == m.id
        t = time.perf_counter()
        d = transport.diagnose(home, row["id"], dst)
        tried = transport.try_load(home, row["id"], dst, diagnosis_id=d["id"])
        messages = Manifest.read(Path(row["path"])).snapshot["messages"]
        rows.append({"user": user, "adapter": row["id"], "adapter_kind": kind,
                     "adapter_messages": messages, "verdict": d["verdict"],
                     "message": d["message"],
                     "architecture_same": d["architecture"]["same"],
                     "tokenizer_same": d["tokenizer"]["same"], "shapes": d["shapes"],
                     "modules": {k: d["modules"][k] for k in ("adapted", "present")},
                     "loaded": tried["loaded"], "load_error": tried["error"],
                     "seconds": round(time.perf_counter() - t, 1)})
        log(f"{user}: {d['verdict']}: {d['message']} | load: {tried['error'] or 'ok'}")
    return rows


def run_upgrade(home, src: str, dst: str, users: list[str], examples: int | None,
                limit: int | None, catalog_url: str | None = None) -> dict:
    from idiolect.evaluate.run import EvalConfig
    from idiolect.fleet.executors import LocalExecutor
    from idiolect.upgrade import WarmStartConfig, upgrade

    cfg = EvalConfig(limit=limit)
    warm = WarmStartConfig("auto", catalog_url) if catalog_url else None
    return upgrade(home, dst, users=users, examples=examples, from_base=src,
                   executor=LocalExecutor(max_workers=1), eval_config=cfg, redo=True,
                   warm=warm, log=log)


def publish(home, users: list[str], base: str, url: str, card_limit: int) -> list[dict]:
    """Each user's adapter on ``base`` published to the catalog at ``url``, card and all."""
    from idiolect.catalog.warm_start import publish_adapter
    from idiolect.manifest import Manifest

    out = []
    for user in users:
        row = latest_adapter(home.conn, user, base)
        if row is None:
            sys.exit(f"--publish: {user} has no adapter on {base}")
        t = time.perf_counter()
        pub = publish_adapter(home, row["id"], url, "bench", limit=card_limit, log=log)
        m = Manifest.read(Path(row["path"]))
        out.append({"user": user, "local": row["id"], "id": pub["id"], "state": row["state"],
                    "messages": m.snapshot["messages"], "tokens": m.tokens["seen"],
                    "card_s": round(time.perf_counter() - t, 1),
                    "summary": pub["card"].get("summary")})
        log(f"published {user} ({row['id']}) as {pub['id']}")
    return out


def plain_runs(upgrades: dict, key: str, user: str) -> dict:
    """The plain (from the base) recompiles of ``user`` at ``key``, by size: cost and scores."""
    out = {}
    for entry, up in upgrades.items():
        if not entry.startswith(key + " @ ") or up.get("warm_start"):
            continue
        for u in up["users"]:
            if u["user"] == user and u.get("scores"):
                c = u.get("compile", {})  # entries before 2026-11-30 record the seconds only
                out[entry.split(" @ ")[1]] = {
                    "status": u["status"], "tokens": c.get("tokens"), "steps": c.get("steps"),
                    "train_s": c.get("train_s"), "compile_s": u["seconds"]["compile"],
                    **{m: u["scores"]["candidate"][m] for m in
                       ("perplexity", "fingerprint_distance", "authorship_probability")}}
    return out


def stamp(run: Run) -> dict:
    """Which command made an entry, when, at which revision (entries accumulate across runs)."""
    from common import git_rev

    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "git": git_rev(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.start)),
            "wall_s": round(time.time() - run.start, 1)}


def merge_entry(prev: dict | None, rep: dict, run: dict) -> dict:
    """An upgrade entry with this run's users added to (or replacing theirs in) a previous run's
    at the same transition and size: users are upgraded one run at a time here."""
    if not prev:
        return rep | {"run": run}
    mine = {u["user"] for u in rep["users"]}
    runs = prev.get("runs") or [prev["run"] | {"fleet": prev.get("fleet"),
                                               "users": [u["user"] for u in prev["users"]]}]
    users = [u for u in prev["users"] if u["user"] not in mine] + rep["users"]
    summary = {s: sum(u["status"] == s for u in users) for s in rep.get("summary", {})}
    return rep | {"users": users, "summary": summary, "run": run,
                  "runs": runs + [run | {"fleet": rep.get("fleet"), "users": sorted(mine),
                                         "seconds": rep.get("seconds")}]}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(k, v) for k, v in sorted(doc.get("upgrades", {}).items())]
    if not runs:
        return
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.4 * len(runs)), squeeze=False)
    for (key, up), ax_row in zip(runs, axes):
        users = [u for u in up["users"] if u.get("scores")]
        turn = len(users) > 4  # names overlap past four users
        for ax, m, title in ((ax_row[0], "fingerprint_distance", "fingerprint distance (lower better)"),
                             (ax_row[1], "authorship_probability", "authorship probability (higher better)")):
            for i, u in enumerate(users):
                c = u["scores"]["calibration"][m]
                ax.plot([i, i], [c["floor"], c["ceiling"]], color="#ddd", lw=8, solid_capstyle="butt")
                ax.scatter([i], [c["ceiling"]], marker="_", s=300, color="green", label="ceiling" if i == 0 else None)
                ax.scatter([i], [c["floor"]], marker="_", s=300, color="red", label="floor" if i == 0 else None)
                ax.scatter([i], [u["scores"]["base"][m]], color="#999", label="new bare base" if i == 0 else None, zorder=3)
                old = (u["gate"].get("old") or {}).get(m)
                if old is not None:
                    ax.scatter([i], [old], color="#e08a2c", marker="s", label="original adapter" if i == 0 else None, zorder=3)
                ax.scatter([i], [u["scores"]["candidate"][m]], color="#3b7dd8", marker="D",
                           label="recompiled" if i == 0 else None, zorder=4)
                ax.annotate(u["status"], (i, u["scores"]["candidate"][m]), fontsize=6,
                            xytext=(4, 4), textcoords="offset points")
            ax.set_xticks(range(len(users)), [u["user"] for u in users], fontsize=7,
                          rotation=25 if turn else 0, ha="right" if turn else "center")
            label = key.split(" from ")[0] + " start" if " warm from " in key else key
            ax.set_title(f"{label}: {title}", fontsize=8)
        ax_row[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["transport", "upgrade", "plot"])
    ap.add_argument("--from", dest="src", default="smollm2-135m")
    ap.add_argument("--to", dest="dst", default="qwen2.5-coder-0.5b")
    ap.add_argument("--users", help="comma-separated (default: all 12 for transport)")
    ap.add_argument("--examples", type=int, help="training messages for the recompile")
    ap.add_argument("--limit", type=int, help="evaluate on the first N eval messages only")
    ap.add_argument("--short-examples", type=int, default=8)
    ap.add_argument("--warm-start", choices=["none", "auto"], default="none",
                    help="auto: start each recompile from the best catalog adapter for --to")
    ap.add_argument("--publish", help="comma-separated users whose adapters on --to make the"
                    " catalog (with --warm-start auto)")
    ap.add_argument("--card-limit", type=int, default=16, help="prompts per published card")
    ap.add_argument("--home", type=Path, default=REPO / "bench" / "_work" / "cohort-home")
    args = ap.parse_args()
    if (args.warm_start == "auto") != bool(args.publish):
        ap.error("--warm-start auto and --publish go together")
    if args.phase == "plot":
        plot(previous(), RESULTS / f"{NAME}.png")
        return
    from idiolect.home import Home
    from idiolect.vault import store

    home = Home.open(args.home)
    cohort = [u["user"] for u in store.list_users(home.conn) if u["eval_size"]]
    if len(cohort) < 2:
        sys.exit(f"{args.home}: no cohort; run bench/personalize.py first")
    users = args.users.split(",") if args.users else cohort
    run = Run(NAME, {k: str(v) for k, v in vars(args).items()})
    old = previous()
    run.results = {k: old.get(k, {}) for k in ("transport", "upgrades")}
    run.meta["data"] = {p.name: file_digest(p) for p in sorted((CORPORA / "git-authors").glob("*.jsonl"))}
    key = f"{args.src} -> {args.dst}"
    if args.phase == "transport":
        rows = transport_table(home, users, args.src, args.dst, args.short_examples)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        run.results["transport"][key] = {"rows": rows, "verdicts": counts,
                                         "loaded": sum(r["loaded"] for r in rows),
                                         "run": stamp(run)}
        print(json.dumps(counts))
    else:
        url, stop, published = None, None, None
        if args.warm_start == "auto":
            url, stop = fresh_catalog(args.home / "server-upgrade-cohort")
            published = publish(home, args.publish.split(","), args.dst, url, args.card_limit)
        try:
            rep = run_upgrade(home, args.src, args.dst, users, args.examples, args.limit, url)
        finally:
            if stop:
                stop()
        entry = f"{key} @ {args.examples or 'as before'}"
        if published:
            entry += f" warm from {args.publish}"
            rep["warm_start"] = {"published": published}
            for u in rep["users"]:
                u["plain"] = plain_runs(run.results["upgrades"], key, u["user"])
        run.results["upgrades"][entry] = merge_entry(run.results["upgrades"].get(entry), rep,
                                                     stamp(run))
        for u in rep["users"]:
            print(f"{u['user']:<22} {u['status']:<9} {u.get('seconds', {}).get('total', '')}"
                  f"  {u['reason']}")
    print(f"wrote {run.write()}")
    plot(run.results, RESULTS / f"{NAME}.png")


if __name__ == "__main__":
    main()
