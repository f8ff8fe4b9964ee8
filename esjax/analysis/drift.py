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
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from esjax.models.decoder import first_scored, scoring_logits
from esjax.rollout import padded_batch, sequence_batch
from esjax.sampling import GREEDY, SamplingConfig, make_generate
from esjax.tasks.base import Example, Task, encode_prompts

ESTIMATORS = ("sampled_token_k1", "greedy_sequence_sum", "sampled_token_exact")


@functools.lru_cache(maxsize=None)
def make_scorer(cfg, prefix_len: int = 0, group: int = 1):
    """jit: (ft, base, tokens (B, T), attn (B, T), loss_mask (B, L)) → per-sequence (k1 sum, exact-KL sum,
    token count) over the predictions of the last L tokens (logits only there; L = T − 1 scores all);
    the first ``prefix_len`` columns are one prefix shared by every row, and the columns before the
    scored ones are shared by each ``group`` consecutive rows (both run once; :func:`logits_from`)."""
    @jax.jit
    def score(ft, base, tokens, attn, loss_mask):
        start = first_scored(tokens.shape[1], loss_mask.shape[1])
        lf, lb = (jax.nn.log_softmax(scoring_logits(p, cfg, tokens, attn, start, prefix_len, group=group), -1)
                  for p in (ft, base))
        tgt = tokens[:, start:, None]
        k1 = (jnp.take_along_axis(lf, tgt, -1) - jnp.take_along_axis(lb, tgt, -1))[..., 0]
        exact = jnp.sum(jnp.exp(lf) * (lf - lb), -1)
        return (k1 * loss_mask).sum(1), (exact * loss_mask).sum(1), loss_mask.sum(1)

    return score


def kl_drift(ft, base, model_cfg, tokenizer, probes: Dict[str, Tuple[Task, Sequence[Example]]], key,
             max_new_tokens: Optional[Dict[str, int]] = None, batch_size: int = 32,
             estimators: Sequence[str] = ESTIMATORS) -> Dict[str, Dict[str, float]]:
    """{probe: {estimator: mean over its prompts}} of :func:`kl_drift_values`."""
    vals = kl_drift_values(ft, base, model_cfg, tokenizer, probes, key, max_new_tokens, batch_size, estimators)
    return {name: {e: float(np.mean(v)) for e, v in kl.items()} for name, kl in vals.items()}


def kl_drift_values(ft, base, model_cfg, tokenizer, probes: Dict[str, Tuple[Task, Sequence[Example]]], key,
                    max_new_tokens: Optional[Dict[str, int]] = None, batch_size: int = 32,
                    estimators: Sequence[str] = ESTIMATORS) -> Dict[str, Dict[str, np.ndarray]]:
    """{probe: {estimator: (n_probe,) per-prompt values, in the probe's example order}} of
    KL(π_ft ‖ π_base) for ``probes`` = {name: (task, examples)} (:func:`esjax.tasks.probes.probe_sets`),
    each completion capped at ``max_new_tokens[name]`` (default: the task's own budget). The per-prompt
    values feed the bootstrap intervals over prompts (:mod:`esjax.analysis.stats`).

    Every probe's prompts run together, ``batch_size`` prompts at a time (the last batch padded to the
    others' size, so one program serves them all): one generation per batch holds a sampled (T = 1) and
    a greedy copy of each prompt when both kinds of estimator are asked for (consecutive rows, the prompt
    run once for both), each row stopped at its probe's budget, and one scorer call reads both models'
    log-probs over all of it."""
    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown KL estimators {sorted(unknown)}; choose from {ESTIMATORS}")
    budgets = {name: (max_new_tokens or {}).get(name) or task.max_new_tokens for name, (task, _) in probes.items()}
    ids, names = [], []
    for name, (task, examples) in probes.items():
        ids += encode_prompts(tokenizer, task, examples)
        names += [name] * len(examples)
    sampled = bool({"sampled_token_k1", "sampled_token_exact"} & set(estimators))
    copies = [False] * sampled + [True] * ("greedy_sequence_sum" in estimators)  # greedy flag of each copy
    chunks = -(-len(ids) // batch_size)
    size = -(-len(ids) // chunks)
    acc = {name: {e: [] for e in estimators} for name in probes}
    for c in range(chunks):
        real = list(range(c * size, min((c + 1) * size, len(ids))))
        idx = real + real[-1:] * (size - len(real))
        rows = [(j, greedy) for j in idx for greedy in copies]
        pb = padded_batch([ids[j] for j in idx], [None] * size, model_cfg.pad_token_id, repeat=len(copies))
        gen = make_generate(model_cfg, max(budgets.values()), SamplingConfig(temperature=1.0) if sampled else GREEDY,
                            pb.prefix_len, pb.group, logprobs=False, compaction=0)  # one-off: no lengths to choose from
        out = gen(ft, pb.tokens, pb.mask, jax.random.fold_in(key, c), None, np.array([g for _, g in rows]),
                  np.array([budgets[names[j]] for j, _ in rows], np.int32))
        b = sequence_batch(pb.tokens, pb.mask, out.tokens, out.lengths, completion_only=True)
        k1, exact, n = (np.asarray(x) for x in make_scorer(model_cfg, pb.prefix_len, pb.group)(
            ft, base, b["tokens"], b["attn_mask"], b["loss_mask"]))
        for r, (j, greedy) in enumerate(rows):
            if r // len(copies) >= len(real):
                continue  # a padding row
            kl = acc[names[j]]
            if greedy:
                kl["greedy_sequence_sum"].append(k1[r])
            else:
                for e, v in (("sampled_token_k1", k1[r]), ("sampled_token_exact", exact[r])):
                    if e in kl:
                        kl[e].append(v / max(n[r], 1))
    return {name: {e: np.asarray(v, np.float64) for e, v in kl.items()} for name, kl in acc.items()}


def incremental_kl_matrix(stages: Sequence, model_cfg, tokenizer, probe_sets: dict, key,
                          max_new_tokens: Optional[Dict[str, int]] = None, estimator: str = "sampled_token_exact"):
    """KL(after_s ‖ before_s) for each stage s (rows) and probe set (columns); ``stages`` is the list
    [θ_0, θ_1, …] of params after each stage (θ_0 = base). Off-diagonal cells are off-task drift."""
    return [{name: v[estimator] for name, v in kl_drift(stages[s], stages[s - 1], model_cfg, tokenizer, probe_sets,
                                                         jax.random.fold_in(key, s), max_new_tokens,
                                                         estimators=(estimator,)).items()}
            for s in range(1, len(stages))]
