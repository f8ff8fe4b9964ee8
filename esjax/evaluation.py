"""Greedy evaluation of params on a task: accuracy and mean reward (the seeds' protocol)."""
from __future__ import annotations

import jax
import numpy as np

from esjax.rollout import decode, prompt_batch, score
from esjax.sampling import make_generate


def evaluate(params, model_cfg, tokenizer, task, examples, max_new_tokens: int, batch_size: int = 64) -> dict:
    """{'accuracy', 'reward', 'completion_length'} over ``examples``, decoding greedily in batches."""
    gen = make_generate(model_cfg, max_new_tokens)
    rewards, correct, lengths = [], [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        pb = prompt_batch(tokenizer, task, chunk, model_cfg.pad_token_id)
        out = gen(params, pb.tokens, pb.mask, jax.random.key(0))
        r, c = score(task, decode(tokenizer, out.tokens, out.lengths), chunk)
        rewards.append(r)
        correct.append(c)
        lengths.append(np.asarray(out.lengths))
    return {"accuracy": float(np.concatenate(correct).mean()), "reward": float(np.concatenate(rewards).mean()),
            "completion_length": float(np.concatenate(lengths).mean())}
