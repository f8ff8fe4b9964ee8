"""ES engine: gradient estimate, convergence, evaluator equivalence (sequential / vmap / sharded),
noise determinism, low-rank update = dense sum, correlated-noise signature."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es.noise import densify, full_noise, leaf_selection, lowrank_noise, member_key
from esjax.es.population import evaluate_population, member_ids, member_output, population_fn
from esjax.es.shaping import centered_rank, shape, zscore
from esjax.es.step import ESConfig, es_update, estimate_gradient, init_state, member_perturbation
from esjax.parallel import make_mesh


def quad_params(d=40):
    return {"w": jnp.zeros((d // 4, 4)), "b": jnp.zeros((3,))}


def test_shaping_zscore_and_ranks():
    f = jnp.array([1.0, 2.0, 3.0, 4.0])
    z = zscore(f)
    np.testing.assert_allclose(float(jnp.sum(z ** 2)), 4.0, rtol=1e-5)  # Σ z² = N (ddof 0)
    np.testing.assert_allclose(centered_rank(jnp.array([3.0, 1.0, 2.0])), [0.5, -0.5, 0.0])
    np.testing.assert_allclose(shape("zscore", jnp.ones(5)), 0.0)  # equal fitness: no-op update


@pytest.mark.parametrize("shaping", ["zscore", "raw", "centered_rank"])
@pytest.mark.parametrize("value", [0.375, 0.1, 1 / 3, 0.5])
def test_tied_fitness_gives_no_update(shaping, value):
    """Every member scoring the same (30 members, not antithetic): z = 0 exactly and θ does not move. A
    float32 mean of 30 × 0.375 is off by one rounding step, which z-scoring used to blow up into a z of
    ≈ 0.9 for every member and a full-size random step (update norm 0.12 at the default σ, α)."""
    cfg = ESConfig(population_size=30, shaping=shaping)
    state = init_state(quad_params(), jax.random.key(0), cfg)
    f = np.full(30, value, np.float32)
    assert np.all(np.asarray(shape(shaping, f)) == 0)
    new, m = es_update(state, f, cfg)
    assert float(m["update_norm"]) == 0.0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_members_with_the_same_rewards_in_another_order_tie_and_take_no_step():
    """200 of paper 2's {0, 0.1, 1.1} rewards, one member's in another order: a float32 mean differs in the
    last bit (0.40499997 vs 0.405), which z-scoring made a step of about half the usual size; the exact
    mean gives every member the same fitness, so the tie guard holds θ still."""
    from esjax.es.trainer import member_fitness

    rng = np.random.default_rng(5)
    r = rng.choice(np.array([0, 0.1, 1.1], np.float32), 200)
    rewards = np.stack([r] * 29 + [rng.permutation(r)])
    assert rewards.mean(1)[0] != rewards.mean(1)[-1]  # the float32 pairwise mean: not a tie
    f = member_fitness(rewards)
    assert f.dtype == np.float32 and np.all(f == f[0]) and f[0] == np.float32(np.float64(r).sum() / 200)
    cfg = ESConfig(population_size=30)
    state = init_state(quad_params(), jax.random.key(0), cfg)
    assert float(es_update(state, f, cfg)[1]["update_norm"]) == 0.0
    assert float(es_update(state, rewards.mean(1), cfg)[1]["update_norm"]) > 0  # what the float32 mean did


def test_gradient_estimate_matches_true_gradient():
    """Linear fitness f = wᵀθ: (1/N) Σ (f_n − f̄) ε_n / σ → w, error ~ √(d/N)."""
    params = {"x": jnp.zeros((50,))}
    w = jax.random.normal(jax.random.key(1), (50,))
    cfg = ESConfig(population_size=4000, sigma=0.1, alpha=1.0, shaping="raw", antithetic=True)
    state = init_state(params, jax.random.key(0), cfg)
    members = jnp.arange(cfg.population_size)
    fit = jax.vmap(lambda m: jnp.dot(w, member_perturbation(params, state.key, 0, m, cfg, cfg.sigma)["x"]))(members)
    g = estimate_gradient(params, state.key, 0, fit - fit.mean(), cfg)["x"] / cfg.sigma
    rel = float(jnp.linalg.norm(g - w) / jnp.linalg.norm(w))
    assert rel < 4 * np.sqrt(51 / 4000), rel
    assert float(jnp.dot(g, w) / jnp.linalg.norm(g) / jnp.linalg.norm(w)) > 0.95


@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_es_converges_on_quadratic(noise):
    target = {"w": jnp.full((10, 4), 0.5), "b": jnp.array([1.0, -1.0, 0.5])}
    cfg = ESConfig(population_size=32, sigma=0.05, alpha=0.02, noise=noise, rank=2)
    state = init_state(quad_params(), jax.random.key(0), cfg)

    def fitness(params, delta, member):
        from esjax.es.noise import densify as dz
        p = params if delta is None else jax.tree.map(lambda a, b: a + b, params, dz(delta))
        return -sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))

    pop = population_fn(fitness, cfg, chunk=8)
    step = jax.jit(lambda s, f: es_update(s, f, cfg))
    dist0 = -float(fitness(state.params, None, 0))
    for _ in range(150):
        state, _ = step(state, pop(state, jnp.arange(cfg.population_size)))
    assert -float(fitness(state.params, None, 0)) < 0.2 * dist0


def _toy_fitness(params, delta, member, x):
    from esjax.es.noise import densify as dz
    p = params if delta is None else jax.tree.map(lambda a, b: a + b, params, dz(delta))
    return jnp.tanh(x @ p["w"]).sum() + p["b"].sum()


@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_sequential_vmapped_and_sharded_updates_agree(noise):
    cfg = ESConfig(population_size=16, sigma=0.1, alpha=0.1, noise=noise, rank=2)
    params = {"w": jax.random.normal(jax.random.key(3), (10, 4)), "b": jnp.zeros((3,))}
    state = init_state(params, jax.random.key(7), cfg)
    x = jax.random.normal(jax.random.key(4), (5, 10))
    # (a) sequential reference loop
    seq = np.array([float(member_output(_toy_fitness, state, m, cfg, x)) for m in range(16)])
    # (b) vmapped in chunks of 4
    vm = np.asarray(jax.jit(lambda s: evaluate_population(_toy_fitness, s, jnp.arange(16), cfg, 4, x))(state))
    # (c) sharded over 8 devices (2 members each)
    mesh = make_mesh()
    assert mesh.devices.size == 8
    sh = np.asarray(population_fn(_toy_fitness, cfg, chunk=2, mesh=mesh)(state, member_ids(16, 8), x))[:16]
    np.testing.assert_allclose(vm, seq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sh, seq, rtol=1e-5, atol=1e-5)
    u = [es_update(state, jnp.asarray(f), cfg)[0].params for f in (seq, vm, sh)]
    for other in u[1:]:
        for a, b in zip(jax.tree.leaves(u[0]), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("param_filter,sharded", [(None, False), ("^(q|k|o|g|u)$", False), ("^(q|k|o|g|u)$", True)])
def test_lowrank_population_gives_each_member_its_own_noise_leaf_for_leaf(param_filter, sharded):
    """The low-rank population draws every leaf of one shape in one program and slices the draws into the
    params' tree: several leaves per shape, some left out by ``param_filter``, with and without a mesh —
    each member's deltas are its own ``member_perturbation``, leaf for leaf (a fitness could not tell two
    swapped leaves of one shape apart; this compares the deltas themselves)."""
    cfg = ESConfig(population_size=8, sigma=0.1, noise="lowrank", rank=2, param_filter=param_filter)
    shapes = {"q": (6, 4), "k": (6, 4), "v": (6, 4), "o": (6, 4), "g": (4,), "h": (4,), "u": (3, 5)}
    params = {n: jax.random.normal(jax.random.key(i), s) for i, (n, s) in enumerate(shapes.items())}
    state = init_state(params, jax.random.key(7), cfg)

    def flat(delta, like):  # every leaf's dense delta in tree order, zeros where a leaf is not perturbed
        leaves = jax.tree.leaves(densify(delta), is_leaf=lambda x: x is None)
        return jnp.concatenate([(jnp.zeros(x.shape) if d is None else d).ravel()
                                for x, d in zip(jax.tree.leaves(like), leaves)])

    mesh = make_mesh() if sharded else None
    pop = population_fn(lambda p, d, m: flat(d, p), cfg, chunk=2, mesh=mesh)
    got = np.asarray(pop(state, member_ids(8, 8 if sharded else 1)))[:8]
    want = np.stack([flat(member_perturbation(state.params, state.key, state.iteration, m, cfg, cfg.sigma), params)
                     for m in range(8)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.abs(want).max() > 0 and len({tuple(r) for r in np.round(want, 6)}) == 8  # members differ
    if param_filter:  # the unselected leaves (v, h) stay exactly zero
        sizes = [int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda t: isinstance(t, tuple))]
        names = sorted(shapes)  # jax.tree order of a dict: sorted keys
        start = np.cumsum([0] + sizes)
        for n, a, b in zip(names, start[:-1], start[1:]):
            assert (np.abs(got[:, a:b]).max() == 0) == (n in ("v", "h")), n


def test_noise_is_deterministic_and_independent_per_leaf_and_member():
    params = {"a": jnp.zeros((64, 8)), "b": jnp.zeros((64, 8))}
    k, _ = member_key(jax.random.key(0), 3, 5)
    n1, n2 = full_noise(params, k), jax.jit(full_noise)(params, k)
    np.testing.assert_array_equal(n1["a"], n2["a"])
    assert abs(float(jnp.corrcoef(n1["a"].ravel(), n1["b"].ravel())[0, 1])) < 0.15  # same shape, new noise
    k2, _ = member_key(jax.random.key(0), 3, 6)
    assert abs(float(jnp.corrcoef(n1["a"].ravel(), full_noise(params, k2)["a"].ravel())[0, 1])) < 0.15
    # antithetic pairs share the key and flip the sign
    ka, sa = member_key(jax.random.key(0), 1, 4, antithetic=True)
    kb, sb = member_key(jax.random.key(0), 1, 5, antithetic=True)
    assert float(sa) == 1.0 and float(sb) == -1.0
    np.testing.assert_array_equal(jax.random.key_data(ka), jax.random.key_data(kb))


def test_noise_is_identical_in_a_fresh_process():
    import subprocess
    import sys
    code = ("import jax,numpy as np;from esjax.es.noise import full_noise,member_key;"
            "k,_=member_key(jax.random.key(0),3,5);print(float(np.asarray(full_noise({'a':jax.numpy.zeros((4,4))},k)['a']).sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in __import__("os").environ.items()  # compiles its own programs
                              if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}).stdout.strip()
    k, _ = member_key(jax.random.key(0), 3, 5)
    here = float(np.asarray(full_noise({"a": jnp.zeros((4, 4))}, k)["a"]).sum())
    assert abs(float(out) - here) < 1e-6


def test_lowrank_update_equals_dense_sum_of_perturbations():
    cfg = ESConfig(population_size=6, sigma=0.1, alpha=1.0, noise="lowrank", rank=3)
    params = {"w": jnp.zeros((7, 5)), "g": jnp.zeros((5,))}
    state = init_state(params, jax.random.key(2), cfg)
    z = jnp.array([0.3, -1.0, 2.0, 0.1, -0.4, 0.7])
    g = estimate_gradient(params, state.key, state.iteration, z, cfg)
    dense = [densify(member_perturbation(params, state.key, state.iteration, n, cfg)) for n in range(6)]
    ref = jax.tree.map(lambda *xs: sum(zi * x for zi, x in zip(z, xs)) / 6, *dense)
    np.testing.assert_allclose(g["w"], ref["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["g"], ref["g"], rtol=1e-5, atol=1e-6)
    # rank-r member perturbation: unit-variance entries, rank exactly r
    e = densify(member_perturbation({"w": jnp.zeros((300, 200))}, state.key, 0, 0, cfg))["w"]
    assert int(jnp.linalg.matrix_rank(e)) == 3
    assert 0.85 < float(jnp.var(e)) < 1.15


def test_correlated_noise_signature_and_its_absence_by_default():
    params = {"layers": [{"wq": jnp.zeros((16, 16))} for _ in range(3)]}
    k, _ = member_key(jax.random.key(0), 0, 0)
    corr = full_noise(params, k, correlated=True)
    iid = full_noise(params, k)
    np.testing.assert_array_equal(corr["layers"][0]["wq"], corr["layers"][2]["wq"])
    assert not np.allclose(iid["layers"][0]["wq"], iid["layers"][2]["wq"])


def test_param_filter_restricts_update():
    cfg = ESConfig(population_size=4, sigma=0.1, alpha=1.0, param_filter=r"^w$")
    params = {"w": jnp.zeros((3,)), "b": jnp.zeros((2,))}
    state = init_state(params, jax.random.key(0), cfg)
    new, m = es_update(state, jnp.array([1.0, 2.0, 3.0, 4.0]), cfg)
    assert float(jnp.abs(new.params["b"]).max()) == 0.0 and float(jnp.abs(new.params["w"]).max()) > 0
    with pytest.raises(ValueError, match="matches no parameter"):
        leaf_selection(params, "nothing")


def test_update_norm_follows_random_walk_theory():
    """fp32 ES with pure-noise fitness on d = 1e5: E‖θ_T − θ_0‖² = α² T d / N (docs/protocols.md#f2)."""
    d, N, T, alpha = 100_000, 10, 20, 1e-2
    cfg = ESConfig(population_size=N, sigma=1e-3, alpha=alpha)
    state = init_state({"x": jnp.zeros((d,))}, jax.random.key(0), cfg)
    step = jax.jit(lambda s, f: es_update(s, f, cfg))
    rng = np.random.default_rng(0)
    for _ in range(T):
        state, _ = step(state, jnp.asarray(rng.normal(size=N)))
    measured = float(jnp.linalg.norm(state.params["x"]))
    predicted = alpha * np.sqrt(T * d / N)
    assert abs(measured / predicted - 1) < 0.02, (measured, predicted)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="population_size"):
        ESConfig(population_size=1)
    with pytest.raises(ValueError, match="antithetic"):
        ESConfig(population_size=5, antithetic=True)
    with pytest.raises(ValueError, match="shaping"):
        ESConfig(shaping="nope")
    with pytest.raises(ValueError, match="fitness has shape"):
        cfg = ESConfig(population_size=4)
        es_update(init_state({"x": jnp.zeros(2)}, jax.random.key(0), cfg), jnp.zeros(3), cfg)


def test_noise_energy_factor_predicts_antithetic_update_norm():
    """E‖g‖² = f·d/N with f = Σ_k (z_2k − z_2k+1)²/N for antithetic pairs (1 for i.i.d. z-scores)."""
    d, N = 200_000, 8
    for antithetic in (False, True):
        cfg = ESConfig(population_size=N, sigma=1e-3, alpha=1.0, antithetic=antithetic)
        state = init_state({"x": jnp.zeros((d,))}, jax.random.key(1), cfg)
        new, m = es_update(state, jnp.array([3.0, -1.0, 0.5, 2.0, -2.0, 1.0, 0.0, 4.0]), cfg)
        measured_sq = float(jnp.sum(new.params["x"] ** 2))
        assert measured_sq == pytest.approx(float(m["noise_energy_factor"]) * d / N, rel=0.02)
        if not antithetic:
            assert float(m["noise_energy_factor"]) == pytest.approx(1.0, rel=1e-5)


def test_kl_penalty_is_measured_against_the_base_model(tokenizer):
    """The KL term compares members with the *base* params: as the centre drifts away (large α),
    member-vs-base KL grows, and a missing base is a named error."""
    from esjax.es.trainer import make_es_iteration
    from esjax.models.registry import load_model
    from esjax.tasks import get_task

    model = load_model("tiny-random-llama", with_tokenizer=False)
    task = get_task("lowercase")
    cfg = ESConfig(population_size=4, sigma=0.02, alpha=2.0, kl_penalty=0.1)
    with pytest.raises(ValueError, match="needs base_params"):
        make_es_iteration(model.cfg, tokenizer, task, cfg, 6, 2)
    it = make_es_iteration(model.cfg, tokenizer, task, cfg, 6, 2, base_params=model.params)
    state = init_state(model.params, jax.random.key(0), cfg)
    exs = task.examples("train", 2)
    kls = []
    for t in range(3):
        state, m = it(state, exs, jax.random.key(t))
        kls.append(m["member_kl"])
    assert np.isfinite(kls).all() and kls[2] > 2 * abs(kls[0]), kls


def test_inplace_16bit_simulation_reproduces_the_seeds_rounding():
    """docs/protocols.md#a4: per-seed adds of size (α/N)|zε| ≈ 1.7e-5 mostly round away in bf16 at |w| ≈ 0.02
    (ulp 1.2e-4), less so in fp16 (8× finer); perturb/restore alone is not invertible in 16 bits."""
    d, N = 20_000, 30
    w = jax.random.normal(jax.random.key(1), (d,)) * 0.02
    params = {"w": w.astype(jnp.bfloat16).astype(jnp.float32)}  # weights that live in bf16, as the seeds'
    fit = jnp.asarray(np.random.default_rng(0).normal(size=N), jnp.float32)
    changed = {}
    for dt in (None, "float16", "bfloat16"):
        cfg = ESConfig(population_size=N, sigma=1e-3, alpha=5e-4, inplace_dtype=dt)
        new, m = es_update(init_state(params, jax.random.key(0), cfg), fit, cfg)
        delta = new.params["w"] - params["w"]
        changed[dt] = float(jnp.mean(jnp.abs(delta) > 1e-6))
        if dt == "bfloat16":
            assert bool(jnp.all(new.params["w"].astype(jnp.bfloat16).astype(jnp.float32) == new.params["w"]))
            assert float(m["update_norm"]) == pytest.approx(float(jnp.linalg.norm(delta)), rel=1e-5)
    assert changed[None] > 0.98 and changed["bfloat16"] < changed["float16"] - 0.2 and changed["float16"] < changed[None]
    # equal fitness: the update is a no-op in fp32, but bf16 perturb/restore leaves residue on some weights
    cfg = ESConfig(population_size=N, sigma=1e-3, alpha=5e-4, inplace_dtype="bfloat16")
    same, _ = es_update(init_state(params, jax.random.key(0), cfg), jnp.ones(N), cfg)
    assert 0 < float(jnp.mean(same.params["w"] != params["w"])) < 0.5
    with pytest.raises(ValueError, match="inplace_dtype"):
        ESConfig(noise="lowrank", inplace_dtype="bfloat16")
