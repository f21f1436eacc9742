"""`idiolect draft USER --subject ...`: a message in the user's voice."""

from __future__ import annotations

import click

from ..draft import BEST_OF, DEFAULT_RANK_BY, RANK_BY
from ..generate import GenerationConfig
from ._io import CONTEXT
from ._io import err as _err
from ._io import home as _home
from ._io import show as _show


@click.command(context_settings=CONTEXT)
@click.argument("name")
@click.option("--subject", required=True)
@click.option("--to", "to", multiple=True, help="Recipient (repeatable).")
@click.option("--base", "base_name")
@click.option("--adapter", "adapter_id", help="Adapter id (default: the active one).")
@click.option("--max-new-tokens", default=200, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--n", "n", default=1, show_default=True,
              help="Show the N best candidates, ranked (--rank-by), with their scores"
                   " (--json holds every candidate written).")
@click.option("--best-of", "best_of", default=BEST_OF, show_default=True,
              help="Write this many candidates (at least --n) in one batch and keep the best;"
                   " 1: a single sample, unranked.")
@click.option("--rank-by", "by", type=click.Choice(RANK_BY), default=DEFAULT_RANK_BY,
              show_default=True,
              help="style, the user's own style scorer (fitted on training messages);"
                   " sense, how much more likely the candidate is after its subject than after"
                   " the user's other subjects; both, the sum of the two ranks.")
@click.option("--whole-sentences/--as-sampled", "whole", default=True, show_default=True,
              help="A draft cut by --max-new-tokens ends at its last full sentence (if that keeps"
                   " half of it), or is shown as sampled.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), show_default=True,
              default=GenerationConfig.temperature, help="Sampling temperature.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), show_default=True,
              default=GenerationConfig.top_p, help="Nucleus: sample from this share of the mass.")
@click.option("--repetition-penalty", type=click.FloatRange(min=1), show_default=True,
              default=GenerationConfig.repetition_penalty,
              help="Above 1 discourages tokens already written (and an author's own habits).")
@click.option("--runtime", type=click.Choice(["torch", "llama.cpp"]), default="torch",
              show_default=True, help="llama.cpp: the adapter exported to GGUF (extra `llama`).")
@click.option("--json", "as_json", is_flag=True)
def draft(name, subject, to, base_name, adapter_id, max_new_tokens, seed, n, best_of, by,
          whole, temperature, top_p, repetition_penalty, runtime, as_json) -> None:
    """Draft a message in a user's voice."""
    from ..draft import draft as run_draft
    from ..draft import draft_llamacpp

    if runtime == "llama.cpp":
        if n > 1:
            raise click.UsageError("--n needs --runtime torch (llama.cpp writes one sample)")
        ctx = click.get_current_context()
        if any(ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT
               for p in ("best_of", "by")):
            _err("llama.cpp: one sample (--best-of and --rank-by need --runtime torch)")
        d = draft_llamacpp(_home(), name, subject, to, base=base_name, adapter_id=adapter_id,
                           max_new_tokens=max_new_tokens, seed=seed, whole_sentences=whole,
                           temperature=temperature,
                           top_p=top_p, repeat_penalty=repetition_penalty, log=_err)
        _err(f"llama.cpp: {d['tokens_per_s']} tok/s")
        _show(d, as_json, f"Subject: {subject}\n\n{d['body']}")
        return
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed, batch_size=1,
                           temperature=temperature, top_p=top_p,
                           repetition_penalty=repetition_penalty)
    d = run_draft(_home(), name, subject, to, base=base_name, adapter_id=adapter_id, cfg=cfg,
                  n=n, log=_err, by=by, best_of=best_of, whole_sentences=whole)
    cands = d.get("candidates", [])
    if n == 1:
        if cands:
            _err(f"best of {len(cands)} by {by}: {_scores(cands[0], name)}")
        _show(d, as_json, f"Subject: {subject}\n\n{d['body']}")
        return
    parts = [f"--- {c['rank']}/{len(cands)}  {_scores(c, name)}"
             f"{'  (copies training text)' if c['copies_training'] else ''}\n"
             f"Subject: {subject}\n\n{c['body']}" for c in cands[:n]]
    _show(d, as_json, "\n\n".join(parts))


def _scores(c: dict, name: str) -> str:
    score = "unranked" if c["score"] is None else f"P({name}) {c['score']:.3f}"
    return score + (f"  fit {c['fit']:+.3f}" if "fit" in c else "")
