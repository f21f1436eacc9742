"""Style profiles and fingerprint distance on two synthetic users with clearly different styles."""

from __future__ import annotations

import random

import numpy as np
import pytest

from idiolect.errors import IdiolectError
from idiolect.evaluate.stylometry import (
    FEATURE_NAMES, StyleScaler, fingerprint_distance, profile, style_features)

NOUNS = ["build", "patch", "cache", "index", "branch", "parser", "test", "queue", "report",
         "config", "server", "merge", "commit", "review", "release", "doc"]
VERBS = ["fixes", "breaks", "moves", "keeps", "drops", "updates", "checks", "loads", "writes"]


def long_style(rng: random.Random) -> str:
    """Long lowercase sentences joined with semicolons, many function words."""
    clauses = []
    for _ in range(rng.randint(3, 5)):
        clauses.append(f"the {rng.choice(NOUNS)} which {rng.choice(VERBS)} the "
                       f"{rng.choice(NOUNS)} is not what we would have wanted for the "
                       f"{rng.choice(NOUNS)}, and it should be kept in the {rng.choice(NOUNS)}")
    return "; ".join(clauses) + "."


def short_style(rng: random.Random) -> str:
    """Short Capitalized lines with exclamation marks."""
    lines = [f"{rng.choice(NOUNS).capitalize()} {rng.choice(VERBS)} Now!"
             for _ in range(rng.randint(3, 6))]
    return "\n".join(lines)


def corpus(style, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [style(rng) for _ in range(n)]


def make_cohort(n: int = 40, seed: int = 0) -> dict[str, list[str]]:
    return {"long": corpus(long_style, n, seed), "short": corpus(short_style, n, seed + 1)}


def test_feature_names_are_fixed_and_unique():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) > 150
    assert profile(["Hello, world!"]).shape == (len(FEATURE_NAMES),)
    assert profile([]).shape == (len(FEATURE_NAMES),)


def test_style_features_measure_what_they_say():
    f = style_features("The cat; the dog!\n\nA BIG one? 42")
    assert f["fw:the"] == pytest.approx(2 / 7)
    assert f["punct:semicolon"] == pytest.approx(1 / 32)
    assert f["punct:exclam"] == f["punct:question"] == pytest.approx(1 / 32)
    assert f["layout:paragraphs"] == 2
    assert f["word:allcaps"] == pytest.approx(1 / 7)
    assert f["char:digit_ratio"] == pytest.approx(2 / 32)
    assert f["sent:mean_len"] == pytest.approx(3.5)  # "42" has no words: not a sentence


def test_profile_pools_counts_over_the_set():
    a, b = "one two three.", "four five six seven eight nine ten eleven."
    assert profile([a, b])[FEATURE_NAMES.index("msg:log_words")] == pytest.approx(np.log1p(5.5))


def test_own_style_is_closer_than_other_style():
    train = make_cohort(seed=0)
    scaler = StyleScaler.from_cohort(train)
    held = make_cohort(n=20, seed=100)
    own = fingerprint_distance(held["long"], train["long"], scaler)
    other = fingerprint_distance(held["short"], train["long"], scaler)
    assert own < other
    assert own < 0.5 * other


def test_distance_is_deterministic_symmetric_and_zero_on_itself():
    cohort = make_cohort()
    scaler = StyleScaler.from_cohort(cohort)
    a, b = cohort["long"][:10], cohort["short"][:10]
    assert fingerprint_distance(a, a, scaler) == 0.0
    assert fingerprint_distance(a, b, scaler) == fingerprint_distance(b, a, scaler)
    assert fingerprint_distance(a, b, scaler) == fingerprint_distance(list(a), list(b), scaler)


def test_scaler_floors_and_round_trips():
    scaler = StyleScaler.from_cohort(make_cohort(n=10))
    assert np.all(scaler.std >= 1e-3)
    again = StyleScaler.from_dict(scaler.to_dict())
    assert np.array_equal(again.std, scaler.std) and np.array_equal(again.mean, scaler.mean)
    with pytest.raises(IdiolectError, match="at least 2 users"):
        StyleScaler.fit([profile(["just one user"])])
    with pytest.raises(IdiolectError, match="different feature set"):
        StyleScaler.from_dict({**scaler.to_dict(), "feature_names": ["x"]})


def test_empty_sets_are_refused():
    scaler = StyleScaler.from_cohort(make_cohort(n=5))
    with pytest.raises(IdiolectError, match="non-empty"):
        fingerprint_distance([], ["text"], scaler)
