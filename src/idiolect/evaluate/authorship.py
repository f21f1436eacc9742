"""Authorship probability: a cohort classifier's P(target user | text).

TF-IDF over character 2-4-grams (within word boundaries, case kept) and word 1-2-grams
(lowercased), into a multinomial logistic regression. Trained on the cohort's *training*
messages only; the per-user eval sets must stay out of it. Chance is 1/K for K users.
See docs/metrics.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from idiolect.errors import IdiolectError, NotFound
from idiolect.home import atomic_write_bytes

SCHEMA_VERSION = 1


@dataclass
class AuthorshipParams:
    """Classifier settings; stored in the cache sidecar, so a change forces a refit."""

    max_texts_per_user: int = 500   # cap on training texts per user (seeded sample): fit time
    char_ngrams: tuple[int, int] = (2, 4)
    word_ngrams: tuple[int, int] = (1, 2)
    max_char_features: int = 100_000
    max_word_features: int = 50_000
    min_df: int = 2
    C: float = 30.0                 # inverse L2 strength (best held-out log loss of 3/10/30)
    max_iter: int = 30              # lbfgs steps; held-out log loss is flat beyond ~25


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cohort_digest(texts_by_user: Mapping[str, Sequence[str]]) -> str:
    """sha256 of the cohort's training data: users sorted, each user's texts as a sorted multiset.

    Independent of the order of users and of texts, so the same data always gives the same digest.
    """
    h = hashlib.sha256()
    for user in sorted(texts_by_user):
        h.update(f"user\x00{user}\x00{len(texts_by_user[user])}\n".encode("utf-8"))
        for d in sorted(_text_digest(t) for t in texts_by_user[user]):
            h.update(d.encode("ascii"))
    return h.hexdigest()


def _canonical_sample(texts: Sequence[str], cap: int, rng: np.random.Generator) -> list[str]:
    """Texts sorted by digest (order-independent), then a seeded sample of at most ``cap``."""
    ordered = sorted(texts, key=_text_digest)
    if len(ordered) <= cap:
        return ordered
    idx = np.sort(rng.choice(len(ordered), size=cap, replace=False))
    return [ordered[i] for i in idx]


class AuthorshipModel:
    """Which cohort user wrote a text: ``fit`` on the cohort, then ``proba(texts, user)``."""

    def __init__(self, params: AuthorshipParams | None = None) -> None:
        self.params = params or AuthorshipParams()
        self.users: list[str] = []
        self.digest: str | None = None
        self.seed: int | None = None
        self._vectorizer = None
        self._clf = None

    def fit(self, texts_by_user: Mapping[str, Sequence[str]], seed: int = 0) -> AuthorshipModel:
        """Train on each user's texts (capped at ``params.max_texts_per_user``, seeded sample)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion

        users = sorted(u for u in texts_by_user if len(texts_by_user[u]) > 0)
        if len(users) < 2:
            raise IdiolectError(
                f"authorship needs a cohort of at least 2 users, got {len(users)} "
                f"({', '.join(users) or 'none'}): a classifier cannot tell one user from nobody")
        p = self.params
        rng = np.random.default_rng(seed)
        texts: list[str] = []
        labels: list[int] = []
        for k, user in enumerate(users):
            sample = _canonical_sample(texts_by_user[user], p.max_texts_per_user, rng)
            texts.extend(sample)
            labels.extend([k] * len(sample))
        min_df = p.min_df if len(texts) >= 10 * p.min_df else 1
        vectorizer = FeatureUnion([
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(p.char_ngrams),
                                     lowercase=False, sublinear_tf=True, min_df=min_df,
                                     max_features=p.max_char_features, dtype=np.float32)),
            ("word", TfidfVectorizer(analyzer="word", ngram_range=tuple(p.word_ngrams),
                                     lowercase=True, sublinear_tf=True, min_df=min_df,
                                     token_pattern=r"(?u)\b\w+\b",
                                     max_features=p.max_word_features, dtype=np.float32)),
        ])
        x = vectorizer.fit_transform(texts)
        clf = LogisticRegression(C=p.C, max_iter=p.max_iter, random_state=seed)
        with warnings.catch_warnings():
            # max_iter caps lbfgs on purpose (fit time); held-out log loss has converged by then.
            warnings.filterwarnings("ignore", message=".*failed to converge.*")
            clf.fit(x, np.asarray(labels))
        self.users, self._vectorizer, self._clf = users, vectorizer, clf
        self.digest, self.seed = cohort_digest(texts_by_user), seed
        return self

    def _check_fitted(self) -> None:
        if self._clf is None:
            raise IdiolectError("authorship model is not fitted: call fit() or load() first")

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts) x K) matrix of P(user | text); columns in the order of ``users``."""
        self._check_fitted()
        if len(texts) == 0:
            return np.zeros((0, len(self.users)))
        return self._clf.predict_proba(self._vectorizer.transform(list(texts)))

    def proba(self, texts: Sequence[str], user: str) -> np.ndarray:
        """P(user | text) for each text."""
        self._check_fitted()
        if user not in self.users:
            raise NotFound(f"user {user!r} is not in the authorship cohort "
                           f"({', '.join(self.users)})")
        return self.predict_proba(texts)[:, self.users.index(user)]

    @property
    def chance(self) -> float:
        """The probability a uniform guess gives: 1/K."""
        self._check_fitted()
        return 1.0 / len(self.users)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model (pickle, a local cache) and a JSON sidecar, each atomically.

        The pickle is a *local cache* of something rebuildable from the vault; it is never
        downloaded or shared. The sidecar (``<path>.json``) records the cohort digest, users,
        params, seed, library versions and the pickle's sha256, checked by ``load``.
        """
        self._check_fitted()
        import sklearn

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = pickle.dumps({"vectorizer": self._vectorizer, "clf": self._clf},
                            protocol=pickle.HIGHEST_PROTOCOL)
        meta = {"schema_version": SCHEMA_VERSION, "cohort_digest": self.digest,
                "users": self.users, "seed": self.seed, "params": asdict(self.params),
                "sklearn_version": sklearn.__version__, "numpy_version": np.__version__,
                "pickle_sha256": hashlib.sha256(blob).hexdigest()}
        atomic_write_bytes(path, blob)
        atomic_write_bytes(_sidecar(path), (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expect_digest: str | None = None,
             expect_params: AuthorshipParams | None = None) -> AuthorshipModel:
        """Load a cache written by ``save``; refuse (IdiolectError) a stale or foreign one.

        ``expect_digest``: the current ``cohort_digest`` of the training data; a mismatch means
        the cohort changed. ``expect_params``: the settings the caller would fit with (e.g.
        ``AuthorshipParams()``); a mismatch means the recipe changed. Either way: refit.
        """
        import sklearn

        path = Path(path)
        try:
            meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
            blob = path.read_bytes()
        except (OSError, ValueError) as exc:
            raise IdiolectError(f"cannot read authorship cache {path}: {exc}") from exc
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise IdiolectError(f"authorship cache {path} has schema "
                                f"{meta.get('schema_version')}, expected {SCHEMA_VERSION}; refit")
        if hashlib.sha256(blob).hexdigest() != meta.get("pickle_sha256"):
            raise IdiolectError(f"authorship cache {path} does not match its sidecar; refit")
        if meta.get("sklearn_version") != sklearn.__version__:
            raise IdiolectError(
                f"authorship cache {path} was written with scikit-learn "
                f"{meta.get('sklearn_version')}, this is {sklearn.__version__}; refit")
        if expect_digest is not None and meta.get("cohort_digest") != expect_digest:
            raise IdiolectError(f"authorship cache {path} was fitted on another cohort "
                                f"({meta.get('cohort_digest')}, expected {expect_digest}); refit")
        known = {f for f in AuthorshipParams.__dataclass_fields__}
        params = AuthorshipParams(**{k: (tuple(v) if isinstance(v, list) else v)
                                     for k, v in meta.get("params", {}).items() if k in known})
        if expect_params is not None and params != expect_params:
            raise IdiolectError(f"authorship cache {path} was fitted with other settings "
                                f"({asdict(params)}); refit")
        state = pickle.loads(blob)  # noqa: S301 - our own local cache, integrity-checked above
        model = cls(params)
        model.users, model.digest, model.seed = list(meta["users"]), meta["cohort_digest"], \
            meta.get("seed")
        model._vectorizer, model._clf = state["vectorizer"], state["clf"]
        return model


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")
