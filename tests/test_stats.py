"""Interval and test functions of esjax.analysis.stats against published values, exact cases and coverage
simulations with fixed seeds."""
import numpy as np
import pytest

from esjax.analysis import stats


def test_wilson_known_cases_and_edges():
    z2 = 1.959963984540054 ** 2
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))  # 0/n: [0, z²/(n+z²)]
    assert stats.wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))  # n/n mirrors it
    # Newcombe (1998a) Table I, Wilson score method
    assert stats.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert stats.wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    lo, hi = stats.wilson_interval(3, 64, 0.99)
    assert lo < stats.wilson_interval(3, 64)[0] and hi > stats.wilson_interval(3, 64)[1]
    for bad in ((5, 4), (-1, 4), (1, 0)):
        with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
            stats.wilson_interval(*bad)


def test_newcombe_unpaired_published_example():
    # Newcombe (1998b) Table II, 56/70 − 48/80, method 10: 0.0524 to 0.3339
    d, lo, hi = stats.newcombe_difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and (lo, hi) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    u = stats.unpaired_difference(48, 80, 56, 70)  # y − x
    assert u["ci"] == pytest.approx([0.0524, 0.3339], abs=1e-4) and u["p_value"] is None


def test_mcnemar_exact_is_the_sign_test():
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert stats.mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert stats.mcnemar_exact(3, 8) == pytest.approx(2 * (1 + 11 + 55 + 165) / 2048)
    assert stats.mcnemar_exact(5, 5) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    before = [1, 1, 0, 0, 0, 1, 0, 0]
    after = [1, 0, 1, 1, 1, 1, 1, 0]
    assert stats.discordant_counts(before, after) == (1, 4)
    res = stats.paired_difference(before, after)
    assert res["difference"] == pytest.approx(3 / 8) and res["p_value"] == pytest.approx(2 * 6 / 32)
    assert res["ci"][0] < 3 / 8 < res["ci"][1]
    with pytest.raises(ValueError, match="same problems"):
        stats.paired_difference([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        stats.paired_difference([1, 2], [1, 0])


def test_paired_interval_covers_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(0)
    n, reps = 60, 400
    hits, narrower = 0, 0
    for _ in range(reps):
        x = rng.random(n) < 0.4
        flip_up = rng.random(n) < 0.15  # wrong → right with prob .15, right → wrong with prob .075
        flip_down = rng.random(n) < 0.075
        y = np.where(x, ~flip_down, flip_up)  # E[y] − E[x] = 0.6·0.15 − 0.4·0.075 = 0.06
        res = stats.paired_difference(x, y)
        hits += res["ci"][0] <= 0.6 * 0.15 - 0.4 * 0.075 <= res["ci"][1]
        un = stats.unpaired_difference(int(x.sum()), n, int(y.sum()), n)
        narrower += (res["ci"][1] - res["ci"][0]) < (un["ci"][1] - un["ci"][0])
    assert 0.92 <= hits / reps <= 0.99
    assert narrower / reps > 0.9  # strongly correlated pairs: the paired interval is tighter


def test_bootstrap_coverage_on_a_skewed_distribution():
    rng = np.random.default_rng(1)
    hits = 0
    reps = 300
    for r in range(reps):
        v = rng.exponential(2.0, 80)  # true mean 2
        ci = stats.bootstrap_mean_interval(v, seed=r, n_boot=2000)["ci"]
        hits += ci[0] <= 2.0 <= ci[1]
    assert 0.90 <= hits / reps <= 0.98
    a = stats.bootstrap_mean_interval([1.0, 2.0, 3.0], seed=5)
    assert a == stats.bootstrap_mean_interval([1.0, 2.0, 3.0], seed=5)  # reproducible from the seed
    assert a["mean"] == 2.0 and 1.0 <= a["ci"][0] <= 2.0 <= a["ci"][1] <= 3.0


def test_paired_bootstrap_uses_the_pairing():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 5, 40)  # large per-prompt spread shared by both methods
    x, y = base + 0.3, base + rng.normal(0, 0.05, 40)
    res = stats.paired_bootstrap_difference(x, y, seed=0)
    assert res["ci"][0] > 0.2 and res["ci"][1] < 0.4  # the shared spread cancels
    with pytest.raises(ValueError, match="same prompts"):
        stats.paired_bootstrap_difference(x, y[:-1], seed=0)
    with pytest.raises(ValueError, match="finite"):
        stats.bootstrap_mean_interval([1.0, float("nan")], seed=0)
