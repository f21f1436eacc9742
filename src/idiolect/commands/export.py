"""`idiolect export ADAPTER_ID --format gguf|merged`: an adapter for llama.cpp / Ollama, or merged.

Registered on the main group in cli.py with ``cli.add_command(export)``. Data on stdout
(``--json``: one JSON document), notes on stderr, errors raised as IdiolectError subclasses.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from ._io import conn as _conn
from ._io import err as _err
from ._io import out as _out


def export_adapter(conn: sqlite3.Connection, adapter_id: str, fmt: str = "gguf",
                   out: Path | None = None, dtype: str = "f32", log=None) -> dict:
    """Export one adapter; returns what was written. ``out``: a .gguf file or a folder."""
    from .. import adapters, export
    from ..bases import load as bases
    from ..home import atomic_write_bytes, home_dir

    row = adapters.get(conn, adapter_id)
    folder = Path(row["path"])
    ref = bases.resolve(conn, row["base"])
    hf_dir = bases.ensure_cached(ref, progress=log)
    fp = bases.read_fingerprint(ref)
    target = Path(out) if out else home_dir() / "exports" / row["id"]
    result = {"adapter": row["id"], "user": row["user"], "base": ref.name, "format": fmt}
    if fmt == "merged":
        merged = target if out else target / "merged"
        result["path"] = str(export.export_merged(folder, hf_dir, merged))
        return result
    lora = target if target.suffix == ".gguf" else target / f"{row['user']}-{row['id']}.lora.gguf"
    export.export_gguf_lora(folder, hf_dir, lora, fp, dtype=dtype)
    arch = export.gguf_architecture(lora)
    result |= {"path": str(lora), "dtype": dtype, "architecture": arch, "bytes": lora.stat().st_size,
               "base_gguf": None, "modelfile": None}
    if ref.packaged is None:
        result["note"] = (f"base {ref.name!r} is a local Hugging Face folder with no GGUF: convert it"
                          " with llama.cpp's convert_hf_to_gguf.py, then use it as FROM (base) with"
                          " this file as ADAPTER; no Modelfile written")
        return result
    base_gguf = bases.gguf_path(ref)
    base_arch = export.gguf_architecture(base_gguf)
    if base_arch != arch:
        from ..errors import Incompatible

        raise Incompatible(f"{base_gguf}: base GGUF architecture {base_arch!r} differs from the"
                           f" adapter's {arch!r}")
    modelfile = lora.parent / "Modelfile"
    atomic_write_bytes(modelfile, export.ollama_modelfile(base_gguf, lora).encode())
    result |= {"base_gguf": str(base_gguf), "modelfile": str(modelfile)}
    return result


@click.command("export")
@click.argument("adapter_id")
@click.option("--format", "fmt", type=click.Choice(["gguf", "merged"]), default="gguf",
              show_default=True, help="gguf: LoRA file for llama.cpp/Ollama; merged: HF folder.")
@click.option("--out", type=click.Path(path_type=Path),
              help="A .gguf file or a folder (default: $IDIOLECT_HOME/exports/ID).")
@click.option("--dtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True,
              help="GGUF tensor type of the LoRA matrices.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def export(adapter_id, fmt, out, dtype, as_json) -> None:
    """Export an adapter as a GGUF LoRA (+ Ollama Modelfile) or as merged weights."""
    r = export_adapter(_conn(), adapter_id, fmt, out, dtype, log=_err)
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
