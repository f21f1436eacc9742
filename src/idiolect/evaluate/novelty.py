"""Novelty: how much generated text copies the training messages (a memorization check).

Texts are tokenized into lowercase words (NFC, runs of letters/digits; punctuation and layout
ignored). Every word n-gram of the training set goes into a set of hashes; each generated n-gram
is looked up there. A *copied span* is a maximal run of consecutive generated n-grams that all
occur in training: its length in words is (run length + n - 1). See docs/metrics.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from idiolect.errors import IdiolectError

FLAG_WORDS = 20  # a generated text with a copied span this long (words) or longer is flagged

_TOKEN = re.compile(r"\w+")
_WS = re.compile(r"\s+")


def tokens(text: str) -> list[str]:
    """Lowercase word tokens of a text, as novelty counts them."""
    return _TOKEN.findall(unicodedata.normalize("NFC", text).lower())


def _ngram_hashes(words: Sequence[str], n: int) -> list[int]:
    return [hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)]


def _squash(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


class NgramIndex:
    """The set of hashed word n-grams of a training set, reusable across many generated sets.

    Hashes are Python's tuple hashes (64-bit): only valid inside the process that built them,
    which is all this index is for. A false match needs a 64-bit collision.
    """

    def __init__(self, training: Iterable[str], n: int = 8) -> None:
        if n < 1:
            raise IdiolectError(f"novelty n-gram size must be >= 1, got {n}")
        self.n = n
        self.hashes: set[int] = set()
        self.verbatim: set[str] = set()
        self.texts = 0
        for text in training:
            self.texts += 1
            self.hashes.update(_ngram_hashes(tokens(text), n))
            squashed = _squash(text)
            if squashed:
                self.verbatim.add(squashed)

    def spans(self, text: str) -> tuple[int, int, int]:
        """(n-grams in the text, of which found in training, longest copied span in words)."""
        found = [h in self.hashes for h in _ngram_hashes(tokens(text), self.n)]
        longest = run = 0
        for hit in found:
            run = run + 1 if hit else 0
            longest = max(longest, run)
        return len(found), sum(found), (longest + self.n - 1) if longest else 0


def novelty(generated: Sequence[str], training: Sequence[str] | NgramIndex, n: int = 8,
            flag_words: int = FLAG_WORDS) -> dict:
    """How much ``generated`` copies ``training``.

    Returns a JSON-ready dict:
      ``n``, ``texts``, ``ngrams``: n-gram size, number of generated texts, their n-grams;
      ``copied_ngram_share``: share of generated word n-grams that occur anywhere in training
      (0.0 when the generated texts have no n-gram at all);
      ``longest_span``: per generated text, the longest copied span in words (0 when not even one
      n-gram is copied; a copied span is always >= n words); ``max_span``: the largest of them;
      ``flag_words`` and ``flagged``: how many texts have a copied span >= flag_words words;
      ``verbatim``: how many generated texts equal a training text after whitespace
      normalization (runs of whitespace -> one space, ends stripped; case kept), and
      ``verbatim_idx``/``flagged_idx``: which ones (indices into ``generated``).

    ``training`` may be a prebuilt ``NgramIndex`` (then its ``n`` is used).
    """
    index = training if isinstance(training, NgramIndex) else NgramIndex(training, n)
    total = found = 0
    longest: list[int] = []
    verbatim_idx: list[int] = []
    for i, text in enumerate(generated):
        t, f, span = index.spans(text)
        total, found = total + t, found + f
        longest.append(span)
        squashed = _squash(text)
        if squashed and squashed in index.verbatim:
            verbatim_idx.append(i)
    flagged_idx = [i for i, s in enumerate(longest) if s >= flag_words]
    return {
        "n": index.n,
        "texts": len(longest),
        "training_texts": index.texts,
        "ngrams": total,
        "copied_ngram_share": (found / total) if total else 0.0,
        "longest_span": longest,
        "max_span": max(longest, default=0),
        "flag_words": flag_words,
        "flagged": len(flagged_idx),
        "flagged_idx": flagged_idx,
        "verbatim": len(verbatim_idx),
        "verbatim_idx": verbatim_idx,
    }
