"""`idiolect eval USER`: score an adapter on the frozen eval set (it never promotes)."""

from __future__ import annotations

import click

from ._io import CONTEXT
from ._io import err as _err
from ._io import home as _home
from ._io import show as _show


@click.command("eval", context_settings=CONTEXT)
@click.argument("name")
@click.option("--adapter", "adapter_id", help="Adapter id (default: the active one on --base).")
@click.option("--base", "base_name", help="Base model (default: smollm2-135m).")
@click.option("--limit", type=int, help="Score only the first N eval messages.")
@click.option("--reader", help="An installed base that reads how well each body fits its subject"
                               " (sense), e.g. qwen2.5-coder-0.5b; the real bodies too.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(name, adapter_id, base_name, limit, reader, as_json) -> None:
    """Score an adapter on the user's frozen eval set, beside ceiling, floor and bare base."""
    from ..evaluate.report import save_result
    from ..evaluate.run import EvalConfig, evaluate

    home = _home()
    r = evaluate(home, name, adapter_id, base_name, EvalConfig(limit=limit, reader=reader),
                 log=_err)
    save_result(home, r)
    _show(r, as_json, eval_text(r))


def eval_text(r: dict) -> str:
    c = r["calibration"]
    lines = [f"{r['user']} / adapter {r['adapter']} on {r['base']}: {r['n']} eval messages,"
             f" cohort of {len(r['cohort'])} (chance {r['chance']:.3f})",
             f"{'metric':<26}{'adapter':>10}{'base':>10}{'ceiling':>10}{'floor':>10}"]
    for m, label in (("fingerprint_distance", "fingerprint distance (low)"),
                     ("authorship_probability", "authorship prob. (high)")):
        lines.append(f"{label:<26}{r['adapter_scores'][m]:>10.3f}{r['base_scores'][m]:>10.3f}"
                     f"{c[m]['ceiling']:>10.3f}{c[m]['floor']:>10.3f}")
    lines.append(f"{'perplexity (low)':<26}{r['adapter_scores']['perplexity']:>10.2f}"
                 f"{r['base_scores']['perplexity']:>10.2f}")
    if r.get("sense"):
        sn = r["sense"]
        # a score is None where nothing could be read (e.g. no subject has a topic word)
        cells = lambda key: "".join(  # noqa: E731
            f"{'-':>10}" if sn[k][key] is None else f"{sn[k][key]:>10.3f}"
            for k in ("adapter", "base", "real"))
        lines.append(f"{'subject fit (high)':<26}{cells('subject_fit')}{'':>10}  (nats/token,"
                     f" read by {sn['reader']}; ceiling: the real bodies)")
        lines.append(f"{'subject overlap':<26}{cells('subject_overlap')}{'':>10}  (share of the"
                     " subject's words in the body; the real bodies' beside)")
    n = r["novelty"]
    lines.append(f"novelty: {n['copied_ngram_share']:.3f} of {n['n']}-grams copied, longest span"
                 f" {n['max_span']} words, {n['flagged']} flagged, {n['verbatim']} verbatim")
    return "\n".join(lines)
