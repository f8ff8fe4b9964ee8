"""What a run will cost, before it starts (``--dry-run`` of every experiment script).

Counts (per ES iteration / GRPO step, and per task = × iterations):
    ES:    completions = N · B (B prompts per iteration), forward passes = completions, no backward;
    GRPO:  completions = G · P, forward passes = completions · (1 + μ·u + [u > 1]) (rollout, learner
           passes, old log-probs), backward passes = completions · μ·u  (u = mini-batches per step);
    tokens generated ≤ completions · M (M new tokens; every member decodes to M at worst).
Memory per device (bytes; params replicated, rows split over devices):
    params  = d · 4 (fp32 master; GRPO adds grads and two AdamW moments: × 4, plus a reference copy);
    noise   = full: c · d · 4 (c members per chunk hold a dense perturbation each);
              low-rank: c · r · Σ_matrices (n_in + n_out) · 4;
    KV      = 2 · L · rows · K · (prompt + M) · Dh · bytes(compute dtype), rows = c · B (ES) or G · P / D.
Wall time: a short measured probe (decode tokens/s and scoring tokens/s of the actual model on this
machine) extrapolated to the counts above, an upper bound since completions often stop early.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from esjax.models.config import DTYPES
from esjax.models.decoder import param_shapes


def matrix_dims(model_cfg):
    """Σ (n_in + n_out) over the model's matrices (low-rank noise size per rank)."""
    shapes = jax.tree.leaves(param_shapes(model_cfg), is_leaf=lambda s: isinstance(s, tuple))
    return sum(sum(s) for s in shapes if len(s) == 2)


def run_cost(cfg, model_cfg, prompt_tokens: int, n_devices: int = 1) -> dict:
    """Counts and per-device memory of one task under ``cfg`` (see the module docstring)."""
    from esjax.es.step import auto_chunk_size

    d, M, es, gr = model_cfg.param_count(), cfg.max_new_tokens, cfg.es, cfg.grpo
    M = M or 1024
    kv_row = 2 * model_cfg.num_layers * model_cfg.num_kv_heads * (prompt_tokens + M) * model_cfg.head_dim \
        * np.dtype(DTYPES[model_cfg.compute_dtype]).itemsize
    chunk = auto_chunk_size(d, es, cfg.es_batch)
    es_completions = es.population_size * cfg.es_batch
    noise = chunk * (d * 4 if es.noise == "full" else es.rank * matrix_dims(model_cfg) * 4)
    updates = gr.updates_per_step
    gr_completions = gr.group_size * gr.prompts_per_step
    return {
        "parameters": d, "prompt_tokens": prompt_tokens, "max_new_tokens": M, "devices": n_devices,
        "es": {"completions_per_iteration": es_completions, "max_tokens_per_iteration": es_completions * M,
               "forward_passes_per_task": es_completions * cfg.es_iterations, "backward_passes_per_task": 0,
               "iterations": cfg.es_iterations, "members_per_chunk": chunk,
               "memory_per_device": {"params": d * 4, "noise": noise,
                                     "kv_cache": kv_row * chunk * cfg.es_batch}},
        "grpo": {"completions_per_step": gr_completions, "max_tokens_per_step": gr_completions * M,
                 "optimizer_updates_per_step": updates,
                 "forward_passes_per_task": gr_completions * (1 + updates + (updates > 1)) * cfg.grpo_steps,
                 "backward_passes_per_task": gr_completions * updates * cfg.grpo_steps, "steps": cfg.grpo_steps,
                 "memory_per_device": {"params": d * 4 * (4 + (gr.beta > 0 or cfg.probe_size > 0)),
                                       "kv_cache": kv_row * -(-gr_completions // n_devices)}},
    }


def probe_throughput(model, prompt_tokens: int, new_tokens: int = 16, rows: int = 8) -> dict:
    """Measured decode and scoring throughput of ``model`` here (tokens/s), after a warm-up call."""
    from esjax.models.decoder import make_token_logprobs
    from esjax.sampling import make_generate

    tokens = np.full((rows, prompt_tokens), 1, np.int32)
    mask = np.ones_like(tokens, bool)
    gen = make_generate(model.cfg, new_tokens)
    score = make_token_logprobs(model.cfg)
    seq = np.full((rows, prompt_tokens + new_tokens), 1, np.int32)
    out = {}
    for name, fn, n_tok in (("decode_tokens_per_s", lambda: gen(model.params, tokens, mask, jax.random.key(0)), rows * new_tokens),
                            ("score_tokens_per_s", lambda: score(model.params, seq, np.ones_like(seq, bool)), seq.size)):
        jax.block_until_ready(fn())
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out[name] = n_tok / (time.perf_counter() - t0)
    return out


def estimate_wall_time(cost: dict, speed: dict) -> dict:
    """Seconds per ES iteration / GRPO step and per task (upper bounds; learner ≈ 3× a scoring pass)."""
    es, gr = cost["es"], cost["grpo"]
    seq = cost["prompt_tokens"] + cost["max_new_tokens"]
    es_it = es["max_tokens_per_iteration"] / speed["decode_tokens_per_s"]
    gr_st = (gr["max_tokens_per_step"] / speed["decode_tokens_per_s"]
             + 3 * gr["optimizer_updates_per_step"] * gr["completions_per_step"] * seq / speed["score_tokens_per_s"])
    return {"es_s_per_iteration": es_it, "es_s_per_task": es_it * es["iterations"],
            "grpo_s_per_step": gr_st, "grpo_s_per_task": gr_st * gr["steps"]}


def format_cost(cost: dict, wall: dict = None) -> str:
    gib = lambda b: f"{b / 2**30:.3g} GiB"  # noqa: E731
    es, gr = cost["es"], cost["grpo"]
    lines = [f"parameters d = {cost['parameters']:,}; prompt ≈ {cost['prompt_tokens']} tokens, "
             f"≤ {cost['max_new_tokens']} new tokens; {cost['devices']} device(s)",
             f"ES  : {es['completions_per_iteration']:,} completions/iteration (≤ {es['max_tokens_per_iteration']:,} tokens), "
             f"{es['iterations']} iterations → {es['forward_passes_per_task']:,} forward passes/task, no backward",
             "      memory/device: " + ", ".join(f"{k} {gib(v)}" for k, v in es["memory_per_device"].items())
             + f" ({es['members_per_chunk']} members per chunk)",
             f"GRPO: {gr['completions_per_step']:,} completions/step (≤ {gr['max_tokens_per_step']:,} tokens), "
             f"{gr['optimizer_updates_per_step']} updates/step, {gr['steps']} steps → "
             f"{gr['forward_passes_per_task']:,} forward / {gr['backward_passes_per_task']:,} backward passes/task",
             "      memory/device: " + ", ".join(f"{k} {gib(v)}" for k, v in gr["memory_per_device"].items())]
    if wall:
        lines.append(f"wall time (upper bound from a measured probe): ES {wall['es_s_per_iteration']:.3g} s/iteration, "
                     f"{wall['es_s_per_task'] / 3600:.3g} h/task; GRPO {wall['grpo_s_per_step']:.3g} s/step, "
                     f"{wall['grpo_s_per_task'] / 3600:.3g} h/task")
    return "\n".join(lines)
