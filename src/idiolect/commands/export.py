"""`idiolect export ADAPTER_ID --format gguf|merged`: an adapter for llama.cpp / Ollama, or merged.

Registered on the main group in cli.py with ``cli.add_command(export)``. Data on stdout
(``--json``: one JSON document), notes on stderr, errors raised as IdiolectError subclasses.
"""

from __future__ import annotations

from pathlib import Path

import click

from ._io import CONTEXT
from ._io import err as _err
from ._io import home as _home
from ._io import out as _out


@click.command("export", context_settings=CONTEXT)
@click.argument("adapter_id")
@click.option("--format", "fmt", type=click.Choice(["gguf", "merged"]), default="gguf",
              show_default=True, help="gguf: LoRA file for llama.cpp/Ollama; merged: HF folder.")
@click.option("--out", type=click.Path(path_type=Path),
              help="A .gguf file or a folder (default: HOME/exports/ID).")
@click.option("--dtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True,
              help="GGUF tensor type of the LoRA matrices.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def export(adapter_id, fmt, out, dtype, as_json) -> None:
    """Export an adapter as a GGUF LoRA (+ Ollama Modelfile) or as merged weights."""
    from ..export import export_adapter

    r = export_adapter(_home(), adapter_id, fmt, out, dtype, log=_err)
    if fmt == "merged":
        _out(r, as_json, f"merged {r['adapter']} into {r['base']}: {r['path']}")
        return
    lines = [f"wrote {r['path']} ({r['architecture']}, {r['dtype']}, {r['bytes']} bytes)"]
    if r["modelfile"]:
        lines += [f"Modelfile: {r['modelfile']}",
                  f"  ollama create {r['user']}-{r['base']} -f {r['modelfile']}",
                  f"  llama-cli -m {r['base_gguf']} --lora {r['path']}"]
    else:
        lines.append("note: " + r["note"])
    _out(r, as_json, "\n".join(lines))
