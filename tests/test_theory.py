"""The ES theory: the seed's table, Monte-Carlo ES on a quadratic with a planted informative subspace,
the OU variance along curved directions, and the fitting tools."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.analysis import theory as th
from esjax.es.step import ESConfig, es_update, init_state, member_perturbation


def test_seed_table_reproduces():
    d, alpha, N = 4_022_468_096, 7.5e-4, 30
    got = th.random_walk_norm(alpha, np.array([100, 200, 300, 400]), d, N)
    np.testing.assert_allclose(got, [86.85, 122.82, 150.42, 173.69], atol=0.006)


def _run_quadratic_es(d=4000, k=10, N=20, T=150, alpha=0.02, sigma=0.05, lam=50.0, seed=0):
    """ES on f(θ) = −½ λ Σ_{i<k} θ_i² + noise (planted k-dim informative subspace)."""
    cfg = ESConfig(population_size=N, sigma=sigma, alpha=alpha)
    state = init_state({"x": jnp.zeros((d,))}, jax.random.key(seed), cfg)
    members = jnp.arange(N)

    @jax.jit
    def step(state):
        eps = jax.vmap(lambda m: member_perturbation(state.params, state.key, state.iteration, m, cfg, sigma)["x"])(members)
        theta = state.params["x"][None] + eps
        f = -0.5 * lam * jnp.sum(theta[:, :k] ** 2, 1)
        return es_update(state, f, cfg)

    traj = []
    for _ in range(T):
        state, _ = step(state)
        traj.append(np.asarray(state.params["x"]))
    return np.stack(traj)


def test_monte_carlo_es_matches_random_walk_and_ou():
    d, k, N, T, alpha = 4000, 10, 20, 150, 0.02
    traj = _run_quadratic_es(d, k, N, T, alpha)
    ts = np.arange(1, T + 1)
    off_sq = np.sum(traj[:, k:] ** 2, 1)
    # flat directions: E‖Δθ_off‖² = α² t (d − k)/N; one run's relative sd ≈ √(2/(d−k)) ≈ 2 %
    np.testing.assert_allclose(off_sq[-1], alpha ** 2 * T * (d - k) / N, rtol=0.1)
    fit = th.fit_random_walk(ts, off_sq, alpha, N, d - k)
    assert fit["r2"] > 0.99 and abs(fit["d_eff_ratio"] - 1) < 0.1
    # curved directions stay bounded (OU) while flat coordinates keep diffusing
    on_sq = np.sum(traj[:, :k] ** 2, 1)
    per_coord_flat = off_sq[-1] / (d - k)
    assert on_sq[-50:].mean() / k < 0.5 * per_coord_flat
    # the norm is the random walk: signal share is negligible
    assert th.signal_share(1.0, T, N, d) < 1.0


def test_ou_variance_formula_against_simulation():
    rng = np.random.default_rng(0)
    alpha, N, kappa, T = 0.1, 10, 0.05, 200
    x = np.zeros(20000)
    for _ in range(T):
        x = (1 - kappa) * x + rng.normal(0, alpha / np.sqrt(N), x.shape)
    assert x.var() == pytest.approx(th.ou_variance(alpha, N, kappa, T), rel=0.05)
    assert th.ou_variance(alpha, N, kappa, 10_000) == pytest.approx(th.ou_stationary_variance(alpha, N, kappa))
    assert th.ou_variance(alpha, N, 0.0, T) == pytest.approx(alpha ** 2 * T / N)


def test_formulas_and_inverses_are_consistent():
    alpha, T, d, N = 5e-4, 300, 1e8, 30
    drift_sq = th.expected_drift_sq(alpha, 0.3, T, d, N)
    assert th.estimate_rho(drift_sq, alpha, T, d, N) == pytest.approx(0.3)
    kl = th.offtask_kl(alpha, T, 1e6, N)
    assert th.estimate_trace_fisher(kl, alpha, T, N) == pytest.approx(1e6)
    assert th.noise_energy_per_step(alpha, d, N) == pytest.approx(alpha ** 2 * d / N)
    assert th.reward_noise_correlation(1e-3, 100.0, 0.0) == pytest.approx(1.0)
    assert th.reward_noise_correlation(1e-3, 100.0, 0.01) == pytest.approx(0.1 / np.sqrt(0.02))
    assert th.signal_step(alpha, 0.5) == pytest.approx(alpha / 2)
    # at fixed progress P = α ρ ‖g‖ T the drift² equals the random-walk part α² T d / N
    rho, g = 0.2, 50.0
    P = alpha * rho * g * T
    assert th.drift_sq_at_fixed_progress(alpha, d, P, N, rho, g) == pytest.approx(alpha ** 2 * T * d / N)
    assert th.cosine_bound(0.0, T, N, d) == pytest.approx(1e-4)
