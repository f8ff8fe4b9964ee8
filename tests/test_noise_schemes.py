"""Noise schemes are a registry: a scheme defined here, outside esjax, runs a whole ES iteration on the tiny
model; unknown names are named errors; the ES update compiles once per leaf shape and equals one program."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es.noise import member_key
from esjax.es.population import member_ids, population_fn
from esjax.es.schemes import SCHEMES, DenseScheme, get_scheme, register_scheme
from esjax.es.step import (ESConfig, _apply_gradient, _leaf_step_program, _shaped, es_update, estimate_gradient, init_state,
                           member_perturbation)


class SignNoise(DenseScheme):
    """Rademacher noise: every entry ±1 (unit variance)."""

    name = "sign-test"

    def sample(self, key, shape):
        return jax.random.rademacher(key, shape, jnp.float32)


register_scheme(SignNoise())


def test_a_scheme_defined_outside_esjax_runs_an_es_iteration(tokenizer):
    from esjax.es.trainer import make_es_iteration
    from esjax.models.registry import load_model
    from esjax.tasks import get_task

    model = load_model("tiny-random-llama", with_tokenizer=False)
    task = get_task("lowercase")
    cfg = ESConfig(population_size=4, sigma=0.05, alpha=0.01, noise="sign-test", param_filter="layers/1/")
    state = init_state(model.params, jax.random.key(0), cfg)
    it = make_es_iteration(model.cfg, tokenizer, task, cfg, 4, 2, base_params=model.params)
    new, m = it(state, task.examples("train", 2), jax.random.key(1))
    delta = jax.tree.map(lambda a, b: np.asarray(a - b), new.params, state.params)
    moved = np.abs(delta["layers"][1]["wq"])
    assert np.abs(delta["layers"][0]["wq"]).max() == 0 and np.abs(delta["embed"]).max() == 0  # filter honoured
    # the update is (α/N) Σ z_n ε_n with ε_n ∈ {±1}: every moved entry is a multiple of α/N·(a z sum)
    eps = [member_perturbation(state.params, state.key, state.iteration, n, cfg)["layers"][1]["wq"] for n in range(4)]
    assert set(np.unique(np.abs(np.asarray(eps[0])))) == {1.0}
    if m["fitness_std"] > 0:
        assert moved.max() > 0
    assert m["forward_passes"] == 8


def test_unknown_scheme_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown noise scheme 'nope'.*full.*lowrank"):
        ESConfig(noise="nope")
    assert {"full", "lowrank", "sign-test"} <= set(SCHEMES)
    with pytest.raises(ValueError, match="already registered"):
        class Other(SignNoise):
            pass
        register_scheme(Other())


@pytest.mark.parametrize("noise", ["full", "lowrank", "sign-test"])
def test_update_compiles_once_per_leaf_shape_and_equals_one_program(noise):
    """Called directly, es_update runs one compiled step program per distinct leaf shape (not per leaf);
    the result equals the same update compiled as one program, and the whole-tree route (the gradient
    tree, then optax's SGD step and the metrics over the update tree), also with a parameter filter and
    anchored weight decay (leaves outside the filter run a decay-only program)."""
    from esjax.models.config import ModelConfig
    from esjax.models.decoder import init_params

    mcfg = ModelConfig(arch="qwen2", vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=4,
                       num_heads=4, num_kv_heads=2, head_dim=8)
    params = init_params(mcfg, jax.random.key(0))
    cfg = ESConfig(population_size=6, sigma=0.01, alpha=0.01, noise=noise, rank=2, antithetic=True)
    state = init_state(params, jax.random.key(3), cfg)
    fitness = jnp.array([0.3, -1.0, 2.0, 0.1, -0.4, 0.7])
    eager, m1 = es_update(state, fitness, cfg)
    shapes = {x.shape for x in jax.tree.leaves(params)}
    assert _leaf_step_program(cfg)._cache_size() == len(shapes) < len(jax.tree.leaves(params))
    jitted, m2 = jax.jit(lambda s, f: es_update(s, f, cfg))(state, fitness)
    for a, b in zip(jax.tree.leaves(eager.params), jax.tree.leaves(jitted.params)):
        # the two programs sum the gradient in their own orders: a few float32 ulps of the step α·g (≈ 1e-2,
        # ulp ≈ 1e-9); 2.4e-9 seen on an AMD EPYC host where the old 1e-9 failed on a weight of 2.5e-4
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert float(m1["update_norm"]) == pytest.approx(float(m2["update_norm"]), rel=1e-5)
    anchor = jax.tree.map(lambda x: x - 0.01, state.params)
    for c in (cfg, dataclasses.replace(cfg, param_filter="^layers/[01]/w", awd_lambda=3.0)):
        new, m = es_update(state, fitness, c, anchor=anchor)
        z = _shaped(fitness, c)
        ref, mr = _apply_gradient(state, estimate_gradient(state.params, state.key, state.iteration, z, c), fitness, z,
                                  anchor if c.awd_lambda else None, c)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref.params)):
            if jax.default_backend() == "cpu":  # bit for bit: runs logged before the change replay exactly
                np.testing.assert_array_equal(a, b)
            else:  # XLA:GPU fuses the two programs differently: equal to float32 rounding, not bit for bit
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
        assert set(m) == set(mr)
        for k in m:
            assert float(m[k]) == pytest.approx(float(mr[k]), rel=1e-5, abs=1e-12), k
        assert int(new.iteration) == int(ref.iteration) == 1


def test_per_leaf_gradient_is_the_sum_of_regenerated_member_noise():
    """g = (1/N) Σ w_n s_n E_n against the members' own perturbations, for every registered scheme."""
    from esjax.es.noise import densify
    from esjax.es.step import estimate_gradient

    params = {"w": jnp.zeros((7, 5)), "g": jnp.zeros((5,)), "layers": [{"a": jnp.zeros((7, 5))}] * 2}
    w = jnp.array([0.3, -1.0, 2.0, 0.1])
    for noise in ("full", "lowrank", "sign-test"):
        cfg = ESConfig(population_size=4, noise=noise, rank=2, antithetic=True)
        g = estimate_gradient(params, jax.random.key(2), 5, w, cfg)
        members = [densify(member_perturbation(params, jax.random.key(2), 5, n, cfg)) for n in range(4)]
        ref = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)) / 4, *members)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        _, sign = member_key(jax.random.key(2), 5, 1, True)
        assert float(sign) == -1.0


def test_get_scheme_is_what_population_and_cost_use():
    from esjax.cost import run_cost
    from esjax.config import RunConfig
    from esjax.models.registry import model_config

    mcfg = model_config("tiny-random-llama")
    cost = {n: run_cost(RunConfig(es=ESConfig(noise=n, population_size=4, chunk_size=2)), mcfg, 16)
            for n in ("full", "lowrank", "sign-test")}
    mem = {n: c["es"]["memory_per_device"]["noise"] for n, c in cost.items()}
    assert mem["full"] == mem["sign-test"] == 2 * get_scheme("full").member_bytes(mcfg, ESConfig()) > mem["lowrank"] > 0
    pop = population_fn(lambda p, d, m: sum(jnp.sum(x) for x in jax.tree.leaves(p)), ESConfig(population_size=4, noise="sign-test"), 2)
    params = {"x": jnp.zeros((3,))}
    out = pop(init_state(params, jax.random.key(0), ESConfig(population_size=4, noise="sign-test")), member_ids(4))
    assert out.shape == (4,) and set(np.round(np.abs(np.asarray(out)) / 1e-3).astype(int)) <= {1, 3}


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_shared_bytes_are_the_bytes_shared_params_adds(compute_dtype):
    from esjax.models.registry import load_model

    model = load_model("tiny-random-llama", with_tokenizer=False)
    mcfg = model.cfg.replace(compute_dtype=compute_dtype)
    master = jax.tree.map(lambda x: x.astype(jnp.float32), model.params)
    ids = {id(x) for x in jax.tree.leaves(master)}
    for name in ("lowrank", "full"):
        shared = get_scheme(name).shared_params(master, mcfg.dtype)
        added = sum(x.nbytes for x in jax.tree.leaves(shared) if id(x) not in ids)
        assert get_scheme(name).shared_bytes(mcfg, ESConfig(noise=name)) == added, name
    assert get_scheme("lowrank").shared_bytes(mcfg, ESConfig()) > 0


def test_auto_chunk_size_takes_the_shared_copy_and_the_rows_from_device_memory(monkeypatch):
    from esjax.es import population as pop
    from esjax.models.registry import model_config

    mcfg = model_config("tiny-random-llama").replace(compute_dtype="bfloat16")
    cfg = ESConfig(population_size=64, noise="lowrank")
    scheme = get_scheme("lowrank")
    monkeypatch.setattr(pop, "device_memory_budget", lambda fraction=pop.ACCEL_MEMORY_FRACTION: None)  # CPU
    assert pop.auto_chunk_size(mcfg, cfg, 16, 32, 64) == pop.CPU_MAX_ROWS // 16  # factors are tiny: rows bind
    per = scheme.member_bytes(mcfg, cfg) + 16 * pop.row_bytes(mcfg, 32, 64)
    free = scheme.shared_bytes(mcfg, cfg) + 5.5 * per
    monkeypatch.setattr(pop, "device_memory_budget", lambda fraction=pop.ACCEL_MEMORY_FRACTION: free)
    assert pop.auto_chunk_size(mcfg, cfg, 16, 32, 64) == 5
    assert pop.auto_chunk_size(mcfg, cfg, 16, 32, 64, budget_bytes=free - per) == 4
    assert pop.auto_chunk_size(mcfg, dataclasses.replace(cfg, chunk_size=7), 16, 32, 64) == 7
