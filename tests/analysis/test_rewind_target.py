"""The earliest-matching rewind target, regret, hit rate and noise floor, on synthetic data."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from stabilitylab.analysis.rewind_target import (
    earliest_matching_rewind,
    hit,
    hit_rate,
    matching_rewinds,
    noise_floor,
    paired_interval,
    regret,
)

REWINDS = np.array([0, 25, 50, 100, 200])


def synthetic(true_means, seeds=8, cell_sd=0.5, seed_sd=2.0, rng=0):
    """acc[s, k] = seed effect + true mean of k + independent cell noise (percent)."""
    g = np.random.default_rng(rng)
    seed_effect = g.normal(0, seed_sd, size=(seeds, 1))
    return 90 + seed_effect + np.asarray(true_means) + g.normal(0, cell_sd, (seeds, len(true_means)))


def test_a_clearly_worse_early_k_is_excluded():
    acc = synthetic([-5.0, -3.0, 0.0, 0.0, 0.0])
    assert earliest_matching_rewind(acc, REWINDS) == 50
    m = matching_rewinds(acc, REWINDS)
    assert m["matches"].tolist()[:2] == [False, False] and m["high"][0] < 0


def test_noise_level_differences_match():
    hits = [earliest_matching_rewind(synthetic([0.0] * 5, rng=r), REWINDS) for r in range(20)]
    # every k is truly as good: the target is k=0 unless the 95% interval misses (rarely)
    assert sum(h == 0 for h in hits) >= 16


def test_paired_intervals_remove_the_shared_seed_effect():
    """A 1-point deficit hidden by a large seed effect is still detected by pairing."""
    acc = synthetic([-1.0, 0.0], seeds=10, cell_sd=0.2, seed_sd=5.0)
    assert earliest_matching_rewind(acc, [0, 10]) == 10


@settings(max_examples=30, deadline=None)
@given(seeds=st.integers(2, 8), rewinds=st.integers(1, 6), rng=st.integers(0, 10_000),
       conf=st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_best_always_matches_and_the_target_is_no_later(seeds, rewinds, rng, conf):
    acc = np.random.default_rng(rng).normal(90, 1, (seeds, rewinds))
    r = np.random.default_rng(rng).permutation(np.arange(rewinds) * 10)  # any column order
    m = matching_rewinds(acc, r, confidence=conf)
    best = int(m["best"])
    assert best == r[np.argmax(acc.mean(0))]
    assert m["matches"][list(r).index(best)]
    target = earliest_matching_rewind(acc, r, confidence=conf)
    assert target <= best
    # a wider interval can only add matches
    wider = matching_rewinds(acc, r, confidence=min(0.999, conf + 0.04))["matches"]
    assert np.all(wider[m["matches"]])


def test_paired_interval_is_the_student_t_interval():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.0])
    got = paired_interval(d, confidence=0.9)
    lo, hi = stats.t.interval(0.9, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    assert got["low"] == pytest.approx(lo) and got["high"] == pytest.approx(hi)
    assert got["n"] == 5 and got["se"] == pytest.approx(stats.sem(d))


def test_regret_is_zero_at_the_best_and_positive_below():
    acc = synthetic([-2.0, 0.0, -0.5], seeds=6)
    best = int(matching_rewinds(acc, [0, 1, 2])["best"])
    assert best == 1
    r_best = regret(1, acc, [0, 1, 2])
    assert r_best["mean"] == 0 and r_best["low"] == 0 and r_best["high"] == 0
    r0 = regret(0, acc, [0, 1, 2])
    assert r0["mean"] == pytest.approx(np.mean(acc[:, 1] - acc[:, 0])) and r0["low"] > 0
    with pytest.raises(ValueError, match="not among"):
        regret(7, acc, [0, 1, 2])


def test_nan_seeds_are_left_out_pairwise():
    acc = synthetic([-5.0, 0.0, 0.0], seeds=6)
    acc[0, 2] = np.nan  # one diverged run
    m = matching_rewinds(acc, [0, 1, 2])
    assert not m["matches"][0] and np.isfinite(m["high"]).all()
    floor = noise_floor(acc)
    assert floor[2] == pytest.approx(np.std(acc[1:, 2], ddof=1) / math.sqrt(5))


def test_hit_and_hit_rate():
    assert hit(50, 50) is True and hit(25, 50) is False and hit(None, 50) is False
    np.testing.assert_array_equal(hit([0, 25, 50], [0, 50, 50]), [True, False, True])
    hr = hit_rate([True, True, False, True])
    assert hr["rate"] == 0.75 and 0 < hr["low"] < 0.75 < hr["high"] <= 1 and hr["n"] == 4


def test_noise_floor_is_the_per_cell_standard_error():
    acc = synthetic([0.0, 0.0], seeds=5)
    np.testing.assert_allclose(noise_floor(acc), stats.sem(acc, axis=0))


def test_needs_two_seeds_and_matching_shapes():
    with pytest.raises(ValueError, match=">= 2 seeds"):
        earliest_matching_rewind(np.ones((1, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match=">= 2 seeds"):
        noise_floor(np.ones((1, 3)))
    with pytest.raises(ValueError, match="one entry per column"):
        earliest_matching_rewind(np.ones((3, 3)), [0, 1])
    with pytest.raises(ValueError, match="confidence"):
        earliest_matching_rewind(np.ones((3, 2)), [0, 1], confidence=1.5)
