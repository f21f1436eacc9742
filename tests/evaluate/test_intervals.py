"""Bootstrap intervals of the style scores (evaluate/intervals.py)."""

from __future__ import annotations

import numpy as np
import pytest


def test_mean_interval_covers_the_mean_and_shrinks_with_more_prompts():
    from idiolect.evaluate.intervals import mean_interval

    rng = np.random.default_rng(0)
    few, many = rng.uniform(0, 1, 10), rng.uniform(0, 1, 400)
    a, b = mean_interval(few, seed=1), mean_interval(many, seed=1)
    assert a["ci"][0] <= few.mean() <= a["ci"][1] and b["ci"][0] <= many.mean() <= b["ci"][1]
    assert b["se"] < a["se"] / 3  # about 1/sqrt(40) of it
    assert mean_interval(few, seed=1) == a  # seeded
    assert mean_interval([0.5] * 5)["se"] == 0.0


def test_distance_interval_pools_counts_like_the_profile_does():
    from conftest import synthetic_messages
    from idiolect.evaluate.intervals import distance_interval
    from idiolect.evaluate.stylometry import (StyleScaler, fingerprint_distance, profile,
                                              profile_of, text_counts)

    plain = [m["body"] for m in synthetic_messages("a", 30)]
    shout = [m["body"] for m in synthetic_messages("b", 30, style="shout")]
    assert np.allclose(profile_of(text_counts(plain)), profile(plain))
    scaler = StyleScaler.from_cohort({"a": plain, "b": shout})
    own = distance_interval(plain[:15], plain[15:], scaler, seed=0)
    other = distance_interval(shout[:15], plain[15:], scaler, seed=0)
    point = fingerprint_distance(plain[:15], plain[15:], scaler)
    # centred on the score (resampling repeats texts, which shifts the resampled distances up:
    # recorded, not used for the interval)
    assert own["ci"][0] < point < own["ci"][1]
    assert abs((own["ci"][0] + own["ci"][1]) / 2 - point) < 1e-3
    assert own["ci"][1] - own["ci"][0] == pytest.approx(2 * 1.96 * own["se"], abs=1e-3)
    assert own["resample_shift"] > 0
    assert point < fingerprint_distance(shout[:15], plain[15:], scaler)
    assert own["ci"][0] < other["ci"][0] and own["ci"][1] < other["ci"][1]
    assert own["se"] > 0 and other["se"] > 0


def test_worse_beyond_noise():
    from idiolect.evaluate.intervals import worse_beyond_noise

    assert not worse_beyond_noise(0.45, 0.05, 0.50, 0.05)  # 0.05 down, noise 0.116
    assert worse_beyond_noise(0.30, 0.05, 0.50, 0.05)
    assert worse_beyond_noise(0.95, 0.01, 0.80, 0.01, higher_is_better=False)
    assert not worse_beyond_noise(0.95, 0.01, 0.80, 0.01, higher_is_better=False, tol=0.2)
    with pytest.raises(ValueError):
        from idiolect.evaluate.intervals import mean_interval
        mean_interval([])
