"""Calibration: ceiling beats floor on synthetic users and on the real git-authors cohort."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from idiolect.errors import IdiolectError
from idiolect.evaluate.authorship import AuthorshipModel, AuthorshipParams
from idiolect.evaluate.calibrate import calibrate, placement, placements, score_texts
from idiolect.evaluate.stylometry import StyleScaler

CORPORA = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "git-authors"
NOUNS = ["build", "patch", "cache", "index", "branch", "parser", "test", "queue", "report",
         "config", "server", "merge", "commit", "review", "release", "doc"]
VERBS = ["fixes", "breaks", "moves", "keeps", "drops", "updates", "checks", "loads", "writes"]


def text(style: str, rng: random.Random) -> str:
    n, v = rng.choice, rng.choice
    if style == "long":
        return "; ".join(f"the {n(NOUNS)} which {v(VERBS)} the {n(NOUNS)} is not what we would "
                         f"have wanted for the {n(NOUNS)}" for _ in range(rng.randint(2, 4))) + "."
    if style == "short":
        return "\n".join(f"{n(NOUNS).capitalize()} {v(VERBS)} Now!"
                         for _ in range(rng.randint(2, 5)))
    return " ".join(f"({n(NOUNS)}: {v(VERBS)} {n(NOUNS)}/{n(NOUNS)}, v{rng.randint(1, 9)})"
                    for _ in range(rng.randint(2, 4)))


def cohort(n: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    return {s: [text(s, rng) for _ in range(n)] for s in ("long", "short", "code")}


@pytest.fixture(scope="module")
def fitted():
    train, held = cohort(40, 0), cohort(12, 1)
    return train, held, StyleScaler.from_cohort(train), AuthorshipModel().fit(train)


def test_ceiling_beats_floor_on_synthetic_users(fitted):
    train, held, scaler, model = fitted
    others = {u: t for u, t in held.items() if u != "long"}
    cal = calibrate("long", held["long"], train["long"], {**others, "long": held["long"]},
                    scaler, model, seed=0)
    fp, ap = cal["fingerprint_distance"], cal["authorship_probability"]
    assert cal["n_heldout"] == cal["n_own_sample"] == 12 and cal["n_other_users"] == 2
    assert cal["chance"] == ap["chance"] == pytest.approx(1 / 3)
    assert fp["ceiling"] < fp["floor_best"] <= fp["floor"]
    assert ap["ceiling"] > 0.8 > 1 / 3 > ap["floor_best"] >= ap["floor"]
    assert set(fp["floor_by_user"]) == {"short", "code"}
    json.dumps(cal)  # JSON-ready
    again = calibrate("long", held["long"], train["long"], others, scaler, model, seed=0)
    assert again == cal


def test_score_texts_and_placement(fitted):
    train, held, scaler, model = fitted
    cal = calibrate("long", held["long"], train["long"], held, scaler, model)
    own = score_texts(cohort(12, 5)["long"], "long", held["long"], scaler, model)
    foreign = score_texts(held["short"], "long", held["long"], scaler, model)
    assert own["n"] == 12
    assert own["fingerprint_distance"] < foreign["fingerprint_distance"]
    assert own["authorship_probability"] > foreign["authorship_probability"]
    place = placements(own, cal)
    assert place["fingerprint_distance"] > 0.5 and place["authorship_probability"] > 0.5
    assert placement(0.5, floor=1.0, ceiling=0.5) == 1.0
    assert placement(0.2, floor=0.2, ceiling=0.9) == 0.0
    assert placement(0.3, floor=0.3, ceiling=0.3) is None


def test_calibrate_refuses_missing_inputs(fitted):
    train, held, scaler, model = fitted
    with pytest.raises(IdiolectError, match="no held-out texts"):
        calibrate("long", [], train["long"], held, scaler, model)
    with pytest.raises(IdiolectError, match="at least one other user"):
        calibrate("long", held["long"], train["long"], {"long": held["long"]}, scaler, model)


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"real corpora absent: {CORPORA} not found "
                    "(the shared git-authors cohort lives beside the repo, never inside it)")
def test_real_cohort_ceiling_beats_floor():
    """4 git authors, 200 training + 30 held-out messages each: a quick check on real prose."""
    rng = np.random.default_rng(0)
    train, held = {}, {}
    for path in sorted(CORPORA.glob("*.jsonl"))[:4]:
        bodies = [json.loads(line)["body"] for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
        idx = rng.permutation(len(bodies))
        held[path.stem] = [bodies[i] for i in idx[:30]]
        train[path.stem] = [bodies[i] for i in idx[30:230]]
    scaler = StyleScaler.from_cohort(train)
    model = AuthorshipModel(AuthorshipParams(max_texts_per_user=200)).fit(train)
    fp_margin, ap_ceil, ap_floor = [], [], []
    for user in train:
        cal = calibrate(user, held[user], train[user], held, scaler, model)
        fp = cal["fingerprint_distance"]
        fp_margin.append(fp["floor"] - fp["ceiling"])
        ap_ceil.append(cal["authorship_probability"]["ceiling"])
        ap_floor.append(cal["authorship_probability"]["floor"])
    assert min(fp_margin) > 0
    assert np.mean(ap_ceil) > 0.5 > 0.25 > np.mean(ap_floor)
