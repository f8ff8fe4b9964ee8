"""Precision policy (esjax.models.precision): generating programs read compute-dtype weights, cast once
outside the decode loop; fp32 compute is unchanged; bf16 members rank like fp32 members."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.es.population import lm_evaluator, member_ids, population_fn
from esjax.es.step import ESConfig, init_state
from esjax.models.decoder import forward, init_params, param_shapes, positions_from_mask
from esjax.models.precision import compute_params
from esjax.models.registry import model_config
from jaxprs import sub_jaxprs


def weight_converts_in_loops(jaxpr, weight_shapes, in_loop=False, found=None):
    """(while loops seen, converts of float32 weight-shaped arrays inside a while body)."""
    found = found if found is not None else {"loops": 0, "converts": []}
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            found["loops"] += 1
        inside = in_loop or eqn.primitive.name == "while"
        if in_loop and eqn.primitive.name == "convert_element_type":
            aval = eqn.invars[0].aval
            if aval.dtype == jnp.float32 and tuple(aval.shape[-2:]) in weight_shapes:
                found["converts"].append(tuple(aval.shape))
        for sub in sub_jaxprs(eqn):
            weight_converts_in_loops(sub, weight_shapes, inside, found)
    return found


@pytest.mark.parametrize("noise", ["full", "lowrank"])
def test_es_population_decodes_on_compute_dtype_weights(noise):
    """No float32 weight-shaped operand is converted inside the decode loop (bf16 compute, fp32 master)."""
    mcfg = model_config("tiny-random-qwen2").replace(compute_dtype="bfloat16", eos_token_ids=())
    params = init_params(mcfg.replace(param_dtype="float32"), jax.random.key(0))
    cfg = ESConfig(population_size=4, noise=noise, rank=2, sigma=0.01)
    state = init_state(params, jax.random.key(1), cfg)
    pop = population_fn(lm_evaluator(mcfg, 3, cfg), cfg, 2, dtype=mcfg.dtype)
    tokens, mask = np.ones((2, 8), np.int32), np.ones((2, 8), bool)
    jaxpr = jax.make_jaxpr(pop)(state, member_ids(4), tokens, mask, jax.random.key(2)).jaxpr
    shapes = {s for s in jax.tree.leaves(param_shapes(mcfg), is_leaf=lambda s: isinstance(s, tuple)) if len(s) == 2}
    shapes |= {(n, cfg.rank) for s in shapes for n in s}  # low-rank factors (n_in, r), (n_out, r)
    found = weight_converts_in_loops(jaxpr, shapes)
    assert found["loops"] >= 1
    assert found["converts"] == [], found["converts"]
    out = pop(state, member_ids(4), tokens, mask, jax.random.key(2))
    assert out.tokens.shape == (4, 2, 3)


def test_grpo_rollout_and_compute_params_cast_once():
    mcfg = model_config("tiny-random-llama")
    params = init_params(mcfg, jax.random.key(0))
    assert compute_params(params, mcfg) is params  # fp32 compute: the same arrays, no copy
    bf = compute_params(params, mcfg.replace(compute_dtype="bfloat16"))
    assert {x.dtype for x in jax.tree.leaves(bf)} == {jnp.dtype(jnp.bfloat16)}


def test_generate_casts_master_weights_once_outside_its_loop():
    """A caller passing fp32 master weights to a bf16 model (evaluation, drift probes) gets a decode loop
    that reads bf16 weights: no float32 weight-shaped convert inside it, the same tokens and log-probs as
    generating from weights cast beforehand; on fp32 compute the weights are passed through as they are."""
    from esjax.sampling import make_generate
    mcfg = model_config("tiny-random-qwen2").replace(compute_dtype="bfloat16", eos_token_ids=())
    master = init_params(mcfg.replace(param_dtype="float32"), jax.random.key(0))
    tokens, mask = np.arange(16, dtype=np.int32).reshape(2, 8) + 3, np.ones((2, 8), bool)
    gen = make_generate(mcfg, 5, cache_block=2, compaction=0)
    shapes = {s for s in jax.tree.leaves(param_shapes(mcfg), is_leaf=lambda s: isinstance(s, tuple)) if len(s) == 2}
    found = weight_converts_in_loops(jax.make_jaxpr(gen)(master, tokens, mask, jax.random.key(1)).jaxpr, shapes)
    assert found["loops"] >= 2 and found["converts"] == [], found  # two cache segments, each its own loop
    out, ref = gen(master, tokens, mask, jax.random.key(1)), gen(compute_params(master, mcfg), tokens, mask,
                                                                 jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.logprobs), np.asarray(ref.logprobs))
    f32 = mcfg.replace(compute_dtype="float32")
    found = weight_converts_in_loops(jax.make_jaxpr(make_generate(f32, 5))(master, tokens, mask, jax.random.key(1)).jaxpr,
                                     shapes)
    assert found["loops"] >= 1 and found["converts"] == []


def test_bf16_members_rank_like_fp32_members():
    """Teacher-forced log-likelihood fitness of 16 members: bf16 compute gives the fp32 values within bf16
    tolerance and the same ranking of clearly separated members."""
    mcfg = model_config("tiny-random-llama")
    params = init_params(mcfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(5), (4, 12), 3, 500)
    mask = jnp.ones_like(tokens, bool)

    def fitness_fn(model_cfg):
        def evaluate(p, delta, member):
            logits, _ = forward(p, model_cfg, tokens, positions_from_mask(mask), mask, delta=delta)
            logp = jax.nn.log_softmax(logits[:, :-1], -1)
            return jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()
        return evaluate

    out = {}
    for noise in ("full", "lowrank"):
        cfg = ESConfig(population_size=16, noise=noise, sigma=0.5, rank=4)
        state = init_state(params, jax.random.key(3), cfg)
        for dt in ("float32", "bfloat16"):
            m = mcfg.replace(compute_dtype=dt)
            out[noise, dt] = np.asarray(population_fn(fitness_fn(m), cfg, 4, dtype=m.dtype)(state, member_ids(16)))
        f32, b16 = out[noise, "float32"], out[noise, "bfloat16"]
        assert np.ptp(f32) > 0.05, f32  # members differ well beyond bf16 rounding
        np.testing.assert_allclose(b16, f32, atol=0.02 * np.abs(f32).max())
        rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
        assert np.corrcoef(rank(f32), rank(b16))[0, 1] > 0.95


def test_fp32_compute_population_is_unchanged_by_the_dtype_argument():
    """On fp32 compute the population reads the master weights themselves: same outputs as before."""
    from esjax.es.population import member_output
    mcfg = model_config("tiny-random-llama").replace(eos_token_ids=())
    params = init_params(mcfg, jax.random.key(0))
    tokens, mask = np.full((2, 8), 7, np.int32), np.ones((2, 8), bool)
    for noise in ("full", "lowrank"):
        cfg = ESConfig(population_size=2, noise=noise, sigma=0.05, kl_penalty=0.1)  # KL: log-probs recorded
        state = init_state(params, jax.random.key(1), cfg)
        ev = lm_evaluator(mcfg, 4, cfg)
        pop = population_fn(ev, cfg, 2, dtype=mcfg.dtype)(state, member_ids(2), tokens, mask, jax.random.key(2))
        seq = [member_output(ev, state, m, cfg, tokens, mask, jax.random.key(2)) for m in range(2)]
        np.testing.assert_array_equal(np.asarray(pop.tokens), np.stack([np.asarray(s.tokens) for s in seq]))
        np.testing.assert_allclose(np.asarray(pop.logprobs), np.stack([np.asarray(s.logprobs) for s in seq]),
                                   rtol=1e-5, atol=1e-5)
