"""`idiolect catalog serve|publish|list|select|pull|merge`: explained adapters for warm starts.

Registered on the main group in cli.py with ``cli.add_command(catalog)``. The catalog URL comes
from --url, else IDIOLECT_CATALOG_URL, else http://127.0.0.1:8765; the publish token from --token,
else IDIOLECT_CATALOG_TOKEN.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..catalog import EMBEDDERS
from ..catalog.protocol import CARD_SETTINGS, DEFAULT_URL, URL_ENV
from ._io import CONTEXT
from ._io import err as _err
from ._io import home as _home
from ._io import out as _out

URL_HELP = f"Catalog URL (default: {URL_ENV} or {DEFAULT_URL})."


def _matches_text(matches: list[dict]) -> str:
    lines = []
    for i, m in enumerate(matches, 1):
        emb = "-" if m.get("embedding") is None else f"{m['embedding']:.3f}"
        lines.append(f"{i}. {m['id']}  score {m['score']:.3f} (style {m['style']:.3f},"
                     f" embedding {emb})  rank {m['recipe'].get('rank')}")
        lines.append(f"   why: {m['explanation']['text']}")
    return "\n".join(lines) or "(no adapter of this base in the catalog)"


@click.group(context_settings=CONTEXT)
def catalog() -> None:
    """Explained adapters for warm starts (XPerT): serve, publish, list, select, pull."""


@catalog.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--root", type=click.Path(path_type=Path),
              help="Server state folder (default: HOME/catalog-server).")
@click.option("--token", help="Bearer token for publishing (default: IDIOLECT_CATALOG_TOKEN;"
                              " none: read-only).")
def serve(host, port, root, token) -> None:
    """Run the catalog server (API docs at /docs)."""
    import uvicorn

    from ..catalog.server import create_app, resolve_token
    from ._io import home_root, port_free

    root = root or home_root() / "catalog-server"
    token = resolve_token(token)
    port_free(host, port)
    _err(f"catalog at http://{host}:{port} (root {root}, docs /docs,"
         f" publishing {'on' if token else 'off: no token'})")
    uvicorn.run(create_app(root, token), host=host, port=port, log_level="info")


@catalog.command("publish")
@click.argument("adapter_id")
@click.option("--url", help=URL_HELP)
@click.option("--token", help="Bearer token (default: IDIOLECT_CATALOG_TOKEN).")
@click.option("--card-source", type=click.Choice(["generations", "training"]),
              default="generations", show_default=True,
              help="Explain the adapter by its generations on the eval prompts, or by its"
                   " user's training texts.")
@click.option("--limit", default=CARD_SETTINGS.texts, show_default=True,
              help="Prompts/texts for the card.")
@click.option("--embedder", type=click.Choice(EMBEDDERS), default=CARD_SETTINGS.embedder,
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
def publish(adapter_id, url, token, card_source, limit, embedder, as_json) -> None:
    """Publish an adapter with its card.

    Only safetensors + JSON are sent; the manifest's user name becomes a pseudonym."""
    from ..catalog.warm_start import publish_adapter

    r = publish_adapter(_home(), adapter_id, url, token, card_source=card_source, limit=limit,
                        embedder=embedder, log=_err)
    _out(r, as_json, f"published {r['id']}\n  card: {r['card']['summary']}")


@catalog.command("list")
@click.option("--url", help=URL_HELP)
@click.option("--base-digest", help="Only adapters of this base fingerprint digest.")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(url, base_digest, as_json) -> None:
    """List the catalog's adapters and summaries."""
    from ..catalog.client import CatalogClient

    rows = CatalogClient(url).list(base_digest)
    text = "\n".join(f"{r['id']}  {r['base']['name']:<20} {r['base']['digest'][:12]}  rank"
                     f" {r['recipe'].get('rank')}  {r['summary']}" for r in rows)
    _out(rows, as_json, text or "(empty catalog)")


@catalog.command("select")
@click.argument("user")
@click.option("--base", "base_name", help="Base model (default: smollm2-135m).")
@click.option("--url", help=URL_HELP)
@click.option("--limit", default=5, show_default=True, help="Matches to show.")
@click.option("--texts", default=CARD_SETTINGS.texts, show_default=True,
              help="Training messages the card is computed from (the base writes as many).")
@click.option("--embedder", type=click.Choice(EMBEDDERS), default=CARD_SETTINGS.embedder,
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
def select(user, base_name, url, limit, texts, embedder, as_json) -> None:
    """Nearest adapters for USER's data (card only).

    The card of USER's own training messages is computed here; only the card is sent."""
    from ..catalog.client import CatalogClient
    from ..catalog.warm_start import card_for_user

    card = card_for_user(_home(), user, base_name, limit=texts, embedder=embedder, log=_err)
    _err(f"card: {card.summary}")
    matches = CatalogClient(url).match(card, limit=limit)
    _out({"card": card.to_dict(), "matches": matches}, as_json, _matches_text(matches))


@catalog.command("pull")
@click.argument("adapter_id")
@click.option("--user", "user_name", required=True,
              help="Local user who will warm-start from it (the adapter is their candidate).")
@click.option("--base", "base_name", help="Local base name (default: the catalog's name).")
@click.option("--url", help=URL_HELP)
@click.option("--promote", "gate", is_flag=True,
              help="Then run the gate on it as is (evaluate on USER's frozen eval set; promote"
                   " or reject).")
@click.option("--json", "as_json", is_flag=True)
def pull(adapter_id, user_name, base_name, url, gate, as_json) -> None:
    """Download, verify, install as a candidate (--promote: then gate it)."""
    from .. import adapters
    from ..catalog.client import CatalogClient

    home = _home()
    local = CatalogClient(url).pull(home, adapter_id, user_name, base=base_name)
    note = _gate(home, local, user_name) if gate else ""
    row = dict(adapters.get(home.conn, local))
    _out(row, as_json, f"installed {local} ({row['state']}) at {row['path']}:"
                       f" `idiolect compile {user_name} --warm-start {local}`{note}")
    _refused(row)


@catalog.command("merge")
@click.argument("adapter_ids", nargs=-1, required=True)
@click.option("--user", "user_name", required=True, help="Owner of the merged candidate.")
@click.option("--weights", help="Comma-separated weights (default: equal).")
@click.option("--rank", type=int, help="Re-factor to this rank (default: exact, ranks added).")
@click.option("--alpha", type=float, help="LoRA alpha of the result (default: = rank).")
@click.option("--promote", "gate", is_flag=True,
              help="Then run the gate on the merged adapter (promote or reject).")
@click.option("--json", "as_json", is_flag=True)
def merge(adapter_ids, user_name, weights, rank, alpha, gate, as_json) -> None:
    """Merge adapters' LoRA deltas into a new one.

    base + a*d1 + b*d2, exactly (ranks added) or re-factored to --rank (SVD)."""
    from ..catalog.merge import merge_adapters
    from ..errors import InputError

    ws = ([float(w) for w in weights.split(",")] if weights
          else [1.0 / len(adapter_ids)] * len(adapter_ids))
    if len(ws) != len(adapter_ids):
        raise InputError(f"--weights: {len(ws)} weights for {len(adapter_ids)} adapters")
    from .. import adapters

    home = _home()
    m = merge_adapters(home, list(zip(adapter_ids, ws)), user_name, rank=rank, alpha=alpha)
    note = _gate(home, m.id, user_name) if gate else ""
    info = m.warm_start["merge"]
    row = adapters.get(home.conn, m.id)
    _out(m.to_dict() | {"state": row["state"]}, as_json,
         f"merged into {m.id} ({info['method']}, rank {info['rank']}, alpha {info['alpha']};"
         f" {row['state']}){note}")
    _refused(row)


def _gate(home, adapter_id: str, user: str) -> str:
    """Run the build pipeline's gate on a pulled or merged candidate; a note for the output."""
    from ..pipeline import promote

    d = promote(home, adapter_id, user=user, log=_err)
    return f"\ngate: {d.status}: {d.reason}"


def _refused(row) -> None:
    from ..errors import GateRefused

    if row["state"] == "rejected":
        raise GateRefused(f"adapter {row['id']} was refused by the gate; it stays rejected")
