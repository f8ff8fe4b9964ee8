"""One home per concept (issue 14): the leaf taxonomy, the first scored position, the RNG stream numbers,
the dtype table, and the profile names of the decoder's blocks and the learners' phases."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax import streams, trees
from esjax.analysis import geometry as geo
from esjax.models.config import DTYPES, ModelConfig
from esjax.models.decoder import first_scored, init_params, param_shapes, token_logprobs
from esjax.rollout import sequence_batch

TINY = ModelConfig(arch="qwen2", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=4, tie_embeddings=False, max_position_embeddings=64, pad_token_id=0,
                   eos_token_ids=(1,))

# geometry.bucket before it read esjax.trees.module_type (its own leaf table), for every leaf name esjax has
OLD_BUCKETS = {"wq": "Q", "bq": "Q", "wk": "K", "bk": "K", "wv": "V", "bv": "V", "wo": "O", "w_gate": "MLP",
               "w_up": "MLP", "w_down": "MLP", "attn_norm": "norm", "mlp_norm": "norm", "q_norm": "norm",
               "k_norm": "norm"}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_geometry_buckets_are_the_trees_taxonomy(arch):
    """Every leaf of every architecture lands in the bucket it had before; embeddings, head and final norm
    are 'other'."""
    cfg = TINY.replace(arch=arch)
    shapes = param_shapes(cfg)
    paths = trees.leaf_paths(jax.tree.map(lambda s: 0, shapes, is_leaf=lambda s: isinstance(s, tuple)))
    assert {"embed", "final_norm", "lm_head", "layers/1/w_down"} <= set(paths)
    for p in paths:
        leaf = p.rsplit("/", 1)[-1]
        want = OLD_BUCKETS.get(leaf, "other") if p.startswith("layers/") else "other"
        assert geo.bucket(p) == want, p


def test_geometry_follows_a_new_leaf_kind_in_trees(monkeypatch):
    """One taxonomy: a leaf kind added to esjax.trees is bucketed by the analysis without touching it."""
    monkeypatch.setitem(trees.MODULE_TYPES, "w_extra", "mlp")
    monkeypatch.setitem(trees.MODULE_TYPES, "wq2", "q")
    assert geo.bucket("layers/0/w_extra") == "MLP" and geo.bucket("layers/3/wq2") == "Q"


def test_cast_delta_reads_the_one_dtype_table(monkeypatch):
    """geometry has no dtype table of its own: a dtype added to esjax.models.config.DTYPES is castable."""
    monkeypatch.setitem(DTYPES, "float64-test", jnp.float32)
    a, b = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, 2.0])}
    np.testing.assert_array_equal(geo.cast_delta(a, b, "float64-test")["w"], [0.5, 0.0])


def test_first_scored_position_of_prompt_plus_completion():
    """Prompt (P) ++ completion (M): the completion-only loss mask is the last M columns of the full one,
    the first scored token is P, and scoring from there gives the full scorer's last M log-probs."""
    rng = np.random.default_rng(0)
    P, M, B = 5, 4, 3
    prompt = rng.integers(2, 32, (B, P)).astype(np.int32)
    pmask = np.ones((B, P), bool)
    pmask[0, :2] = False  # left padding
    gen, lengths = rng.integers(2, 32, (B, M)).astype(np.int32), np.array([4, 2, 0])
    full = sequence_batch(prompt, pmask, gen, lengths)
    short = sequence_batch(prompt, pmask, gen, lengths, completion_only=True)
    np.testing.assert_array_equal(short["loss_mask"], full["loss_mask"][:, P - 1:])
    assert short["loss_mask"].shape == (B, M) and short["loss_mask"].sum() == 6
    s = first_scored(short["tokens"].shape[1], short["loss_mask"].shape[1])
    assert s == P and first_scored(P + M, P + M - 1) == 1
    params = init_params(TINY, jax.random.key(0), 0.3)
    lp_full = token_logprobs(params, TINY, short["tokens"], short["attn_mask"])
    lp = token_logprobs(params, TINY, short["tokens"], short["attn_mask"], start=s)
    np.testing.assert_allclose(lp, lp_full[:, P - 1:], rtol=1e-5, atol=1e-6)
    for bad in (P + M, -1):
        with pytest.raises(ValueError, match="scored tokens in sequences of width 9"):
            first_scored(P + M, bad)


def test_log_softmax_at_is_the_picked_log_softmax_with_its_gradient():
    """``log_softmax_at`` gives jax.nn.log_softmax's picked entries bit for bit (jit and vmap, a row with
    −inf logits, bf16 logits) and its gradient g·(onehot − softmax) to float rounding; ``scoring_logits``
    (a forward over the first T − 1 columns) gives the logits the full forward makes there."""
    from esjax.models.decoder import log_softmax_at, logits_from, scoring_logits
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(3, 5, 97)) * 4, jnp.float32).at[0, 0, :50].set(-jnp.inf)
    y = jnp.asarray(rng.integers(50, 97, (3, 5)), jnp.int32)
    w = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    ref = lambda z: jnp.take_along_axis(jax.nn.log_softmax(z, -1), y[..., None], -1)[..., 0]  # noqa: E731
    for f in (log_softmax_at, jax.jit(log_softmax_at), jax.vmap(log_softmax_at)):
        np.testing.assert_array_equal(f(z, y), ref(z))
    zb = z.astype(jnp.bfloat16)
    np.testing.assert_array_equal(log_softmax_at(zb, y), jnp.take_along_axis(jax.nn.log_softmax(zb, -1), y[..., None], -1)[..., 0])
    g = jax.grad(lambda z: (log_softmax_at(z, y) * w).sum())(z)
    g_ref = jax.grad(lambda z: (ref(z) * w).sum())(z)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(g).max()) > 0.1 and float(jnp.abs(g[0, 0, :50]).max()) == 0
    params = init_params(TINY, jax.random.key(0), 0.3)
    tokens = jnp.asarray(rng.integers(2, 32, (2, 9)), jnp.int32)
    mask = jnp.ones((2, 9), bool).at[0, :3].set(False)
    np.testing.assert_allclose(scoring_logits(params, TINY, tokens, mask, 4),
                               logits_from(params, TINY, tokens, mask, 3)[:, :-1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="first scored token 9 outside the 9 columns"):
        scoring_logits(params, TINY, tokens, mask, 9)


def test_rng_stream_numbers():
    """The fold_in constants every recorded run was drawn with (changing one changes every result)."""
    assert (streams.ES_NOISE, streams.ES_SAMPLING, streams.GRPO, streams.RANDOM_DIRECTION) == (1, 2, 3, 99)
    assert len(set(streams.STREAMS.values())) == len(streams.STREAMS) and streams.EVALUATION == 0


def _loc_text(lowered) -> str:
    return lowered.as_text(debug_info=True)


def test_profile_names_of_decoder_blocks_and_learner_phases():
    """A profile maps back to source: the decoder's attention / mlp / head, the sampler's rollout
    (prefill, decode), the GRPO learner and the ES population carry those names in the compiled program."""
    from esjax.es.population import lm_evaluator, member_ids, population_fn
    from esjax.es.step import ESConfig, init_state as es_init
    from esjax.grpo.step import GRPOConfig, grpo_step, init_state
    from esjax.sampling import make_generate

    params = init_params(TINY, jax.random.key(0), 0.3)
    tokens, mask = jnp.full((2, 8), 3, jnp.int32), jnp.ones((2, 8), bool)
    gen = _loc_text(make_generate(TINY, 3).lower(params, tokens, mask, jax.random.key(0)))
    for name in ("rollout/prefill/", "rollout/decode/", "/attention/", "/mlp/", "/head/", "/embed/"):
        assert name in gen, name
    cfg = GRPOConfig(group_size=2, prompts_per_step=1)
    batch = {"tokens": tokens, "attn_mask": mask, "loss_mask": jnp.ones((2, 3)), "advantages": jnp.ones(2)}
    step = jax.jit(functools.partial(grpo_step, model_cfg=TINY, cfg=cfg))
    assert "learner/" in _loc_text(step.lower(init_state(params, jax.random.key(0), cfg), batch, None))
    es_cfg = ESConfig(population_size=2, noise="lowrank")
    pop = population_fn(lm_evaluator(TINY, 2, es_cfg), es_cfg, 2)
    lowered = pop.lower(es_init(params, jax.random.key(0), es_cfg), member_ids(2), tokens, mask, jax.random.key(1))
    text = _loc_text(lowered["population"])
    assert "/population/" in text and "(rollout)/decode/" in text  # members' rollouts: vmap(rollout)/...
    noise = [v for k, v in lowered.items() if k not in ("population", "cast weights")]  # one per leaf shape
    assert noise and all("member_noise/" in _loc_text(v) for v in noise)
