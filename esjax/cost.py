"""What a run will cost, before it starts (``--dry-run`` of every experiment script).

Counts (per ES iteration / GRPO step, and per task = × iterations), from :func:`pass_counts`, which the
trainers' ``forward_passes``/``backward_passes`` metrics use too:
    ES:    completions = N · B (B prompts per iteration), forward passes = completions · (1 + [KL penalty])
           (generation, base-model scoring), no backward;
    GRPO:  completions = G · P, forward passes = completions · (1 + μ + [μ·u > 1] + μ·[reference])
           (rollout, learner passes, old log-probs, reference scoring), backward passes = completions · μ:
           u mini-batches per pass split the completions, each is in exactly one of them;
    tokens generated ≤ completions · M (M new tokens; every member decodes to M at worst).
Context: the longest prompt, padded as the rollout pads it (multiples of 8), plus M must fit the model's
``max_position_embeddings``, or generation stops with an error; ``--dry-run`` flags it beforehand.
Memory per device (bytes; params replicated, rows split over devices):
    params  = d · 4 (fp32 master; GRPO adds grads and two AdamW moments: × 4, plus a reference copy);
    noise   = c · the noise scheme's ``member_bytes`` (c members per chunk): full-rank d · (4 + bytes(compute
              dtype)) (θ + σε formed in the compute dtype from an fp32 draw); low-rank r · Σ_matrices
              (n_in + n_out) · 4 plus the vectors' dense draws;
    shared  = the scheme's ``shared_bytes``, once per population call: low-rank members' decoding copy of θ
              (d · bytes(compute dtype) below fp32; on fp32 the joined [wq|wk|wv], [w_gate|w_up]), full-rank 0;
    KV      = 2 · L · rows · K · (prompt + M) · Dh · bytes(compute dtype), rows = c · B (ES) or G · P / D.
Wall time: a short measured probe (decode tokens/s and scoring tokens/s of the actual model on this
machine) extrapolated to the counts above, an upper bound since completions often stop early.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from esjax.roofline import kv_slot_bytes


PROMPT_MULTIPLE = 8  # rollout prompt widths are multiples of this (esjax.rollout.prompt_batch)


def pass_counts(method: str, completions: int, cfg, reference: bool = False) -> dict:
    """Forward and backward passes of one ES iteration or GRPO step over ``completions`` sequences; one
    pass = one prompt ++ completion through the model, a generation counting as one forward pass.

    ES (``cfg``: ESConfig): forward = n · (1 + [kl_penalty > 0]) (generation; base-model scoring for the
    KL penalty); backward = 0.
    GRPO (``cfg``: GRPOConfig): forward = n · (1 + μ + [μ·u > 1] + μ·[reference]), backward = n · μ with
    μ = ``num_inner_updates`` passes over the rollout batch and u mini-batches per pass: each completion is
    in exactly one mini-batch of a pass, so the learner sees it μ times however many optimizer updates
    (μ·u) the step makes; old log-probs are scored once when there is more than one update, and the
    reference model (``reference``: KL tracked or penalised) scores each mini-batch at every update.
    Returns {"forward_passes", "backward_passes"} (ints)."""
    n = int(completions)
    if method == "es":
        return {"forward_passes": n * (1 + (cfg.kl_penalty > 0)), "backward_passes": 0}
    if method == "grpo":
        mu = cfg.num_inner_updates
        return {"forward_passes": n * (1 + mu + (cfg.updates_per_step > 1) + mu * bool(reference)),
                "backward_passes": n * mu}
    raise ValueError(f"unknown method {method!r} (es, grpo)")


def padded_prompt_width(prompt_tokens: int, multiple: int = PROMPT_MULTIPLE) -> int:
    """Width of a rollout batch whose longest prompt has ``prompt_tokens`` tokens (see
    :func:`esjax.sampling.pad_prompts`; a shared prefix is a multiple of ``multiple`` too)."""
    return max(multiple, -(-prompt_tokens // multiple) * multiple)


def context_problem(model_cfg, longest_prompt: int, max_new_tokens: int):
    """None when a prompt of ``longest_prompt`` tokens, padded, plus ``max_new_tokens`` fits the model
    context; otherwise one line saying by how much it does not (generation would raise)."""
    ctx, width = model_cfg.max_position_embeddings, padded_prompt_width(longest_prompt)
    if width + max_new_tokens <= ctx:
        return None
    what = "alone exceeds" if longest_prompt > ctx else f"+ {max_new_tokens} new tokens exceed"
    return (f"the longest prompt ({longest_prompt} tokens, {width} padded) {what} the model context of {ctx} "
            f"tokens by {width + max_new_tokens - ctx}: generation will fail; shorten the prompts or lower "
            f"max_new_tokens to {max(ctx - width, 0)}")


def run_cost(cfg, model_cfg, prompt_tokens: int, n_devices: int = 1, longest_prompt: int = None) -> dict:
    """Counts and per-device memory of one task under ``cfg`` (see the module docstring); ``prompt_tokens``
    is a typical prompt length, ``longest_prompt`` (default ``prompt_tokens``) the longest one, checked
    against the model context (``"context_problem"``: None or a line saying what does not fit)."""
    from esjax.es.population import auto_chunk_size
    from esjax.es.schemes import get_scheme

    d, M, es, gr = model_cfg.param_count(), cfg.max_new_tokens, cfg.es, cfg.grpo
    M = M or 1024
    kv_row = kv_slot_bytes(model_cfg) * (prompt_tokens + M)
    chunk = auto_chunk_size(model_cfg, es, cfg.es_batch, prompt_tokens, M)
    es_completions = es.population_size * cfg.es_batch
    scheme = get_scheme(es.noise)
    noise = chunk * scheme.member_bytes(model_cfg, es)  # members' weights or deltas
    updates = gr.updates_per_step
    gr_completions = gr.group_size * gr.prompts_per_step
    es_passes = pass_counts("es", es_completions, es)
    gr_passes = pass_counts("grpo", gr_completions, gr, reference=gr.beta > 0 or gr.track_kl)  # as runs.py
    longest = prompt_tokens if longest_prompt is None else longest_prompt
    return {
        "parameters": d, "prompt_tokens": prompt_tokens, "max_new_tokens": M, "devices": n_devices,
        "longest_prompt": longest, "model_context": model_cfg.max_position_embeddings,
        "context_problem": context_problem(model_cfg, longest, M),
        "es": {"completions_per_iteration": es_completions, "max_tokens_per_iteration": es_completions * M,
               "forward_passes_per_iteration": es_passes["forward_passes"],
               "forward_passes_per_task": es_passes["forward_passes"] * cfg.es_iterations,
               "backward_passes_per_task": 0,
               "iterations": cfg.es_iterations, "members_per_chunk": chunk,
               "memory_per_device": {"params": d * 4, "shared": scheme.shared_bytes(model_cfg, es),
                                     "noise": noise,
                                     "kv_cache": kv_row * chunk * cfg.es_batch}},
        "grpo": {"completions_per_step": gr_completions, "max_tokens_per_step": gr_completions * M,
                 "optimizer_updates_per_step": updates,
                 "forward_passes_per_step": gr_passes["forward_passes"],
                 "backward_passes_per_step": gr_passes["backward_passes"],
                 "forward_passes_per_task": gr_passes["forward_passes"] * cfg.grpo_steps,
                 "backward_passes_per_task": gr_passes["backward_passes"] * cfg.grpo_steps, "steps": cfg.grpo_steps,
                 # fp32 master, two AdamW moments, gradients, and the reference model when the run scores it
                 # (the condition of esjax.runs and of pass_counts: β > 0 or the KL tracked)
                 "memory_per_device": {"params": d * 4 * (4 + bool(gr.beta > 0 or gr.track_kl)),
                                       "kv_cache": kv_row * -(-gr_completions // n_devices)}},
    }


def probe_throughput(model, prompt_tokens: int, new_tokens: int = 16, rows: int = 8) -> dict:
    """Measured decode and scoring throughput of ``model`` here (tokens/s), after a warm-up call."""
    from esjax.models.decoder import make_token_logprobs
    from esjax.sampling import make_generate

    tokens = np.full((rows, prompt_tokens), 1, np.int32)
    mask = np.ones_like(tokens, bool)
    gen = make_generate(model.cfg, new_tokens, logprobs=False)
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
    """Seconds per ES iteration / GRPO step and per task of training (upper bounds; the evaluations are not
    in them): generation at the decode speed, every other forward pass at the scoring speed, a backward pass
    as two more (learner ≈ 3× scoring)."""
    es, gr = cost["es"], cost["grpo"]
    seq = cost["prompt_tokens"] + cost["max_new_tokens"]
    score = lambda fwd, bwd, n: (fwd - n + 2 * bwd) * seq / speed["score_tokens_per_s"]  # noqa: E731
    es_it = (es["max_tokens_per_iteration"] / speed["decode_tokens_per_s"]
             + score(es["forward_passes_per_iteration"], 0, es["completions_per_iteration"]))
    gr_st = (gr["max_tokens_per_step"] / speed["decode_tokens_per_s"]
             + score(gr["forward_passes_per_step"], gr["backward_passes_per_step"], gr["completions_per_step"]))
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
    if cost.get("context_problem"):
        lines.insert(0, "WARNING: " + cost["context_problem"])
    if wall:
        lines.append(f"wall time (upper bound from a measured probe): ES {wall['es_s_per_iteration']:.3g} s/iteration, "
                     f"{wall['es_s_per_task'] / 3600:.3g} h/task; GRPO {wall['grpo_s_per_step']:.3g} s/step, "
                     f"{wall['grpo_s_per_task'] / 3600:.3g} h/task — training only: the evaluations (base, every "
                     f"eval_every, final; each eval task) come on top")
    return "\n".join(lines)
