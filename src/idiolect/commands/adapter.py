"""`idiolect adapter list|show|promote|rollback`: compiled adapters and their life cycle.

``promote`` is the build pipeline's gate run on a candidate (``idiolect.pipeline.promote``);
``rollback`` re-activates the previous adapter that once passed it.
"""

from __future__ import annotations

import click

from ._io import CONTEXT
from ._io import conn as _conn
from ._io import err as _err
from ._io import home as _home
from ._io import show as _show


@click.group(context_settings=CONTEXT)
def adapter() -> None:
    """Compiled adapters: list, show, promote (through the gate), roll back."""


@adapter.command("list")
@click.option("--user", "user_name")
@click.option("--json", "as_json", is_flag=True)
def adapter_list(user_name, as_json) -> None:
    """List adapters (id, user, base, state)."""
    from ..adapters import list_adapters
    from ..vault.store import require_user

    conn = _conn(create=False)
    if user_name:
        require_user(conn, user_name)
    rows = list_adapters(conn, user_name)
    wu = max([len(r["user"]) for r in rows] + [4]) + 2
    wb = max([len(r["base"]) for r in rows] + [4]) + 2
    text = "\n".join(f"{r['id']}  {r['user']:<{wu}}{r['base']:<{wb}}{r['state']}"
                     + (" (forced)" if r.get("forced") else "") for r in rows)
    _show(rows, as_json, text or "(no adapters)")


@adapter.command("show")
@click.argument("adapter_id")
@click.option("--json", "as_json", is_flag=True)
def adapter_show(adapter_id, as_json) -> None:
    """Show an adapter: state, the gate's last decision, and its manifest (--json: all)."""
    from pathlib import Path

    from ..adapters import get
    from ..manifest import Manifest

    row = get(_conn(create=False), adapter_id)
    m = Manifest.read(Path(row["path"]))
    data = m.to_dict() | {"state": row["state"], "path": row["path"],
                          "forced": bool((m.gate or {}).get("forced"))}
    _show(data, as_json, _show_text(data))


def _show_text(d: dict) -> str:
    g = d.get("gate")
    lines = [f"adapter {d['id']}  user {d['user']}  base {d['base']['name']}  state {d['state']}",
             f"  created {d['created_at']}, parent {d['parent'] or '-'},"
             f" {d['snapshot'].get('messages', 0)} training messages"
             f" (snapshot {d['snapshot']['digest'][:12]})",
             f"  path {d['path']}"]
    if g:
        lines.append(f"  gate ({g['at']}): {g['status']}{' (FORCED)' if g.get('forced') else ''}:"
                     f" {g['reason']}")
        if g.get("candidate"):
            c, bar = g["candidate"], g.get("bar") or {}
            lines.append(f"    authorship probability {c['authorship_probability']:.3f}"
                         f" (bar {bar.get('authorship_probability', float('nan')):.3f}),"
                         f" fingerprint distance {c['fingerprint_distance']:.3f}"
                         f" (bar {bar.get('fingerprint_distance', float('nan')):.3f});"
                         f" against the {g['against']}: {g.get('bar_source')}")
    else:
        lines.append("  gate: never run")
    ev = (d.get("metrics") or {}).get("eval")
    if ev:
        s = ev["adapter_scores"]
        lines.append(f"  last eval on {ev['n']} messages: distance {s['fingerprint_distance']:.3f},"
                     f" authorship {s['authorship_probability']:.3f},"
                     f" perplexity {s['perplexity']:.2f}")
    return "\n".join(lines)


@adapter.command("promote")
@click.argument("adapter_id")
@click.option("--user", "user_name", help="Refuse unless the adapter is this user's.")
@click.option("--force", is_flag=True,
              help="Promote even if the gate refuses it (or cannot run); recorded as forced.")
@click.option("--limit", type=int, help="Gate on only the first N eval messages.")
@click.option("--json", "as_json", is_flag=True)
def adapter_promote(adapter_id, user_name, force, limit, as_json) -> None:
    """Run the gate on a candidate: evaluate it on the frozen eval set, promote or reject it."""
    from ..errors import GateRefused, IdiolectError
    from ..evaluate.run import EvalConfig
    from ..pipeline import promote

    d = promote(_home(), adapter_id, user=user_name, force=force,
                eval_cfg=EvalConfig(limit=limit), log=_err)
    _show(d.record(), as_json, f"{d.adapter}: {d.status}"
                               f"{' (forced)' if d.forced else ''}: {d.reason}")
    if d.status == "rejected":
        raise GateRefused(f"adapter {d.adapter} was refused by the gate; `--force` promotes it"
                          " anyway")
    if d.status == "candidate":
        raise IdiolectError(f"adapter {d.adapter} stays a candidate: {d.reason}")


@adapter.command("rollback")
@click.argument("name")
@click.option("--base", "base_name", help="Base model (default: smollm2-135m).")
def adapter_rollback(name, base_name) -> None:
    """Re-activate the user's previous adapter on a base."""
    from ..adapters import rollback
    from ..bases.registry import DEFAULT_BASE
    from ..vault.store import require_user

    conn = _conn(create=False)
    require_user(conn, name)
    r = rollback(conn, name, base_name or DEFAULT_BASE)
    click.echo(f"active: {r['active']} (retired: {r['retired']})")
