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


def _rows(norms, factors=None):
    return [{"iteration": 0, "eval/x/accuracy": 0.5}] + [
        {"iteration": i + 1, "update_norm_from_base": n, **({"noise_energy_factor": factors[i]} if factors else {})}
        for i, n in enumerate(norms)]


def test_drift_vs_theory_uses_the_energy_clock_and_refuses_rho_above_one():
    alpha, d, N = 0.01, 10_000, 4
    f = [1.5, 0.5, 2.0, 1.0]
    walk = alpha * np.sqrt(np.cumsum(f) * d / N)
    t = th.drift_vs_theory(_rows(walk, f), alpha, d, N, antithetic=True)
    assert t["clock"] == "energy" and t["final_ratio_measured_over_predicted"] == pytest.approx(1.0)
    assert t["rho_estimate"] == pytest.approx(0.0, abs=1e-6) and t["rho_status"] == "ok"
    # a coherent signal of ρ = 0.4 on top of the walk is recovered
    sig = np.sqrt(walk ** 2 + (alpha * 0.4 * np.arange(1, 5)) ** 2)
    assert th.drift_vs_theory(_rows(sig, f), alpha, d, N, True)["rho_estimate"] == pytest.approx(0.4)
    # an excess no correlation ≤ 1 explains: no ρ̂, a reason, and the cosine bound with ρ ≤ 1
    big = th.drift_vs_theory(_rows(walk * 1.1, f), alpha, d, N, True)
    assert big["rho_estimate"] is None and big["rho_status"].startswith("assumption failed")
    assert big["cosine_bound"] == pytest.approx(th.cosine_bound(1.0, 4, N, d))
    assert big["cosine_bound_95"] == pytest.approx(np.sqrt(4 * N / d) + 1.96 / np.sqrt(d))
    # antithetic pairs without logged energy: the walk's energy is unknown
    un = th.drift_vs_theory(_rows(walk), alpha, d, N, True)
    assert un["clock"] == "iterations" and un["rho_estimate"] is None and un["rho_status"].startswith("undefined")
    assert not un["applies"]
    with pytest.raises(ValueError, match="without gaps"):
        th.drift_vs_theory(_rows(walk, f)[:2] + _rows(walk, f)[3:], alpha, d, N, True, where="m.jsonl")


def test_report_sweep_and_notebook_agree_on_one_results_folder(tmp_path, monkeypatch):
    import json
    import os
    import runpy
    import shutil

    from esjax.analysis import report
    from experiments.sweep import theory_columns

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, "docs", "cpu-quick")
    res = json.load(open(os.path.join(folder, "results.json")))
    s = res["theory"]
    rep = report.theory_results(folder, s["d"], s["sigma"], {"embedding_in_d": "not perturbed"}, s["cosine_measured"],
                                s["random_direction_kl_general"], s["trace_fisher_general_estimate"],
                                s["offtask_kl_measured"])
    sweep = theory_columns(os.path.join(folder, "es"), s["d"])
    monkeypatch.setenv("ESJAX_RESULTS", folder)
    monkeypatch.setenv("ESJAX_FIGURES", str(tmp_path / "figs"))
    nb = runpy.run_path(os.path.join(root, "notebooks", "theory_vs_measured_drift.py"))
    nb_ratio = nb["measured"][-1] / nb["predicted"][-1]
    # the committed run: antithetic pairs, energy clock; measured/predicted 1.0002 for all three
    assert rep["final_ratio_measured_over_predicted"] == pytest.approx(1.000188, abs=1e-6)
    assert sweep["ratio_measured_over_predicted"] == rep["final_ratio_measured_over_predicted"]
    assert nb_ratio == pytest.approx(rep["final_ratio_measured_over_predicted"], rel=1e-12)
    assert sweep["predicted_norm"] == rep["predicted_norm"][-1] == pytest.approx(nb["predicted"][-1], rel=1e-12)
    # ρ̂ would be 28.2 > 1: reported as a failed assumption by all three, never printed as an estimate
    assert rep["rho_estimate"] is None and sweep["rho_estimate"] is None and nb["rho"] is None
    assert "ρ = 28.2 > 1" in rep["rho_status"] == sweep["rho_status"]
    assert nb["t"]["offtask_kl_predicted"] == rep["offtask_kl_predicted"]
    # the rendered report prints the same numbers
    out = tmp_path / "rep"
    out.mkdir()
    for m in ("es", "grpo"):
        shutil.copytree(os.path.join(folder, m), out / m)
    md = open(report.write_report(str(out), {**res, "theory": rep})).read()
    assert "(ratio 1.000)" in md and "assumption failed" in md and "ρ ≤ 1" in md
