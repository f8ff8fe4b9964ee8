"""Shared helpers of the benchmark scripts: timing and the benchmark prompt batch."""
from __future__ import annotations

import time

import jax


from esjax.sampling import pad_prompts, shared_prefix_len

QUESTIONS = ["What is 2+3?", "Name a color.", "Write a haiku about the sea.", "What is the capital of France?",
             "Explain gravity in one sentence.", "List three fruits.", "Who wrote Hamlet?", "Why is the sky blue?"]


def timed(fn, *args, repeats: int = 2):
    """(result, best wall seconds over ``repeats``) after one warm-up call (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best


def wall(fn, *args):
    """(result, seconds) of one call, blocking on the result."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def first_and_best(fn, *args, repeats: int = 1):
    """(first call seconds incl. compile, best of ``repeats`` later calls)."""
    _, first = wall(fn, *args)
    return first, min(wall(fn, *args)[1] for _ in range(repeats))


def chat_ids(tokenizer, n: int):
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                                    add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)["input_ids"] for i in range(n)]


def matmul_peak_gflops(n: int = 2048) -> float:
    """Measured float32 matmul throughput of this machine (the ceiling for the model's GEMMs)."""
    a = jax.numpy.ones((n, n), jax.numpy.float32)
    f = jax.jit(lambda x: x @ x)
    _, t = timed(f, a, repeats=3)
    return 2 * n ** 3 / t / 1e9


def padded(tokenizer, n: int, pad_id: int, share_prefix: bool = False):
    """(tokens, mask, prefix_len): left padded, or [shared prefix | left-padded rest] (prefix run once)."""
    ids = chat_ids(tokenizer, n)
    prefix = shared_prefix_len(ids) if share_prefix else 0
    return (*pad_prompts(ids, pad_id, prefix_len=prefix), prefix)





def completion_lengths(rows: int, new: int, median: float = 0.25, tail: float = 0.05, seed: int = 0):
    """(rows,) int32 stand-in completion lengths for benchmarks on random weights (which never emit EOS):
    log-normal around ``median`` × ``new`` (σ 0.6 in log space), clipped to [1, ``new``], and a ``tail``
    share of rows that run the whole budget (a rambling answer keeps its batch decoding to the end)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(new * median * np.exp(0.6 * rng.standard_normal(rows))), 1, new)
    lengths[rng.random(rows) < tail] = new
    return lengths.astype(np.int32)
