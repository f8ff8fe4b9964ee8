"""One GRPO iteration on a language model and a task: G samples per prompt → rewards → group advantages
→ μ pure ``grpo_step`` updates. Shares the sampler and rollout helpers with ES.

Completions are sampled at ``cfg.temperature`` (top-p ``cfg.top_p``) and scored, for the old log-probs
as in the learner, by log softmax(logits / T) (:func:`esjax.grpo.step.completion_logprobs`)."""
from __future__ import annotations

import functools
import time
import warnings

import jax
import numpy as np

from esjax.compaction import compaction_choice
from esjax.cost import pass_counts
from esjax.grpo.losses import group_advantages
from esjax.grpo.step import GRPOConfig, check_reference, grpo_step, make_completion_logprobs, scored_from
from esjax.parallel import batch_sharding, put_global, replicated, to_host
from esjax.rollout import decode, prompt_batch, rollout_metrics, score, sequence_batch
from esjax.sampling import SamplingConfig, make_generate


def learner_batch(params, model_cfg, cfg: GRPOConfig, pb, gen_tokens, lengths, advantages, put=lambda x: x) -> dict:
    """The batch ``grpo_step`` trains on, from a rollout of ``pb`` (a :class:`esjax.rollout.PromptBatch`
    of width P): tokens, attn_mask (B, P + M), loss_mask (B, M) over the completion predictions only (no
    logits over the prompt), advantages (B,), and, when the step makes more than one optimizer update,
    old_logp (B, M): the tempered log-probs of the sampled tokens under ``params`` (the rollout policy),
    scored like the learner scores them so that ρ ≡ 1 on-policy. ``put`` places each array (sharding)."""
    seq = sequence_batch(pb.tokens, pb.mask, gen_tokens, lengths, completion_only=True)  # no logits over the prompt
    batch = {k: put(v) for k, v in seq.items()}
    batch["advantages"] = put(np.asarray(advantages, np.float32))
    if cfg.updates_per_step > 1:  # later updates are off-policy: ratios against the rollout policy
        old_logp = make_completion_logprobs(model_cfg, scored_from(seq), cfg.temperature, pb.prefix_len, pb.group,
                                            cfg.micro_batch_size)
        batch["old_logp"] = old_logp(params, batch["tokens"], batch["attn_mask"])
    return batch


def learner_metrics(ms) -> dict:
    """The step's learner metrics: each the mean over the optimizer updates that were applied (a skipped,
    non-finite update's loss and gradient norm would stop the run, whose params it never touched), and
    ``skipped_nonfinite`` the fraction skipped. Every update skipped: the means of all, non-finite, so the
    run stops there (esjax.runs: FINITE_KEYS) — a step that cannot move at all is a divergence."""
    applied = [m for m in ms if not float(m["skipped_nonfinite"])] or ms
    out = {k: float(np.mean([m[k] for m in applied])) for k in ms[0]}
    out["skipped_nonfinite"] = float(np.mean([float(m["skipped_nonfinite"]) for m in ms]))
    return out


def make_grpo_iteration(model_cfg, tokenizer, task, cfg: GRPOConfig, max_new_tokens: int, ref_params=None,
                        mesh=None, donate_state: bool = False):
    """``iterate(state, examples) -> (state, metrics)``; ``ref_params`` enables KL (penalty if β > 0,
    tracked otherwise). With a mesh the rollout batch is sharded over all devices. With
    ``model_cfg.decode_compaction`` > 0 (and one device) the rollouts drop rows that stopped at cache-block
    boundaries as the previous step's lengths predict it pays (:func:`esjax.compaction.compaction_choice`;
    the same draws either way), logged as ``decode_compaction``.

    Metrics beside the rollout's: the learner's (``loss``, ``clip_frac``, ``grad_norm``, ``update_norm``,
    ``skipped_nonfinite`` the fraction of the step's updates not applied for a non-finite gradient (also
    warned), ``kl`` only with a reference model), ``reward_std`` / ``_max`` / ``_min`` over the step's single
    completions (ES logs its members' ``fitness_*``), ``zero_variance`` the fraction of groups whose
    completions all scored the same (no advantage, no gradient).

    ``donate_state``: each update writes the new params and optimizer moments into the old state's buffers
    (``jax.jit`` donation), so ``iterate`` *consumes* the state passed in (its arrays are deleted; the
    state must not share arrays with anything still in use, e.g. the reference model). Saves one copy of
    the params and both moments at the update's peak (SmolLM2-135M fp32: 0.8 GB by XLA's memory
    analysis). Off by default, so that ``iterate`` stays a function a notebook can call twice on one state;
    :func:`esjax.runs.run_method`, which owns its state, turns it on."""
    check_reference(cfg, ref_params)  # before any rollout
    sampling = SamplingConfig(cfg.temperature, 0, cfg.top_p)
    step = jax.jit(functools.partial(grpo_step, model_cfg=model_cfg, cfg=cfg),
                   static_argnames=("prefix_len", "group"), donate_argnames=("state",) if donate_state else ())
    if mesh is not None and cfg.batch_size % mesh.size:
        raise ValueError(f"GRPO batch of {cfg.batch_size} sequences (group_size × prompts_per_step) must divide "
                         f"evenly over the {mesh.size} devices of the mesh (or set use_mesh=false)")
    put = (lambda x: x) if mesh is None else (lambda x: put_global(x, batch_sharding(mesh)))
    if mesh is not None and ref_params is not None:
        ref_params = put_global(ref_params, replicated(mesh))
    # EOS compaction of the rollouts, chosen per step from the previous step's lengths (the rows' draws do
    # not depend on it); not across devices, where moving rows would move their caches between devices
    halvings = model_cfg.decode_compaction if mesh is None or mesh.size == 1 else 0
    last_lengths = []

    def iterate(state, examples):
        if len(examples) != cfg.prompts_per_step:
            raise ValueError(f"expected {cfg.prompts_per_step} prompts per step, got {len(examples)}")
        pb = prompt_batch(tokenizer, task, examples, model_cfg.pad_token_id, repeat=cfg.group_size)
        t0 = time.perf_counter()
        key = jax.random.fold_in(state.key, state.step)
        compaction = compaction_choice(last_lengths[-1] if last_lengths else None, *pb.tokens.shape, model_cfg,
                                       max_new_tokens, halvings)
        gen = make_generate(model_cfg, max_new_tokens, sampling, pb.prefix_len, pb.group,  # the learner scores
                            logprobs=False, compaction=compaction)  # its own log-probs
        out = to_host(gen(state.params, put(pb.tokens), put(pb.mask), key))  # generate casts them once
        last_lengths[:] = [out.lengths]
        t1 = time.perf_counter()
        rewards, correct = score(task, decode(tokenizer, out.tokens, out.lengths), pb.examples)
        groups = rewards.reshape(cfg.prompts_per_step, cfg.group_size)
        adv = np.asarray(group_advantages(groups, cfg.scale_rewards, cfg.std_ddof, cfg.adv_eps)).reshape(-1)
        batch = learner_batch(state.params, model_cfg, cfg, pb, out.tokens, out.lengths, adv, put)
        t2 = time.perf_counter()
        mb = (cfg.mini_batch_prompts or cfg.prompts_per_step) * cfg.group_size
        ms = []
        for _ in range(cfg.num_inner_updates):
            for s in range(0, len(adv), mb):
                state, m = step(state, {k: v[s:s + mb] for k, v in batch.items()}, ref_params,
                                prefix_len=pb.prefix_len, group=pb.group)
                ms.append(m)
        jax.block_until_ready(state.params)
        t3 = time.perf_counter()
        metrics = learner_metrics(ms)
        metrics["optimizer_updates"] = len(ms)
        if metrics["skipped_nonfinite"]:
            warnings.warn(f"GRPO step {int(state.step)}: {metrics['skipped_nonfinite'] * len(ms):.0f} of {len(ms)} "
                          f"optimizer updates had a non-finite gradient and were not applied (metrics: "
                          f"skipped_nonfinite)", RuntimeWarning)
        metrics["decode_compaction"] = compaction
        metrics.update(rollout_metrics(rewards, correct, out.lengths, t0, t1, t2, t3),
                       reward_std=float(rewards.std()), reward_max=float(rewards.max()),
                       reward_min=float(rewards.min()), zero_variance=float((groups.std(1) == 0).mean()),
                       **pass_counts("grpo", rewards.size, cfg, reference=ref_params is not None))
        return state, metrics

    iterate.decode_lengths = last_lengths  # the last call's lengths, which a run checkpoints (esjax.runs)
    return iterate
