"""GRPO: loss against a hand computation and a numpy reference of TRL's formula (both advantage signs),
finite-difference gradient, masking, sharded == single-device step, and learning on a toy reward."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.grpo.losses import LOSS_AGGREGATION, group_advantages, kl_k3, kl_low_var, per_token_loss
from esjax.grpo.step import GRPOConfig, grpo_loss, grpo_step, init_state, make_completion_logprobs, scored_from
from esjax.models.config import ModelConfig
from esjax.models.decoder import init_params
from esjax.parallel import batch_sharding, make_mesh, replicated
from jaxprs import sub_jaxprs

TINY = ModelConfig(arch="qwen2", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=4, eos_token_ids=(1,), pad_token_id=0)


def test_group_advantages_hand_computed():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r, "group", std_ddof=1, eps=0.0)
    std1 = np.std([1, 0, 0, 1], ddof=1)
    np.testing.assert_allclose(a[0], (np.array([1, 0, 0, 1]) - 0.5) / std1, rtol=1e-6)
    assert np.all(np.asarray(group_advantages(r, eps=1e-6)[1]) == 0)  # zero-variance group → 0
    np.testing.assert_allclose(group_advantages(r, "none")[0], [0.5, -0.5, -0.5, 0.5])


def trl_reference_loss(logp, old, ref, adv, mask, eps, beta, agg):
    """numpy transcription of TRL's GRPO per-token loss (k3 KL, two-sided token clip)."""
    ratio = np.exp(logp - old)
    l1, l2 = ratio * adv[:, None], np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None]
    per = -np.minimum(l1, l2) + beta * (np.exp(ref - logp) - (ref - logp) - 1)
    if agg == "seq_mean_token_mean":
        return np.mean((per * mask).sum(1) / np.maximum(mask.sum(1), 1))
    if agg == "token_mean":
        return (per * mask).sum() / mask.sum()
    return (per * mask).sum() / (mask.shape[0] * mask.shape[1])


@pytest.mark.parametrize("agg", sorted(LOSS_AGGREGATION))
def test_loss_equals_trl_formula_for_both_advantage_signs(agg):
    rng = np.random.default_rng(0)
    logp, old, ref = (rng.normal(-2, 0.3, (4, 6)).astype(np.float32) for _ in range(3))
    adv = np.array([1.5, -0.7, 0.0, -2.0], np.float32)
    mask = (rng.random((4, 6)) > 0.3).astype(np.float32)
    per, _, _ = per_token_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv),
                               0.2, 0.2, 0.04, "k3")
    ours = float((per * LOSS_AGGREGATION[agg](jnp.asarray(mask))).sum())
    assert ours == pytest.approx(trl_reference_loss(logp, old, ref, adv, mask, 0.2, 0.04, agg), rel=1e-5)


def test_hand_computed_single_token():
    # ρ = e^{0.5} ≈ 1.6487 > 1.2: for A = 1 the clip binds → −1.2; for A = −1 min picks ρA → +1.6487
    per, _, clipped = per_token_loss(jnp.array([[0.0, 0.0]]) + jnp.array([[0.5, 0.5]]), jnp.zeros((1, 2)), None,
                                     jnp.array([1.0]), 0.2, 0.2, 0.0, "k3")
    np.testing.assert_allclose(per, [[-1.2, -1.2]], rtol=1e-6)
    per, _, _ = per_token_loss(jnp.array([[0.5]]), jnp.zeros((1, 1)), None, jnp.array([-1.0]), 0.2, 0.2, 0.0, "k3")
    np.testing.assert_allclose(per, [[np.exp(0.5)]], rtol=1e-6)
    np.testing.assert_allclose(kl_k3(jnp.log(0.5), jnp.log(0.25)), 0.5 - np.log(0.5) - 1, rtol=1e-6)


def _batch(seed=0, B=8, T=10):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, TINY.vocab_size, (B, T)).astype(np.int32)
    attn = np.ones((B, T), bool)
    attn[:, :2] = False  # left padding
    loss_mask = np.zeros((B, T - 1), np.float32)
    loss_mask[:, 5:] = 1.0
    loss_mask[0, 7:] = 0.0  # a short completion
    return {"tokens": jnp.asarray(tokens), "attn_mask": jnp.asarray(attn), "loss_mask": jnp.asarray(loss_mask),
            "advantages": jnp.asarray(rng.normal(size=B).astype(np.float32))}


def test_gradient_matches_finite_differences_and_masked_tokens_do_not_count():
    cfg = GRPOConfig(beta=0.1, loss_aggregation="token_mean")
    params = init_params(TINY, jax.random.key(0), 0.3)
    batch = _batch()
    old = jnp.asarray(np.random.default_rng(1).normal(-3.5, 0.2, (8, 9)).astype(np.float32))
    batch["old_logp"] = old
    ref = jnp.asarray(np.random.default_rng(2).normal(-3.5, 0.2, (8, 9)).astype(np.float32))
    w = LOSS_AGGREGATION[cfg.loss_aggregation](batch["loss_mask"])
    f = lambda p: grpo_loss(p, TINY, batch, w, ref, cfg)[0]  # noqa: E731
    g = jax.grad(f)(params)
    direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape), params)
    h = 1e-3
    plus = f(jax.tree.map(lambda p, d: p + h * d, params, direction))
    minus = f(jax.tree.map(lambda p, d: p - h * d, params, direction))
    fd = (plus - minus) / (2 * h)
    analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    assert float(fd) == pytest.approx(float(analytic), rel=2e-2, abs=1e-4)
    # changing tokens' advantages/old logps where loss_mask = 0 changes nothing
    b2 = dict(batch, old_logp=old.at[:, :5].set(0.0))
    assert float(grpo_loss(params, TINY, b2, w, ref, cfg)[0]) == pytest.approx(float(f(params)), rel=1e-6)


@pytest.mark.parametrize("estimator", ["k3", "low_var_kl"])
def test_padding_whose_log_probs_overflow_exp_changes_no_loss_or_gradient(estimator):
    """Weight-0 positions with log-probs far apart (ρ = e^200, δ = 200): the loss, its gradient and the KL
    metric are those of ordinary padding, all finite (0 · inf made them NaN)."""
    cfg = GRPOConfig(beta=0.1, kl_estimator=estimator, loss_aggregation="token_mean")
    params = init_params(TINY, jax.random.key(0), 0.3)
    batch = _batch()
    off = batch["loss_mask"] == 0
    old = jnp.asarray(np.random.default_rng(1).normal(-3.5, 0.2, (8, 9)).astype(np.float32))
    ref = jnp.asarray(np.random.default_rng(2).normal(-3.5, 0.2, (8, 9)).astype(np.float32))
    w = LOSS_AGGREGATION[cfg.loss_aggregation](batch["loss_mask"])
    f = jax.value_and_grad(lambda p, o, r: grpo_loss(p, TINY, dict(batch, old_logp=o), w, r, cfg), has_aux=True)
    (l0, aux0), g0 = f(params, old, ref)
    for bad_old, bad_ref in ((-200.0, 200.0), (0.0, -jnp.inf)):  # overflowing exp; a reference's −inf padding
        (l1, aux1), g1 = f(params, jnp.where(off, bad_old, old), jnp.where(off, bad_ref, ref))
        assert np.isfinite(float(l1)) and float(l1) == pytest.approx(float(l0), rel=1e-6)
        assert float(aux1["kl_sum"]) == pytest.approx(float(aux0["kl_sum"]), rel=1e-6)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_low_var_kl_is_verls_with_both_clamps_and_its_gradient_stays_finite():
    """verl ``kl_penalty("low_var_kl")``: δ = ref − logp clamped to ±20, e^δ − δ − 1 clamped to ±10."""
    logp = jnp.array([-1.0, -1.0, -1.0, -30.0, -150.0, -1.0])
    ref = jnp.array([-1.2, -0.5, -25.0, -1.0, -1.0, -3.0])
    d = np.clip(np.asarray(ref - logp), -20, 20)
    np.testing.assert_allclose(kl_low_var(logp, ref), np.clip(np.exp(d) - d - 1, -10, 10), rtol=1e-6)
    g = jax.grad(lambda lp: kl_low_var(lp, ref).sum())(logp)  # δ = 149 overflowed exp: its 0-gradient was NaN
    assert np.all(np.isfinite(g)) and float(g[4]) == 0.0 and float(g[2]) == 0.0
    np.testing.assert_allclose(g[0], -(np.exp(-0.2) - 1), rtol=1e-5)


def test_dual_clip_caps_a_negative_advantages_loss_at_c_times_its_size():
    """verl's dual clip (clip_ratio_c = 3): for A < 0 the loss is min(−min(ρA, clip(ρ)A), −3A); A > 0 and
    ratios below c are untouched; past c the token gives no gradient."""
    lp = jnp.array([[2.0, 0.5, 2.0]])  # ρ = e², e^0.5, e² against old = 0
    adv = jnp.array([-1.0])
    loss = lambda lp, a, c: per_token_loss(lp, jnp.zeros((1, 3)), None, a, 0.2, 0.2, 0.0, "k3",  # noqa: E731
                                           clip_ratio_c=c)[0]
    np.testing.assert_allclose(loss(lp, adv, None), [[np.exp(2), np.exp(0.5), np.exp(2)]], rtol=1e-6)
    np.testing.assert_allclose(loss(lp, adv, 3.0), [[3.0, np.exp(0.5), 3.0]], rtol=1e-6)
    np.testing.assert_allclose(loss(lp, -adv, 3.0), loss(lp, -adv, None))  # A > 0: no change
    g = jax.grad(lambda x: loss(x, adv, 3.0).sum())(lp)
    np.testing.assert_allclose(g, [[0.0, np.exp(0.5), 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        GRPOConfig(clip_ratio_c=1.0)


def test_a_non_finite_gradient_is_not_applied_and_is_logged():
    params = init_params(TINY, jax.random.key(0), 0.3)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2)
    st = init_state(params, jax.random.key(0), cfg)
    step = jax.jit(functools.partial(grpo_step, model_cfg=TINY, cfg=cfg))
    batch = _batch()
    ok, m_ok = step(st, batch, None)
    assert float(m_ok["skipped_nonfinite"]) == 0 and float(m_ok["update_norm"]) > 0
    bad, m = step(st, dict(batch, advantages=batch["advantages"].at[3].set(jnp.nan)), None)
    assert float(m["skipped_nonfinite"]) == 1 and not np.isfinite(float(m["grad_norm"]))
    assert int(bad.step) == 1 and float(m["update_norm"]) == 0
    for a, b in zip(jax.tree.leaves((bad.params, bad.opt_state)), jax.tree.leaves((st.params, st.opt_state))):
        np.testing.assert_array_equal(a, b)
    again, _ = step(bad, batch, None)  # the next finite step is the one the skipped step would have preceded
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(ok.params)):
        np.testing.assert_array_equal(a, b)
    # the run's row: means over the applied updates (finite, so the run goes on), the skipped share logged
    from esjax.grpo.trainer import learner_metrics
    row = learner_metrics([m_ok, m, m_ok])
    assert row["skipped_nonfinite"] == pytest.approx(1 / 3) and row["grad_norm"] == pytest.approx(float(m_ok["grad_norm"]))
    assert not np.isfinite(learner_metrics([m])["grad_norm"])  # nothing applied: non-finite, the run stops


def test_micro_batching_gives_the_same_update():
    params = init_params(TINY, jax.random.key(0), 0.3)
    ref = init_params(TINY, jax.random.key(1), 0.3)  # another model: a KL (and its gradient) that is not 0
    batch = _batch()
    out = []
    for mb in (0, 2):
        cfg = GRPOConfig(group_size=4, prompts_per_step=2, micro_batch_size=mb, learning_rate=1e-2, beta=0.05,
                         adam_eps=1.0)  # update ∝ g, not sign(g): compares gradients
        st = init_state(params, jax.random.key(0), cfg)
        st, m = jax.jit(functools.partial(grpo_step, model_cfg=TINY, cfg=cfg))(st, batch, ref)
        out.append((st.params, m))
    assert float(out[0][1]["kl"]) > 0.01
    for a, b in zip(jax.tree.leaves(out[0][0]), jax.tree.leaves(out[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(out[0][1]["loss"]) == pytest.approx(float(out[1][1]["loss"]), rel=1e-5)
    assert float(out[0][1]["kl"]) == pytest.approx(float(out[1][1]["kl"]), rel=1e-5)  # the reference's scoring


def _vocab_shapes(jaxpr, vocab):
    """Shapes of every (..., V) array of rank ≥ 3 a traced program makes (logits and their log-softmax)."""
    shapes = set()
    for eqn in jaxpr.eqns:
        shapes |= {tuple(v.aval.shape) for v in eqn.outvars  # (a (1, 1, V) vocabulary iota holds no logits)
                   if hasattr(v.aval, "shape") and len(v.aval.shape) >= 3 and v.aval.shape[-1] == vocab
                   and max(v.aval.shape[:-1]) > 1}
        for sub in sub_jaxprs(eqn):
            shapes |= _vocab_shapes(sub, vocab)
    return shapes


def test_the_learner_holds_one_micro_batch_of_logits_the_reference_scoring_and_old_logp_included():
    """micro_batch_size bounds the learner's memory: the policy's logits, the reference model's (the KL,
    tracked by default) and the rollout policy's old log-probs are each made one micro-batch at a time
    (2 rows of 8 here), never as a (batch, L, V) array; and old_logp scored so equals the whole batch's."""
    model = TINY.replace(vocab_size=37)  # no other dimension of the model is 37
    params = init_params(model, jax.random.key(0), 0.3)
    batch = _batch()
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, micro_batch_size=2, beta=0.05)
    st = init_state(params, jax.random.key(0), cfg)
    step = jax.make_jaxpr(functools.partial(grpo_step, model_cfg=model, cfg=cfg))(st, batch, params)
    shapes = _vocab_shapes(step.jaxpr, model.vocab_size)
    assert shapes and {s[0] for s in shapes} == {2}, shapes
    start = scored_from(batch)
    whole = make_completion_logprobs(model, start, 0.7, 0, 4)
    micro = make_completion_logprobs(model, start, 0.7, 0, 4, 2)
    shapes = _vocab_shapes(jax.make_jaxpr(micro)(params, batch["tokens"], batch["attn_mask"]).jaxpr, model.vocab_size)
    assert shapes and {s[0] for s in shapes} == {2}, shapes
    np.testing.assert_allclose(micro(params, batch["tokens"], batch["attn_mask"]),
                               whole(params, batch["tokens"], batch["attn_mask"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_scoring_only_the_completion_gives_the_same_update(aggregation):
    """A loss mask over the last L predictions skips the prompt's vocabulary projection, same step, for
    every loss aggregation (Dr. GRPO's normaliser is the completion budget, not the mask's width)."""
    params = init_params(TINY, jax.random.key(0), 0.3)
    full = _batch()
    short = dict(full, loss_mask=full["loss_mask"][:, 5:])  # the prompt ends at position 5
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2, beta=0.05, adam_eps=1.0,
                     loss_aggregation=aggregation)
    step = jax.jit(functools.partial(grpo_step, model_cfg=TINY, cfg=cfg))
    (a, ma), (b, mb) = (step(init_state(params, jax.random.key(0), cfg), x, params) for x in (full, short))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5) and float(ma["kl"]) == pytest.approx(float(mb["kl"]), rel=1e-5)



@pytest.mark.parametrize("micro,group", [(0, 1), (4, 1), (0, 4), (2, 4)])
def test_shared_prompt_prefix_run_once_gives_the_same_update(micro, group):
    """[shared prefix | padding | rest] rows: the prefix run once at batch 1, and with ``group`` the rest of
    each group's prompt once per group (gradients summed over the rows through the repeated keys/values;
    a micro-batch of 2 shares within pairs), gives the update of scoring every row in full."""
    params = init_params(TINY, jax.random.key(0), 0.3)
    full = _batch()
    tokens = np.array(full["tokens"])
    tokens[:, :3] = tokens[0, :3]
    tokens[:, :5] = np.repeat(tokens[::4, :5], 4, 0)  # each group of 4 rows: one prompt (columns < 5)
    attn = np.ones(tokens.shape, bool)
    attn[:4, 3:5] = False  # padding between the prefix and the rest of the first group's prompt
    batch = dict(full, tokens=jnp.asarray(tokens), attn_mask=jnp.asarray(attn), loss_mask=full["loss_mask"][:, 5:])
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2, beta=0.05, adam_eps=1.0,
                     micro_batch_size=micro)
    step = jax.jit(functools.partial(grpo_step, model_cfg=TINY, cfg=cfg), static_argnames=("prefix_len", "group"))
    (a, ma), (b, mb) = (step(init_state(params, jax.random.key(0), cfg), batch, params, prefix_len=n, group=g)
                        for n, g in ((0, 1), (3, group)))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5) and float(ma["kl"]) == pytest.approx(float(mb["kl"]), rel=1e-5)
    assert float(ma["grad_norm"]) == pytest.approx(float(mb["grad_norm"]), rel=1e-5) and float(ma["grad_norm"]) > 0


@pytest.mark.parametrize("micro", [0, 4])
def test_sharded_step_equals_single_device_step(micro):
    params = init_params(TINY, jax.random.key(0), 0.3)
    ref = init_params(TINY, jax.random.key(1), 0.3)  # a KL that is not 0
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2, beta=0.05, adam_eps=1.0,
                     micro_batch_size=micro)
    batch = _batch()
    step = functools.partial(grpo_step, model_cfg=TINY, cfg=cfg)
    single, m1 = jax.jit(step)(init_state(params, jax.random.key(0), cfg), batch, ref)
    mesh = make_mesh()
    rep, shard = replicated(mesh), batch_sharding(mesh)
    st = jax.device_put(init_state(params, jax.random.key(0), cfg), rep)
    sb = jax.device_put(batch, shard)
    multi, m8 = jax.jit(step)(st, sb, jax.device_put(ref, rep))
    assert float(m1["kl"]) > 0.01
    assert len(sb["tokens"].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(m1["kl"]) == pytest.approx(float(m8["kl"]), rel=1e-4, abs=1e-7)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="kl_estimator"):
        GRPOConfig(kl_estimator="k9")
    with pytest.raises(ValueError, match="loss_aggregation"):
        GRPOConfig(loss_aggregation="mean")
    with pytest.raises(ValueError, match="micro_batch_size"):
        GRPOConfig(group_size=4, prompts_per_step=2, micro_batch_size=3)
    # the last, smaller mini-batch (3 prompts in 2 + 1) must split into micro-batches too
    GRPOConfig(group_size=2, prompts_per_step=4, mini_batch_prompts=2, micro_batch_size=4)
    with pytest.raises(ValueError, match=r"micro_batch_size 4 must divide the \(mini-\)batch of 2 sequences \(1 prompts"):
        GRPOConfig(group_size=2, prompts_per_step=3, mini_batch_prompts=2, micro_batch_size=4)
    with pytest.raises(ValueError, match="a linear schedule needs warmup_steps < total_steps, got 10 >= 5"):
        GRPOConfig(lr_schedule="linear", total_steps=5, warmup_steps=10)


def test_a_warmup_ramps_a_constant_learning_rate_too_and_a_kl_penalty_needs_its_reference():
    """``warmup_steps`` with the constant schedule: 0 → lr over the warmup, then lr (it used to be read by
    the linear schedule only, and a constant run took full steps from the first update). β > 0 without a
    reference model is an error (its KL term would silently be 0: the β = 0 update)."""
    from esjax.grpo.step import make_optimizer
    from esjax.grpo.trainer import make_grpo_iteration

    p = {"w": jnp.ones(3)}
    g = {"w": jnp.ones(3)}
    for warmup, want in ((0, [1e-3, 1e-3, 1e-3]), (2, [0.0, 5e-4, 1e-3])):
        tx = make_optimizer(GRPOConfig(learning_rate=1e-3, warmup_steps=warmup, max_grad_norm=1e9))
        s, steps = tx.init(p), []
        for _ in range(3):
            u, s = tx.update(g, s, p)
            steps.append(-float(u["w"][0]))
        np.testing.assert_allclose(steps, want, rtol=1e-4, atol=1e-12)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, beta=0.5)
    params = init_params(TINY, jax.random.key(0), 0.3)
    with pytest.raises(ValueError, match=r"GRPOConfig.beta=0.5 penalises the KL to a reference model, but no ref_params"):
        grpo_step(init_state(params, jax.random.key(0), cfg), _batch(), None, TINY, cfg)
    with pytest.raises(ValueError, match=r"GRPOConfig.beta=0.5 penalises the KL to a reference model, but no ref_params"):
        make_grpo_iteration(TINY, None, None, cfg, 4)


def test_no_reference_model_logs_no_kl_and_a_short_linear_schedule_is_announced(tmp_path):
    """Without a reference model the step reports no ``kl`` (not a 0 that reads as "no drift"); a run whose
    linear schedule ends before its last update says so before it starts."""
    from esjax import runs
    from esjax.config import build_config
    params = init_params(TINY, jax.random.key(0), 0.3)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2)
    step = jax.jit(functools.partial(grpo_step, model_cfg=TINY, cfg=cfg))
    _, m = step(init_state(params, jax.random.key(0), cfg), _batch(), None)
    assert "kl" not in m and {"loss", "clip_frac", "grad_norm", "update_norm"} <= set(m)
    _, m = step(init_state(params, jax.random.key(0), cfg), _batch(), params)
    assert float(m["kl"]) == 0.0  # the reference is the policy itself
    said = []
    rc = build_config("tiny", ["grpo_steps=6", "grpo.lr_schedule=linear", "grpo.total_steps=4", "grpo.num_inner_updates=2"])
    runs.preflight(rc, str(tmp_path), ("grpo",), said.append)
    assert any("decays to 0 over grpo.total_steps=4 optimizer updates and the run makes 12" in s and
               "last 8 update(s) have learning rate 0" in s for s in said), said
    said.clear()
    runs.preflight(build_config("tiny", ["grpo_steps=6", "grpo.lr_schedule=linear", "grpo.total_steps=12",
                                         "grpo.num_inner_updates=2"]), str(tmp_path), ("grpo",), said.append)
    assert not any("learning rate 0" in s for s in said), said


def test_tempered_sampling_is_scored_as_sampled_and_kl_stays_untempered():
    """At T = 0.6 the rollout's old log-probs are log softmax(z / T) of the sampled tokens (TRL's and verl's
    convention), the learner's ratio is 1 on-policy, its policy gradient is that of the tempered
    log-probs, and the KL term compares the untempered policy with the untempered reference."""
    from esjax.grpo.step import completion_logprobs
    from esjax.grpo.trainer import learner_batch
    from esjax.models.decoder import logits_from
    from esjax.rollout import padded_batch
    from esjax.sampling import SamplingConfig, make_generate

    T, G = 0.6, 4
    cfg = GRPOConfig(group_size=G, prompts_per_step=2, mini_batch_prompts=1, temperature=T, beta=0.1)
    assert cfg.updates_per_step == 2  # so the rollout scores old_logp
    params = init_params(TINY, jax.random.key(0), 0.5)
    ref = init_params(TINY, jax.random.key(1), 0.5)
    rng = np.random.default_rng(0)
    pb = padded_batch([list(rng.integers(2, 32, n)) for n in (5, 9)], [None, None], TINY.pad_token_id, repeat=G)
    gen = make_generate(TINY, 6, SamplingConfig(T), pb.prefix_len, pb.group)(params, pb.tokens, pb.mask,
                                                                              jax.random.key(2))
    adv = np.asarray(group_advantages(rng.normal(size=(2, G)))).reshape(-1)
    batch = learner_batch(params, TINY, cfg, pb, gen.tokens, gen.lengths, adv)
    P, m = pb.tokens.shape[1], np.asarray(batch["loss_mask"])
    assert m.sum() > 10
    z = logits_from(params, TINY, batch["tokens"], batch["attn_mask"], P - 1)[:, :-1]
    pick = lambda lp: np.asarray(jnp.take_along_axis(lp, batch["tokens"][:, P:, None], -1)[..., 0]) * m  # noqa: E731
    tempered, untempered = pick(jax.nn.log_softmax(z / T)), pick(jax.nn.log_softmax(z))
    assert np.abs(tempered - untempered).max() > 0.05  # the two conventions differ here
    np.testing.assert_allclose(np.asarray(batch["old_logp"]) * m, tempered, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gen.logprobs) * m, untempered, atol=1e-5)  # the sampler's: untempered
    # the learner scores the same numbers: ρ = 1 before the first update
    learner = np.asarray(completion_logprobs(params, TINY, batch["tokens"], batch["attn_mask"], P, T,
                                             pb.prefix_len, pb.group))
    np.testing.assert_allclose(np.exp(learner - np.asarray(batch["old_logp"])) * m, m, atol=1e-5)
    # loss and gradient: clipped surrogate on the tempered log-probs, k3 KL on the untempered ones
    w = LOSS_AGGREGATION[cfg.loss_aggregation](batch["loss_mask"])
    ref_logp = pick(jax.nn.log_softmax(logits_from(ref, TINY, batch["tokens"], batch["attn_mask"], P - 1)[:, :-1]))
    (loss, aux), g = jax.value_and_grad(grpo_loss, has_aux=True)(params, TINY, batch, w, jnp.asarray(ref_logp), cfg)

    def expected(p):
        zp = logits_from(p, TINY, batch["tokens"], batch["attn_mask"], P - 1)[:, :-1]
        lp_t = jnp.take_along_axis(jax.nn.log_softmax(zp / T), batch["tokens"][:, P:, None], -1)[..., 0]
        lp = jnp.take_along_axis(jax.nn.log_softmax(zp), batch["tokens"][:, P:, None], -1)[..., 0]
        rho = jnp.exp(lp_t - jax.lax.stop_gradient(lp_t))  # on-policy: value 1, gradient ∇ log π^T
        return (w * (-rho * jnp.asarray(adv)[:, None] + cfg.beta * kl_k3(lp, ref_logp))).sum()

    want, g_want = jax.value_and_grad(expected)(params)
    assert float(loss) == pytest.approx(float(want), rel=1e-5, abs=1e-7)
    assert float(aux["kl_sum"]) == pytest.approx(float((np.asarray(kl_k3(untempered, ref_logp)) * m).sum()), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_donating_iteration_equals_the_pure_one_and_consumes_its_state(tokenizer):
    """donate_state=True writes the update into the old state's buffers: same new state and metrics as the
    default (which leaves its input alone), and the state passed in is deleted."""
    from esjax.grpo.trainer import make_grpo_iteration
    from esjax.models.registry import load_model
    from esjax.tasks import get_task

    model = load_model("tiny-random-llama", with_tokenizer=False)
    task = get_task("lowercase")
    exs = task.examples("train", 2)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-3)
    own = lambda s: s.replace(params=jax.tree.map(jnp.copy, s.params))  # noqa: E731  (not the model's arrays)
    start = own(init_state(model.params, jax.random.key(0), cfg))
    given = own(start)
    pure, mp = make_grpo_iteration(model.cfg, tokenizer, task, cfg, 6)(start, exs)
    donated, md = make_grpo_iteration(model.cfg, tokenizer, task, cfg, 6, donate_state=True)(given, exs)
    for a, b in zip(jax.tree.leaves(pure.params), jax.tree.leaves(donated.params)):
        np.testing.assert_array_equal(a, b)
    assert mp["loss"] == md["loss"] and mp["grad_norm"] > 0
    assert all(x.is_deleted() for x in jax.tree.leaves(given.params))
    assert not any(x.is_deleted() for x in jax.tree.leaves(start.params) + jax.tree.leaves(model.params))


def test_rollout_metrics_say_how_full_the_decode_loop_ran():
    """decode_fill = tokens / (rows × the longest row): the loop runs until the last row stops, so rows of
    3, 5, 1 and 5 tokens fill 14 of 20 row-steps."""
    from esjax.rollout import rollout_metrics

    m = rollout_metrics(np.ones(4), np.ones(4, bool), np.array([[3, 5], [1, 5]]), 0.0, 1.0, 2.0, 3.0)
    assert m["tokens"] == 14 and m["completion_length"] == 3.5
    np.testing.assert_allclose(m["decode_fill"], 0.7)
    assert rollout_metrics(np.ones(2), np.ones(2, bool), np.zeros(2, int), 0, 1, 2, 3)["decode_fill"] == 1.0
