"""Dequantizing a packaged base prints our one progress line, not transformers' GGUF bar."""

from __future__ import annotations

import contextlib
import io


def test_the_gguf_reader_bar_is_off_while_dequantizing_and_back_after():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from idiolect.bases.load import _no_gguf_bar

    def draw() -> str:
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            for _ in gguf_utils.tqdm(range(3), desc="Converting", file=None):
                pass
        return buf.getvalue()

    original = gguf_utils.tqdm
    with _no_gguf_bar():
        assert draw() == ""
    assert gguf_utils.tqdm is original and "Converting" in draw()
