"""Analytical ES theory (paper 1, reconstructed in docs/protocols.md#f2), as pure functions.

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

import json
import os
from typing import Dict, Optional, Sequence

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


def awd_clock(energy: Sequence[float], rate: float) -> np.ndarray:
    """The walk's clock under anchored weight decay (AWD-ℓ2, es-awd) at rate αλ: with c = 1 − αλ and
    Δ_t = c (Δ_{t−1} + α g_t), E‖Δ_t‖² = α² (d/N) τ_t with τ_t = c² (τ_{t−1} + f_t) = Σ_{s≤t} f_s c^{2(t−s+1)}:
    an Ornstein–Uhlenbeck process whose stationary τ is f c² / (1 − c²) (rate 0: τ_t = Σ f_s, the walk)."""
    c2, tau, out = (1 - rate) ** 2, 0.0, []
    for f in energy:
        tau = c2 * (tau + f)
        out.append(tau)
    return np.asarray(out, float)


def awd_norm_prediction(alpha, lam, energy: Sequence[float], d, N) -> np.ndarray:
    """Predicted ‖θ_t − θ₀‖ of pure-noise ES under AWD-ℓ2 with strength λ (transient; tends to the
    stationary α √(f d c² / (N (1 − c²))), c = 1 − αλ)."""
    return alpha * np.sqrt(awd_clock(energy, alpha * lam) * d / N)


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



def drift_vs_theory(rows: Sequence[dict], alpha: float, d: int, N: int, antithetic: bool, optimizer: str = "sgd",
                    trace_fisher: Optional[float] = None, where: str = "metrics", awd_lambda: float = 0.0,
                    awd_norm: str = "l2") -> Dict:
    """The one comparison of an ES run's measured drift with the theory; the report, the sweep and the
    notebook all call it.

    ``rows``: the run's metrics rows (``metrics.jsonl``; rows with ``iteration`` 0 are the base evaluation
    and are dropped), each with ``update_norm_from_base`` = ‖θ_t − θ_0‖ and, when the ES step logs it,
    ``noise_energy_factor`` f_t (E‖u_t‖² = f_t α² d / N; f = 1 for z-scores without antithetic pairs, 0–2
    with them). The walk's clock is τ_t = Σ_{s≤t} f_s when every row logs f (exact), else t (then only
    valid without antithetic pairs). Predictions:

        ‖Δθ_t‖_walk = α √(τ_t d / N),         ρ̂² = (‖Δθ_T‖² − α² τ_T d / N) / (α² T²)   (clipped ≥ 0),
        |cos(Δ_ES, v)| ≲ ρ √(T N / d) + 1/√d   (``cosine_bound_95``: + 1.96/√d, the 95 % quantile of the
                                               cosine of independent directions, sd 1/√d),
        KL_off(t) ≈ ½ ‖Δθ_t‖²_walk tr(F_off) / d.

    ρ is a correlation (≤ 1): an estimate above 1 means the excess over the walk is not the model's
    coherent signal (walk fluctuation or a failed assumption), so ``rho_estimate`` is then None and
    ``rho_status`` says why; the cosine bound then uses ρ ≤ 1, which always holds. ``d`` counts each
    perturbed leaf once (a tied embedding is one leaf with one noise draw in esjax; see
    ``report.dimension_info``). The theory is for plain SGD on the ES estimate; other optimizers are
    flagged in ``applies``. With anchored weight decay (``awd_lambda`` λ > 0, ℓ2) the clock is the
    discounted one of :func:`awd_clock` (an Ornstein–Uhlenbeck process; ``awd`` gives the stationary norm)
    and ρ is not estimated; ℓ1 decay has no closed form (``applies`` False)."""
    rows = [r for r in rows if r.get("iteration", 0) > 0]
    its = [r["iteration"] for r in rows]
    if its != list(range(1, len(rows) + 1)):
        raise ValueError(f"{where}: ES iterations must run 1..T without gaps or repeats, got {its[:20]}")
    missing = [r["iteration"] for r in rows if "update_norm_from_base" not in r]
    if missing:
        raise ValueError(f"{where}: rows of iterations {missing[:10]} lack 'update_norm_from_base'")
    T = np.arange(1, len(rows) + 1, dtype=float)
    measured = np.array([r["update_norm_from_base"] for r in rows], float)
    exact = bool(rows) and all("noise_energy_factor" in r for r in rows)
    energy = [r["noise_energy_factor"] for r in rows] if exact else [1.0] * len(rows)
    clock = awd_clock(energy, alpha * awd_lambda) if awd_lambda else np.cumsum(energy)
    walk_valid = (exact or not antithetic) and not (awd_lambda and awd_norm != "l2")
    predicted = alpha * np.sqrt(clock * d / N)
    out: Dict = {"d": int(d), "N": int(N), "alpha": float(alpha), "antithetic": bool(antithetic),
                 "T": T.tolist(), "measured_norm": measured.tolist(), "predicted_norm": predicted.tolist(),
                 "clock": "energy" if exact else "iterations", "energy_clock": clock.tolist(),
                 "applies": optimizer == "sgd" and walk_valid,
                 "applies_note": ("" if optimizer == "sgd" else f"optimizer {optimizer!r}: the walk law is for SGD; ")
                 + ("" if walk_valid or awd_lambda else "antithetic pairs without a logged noise_energy_factor: the "
                    "walk's energy per step is unknown (0–2× α²d/N)")
                 + (f"AWD-{awd_norm}: no closed form for the soft threshold" if awd_lambda and awd_norm != "l2" else "")}
    if awd_lambda:
        c = 1 - alpha * awd_lambda
        f_mean = float(np.mean(energy)) if energy else 1.0
        out["awd"] = {"lambda": float(awd_lambda), "norm": awd_norm,
                      "stationary_norm": float(alpha * np.sqrt(f_mean * d / N * c ** 2 / (1 - c ** 2)))}
    if not rows:
        return {**out, "final_ratio_measured_over_predicted": None, "random_walk_fit": {}, "rho_estimate": None,
                "rho_status": "undefined: no ES iterations", "cosine_bound": None}
    out["final_ratio_measured_over_predicted"] = float(measured[-1] / predicted[-1]) if predicted[-1] > 0 else None
    out["random_walk_fit"] = {**fit_random_walk(clock, measured ** 2, alpha, N, d), "clock": out["clock"]} if len(T) > 2 else {}
    excess = float(measured[-1] ** 2 - predicted[-1] ** 2)
    out["excess_over_walk_sq"] = excess
    rho_raw = float(np.sqrt(max(excess, 0.0) / (alpha ** 2 * T[-1] ** 2)))
    out["rho_raw"] = rho_raw
    if awd_lambda:
        rho, status = None, "undefined: anchored weight decay bounds the drift (the walk-excess estimate assumes none)"
    elif not walk_valid:
        rho, status = None, "undefined: " + out["applies_note"]
    elif rho_raw > 1:
        rho, status = None, (f"assumption failed: the excess over the walk ({excess:.3g}) would need ρ = {rho_raw:.3g} > 1; "
                             "it is walk fluctuation or model mismatch, not a coherent signal")
    else:
        rho, status = rho_raw, "ok"
    out["rho_estimate"], out["rho_status"] = rho, status
    out["cosine_bound"] = float(cosine_bound(1.0 if rho is None else rho, T[-1], N, d))
    # the 1/√d term is the sd of the cosine of independent directions; 1.96/√d bounds 95 % of them
    out["cosine_bound_95"] = float(signal_share(1.0 if rho is None else rho, T[-1], N, d) + 1.96 / np.sqrt(d))
    out["cosine_bound_rho"] = "ρ̂" if rho is not None else "ρ ≤ 1"
    if trace_fisher is not None:
        out["trace_fisher"] = float(trace_fisher)
        out["offtask_kl_curve"] = (0.5 * predicted ** 2 * trace_fisher / d).tolist()
        out["offtask_kl_predicted"] = out["offtask_kl_curve"][-1]
    return out


def drift_theory_of_run(run_dir: str, d: int, trace_fisher: Optional[float] = None) -> Dict:
    """:func:`drift_vs_theory` for the ES run folder ``run_dir`` (reads its ``metrics.jsonl`` and the
    ``es`` section of its ``config.json``); ``d`` = the perturbed dimension (``report.perturbed_dimension``).
    The report, ``experiments.sweep`` and the theory notebook all call this."""
    metrics, config = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "config.json")
    with open(config) as f:
        es = json.load(f).get("es")
    if not es or any(k not in es for k in ("alpha", "population_size", "antithetic")):
        raise ValueError(f"{config}: no 'es' section with alpha, population_size and antithetic")
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return drift_vs_theory(rows, es["alpha"], d, es["population_size"], es["antithetic"], es.get("optimizer", "sgd"),
                           trace_fisher, metrics, es.get("awd_lambda", 0.0), es.get("awd_norm", "l2"))
