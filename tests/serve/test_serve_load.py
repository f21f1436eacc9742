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
