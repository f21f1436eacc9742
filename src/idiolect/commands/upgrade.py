"""`idiolect transport check ...`, `idiolect upgrade --to NAME ...` and `idiolect fleet ...`.

Registered on the main group in cli.py with ``cli.add_command(transport)``,
``cli.add_command(upgrade_cmd)`` and ``cli.add_command(fleet)``. Data on stdout (``--json``: one
JSON document), progress on stderr; an incompatible transport or a refused gate is a non-zero
exit with a one-line reason, raised as ``Incompatible`` / ``GateRefused`` for the main group to
print.
"""

from __future__ import annotations

import click

from ._io import CONTEXT
from ._io import conn as _conn
from ._io import err as _err
from ._io import home as _home
from ._io import out as _out


# ----------------------------------------------------------------------------------- transport
@click.group(context_settings=CONTEXT)
def transport() -> None:
    """Diagnose loading an adapter onto a base it was not compiled for."""


@transport.command("check")
@click.argument("adapter_id")
@click.option("--base", "base_name", required=True, help="The target base.")
@click.option("--try", "attempt", is_flag=True,
              help="Also really load it with peft.PeftModel.from_pretrained (loads the base).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def transport_check(adapter_id, base_name, attempt, as_json) -> None:
    """Compare an adapter's tensors and base fingerprint with a base; exit 5 when incompatible."""
    from ..errors import Incompatible
    from ..transport import diagnose, try_load

    home = _home()
    d = diagnose(home, adapter_id, base_name)
    if attempt:
        d["load"] = try_load(home, d["adapter"], d["to_base"], diagnosis_id=d["id"])
    _out(d, as_json, _check_text(d))
    if d["verdict"] == "incompatible":
        raise Incompatible(d["message"])
    if attempt and not d["load"]["loaded"]:
        raise Incompatible(f"loading failed: {d['load']['error']}")


def _check_text(d: dict) -> str:
    a, t, m, s = d["architecture"], d["tokenizer"], d["modules"], d["shapes"]
    lines = [f"adapter {d['adapter']} ({d['user']}) compiled for {d['from_base']} -> base"
             f" {d['to_base']}",
             f"  architecture  {a['from']} -> {a['to']} ({'same' if a['same'] else 'different'})",
             f"  tokenizer     {'identical' if t['same'] else 'different'}",
             f"  modules       {m['present']} of {m['adapted']} adapted modules present"
             + (f"; missing: {', '.join(m['missing'][:3])}"
                + (" ..." if len(m["missing"]) > 3 else "") if m["missing"] else ""),
             f"  shapes        {s['differ']} of {s['checked']} tensors differ"
             + (":" if s["first"] else "")]
    lines += [f"                  {x}" for x in s["first"]]
    if s["differ"] > len(s["first"]):
        lines.append(f"                  ... and {s['differ'] - len(s['first'])} more")
    lines.append(f"  weights       {'same' if d['weights']['same'] else 'different'}")
    if "load" in d:
        ld = d["load"]
        lines.append(f"  load          {'loaded' if ld['loaded'] else 'failed: ' + ld['error']}"
                     f" ({ld['seconds']}s)")
    lines.append(f"verdict: {d['message']}")
    return "\n".join(lines)


@transport.command("list")
@click.argument("adapter_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def transport_list(adapter_id, as_json) -> None:
    """List recorded transport diagnoses (newest first)."""
    from ..transport import history

    rows = history(_conn(create=False), adapter_id)
    text = "\n".join(f"{r['created_at']}  {r['adapter']}  {r['user']:<14}{r['from_base']} ->"
                     f" {r['to_base']}  {r['verdict']}" for r in rows)
    _out(rows, as_json, text or "(no transport diagnoses)")


# ----------------------------------------------------------------------------------- upgrade
@click.command("upgrade", context_settings=CONTEXT)
@click.option("--to", "to_base", required=True, help="The new base to recompile for.")
@click.option("--from", "from_base", help="Only users whose active adapter is on this base.")
@click.option("--users", help="Comma-separated users (default: every user with an active"
                              " adapter on another base).")
@click.option("--examples", type=int, help="Train on this many messages (default: as the old"
                                           " adapter's compile).")
@click.option("--executor", "kind", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="local: process pool on this machine; ray: Ray tasks.")
@click.option("--workers", type=int, help="Users compiled side by side (default: cores // 4).")
@click.option("--address", help="Ray cluster address (ray only; default: a local instance).")
@click.option("--limit", type=int, help="Evaluate on the first N eval messages only.")
@click.option("--max-new-tokens", type=int, help="Generation length for the evaluation.")
@click.option("--authorship-tol", type=float, default=0.0, show_default=True,
              help="Gate: authorship probability may be this much below the old adapter's,"
                   " beyond the noise allowance.")
@click.option("--distance-tol", type=float, default=0.0, show_default=True,
              help="Gate: fingerprint distance may be this much above the old adapter's, beyond"
                   " the noise allowance.")
@click.option("--z", "z", type=float, default=1.645, show_default=True,
              help="Gate: refuse only when worse by more than z standard errors of the"
                   " difference (bootstrap over the eval prompts).")
@click.option("--no-compare-old", is_flag=True,
              help="Gate against stored old scores or the calibrated floor; do not re-score"
                   " the old adapter.")
@click.option("--redo", is_flag=True, help="Recompile users already done for this base too.")
@click.option("--warm-start", "warm_mode", type=click.Choice(["none", "auto"]), default="none",
              show_default=True,
              help="auto: start each recompile from the nearest catalog adapter compiled for the"
                   " new base (pulled, or two merged); none: from the bare base.")
@click.option("--catalog-url", help="Catalog for --warm-start auto (default:"
                                    " IDIOLECT_CATALOG_URL or http://127.0.0.1:8765).")
@click.option("--warm-threshold", type=float, default=0.5, show_default=True,
              help="Lowest match score pulled as is; below it the two nearest are merged, or the"
                   " bare base is used.")
@click.option("--warm-confirm", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pull the top K matches and keep the one with the lowest perplexity on 16"
                   " of the user's training messages (0: the card alone decides).")
@click.option("--warm-race/--no-warm-race", default=None,
              help="With --warm-confirm (default: race): probe by successive halving (every"
                   " candidate on a quarter of the messages, the better half on more): 54-75% of"
                   " the passes; --no-warm-race: every candidate on every message.")
@click.option("--warm-confirm-merge/--no-warm-confirm-merge", default=None,
              help="With --warm-confirm K >= 2 (default: on): also merge the chosen match with"
                   " the next best and start from the merge when it fits the probe messages"
                   " better.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def upgrade_cmd(to_base, from_base, users, examples, kind, workers, address, limit, max_new_tokens,
                authorship_tol, distance_tol, z, no_compare_old, redo, warm_mode, catalog_url,
                warm_threshold, warm_confirm, warm_race, warm_confirm_merge, as_json) -> None:
    """Recompile users' adapters for a new base: transport check, compile, eval, gate, promote."""
    from dataclasses import replace

    from ..errors import GateRefused, IdiolectError, InputError
    from ..evaluate.run import EvalConfig
    from ..fleet.executors import make_executor
    from ..upgrade import GateConfig, WarmStartConfig, upgrade

    if warm_race is not None and not warm_confirm:
        raise InputError("--warm-race/--no-warm-race applies to --warm-confirm K only")
    if warm_confirm_merge is not None and not warm_confirm:
        raise InputError("--warm-confirm-merge/--no-warm-confirm-merge applies to --warm-confirm"
                         " K only")
    for given, flag in ((catalog_url, "--catalog-url"), (warm_confirm, "--warm-confirm")):
        if given and warm_mode != "auto":
            raise InputError(f"{flag} applies to --warm-start auto only")
    warm = WarmStartConfig(mode=warm_mode, catalog_url=catalog_url, threshold=warm_threshold,
                           confirm=warm_confirm, race=warm_race is not False,
                           merge=warm_confirm_merge)
    names = [u.strip() for u in users.split(",") if u.strip()] if users else None
    gate = GateConfig(authorship_tol=authorship_tol, distance_tol=distance_tol, z=z,
                      compare_old=not no_compare_old)
    ev = EvalConfig(limit=limit)
    if max_new_tokens:
        ev.generation = replace(ev.generation, max_new_tokens=max_new_tokens)
    executor = make_executor(kind, workers=workers, address=address)
    r = upgrade(_home(), to_base, users=names, examples=examples, gate=gate, executor=executor,
                eval_config=ev, redo=redo, from_base=from_base, warm=warm, log=_err)
    _out(r, as_json, _upgrade_text(r))
    failed = [e["user"] for e in r["users"] if e["status"] == "failed"]
    refused = [e for e in r["users"] if e["status"] == "rejected"]
    n = len(r["users"])
    if failed:
        raise IdiolectError(f"{len(failed)} of {n} users failed ({', '.join(failed)}): run the"
                            f" same command again to retry them")
    if refused:
        first = refused[0]
        raise GateRefused(f"the gate refused {len(refused)} of {n} users"
                          f" ({', '.join(e['user'] for e in refused)}); {first['user']}:"
                          f" {first['reason']}")


def _upgrade_text(r: dict) -> str:
    from ..fleet.executors import executor_label

    ex = r["executor"]
    lines = [f"fleet {r['fleet']}{' (resumed)' if r['resumed'] else ''} -> {r['to_base']}"
             f" ({executor_label(ex)})"]
    for e in r["users"]:
        lines.append(f"{e['user']:<16}{e['status']:<10}{e['reason']}")
        if e.get("transport"):
            lines.append(f"{'':<16}transport: {e['transport']['message']}")
        w = e.get("warm_start") or {}
        if w.get("mode") == "auto":
            lines.append(f"{'':<16}{_warm_text(w)}")
        g = e.get("gate")
        if g:
            c, o = g["candidate"], g.get("old") or {}
            old = (f" (old {o['authorship_probability']:.3f} / {o['fingerprint_distance']:.3f})"
                   if o else f" (floor bar {g['bar']['authorship_probability']:.3f} /"
                             f" {g['bar']['fingerprint_distance']:.3f})")
            lines.append(f"{'':<16}candidate {e['candidate']}: authorship"
                         f" {c['authorship_probability']:.3f} / distance"
                         f" {c['fingerprint_distance']:.3f}{old}, {e['seconds']['total']}s")
    s = r["summary"]
    lines.append(f"{s['promoted']} promoted, {s['rejected']} rejected, {s['failed']} failed,"
                 f" {s['skipped']} skipped in {r['seconds']}s")
    return "\n".join(lines)


def _warm_text(w: dict) -> str:
    """One line for a user's warm-start decision (upgrade and fleet status)."""
    if w.get("decision") == "merge":
        start = f" -> {w['adapter']}"
    elif w.get("decision") == "none":
        start = "; from the bare base"
    else:
        start = ""
    return f"warm start: {w['decision']}: {w['reason']}{start} ({w['seconds']}s)"


# ----------------------------------------------------------------------------------- fleet
@click.group(context_settings=CONTEXT)
def fleet() -> None:
    """Recorded upgrade runs (fleets): what each user's recompile did."""


@fleet.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def fleet_list(as_json) -> None:
    """List fleet runs, newest first, with their counts."""
    from ..fleet.executors import executor_label
    from ..fleet.records import list_fleets

    rows = list_fleets(_conn(create=False))
    text = "\n".join(f"{r['id']}  {r['created_at']}  -> {r['to_base']:<16}{r['status']:<12}"
                     f"{_counts_text(r['counts'], r['skipped'])}  ({executor_label(r['executor'])})"
                     for r in rows)
    _out(rows, as_json, text or "(no fleet runs)")


@fleet.command("status")
@click.argument("fleet_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def fleet_status_cmd(fleet_id, as_json) -> None:
    """Show a fleet run (default: the latest): target, executor, each user's status and reason."""
    from ..fleet.records import fleet_status

    fs = fleet_status(_conn(create=False), fleet_id)
    _out(fs, as_json, _status_text(fs))


def _counts_text(counts: dict, skipped: int = 0) -> str:
    """Users by status (their rows), then the last attempt's skips: a resumed run skips the users
    an earlier attempt finished, whose rows are already counted, so the two are never added."""
    text = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no user recompiled"
    return text + (f"; the last attempt skipped {skipped}" if skipped else "")


def _status_text(fs: dict) -> str:
    from ..fleet.executors import executor_label

    cfg = fs["config"]
    warm = cfg.get("warm_start") or {}
    lines = [f"fleet {fs['id']} -> {fs['to_base']}: {fs['status']}"
             f" ({executor_label(cfg.get('executor') or {})})",
             f"started {fs['created_at']}, updated {fs['updated_at']}"
             + (f", warm start from {warm.get('catalog_url')}" if warm.get("mode") == "auto"
                else "")]
    for u in fs["users"]:
        r = u["result"]
        lines.append(f"{u['user']:<16}{u['status']:<10}{u['reason'] or ''}")
        detail = [f"{u['old_adapter']} on {u['old_base']}"
                  + (f" -> candidate {u['candidate']}" if u["candidate"] else "")]
        if r.get("seconds"):
            detail.append(f"{r['seconds']['total']}s")
        lines.append(f"{'':<16}" + ", ".join(detail))
        if (r.get("warm_start") or {}).get("mode") == "auto":
            lines.append(f"{'':<16}{_warm_text(r['warm_start'])}")
    lines.append(_counts_text(fs["counts"], fs["summary"].get("skipped", 0)))
    return "\n".join(lines)
