"""`idiolect path`: where the state lives."""

from __future__ import annotations

import click

from ._io import home_root


@click.command()
def path() -> None:
    """Print the home directory (IDIOLECT_HOME, default ~/.idiolect)."""
    click.echo(str(home_root()))
