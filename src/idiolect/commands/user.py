"""`idiolect user ...`: import a user's writing, freeze the eval set, list and show users."""

from __future__ import annotations

from pathlib import Path

import click

from ._io import CONTEXT
from ._io import conn as _conn
from ._io import show as _show


@click.group(context_settings=CONTEXT)
def user() -> None:
    """Users and their vaults: import, freeze the eval set, inspect."""


@user.command("import")
@click.argument("name")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="auto",
              type=click.Choice(["auto", "mbox", "maildir", "eml", "jsonl", "text", "git"]),
              help="Source format (auto: detect from the path).")
@click.option("--address", multiple=True,
              help="Mail only: keep what this address sent (repeatable; `a at example.com`"
                   " in archives matches).")
@click.option("--author", help="git: the commit author to import (name or email pattern).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def user_import(name, sources, fmt, address, author, as_json) -> None:
    """Import a user's own writing (all sources read first, then one transaction)."""
    from ..vault.ingest import detect_format, read_source
    from ..vault.store import import_sources, valid_user_name

    valid_user_name(name)
    batches = []
    for src in sources:
        f = detect_format(src) if fmt == "auto" else fmt
        batches.append((src, f, read_source(src, f, addresses=address, author=author)))
    imported = import_sources(_conn(), name, [(str(src), f, msgs) for src, f, msgs in batches],
                              addresses=address)
    results = [r.__dict__ for r in imported]
    lines = [f"{r['source']}: read {r['read']}, added {r['added']}, duplicates {r['duplicates']}"
             f" ({r['format']})"
             + "".join(f"\n  skipped {p}: {why}" for p, why in r.get("skipped", ()))
             + "".join(f"\n  warning: {w}" for w in r.get("warnings", ())) for r in results]
    _show(results, as_json, "\n".join(lines))


@user.command("freeze-eval")
@click.argument("name")
@click.option("--size", default=50, show_default=True, help="Messages held out for evaluation.")
@click.option("--seed", default=0, show_default=True)
@click.option("--reference", default=100, show_default=True,
              help="Messages reserved to fit the style scorers (at most a quarter of the rest);"
                   " never trained on either.")
@click.option("--json", "as_json", is_flag=True)
def user_freeze(name, size, seed, reference, as_json) -> None:
    """Freeze the user's evaluation set and reference split once; never trained on, never
    changed."""
    from ..vault.store import freeze_eval

    ev = freeze_eval(_conn(), name, size=size, seed=seed, reference=reference)
    data = {k: ev[k] for k in ("user", "size", "seed", "digest", "created_at")}
    data["reference"] = len(ev["reference_ids"])
    _show(data, as_json, f"froze {ev['size']} eval messages for {name} (digest"
                         f" {ev['digest'][:12]}) and a reference split of {data['reference']}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
def user_list(as_json) -> None:
    """List users with their message counts."""
    from ..vault.store import list_users

    users = list_users(_conn(create=False))
    text = "\n".join(f"{u['user']}\t{u['messages']} messages\teval {u['eval_size'] or '-'}"
                     for u in users) or "(no users)"
    _show(users, as_json, text)


@user.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def user_show(name, as_json) -> None:
    """Show a user's vault, eval set and adapters."""
    from ..vault.store import user_info

    info = user_info(_conn(create=False), name)
    _show(info, as_json, _info_text(info))


def _info_text(u: dict) -> str:
    ev = u["eval_set"]
    lines = [f"{u['user']}: {u['messages']} messages"
             + (f" ({', '.join(u['addresses'])})" if u["addresses"] else ""),
             f"  eval set: {ev['size']} messages frozen {ev['created_at']} (seed {ev['seed']},"
             f" digest {ev['digest'][:12]})" if ev else "  eval set: not frozen yet"
             f" (`idiolect user freeze-eval {u['user']}`)"]
    lines += [f"  import {i['at']}: {i['source']} ({i['format']}): read {i['read']}, added"
              f" {i['added']}, duplicates {i['duplicates']}" for i in u["imports"]]
    lines += [f"  adapter {a['id']} on {a['base']}: {a['state']}" for a in u["adapters"]]
    return "\n".join(lines)
