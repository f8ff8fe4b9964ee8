"""Evaluation of params on a task: accuracy and mean reward, by greedy decoding (the seeds' protocol) or,
for multiple-choice probes (``task.choice_letters``, e.g. MMLU), by the argmax over the choice letters of
the next-token log-probability, max(log p("A"), log p(" A")) (paper 2's MMLU rule, docs/protocols.md#c7)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from esjax.models.decoder import forward, positions_from_mask
from esjax.rollout import decode, prompt_batch, score
from esjax.compaction import compaction_choice
from esjax.sampling import make_generate


def letter_token_ids(tokenizer, letters: str) -> np.ndarray:
    """(L, 2) ids of "X" and " X" per letter (each must be a single token)."""
    out = []
    for letter in letters:
        ids = [tokenizer.encode(v, add_special_tokens=False) for v in (letter, " " + letter)]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"choice letter {letter!r} is not a single token for this tokenizer: {ids}")
        out.append([i[0] for i in ids])
    return np.asarray(out, np.int32)


@functools.lru_cache(maxsize=None)
def make_choice_scorer(model_cfg, top_k: int = 0):
    """jit ``(params, tokens (B, P), mask (B, P), letter_ids (L, 2)) -> (B,) index of the best letter``.
    ``top_k`` > 0: a letter counts only if one of its tokens is among the position's ``top_k`` most likely
    (paper 2 reads vLLM's top-20 log-probs), and a row where none is gets −1 (no answer, scored wrong)."""
    def best(params, tokens, mask, letter_ids):
        logits, _ = forward(params, model_cfg, tokens, positions_from_mask(mask), mask, last_only=True)
        logp = jax.nn.log_softmax(logits[:, 0], -1)  # (B, V)
        lp = logp[:, letter_ids]  # (B, L, 2)
        if top_k:
            kth = jax.lax.top_k(logp, top_k)[0][:, -1]
            lp = jnp.where(lp >= kth[:, None, None], lp, -jnp.inf)
        lp = lp.max(-1)
        return jnp.where(jnp.isfinite(lp).any(-1), jnp.argmax(lp, -1), -1)
    return jax.jit(best)


def evaluate(params, model_cfg, tokenizer, task, examples, max_new_tokens: int, batch_size: int = 64,
             previous_lengths=None) -> dict:
    """{'accuracy', 'reward', 'completion_length'} over ``examples``, in batches, 'correct': a list of 0/1
    per example in the order of ``examples`` (accuracy = its mean; paired tests on the same problems,
    :mod:`esjax.analysis.intervals`), and 'batch_lengths': each batch's completion lengths ([(B,), ...]).

    With ``model_cfg.decode_compaction`` > 0 a batch compacts as far as lengths it is given predict it pays
    (:func:`esjax.compaction.compaction_choice`; the same tokens either way): batch i's lengths at an
    earlier evaluation of the same examples (``previous_lengths``: that call's 'batch_lengths'), else this
    call's batch i − 1 (none for a first batch: no compaction)."""
    choices = task.choice_letters
    if choices:
        pick = make_choice_scorer(model_cfg, task.choice_top_k)
        letter_ids = letter_token_ids(tokenizer, choices)
    previous = list(previous_lengths or [])
    rewards, correct, lengths = [], [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        pb = prompt_batch(tokenizer, task, chunk, model_cfg.pad_token_id)
        if choices:
            texts = [choices[j] if j >= 0 else "" for j in np.asarray(pick(params, pb.tokens, pb.mask, letter_ids))]
            n_tokens = np.ones(len(chunk))
        else:
            before = previous[len(lengths)] if len(lengths) < len(previous) else (lengths[-1] if lengths else None)
            compaction = compaction_choice(before, *pb.tokens.shape, model_cfg, max_new_tokens)
            gen = make_generate(model_cfg, max_new_tokens, prefix_len=pb.prefix_len, logprobs=False,
                                compaction=compaction)
            out = gen(params, pb.tokens, pb.mask, jax.random.key(0))
            texts, n_tokens = decode(tokenizer, out.tokens, out.lengths), np.asarray(out.lengths)
        r, c = score(task, texts, chunk)
        rewards.append(r)
        correct.append(c)
        lengths.append(n_tokens)
    correct = np.concatenate(correct)
    return {"accuracy": float(correct.mean()), "reward": float(np.concatenate(rewards).mean()),
            "completion_length": float(np.concatenate(lengths).mean()), "correct": [int(c) for c in correct],
            "batch_lengths": lengths}
