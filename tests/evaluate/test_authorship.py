"""Authorship classifier on synthetic users; cohort-of-one refusal; cache round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from idiolect.errors import IdiolectError, NotFound
from idiolect.evaluate.authorship import AuthorshipModel, AuthorshipParams, cohort_digest

NOUNS = ["build", "patch", "cache", "index", "branch", "parser", "test", "queue", "report",
         "config", "server", "merge", "commit", "review", "release", "doc"]
VERBS = ["fixes", "breaks", "moves", "keeps", "drops", "updates", "checks", "loads", "writes"]


def long_style(rng: random.Random) -> str:
    return "; ".join(f"the {rng.choice(NOUNS)} which {rng.choice(VERBS)} the {rng.choice(NOUNS)} "
                     f"is not what we would have wanted for the {rng.choice(NOUNS)}"
                     for _ in range(rng.randint(2, 4))) + "."


def short_style(rng: random.Random) -> str:
    return "\n".join(f"{rng.choice(NOUNS).capitalize()} {rng.choice(VERBS)} Now!"
                     for _ in range(rng.randint(2, 5)))


def cohort(n: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    return {"long": [long_style(rng) for _ in range(n)],
            "short": [short_style(rng) for _ in range(n)]}


@pytest.fixture(scope="module")
def model() -> AuthorshipModel:
    return AuthorshipModel().fit(cohort(40, seed=0), seed=0)


def test_own_style_gets_high_probability(model):
    held = cohort(15, seed=99)
    assert model.users == ["long", "short"]
    assert model.chance == 0.5
    assert model.proba(held["long"], "long").mean() > 0.8
    assert model.proba(held["short"], "short").mean() > 0.8
    assert model.proba(held["short"], "long").mean() < 0.2
    p = model.predict_proba(held["long"])
    assert p.shape == (15, 2) and np.allclose(p.sum(axis=1), 1.0)


def test_cohort_of_one_is_refused():
    with pytest.raises(IdiolectError, match=r"at least 2 users, got 1 \(long"):
        AuthorshipModel().fit({"long": cohort(5, 0)["long"]})
    with pytest.raises(IdiolectError, match="got 1"):
        AuthorshipModel().fit({**cohort(5, 0), "short": []})


def test_unknown_user_and_unfitted_model(model):
    with pytest.raises(NotFound, match="not in the authorship cohort"):
        model.proba(["x"], "nobody")
    with pytest.raises(IdiolectError, match="not fitted"):
        AuthorshipModel().proba(["x"], "long")


def test_cohort_digest_ignores_order_but_not_content():
    data = cohort(5, 0)
    shuffled = {"short": list(reversed(data["short"])), "long": data["long"][::-1]}
    assert cohort_digest(data) == cohort_digest(shuffled)
    assert cohort_digest(data) != cohort_digest({**data, "long": data["long"][:-1]})


def test_fit_is_deterministic_and_capped():
    data = cohort(30, 0)
    params = AuthorshipParams(max_texts_per_user=10)
    a = AuthorshipModel(params).fit(data, seed=3)
    b = AuthorshipModel(params).fit({u: t[::-1] for u, t in data.items()}, seed=3)
    probe = cohort(5, 7)["long"]
    assert np.array_equal(a.proba(probe, "long"), b.proba(probe, "long"))


def test_save_load_round_trip(model, tmp_path):
    path = model.save(tmp_path / "cache" / "authorship.pkl")
    sidecar = json.loads((tmp_path / "cache" / "authorship.pkl.json").read_text())
    assert sidecar["cohort_digest"] == cohort_digest(cohort(40, 0))
    assert sidecar["users"] == ["long", "short"]
    written = sorted(p.name for p in path.parent.iterdir())
    assert written == ["authorship.pkl", "authorship.pkl.json"]  # no temp files left behind
    loaded = AuthorshipModel.load(path, expect_digest=cohort_digest(cohort(40, 0)))
    probe = cohort(10, 5)["short"] + cohort(10, 6)["long"]
    assert np.array_equal(loaded.proba(probe, "short"), model.proba(probe, "short"))
    assert loaded.users == model.users and loaded.params == model.params


def test_load_refuses_stale_or_tampered_cache(model, tmp_path):
    path = model.save(tmp_path / "authorship.pkl")
    with pytest.raises(IdiolectError, match="another cohort"):
        AuthorshipModel.load(path, expect_digest="0" * 64)
    with pytest.raises(IdiolectError, match="other settings"):
        AuthorshipModel.load(path, expect_params=AuthorshipParams(C=1.0))
    assert AuthorshipModel.load(path, expect_params=AuthorshipParams()).users == model.users
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(IdiolectError, match="does not match its sidecar"):
        AuthorshipModel.load(path)
    with pytest.raises(IdiolectError, match="cannot read"):
        AuthorshipModel.load(tmp_path / "missing.pkl")


def test_classifier_caches_are_pruned_to_the_most_recently_used(home):
    """Caches of cohorts that changed hold n-grams of texts nobody scores against any more: only
    ``CACHES_KEPT`` of a prefix stay, the least recently used go first, other prefixes stay."""
    import os

    from idiolect.evaluate.run import CACHES_KEPT, cached_classifier

    def fit(seed: int, prefix: str = "authorship"):
        return cached_classifier(home, cohort(12, seed=seed), prefix)

    digests = [fit(seed).digest for seed in range(CACHES_KEPT)]
    other = fit(99, prefix="draft-ranker").digest
    names = lambda pre: sorted(p.name for p in home.cache_dir.glob(f"{pre}-*.pkl"))  # noqa: E731
    assert len(names("authorship")) == CACHES_KEPT
    first = home.cache_dir / f"authorship-{digests[0][:16]}.pkl"
    for i, d in enumerate(digests):  # oldest first, one second apart
        os.utime(home.cache_dir / f"authorship-{d[:16]}.pkl", (1000 + i, 1000 + i))
    side = first.with_name(first.name + ".json")
    os.utime(side, (1000, 1000))
    assert fit(0).digest == digests[0]  # a hit: loaded, not refitted, and now the newest
    assert first.stat().st_mtime > 2000 and side.stat().st_mtime == 1000  # (a refit rewrites it)
    orphan = home.cache_dir / f"authorship-{'f' * 16}.pkl.json"  # a crash between two unlinks
    orphan.write_text("{}")
    fit(CACHES_KEPT)  # a new cohort: the least recently used (seed 1) goes, with its sidecar
    kept = names("authorship")
    assert len(kept) == CACHES_KEPT and f"authorship-{digests[1][:16]}.pkl" not in kept
    assert first.name in kept
    assert not (home.cache_dir / f"authorship-{digests[1][:16]}.pkl.json").exists()
    assert not orphan.exists()
    assert names("draft-ranker") == [f"draft-ranker-{other[:16]}.pkl"]
