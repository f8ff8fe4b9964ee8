"""GRPO building blocks as pure functions, registered by name (Tunix ``algo_core`` style).

Advantages (rewards r: (P, G) for P prompts × G samples)::

    A = (r − mean_g r) / (std_g r + eps)     scale_rewards="group" (std with ``std_ddof``: 1 in paper 1/TRL)
    A = (r − mean_g r) / (std_batch r + eps) "batch";   A = r − mean_g r   "none" (Dr. GRPO)

Per-token loss with ρ = exp(clip(logp − logp_old, ±20)) over completion tokens::

    ℓ_t = −min(ρ A, clip(ρ, 1 − ε, 1 + ε_high) A) + β · KL_t(π_θ ‖ π_ref)
    ℓ_t = min(ℓ_t, c · |A|)  where A < 0, with ``clip_ratio_c`` = c (verl's dual clip; off by default)

The ±20 clamp of the log-ratio before ``exp`` is verl's (``compute_policy_loss_vanilla``): it changes ρ only
past e^20, where the clipped term decides for A > 0 anyway, and keeps ``exp`` from overflowing (0 · inf in
the backward pass is NaN).

Two log-probs of each sampled token y_t enter it (z_t: the model's logits, T: the sampling temperature):

    logp, logp_old  = log softmax(z_t / T)[y_t]   *tempered*: the distribution the rollout sampled from,
                      as TRL (``logits / temperature``) and verl (``logits.div_(temperature)``) score it;
                      top-k/top-p truncation is not applied (neither does TRL nor verl). Policy gradient
                      and ratio; rollout and learner use this same convention, so ρ ≡ 1 on-policy.
    kl_logp, ref    = log softmax(z_t)[y_t]       *untempered*: the policy's and the reference model's own
                      distributions, the KL to the base model (as ES's KL penalty and the KL-drift probes
                      measure it). TRL and verl temper these too; at T = 1 the conventions coincide. The
                      tokens are drawn at temperature T, so at T ≠ 1 the estimators below are evaluated on
                      samples of π_θ^T (an estimate of the penalty, not of KL(π_θ ‖ π_ref) itself).

KL estimators with δ = logp_ref − logp:  k1 = −δ;  k3 = e^δ − δ − 1 (Schulman);  low_var_kl = clip(k3 of
clip(δ, ±20), ±10) (verl's ``kl_penalty``, both clamps: without the first, δ > 88 overflowed and its zero
gradient became NaN). Aggregation → per-token weights w so that the loss is Σ_t w_t ℓ_t (exact under micro-batching):

    seq_mean_token_mean  (paper 1, TRL "grpo"):  w = m / (n_b · B)
    token_mean           (DAPO, TRL "dapo"):     w = m / Σ m   (Σ over the whole optimizer (mini-)batch)
    seq_mean_token_sum_norm (Dr. GRPO):          w = m / (B · L_max), L_max the completion budget (either layout)

``token_mean`` normalises by the tokens of the whole (mini-)batch however it is split into micro-batches
for gradient accumulation: TRL's ``dapo`` (``num_items_in_batch``). TRL's ``bnpo`` averages each
micro-batch's own token mean over the accumulation steps, which equals ``token_mean`` only when every
micro-batch holds the same number of completion tokens; esjax has no ``bnpo``.
"""
from __future__ import annotations

import jax.numpy as jnp


def advantages_group(r, std_ddof: int, eps: float):
    return (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=std_ddof, keepdims=True) + eps)


def advantages_batch(r, std_ddof: int, eps: float):
    return (r - r.mean(1, keepdims=True)) / (r.std(ddof=std_ddof) + eps)


def advantages_none(r, std_ddof: int, eps: float):
    return r - r.mean(1, keepdims=True)


# Registries by name (GRPOConfig.scale_rewards / kl_estimator / loss_aggregation): a new entry is a pure
# function with the same signature, added here or by ``TABLE[name] = fn`` before the config is built.
ADVANTAGE_SCALES = {"group": advantages_group, "batch": advantages_batch, "none": advantages_none}


def group_advantages(rewards, scale: str = "group", std_ddof: int = 1, eps: float = 1e-6):
    """rewards: (P, G) → advantages (P, G) by ``ADVANTAGE_SCALES[scale](r, std_ddof, eps)``."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose from {sorted(ADVANTAGE_SCALES)}")
    return ADVANTAGE_SCALES[scale](jnp.asarray(rewards, jnp.float32), std_ddof, eps)


def kl_k1(logp, ref_logp):
    return logp - ref_logp


def kl_k3(logp, ref_logp):
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def kl_low_var(logp, ref_logp):
    d = jnp.clip(ref_logp - logp, -20.0, 20.0)  # verl clamps δ before exp, then k3 to ±10
    return jnp.clip(jnp.exp(d) - d - 1.0, -10.0, 10.0)


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3, "low_var_kl": kl_low_var}


def weights_seq_mean_token_mean(mask):
    n = jnp.maximum(mask.sum(1, keepdims=True), 1)
    return mask / (n * mask.shape[0])


def weights_token_mean(mask):
    return mask / jnp.maximum(mask.sum(), 1)


def weights_seq_mean_token_sum_norm(mask):
    """Dr. GRPO: mask / (B · M), M the completion budget: the mask's columns after its leading all-zero ones,
    which are prompt positions (a batch scoring every position, L = T − 1, has P − 1 of them; the
    completion-only layout none, M = L). Dividing by the mask's whole width scaled the loss by M / (P + M − 1)
    in the first layout, a factor that changed with each batch's padded prompt width."""
    lead = jnp.argmax(mask.any(0))  # first column any row scores (0 when none does: the mask is all zero)
    return mask / (mask.shape[0] * (mask.shape[1] - lead))


LOSS_AGGREGATION = {"seq_mean_token_mean": weights_seq_mean_token_mean, "token_mean": weights_token_mean,
                    "seq_mean_token_sum_norm": weights_seq_mean_token_sum_norm}


LOG_RATIO_CLAMP = 20.0  # verl's clamp of logp − logp_old before exp


def clipped_surrogate(logp, old_logp, advantages, eps_low: float, eps_high: float, clip_ratio_c=None):
    """Per-token −min(ρA, clip(ρ)A) and whether clipping was active. logp, old_logp: (B, T); A: (B,).
    ``clip_ratio_c`` (c > 1, verl's dual clip): where A < 0 the loss is at most −c·A, so a ratio that ran
    far past the clip range of a negative-advantage token stops pushing (zero gradient beyond c)."""
    ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    a = advantages[:, None]
    unclipped, clipped = ratio * a, jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * a
    loss = -jnp.minimum(unclipped, clipped)
    if clip_ratio_c is not None:
        loss = jnp.where(a < 0, jnp.minimum(loss, -a * clip_ratio_c), loss)
    return loss, (clipped < unclipped)


def per_token_loss(logp, old_logp, ref_logp, advantages, clip_eps: float, clip_eps_high: float, beta: float,
                   kl_estimator: str, kl_logp=None, mask=None, clip_ratio_c=None):
    """(loss (B, T), kl (B, T) or zeros, clipped (B, T)). logp, old_logp: tempered log-probs of the sampled
    tokens (ratio and policy gradient); ref_logp and ``kl_logp``: the reference's and the policy's
    untempered log-probs (the KL term); ``kl_logp`` None = ``logp`` (sampling at T = 1). ``mask`` (B, T),
    optional: positions where it is 0 (prompt, padding) are scored as ρ = 1 and δ = 0 — finite, KL 0, no
    gradient — whatever the log-probs of padding are (their loss weight is 0, but an overflowed ``exp``
    there made the weighted loss and every gradient NaN: 0 · inf)."""
    kl_logp = logp if kl_logp is None else kl_logp
    if mask is not None:  # substitute the inputs, not the outputs: where() after exp still back-propagates NaN
        on = mask > 0
        logp, old_logp = jnp.where(on, logp, 0.0), jnp.where(on, old_logp, 0.0)
        if ref_logp is not None:  # both 0: δ = 0 even where the reference scored padding −inf
            kl_logp, ref_logp = jnp.where(on, kl_logp, 0.0), jnp.where(on, ref_logp, 0.0)
    loss, clipped = clipped_surrogate(logp, old_logp, advantages, clip_eps, clip_eps_high, clip_ratio_c)
    kl = jnp.zeros_like(logp) if ref_logp is None else KL_ESTIMATORS[kl_estimator](kl_logp, ref_logp)
    # β = 0 (static): the KL is only logged, so it stays out of the loss (0 × an overflowed k3 would be NaN)
    return (loss + beta * kl if beta else loss), kl, clipped
