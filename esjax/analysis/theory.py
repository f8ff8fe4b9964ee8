"""Analytical ES theory (paper 1, reconstructed in seeds brief §F.2), as pure functions.

Notation: N population, σ noise scale, α step size (1/σ folded in), d parameters, T iterations,
g the task gradient, η reward noise, ρ = σ‖g‖ / √(σ²‖g‖² + Var η) the reward–noise correlation.
With z-scored fitness (Σ z² = N) the update u_t = (α/N) Σ z_n ε_n has

    E‖u_t‖² = α² d / N                       (noise energy per step)
    E[u_t]  ≈ α ρ ĝ                          (signal step; scale-free in ‖g‖)
    E‖Δθ_T‖² ≈ α² ρ² T² + α² T d / N         (coherent signal + random walk; the walk dominates)
    |cos(Δθ_T, v)| ≲ ρ √(T N / d) + 1/√d     (near-orthogonal to any fixed direction, e.g. GRPO's)
    KL_off ≈ ½ α² T tr(F_off) / N            (off-task KL, isotropic part)
    drift² at fixed progress P ≈ α d P / (N ρ ‖g‖)

Along a curved direction with per-step contraction κ the coordinate is an AR(1)/Ornstein–Uhlenbeck
process x_{t+1} = (1 − κ) x_t + ξ_t, Var ξ = α²/N, with bounded variance; along flat directions (κ = 0)
the variance α² T / N grows without bound. The fitting tools recover these quantities from a run.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def noise_energy_per_step(alpha, d, N):
    return alpha ** 2 * d / N


def reward_noise_correlation(sigma, grad_norm, reward_noise_var):
    """ρ = σ‖g‖ / √(σ²‖g‖² + Var η)."""
    s = sigma * grad_norm
    return s / np.sqrt(s ** 2 + reward_noise_var)


def signal_step(alpha, rho):
    return alpha * rho


def random_walk_norm(alpha, T, d, N):
    """α √(T d / N): the ES drift norm when the random walk dominates."""
    return alpha * np.sqrt(np.asarray(T, float) * d / N)


def expected_drift_sq(alpha, rho, T, d, N):
    T = np.asarray(T, float)
    return alpha ** 2 * rho ** 2 * T ** 2 + alpha ** 2 * T * d / N


def signal_share(rho, T, N, d):
    """Fraction of ‖Δθ_T‖ from the coherent signal, ≈ ρ √(T N / d) when small."""
    return rho * np.sqrt(np.asarray(T, float) * N / d)


def cosine_bound(rho, T, N, d):
    return rho * np.sqrt(np.asarray(T, float) * N / d) + 1 / np.sqrt(d)


def offtask_kl(alpha, T, trace_fisher, N):
    return 0.5 * alpha ** 2 * np.asarray(T, float) * trace_fisher / N


def ou_variance(alpha, N, kappa, T):
    """Var of x_T for x_{t+1} = (1 − κ) x_t + ξ_t, x_0 = 0, Var ξ = α²/N (κ = 0: α² T / N)."""
    T = np.asarray(T, float)
    q = alpha ** 2 / N
    if kappa == 0:
        return q * T
    r = (1 - kappa) ** 2
    return q * (1 - r ** T) / (1 - r)


def ou_stationary_variance(alpha, N, kappa):
    return (alpha ** 2 / N) / (1 - (1 - kappa) ** 2)


def drift_sq_at_fixed_progress(alpha, d, progress, N, rho, grad_norm):
    """drift² ≈ α d P / (N ρ ‖g‖): larger N, smaller α or better ρ buy the same progress for less drift."""
    return alpha * d * progress / (N * rho * grad_norm)


def fit_random_walk(T: Sequence[float], drift_sq: Sequence[float], alpha: float, N: int, d: int) -> Dict[str, float]:
    """Least-squares ‖Δθ_t‖² = a·t + c; returns slope, R², d_eff = slope·N/α² and d_eff/d."""
    T, y = np.asarray(T, float), np.asarray(drift_sq, float)
    A = np.stack([T, np.ones_like(T)], 1)
    (slope, icpt), *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = A @ np.array([slope, icpt])
    ss_res, ss_tot = float(np.sum((y - pred) ** 2)), float(np.sum((y - y.mean()) ** 2))
    d_eff = slope * N / alpha ** 2
    return {"slope": float(slope), "intercept": float(icpt), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "d_eff": float(d_eff), "d_eff_ratio": float(d_eff / d)}


def estimate_rho(drift_sq_T, alpha, T, d, N):
    """ρ from the excess of ‖Δθ_T‖² over the random walk: ρ² = (‖Δθ_T‖² − α²Td/N)/(α²T²) (clipped ≥ 0)."""
    return float(np.sqrt(max(drift_sq_T - alpha ** 2 * T * d / N, 0.0) / (alpha ** 2 * T ** 2)))


def estimate_trace_fisher(kl, alpha, T, N):
    """tr(F_off) implied by a measured off-task KL: 2 N KL / (α² T)."""
    return 2 * N * kl / (alpha ** 2 * T)

