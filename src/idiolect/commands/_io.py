"""What every command module shares: the home (opened once per command), data on stdout, notes
on stderr. ``IDIOLECT_HOME`` is read here and nowhere else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

HOME_ENV = "IDIOLECT_HOME"
CONTEXT = {"help_option_names": ["-h", "--help"]}  # every command, whatever group invokes it


def home_root() -> Path:
    """The state directory named by ``IDIOLECT_HOME`` (default ``~/.idiolect``)."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".idiolect"


def home(create: bool = True):
    """The command's ``Home``: opened on first use, closed when the command ends. Read-only
    commands pass ``create=False``: a home that does not exist is not created by looking."""
    from ..home import Home

    root = click.get_current_context().find_root()
    h = root.meta.get("idiolect.home")
    if h is None:
        h = root.meta["idiolect.home"] = Home.open(home_root(), create=create)
        root.call_on_close(h.close)
    return h


def conn(create: bool = True):
    return home(create).conn


def err(msg: str) -> None:
    click.echo(msg, err=True)


def out(data, as_json: bool, text: str) -> None:
    """One JSON document with --json, else the text; always on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)


def show(data, as_json: bool, text: str | None = None) -> None:
    """Data on stdout; without a text form, the data itself as indented JSON."""
    out(data, as_json, text if text is not None else json.dumps(data, indent=2, default=str))


def step_printer(every: int = 1):
    """A progress callback for compile steps: one line per ``every`` steps (a live line on a
    terminal), on stderr."""
    import sys

    tty = sys.stderr.isatty()

    def print_step(p: dict) -> None:
        eta = p["eta_s"]
        line = (f"step {p['step']}/{p['total']}  loss {p['loss']:.3f}  "
                f"{p['tokens_per_s']:.0f} tok/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        if tty:
            click.echo("\r" + line.ljust(70), err=True, nl=p["step"] == p["total"])
        elif p["step"] % every == 0 or p["step"] == p["total"]:
            click.echo(line, err=True)

    return print_step


def port_free(host: str, port: int) -> None:
    """Refuse, in one line, to serve on an address that is taken or cannot be bound."""
    import socket

    from ..errors import IdiolectError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise IdiolectError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise IdiolectError(f"cannot listen on {host}:{port}: {e.strerror}"
                                " (another server there? choose --port)") from None
