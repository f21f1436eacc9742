"""The command line's root: the ``idiolect`` group and its error handling, nothing else.

Each noun's commands live in ``commands/`` (one module each); they parse, call the library and
print: data on stdout, progress on stderr. Heavy libraries (torch, transformers) are imported
inside the commands that need them, so ``--help`` answers at once.
"""

from __future__ import annotations

import sqlite3
import sys

import click

from . import __version__
from .commands._io import err as _err
from .errors import IdiolectError


class _Group(click.Group):
    """Turns our errors into one line on stderr and a non-zero exit, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's own errors (a usage error: unknown option, missing argument...) as one line
        too: ``error: ...`` and where to look, exit 2."""
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _err(f"error: {e.format_message()}{hint}")
            rv = e.exit_code
        except click.Abort:
            _err("interrupted")
            rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

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


def _register_commands() -> None:
    """The command groups, one module each under commands/ (heavy imports stay lazy)."""
    from .commands.adapter import adapter
    from .commands.base import base
    from .commands.catalog import catalog
    from .commands.compile import compile_cmd
    from .commands.draft import draft
    from .commands.eval import eval_cmd
    from .commands.export import export
    from .commands.path import path
    from .commands.report import report
    from .commands.serve import serve
    from .commands.upgrade import fleet, transport, upgrade_cmd
    from .commands.user import user

    for command in (path, user, base, compile_cmd, eval_cmd, adapter, draft, report, transport,
                    upgrade_cmd, fleet, catalog, export, serve):
        cli.add_command(command)


_register_commands()


def main() -> None:
    cli(prog_name="idiolect")


if __name__ == "__main__":
    main()
