"""Pure-JAX decoder for the Llama / Qwen2 / Qwen3 family.

Parameters are a plain dict pytree; ``layers`` is a list with one dict per transformer block::

    embed       (V, D)            final_norm (D,)          lm_head (D, V)   [untied only]
    layers[i]/attn_norm (D,)      layers[i]/mlp_norm (D,)
    layers[i]/wq (D, H·Dh)  wk, wv (D, K·Dh)  wo (H·Dh, D)
    layers[i]/bq (H·Dh,)  bk, bv (K·Dh,)                       [qwen2 only]
    layers[i]/q_norm, k_norm (Dh,)                             [qwen3 only]
    layers[i]/w_gate, w_up (D, F)  w_down (F, D)

A decode loop may read the *decoding layout* (:func:`decoding_layout`): each layer's weights that read the
same input joined into one (:data:`JOINED_WEIGHTS`: ``w_qkv`` (D, (H + 2K)·Dh) = [wq | wk | wv] and
``w_gate_up`` (D, 2F) = [w_gate | w_up]), so each input projection is one GEMM over one weight; deltas keep
the parameter layout (``wq``, ``w_gate``, ...) and apply to their column blocks.

The layer loop is unrolled at trace time rather than a ``lax.scan`` over stacked weights: on CPU a scan
slices (copies) every layer's weights and KV cache at every decode step, which measured 30 % slower
(see README, design notes). Each layer's leaves are separate pytree leaves, so per-leaf noise keys are
automatically per-layer too.

Each block computes  h = x + Attn(RMSNorm(x));  y = h + W_down(silu(W_gate n) ⊙ W_up n), n = RMSNorm(h),
with rotary position embeddings (half-split / ``rotate_half`` convention) and grouped-query attention.
``forward`` optionally reads and writes a preallocated KV cache so the same code serves training,
prefill and one-token decode steps. An optional ``delta`` (see :mod:`esjax.models.delta`) perturbs any
parameter inside the matmuls.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from esjax.models.config import DTYPES, ModelConfig
from esjax.models.delta import LowRank, add_lowrank, apply_dense, embed_lookup, linear, tied_logits


def param_shapes(cfg: ModelConfig) -> dict:
    """Shapes of every parameter leaf for ``cfg`` (the contract loaders are checked against)."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    layer = {"attn_norm": (D,), "wq": (D, q), "wk": (D, kv), "wv": (D, kv), "wo": (q, D),
             "mlp_norm": (D,), "w_gate": (D, F), "w_up": (D, F), "w_down": (F, D)}
    if cfg.qkv_bias:
        layer.update(bq=(q,), bk=(kv,), bv=(kv,))
    if cfg.qk_norm:
        layer.update(q_norm=(cfg.head_dim,), k_norm=(cfg.head_dim,))
    shapes = {"embed": (V, D), "layers": [dict(layer) for _ in range(cfg.num_layers)], "final_norm": (D,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (D, V)
    return shapes


def init_params(cfg: ModelConfig, key, std: float = 0.02) -> dict:
    """Random parameters (normal(0, std) matrices, unit norms, zero biases) in ``cfg.param_dtype``."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(shapes, is_leaf=lambda s: isinstance(s, tuple))[0]]
    keys = jax.random.split(key, len(leaves))
    out = []
    for path, shape, k in zip(paths, leaves, keys):
        out.append(jnp.ones(shape) if "norm" in path else std * jax.random.normal(k, shape))
    dtype = DTYPES[cfg.param_dtype]
    return jax.tree.unflatten(treedef, [x.astype(dtype) for x in out])


def check_params(params: dict, cfg: ModelConfig, source: str = "params") -> None:
    """Raise ValueError naming every leaf whose presence or shape disagrees with ``cfg``."""
    expected = param_shapes(cfg)
    problems = []

    def walk(exp, got, prefix):
        if isinstance(exp, list):
            if not isinstance(got, (list, tuple)) or len(got) != len(exp):
                problems.append(f"{prefix}: expected a list of {len(exp)} layers")
                return
            for i, (e, g) in enumerate(zip(exp, got)):
                walk(e, g, f"{prefix}{i}/")
            return
        for k, v in exp.items():
            if k not in got:
                problems.append(f"missing {prefix}{k}")
            elif isinstance(v, (dict, list)):
                walk(v, got[k], f"{prefix}{k}/")
            elif tuple(got[k].shape) != tuple(v):
                problems.append(f"{prefix}{k}: shape {tuple(got[k].shape)}, expected {tuple(v)}")
        for k in got:
            if k not in exp:
                problems.append(f"unexpected {prefix}{k}")

    walk(expected, params, "")
    if problems:
        raise ValueError(f"{source} do not match the model config: " + "; ".join(problems))


JOINED_WEIGHTS = (("w_qkv", ("wq", "wk", "wv")), ("w_gate_up", ("w_gate", "w_up")))
"""The decoding layout's joined weights: (name, the layer's weights it joins column-wise, in order). Each
group reads one input (the attention's and the MLP's normed hidden state)."""


def decoding_layout(params: dict) -> dict:
    """``params`` in the decoding layout: in every layer, each group of :data:`JOINED_WEIGHTS` replaced by
    one weight, their column-wise concatenation (the forward is the same function: each input projection
    reads one weight with one GEMM). Why: XLA:GPU merges dots that share an input itself, but inside the
    vmapped decode loop of an ES population it joined W_gate and W_up at every step (12 % of the low-rank
    step's kernel time on an H100, docs/gpu.md §5), and it ran q, k, v as one Triton GEMM that builds the
    concatenation of wq, wk, wv inside the kernel (≈ 20 % of peak, §6), out of cuBLAS's reach; joined once
    per population call, there is nothing left to merge. Traceable; only complete groups are joined, and a
    tree without layers is returned as is."""
    layers = params.get("layers") if isinstance(params, dict) else None
    if not layers:
        return params

    def join(lp):
        lp = dict(lp)
        for name, parts in JOINED_WEIGHTS:
            if all(p in lp for p in parts):
                lp[name] = jnp.concatenate([lp.pop(p) for p in parts], axis=1)
        return lp

    return {**params, "layers": [join(lp) for lp in layers]}


def joinable_weights(params) -> tuple:
    """The names of the weights :func:`decoding_layout` joins in ``params`` (every layer's complete
    groups of :data:`JOINED_WEIGHTS`); empty for a tree without layers."""
    layers = params.get("layers") if isinstance(params, dict) else None
    if not layers or not all(isinstance(lp, dict) for lp in layers):
        return ()
    complete = [parts for _, parts in JOINED_WEIGHTS if all(p in lp for lp in layers for p in parts)]
    return tuple(p for parts in complete for p in parts)


def _projections(h, lp, ld, joined: str, widths: tuple):
    """h @ W_p (with each delta) for the weights p of the :data:`JOINED_WEIGHTS` group ``joined``, from either
    layout: the parameter layout's separate weights, or the decoding layout's one joined weight (one GEMM,
    split into column blocks of ``widths``, the parts' output widths; a low-rank delta of p applies to its
    block)."""
    parts = dict(JOINED_WEIGHTS)[joined]
    if joined not in lp:
        return tuple(linear(h, lp[p], ld.get(p)) for p in parts)
    if any(ld.get(p) is not None and not isinstance(ld.get(p), LowRank) for p in parts):
        raise ValueError(f"a dense delta of {' / '.join(parts)} cannot apply to the joined {joined} weight: pass "
                         f"the parameter layout (unjoined) with dense deltas")
    y = h @ lp[joined].astype(h.dtype)
    out, at = [], 0
    for p, w in zip(parts, widths):
        out.append(add_lowrank(y[..., at:at + w], h, ld.get(p)))
        at += w
    return tuple(out)


class KVCache(NamedTuple):
    """Preallocated cache. k, v: tuples of L arrays (B, K, S, Dh); valid: (B, S) slots holding real
    tokens; length: () the next slot to write."""

    k: tuple
    v: tuple
    valid: jax.Array
    length: jax.Array


def init_cache(cfg: ModelConfig, batch: int, size: int) -> KVCache:
    shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers))
    return KVCache(zeros, tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers)),
                   jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32))


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies θ^(-2i/Dh), with Llama-3 wavelength-dependent scaling when configured."""
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim))
    s = cfg.rope_scaling
    if s is not None:
        low_wl = s.original_max_position_embeddings / s.low_freq_factor
        high_wl = s.original_max_position_embeddings / s.high_freq_factor
        wl = 2 * np.pi / inv
        smooth = (s.original_max_position_embeddings / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        scaled = np.where(wl > low_wl, inv / s.factor, inv)
        mid = (wl <= low_wl) & (wl >= high_wl)
        inv = np.where(mid, (1 - smooth) * inv / s.factor + smooth * inv, scaled)
    return inv.astype(np.float32)


def apply_rope(x, positions, inv_freq):
    """x: (B, T, n, Dh), positions: (B, T) → x·cos + rotate_half(x)·sin (computed in float32)."""
    ang = positions[..., None].astype(jnp.float32) * inv_freq  # (B, T, Dh/2)
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], -1)
    return (xf * cos + rot * sin).astype(x.dtype)


def rms_norm(x, w, eps, d=None):
    """w ⊙ x / sqrt(mean(x²) + eps), statistics in float32."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + eps)
    return (apply_dense(w, d).astype(jnp.float32) * xf).astype(x.dtype)


def attention(q, k, v, mask):
    """Grouped-query softmax attention. q: (B, T, H, Dh); k, v: (B, K, S, Dh); mask: (B, T, S) → (B, T, H, Dh).

    Query head h reads kv head h // (H/K); K/V are never repeated and the (B, K, S, Dh) layout lets the
    batched dots read a KV cache without transposing it.
    """
    B, T, H, Dh = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    q = q.reshape(B, T, K, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, Dh) / np.sqrt(Dh).astype(q.dtype)
    s = jnp.einsum("bkqd,bksd->bkqs", q, k).astype(jnp.float32)
    m = jnp.broadcast_to(mask[:, None, None], (B, 1, G, T, S)).reshape(B, 1, G * T, S)
    p = jax.nn.softmax(jnp.where(m, s, jnp.finfo(jnp.float32).min), -1).astype(v.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", p, v)
    return out.reshape(B, K, G, T, Dh).transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def _block(cfg: ModelConfig, inv_freq, x, positions, lp, ld, mask, cache=None, decode: bool = False):
    """One transformer block; returns (x, (k, v)).

    Without ``cache`` the T tokens attend among themselves under ``mask`` (B, T, T) and (k, v) are their
    keys/values (B, K, T, Dh). ``cache`` = (k_c, v_c, at, fresh) with this layer's cache (B, K, S, Dh):
    the new keys/values are written at slots [at, at + T) first and the queries attend over all S slots
    under ``mask`` (B, T, S) (``fresh``, static: the cache holds nothing yet, so they attend among
    themselves under a (B, T, T) mask); (k, v) are then the updated caches. Writing before reading leaves
    the update slice the cache's only user, so XLA updates it in place instead of copying it every step.
    ``decode`` (static): a generation's decode step (T = 1), whose attention may be the fused kernel
    (``cfg.decode_attention``); never differentiated, unlike the learner's cached forwards."""
    B, T, _ = x.shape
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = lambda n: ld.get(n)  # noqa: E731  (delta leaf or None)
    with jax.named_scope("attention"):  # profile names: attention, mlp, head (see forward)
        h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps, g("attn_norm"))
        q, k, v = _projections(h, lp, ld, "w_qkv", (H * Dh, K * Dh, K * Dh))
        if cfg.qkv_bias:
            q, k, v = (t + apply_dense(lp[b], g(b)).astype(t.dtype) for t, b in ((q, "bq"), (k, "bk"), (v, "bv")))
        q, k, v = q.reshape(B, T, H, Dh), k.reshape(B, T, K, Dh), v.reshape(B, T, K, Dh)
        if cfg.qk_norm:
            q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps, g("q_norm"))
            k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps, g("k_norm"))
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, T, Dh)
        if cache is None:
            att = attention(q, k, v, mask)
        else:
            k_c, v_c, at, fresh = cache
            if fresh:
                att = attention(q, k, v, mask)
            k = jax.lax.dynamic_update_slice(k_c, k.astype(k_c.dtype), (0, 0, at, 0))
            v = jax.lax.dynamic_update_slice(v_c, v.astype(v_c.dtype), (0, 0, at, 0))
            if not fresh and decode and T == 1 and cfg.decode_attention == "pallas":  # a decode step: the kernel
                from esjax.models.decode_attention import decode_attention  # Pallas is imported only if chosen
                att = decode_attention(q.reshape(B, K, H // K, Dh), k, v, mask[:, 0], at + 1).reshape(B, T, H, Dh)
            elif not fresh:
                att = attention(q, k, v, mask)
        x = x + linear(att.reshape(B, T, H * Dh), lp["wo"], g("wo"))
    with jax.named_scope("mlp"):
        h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps, g("mlp_norm"))
        gate, up = _projections(h, lp, ld, "w_gate_up", (cfg.intermediate_size,) * 2)
        m = jax.nn.silu(gate) * up
        x = x + linear(m, lp["w_down"], g("w_down"))
    return x, (k, v)


# ModelConfig.remat → the jax.checkpoint policy of each block in a differentiated forward (None: no checkpoint;
# nothing_saveable: only the block's inputs are kept and its forward runs again in the backward pass)
REMAT_POLICIES = {"none": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "full": jax.checkpoint_policies.nothing_saveable}


def _run_block(cfg: ModelConfig, inv_freq, x, positions, lp, ld, mask, cache=None, decode: bool = False):
    """:func:`_block`, under ``jax.checkpoint`` with ``cfg.remat``'s policy (:data:`REMAT_POLICIES`) unless
    "none" or a decode step. Without differentiation it computes what ``_block`` computes; differentiated,
    the backward pass keeps what the policy saves of the block and recomputes the rest from its inputs:
    the same gradients for less memory (per token and layer, Qwen2.5-1.5B in bf16: ≈ 3 KB of inputs for
    "full" against ≈ 150 KB of activations for "none")."""
    policy = REMAT_POLICIES[cfg.remat]
    if policy is None or decode:
        return _block(cfg, inv_freq, x, positions, lp, ld, mask, cache, decode)
    arrays, fresh = (None, None) if cache is None else (cache[:3], cache[3])  # ``fresh`` is static: closed over
    block = lambda x, p, lp, ld, m, c: _block(cfg, inv_freq, x, p, lp, ld, m, c and (*c, fresh))  # noqa: E731
    return jax.checkpoint(block, policy=policy)(x, positions, lp, ld, mask, arrays)


def forward(params: dict, cfg: ModelConfig, tokens, positions, token_mask,
            cache: Optional[KVCache] = None, delta: Optional[dict] = None, fresh_cache: bool = False,
            last_only: bool = False, logits_from: int = 0, decode: bool = False):
    """Logits of the next token at every position.

    tokens, positions: (B, T) int; token_mask: (B, T) bool (False = padding).
    Without a cache the T tokens attend causally among themselves (training / scoring).
    With a cache they are written at slots [cache.length, cache.length + T) and attend to every valid
    slot up to their own (prefill and decode); ``fresh_cache=True`` (static) says the cache is still
    empty, so the prefill skips reading it. ``last_only`` computes logits for the last position only
    (prefill needs no others: the vocabulary projection is ~20 % of a 135M model's FLOPs); ``logits_from``
    (static) computes them for positions [logits_from, T) only (a learner needs no logits over the prompt).
    ``decode`` (static): a generation's decode step (one token per row on a filled cache, not
    differentiated): its attention is ``cfg.decode_attention``'s (:mod:`esjax.models.decode_attention`).
    Returns (logits (B, T − logits_from or 1, V) float32, new cache or None).
    """
    delta = delta or {}
    dt = cfg.dtype
    with jax.named_scope("embed"):
        x = embed_lookup(tokens, params["embed"], delta.get("embed")).astype(dt)
    inv_freq = jnp.asarray(rope_inv_freq(cfg))
    T = tokens.shape[1]
    mask = jnp.tril(jnp.ones((T, T), bool))[None] & token_mask[:, None, :]
    layer_deltas = delta.get("layers") or [{}] * cfg.num_layers
    if cache is None:
        for lp, ld in zip(params["layers"], layer_deltas):
            x, _ = _run_block(cfg, inv_freq, x, positions, lp, ld, mask)
    else:
        at = cache.length
        valid = jax.lax.dynamic_update_slice(cache.valid, token_mask, (0, at))
        if not fresh_cache:  # query t (slot at + t) sees every valid slot up to its own
            slots = jnp.arange(valid.shape[1])
            mask = valid[:, None, :] & (slots[None, None, :] <= at + jnp.arange(T)[None, :, None])
        ks, vs = [], []
        for lp, ld, kc, vc in zip(params["layers"], layer_deltas, cache.k, cache.v):
            x, (k, v) = _run_block(cfg, inv_freq, x, positions, lp, ld, mask, (kc, vc, at, fresh_cache), decode)
            ks.append(k)
            vs.append(v)
        cache = KVCache(tuple(ks), tuple(vs), valid, at + T)
    with jax.named_scope("head"):
        x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps, delta.get("final_norm"))
        x = x[:, -1:] if last_only else x[:, logits_from:]
        if cfg.tie_embeddings:
            logits = tied_logits(x, params["embed"], delta.get("embed"))
        else:
            logits = linear(x, params["lm_head"], delta.get("lm_head"))
    return logits.astype(jnp.float32), cache


def first_scored(width: int, scored: int) -> int:
    """Column s of the first scored token of (B, ``width``) sequences whose last ``scored`` tokens are
    scored, i.e. the last ``scored`` of the width − 1 next-token predictions: s = width − scored. The logits
    scoring them start at column s − 1 (``logits_from(first=s - 1)``). Prompt (width P) ++ completion
    (M tokens, ``loss_mask`` (B, M)): s = P. The one place this position is computed (static ints)."""
    if not 0 <= scored < width:
        raise ValueError(f"{scored} scored tokens in sequences of width {width}: at most width − 1 can be scored")
    return width - scored


def positions_from_mask(mask):
    """Position ids for left-padded rows: 0 at each row's first real token. mask: (B, T) → (B, T)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def prefix_levels(prefix_len: int, group: int, end: int) -> tuple:
    """The static sharing layout of (B, T) rows for :func:`forward_shared_prefix`: columns
    [0, prefix_len) shared by every row, then columns [prefix_len, end) shared by each run of ``group``
    consecutive rows (GRPO's G completions of one prompt). Returns ((end column, rows sharing it or 0 for
    all rows), ...), empty levels dropped."""
    levels = ((prefix_len, 0),) if prefix_len else ()
    return levels + (((end, group),) if group > 1 and end > prefix_len else ())


def forward_shared_prefix(params, cfg: ModelConfig, tokens, mask, levels: tuple, cache_size: int, delta=None, **kw):
    """:func:`forward` over (B, T) ``tokens`` whose leading columns are shared between rows
    (prefix caching): for each static level (end column, g) of :func:`prefix_levels` the columns up to
    ``end`` run once per g consecutive rows (g = 0: once for all B rows) into a KV cache of
    ``cache_size`` slots, which is repeated to the next level's rows; the columns after the last level run
    per row against it, with ``kw`` (``last_only``, ``logits_from`` counted from that column). Gradients
    flow through the repeats (they sum over the sharing rows). Returns that last forward's (logits, cache)."""
    B = tokens.shape[0]
    positions = positions_from_mask(mask)
    start, cache = 0, None
    for end, g in levels:
        g = g or B
        if B % g:
            raise ValueError(f"{B} rows do not split into groups of {g} sharing a prompt")
        rows = (slice(None, None, g), slice(start, end))
        cache = init_cache(cfg, B // g, cache_size) if cache is None else repeat_rows(cache, B // g)
        _, cache = forward(params, cfg, tokens[rows], positions[rows], mask[rows], cache=cache, delta=delta,
                           fresh_cache=start == 0, last_only=True)
        start = end
    rest = (slice(None), slice(start, None))
    return forward(params, cfg, tokens[rest], positions[rest], mask[rest], cache=repeat_rows(cache, B), delta=delta,
                   **kw)


def grow_cache(cache: KVCache, size: int) -> KVCache:
    """``cache`` with ``size`` ≥ its slots: the new slots empty (zero keys/values, not valid), the filled ones
    and ``length`` unchanged (see :func:`esjax.sampling.generate`'s ``cache_block``). One copy, one layer's K
    or V at a time, so XLA can free each old buffer once it is copied: the program's peak grows by at most
    about one layer's cache, not by a second cache (``tests/test_models.py`` checks this on the compiled
    CPU program)."""
    extra = size - cache.valid.shape[1]
    if extra < 0:
        raise ValueError(f"cannot grow a cache of {cache.valid.shape[1]} slots to {size}")
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0)))  # noqa: E731  (B, K, S, Dh)
    return KVCache(tuple(map(pad, cache.k)), tuple(map(pad, cache.v)),
                   jnp.pad(cache.valid, ((0, 0), (0, extra))), cache.length)


def repeat_rows(cache: KVCache, rows: int) -> KVCache:
    """Each cached row repeated consecutively up to ``rows`` rows (a multiple of the cache's batch)."""
    rep = lambda x: jnp.repeat(x, rows // x.shape[0], axis=0)  # noqa: E731
    return KVCache(tuple(map(rep, cache.k)), tuple(map(rep, cache.v)), rep(cache.valid), cache.length)


@functools.lru_cache(maxsize=None)
def make_token_logprobs(cfg: ModelConfig, start: int = 1, prefix_len: int = 0, group: int = 1):
    """A jitted ``(params, tokens, mask) -> token_logprobs`` for ``cfg`` (one compiled scorer per config)."""
    return jax.jit(lambda params, tokens, mask: token_logprobs(params, cfg, tokens, mask, start=start,
                                                               prefix_len=prefix_len, group=group))


def logits_from(params, cfg: ModelConfig, tokens, mask, first: int = 0, prefix_len: int = 0, delta=None,
                group: int = 1):
    """Next-token logits at positions [first, T) of (B, T) ``tokens`` → (B, T − first, V) float32.
    ``first`` (static) skips the vocabulary projection over earlier positions (e.g. the prompt);
    ``prefix_len`` (static, ≤ first) columns shared by every row, and columns [prefix_len, first) shared
    by each ``group`` consecutive rows (static; GRPO's completions of one prompt), run once
    (:func:`forward_shared_prefix`); gradients flow through them as through any other position."""
    if first < prefix_len:
        raise ValueError(f"logits from position {first} reach inside the shared prefix of {prefix_len} tokens")
    levels = prefix_levels(prefix_len, group, first)
    if not levels:
        return forward(params, cfg, tokens, positions_from_mask(mask), mask, delta=delta, logits_from=first)[0]
    return forward_shared_prefix(params, cfg, tokens, mask, levels, tokens.shape[1], delta,
                                 logits_from=first - levels[-1][0])[0]


def scoring_logits(params, cfg: ModelConfig, tokens, mask, start: int = 1, prefix_len: int = 0, delta=None,
                   group: int = 1):
    """The logits z_t that predict tokens[:, t] for start ≤ t < T: (B, T − start, V) float32. tokens, mask:
    (B, T). The forward runs over the first T − 1 columns (the last token is no scored token's input) with
    logits from column start − 1 on (:func:`logits_from`: ``start`` static ≥ 1, ``prefix_len`` < start
    and ``group`` shared columns run once), so no logits are made to be dropped."""
    if not 1 <= start < tokens.shape[1]:
        raise ValueError(f"first scored token {start} outside the {tokens.shape[1]} columns (1 ≤ start < T)")
    return logits_from(params, cfg, tokens[:, :-1], mask[:, :-1], start - 1, prefix_len, delta, group)


@jax.custom_vjp
def log_softmax_at(logits, tokens):
    """log softmax(logits)[..., tokens] = (z_y − m) − log Σ_v exp(z_v − m), m = max_v z_v. logits (..., V)
    float, tokens (...) int → (...). The arithmetic of ``jax.nn.log_softmax`` at the picked entries only:
    neither pass writes a (..., V) log-softmax, and the gradient ∂/∂z_v = g·([v = y] − softmax(z)_v) is
    one elementwise pass over the logits (no scatter), with residuals z, m and the sum."""
    return _log_softmax_at_fwd(logits, tokens)[0]


def _log_softmax_at_fwd(z, y):
    m = jax.lax.stop_gradient(jnp.max(z, -1, keepdims=True))
    s = jnp.sum(jnp.exp(z - m), -1, keepdims=True)
    z_y = jnp.sum(jnp.where(jnp.arange(z.shape[-1]) == y[..., None], z, 0), -1, keepdims=True)  # one term
    return ((z_y - m) - jnp.log(s))[..., 0], (z, y, m, s)


def _log_softmax_at_bwd(res, g):
    z, y, m, s = res
    g = g[..., None]
    dz = jnp.where(jnp.arange(z.shape[-1]) == y[..., None], g, 0) - jnp.exp(z - m) * (g / s)
    return dz.astype(z.dtype), None


log_softmax_at.defvjp(_log_softmax_at_fwd, _log_softmax_at_bwd)


def token_logprobs(params, cfg: ModelConfig, tokens, mask, delta=None, start: int = 1, prefix_len: int = 0,
                   group: int = 1):
    """log π(tokens[:, t] | tokens[:, :t]) for start ≤ t < T. tokens, mask: (B, T) → (B, T − start) float32.
    ``start`` (static, ≥ 1): the first scored token; ``prefix_len`` (static, < start) and ``group``: see
    :func:`logits_from` (:func:`scoring_logits`, :func:`log_softmax_at`)."""
    return log_softmax_at(scoring_logits(params, cfg, tokens, mask, start, prefix_len, delta, group), tokens[:, start:])
