"""Stylometric profiles and the fingerprint distance between two sets of texts.

A *profile* is one fixed-length vector of style features computed over a whole SET of texts
(counts are pooled across the texts, then turned into rates), in the order of ``FEATURE_NAMES``.
A ``StyleScaler`` holds, per feature, the spread of that feature across a cohort of users'
profiles; ``fingerprint_distance`` is Burrows' Delta on those scales: the mean over features of
the absolute difference of the two profiles in cohort standard deviations. Lower is better; two
samples of the same author typically score well below two different authors. Everything here is
deterministic (no randomness, no hashing with a per-process seed). See docs/metrics.md.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from idiolect.errors import IdiolectError

# About 110 common English function words: Burrows' classic "most frequent words" core.
FUNCTION_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "a", "in", "that", "is", "it", "for", "on", "with", "as", "be",
    "this", "was", "by", "not", "are", "but", "at", "from", "or", "have", "an", "they", "which",
    "one", "you", "were", "all", "we", "their", "has", "been", "would", "there", "will", "if",
    "can", "so", "no", "what", "when", "more", "about", "who", "do", "out", "up", "into", "than",
    "then", "them", "these", "some", "could", "its", "only", "other", "any", "may", "should",
    "also", "now", "such", "how", "our", "even", "most", "because", "does", "did", "just", "very",
    "both", "each", "those", "while", "where", "being", "might", "must", "here", "however",
    "though", "since", "without", "over", "after", "before", "between", "through", "still",
    "yet", "whether", "i", "me", "my", "he", "she", "his", "her", "us", "your", "had", "instead",
    "rather", "too", "much", "many", "own", "same", "why", "let", "via",
)

# Punctuation and symbol characters, counted per character of text.
PUNCTUATION: tuple[tuple[str, str], ...] = (
    ("period", "."), ("comma", ","), ("semicolon", ";"), ("colon", ":"), ("exclam", "!"),
    ("question", "?"), ("lparen", "("), ("rparen", ")"), ("dquote", '"'), ("squote", "'"),
    ("hyphen", "-"), ("backtick", "`"), ("underscore", "_"), ("slash", "/"), ("lbracket", "["),
    ("rbracket", "]"), ("asterisk", "*"), ("hash", "#"), ("equals", "="), ("lt", "<"),
    ("gt", ">"), ("ampersand", "&"), ("at", "@"), ("percent", "%"), ("dollar", "$"),
    ("backslash", "\\"), ("lbrace", "{"), ("rbrace", "}"), ("pipe", "|"), ("tilde", "~"),
    ("plus", "+"), ("ellipsis", "\u2026"), ("emdash", "\u2014"),
)

# A fixed vocabulary of frequent English character 3-grams (lowercased, whitespace collapsed to
# one space); rates are per 3-gram of text. Fixed so that a profile never depends on a cohort.
CHAR_TRIGRAMS: tuple[str, ...] = (
    " th", "the", "he ", "and", " an", "nd ", "ing", "ng ", " to", "to ", "ed ", "ion", " of",
    "of ", "er ", " in", "in ", "is ", "es ", "re ", "ent", "tio", "on ", "hat", "tha", "ter",
    "for", "or ", "ati", "her", "ere", "ver", "all", "thi", "his", "st ", "ly ", " be", "e t",
    "e a", "s a", "d t", "e s", "n t", "s t", "e o", "e c", "t t", "t i", "we ", " i ",
    "you", "'s ", "n't", ", a", ", b", ", t", ". t", ". i", "s. ", "e. ", "d. ", "). ", "e, ",
    "s, ", "t, ", " (e", "e.g", "i.e",
)

SCALAR_FEATURES: tuple[str, ...] = (
    "char:upper_ratio",       # uppercase letters / letters
    "char:digit_ratio",       # digits / characters
    "char:space_ratio",       # whitespace / characters
    "layout:newline_rate",    # newlines / characters
    "layout:paragraphs",      # mean paragraphs (blank-line separated blocks) per text
    "layout:indented_lines",  # non-empty lines starting with whitespace / non-empty lines
    "layout:bullet_lines",    # non-empty lines starting with "-", "*", "+", "1." / non-empty
    "word:mean_len",          # mean word length (letters)
    "word:std_len",           # standard deviation of word length
    "word:capitalized",       # words starting with an uppercase letter / words
    "word:allcaps",           # words of >= 2 letters all in uppercase / words
    "word:ttr",               # type-token ratio over windows of TTR_WINDOW words (mean)
    "sent:mean_len",          # mean sentence length (words)
    "sent:std_len",           # standard deviation of sentence length (words)
    "msg:log_words",          # log(1 + mean words per text)
)

FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"fw:{w}" for w in FUNCTION_WORDS)
    + tuple(f"punct:{name}" for name, _ in PUNCTUATION)
    + SCALAR_FEATURES
    + tuple(f"tri:{t}" for t in CHAR_TRIGRAMS)
)

TTR_WINDOW = 100
DELTA_CLIP = 5.0  # a single feature contributes at most this many standard deviations

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_PARA_SPLIT = re.compile(r"\n\s*\n")
_WS = re.compile(r"\s+")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
_FW_INDEX = {w: i for i, w in enumerate(FUNCTION_WORDS)}
_PUNCT_INDEX = {ch: i for i, (_, ch) in enumerate(PUNCTUATION)}
_TRI_INDEX = {t: i for i, t in enumerate(CHAR_TRIGRAMS)}


class _Counts:
    """Pooled raw counts over a set of texts; ``vector()`` turns them into the profile."""

    def __init__(self) -> None:
        self.texts = 0
        self.chars = self.letters = self.upper = self.digits = self.spaces = self.newlines = 0
        self.paragraphs = self.lines = self.indented = self.bullets = 0
        self.capitalized = self.allcaps = 0
        self.trigrams = 0
        self.fw = np.zeros(len(FUNCTION_WORDS))
        self.punct = np.zeros(len(PUNCTUATION))
        self.tri = np.zeros(len(CHAR_TRIGRAMS))
        self.word_lens: list[int] = []
        self.sent_lens: list[int] = []
        self.words_lower: list[str] = []

    def add(self, text: str) -> None:
        text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").strip()
        self.texts += 1
        self.chars += len(text)
        for ch in text:
            if ch.isalpha():
                self.letters += 1
                self.upper += ch.isupper()
            elif ch.isdigit():
                self.digits += 1
            elif ch.isspace():
                self.spaces += 1
                self.newlines += ch == "\n"
            else:
                j = _PUNCT_INDEX.get(ch)
                if j is not None:
                    self.punct[j] += 1
        if text:
            self.paragraphs += sum(1 for p in _PARA_SPLIT.split(text) if p.strip())
        for line in text.split("\n"):
            if line.strip():
                self.lines += 1
                self.indented += line[:1].isspace()
                self.bullets += bool(_BULLET.match(line))
        words = _WORD.findall(text)
        for w in words:
            lw = w.lower()
            self.words_lower.append(lw)
            self.word_lens.append(len(w))
            self.capitalized += w[0].isupper()
            self.allcaps += len(w) >= 2 and w.isupper()
            j = _FW_INDEX.get(lw)
            if j is not None:
                self.fw[j] += 1
        for sent in _SENT_SPLIT.split(text):
            n = len(_WORD.findall(sent))
            if n:
                self.sent_lens.append(n)
        flat = _WS.sub(" ", text.lower())
        self.trigrams += max(0, len(flat) - 2)
        for k in range(len(flat) - 2):
            j = _TRI_INDEX.get(flat[k:k + 3])
            if j is not None:
                self.tri[j] += 1

    @classmethod
    def pooled(cls, parts: Sequence["_Counts"]) -> "_Counts":
        """The counts of several texts' counts together: what ``add`` of each text, in this
        order, would have given (so a resample need not re-read its texts)."""
        out = cls()
        for p in parts:
            for name, value in vars(p).items():
                if isinstance(value, list):
                    getattr(out, name).extend(value)
                else:
                    setattr(out, name, getattr(out, name) + value)
        return out

    def vector(self) -> np.ndarray:
        nwords = len(self.words_lower)
        chars = max(self.chars, 1)
        words = max(nwords, 1)
        lines = max(self.lines, 1)
        wl = np.asarray(self.word_lens, dtype=float)
        sl = np.asarray(self.sent_lens, dtype=float)
        scalars = [
            self.upper / max(self.letters, 1),
            self.digits / chars,
            self.spaces / chars,
            self.newlines / chars,
            self.paragraphs / max(self.texts, 1),
            self.indented / lines,
            self.bullets / lines,
            float(wl.mean()) if wl.size else 0.0,
            float(wl.std()) if wl.size else 0.0,
            self.capitalized / words,
            self.allcaps / words,
            _windowed_ttr(self.words_lower),
            float(sl.mean()) if sl.size else 0.0,
            float(sl.std()) if sl.size else 0.0,
            math.log1p(nwords / max(self.texts, 1)),
        ]
        return np.concatenate([
            self.fw / words,
            self.punct / chars,
            np.asarray(scalars, dtype=float),
            self.tri / max(self.trigrams, 1),
        ])


def _windowed_ttr(words: Sequence[str], window: int = TTR_WINDOW) -> float:
    """Mean type-token ratio over consecutive non-overlapping windows of ``window`` words.

    A fixed window keeps the ratio comparable between sets of different sizes (plain TTR falls
    as text grows). A tail shorter than the window is dropped unless it is all there is.
    """
    if not words:
        return 0.0
    if len(words) < window:
        return len(set(words)) / len(words)
    full = len(words) // window
    return float(np.mean([len(set(words[i * window:(i + 1) * window])) / window
                          for i in range(full)]))


def profile(texts: Iterable[str]) -> np.ndarray:
    """Style profile of a SET of texts: counts pooled over all texts, in ``FEATURE_NAMES`` order.

    Word-sequence features (type-token windows) run over the texts concatenated in the order
    given; every other feature is independent of the order.
    """
    counts = _Counts()
    for text in texts:
        counts.add(text)
    return counts.vector()


def text_counts(texts: Iterable[str]) -> list[_Counts]:
    """Each text's own counts, to pool any subset or resample of them (``profile_of``)."""
    out = []
    for text in texts:
        c = _Counts()
        c.add(text)
        out.append(c)
    return out


def profile_of(counts: Sequence[_Counts]) -> np.ndarray:
    """The profile of the texts whose counts these are (equal to ``profile`` of the texts)."""
    return _Counts.pooled(counts).vector()


def style_features(text: str) -> dict[str, float]:
    """The profile of one text, as a name -> value mapping."""
    return dict(zip(FEATURE_NAMES, profile([text]).tolist()))


@dataclass
class StyleScaler:
    """Per-feature location and spread of style across a cohort of users' profiles.

    ``std`` is floored at ``max(rel_floor * |mean|, abs_floor)`` so that a feature on which the
    cohort happens to agree (or which it never uses) cannot blow the distance up.
    """

    mean: np.ndarray
    std: np.ndarray
    n_profiles: int
    rel_floor: float = 0.1
    abs_floor: float = 1e-3

    @classmethod
    def fit(cls, profiles: np.ndarray | Sequence[np.ndarray], rel_floor: float = 0.1,
            abs_floor: float = 1e-3) -> StyleScaler:
        """Fit on a matrix of profiles, one row per user (at least 2 rows)."""
        arr = np.asarray(profiles, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != len(FEATURE_NAMES):
            raise IdiolectError(
                f"StyleScaler.fit needs a (users x {len(FEATURE_NAMES)}) matrix of profiles, "
                f"got shape {arr.shape}")
        if arr.shape[0] < 2:
            raise IdiolectError(
                f"StyleScaler.fit needs profiles of at least 2 users, got {arr.shape[0]}")
        mean = arr.mean(axis=0)
        std = arr.std(axis=0, ddof=1)
        floor = np.maximum(rel_floor * np.abs(mean), abs_floor)
        return cls(mean=mean, std=np.maximum(std, floor), n_profiles=int(arr.shape[0]),
                   rel_floor=rel_floor, abs_floor=abs_floor)

    @classmethod
    def from_cohort(cls, texts_by_user: Mapping[str, Sequence[str]], **floors: float
                    ) -> StyleScaler:
        """Fit on the profiles of each user's texts (e.g. the cohort's training messages)."""
        return cls.fit([profile(texts_by_user[u]) for u in sorted(texts_by_user)], **floors)

    def transform(self, prof: np.ndarray) -> np.ndarray:
        """z-scores of a profile (or a matrix of profiles) against the cohort."""
        return (np.asarray(prof, dtype=float) - self.mean) / self.std

    def to_dict(self) -> dict:
        """JSON-ready form (feature names included so a stale scaler is caught on load)."""
        return {"schema_version": 1, "feature_names": list(FEATURE_NAMES),
                "mean": self.mean.tolist(), "std": self.std.tolist(),
                "n_profiles": self.n_profiles, "rel_floor": self.rel_floor,
                "abs_floor": self.abs_floor}

    @classmethod
    def from_dict(cls, data: Mapping) -> StyleScaler:
        if list(data.get("feature_names", [])) != list(FEATURE_NAMES):
            raise IdiolectError("style scaler was fitted on a different feature set; refit it")
        return cls(mean=np.asarray(data["mean"], dtype=float),
                   std=np.asarray(data["std"], dtype=float),
                   n_profiles=int(data["n_profiles"]),
                   rel_floor=float(data.get("rel_floor", 0.1)),
                   abs_floor=float(data.get("abs_floor", 1e-3)))


def delta(profile_a: np.ndarray, profile_b: np.ndarray, scaler: StyleScaler) -> float:
    """Burrows' Delta between two profiles: mean |z_a - z_b|, each term clipped at DELTA_CLIP."""
    diff = np.abs(np.asarray(profile_a, float) - np.asarray(profile_b, float)) / scaler.std
    return float(np.minimum(diff, DELTA_CLIP).mean())


def fingerprint_distance(generated: Sequence[str], reference: Sequence[str],
                         scaler: StyleScaler) -> float:
    """Fingerprint distance of a set of generated texts to a set of reference texts.

    Raw Burrows' Delta (see ``delta``) between the two sets' profiles: 0 means identical
    profiles; about 1 is the typical distance between two different users of the cohort. Lower is
    better. Compare only sets of similar size (profiles of small sets are noisier).
    """
    if not generated or not reference:
        raise IdiolectError(
            f"fingerprint distance needs non-empty sets of texts, got {len(generated)} "
            f"generated and {len(reference)} reference")
    return delta(profile(generated), profile(reference), scaler)
