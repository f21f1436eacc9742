"""Shots: the user's own nearest earlier messages, placed in the prompt (a recipe lever).

With ``Recipe.shots`` = k > 0, every prompt (training, evaluation, drafting, serving) carries k
of the user's *training* messages, the ones nearest to its subject, each body cut to
``Recipe.shot_tokens`` tokens. The adapter learns with exactly the prompts it is later asked
with, so it learns to take what it can from them (the user's vocabulary for this area, the
shape of their messages on it) rather than from its weights alone.

Nearness is TF-IDF cosine between the query's subject words and each pool message's subject
(counted twice) and body words: subjects are all a draft request knows. Deterministic: ties go
to the earlier pool message. Only training messages are ever a pool: the frozen eval set and
the reference split are never shown to the model, and they are disjoint in content from the
training messages (``vault/split.py``).

In training, a message is never its own shot, nor is a message with the same body or that
mostly repeats it (the 8-gram rule of ``vault/split.py``): the model is taught to write in the
user's voice from neighbours, not to copy a near-duplicate that happens to be in its prompt.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence

from ..vault.split import ContentIndex

_WORD = re.compile(r"\w+")
#: body words of a pool message that count towards nearness (its opening is what a shot shows)
BODY_WORDS = 200


def _terms(subject: str, body: str = "") -> Counter[str]:
    words = _WORD.findall(subject.lower()) * 2 + _WORD.findall(body.lower())[:BODY_WORDS]
    return Counter(words)


class ShotIndex:
    """A user's training messages (anything with ``subject`` and ``body``), searchable by
    subject."""

    def __init__(self, pool: Sequence) -> None:
        self.pool = list(pool)
        docs = [_terms(m.subject, m.body) for m in self.pool]
        df: Counter[str] = Counter()
        for d in docs:
            df.update(d.keys())
        n = len(docs)
        self.idf = {t: math.log((1 + n) / (1 + c)) + 1.0 for t, c in df.items()}
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for k, d in enumerate(docs):
            weights = {t: (1 + math.log(c)) * self.idf[t] for t, c in d.items()}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for t, w in weights.items():
                self.postings.setdefault(t, []).append((k, w / norm))

    def ranking(self, subject: str, exclude: set[int] = frozenset()) -> Iterator[int]:
        """Indices into the pool, nearest ``subject`` first (lazily: a heap of the scored ones,
        then the pool messages with no word in common, in pool order, so a prompt has its shots
        whenever the pool has them)."""
        q = {t: (1 + math.log(c)) * self.idf.get(t, 0.0) for t, c in _terms(subject).items()}
        score: dict[int, float] = {}
        for t, w in q.items():
            for i, v in self.postings.get(t, ()):
                score[i] = score.get(i, 0.0) + w * v
        heap = [(-v, i) for i, v in score.items() if i not in exclude]
        heapq.heapify(heap)
        while heap:
            yield heapq.heappop(heap)[1]
        yield from (i for i in range(len(self.pool)) if i not in score and i not in exclude)

    def nearest(self, subject: str, k: int, exclude: set[int] = frozenset()) -> list[int]:
        """The ``k`` first of ``ranking`` (fewer when the pool is small)."""
        return list(itertools.islice(self.ranking(subject, exclude), max(k, 0)))


def shots_for(pool: Sequence, queries: Sequence, k: int, training: bool = False
              ) -> list[list[tuple[str, str]]]:
    """(subject, body) shots for each query (a message, or a subject string) from ``pool``
    (the user's training messages). ``training``: the queries are the pool itself, in order;
    each message's own entry and any pool message that repeats its body (equal, or sharing
    most 8-grams either way) are never its shots."""
    if k <= 0:
        return [[] for _ in queries]
    if training and list(queries) != list(pool):
        raise ValueError("training shots are asked for the pool itself")
    index = ShotIndex(pool)
    out = []
    for j, q in enumerate(queries):
        subject = q if isinstance(q, str) else q.subject
        if not training:
            picked = index.nearest(subject, k)
        else:
            near, picked = ContentIndex([q.body]), []
            for i in index.ranking(subject, {j}):
                if not near.overlaps(index.pool[i].body):
                    picked.append(i)
                    if len(picked) == k:
                        break
        out.append([(index.pool[i].subject, index.pool[i].body) for i in picked])
    return out


def recipe_shots(tokenizer, recipe, pool: Sequence, queries: Sequence, training: bool = False
                 ) -> list[list[tuple[str, str]]]:
    """``shots_for`` with ``recipe.shots`` per query, each body cut to ``recipe.shot_tokens``:
    the shots as a prompt shows them."""
    from .prompts import cut_shots

    return [cut_shots(tokenizer, s, recipe.shot_tokens)
            for s in shots_for(pool, queries, recipe.shots, training)]


def adapter_recipe(row):
    """The recipe an adapter (a row of the adapters table, or None for the bare base) was
    compiled with; the defaults for None."""
    from pathlib import Path

    from ..manifest import Manifest
    from .recipe import Recipe

    if row is None:
        return Recipe()
    return Recipe.from_dict(Manifest.read(Path(row["path"])).recipe, source=row["path"])


class UserShots:
    """The shots of one user's adapter, for any subject: the user's training messages (never
    the eval set or the reference split; all of them, where a compile on ``--examples`` drew
    from its sample) indexed once. Called with a subject: its cut shots, [] for an adapter
    compiled without them."""

    def __init__(self, conn, user: str, recipe, tokenizer, pool: Sequence | None = None) -> None:
        from ..vault import store

        self.recipe, self.tokenizer, self.index = recipe, tokenizer, None
        if recipe.shots > 0:
            self.index = ShotIndex(store.training_messages(conn, user)[0] if pool is None
                                   else pool)

    def __call__(self, subject: str) -> list[tuple[str, str]]:
        from .prompts import cut_shots

        if self.index is None:
            return []
        picked = [self.index.pool[i] for i in self.index.nearest(subject, self.recipe.shots)]
        return cut_shots(self.tokenizer, [(m.subject, m.body) for m in picked],
                         self.recipe.shot_tokens)


def user_shots(conn, user: str, recipe, tokenizer, subjects: Sequence[str]
               ) -> list[list[tuple[str, str]]]:
    """``UserShots`` for each of ``subjects`` (empty lists when the adapter uses none)."""
    shots = UserShots(conn, user, recipe, tokenizer)
    return [shots(s) for s in subjects]
