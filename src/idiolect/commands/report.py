"""`idiolect report [USER...] [--out DIR] [--base NAME] [--json]`: the evaluation page.

Registered on the main group in cli.py with ``cli.add_command(report)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._io import CONTEXT


@click.command("report", context_settings=CONTEXT)
@click.argument("users", nargs=-1)
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for index.html and its plots (default: $IDIOLECT_HOME/reports/html).")
@click.option("--base", "base_name", help="Only adapters on this base (default: any base).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def report(users, out_dir, base_name, as_json) -> None:
    """Write an HTML page of stored evaluations: scores, calibration, plots, samples."""
    from ..evaluate.report import render_report
    from ._io import home

    r = render_report(home(), list(users) or None, out_dir, base_name)
    for a in r["adapters"]:
        if not a["full_result"]:
            click.echo(f"note: {a['user']} ({a['adapter']}): no saved evaluation result, the page"
                       f" shows the stored scores without samples", err=True)
    if as_json:
        click.echo(json.dumps(r, indent=2, sort_keys=True))
    else:
        click.echo(r["index"])
