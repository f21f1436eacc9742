"""Bootstrap intervals for the style scores: how much a score would move with other prompts.

A score of a set of generated texts (one per eval prompt) is re-computed on ``B`` resamples of
the prompts (with replacement, seeded); the interval is the central ``level`` share of those
values and ``se`` their standard deviation. The texts the score is measured against (the user's
held-out real messages) stay fixed: the interval is the noise of the sample being judged, which
is what differs between two adapters scored on the same eval set.

Decisions use ``worse_beyond_noise``: a candidate is worse than a bar only when the difference
exceeds ``z`` standard errors of the difference (both standard errors, when the bar has one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

B = 200
LEVEL = 0.95
Z_ONE_SIDED = 1.645  # 95% one-sided


def _summary(values: np.ndarray, level: float) -> dict:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return {"ci": [round(float(lo), 4), round(float(hi), 4)],
            "se": round(float(values.std(ddof=1)) if values.size > 1 else 0.0, 4),
            "level": level, "resamples": int(values.size)}


def _indices(n: int, b: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def mean_interval(values: Sequence[float], b: int = B, seed: int = 0,
                  level: float = LEVEL) -> dict:
    """Interval of a mean (the authorship probability: mean P(user | text) over texts)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("an interval needs at least one value")
    return _summary(v[_indices(v.size, b, seed)].mean(axis=1), level)


def distance_interval(texts: Sequence[str], heldout: Sequence[str], scaler, b: int = B,
                      seed: int = 0, level: float = LEVEL) -> dict:
    """Interval of the fingerprint distance of ``texts`` to the fixed ``heldout`` set."""
    from .stylometry import delta, profile, profile_of, text_counts

    counts = text_counts(texts)
    if not counts:
        raise ValueError("an interval needs at least one text")
    target = profile(heldout)
    point = delta(profile_of(counts), target, scaler)
    values = np.array([delta(profile_of([counts[i] for i in row]), target, scaler)
                       for row in _indices(len(counts), b, seed)])
    # A distance of pooled profiles is biased up by resampling (a resample repeats texts, so its
    # profile is noisier and lies farther from any target): the resampled values sit above the
    # score, by more than their spread on 30-50 real messages. The interval is therefore the
    # score +- z standard errors, the spread of the resamples; their mean shift is recorded.
    out = _summary(values, level)
    z = NormalDist().inv_cdf((1 + level) / 2)
    out["ci"] = [round(point - z * out["se"], 4), round(point + z * out["se"], 4)]
    out["resample_shift"] = round(float(values.mean()) - point, 4)
    return out


def worse_beyond_noise(candidate: float, candidate_se: float, bar: float,
                       bar_se: float = 0.0, higher_is_better: bool = True,
                       z: float = Z_ONE_SIDED, tol: float = 0.0) -> bool:
    """Is ``candidate`` worse than ``bar`` by more than ``z`` standard errors of the difference
    (plus ``tol``)?"""
    gap = (bar - candidate) if higher_is_better else (candidate - bar)
    return gap > z * math.sqrt(candidate_se ** 2 + bar_se ** 2) + tol
