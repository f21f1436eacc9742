"""Calibration: every style score beside the user's own real text (ceiling) and others' (floor).

For a user with held-out (eval) texts H:
- fingerprint distance: ceiling = distance(own texts disjoint from H, |H| of them, H);
  floor = for each other user, distance(|H| of their texts, H), averaged over users.
- authorship probability: ceiling = mean P(user | h) over h in H (the classifier never saw H);
  floor = mean over other users of mean P(user | their held-out texts); chance = 1/K.
A generated set is scored the same way with ``score_texts`` and read against these two points
(``placement``: 0 at the floor, 1 at the ceiling). See docs/metrics.md.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from idiolect.errors import IdiolectError
from idiolect.evaluate.authorship import AuthorshipModel
from idiolect.evaluate.stylometry import StyleScaler, fingerprint_distance


def _sample(texts: Sequence[str], size: int, seed: int, key: str) -> list[str]:
    """A seeded sample of ``size`` texts (all when fewer), in their original order.

    The generator is keyed by (seed, crc32(key)), so one user's sample does not change when
    another user is added to or removed from the cohort.
    """
    if len(texts) <= size:
        return list(texts)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    idx = np.sort(rng.choice(len(texts), size=size, replace=False))
    return [texts[i] for i in idx]


def score_texts(texts: Sequence[str], user: str, heldout: Sequence[str], scaler: StyleScaler,
                model: AuthorshipModel, intervals: bool = True, seed: int = 0) -> dict:
    """Scores of any set of texts as the user's: the adapter's generations, the bare base's...

    ``fingerprint_distance`` against the user's held-out texts (lower is better) and
    ``authorship_probability`` = mean P(user | text) over ``texts`` (higher is better); with
    ``intervals``, a bootstrap interval and standard error of each (``intervals.py``).
    """
    from .intervals import distance_interval, mean_interval

    if not texts:
        raise IdiolectError(f"no texts to score for user {user!r}")
    if not heldout:
        raise IdiolectError(f"user {user!r} has no held-out texts to score against")
    proba = model.proba(texts, user)
    out = {
        "n": len(texts),
        "fingerprint_distance": fingerprint_distance(texts, heldout, scaler),
        "authorship_probability": float(np.mean(proba)),
    }
    if intervals:
        out["intervals"] = {
            "fingerprint_distance": distance_interval(texts, heldout, scaler, seed=seed),
            "authorship_probability": mean_interval(proba, seed=seed)}
    return out


def calibrate(user: str, heldout: Sequence[str], own_other: Sequence[str],
              others: Mapping[str, Sequence[str]], scaler: StyleScaler, model: AuthorshipModel,
              seed: int = 0) -> dict:
    """Ceiling and floor of both metrics for ``user``, against its held-out texts ``heldout``.

    ``own_other``: the user's own texts disjoint from ``heldout`` (its reference split);
    a seeded sample of len(heldout) of them gives the fingerprint ceiling.
    ``others``: other users' held-out texts by user (an entry for ``user`` itself is ignored);
    a seeded sample of len(heldout) per user gives the fingerprint floor, and all of them the
    authorship floor. ``model`` must not have been trained on any held-out text.

    Returns a JSON-ready dict with, per metric, ``ceiling``, ``floor`` (mean over other users),
    ``floor_best`` (the other user closest to the ceiling), ``floor_by_user`` and
    ``lower_is_better``; plus ``chance`` (1/K), sample sizes and the seed.
    """
    if not heldout:
        raise IdiolectError(f"user {user!r} has no held-out texts: cannot calibrate")
    others = {u: list(t) for u, t in sorted(others.items()) if u != user and len(t) > 0}
    if not others:
        raise IdiolectError(f"calibration of {user!r} needs held-out texts of at least one "
                            f"other user for the floor, got none")
    n = len(heldout)
    own_sample = _sample(list(own_other), n, seed, user)
    fp_ceiling = fingerprint_distance(own_sample, heldout, scaler) if own_sample else None
    fp_by_user = {u: fingerprint_distance(_sample(t, n, seed, u), heldout, scaler)
                  for u, t in others.items()}
    from .intervals import distance_interval, mean_interval

    own_proba = model.proba(heldout, user)
    ap_ceiling = float(np.mean(own_proba))
    ap_by_user = {u: float(np.mean(model.proba(t, user))) for u, t in others.items()}
    return {
        "user": user,
        "seed": seed,
        "n_heldout": n,
        "n_own_sample": len(own_sample),
        "n_other_users": len(others),
        "chance": model.chance,
        "fingerprint_distance": {
            "lower_is_better": True,
            "ceiling": fp_ceiling,
            "ceiling_interval": (distance_interval(own_sample, heldout, scaler, seed=seed)
                                 if own_sample else None),
            "floor": float(np.mean(list(fp_by_user.values()))),
            "floor_best": float(min(fp_by_user.values())),
            "floor_by_user": fp_by_user,
        },
        "authorship_probability": {
            "lower_is_better": False,
            "ceiling": ap_ceiling,
            "ceiling_interval": mean_interval(own_proba, seed=seed),
            "floor": float(np.mean(list(ap_by_user.values()))),
            "floor_best": float(max(ap_by_user.values())),
            "floor_by_user": ap_by_user,
            "chance": model.chance,
        },
    }


def placement(value: float, floor: float, ceiling: float) -> float | None:
    """Where a score lies between floor (0.0) and ceiling (1.0); may fall outside [0, 1].

    Works for both directions (distance: ceiling < floor; probability: ceiling > floor).
    None when floor and ceiling coincide (the metric does not separate this user).
    """
    if ceiling is None or floor is None or abs(ceiling - floor) < 1e-12:
        return None
    return float((value - floor) / (ceiling - floor))


def placements(scores: Mapping[str, float], calibration: Mapping) -> dict[str, float | None]:
    """``placement`` of each metric of ``score_texts`` against a ``calibrate`` result."""
    return {m: placement(scores[m], calibration[m]["floor"], calibration[m]["ceiling"])
            for m in ("fingerprint_distance", "authorship_probability")}
