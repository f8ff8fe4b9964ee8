"""One ES iteration on a language model and a task: population rollout → rewards → fitness → update.

``make_es_iteration`` compiles the population generator (vmap over members, chunked, optionally sharded
over the mesh's ``pop`` axis) and the update once, and returns ``iterate(state, examples, key)``. Only
token ids come back from the devices; rewards are computed on the host from decoded text.
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from esjax.cost import pass_counts
from esjax.compaction import compaction_choice
from esjax.es.population import auto_chunk_size, balanced_chunks, lm_evaluator, member_ids, population_fn
from esjax.es.schemes import get_scheme
from esjax.es.step import ESConfig, es_update
from esjax.models.decoder import first_scored, make_token_logprobs
from esjax.parallel import POP, to_host
from esjax.rollout import decode, prompt_batch, rollout_metrics, score, sequence_batch


def member_fitness(rewards) -> np.ndarray:
    """(N, B) rewards → (N,) float32 mean reward per member, computed exactly (``math.fsum``, one rounding):
    members whose rewards are the same values in another order get the same fitness. A float32 pairwise
    mean differs in the last bit between such members (0.4675 vs 0.46749997 over 200 of paper 2's
    {0, 0.1, 1.1} rewards), which z-scoring turns into O(1) scores: a random step the seeds' float64 means
    do not take (and the tied-fitness guard of :mod:`esjax.es.shaping` cannot see)."""
    rewards = np.asarray(rewards, np.float64)
    return (np.array([math.fsum(r) for r in rewards]) / rewards.shape[1]).astype(np.float32)


def make_es_iteration(model_cfg, tokenizer, task, cfg: ESConfig, max_new_tokens: int, batch_size: int,
                      mesh=None, base_params=None):
    """``base_params`` (the model before fine-tuning) is the reference of the ``kl_penalty`` fitness term.
    Members decode in the model's compute dtype (``model_cfg.compute_dtype``; the fp32 master weights stay
    the update's) in chunks of ``cfg.chunk_size`` members, or as many as fit (:func:`auto_chunk_size`).
    With ``model_cfg.decode_compaction`` = h > 0 an iteration's members compact their rows at the first h'
    ≤ h cache-block boundaries, h' the one of least predicted cost on the previous iteration's lengths, per
    chunk of members, within the memory cap (:func:`esjax.compaction.compaction_choice`; 0 for a run's
    first iteration); the tokens are the same whatever h' is, barring near-ties of float rounding at another
    batch size (sampled members' too: each row draws with its own key; :func:`esjax.sampling.generate`), and
    each h' is one more compiled population program.

    Metrics beside the rollout's (``reward_mean`` over every completion, lengths, times): ``fitness_std`` /
    ``_max`` / ``_min`` over the N members' fitness (mean reward on the batch, less the ``kl_penalty`` term:
    what the update z-scores; GRPO's ``reward_std`` / ``_max`` / ``_min`` are over single completions),
    ``zero_variance`` 1 when every member scored the same (a zero update)."""
    if cfg.kl_penalty and base_params is None:
        raise ValueError("ESConfig.kl_penalty > 0 needs base_params, the model the KL is measured against")
    if cfg.awd_lambda and base_params is None:
        raise ValueError("ESConfig.awd_lambda > 0 needs base_params, the anchor the weights decay toward")
    shards = 1 if mesh is None else mesh.shape[POP]
    chunk_size = functools.lru_cache(maxsize=None)(
        lambda width: auto_chunk_size(model_cfg, cfg, batch_size, width, max_new_tokens))
    population = functools.lru_cache(maxsize=None)(  # one compiled population per prompt layout and compaction
        lambda prefix_len, width, compaction: population_fn(
            lm_evaluator(model_cfg, max_new_tokens, cfg, prefix_len, compaction=compaction), cfg,
            chunk_size(width), mesh, dtype=model_cfg.dtype))
    last_lengths = []  # the previous iteration's (N, B) lengths: what the next compaction is chosen from
    halvings = model_cfg.decode_compaction
    update = functools.partial(es_update, cfg=cfg,  # per-leaf-shape programs: compiles in seconds at LLM scale
                               anchor=base_params if cfg.awd_lambda else None)
    members = member_ids(cfg.population_size, shards)
    N = cfg.population_size
    dense = get_scheme(cfg.noise).dense  # full-rank members each read their own weights

    def choose_compaction(lengths, prompts, width):  # h' for this iteration, from the previous one's lengths
        per_call = balanced_chunks(len(members) // shards, chunk_size(width))[1]  # members vmapped together
        return compaction_choice(lengths, prompts, width, model_cfg, max_new_tokens, halvings,
                                 instances=per_call, weight_copies=per_call if dense else 1)

    def iterate(state, examples, key):
        pb = prompt_batch(tokenizer, task, examples, model_cfg.pad_token_id)
        t0 = time.perf_counter()
        compaction = choose_compaction(last_lengths[-1] if last_lengths else None, *pb.tokens.shape)
        pop = population(pb.prefix_len, pb.tokens.shape[1], compaction)
        gen = jax.tree.map(lambda x: x[:N], to_host(pop(state, members, pb.tokens, pb.mask, key)))
        last_lengths[:] = [gen.lengths]
        t1 = time.perf_counter()
        texts = decode(tokenizer, gen.tokens, gen.lengths)
        rewards, correct = score(task, texts, pb.examples)
        rewards, correct = rewards.reshape(N, -1), correct.reshape(N, -1)
        fitness = member_fitness(rewards)
        metrics = {"decode_compaction": compaction}
        if cfg.kl_penalty:
            # prompt-major rows (each prompt's N completions consecutive): the prompt runs once per group
            by_prompt = lambda x: np.swapaxes(x, 0, 1).reshape(N * x.shape[1], *x.shape[2:])  # noqa: E731
            seq = sequence_batch(np.repeat(pb.tokens, N, 0), np.repeat(pb.mask, N, 0), by_prompt(gen.tokens),
                                 by_prompt(gen.lengths), completion_only=True)
            start = first_scored(seq["tokens"].shape[1], seq["loss_mask"].shape[1])  # the completion only
            score_completion = make_token_logprobs(model_cfg, start, pb.prefix_len, N)
            base = np.asarray(score_completion(base_params, seq["tokens"], seq["attn_mask"]))
            base = np.swapaxes(base.reshape(-1, N, base.shape[-1]), 0, 1)  # member-major (N, B, L)
            lens = np.maximum(gen.lengths, 1)
            kl = ((gen.logprobs - base) * (np.arange(base.shape[-1]) < gen.lengths[..., None])).sum(-1) / lens
            metrics["member_kl"] = float(kl.mean())
            fitness = fitness - cfg.kl_penalty * kl.mean(1)
        t2 = time.perf_counter()
        state, m = update(state, jnp.asarray(fitness))
        jax.block_until_ready(state.params)
        t3 = time.perf_counter()
        metrics.update({k: float(v) for k, v in m.items()})
        # what rebuilds this update exactly from the previous params (es.replay): the base noise key and fitness
        # and the noise iteration it drew (a sequence's later stages continue the previous stage's state)
        metrics.update(es_key=np.asarray(jax.random.key_data(state.key)).tolist(), es_fitness=np.asarray(fitness).tolist(),
                       es_noise_iteration=int(state.iteration) - 1)
        metrics.update(rollout_metrics(rewards, correct, gen.lengths, t0, t1, t2, t3),
                       fitness_std=float(fitness.std()), fitness_max=float(fitness.max()),
                       fitness_min=float(fitness.min()), zero_variance=float(fitness.std() == 0),
                       **pass_counts("es", rewards.size, cfg))
        return state, metrics

    iterate.decode_lengths = last_lengths  # the last call's lengths, which a run checkpoints (esjax.runs)
    return iterate
