"""Held-out text that is held out in content, not only by id.

Deduplication keys on subject + body, so the same body under two subjects (a resend, a reply
that repeats a paragraph) can sit on both sides of a split. A *protected* body (the frozen eval
set, the reference split) must not be equal to, mostly contained in, or mostly contain any
message the adapter trains on. Such training messages are *quarantined*: kept in the vault,
never trained on.

"Mostly" is measured on word 8-grams of the normalized body (NFC, lowercase, whitespace
collapsed): a training message T is quarantined for a protected body P when they share at least
``SHARE`` of P's 8-grams or of T's, or when their normalized bodies are equal (this also covers
bodies shorter than 8 words, which have no 8-gram).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

from .message import normalize_text

N = 8
SHARE = 0.5
_WORD = re.compile(r"\w+")


def ngrams(body: str, n: int = N) -> set[int]:
    words = _WORD.findall(normalize_text(body))
    return {zlib.crc32(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1)}


class ContentIndex:
    """The protected bodies, indexed to test any other body against them quickly."""

    def __init__(self, bodies: Iterable[str], n: int = N, share: float = SHARE) -> None:
        self.n, self.share = n, share
        self.exact: set[str] = set()
        self.sizes: list[int] = []
        self.postings: dict[int, list[int]] = {}
        for body in bodies:
            self.exact.add(normalize_text(body))
            grams = ngrams(body, n)
            k = len(self.sizes)
            self.sizes.append(len(grams))
            for g in grams:
                self.postings.setdefault(g, []).append(k)

    def overlaps(self, body: str) -> bool:
        """Is ``body`` equal to a protected body, or do they share most of either's 8-grams?"""
        if normalize_text(body) in self.exact:
            return True
        grams = ngrams(body, self.n)
        if not grams:
            return False
        shared: Counter[int] = Counter()
        for g in grams:
            for k in self.postings.get(g, ()):
                shared[k] += 1
        return any(c >= self.share * self.sizes[k] or c >= self.share * len(grams)
                   for k, c in shared.items())


def quarantined(protected: Sequence[str], candidates: dict[str, str]) -> set[str]:
    """Ids of ``candidates`` (id -> body) that overlap a protected body."""
    if not protected:
        return set()
    index = ContentIndex(protected)
    return {i for i, body in candidates.items() if index.overlaps(body)}
