"""Anchored weight decay (es-awd) against its closed form and the Ornstein–Uhlenbeck prediction; replayable
ES updates rebuild a run's saved params bit for bit from its base model and metrics log."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es.step import ESConfig, anchored_decay, es_update, estimate_gradient, init_state


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_awd_step_is_the_closed_form(norm):
    """θ' = θ₀ + (1 − αλ)(θ + αg − θ₀) (l2), θ₀ + soft(θ + αg − θ₀, αλ) (l1), per leaf, any noise scheme."""
    anchor = {"w": jax.random.normal(jax.random.key(0), (6, 5)), "b": jnp.zeros((4,))}
    for noise in ("full", "lowrank"):
        cfg = ESConfig(population_size=4, sigma=0.1, alpha=0.5, noise=noise, rank=2, awd_lambda=0.3, awd_norm=norm,
                       param_filter="w")
        start = init_state(jax.tree.map(lambda x: x + 0.2, anchor), jax.random.key(1), cfg)
        fit = jnp.array([1.0, -0.5, 2.0, 0.0])
        new, m = es_update(start, fit, cfg, anchor=anchor)
        z = (fit - fit.mean()) / fit.std()
        g = estimate_gradient(start.params, start.key, 0, z, cfg)
        d = jax.tree.map(lambda p, gg, a: p + cfg.alpha * gg - a, start.params, g, anchor)
        rate = cfg.alpha * cfg.awd_lambda
        want = jax.tree.map(lambda a, dd: a + ((1 - rate) * dd if norm == "l2"
                                               else np.sign(dd) * np.maximum(np.abs(dd) - rate, 0)), anchor, d)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        upd = jax.tree.map(jnp.subtract, new.params, start.params)
        assert float(m["update_norm"]) == pytest.approx(float(jnp.sqrt(sum(jnp.sum(u ** 2) for u in jax.tree.leaves(upd)))), rel=1e-5)
    with pytest.raises(ValueError, match="needs the anchor"):
        es_update(start, fit, cfg)
    with pytest.raises(ValueError, match="awd_lambda"):
        ESConfig(alpha=0.5, awd_lambda=2.0)
    with pytest.raises(ValueError, match="awd_norm"):
        ESConfig(awd_lambda=1.0, awd_norm="l3")
    np.testing.assert_array_equal(anchored_decay({"x": jnp.ones(3)}, {"x": jnp.ones(3)}, 0.5)["x"], np.ones(3))


def test_awd_l2_turns_the_walk_into_the_ou_process_the_theory_predicts():
    """Pure-noise fitness on d = 50,000: ‖Δ_T‖² = α² d/N Σ_t f_t c^{2(T−t+1)}, c = 1 − αλ, transient and
    stationary; the measured norm and drift_vs_theory's prediction agree within 3 %."""
    from esjax.analysis.theory import awd_norm_prediction, drift_vs_theory

    d, N, T, alpha, lam = 50_000, 8, 120, 0.05, 0.8
    anchor = {"x": jnp.zeros((d,))}
    cfg = ESConfig(population_size=N, sigma=1e-3, alpha=alpha, awd_lambda=lam)
    state = init_state(anchor, jax.random.key(0), cfg)
    rng = np.random.default_rng(0)
    rows = []
    for t in range(1, T + 1):
        state, m = es_update(state, jnp.asarray(rng.normal(size=N)), cfg, anchor=anchor)
        rows.append({"iteration": t, "update_norm_from_base": float(jnp.linalg.norm(state.params["x"])),
                     "noise_energy_factor": float(m["noise_energy_factor"])})
    c = 1 - alpha * lam
    stationary = alpha * np.sqrt(d / N * c ** 2 / (1 - c ** 2))
    assert awd_norm_prediction(alpha, lam, [1.0] * 500, d, N)[-1] == pytest.approx(stationary, rel=1e-6)
    th = drift_vs_theory(rows, alpha, d, N, False, awd_lambda=lam)
    assert th["final_ratio_measured_over_predicted"] == pytest.approx(1.0, abs=0.03)
    assert th["predicted_norm"][-1] == pytest.approx(stationary, rel=0.01)  # T ≫ 1/(αλ): stationary
    assert th["predicted_norm"][4] < 0.7 * stationary  # transient
    assert th["awd"] == {"lambda": lam, "norm": "l2", "stationary_norm": pytest.approx(stationary)}
    plain = drift_vs_theory(rows, alpha, d, N, False)  # the walk without decay overshoots by far
    assert plain["final_ratio_measured_over_predicted"] < 0.4


def test_replay_rebuilds_a_runs_params_bit_for_bit(tmp_path):
    from esjax.checkpoint import load_params
    from esjax.config import build_config
    from esjax.es.replay import replay, replay_run
    from esjax.runs import load_run_model
    from experiments.single_task import main

    out = str(tmp_path / "run")
    main(["--preset", "tiny", "--method", "es", "--out", out, "--no-progress", "--set", "es.awd_lambda=5",
          "--set", "es_iterations=3"])
    run_dir = os.path.join(out, "es")
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    assert cfg["es"]["awd_lambda"] == 5
    base = load_run_model(build_config("tiny", ["es.awd_lambda=5", "es_iterations=3"])).params
    saved = load_params(os.path.join(run_dir, "params"), jax.tree.map(lambda x: np.asarray(x, np.float32), base))
    rebuilt = replay_run(run_dir, base)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(rebuilt)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    one = replay(base, __import__("esjax.es.replay", fromlist=["x"]).es_config_of_run(run_dir), rows, until=1)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(rebuilt)))
    with pytest.raises(ValueError, match="lack es_key"):
        replay(base, ESConfig(), [{"iteration": 1}])


def test_replay_of_a_later_task_continues_the_noise_iterations():
    """A sequence's second task continues the first task's ES state (noise iterations 3, 4 after 3 updates)
    and decays toward the sequence's base model: replayed from the first task's end with the logged noise
    iterations and that anchor, its params are rebuilt bit for bit; drawn from iteration 0 (what replay
    did before the rows logged it) they are not. Adam's carried moments are not in the log: an error."""
    from esjax.es.replay import replay
    from esjax.es.step import es_update, init_state

    base = {"w": jnp.linspace(-1, 1, 24).reshape(4, 6), "b": jnp.zeros((3,))}
    cfg = ESConfig(population_size=6, sigma=0.05, alpha=0.01, awd_lambda=2.0)
    state = init_state(base, jax.random.key(7), cfg)
    rng = np.random.default_rng(0)
    for _ in range(3):  # the first task
        state, _ = es_update(state, rng.normal(size=6).astype(np.float32), cfg, anchor=base)
    first_end, rows = state.params, []
    for t in range(1, 3):  # the second task: its iterations 1, 2 draw noise iterations 3, 4
        f = rng.normal(size=6).astype(np.float32)
        rows.append({"iteration": t, "es_key": np.asarray(jax.random.key_data(state.key)).tolist(),
                     "es_fitness": f.tolist(), "es_noise_iteration": int(state.iteration)})
        state, _ = es_update(state, f, cfg, anchor=base)
    rebuilt = replay(first_end, cfg, rows, anchor=base)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(rebuilt)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    old = replay(first_end, cfg, [{k: v for k, v in r.items() if k != "es_noise_iteration"} for r in rows], anchor=base)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(rebuilt)))
    with pytest.raises(ValueError, match="noise iterations must run on from 3 without gaps"):
        replay(first_end, cfg, [rows[0], dict(rows[1], es_noise_iteration=9)], anchor=base)
    with pytest.raises(ValueError, match="only optimizer='sgd' replays"):
        replay(first_end, ESConfig(population_size=6, optimizer="adam"), rows)
    with pytest.raises(ValueError, match="pass anchor="):  # its default, the starting params, is not the run's anchor
        replay(first_end, cfg, rows)
