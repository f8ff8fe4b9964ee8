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



