"""What every command module shares: the home's connection, data on stdout, notes on stderr."""

from __future__ import annotations

import json

import click


def conn():
    from ..home import connect

    return connect()


def err(msg: str) -> None:
    click.echo(msg, err=True)


def out(data, as_json: bool, text: str) -> None:
    """One JSON document with --json, else the text; always on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)
