"""Batched autoregressive generation: jit-compiled prefill + ``lax.while_loop`` decode with a KV cache.

Prompts are left padded to a bucketed length (so repeated calls with similar prompts reuse the compiled
program). Prompts that start alike (a chat template's system turn, a task's instructions) can share their
common prefix: the layout is then [prefix | left-padded suffixes], the prefix is prefilled once (batch 1)
and its keys/values broadcast to every row — vLLM's prefix caching, which the seeds' ES code relies on;
GRPO's G copies of each prompt likewise prefill once per group.
Each row stops at its first EOS; the loop ends when every row has stopped or after
``max_new_tokens``. Decoding is greedy (temperature 0) or sampled from softmax(logits / T) restricted to
the top-k tokens and the top-p nucleus, from an explicit PRNG key.

Returned log-probs are those of the *untempered* model distribution log softmax(logits)[token], not of
the distribution the token was drawn from (softmax(logits / T), truncated): the quantity a KL to the
base model needs (ES's KL penalty compares them with the base model's). GRPO does not use them: its
ratio and policy-gradient terms score the sampled tokens by log softmax(logits / T), rescored by the
learner (:func:`esjax.grpo.step.completion_logprobs`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esjax.compaction import compaction_cap
from esjax.models.config import ModelConfig
from esjax.models.precision import compute_params
from esjax.models.decoder import (KVCache, forward, forward_shared_prefix, grow_cache, init_cache, log_softmax_at,
                                  positions_from_mask, prefix_levels)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


GREEDY = SamplingConfig()


class Generation(NamedTuple):
    """tokens: (B, M) with pad after each row's end; logprobs: (B, M) (0 on padding), or None where the
    caller asked for none (``generate(..., logprobs=False)``); lengths: (B,) number of generated tokens
    including the EOS if one was produced."""

    tokens: jax.Array
    logprobs: Optional[jax.Array]
    lengths: jax.Array


def bucket(n: int, multiple: int = 16) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def shared_prefix_len(prompts: Sequence[Sequence[int]], multiple: int = 8) -> int:
    """Length of the prefix every prompt shares, rounded down to ``multiple`` (a stable static shape
    across batches) and leaving each prompt at least one token of its own (its last token's logits
    start the generation)."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = min(n, next((i for i, (a, b) in enumerate(zip(first, p)) if a != b), n))
    return max(0, n) // multiple * multiple


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 16, length: Optional[int] = None,
                prefix_len: int = 0):
    """Left-pad token lists to a bucketed length → (tokens (B, P) int32, mask (B, P) bool) numpy.

    With ``prefix_len`` > 0 (see :func:`shared_prefix_len`) the first ``prefix_len`` tokens, identical in
    every prompt, stay in columns [0, prefix_len) and only the rest is left padded: the padding sits
    between prefix and suffix, which the mask and :func:`positions_from_mask` handle like left padding."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    if prefix_len and any(list(p[:prefix_len]) != list(prompts[0][:prefix_len]) or len(p) <= prefix_len
                          for p in prompts):
        raise ValueError(f"the prompts do not share a prefix of {prefix_len} tokens followed by at least one more")
    longest = max(len(p) for p in prompts) - prefix_len
    P = (length - prefix_len) if length else bucket(longest, multiple)
    if longest > P:
        raise ValueError(f"prompt of {longest + prefix_len} tokens exceeds the padded length {P + prefix_len}")
    W = prefix_len + P
    tokens = np.full((len(prompts), W), pad_id, np.int32)
    mask = np.zeros((len(prompts), W), bool)
    tokens[:, :prefix_len] = np.asarray(prompts[0][:prefix_len], np.int32)
    mask[:, :prefix_len] = True
    for i, p in enumerate(prompts):
        start = W - (len(p) - prefix_len)
        tokens[i, start:] = p[prefix_len:]
        mask[i, start:] = True
    return tokens, mask


def sample_logits(logits, key, sampling: SamplingConfig, greedy_rows=None, rows=None):
    """Next token from (B, V) float32 logits under ``sampling``; rows where the optional (B,) bool
    ``greedy_rows`` is set take the argmax instead. Row i draws with its own key, ``fold_in(key, rows[i])``
    (``rows``: (B,) int row ids, default 0 … B − 1), so a row's draw depends on its id and ``key`` only, not
    on the batch around it: a decode loop that moves rows (EOS compaction) carries their ids."""
    greedy = jnp.argmax(logits, -1).astype(jnp.int32)
    if sampling.temperature == 0:
        return greedy
    rows = jnp.arange(logits.shape[0]) if rows is None else rows
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, rows)
    sampled = jax.vmap(lambda z, k: _sample(z[None], k, sampling)[0])(logits, keys)
    return sampled if greedy_rows is None else jnp.where(greedy_rows, greedy, sampled)


def _sample(logits, key, sampling: SamplingConfig):
    """A draw from softmax(logits / T) restricted to the top-k tokens and the top-p nucleus."""
    logits = logits / sampling.temperature
    neg = jnp.finfo(logits.dtype).min
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if sampling.top_p < 1:
        order = jnp.argsort(-logits, -1)
        sorted_logits = jnp.take_along_axis(logits, order, -1)
        probs = jax.nn.softmax(sorted_logits, -1)
        drop_sorted = (jnp.cumsum(probs, -1) - probs) > sampling.top_p  # keep the smallest set reaching p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, neg, logits)
    return jax.random.categorical(key, logits, -1).astype(jnp.int32)


def prefill(params, cfg: ModelConfig, tokens, mask, size: int, delta=None, prefix_len: int = 0, group: int = 1):
    """Fill a fresh KV cache of ``size`` slots with the prompts; returns (last-position logits (B, V), cache).
    A shared prefix (first ``prefix_len`` columns, static) runs once at batch 1, and with ``group`` > 1
    (static) each run of ``group`` consecutive rows holding the same prompt runs it once up to its last
    token; the keys/values are repeated to every row."""
    levels = prefix_levels(prefix_len, group, tokens.shape[1] - 1)
    if levels:
        logits, cache = forward_shared_prefix(params, cfg, tokens, mask, levels, size, delta, last_only=True)
    else:
        logits, cache = forward(params, cfg, tokens, positions_from_mask(mask), mask, delta=delta,
                                cache=init_cache(cfg, tokens.shape[0], size), fresh_cache=True, last_only=True)
    return logits[:, -1], cache


CACHE_BLOCK = ModelConfig.decode_cache_block  # the default cache_block (256): longer generations read the cache to the block


def decode_segments(max_new_tokens: int, cache_block: int = 0, steps_per_loop: int = 1) -> tuple:
    """Where the decode loop's segments end (step counts, the last = ``max_new_tokens``): segments of
    ``cache_block`` steps, rounded up to a multiple of ``steps_per_loop`` so that only the last segment
    has overrun steps; one segment when ``cache_block`` is 0 or ≥ ``max_new_tokens``."""
    if cache_block < 0:
        raise ValueError(f"cache_block must be >= 0, got {cache_block}")
    block = -(-cache_block // steps_per_loop) * steps_per_loop
    if not block or block >= max_new_tokens:
        return (max_new_tokens,)
    return tuple(range(block, max_new_tokens, block)) + (max_new_tokens,)


@jax.named_scope("rollout")  # profile names: rollout/prefill, rollout/decode
def generate(params, cfg: ModelConfig, tokens, mask, key, max_new_tokens: int,
             sampling: SamplingConfig = GREEDY, delta=None, prefix_len: int = 0, group: int = 1,
             greedy_rows=None, row_max_new=None, member_axis: Optional[str] = None,
             steps_per_loop: Optional[int] = None, cache_block: Optional[int] = None,
             logprobs: bool = True, compaction: Optional[int] = None) -> Generation:
    """Generate up to ``max_new_tokens`` tokens for left-padded prompts. tokens, mask: (B, P).
    Optional per-row arrays: ``greedy_rows`` (B,) bool decodes those rows greedily whatever ``sampling``
    says; ``row_max_new`` (B,) int stops each row after its own budget (1 ≤ budget ≤ ``max_new_tokens``: a
    row always emits its first token). Row i's
    token t is drawn with ``fold_in(k_t, i)``, k_t the t-th split of ``key`` (:func:`sample_logits`): it
    depends neither on ``max_new_tokens`` (a row's first n tokens are those a run with budget n draws) nor
    on which rows decode beside it.

    Pure and traceable: ``jax.jit``/``vmap`` it (see :func:`make_generate`). ``delta`` perturbs the
    weights inside every matmul (low-rank ES members); ``prefix_len`` (static) is the length of a prefix
    shared by every row (the layout of ``pad_prompts(..., prefix_len=...)``), prefilled once; ``group``
    (static): rows come in runs of ``group`` copies of one prompt (GRPO groups), each prefilled once.

    ``member_axis`` (static): the name of a ``vmap`` axis this call runs under (ES members). The decode
    loop then stops when every row of every instance along it is done, so its condition is one scalar
    for the whole vmapped batch. Without it, vmap turns the loop into one whose condition is batched, and
    XLA selects the whole carry, KV caches included, on every step and writes the caches at per-member
    positions (a scatter and a copy instead of an in-place update), which dominated the low-rank
    population's decode step in the H100 profile of docs/gpu.md. Tokens are unchanged (a finished row
    only emits padding).

    ``steps_per_loop`` and ``cache_block`` default (None) to the model config's ``decode_steps_per_loop``
    (1) and ``decode_cache_block`` (256), which a run sets from its RunConfig (``--set
    decode_steps_per_loop=4``), so every generation of the run — ES members, GRPO rollouts, evaluation —
    decodes the same way.

    ``logprobs`` (static): record log softmax(z_t)[y_t] of each drawn token (``Generation.logprobs``).
    False returns ``logprobs=None`` and skips the step's log-softmax over the vocabulary (a pass over the
    (B, V) logits per step: ≈ 0.1 ms of a 5.6 ms step at 480 rows of Qwen2.5-1.5B on an H100, docs/gpu.md
    §7), for callers that only read the tokens (ES members without a KL term, evaluation, GRPO rollouts,
    whose learner scores its own log-probs). Tokens and lengths are the same either way.

    ``steps_per_loop`` (static, k ≥ 1): decode k tokens per ``while_loop`` iteration, so the loop
    condition — on a GPU one device-to-host copy and a host decision per iteration, ≈ 0.7 ms per step under the
    tracer in the H100 profile of docs/gpu.md (3.2 ms of kernels per step) — is evaluated once per k tokens. Steps past
    ``max_new_tokens`` or after every row stopped run on finished rows (padding, nothing recorded; at
    most k − 1 of them per call), so tokens, log-probs and lengths are those of k = 1. The loop body is
    k copies of the step: k × the decode program's compile time.

    ``cache_block`` (static; 0 = off): the decode loop reads the KV cache
    only up to the block holding the current step. The loop runs in segments (:func:`decode_segments`:
    blocks rounded up to whole loop iterations, the last segment ending at M; a budget of at most one block
    is one segment, as with 0); the segment ending at step e reads and writes a cache of P + e slots,
    grown between segments layer by layer (:func:`esjax.models.decoder.grow_cache`), instead of P + M
    slots at every step. A step's attention reads the whole cache it is given, so over a generation of M
    tokens the cache bytes read fall from M·(P + M) slot-steps to about M·(P + M/2 + block/2) (exactly
    that when the block divides M); the weights read per step are unchanged. The same computation:
    masked slots add exact zeros to the softmax, so only the summation order changes — log-probs agree
    to float rounding and tokens are the same barring near-ties (tested equal on CPU). The decode program
    holds one loop per segment, each adding one step body's compile time. On 2 CPU cores (SmolLM2-135M,
    32 rows × 512 new tokens) blocks of 128 decoded 1.33x faster than the whole cache every step.

    ``compaction`` (static, h ≥ 0; None = the model config's ``decode_compaction``, 0 = off): rows that
    stopped stop costing row-steps. At each of the first h segment boundaries (so only when the loop has
    segments: ``cache_block`` < ``max_new_tokens``), the rows still running are moved to the front
    (a stable sort, per vmapped instance) and the rest of the generation runs on halves of the batch,
    one half after the other and only the halves that hold a running row (a loop with a dynamic trip
    count, 0 to 2; under ``member_axis`` the count is the largest over the instances). Each half's loop
    stops at its own last row, and reads and grows only its own rows' cache (the whole batch's cache stays
    at the boundary's size: with one halving at e the peak is B·(P + e) + ⌈B/2⌉·(P + M) slots; h is
    lowered where it would exceed the uncompacted B·(P + M), :func:`compaction_cap`).
    Every segment is still one loop body, at the size its depth gives (B, ⌈B/2⌉, ⌈B/4⌉, …): the CPU proxy
    compiles the low-rank population of Qwen2.5-1.5B shapes at 1,024 tokens in 48.8 s with h = 2, 42.6 s
    without (the sorts, gathers and nested loops). Each row computes what it computes without compaction
    (a forward is row-independent) up to float rounding: a matmul over fewer rows may accumulate in
    another order (on CPU, bf16 logits of 1 row vs 8 differ by ≈ 4e-3), so tokens are the same barring
    near-ties (equal in every CPU test), sampled rows included: a row draws with its own
    key whatever rows decode beside it (the loop carries each row's id). When more than half the rows still run, both halves
    run: the same row-steps, the weights read once more per step — a cost where the weights dominate a
    step's bytes (few short rows), small where the KV cache does (many long rows: the generations this is
    for); a run chooses h per call from the previous call's lengths (:func:`esjax.compaction.compaction_choice`).

    ``params`` in any dtype: they are cast to the compute dtype once, before the prefill and the decode
    loop (:func:`esjax.models.precision.compute_params`; nothing when they already are), so a loop never
    reads float32 master weights at every step, which the decoder's per-matmul casts would otherwise do
    for a caller that passes a learner's fp32 state (evaluation, drift probes). Every generation thus
    decodes at one precision, the ES members' and GRPO rollouts': matmul weights as before (each was cast
    at its use), norm scales rounded to the compute dtype (then applied in float32); on float32 compute
    nothing changes."""

    params = compute_params(params, cfg)
    B, P = tokens.shape
    steps_per_loop = cfg.decode_steps_per_loop if steps_per_loop is None else steps_per_loop
    cache_block = cfg.decode_cache_block if cache_block is None else cache_block
    compaction = cfg.decode_compaction if compaction is None else compaction
    if steps_per_loop < 1:
        raise ValueError(f"steps_per_loop must be >= 1, got {steps_per_loop}")
    if compaction < 0:
        raise ValueError(f"compaction must be >= 0, got {compaction}")
    if P + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {P} + {max_new_tokens} new tokens exceeds the model context "
                         f"of {cfg.max_position_embeddings}")
    eos = jnp.asarray(cfg.eos_token_ids or (-1,), jnp.int32)
    ends = decode_segments(max_new_tokens, cache_block, steps_per_loop)
    compaction = compaction_cap(B, P, ends, compaction)
    sampled = sampling.temperature > 0  # greedy rows need no ids (nor greedy_rows, unread at temperature 0)
    rows, greedy_rows = (jnp.arange(B, dtype=jnp.int32), greedy_rows) if sampled else (None, None)

    def draw(logits, key, rows, greedy):  # the next token (and its log-prob) from (B, V) logits; step t uses
        key, sub = jax.random.split(key)  # the t-th split, row i its fold_in with the row's id
        nxt = sample_logits(logits, sub, sampling, greedy, rows)
        lp = log_softmax_at(logits, nxt) if logprobs else None
        return nxt, lp, key

    with jax.named_scope("prefill"):
        last, cache = prefill(params, cfg, tokens, mask, P + ends[0], delta, prefix_len, group)
        nxt, lp, key = draw(last, key, rows, greedy_rows)
    width = max_new_tokens + steps_per_loop - 1  # columns for the overrun steps; sliced off at the end
    state = _Decoding(jnp.int32(0), cache, nxt, lp, jnp.full((B, width), cfg.pad_token_id, jnp.int32),
                      jnp.zeros((B, width), jnp.float32) if logprobs else None, jnp.zeros((B,), bool),
                      jnp.zeros((B,), jnp.int32), key, mask.sum(1).astype(jnp.int32), row_max_new, rows,
                      None if greedy_rows is None else jnp.asarray(greedy_rows, bool))

    def running(end):  # the loop condition of the segment ending at step ``end``
        def cond(s):
            finished = jnp.all(s.done)
            if member_axis is not None:  # one condition for every vmapped instance (see above)
                finished = jax.lax.pmin(finished.astype(jnp.int32), member_axis) > 0
            return (s.t < end) & ~finished
        return cond

    def step(s):  # record token t (drawn from the previous logits), run it, draw token t + 1
        t, done, logps = s.t, s.done, s.logps
        if steps_per_loop > 1:  # an overrun step (t ≥ max_new_tokens) records nothing
            done = done | (t >= max_new_tokens)
        if logprobs:
            logps = logps.at[:, t].set(jnp.where(done, 0.0, s.lp))
        nxt = jnp.where(done, cfg.pad_token_id, s.nxt)
        out = s.out.at[:, t].set(nxt)
        lengths = s.lengths + (~done).astype(jnp.int32)
        done = done | jnp.any(nxt[:, None] == eos[None], -1)
        if s.budget is not None:
            done = done | (lengths >= s.budget)
        logits, cache = forward(params, cfg, nxt[:, None], (s.start + t)[:, None], jnp.ones((nxt.shape[0], 1), bool),
                                cache=s.cache, delta=delta, decode=True)
        # drawn here, not at the next step: the loop carries a token, not the (B, V) float32 logits, so the
        # logits' cast to float32 fuses into the argmax (or the sampler) instead of being written to memory
        # (an H100 trace at 480 rows of Qwen2.5-1.5B: 148 µs to write them, 105 µs to read them for the argmax,
        # of a 5.64 ms step; docs/gpu.md §7)
        nxt, lp, key = draw(logits[:, -1], s.key, s.rows, s.greedy)
        return s._replace(t=t + 1, cache=cache, nxt=nxt, lp=lp, out=out, logps=logps, done=done, lengths=lengths,
                          key=key)

    def body(s):
        for _ in range(steps_per_loop):
            s = step(s)
        return s

    def decode(s, i, halvings, compacted=False):  # segments i, i + 1, … on the rows of ``s``
        if i and halvings and not compacted and s.done.shape[0] > 1:
            return halves(s, i, halvings)
        if i:  # the segment's cache: P + its end slots
            s = s._replace(cache=grow_cache(s.cache, P + ends[i]))
        s = jax.lax.while_loop(running(ends[i]), body, s)
        return decode(s, i + 1, halvings) if i + 1 < len(ends) else s

    def halves(s, i, halvings):  # segments i, … on the halves of ``s`` that hold a running row (see above)
        rows = s.done.shape[0]
        half = -(-rows // 2)
        order = jnp.argsort(s.done, stable=True)  # running rows first
        order = jnp.concatenate([order, jnp.full((2 * half - rows,), rows, order.dtype)])  # index ``rows``: padding
        live = jnp.sum(~s.done)
        if member_axis is not None:  # one trip count for every vmapped instance
            live = jax.lax.pmax(live, member_axis)

        def one(j, outs):
            idx = jax.lax.dynamic_slice_in_dim(order, j * half, half)
            sub = decode(_take_rows(s, idx), i, halvings - 1, compacted=True)
            put = lambda full, part: None if full is None else full.at[idx].set(part, mode="drop")  # noqa: E731
            return tuple(map(put, outs, (sub.out, sub.logps, sub.lengths)))

        out, logps, lengths = jax.lax.fori_loop(0, (live + half - 1) // half, one, (s.out, s.logps, s.lengths))
        return s._replace(out=out, logps=logps, lengths=lengths)

    with jax.named_scope("decode"):
        state = decode(state, 0, compaction)
    out, logps = state.out[:, :max_new_tokens], state.logps
    return Generation(out, None if logps is None else logps[:, :max_new_tokens], state.lengths)


class _Decoding(NamedTuple):
    """The decode loop's carry. Per row (leading axis B): the cache's keys, values and valid slots, ``nxt``
    (the token drawn for step ``t``) and ``lp`` (its log-prob, or None), ``out`` and ``logps`` (B, M + k − 1)
    (recorded tokens and log-probs, or None), ``done``, ``lengths``, ``start`` (prompt lengths: the
    generated tokens' positions start there), ``budget`` (``row_max_new`` or None), and when sampling
    ``rows`` (the rows' ids: their draws' keys) and ``greedy`` (``greedy_rows`` or None); shared: ``t``
    (steps taken), the cache's ``length`` and the sampling ``key``."""

    t: jax.Array
    cache: KVCache
    nxt: jax.Array
    lp: Optional[jax.Array]
    out: jax.Array
    logps: Optional[jax.Array]
    done: jax.Array
    lengths: jax.Array
    key: jax.Array
    start: jax.Array
    budget: Optional[jax.Array]
    rows: Optional[jax.Array] = None
    greedy: Optional[jax.Array] = None


def _take_rows(s: _Decoding, idx) -> _Decoding:
    """The rows ``idx`` (b,) of the carry; an index past the last row (padding) gives a copy of the last
    row marked done, which records nothing."""
    take = lambda x: None if x is None else jnp.take(x, idx, axis=0, mode="clip")  # noqa: E731
    cache = s.cache._replace(k=tuple(map(take, s.cache.k)), v=tuple(map(take, s.cache.v)), valid=take(s.cache.valid))
    return s._replace(cache=cache, nxt=take(s.nxt), lp=take(s.lp), out=take(s.out), logps=take(s.logps),
                      done=take(s.done) | (idx >= s.done.shape[0]), lengths=take(s.lengths), start=take(s.start),
                      budget=take(s.budget), rows=take(s.rows), greedy=take(s.greedy))


@functools.lru_cache(maxsize=None)
def make_generate(cfg: ModelConfig, max_new_tokens: int, sampling: SamplingConfig = GREEDY, prefix_len: int = 0,
                  group: int = 1, steps_per_loop: Optional[int] = None, cache_block: Optional[int] = None,
                  logprobs: bool = True, compaction: Optional[int] = None):
    """A jitted ``(params, tokens, mask, key, delta=None, greedy_rows=None, row_max_new=None) -> Generation``
    for fixed static settings (see :func:`generate`; ``logprobs=False``: tokens and lengths only)."""

    @jax.jit
    def fn(params, tokens, mask, key, delta=None, greedy_rows=None, row_max_new=None):
        return generate(params, cfg, tokens, mask, key, max_new_tokens, sampling, delta, prefix_len, group,
                        greedy_rows, row_max_new, steps_per_loop=steps_per_loop, cache_block=cache_block,
                        logprobs=logprobs, compaction=compaction)

    return fn


def generate_reference(params, cfg: ModelConfig, tokens, mask, max_new_tokens: int,
                       sampling: SamplingConfig = GREEDY, key=None):
    """Generation by full re-forward of the growing sequence (no cache): the test oracle. Greedy, or drawn
    under ``sampling`` with token t from the t-th split of ``key`` (key, sub = split(key) once per token:
    :func:`generate`'s schedule). The sequence lives in a (B, P + M) buffer whose unwritten columns are
    masked out (causal attention never reads them), so one compiled forward serves every length."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    B, P = tokens.shape
    seq = np.concatenate([tokens, np.full((B, max_new_tokens), cfg.pad_token_id, np.int32)], 1)
    seen = np.concatenate([mask, np.zeros((B, max_new_tokens), bool)], 1)
    done = np.zeros(B, bool)
    outs = []
    key = jax.random.key(0) if key is None else key
    fwd = jax.jit(lambda p, t, m, at: forward(p, cfg, t, positions_from_mask(m), m)[0][:, at])
    for i in range(max_new_tokens):
        key, sub = jax.random.split(key)
        nxt = np.asarray(sample_logits(fwd(params, seq, seen, P + i - 1), sub, sampling)).astype(np.int32)
        nxt = np.where(done, cfg.pad_token_id, nxt)
        outs.append(nxt)
        done |= np.isin(nxt, cfg.eos_token_ids)
        seq[:, P + i], seen[:, P + i] = nxt, True
        if done.all():
            break
    return np.stack(outs, 1)
