"""A pure, jit-compiled GRPO step: ``grpo_step(state, batch, ref_params) -> (state, metrics)``.

The batch holds full sequences (left-padded prompt ++ completion) and everything precomputed at rollout
time; the step scores the completion tokens with the current params, forms the loss of
:mod:`esjax.grpo.losses` and applies one optax update. Gradients are accumulated over micro-batches with
``lax.scan`` so memory is bounded by ``micro_batch_size`` sequences; per-token weights make the
accumulated loss identical to the full-batch loss. With ``old_logp`` omitted (one update per rollout,
as in paper 1) the ratio is exp(logp − stop_grad(logp)) ≡ 1 and the step is on-policy REINFORCE with
group-normalised advantages.

At sampling temperature T the ratio and policy-gradient terms score log softmax(z / T) of each sampled
token, the distribution the rollout drew it from (TRL and verl do the same), and ``old_logp`` must be
scored so too (:func:`make_completion_logprobs`); the KL term compares the policy's and the reference's
untempered log softmax(z) (see :mod:`esjax.grpo.losses`).

Batch (B sequences of length T; predictions are for the last L positions, L ≤ T − 1):
    tokens (B, T) int32, attn_mask (B, T) bool, loss_mask (B, L) float (1 on completion tokens),
    advantages (B,), old_logp (B, L) optional (tempered, as above). L = T − 1 scores every position; L = T − P (P the padded
    prompt width) skips the vocabulary projection over the prompt, which the loss never reads.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from esjax.grpo.losses import ADVANTAGE_SCALES, KL_ESTIMATORS, LOSS_AGGREGATION, per_token_loss
from esjax.models.decoder import first_scored, log_softmax_at, scoring_logits, token_logprobs


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Defaults follow paper 1's code (docs/protocols.md#b1): G 8, β 0 (k3 KL tracked), clip 0.2, one update
    per batch, ddof-1 std, per-sequence token-mean, AdamW lr 3e-6, no weight decay, grad clip 1.0."""

    group_size: int = 8
    prompts_per_step: int = 8
    learning_rate: float = 3e-6
    lr_schedule: str = "constant"  # "constant" | "linear" (decay to 0 over total_steps)
    total_steps: int = 100  # optimizer updates a linear schedule decays over (a run makes grpo_steps × updates_per_step)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    beta: float = 0.0
    kl_estimator: str = "k3"
    track_kl: bool = True  # beta = 0: still score the reference model to log the KL (paper 1 tracks k3)
    clip_eps: float = 0.2
    clip_eps_high: Optional[float] = None  # None = clip_eps (DAPO suggests 0.28)
    clip_ratio_c: Optional[float] = None  # dual clip for A < 0 (verl's clip_ratio_c, 3.0 there); None = off
    loss_aggregation: str = "seq_mean_token_mean"
    scale_rewards: str = "group"
    std_ddof: int = 1
    adv_eps: float = 1e-6
    num_inner_updates: int = 1  # μ: passes over each rollout batch
    mini_batch_prompts: int = 0  # prompts (groups) per optimizer update, verl's ppo_mini_batch_size; 0 = all
    micro_batch_size: int = 0  # sequences per gradient-accumulation slice; 0 = whole batch
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self):
        # types first, so that NaN / inf / strings are named here instead of passing the comparisons below
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"GRPOConfig.{f.name} must be an integer, got {v!r}")
            if f.type in ("float", "Optional[float]") and not (v is None and f.type != "float") and (
                    isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"GRPOConfig.{f.name} must be a finite number, got {v!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 for group advantages, got {self.group_size}")
        if self.prompts_per_step < 1 or self.total_steps < 1 or self.num_inner_updates < 1:
            raise ValueError("prompts_per_step, total_steps and num_inner_updates must be >= 1")
        for name in ("learning_rate", "clip_eps", "adam_eps", "max_grad_norm", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GRPOConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta", "weight_decay", "adv_eps", "warmup_steps", "micro_batch_size", "std_ddof"):
            if getattr(self, name) < 0:
                raise ValueError(f"GRPOConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GRPOConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.clip_eps_high is not None and not self.clip_eps_high > 0:
            raise ValueError(f"GRPOConfig.clip_eps_high must be > 0 (or None), got {self.clip_eps_high}")
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1:
            raise ValueError(f"GRPOConfig.clip_ratio_c must be > 1 (or None: no dual clip), got {self.clip_ratio_c}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"unknown kl_estimator {self.kl_estimator!r}; choose from {sorted(KL_ESTIMATORS)}")
        if self.loss_aggregation not in LOSS_AGGREGATION:
            raise ValueError(f"unknown loss_aggregation {self.loss_aggregation!r}; choose from {sorted(LOSS_AGGREGATION)}")
        if self.scale_rewards not in ADVANTAGE_SCALES:
            raise ValueError(f"unknown scale_rewards {self.scale_rewards!r}; registered: {sorted(ADVANTAGE_SCALES)}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be constant or linear, got {self.lr_schedule!r}")
        if self.mini_batch_prompts < 0 or self.mini_batch_prompts > self.prompts_per_step:
            raise ValueError(f"mini_batch_prompts must be in [0, prompts_per_step={self.prompts_per_step}], "
                             f"got {self.mini_batch_prompts}")
        mb = self.mini_batch_prompts or self.prompts_per_step
        for prompts in sorted({mb, self.prompts_per_step % mb} - {0}, reverse=True):  # the last mini-batch too
            if self.micro_batch_size and (self.group_size * prompts) % self.micro_batch_size:
                raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide the (mini-)batch of "
                                 f"{self.group_size * prompts} sequences ({prompts} prompts × group_size "
                                 f"{self.group_size}; prompts_per_step {self.prompts_per_step}, mini_batch_prompts "
                                 f"{self.mini_batch_prompts})")
        if self.lr_schedule == "linear" and self.warmup_steps >= self.total_steps:
            raise ValueError(f"a linear schedule needs warmup_steps < total_steps, got {self.warmup_steps} >= "
                             f"{self.total_steps} (optax would hold the peak rate forever)")

    @property
    def batch_size(self) -> int:
        return self.group_size * self.prompts_per_step

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per rollout batch: μ × ⌈prompts / mini-batch⌉ (verl keeps the last, smaller one)."""
        mb = self.mini_batch_prompts or self.prompts_per_step
        return self.num_inner_updates * -(-self.prompts_per_step // mb)


@flax.struct.dataclass
class GRPOState:
    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def restart_schedule(opt_state):
    """A fresh learning-rate schedule with the AdamW moments (and their bias-correction count) kept: what
    paper 1 does at every new task of a sequence (new LambdaLR, same torch AdamW state; docs/protocols.md#b1)."""
    return jax.tree.map(lambda s: s._replace(count=jnp.zeros_like(s.count)) if isinstance(s, optax.ScaleByScheduleState) else s,
                        opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))


def make_optimizer(cfg: GRPOConfig):
    if cfg.lr_schedule == "linear":
        lr = optax.linear_schedule(cfg.learning_rate, 0.0, cfg.total_steps - cfg.warmup_steps)
        if cfg.warmup_steps:
            lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps), lr],
                                      [cfg.warmup_steps])
    elif cfg.warmup_steps:  # constant after a linear warmup (the setting used to be read by "linear" only)
        lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
                                   optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])
    else:
        lr = cfg.learning_rate
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                       optax.adamw(lr, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps, weight_decay=cfg.weight_decay))


def init_state(params, key, cfg: GRPOConfig) -> GRPOState:
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)  # fp32 master weights
    return GRPOState(params, make_optimizer(cfg).init(params), jnp.zeros((), jnp.int32), key)


def scored_from(batch: dict) -> int:
    """First scored position: the loss mask covers the last L of the T − 1 predictions (static;
    :func:`esjax.models.decoder.first_scored`)."""
    return first_scored(batch["tokens"].shape[1], batch["loss_mask"].shape[1])


def completion_logprobs(params, model_cfg, tokens, mask, start: int, temperature: float = 1.0, prefix_len: int = 0,
                        group: int = 1, untempered: bool = False):
    """Log-probs of the sampled tokens y_t = tokens[:, t], start ≤ t < T, from one forward pass.
    tokens, mask: (B, T); with z_t the logits predicting y_t::

        tempered   = log softmax(z_t / T)[y_t]   (B, T − start): what the sampler drew from (without its
                     top-k/top-p truncation, as TRL and verl): GRPO's ratio and policy gradient
        untempered = log softmax(z_t)[y_t]       (B, T − start): the model's own distribution: KL terms

    Returns ``tempered``, or ``(tempered, untempered)`` with ``untempered`` (static). ``temperature``
    (static, > 0): at 1 both are the same array (exactly :func:`esjax.models.decoder.token_logprobs`).
    ``prefix_len``, ``group``: shared prompt columns run once (see ``logits_from``)."""
    logits = scoring_logits(params, model_cfg, tokens, mask, start, prefix_len, None, group)
    raw = log_softmax_at(logits, tokens[:, start:])
    tempered = raw if temperature == 1 else log_softmax_at(logits / temperature, tokens[:, start:])
    return (tempered, raw) if untempered else tempered


@functools.lru_cache(maxsize=None)
def make_completion_logprobs(model_cfg, start: int, temperature: float = 1.0, prefix_len: int = 0, group: int = 1,
                             micro: int = 0):
    """A jitted ``(params, tokens, mask) -> tempered log-probs`` (:func:`completion_logprobs`): the rollout
    policy's ``old_logp``, scored in the learner's convention so that ρ ≡ 1 before the first update.
    ``micro`` > 0: scored gcd(B, ``micro``) rows at a time (``lax.map``; the learner's micro-batch), so the
    (B, L, V) logits of the whole batch are never held at once."""

    def fn(params, tokens, mask):
        B = tokens.shape[0]
        m = math.gcd(B, micro) if micro else B
        score = lambda t, k: completion_logprobs(params, model_cfg, t, k, start, temperature, prefix_len,  # noqa: E731
                                                 math.gcd(m, group))
        if m == B:
            return score(tokens, mask)
        chunks = jax.lax.map(lambda tk: score(*tk), (tokens.reshape(B // m, m, -1), mask.reshape(B // m, m, -1)))
        return chunks.reshape(B, -1)

    return jax.jit(fn)


def grpo_loss(params, model_cfg, batch: dict, weights, ref_logp, cfg: GRPOConfig, prefix_len: int = 0,
              group: int = 1):
    """Σ_t w_t ℓ_t over one (micro-)batch, and summed metric numerators. The ratio and policy gradient use
    the log-probs tempered by the sampling temperature ``cfg.temperature``; the KL term (``ref_logp``
    untempered, from the reference model) the policy's untempered log-probs."""
    logp, logp_model = completion_logprobs(params, model_cfg, batch["tokens"], batch["attn_mask"],
                                           scored_from(batch), cfg.temperature, prefix_len, group, untempered=True)
    old = batch.get("old_logp")
    old = jax.lax.stop_gradient(logp) if old is None else old
    eps_high = cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high
    m = batch["loss_mask"]
    loss_t, kl_t, clipped = per_token_loss(logp, old, ref_logp, batch["advantages"], cfg.clip_eps, eps_high,
                                           cfg.beta, cfg.kl_estimator, kl_logp=logp_model, mask=m,
                                           clip_ratio_c=cfg.clip_ratio_c)
    aux = {"kl_sum": (kl_t * m).sum(), "clip_sum": (clipped * m).sum(), "tokens": m.sum()}
    return (loss_t * weights).sum(), aux


def check_reference(cfg: GRPOConfig, ref_params) -> None:
    """β > 0 needs the reference model: without it the KL penalty would silently be 0 (the β = 0 update)."""
    if cfg.beta > 0 and ref_params is None:
        raise ValueError(f"GRPOConfig.beta={cfg.beta} penalises the KL to a reference model, but no ref_params "
                         f"were given (pass the reference, e.g. the base model's params, or set beta=0)")


@jax.named_scope("learner")  # profile name of the GRPO update
def grpo_step(state: GRPOState, batch: dict, ref_params, model_cfg, cfg: GRPOConfig, prefix_len: int = 0,
              group: int = 1):
    """One optimizer update on a rollout batch (see module docstring). ``ref_params`` may be None when
    no KL is wanted (β = 0 and nothing tracked). ``prefix_len``: the tokens' first columns are one prompt
    prefix shared by every row (``PromptBatch.prefix_len``), run once per micro-batch; ``group``: rows
    come in runs of ``group`` copies of one prompt (``PromptBatch.group``), whose prompt columns run once
    per run. Pure: jit with static model_cfg, cfg, prefix_len and group. Memory is bounded by the
    micro-batch: the policy's forward and backward and the reference model's scoring (the KL term, tracked
    by default) each run one micro-batch at a time."""
    check_reference(cfg, ref_params)
    weights = LOSS_AGGREGATION[cfg.loss_aggregation](batch["loss_mask"])
    B = batch["tokens"].shape[0]
    mb = cfg.micro_batch_size or B
    n_micro, micro_group = B // mb, math.gcd(mb, group)
    split = lambda x: x.reshape(n_micro, mb, *x.shape[1:])  # noqa: E731
    micro = {k: split(v) for k, v in batch.items()}
    grad_fn = jax.value_and_grad(grpo_loss, has_aux=True)

    def body(acc, xs):
        mbatch, w = xs
        ref_logp = None
        if ref_params is not None:  # scored per micro-batch too: its (mb, L, V) logits, not the batch's
            ref_logp = jax.lax.stop_gradient(token_logprobs(
                ref_params, model_cfg, mbatch["tokens"], mbatch["attn_mask"], start=scored_from(mbatch),
                prefix_len=prefix_len, group=micro_group))
        (loss, aux), g = grad_fn(state.params, model_cfg, mbatch, w, ref_logp, cfg, prefix_len, micro_group)
        return jax.tree.map(jnp.add, acc, (loss, aux, g)), None

    zero = (jnp.zeros(()), {"kl_sum": jnp.zeros(()), "clip_sum": jnp.zeros(()), "tokens": jnp.zeros(())},
            jax.tree.map(jnp.zeros_like, state.params))
    (loss, aux, grads), _ = jax.lax.scan(body, zero, (micro, split(weights)))
    tx = make_optimizer(cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # a non-finite gradient (an overflow in one token's loss) is not applied: params and moments stay, the
    # step counts and logs skipped_nonfinite = 1 (verl skips such a step too: dp_actor, "grad_norm is not finite")
    finite = jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state),
                                     (state.params, state.opt_state))
    tokens = jnp.maximum(aux["tokens"], 1)
    metrics = {"loss": loss, "clip_frac": aux["clip_sum"] / tokens, "grad_norm": grad_norm,
               "update_norm": jnp.where(finite, optax.tree.norm(updates), 0.0),
               "skipped_nonfinite": 1.0 - finite.astype(jnp.float32)}
    if ref_params is not None:  # no reference model, no KL: the column is absent, not a zero
        metrics["kl"] = aux["kl_sum"] / tokens
    return GRPOState(params, opt_state, state.step + 1, state.key), metrics
