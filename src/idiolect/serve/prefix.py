"""The KV cache of the prompt's fixed opening, kept per adapter (prefix caching).

Every prompt the server builds opens with the same tokens: the chat template's system turn and
the instruction up to the recipients (``compile.prompts.instruction``): 38 of the 55 to 58
tokens of SmolLM2's prompts for bench/serve_load.py's subjects. Their keys and values depend only on those tokens and on the row's adapter
(its LoRA changes every layer's input), so they are computed once per adapter and reused: a
batch's prefill then runs only each prompt's own tail. When 16 requests arrive at once, the
prefill is what the last of them waits for (its time to first token).

``PrefixCache.templates`` are the openings: the tokens that several made-up prompts of each kind
(plain, with shots) share. A prompt uses the longest one it starts with, token for token (a
prompt that tokenizes otherwise simply misses). Entries are ``(adapter name, opening tokens)``
-> per-layer ``(keys, values)`` of one row, least recently used first out (``size`` entries in
all, over every adapter and opening); ``drop`` forgets an adapter's (unloaded, or replaced by a
promotion: a new adapter has a new name). The batcher's thread reads and writes it; a lock lets
other threads look (``names``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from ..compile.prompts import prompt_text

#: made-up prompts whose shared opening is the cacheable prefix: varied enough that the
#: opening ends before anything a request fills in (recipients, subject, shots)
_PLAIN = [("(none)", []), ("Zed", ["a@b.example"]), ("fix: x", ["list@example.org", "q"])]
_SHOTS = [[("a", "b")], [("Re: z", "Hello,\nthere")]]


def _common(seqs: Sequence[Sequence[int]]) -> tuple[int, ...]:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    i = 0
    while i < n and all(s[i] == first[i] for s in seqs):
        i += 1
    return tuple(first[:i])


def templates(tokenizer) -> list[tuple[int, ...]]:
    """The openings of the server's prompts, longest first (empty ones left out)."""
    def ids(subject, to, shots=()):
        text = prompt_text(tokenizer, subject, to, shots)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    plain = _common([ids(s, to) for s, to in _PLAIN])
    shots = _common([ids(s, to, sh) for (s, to), sh in zip(_PLAIN, _SHOTS)])
    found = {t for t in (plain, shots) if t}
    return sorted(found, key=len, reverse=True)


class PrefixCache:
    """Per adapter name, the KV of each opening; ``size`` entries at most (0: off)."""

    def __init__(self, tokenizer, size: int) -> None:
        self.size = size
        self.templates = templates(tokenizer) if size else []
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], list] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> set[str]:
        """The adapter names with an entry."""
        with self._lock:
            return {name for name, _ in self._entries}

    def opening(self, prompt_ids: Sequence[int]) -> tuple[int, ...]:
        """The longest template ``prompt_ids`` opens with (empty: none); at least one token of
        the prompt is left to run (its logits start the answer)."""
        for t in self.templates:
            if len(prompt_ids) > len(t) and tuple(prompt_ids[:len(t)]) == t:
                return t
        return ()

    def get(self, name: str, opening: tuple[int, ...]) -> list | None:
        with self._lock:
            entry = self._entries.get((name, opening))
            if entry is not None:
                self._entries.move_to_end((name, opening))
            return entry

    def put(self, name: str, opening: tuple[int, ...], layers: list) -> None:
        with self._lock:
            self._entries[(name, opening)] = layers
            self._entries.move_to_end((name, opening))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def drop(self, names) -> None:
        """Forget every entry of these adapter names."""
        names = set(names)
        with self._lock:
            for key in [k for k in self._entries if k[0] in names]:
                del self._entries[key]
