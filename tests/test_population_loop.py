"""The ES population's decode loop under vmap: one scalar condition for the chunk's members, so the loop
neither selects its carry (the KV caches) nor scatters into it every step (esjax.sampling.generate's
``member_axis``; the H100 profile in docs/gpu.md showed both dominating the low-rank decode step).
Checked on the compiled (CPU) program: XLA turns the batched cache write into an in-place update only
when the position is unbatched."""
import dataclasses
import re

import jax
import numpy as np
import pytest

from esjax.es.population import MEMBER_AXIS, lm_evaluator, map_members, member_ids, member_output, population_fn
from esjax.es.step import ESConfig, init_state
from esjax.models.decoder import init_params
from esjax.models.registry import model_config
from esjax.sampling import generate
from esjax.trees import leaf_selection


def cache_rewrites(hlo: str, slots: int, head_dim: int) -> list:
    """Lines of compiled HLO that select or scatter a whole KV cache (shape ending in (slots, head_dim))."""
    tail = re.compile(rf"\[[\d,]*,{slots},{head_dim}\]")
    return [line.strip()[:160] for line in hlo.splitlines()
            if re.search(r"\b(select|scatter)\(", line) and tail.search(line.split("=", 1)[-1].split("(")[0])]


def _setup(noise):
    mcfg = model_config("tiny-random-qwen2").replace(eos_token_ids=())
    params = init_params(mcfg, jax.random.key(0))
    cfg = ESConfig(population_size=4, noise=noise, rank=2, sigma=0.01)
    tokens = np.random.default_rng(0).integers(3, mcfg.vocab_size, (2, 8)).astype(np.int32)
    return mcfg, cfg, init_state(params, jax.random.key(1), cfg), tokens, np.ones((2, 8), bool)


@pytest.mark.parametrize("noise", ["lowrank", "full"])
def test_population_decode_loop_selects_and_scatters_no_cache(noise):
    mcfg, cfg, state, tokens, mask = _setup(noise)
    pop = population_fn(lm_evaluator(mcfg, 4, cfg), cfg, 2)
    hlo = pop.lower(state, member_ids(4), tokens, mask, jax.random.key(2))["population"].compile().as_text()
    assert "while" in hlo
    assert cache_rewrites(hlo, 8 + 4, mcfg.head_dim) == []
    # and the members' tokens are those each member decodes alone
    out = pop(state, member_ids(4), tokens, mask, jax.random.key(2))
    ev = lm_evaluator(mcfg, 4, cfg)
    for m in range(4):
        alone = member_output(ev, state, m, cfg, tokens, mask, jax.random.key(2))
        np.testing.assert_array_equal(np.asarray(out.tokens[m]), np.asarray(alone.tokens))


def test_without_the_member_axis_vmap_selects_the_caches():
    """The control: the same vmapped generation with a per-member loop condition selects the caches."""
    mcfg, cfg, state, tokens, mask = _setup("full")

    def member(m, axis):
        params = jax.tree.map(lambda w: w * (1 + 0.01 * m), state.params)
        return generate(params, mcfg, tokens, mask, jax.random.key(0), 4, member_axis=axis).tokens

    for axis, expect_bad in ((None, True), (MEMBER_AXIS, False)):
        hlo = jax.jit(lambda ms: map_members(lambda m: member(m, axis), ms, 2)).lower(np.arange(4)).compile().as_text()
        assert bool(cache_rewrites(hlo, 8 + 4, mcfg.head_dim)) == expect_bad, axis


def test_map_members_runs_uneven_populations_in_equal_padded_chunks():
    xs = np.arange(7, dtype=np.float32)
    f = lambda x: x * 2 + jax.lax.psum(1, MEMBER_AXIS)  # noqa: E731  (chunk size: 3 in every chunk, padding included)
    np.testing.assert_array_equal(np.asarray(map_members(f, xs, 3)), xs * 2 + 3)
    np.testing.assert_array_equal(np.asarray(map_members(lambda x: x * 2, xs, 4)), xs * 2)  # 2 chunks of 4


@pytest.mark.parametrize("param_filter", [None, "^layers/"])
def test_dense_members_are_formed_per_leaf_shape_outside_the_decode_program(param_filter):
    """Full-rank members' θ + σε come from one small program per perturbed leaf shape; the decode program
    draws no noise (it compiled for 146 s on an H100 when it did) and shares the unperturbed leaves;
    every member's tokens are those it decodes alone."""
    mcfg, _, _, tokens, mask = _setup("full")
    cfg = ESConfig(population_size=4, noise="full", sigma=0.01, param_filter=param_filter)
    state = init_state(init_params(mcfg, jax.random.key(0)), jax.random.key(1), cfg)
    ev = lm_evaluator(mcfg, 4, cfg)
    pop = population_fn(ev, cfg, 3)  # chunks of 3 and 1
    programs = pop.lower(state, member_ids(4), tokens, mask, jax.random.key(2))
    perturbed = {x.shape for x, s in zip(jax.tree.leaves(state.params), leaf_selection(state.params, param_filter)) if s}
    assert sorted(k for k in programs if k.startswith("member params")) == sorted(f"member params {s}" for s in perturbed)
    text = programs["population"].as_text()
    assert "erf_inv" not in text  # Gaussian draws (the sampling keys' fold_in/split are all it keeps)
    assert "erf_inv" in programs[f"member params {sorted(perturbed)[0]}"].as_text()
    out = pop(state, member_ids(4), tokens, mask, jax.random.key(2))
    for m in range(4):
        alone = member_output(ev, state, m, cfg, tokens, mask, jax.random.key(2))
        np.testing.assert_array_equal(np.asarray(out.tokens[m]), np.asarray(alone.tokens))


def test_lowrank_members_read_the_joined_weights_and_decode_as_the_parameter_layout():
    """Low-rank members share the decoding layout (esjax.models.decoder.decoding_layout: [wq | wk | wv] and
    [W_gate | W_up] joined once per population call by its own program, so a decode loop has no dots for
    XLA to merge by concatenating their weights every step, as the H100 profiles showed); each member's
    tokens equal its decode on the parameter layout (master weights + its low-rank delta), and the layouts'
    logits agree."""
    from esjax.es.step import member_perturbation
    from esjax.models.decoder import decoding_layout, forward
    from esjax.models.precision import cast_params, decoding_params

    mcfg, cfg, state, tokens, mask = _setup("lowrank")
    D, F = mcfg.hidden_size, mcfg.intermediate_size
    qkv = (mcfg.num_heads + 2 * mcfg.num_kv_heads) * mcfg.head_dim
    pop = population_fn(lm_evaluator(mcfg, 4, cfg), cfg, 2)
    args = pop.lower(state, member_ids(4), tokens, mask, jax.random.key(2))["population"].args_info[0][0]
    layer = {k: tuple(a.shape) for k, a in args["layers"][0].items()}
    assert layer["w_qkv"] == (D, qkv) and layer["w_gate_up"] == (D, 2 * F), layer  # one weight per input
    assert not {"wq", "wk", "wv", "w_gate", "w_up"} & set(layer), layer
    out = pop(state, member_ids(4), tokens, mask, jax.random.key(2))
    for m in range(4):
        delta = member_perturbation(state.params, state.key, state.iteration, m, cfg, cfg.sigma)
        alone = generate(state.params, mcfg, tokens, mask, jax.random.key(2), 4, delta=delta)
        np.testing.assert_array_equal(np.asarray(out.tokens[m]), np.asarray(alone.tokens))
    # the layouts are one function (fp32: equal; bf16: within bf16 rounding), traced or not
    pos = np.broadcast_to(np.arange(8), (2, 8))
    ref = forward(state.params, mcfg, tokens, pos, mask, delta=delta)[0]
    np.testing.assert_allclose(forward(decoding_params(state.params, "float32"), mcfg, tokens, pos, mask, delta=delta)[0],
                               ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(forward(decoding_layout(state.params), mcfg, tokens, pos, mask, delta=delta)[0], ref,
                               rtol=1e-6, atol=1e-6)
    bf = mcfg.replace(compute_dtype="bfloat16")
    np.testing.assert_allclose(forward(decoding_params(state.params, "bfloat16"), bf, tokens, pos, mask, delta=delta)[0],
                               forward(cast_params(state.params, "bfloat16"), bf, tokens, pos, mask, delta=delta)[0],
                               atol=2e-2)
    shared = decoding_params(state.params, "float32")
    assert shared["embed"] is state.params["embed"]  # fp32: only the joined weights are new
    for name, shape in (("w_gate", (D, F)), ("wk", (D, mcfg.num_kv_heads * mcfg.head_dim))):
        with pytest.raises(ValueError, match=f"dense delta of .*{name}"):
            dense = {"layers": [{name: np.zeros(shape, np.float32)}] * mcfg.num_layers}
            forward(shared, mcfg, tokens, pos, mask, delta=dense)


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-qwen2", "tiny-random-qwen3"])
def test_the_decoding_layout_is_the_same_function(name):
    """decoding_layout joins [wq | wk | wv] and [w_gate | w_up] (q/k/v biases and Qwen3's q/k norms stay
    separate): logits and a generation with low-rank deltas on every joined part and dense deltas on the
    vectors are those of the parameter layout, on every architecture."""
    from esjax.es.noise import lowrank_noise
    from esjax.models.decoder import JOINED_WEIGHTS, decoding_layout, forward

    mcfg = model_config(name).replace(eos_token_ids=())
    params = init_params(mcfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    delta = lowrank_noise(params, jax.random.key(3), 2, 0.1)  # rank-2 factors per matrix, dense per vector
    joined = decoding_layout(params)
    parts = {p for _, ps in JOINED_WEIGHTS for p in ps}
    assert not parts & set(joined["layers"][0]) and {"w_qkv", "w_gate_up"} <= set(joined["layers"][0])
    tokens = rng.integers(3, mcfg.vocab_size, (2, 8)).astype(np.int32)
    mask, pos = np.ones((2, 8), bool), np.broadcast_to(np.arange(8), (2, 8))
    ref = forward(params, mcfg, tokens, pos, mask, delta=delta)[0]
    np.testing.assert_allclose(forward(joined, mcfg, tokens, pos, mask, delta=delta)[0], ref, rtol=1e-5, atol=1e-5)
    assert np.abs(ref - forward(params, mcfg, tokens, pos, mask)[0]).max() > 1e-2  # the deltas matter
    a, b = (generate(p, mcfg, tokens, mask, jax.random.key(1), 6, delta=delta) for p in (joined, params))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


@pytest.mark.parametrize("noise", ["lowrank", "full"])
def test_uneven_chunks_trace_the_decoder_once(noise):
    """5 members in chunks of at most 2 run as 3 chunks of 2 (the last padded with the last member, its
    output dropped), so the decoder is traced (compiled) once: a remainder chunk of 1 traced it again."""
    import dataclasses

    from esjax.es.population import balanced_chunks

    assert balanced_chunks(30, 4) == (8, 4) and balanced_chunks(30, 8) == (4, 8) and balanced_chunks(5, 2) == (3, 2)
    assert balanced_chunks(10, 8) == (2, 5) and balanced_chunks(3, 8) == (1, 3) and balanced_chunks(4, 0) == (4, 1)
    mcfg, cfg, state, tokens, mask = _setup(noise)
    cfg = dataclasses.replace(cfg, population_size=5)
    ev, traces = lm_evaluator(mcfg, 4, cfg), []

    def counted(*a):
        traces.append(1)
        return ev(*a)

    out = population_fn(counted, cfg, 2)(state, member_ids(5), tokens, mask, jax.random.key(2))
    assert len(traces) == 1 and out.tokens.shape[0] == 5
    for m in range(5):
        alone = member_output(ev, state, m, cfg, tokens, mask, jax.random.key(2))
        np.testing.assert_array_equal(np.asarray(out.tokens[m]), np.asarray(alone.tokens))


@pytest.mark.parametrize("setting", [{"steps_per_loop": 3}, {"cache_block": 2}])
def test_population_decode_loop_settings_decode_the_same_tokens(setting):
    """``lm_evaluator(..., steps_per_loop=3)`` (one loop condition per 3 tokens for the chunk) and
    ``cache_block=2`` (a loop per segment, each reading its own cache size) under the members' vmap: the
    tokens and lengths of the plain loop, log-probs to float rounding, and no cache of any size is selected
    or scattered. The model config's ``decode_*`` setting (what a RunConfig sets) makes the same program."""
    mcfg, cfg, state, tokens, mask = _setup("lowrank")
    mcfg = mcfg.replace(eos_token_ids=(7, 11, 13))  # rows stop at different steps
    cfg = dataclasses.replace(cfg, kl_penalty=0.1)  # a fitness that reads the members' log-probs
    outs = []
    for kw in ({}, setting):
        pop = population_fn(lm_evaluator(mcfg, 5, cfg, **kw), cfg, 2)
        outs.append(pop(state, member_ids(4), tokens, mask, jax.random.key(2)))
    lowered = lambda p: p.lower(state, member_ids(4), tokens, mask, jax.random.key(2))["population"]  # noqa: E731
    from_cfg = mcfg.replace(**{"decode_" + k: v for k, v in setting.items()})
    assert lowered(population_fn(lm_evaluator(from_cfg, 5, cfg), cfg, 2)).as_text() == lowered(pop).as_text()
    hlo = lowered(pop).compile().as_text()
    for slots in ((8 + 2, 8 + 4, 8 + 5) if "cache_block" in setting else (8 + 5,)):
        assert f"[2,2,{mcfg.num_kv_heads},{slots},{mcfg.head_dim}]" in hlo, slots  # (members, rows, K, slots, Dh)
        assert cache_rewrites(hlo, slots, mcfg.head_dim) == []
    np.testing.assert_array_equal(np.asarray(outs[0].tokens), np.asarray(outs[1].tokens))
    np.testing.assert_array_equal(np.asarray(outs[0].lengths), np.asarray(outs[1].lengths))
    np.testing.assert_allclose(np.asarray(outs[0].logprobs), np.asarray(outs[1].logprobs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("noise", ["lowrank", "full"])
def test_members_skip_the_log_softmax_when_the_fitness_reads_no_log_probs(noise):
    """Greedy members without a KL term: the population program computes no log-softmax over the
    vocabulary (no ``log`` in it; with ``kl_penalty`` it has one, the control) and returns no log-probs;
    tokens and lengths are those of the members that record them."""
    mcfg, cfg, state, tokens, mask = _setup(noise)
    mcfg = mcfg.replace(eos_token_ids=(7, 11, 13))
    args = (state, member_ids(4), tokens, mask, jax.random.key(2))
    outs, logs = {}, {}
    for kl in (0.0, 0.1):
        c = dataclasses.replace(cfg, kl_penalty=kl)
        pop = population_fn(lm_evaluator(mcfg, 5, c), c, 2)
        outs[kl] = pop(*args)
        logs[kl] = len(re.findall(r"stablehlo\.log\b", pop.lower(*args)["population"].as_text()))
    assert logs[0.0] == 0 and logs[0.1] > 0, logs
    assert outs[0.0].logprobs is None and outs[0.1].logprobs.shape == outs[0.1].tokens.shape
    np.testing.assert_array_equal(np.asarray(outs[0.0].tokens), np.asarray(outs[0.1].tokens))
    np.testing.assert_array_equal(np.asarray(outs[0.0].lengths), np.asarray(outs[0.1].lengths))
