"""`idiolect compile USER ...`: build a candidate adapter and run it through the gate.

The compile is the first step of the build pipeline (``idiolect.pipeline``): the new adapter is a
candidate, evaluated on the user's frozen eval set and promoted only if it passes the gate
(against the active adapter, or the calibrated floor for a first adapter). ``--candidate`` keeps
it aside without evaluating (experiments); ``idiolect adapter promote ID`` gates it later.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._io import CONTEXT, step_printer
from ._io import err as _err
from ._io import home as _home
from ._io import show as _show


@click.command("compile", context_settings=CONTEXT)
@click.argument("name")
@click.option("--base", "base_name", help="Base model (default: smollm2-135m).")
@click.option("--examples", type=int, help="Train on this many messages (seeded sample).")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path), help="Recipe JSON.")
@click.option("--epochs", type=float, help="Override the recipe's epochs.")
@click.option("--warm-start", default="none", show_default=True,
              help="auto (best catalog match for the user's card), an adapter id, or none.")
@click.option("--catalog-url", help="Catalog for --warm-start auto (default: IDIOLECT_CATALOG_URL).")
@click.option("--confirm", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --warm-start auto: pull the top K matches and keep the one with the"
                   " lowest perplexity on 16 of your training messages (0: the card decides;"
                   " K at the catalog's size probes every adapter).")
@click.option("--race/--no-race", default=None,
              help="With --confirm (default: race): probe by successive halving (every"
                   " candidate on a quarter of the messages, the better half on more): 54-75% of"
                   " the forward passes, the full probe's choice for 8 of 8 users in"
                   " bench/README.md's confirm_race; --no-race: each on every message.")
@click.option("--confirm-merge/--no-confirm-merge", default=None,
              help="With --confirm K >= 2 (default: on): also merge the chosen match with the"
                   " next best (equal weights) and start from the merge when it fits your probe"
                   " messages better (a newcomer's start; a returning author keeps their own:"
                   " bench/README.md's xpert_git_pub500_merges).")
@click.option("--resume", is_flag=True, help="Continue the last interrupted compile.")
@click.option("--candidate", is_flag=True,
              help="Compile only: keep the result a candidate, not evaluated, never active"
                   " (experiments; `idiolect adapter promote ID` gates it later).")
@click.option("--eval-limit", type=int,
              help="Gate on only the first N eval messages (quicker, noisier).")
@click.option("--low-memory", is_flag=True,
              help="Recompute layers, chunk the vocabulary loss, 512-token batches: about half"
              " the peak memory, about 2/3 the speed.")
@click.option("--json", "as_json", is_flag=True)
def compile_cmd(name, base_name, examples, recipe_file, epochs, warm_start, catalog_url, confirm,
                race, confirm_merge, resume, candidate, eval_limit, low_memory, as_json) -> None:
    """Compile a LoRA adapter for a user on a base (CPU), then gate it on the frozen eval set."""
    from dataclasses import replace

    from ..compile.recipe import LOW_MEMORY, Recipe, for_base
    from ..compile.run import CompileRequest, Resume
    from ..errors import GateRefused, InputError
    from ..evaluate.run import EvalConfig
    from ..pipeline import build

    home = _home()
    recipe = Recipe.from_file(recipe_file, base_name) if recipe_file else for_base(base_name)
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    if low_memory:
        recipe = replace(recipe, **LOW_MEMORY)
    parent = None if warm_start in ("none", "", None) else warm_start
    if confirm and parent != "auto":
        raise InputError("--confirm applies to --warm-start auto only")
    if race is not None and not confirm:
        raise InputError("--race/--no-race applies to --confirm K only")
    if confirm_merge is not None and not confirm:
        raise InputError("--confirm-merge/--no-confirm-merge applies to --confirm K only")
    if parent == "auto":
        from ..catalog.warm_start import merge_default, warm_start_auto

        confirm_merge = merge_default(confirm_merge, confirm, ("--confirm-merge", "--confirm"))

        parent = warm_start_auto(home, name, base_name, catalog_url, recipe=recipe,
                                 confirm=confirm, race=race is not False,
                                 merge=confirm_merge, log=_err)
        _err(f"warm start: {parent or 'no catalog adapter fits; starting from the base'}")
    req = CompileRequest(user=name, base=base_name, examples=examples, recipe=recipe,
                         parent=parent, resume=Resume.LAST if resume else Resume.NO)
    try:
        m, d = build(home, req, evaluate=not candidate, eval_cfg=EvalConfig(limit=eval_limit),
                     log=_err, progress=step_printer(every=5))
    except KeyboardInterrupt:
        _err(f"interrupted: resume with `idiolect compile {name} --resume`")
        sys.exit(130)
    t = m.timings
    text = (f"adapter {m.id} for {name} on {m.base_name}\n  {m.snapshot['examples']} examples,"
            f" {m.tokens['seen']} tokens, {t['tokens_per_s']} tok/s, load {t['load_s']}s,"
            f" train {t['train_s']}s, total {t['total_s']}s, peak RSS {m.peak_rss_mb} MB\n"
            f"  loss {m.metrics['train_loss_first']} -> {m.metrics['train_loss_last']}\n"
            f"  {d.status}: {d.reason}")
    data = m.to_dict() | {"base": m.base_name, "state": _state(d), "gate": d.record()}
    _show(data, as_json, text)
    if d.status == "rejected":
        from ..adapters import active

        kept = active(home.conn, name, m.base_name)
        keeps = (f"{name} keeps {kept['id']}" if kept else
                 f"{name} has no active adapter on {m.base_name}")
        raise GateRefused(f"adapter {m.id} was refused by the gate ({d.reason}); it is kept as"
                          f" rejected; {keeps}")


def _state(d) -> str:
    return {"promoted": "active", "rejected": "rejected"}.get(d.status, "candidate")
