"""Shared by ES and GRPO: prompts → padded tokens, generations → text → rewards, and the
prompt ++ completion batches the learners score. Host-side glue around the jitted sampler."""
from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np

from esjax.sampling import pad_prompts, shared_prefix_len
from esjax.tasks.base import Example, Task, encode_prompts


@dataclasses.dataclass
class PromptBatch:
    examples: List[Example]
    tokens: np.ndarray  # (B, P) int32: [shared prefix | left-padded suffixes]
    mask: np.ndarray  # (B, P) bool
    prefix_len: int = 0  # columns [0, prefix_len) are one prefix shared by every row (prefilled once)
    group: int = 1  # rows come in runs of ``group`` copies of one prompt (run once per group)


def prompt_batch(tokenizer, task: Task, examples: Sequence[Example], pad_id: int, repeat: int = 1,
                 multiple: int = 8, share_prefix: bool = True) -> PromptBatch:
    """Chat-templated prompts, their common prefix (multiple of ``multiple`` tokens) kept shared unless
    ``share_prefix`` is False, the rest left padded; ``repeat`` copies each prompt consecutively (GRPO groups)."""
    return padded_batch(encode_prompts(tokenizer, task, examples), list(examples), pad_id, repeat, multiple,
                        share_prefix)


def padded_batch(ids: Sequence[Sequence[int]], examples: List[Example], pad_id: int, repeat: int = 1,
                 multiple: int = 8, share_prefix: bool = True) -> PromptBatch:
    """:func:`prompt_batch` from token ids (prompts of any tasks)."""
    ids = [p for p in ids for _ in range(repeat)]
    prefix = shared_prefix_len(ids, multiple) if share_prefix else 0
    tokens, mask = pad_prompts(ids, pad_id, multiple, prefix_len=prefix)
    return PromptBatch([e for e in examples for _ in range(repeat)], tokens, mask, prefix, repeat)


def decode(tokenizer, tokens, lengths) -> List[str]:
    """Completions as text; tokens (..., M), lengths (...) → flat list in row-major order."""
    tokens = np.asarray(tokens).reshape(-1, np.asarray(tokens).shape[-1])
    lengths = np.asarray(lengths).reshape(-1)
    return tokenizer.batch_decode([t[:n] for t, n in zip(tokens, lengths)], skip_special_tokens=True)


def score(task: Task, texts: Sequence[str], examples: Sequence[Example]):
    """(rewards (n,), correct (n,)) with examples cycled to the length of ``texts``."""
    rs = [task.reward(t, examples[i % len(examples)]) for i, t in enumerate(texts)]
    return np.array([r.value for r in rs], np.float32), np.array([r.correct for r in rs], bool)


def rollout_metrics(rewards, correct, lengths, t0: float, t1: float, t2: float, t3: float) -> dict:
    """Metrics both learners log for one iteration: reward and accuracy means, completion lengths and
    counts, and the time split generate [t0, t1) / reward [t1, t2) / update [t2, t3).

    ``decode_fill`` = Σ lengths / (rows × max length): the share of the decode loop's row-steps that produced
    a token. The loop runs until the last row of a call stops (of a chunk, for ES members), finished rows
    decoding padding until then, so 1 − decode_fill is at most what dropping finished rows from the batch
    could save; with several ES chunks (each stops at its own longest row) it is a lower bound. A run's
    ``decode_compaction`` drops them at cache-block boundaries (:func:`esjax.sampling.generate`); the
    share counts row-steps as if it did not."""
    n_tokens = int(np.sum(lengths))
    longest = int(np.max(lengths)) if np.size(lengths) else 0
    return dict(reward_mean=float(np.mean(rewards)), train_accuracy=float(np.mean(correct)),
                completion_length=float(np.mean(lengths)), completions=int(np.size(rewards)), tokens=n_tokens,
                decode_fill=n_tokens / (np.size(lengths) * longest) if longest else 1.0,
                time_generate=t1 - t0, time_reward=t2 - t1, time_update=t3 - t2,
                tokens_per_s=n_tokens / max(t1 - t0, 1e-9))


def sequence_batch(prompt_tokens, prompt_mask, gen_tokens, lengths, completion_only: bool = False) -> dict:
    """Prompt ++ completion: tokens, attn_mask (B, P+M) and loss_mask (B, P+M−1) over completion tokens, or
    with ``completion_only`` loss_mask (B, M) over the completion predictions only (its last M columns; the
    first scored token is then :func:`esjax.models.decoder.first_scored` (P+M, M) = P)."""
    gen_tokens, lengths = np.asarray(gen_tokens), np.asarray(lengths)
    M = gen_tokens.shape[1]
    gen_mask = np.arange(M)[None, :] < lengths[:, None]
    tokens = np.concatenate([prompt_tokens, gen_tokens], 1).astype(np.int32)
    attn = np.concatenate([prompt_mask, gen_mask], 1)
    loss_mask = np.concatenate([np.zeros_like(prompt_mask[:, 1:]), gen_mask], 1).astype(np.float32)
    if completion_only:
        loss_mask = loss_mask[:, -M:] if M else loss_mask[:, :0]
    return {"tokens": tokens, "attn_mask": attn, "loss_mask": loss_mask}
