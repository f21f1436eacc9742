"""`idiolect path`: where the state lives."""

from __future__ import annotations

import click

from ._io import CONTEXT, home_root, out


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def path(as_json) -> None:
    """Print the home directory (IDIOLECT_HOME, default ~/.idiolect)."""
    root = home_root()
    out({"home": str(root), "exists": (root / "idiolect.db").exists()}, as_json, str(root))
