"""Uncertainty of the report's numbers: intervals for accuracies, a paired before → after test on the
same problems, and bootstrap intervals over prompts for KL estimators. Pure numpy / stdlib functions.

Notation: n problems, k correct, p̂ = k/n, z = Φ⁻¹(1 − (1 − c)/2) for confidence c (1.96 at 95 %).

* Wilson score interval (Wilson 1927) for a proportion:

      centre = (p̂ + z²/2n) / (1 + z²/n),   half = z √(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n)

  It never leaves [0, 1] and is not degenerate at k = 0 or k = n (0/n gives [0, z²/(n + z²)]).
* Paired before → after on the same problems: b = #(right → wrong), c = #(wrong → right). Exact McNemar
  test (= two-sided sign test on the b + c discordant problems): under H0 b ~ Binomial(b + c, ½),

      p = min(1, 2 · P[X ≤ min(b, c)]),   X ~ Binomial(b + c, ½)     (p = 1 when b + c = 0).

* Difference of two proportions δ = p̂₁ − p̂₂ with Newcombe's hybrid score interval (Newcombe 1998,
  method 10; unpaired: 1998a method 10), from the Wilson limits (l_i, u_i) of each proportion and the
  phi coefficient φ of the 2×2 paired table (φ = 0 for independent samples):

      L = δ − √((p̂₁ − l₁)² − 2φ (p̂₁ − l₁)(u₂ − p̂₂) + (u₂ − p̂₂)²)
      U = δ + √((u₁ − p̂₁)² − 2φ (u₁ − p̂₁)(p̂₂ − l₂) + (p̂₂ − l₂)²)

* Percentile bootstrap over prompts (Efron): resample the n per-prompt values with replacement B times
  (an explicit ``numpy.random.Generator`` seeded by ``seed``), take the mean of each resample, and report
  the (1 − c)/2 and (1 + c)/2 quantiles. For two methods scored on the same prompts the resample draws
  the same prompt indices for both (a paired bootstrap of mean(x) − mean(y)).
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence, Tuple

import numpy as np


def z_value(confidence: float = 0.95) -> float:
    """Φ⁻¹(1 − (1 − c)/2): the two-sided normal quantile."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def _check_counts(k, n, where="wilson_interval"):
    if n <= 0 or k < 0 or k > n or int(k) != k or int(n) != n:
        raise ValueError(f"{where}: need integers 0 ≤ k ≤ n, n > 0; got k={k}, n={n}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval (lo, hi) for k successes out of n (equation in the module docstring)."""
    _check_counts(k, n)
    z = z_value(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo, 1.0 if k == n else hi)  # exact ends (no float round-off)


def as_correct(x, name="correct") -> np.ndarray:
    """A 1-D boolean array of per-problem correctness; rejects values other than 0/1/True/False."""
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of per-problem correctness, got shape {a.shape}")
    if not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name}: per-problem correctness must be 0/1, got values {sorted(set(a.tolist()))[:5]}")
    return a.astype(bool)


def discordant_counts(before, after) -> Tuple[int, int]:
    """(b, c) = (#right → wrong, #wrong → right) over the same problems, in the same order."""
    x, y = as_correct(before, "before"), as_correct(after, "after")
    if x.shape != y.shape:
        raise ValueError(f"paired correctness must cover the same problems: {x.size} before vs {y.size} after")
    return int(np.sum(x & ~y)), int(np.sum(~x & y))


def binom_cdf_half(k: int, n: int) -> float:
    """P[X ≤ k] for X ~ Binomial(n, ½), exact (integer arithmetic)."""
    if k < 0:
        return 0.0
    return min(1.0, sum(math.comb(n, i) for i in range(0, min(k, n) + 1)) / 2 ** n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar / sign-test p-value from the discordant counts b, c (module docstring)."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: discordant counts must be ≥ 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * binom_cdf_half(min(b, c), b + c))


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95,
                        phi: float = 0.0) -> Tuple[float, float, float]:
    """(δ, L, U) for δ = k1/n1 − k2/n2 by Newcombe's hybrid score interval; ``phi`` is the correlation of
    the paired 2×2 table (0 for independent samples)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    lo = d - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    hi = d + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return d, max(lo, -1.0), min(hi, 1.0)


def paired_difference(x, y, confidence: float = 0.95) -> dict:
    """Accuracy of y minus accuracy of x on the same problems (e.g. x = before, y = after): the difference,
    its Newcombe paired interval and the exact McNemar p-value."""
    x, y = as_correct(x, "x"), as_correct(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"paired correctness must cover the same problems: {x.size} vs {y.size}")
    n = x.size
    a, d = int(np.sum(x & y)), int(np.sum(~x & ~y))
    b, c = discordant_counts(x, y)  # b: x right, y wrong; c: x wrong, y right
    den = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(den) if den else 0.0
    diff, lo, hi = newcombe_difference(a + c, n, a + b, n, confidence, phi)
    return {"n": n, "x": (a + b) / n, "y": (a + c) / n, "difference": diff, "ci": [lo, hi],
            "right_to_wrong": b, "wrong_to_right": c, "p_value": mcnemar_exact(b, c), "test": "exact McNemar"}


def unpaired_difference(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> dict:
    """k2/n2 − k1/n1 with Newcombe's unpaired interval (no p-value: use when per-problem correctness is
    not recorded; conservative for the usual positively correlated paired case)."""
    for k, n in ((k1, n1), (k2, n2)):
        _check_counts(k, n, "unpaired_difference")
    diff, lo, hi = newcombe_difference(k2, n2, k1, n1, confidence)
    return {"n": [n1, n2], "x": k1 / n1, "y": k2 / n2, "difference": diff, "ci": [lo, hi], "p_value": None,
            "test": "unpaired Newcombe interval (per-problem correctness not recorded)"}


def count_from_accuracy(accuracy: float, n: int, where: str = "") -> int:
    """The integer k with k/n == accuracy (a logged mean of n 0/1 values); error if none is that close."""
    k = round(accuracy * n)
    if abs(k / n - accuracy) > 1e-6:
        raise ValueError(f"{where}: accuracy {accuracy} is not a count out of n={n}")
    return int(k)


def _values(x, name) -> np.ndarray:
    a = np.asarray(x, float)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of finite per-prompt values, got {a.shape}")
    return a


def bootstrap_mean_interval(values: Sequence[float], seed: int, n_boot: int = 10_000,
                            confidence: float = 0.95) -> dict:
    """Mean of per-prompt ``values`` with its percentile-bootstrap interval over prompts."""
    v = _values(values, "values")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    q = (1 - confidence) / 2
    return {"mean": float(v.mean()), "ci": [float(np.quantile(means, q)), float(np.quantile(means, 1 - q))],
            "n": int(v.size), "n_boot": n_boot, "seed": seed}


def paired_bootstrap_difference(x: Sequence[float], y: Sequence[float], seed: int, n_boot: int = 10_000,
                                confidence: float = 0.95) -> dict:
    """mean(x) − mean(y) over the same prompts (x[i], y[i] from prompt i), resampling prompts jointly."""
    a, b = _values(x, "x"), _values(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same prompts: {a.size} vs {b.size} values")
    return {**bootstrap_mean_interval(a - b, seed, n_boot, confidence), "test": "paired bootstrap over prompts"}
