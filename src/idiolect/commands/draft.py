"""`idiolect draft USER --subject ...`: a message in the user's voice."""

from __future__ import annotations

import click

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
              help="Write N candidates in one batch and show them ranked (--rank-by).")
@click.option("--rank-by", "by", type=click.Choice(["style", "sense", "both"]), default="style",
              show_default=True,
              help="With --n: style, the user's own style scorer (fitted on training messages);"
                   " sense, how much more likely the candidate is after its subject than after"
                   " the user's other subjects; both, the sum of the two ranks.")
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
def draft(name, subject, to, base_name, adapter_id, max_new_tokens, seed, n, by, temperature,
          top_p, repetition_penalty, runtime, as_json) -> None:
    """Draft a message in a user's voice."""
    from ..draft import draft as run_draft
    from ..draft import draft_llamacpp

    if runtime == "llama.cpp":
        d = draft_llamacpp(_home(), name, subject, to, base=base_name, adapter_id=adapter_id,
                           max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                           top_p=top_p, repeat_penalty=repetition_penalty, log=_err)
        _err(f"llama.cpp: {d['tokens_per_s']} tok/s")
        _show(d, as_json, f"Subject: {subject}\n\n{d['body']}")
        return
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed, batch_size=1,
                           temperature=temperature, top_p=top_p,
                           repetition_penalty=repetition_penalty)
    d = run_draft(_home(), name, subject, to, base=base_name, adapter_id=adapter_id, cfg=cfg,
                  n=n, log=_err, by=by)
    if n == 1:
        _show(d, as_json, f"Subject: {subject}\n\n{d['body']}")
        return
    parts = []
    for c in d["candidates"]:
        score = "unranked" if c["score"] is None else f"P({name}) {c['score']:.3f}"
        if "fit" in c:
            score += f"  fit {c['fit']:+.3f}"
        parts.append(f"--- {c['rank']}/{n}  {score}"
                     f"{'  (copies training text)' if c['copies_training'] else ''}\n"
                     f"Subject: {subject}\n\n{c['body']}")
    _show(d, as_json, "\n\n".join(parts))
