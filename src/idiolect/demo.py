"""`make demo`: import one author, freeze the eval set, compile a SmolLM2 adapter through the
gate, draft a message.

The gate compares the new adapter with other users' real text (a user's first adapter must beat
the calibrated floor), so the demo also imports one other author beside the source when there is
one (``--cohort``; default: the first other ``.jsonl`` in the source's folder) and freezes their
eval set too. Re-running is safe: the import adds nothing new, the frozen eval sets are kept, and
a new adapter that passes the gate replaces the previous one (retired, for rollback).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m idiolect.demo", description=__doc__)
    ap.add_argument("--source", type=Path, required=True, help="file or folder to import")
    ap.add_argument("--user", default="demo")
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--eval-size", type=int, default=20)
    ap.add_argument("--base", default=None)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--cohort", type=Path, default=None,
                    help="another author to compare against (default: a sibling .jsonl)")
    args = ap.parse_args(argv)

    from .commands._io import home_root, step_printer
    from .compile.recipe import for_base
    from .compile.run import CompileRequest
    from .draft import draft
    from .errors import IdiolectError
    from .evaluate.run import EvalConfig
    from .generate import GenerationConfig
    from .home import Home
    from .pipeline import build
    from .vault import store
    from .vault.ingest import detect_format, read_source

    def say(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    try:
        if not args.source.exists():
            raise IdiolectError(f"{args.source}: no such file; pass CORPORA=PATH to `make demo`")
        home = Home.open(home_root())
        conn = home.conn
        fmt = detect_format(args.source)
        msgs = read_source(args.source, fmt)
        r = store.import_messages(conn, args.user, msgs, source=str(args.source), fmt=fmt)
        say(f"[1/4] imported {args.source} ({fmt}): read {r.read}, added {r.added},"
            f" duplicates {r.duplicates}")
        ev = store.eval_set(conn, args.user) or store.freeze_eval(conn, args.user, args.eval_size)
        say(f"[2/4] frozen eval set: {ev['size']} messages (digest {ev['digest'][:12]})")
        other = args.cohort or _sibling(args.source)
        if other is not None:
            name = other.stem
            if store.eval_set(conn, name) is None:
                store.import_messages(conn, name, read_source(other, detect_format(other)),
                                      source=str(other), fmt=detect_format(other))
                store.freeze_eval(conn, name, args.eval_size)
            say(f"      cohort: {name} ({other}) imported and frozen, to compare against")
        say(f"[3/4] compiling a LoRA adapter on {args.examples} messages (CPU), then the gate ...")
        recipe = for_base(args.base, epochs=args.epochs)  # the base's recipe, demo-sized
        m, d = build(home, CompileRequest(args.user, args.base, args.examples, recipe),
                     eval_cfg=EvalConfig(), log=lambda s: print("      " + s[:200], file=sys.stderr),
                     progress=step_printer(every=5))
        t = m.timings
        say(f"      adapter {m.id}: {m.tokens['seen']} tokens in {t['train_s']}s"
            f" ({t['tokens_per_s']} tok/s), load {t['load_s']}s, peak RSS {m.peak_rss_mb} MB,"
            f" loss {m.metrics['train_loss_first']} -> {m.metrics['train_loss_last']}")
        say(f"      gate: {d.status}: {d.reason}")
        subject = "refs: avoid reading the packed-refs file twice"
        dr = draft(home, args.user, subject, ["git@vger.kernel.org"], base=args.base,
                   adapter_id=m.id, cfg=GenerationConfig(max_new_tokens=120, batch_size=1))
        who = "" if d.status == "promoted" else f" (the {d.status} adapter {m.id}, not active)"
        say(f"[4/4] draft in {args.user}'s voice{who}:\n\nSubject: {subject}\n\n{dr['body']}\n")
        say(f"home:    {home.root}\nadapter: {home.adapters_dir / m.id}\n"
            f"total:   {time.perf_counter() - t0:.0f}s")
    except IdiolectError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _sibling(source: Path) -> Path | None:
    """The first other .jsonl beside ``source`` (the shared corpora keep one author a file)."""
    if not source.is_file():
        return None
    others = sorted(p for p in source.parent.glob("*.jsonl") if p.resolve() != source.resolve())
    return others[0] if others else None


if __name__ == "__main__":
    sys.exit(main())
