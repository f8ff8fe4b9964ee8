"""KL drift between a fine-tuned and a base model on probe prompts. Three labelled estimators of
KL(π_ft ‖ π_base); each returns per-prompt values and their mean:

* ``sampled_token_k1`` (paper 1): y ~ π_ft at T = 1; per sequence the mean over tokens of
  log π_ft(y_t) − log π_base(y_t); Monte-Carlo, unbiased for the per-token KL.
* ``greedy_sequence_sum`` (paper 2): y = greedy completion of π_ft; per sequence the *sum* over tokens of
  log π_ft − log π_base (not a KL in expectation: greedy y is not a sample; labelled as the paper's).
* ``sampled_token_exact``: y ~ π_ft at T = 1; per sequence the mean over positions of the exact
  next-token KL Σ_v π_ft(v) log(π_ft(v)/π_base(v)) — lower variance, same target as k1.
"""
from __future__ import annotations

import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esjax.models.decoder import logits_from
from esjax.rollout import prompt_batch, sequence_batch
from esjax.sampling import GREEDY, SamplingConfig, make_generate

ESTIMATORS = ("sampled_token_k1", "greedy_sequence_sum", "sampled_token_exact")


@functools.lru_cache(maxsize=None)
def make_scorer(cfg, prefix_len: int = 0):
    """jit: (ft, base, tokens (B, T), attn (B, T), loss_mask (B, L)) → per-sequence (k1 sum, exact-KL sum,
    token count) over the predictions of the last L tokens (logits only there; L = T − 1 scores all);
    the first ``prefix_len`` columns are one prefix shared by every row (run once)."""
    @jax.jit
    def score(ft, base, tokens, attn, loss_mask):
        first = tokens.shape[1] - 1 - loss_mask.shape[1]
        lf, lb = (jax.nn.log_softmax(logits_from(p, cfg, tokens, attn, first, prefix_len)[:, :-1], -1)
                  for p in (ft, base))
        tgt = tokens[:, first + 1:, None]
        k1 = (jnp.take_along_axis(lf, tgt, -1) - jnp.take_along_axis(lb, tgt, -1))[..., 0]
        exact = jnp.sum(jnp.exp(lf) * (lf - lb), -1)
        return (k1 * loss_mask).sum(1), (exact * loss_mask).sum(1), loss_mask.sum(1)

    return score


def kl_drift(ft, base, model_cfg, tokenizer, task, examples, max_new_tokens: int, key, batch_size: int = 32,
             estimators: Sequence[str] = ESTIMATORS) -> Dict[str, float]:
    """{estimator: mean over prompts} of KL(π_ft ‖ π_base) on ``task``'s prompts for ``examples``."""
    acc = {e: [] for e in estimators}
    for i in range(0, len(examples), batch_size):
        pb = prompt_batch(tokenizer, task, examples[i:i + batch_size], model_cfg.pad_token_id)
        sample = make_generate(model_cfg, max_new_tokens, SamplingConfig(temperature=1.0), pb.prefix_len)
        greedy = make_generate(model_cfg, max_new_tokens, GREEDY, pb.prefix_len)
        score = make_scorer(model_cfg, pb.prefix_len)
        completion = pb.tokens.shape[1] - 1  # loss-mask columns before this one cover the prompt
        if {"sampled_token_k1", "sampled_token_exact"} & set(estimators):
            out = sample(ft, pb.tokens, pb.mask, jax.random.fold_in(key, i))
            b = sequence_batch(pb.tokens, pb.mask, out.tokens, out.lengths)
            k1, exact, n = (np.asarray(x) for x in score(ft, base, b["tokens"], b["attn_mask"], b["loss_mask"][:, completion:]))
            n = np.maximum(n, 1)
            if "sampled_token_k1" in estimators:
                acc["sampled_token_k1"].extend(k1 / n)
            if "sampled_token_exact" in estimators:
                acc["sampled_token_exact"].extend(exact / n)
        if "greedy_sequence_sum" in estimators:
            out = greedy(ft, pb.tokens, pb.mask, jax.random.key(0))
            b = sequence_batch(pb.tokens, pb.mask, out.tokens, out.lengths)
            k1, _, _ = score(ft, base, b["tokens"], b["attn_mask"], b["loss_mask"][:, completion:])
            acc["greedy_sequence_sum"].extend(np.asarray(k1))
    return {e: float(np.mean(v)) for e, v in acc.items()}


def incremental_kl_matrix(stages: Sequence, model_cfg, tokenizer, probe_sets: dict, max_new_tokens: int, key,
                          estimator: str = "sampled_token_exact"):
    """KL(after_s ‖ before_s) for each stage s (rows) and probe set (columns); ``stages`` is the list
    [θ_0, θ_1, …] of params after each stage (θ_0 = base). Off-diagonal cells are off-task drift."""
    rows = []
    for s in range(1, len(stages)):
        row = {}
        for name, (task, examples) in probe_sets.items():
            row[name] = kl_drift(stages[s], stages[s - 1], model_cfg, tokenizer, task, examples,
                                 max_new_tokens or task.max_new_tokens, jax.random.fold_in(key, s),
                                 estimators=(estimator,))[estimator]
        rows.append(row)
    return rows
