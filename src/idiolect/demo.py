"""`make demo`: import one author, freeze the eval set, compile a SmolLM2 adapter, draft a message.

Re-running is safe: the import adds nothing new, the frozen eval set is kept, and a new adapter
replaces the previous one as active (the old one is retired, for rollback).
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
    args = ap.parse_args(argv)

    from .cli import _step_printer
    from .compile.recipe import Recipe
    from .compile.run import CompileRequest, compile_adapter
    from .draft import draft
    from .errors import IdiolectError
    from .generate import GenerationConfig
    from .home import connect, home_dir
    from .vault import store
    from .vault.ingest import detect_format, read_source

    def say(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    try:
        if not args.source.exists():
            raise IdiolectError(f"{args.source}: no such file; pass CORPORA=PATH to `make demo`")
        conn = connect()
        fmt = detect_format(args.source)
        msgs = read_source(args.source, fmt)
        r = store.import_messages(conn, args.user, msgs, source=str(args.source), fmt=fmt)
        say(f"[1/4] imported {args.source} ({fmt}): read {r.read}, added {r.added},"
            f" duplicates {r.duplicates}")
        ev = store.eval_set(conn, args.user) or store.freeze_eval(conn, args.user, args.eval_size)
        say(f"[2/4] frozen eval set: {ev['size']} messages (digest {ev['digest'][:12]})")
        say(f"[3/4] compiling a LoRA adapter on {args.examples} messages (CPU) ...")
        recipe = Recipe(epochs=args.epochs)
        m = compile_adapter(conn, CompileRequest(args.user, args.base, args.examples, recipe),
                            log=lambda s: print("      " + s[:200], file=sys.stderr),
                            progress=_step_printer(every=5))
        t = m["timings"]
        say(f"      adapter {m['id']}: {m['tokens']['seen']} tokens in {t['train_s']}s"
            f" ({t['tokens_per_s']} tok/s), load {t['load_s']}s, peak RSS {m['peak_rss_mb']} MB,"
            f" loss {m['metrics']['train_loss_first']} -> {m['metrics']['train_loss_last']}")
        subject = "refs: avoid reading the packed-refs file twice"
        d = draft(conn, args.user, subject, ["git@vger.kernel.org"], base=args.base,
                  cfg=GenerationConfig(max_new_tokens=120, batch_size=1))
        say(f"[4/4] draft in {args.user}'s voice:\n\nSubject: {subject}\n\n{d['body']}\n")
        say(f"home:    {home_dir()}\nadapter: {home_dir() / 'adapters' / m['id']}\n"
            f"total:   {time.perf_counter() - t0:.0f}s")
    except IdiolectError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
