"""bench/serve_load.py's measuring client against a live server (its numbers are computed from
what the streams say: every request writes exactly --tokens tokens)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")

from live import serve, two_users  # noqa: E402,F401 - fixtures

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


@pytest.mark.parametrize("mode", ["mixed", "serial", "grouped"])
def test_a_load_cell_counts_every_token_and_batches_as_its_mode_says(serve, two_users, mode):
    from serve_load import MODES, cell

    live = serve(**({"max_batch": 4, "max_wait_ms": 200} | MODES[mode]))
    args = argparse.Namespace(requests=2, tokens=5, timeout=60, stagger_ms=0.0)
    m = asyncio.run(cell(live.url, ["ada", "bob"], 4, 2, args))
    assert m["requests"] == 8 and m["tokens"] == 40 and m["tokens_per_s"] > 0
    assert 0 < m["ttft_ms"]["p50"] <= m["ttft_ms"]["p95"]
    assert 0 <= m["tpot_ms"]["p50"] <= m["tpot_ms"]["p95"]
    s = live.stats
    assert s["max_adapters_in_batch"] == {"mixed": 2, "serial": 1, "grouped": 1}[mode]
    rows = s["max_rows_in_batch"]  # 4 at once: (ada, bob, ada, bob) for the mixed batch
    assert rows == 1 if mode == "serial" else rows == 2 if mode == "grouped" else rows >= 2


def _row(mode, repeat, tps, ttfts, clients=16, adapters=12):
    from serve_load import quantile

    return {"mode": mode, "repeat": repeat, "clients": clients, "adapters": adapters,
            "tokens_per_s": tps, "ttft_s": ttfts,
            "ttft_ms": {"p95": round(quantile(ttfts, 95) * 1000, 1)}}


def test_repeats_pair_the_speedup_within_a_round_and_call_goals_only_beyond_noise():
    from serve_load import summarize

    rows = [_row("mixed", r, tps, [0.5, 1.0 + r / 10]) for r, tps in enumerate([60, 58, 67.1])]
    rows += [_row("serial", r, tps, [1.0, 9.0]) for r, tps in enumerate([10, 10, 11])]
    mixed, serial = summarize(rows)
    assert (mixed["mode"], serial["mode"], mixed["rounds"]) == ("mixed", "serial", 3)
    # paired within a round: 60/10, 58/10, 67.1/11, not the ratio of the means
    assert mixed["speedup_vs_serial"]["mean"] == round((6 + 5.8 + 6.1) / 3, 3)
    assert mixed["speedup_vs_serial"]["min"] == 5.8 and "speedup_vs_serial" not in serial
    lo, hi = mixed["speedup_vs_serial"]["ci"]  # a t-interval: 5.97 +- 4.30 x 0.153 / sqrt(3)
    assert lo == pytest.approx(5.587, abs=0.002) and hi == pytest.approx(6.346, abs=0.002)
    assert mixed["goals"] == {"speedup": "met", "ttft_p95": "met"} and "goals" not in serial
    assert 1.1 < mixed["ttft_p95_pooled_s"] <= 1.2  # all rounds pooled, not one round's
    # one round only: no verdict; speedups of 6, 5 and 6.1 straddle 5x: within noise
    assert summarize(rows[:1] + rows[3:4])[0]["goals"]["speedup"] == "too few rounds"
    rows[1]["tokens_per_s"] = 50
    assert summarize(rows)[0]["goals"]["speedup"] == "within noise"


def test_a_repeats_file_plots_beside_itself(tmp_path):
    import json

    from serve_load import plot, summarize

    rows = [_row("mixed", r, 60 + r, [0.5, 1.0]) for r in range(3)]
    rows += [_row("serial", r, 10, [1.0, 9.0]) for r in range(3)]
    path = tmp_path / "serve_load_x.json"
    path.write_text(json.dumps({"summary": summarize(rows), "run_info": {"name": "x", "git": "g"},
                                "meta_info": {"base": "tiny", "cpu": {"model": "cpu"}}}))
    out = plot(path)
    assert out == tmp_path / "serve_load_x.png" and out.read_bytes()[:4] == b"\x89PNG"
