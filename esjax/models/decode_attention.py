"""Decode attention as one fused kernel that reads only the cache slots filled so far (Pallas; Triton on GPU).

A decode step's query (T = 1) against the KV cache, the same function as
:func:`esjax.models.decoder.attention` at T = 1::

    out[b, h] = Σ_s softmax_s(q[b, h] · k[b, h // G, s] / √Dh  where mask[b, s]) · v[b, h // G, s]

XLA runs that as three kernels per layer (QKᵀ, the masked softmax, PV) that write and read the float32
(B, H, S) scores, and reads all S slots of the cache, although only the first ``filled`` (the prompt's
and the tokens decoded so far) can be unmasked. This kernel runs one program per (row, KV head): the
G query heads that share the KV head form one (G', Dh) tile (G' = G padded to 16, the smallest dot
tile), and it walks the cache in blocks of ``block`` slots up to ``filled`` only, with an online softmax
(FlashAttention-2's running max m and sum l, in float32):

    s = q kᵀ / √Dh (masked);  m' = max(m, max s);  p = exp(s − m') (0 where masked)
    l' = e^{m − m'} l + Σ p;  o' = e^{m − m'} o + p v;   out = o / l

A batch too small to fill a GPU (rows × KV heads below its multiprocessors) splits each row's cache
over several programs, whose partial (o, m, l) XLA combines (FlashDecoding; :func:`auto_splits`).

Shapes: q (B, K, G, Dh); k, v the layer's cache (B, K, S, Dh) (:class:`esjax.models.decoder.KVCache`'s
layout, read in place); mask (B, S) bool (a slot that is valid and at or before the query's position);
filled () int32 (slots [filled, S) are never read: every one of them is masked). Returns (B, K, G, Dh)
in q's dtype. A row with no unmasked slot gets zeros (XLA's path averages v over every slot: such rows
are padding whose tokens nobody reads). Masked slots are never loaded (a NaN there cannot reach the output;
the einsum path multiplies them by zero weights, which a NaN survives).

It is a GPU kernel (Triton). On a CPU it runs in Pallas' interpret mode, slowly: that is how the tests
check it against :func:`esjax.models.decoder.attention`; a TPU has its own Pallas backend (Mosaic), which
this kernel is not written for. Chosen by ``ModelConfig.decode_attention = "pallas"`` (``--set
decode_attention=pallas`` on a run); the default "xla" is the einsum path, which runs everywhere.
Only a generation's decode steps use it (``forward(..., decode=True)``, from :func:`esjax.sampling.generate`):
prefill (T > 1) and the learner's scoring, which is differentiated, take the einsum path; ``pallas_call``
has no VJP. The head dim must be a power of two ≥ 16 (every Llama / Qwen size; checked by ModelConfig).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

BLOCK = 64  # cache slots per step of the kernel's loop
MIN_TILE = 16  # the smallest M of a Triton dot


def check_head_dim(head_dim: int) -> None:
    """The kernel's tiles are (·, head_dim): a power of two ≥ 16 (Triton's dot and load shapes)."""
    if head_dim & (head_dim - 1) or head_dim < MIN_TILE:
        raise ValueError(f"decode_attention='pallas' (ModelConfig, --set decode_attention) needs a power-of-two "
                         f"head_dim >= {MIN_TILE}, got {head_dim}; use decode_attention='xla'")


def _kernel(q_ref, k_ref, v_ref, mask_ref, filled_ref, o_ref, *stat_refs, block: int, scale: float, heads: int,
            per: int):
    """One (row, KV head[, split]): q_ref / o_ref (G', Dh) blocks of the (G, Dh) query heads (rows past
    ``heads`` = G are masked: read as zeros, never written), k_ref / v_ref (S, Dh), mask_ref (S,) int32,
    filled_ref (). Unsplit (``per`` = 0): blocks [0, ⌈filled / block⌉), o_ref gets the attention output.
    Split: program j of the grid's third axis walks blocks [j·per, (j + 1)·per) ∩ [0, ⌈filled / block⌉)
    and writes its float32 o (unnormalised), m and l (``stat_refs``: (G',) blocks) for :func:`_combine`."""
    gp, dh = q_ref.shape
    real = (jnp.arange(gp) < heads)[:, None]
    q = plgpu.load(q_ref.at[pl.ds(0, gp), :], mask=real, other=0.0)
    slots = k_ref.shape[0]
    neg = jnp.finfo(jnp.float32).min
    # float32 inputs: full float32 dots (Triton's default for them is TF32; decode attention is bound by
    # the cache reads, so exact costs little); bfloat16 ones accumulate in float32 either way
    prec = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None

    def body(j, carry):
        o, m, l = carry
        at = j * block
        idx = at + jnp.arange(block)
        inside = idx < slots  # the last block may run past the cache
        ok = plgpu.load(mask_ref.at[pl.ds(at, block)], mask=inside, other=0) != 0
        # masked slots are not read (zeros instead): whatever they hold (a NaN) cannot reach the output
        k = plgpu.load(k_ref.at[pl.ds(at, block), :], mask=ok[:, None], other=0.0)
        v = plgpu.load(v_ref.at[pl.ds(at, block), :], mask=ok[:, None], other=0.0)
        s = plgpu.dot(q, k, trans_b=True, precision=prec).astype(jnp.float32) * scale  # (G', block)
        s = jnp.where(ok[None, :], s, neg)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.where(ok[None, :], jnp.exp(s - m_new[:, None]), 0.0)
        corr = jnp.exp(m - m_new)
        l = corr * l + p.sum(axis=-1)
        o = corr[:, None] * o + plgpu.dot(p.astype(v.dtype), v, precision=prec).astype(jnp.float32)
        return o, m_new, l

    n = pl.cdiv(filled_ref[()], block)
    lo, hi = (0, n) if not per else (pl.program_id(2) * per, jnp.minimum(pl.program_id(2) * per + per, n))
    init = (jnp.zeros((gp, dh), jnp.float32), jnp.full((gp,), neg, jnp.float32), jnp.zeros((gp,), jnp.float32))
    o, m, l = jax.lax.fori_loop(lo, hi, body, init)
    if per:
        m_ref, l_ref = stat_refs
        plgpu.store(o_ref.at[pl.ds(0, gp), :], o, mask=real)
        plgpu.store(m_ref.at[pl.ds(0, gp)], m, mask=real[:, 0])
        plgpu.store(l_ref.at[pl.ds(0, gp)], l, mask=real[:, 0])
        return
    o = o / jnp.where(l > 0, l, 1.0)[:, None]
    plgpu.store(o_ref.at[pl.ds(0, gp), :], o.astype(o_ref.dtype), mask=real)


def _combine(o, m, l, dtype):
    """The splits' partial results → attention output (FlashDecoding's last step). o (B, K, n, G, Dh)
    unnormalised, m, l (B, K, n, G): with c_j = exp(m_j − max_j m_j), out = Σ_j c_j o_j / Σ_j c_j l_j
    (0 for a row with no unmasked slot)."""
    c = jnp.exp(m - m.max(axis=2, keepdims=True))
    total = (c * l).sum(axis=2)
    out = (c[..., None] * o).sum(axis=2) / jnp.where(total > 0, total, 1.0)[..., None]
    return out.astype(dtype)


def auto_splits(rows: int, kv_heads: int, slots: int, block: int = BLOCK) -> int:
    """Splits of the cache for a batch too small to fill the device: (row, KV head) programs fewer than its
    streaming multiprocessors (``core_count``; an H100's 132 where the device does not say) → ⌈2·SMs /
    programs⌉ splits, at most one per two blocks of the cache; else 1 (no split, no combine step)."""
    sms = getattr(jax.devices()[0], "core_count", None) or 132
    programs = rows * kv_heads
    if programs >= sms:
        return 1
    return max(1, min(-(-2 * sms // programs), pl.cdiv(slots, block) // 2))


def decode_attention(q, k, v, mask, filled, block: int = BLOCK, splits: int | None = None,
                     interpret: bool | None = None, num_warps: int = 4, num_stages: int = 2):
    """Fused decode attention (module docstring). q (B, K, G, Dh); k, v (B, K, S, Dh); mask (B, S) bool;
    filled () or (B,) int32 → (B, K, G, Dh). ``splits`` (static): programs per (row, KV head), each over
    its share of the cache, combined by :func:`_combine` (FlashDecoding); None: :func:`auto_splits`.

    Which code runs is decided when the program is lowered, for the platform it is lowered for
    (``jax.lax.platform_dependent``): the Triton kernel for CUDA, the same kernel in Pallas' interpret mode
    for a CPU (tests), and :func:`esjax.models.decoder.attention` for any other backend (a TPU, ROCm), so
    a run that sets ``decode_attention="pallas"`` runs everywhere. ``interpret`` (static) True / False
    forces interpret mode / the kernel whatever the platform."""
    B, K, G, Dh = q.shape
    if block < MIN_TILE or block & (block - 1):
        raise ValueError(f"decode attention block must be a power of two >= {MIN_TILE}, got {block}")
    check_head_dim(Dh)
    if not q.dtype == k.dtype == v.dtype:  # a Triton dot needs one element type on both sides
        raise ValueError(f"decode attention needs q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    splits = auto_splits(B, K, k.shape[2], block) if splits is None else splits
    if splits < 1:
        raise ValueError(f"decode attention splits must be >= 1, got {splits}")
    filled = jnp.broadcast_to(jnp.asarray(filled, jnp.int32), (B,))
    kernel = functools.partial(_fused, block=block, splits=splits, num_warps=num_warps, num_stages=num_stages)
    if interpret is not None:
        return kernel(q, k, v, mask, filled, interpret=interpret)

    def einsums(q, k, v, mask, filled):
        from esjax.models.decoder import attention
        return attention(q.reshape(B, 1, K * G, Dh), k, v, mask[:, None, :]).reshape(B, K, G, Dh)

    return jax.lax.platform_dependent(q, k, v, mask, filled, cuda=functools.partial(kernel, interpret=False),
                                      cpu=functools.partial(kernel, interpret=True), default=einsums)


def _fused(q, k, v, mask, filled, *, block: int, splits: int, num_warps: int, num_stages: int, interpret: bool):
    """The kernel over a grid of (row, KV head[, split]): the G query heads' block is G' = G rounded up to a
    power of two ≥ 16 rows (Triton's smallest dot), the rows past G masked in the kernel, so q and the output
    are read and written in place, with no padded copy and no slice per layer."""
    B, K, G, Dh = q.shape
    S = k.shape[2]
    gp = max(MIN_TILE, 1 << (G - 1).bit_length())
    blocks = pl.cdiv(S, block)
    per = pl.cdiv(blocks, splits) if splits > 1 else 0  # blocks per split
    n = pl.cdiv(blocks, per) if per else 1  # splits that hold a block
    idx = (lambda b, h, j: (b, h, 0, 0)) if per else (lambda b, h: (b, h, 0, 0))
    row = (lambda b, h, j: (b, 0)) if per else (lambda b, h: (b, 0))
    one = (lambda b, h, j: (b,)) if per else (lambda b, h: (b,))
    if per:
        out_specs = [pl.BlockSpec((None, None, None, gp, Dh), lambda b, h, j: (b, h, j, 0, 0)),
                     pl.BlockSpec((None, None, None, gp), lambda b, h, j: (b, h, j, 0)),
                     pl.BlockSpec((None, None, None, gp), lambda b, h, j: (b, h, j, 0))]
        out_shape = [jax.ShapeDtypeStruct((B, K, n, G, Dh), jnp.float32),
                     jax.ShapeDtypeStruct((B, K, n, G), jnp.float32), jax.ShapeDtypeStruct((B, K, n, G), jnp.float32)]
    else:
        out_specs = pl.BlockSpec((None, None, gp, Dh), idx)
        out_shape = jax.ShapeDtypeStruct((B, K, G, Dh), q.dtype)
    out = pl.pallas_call(
        functools.partial(_kernel, block=block, scale=float(1.0 / np.sqrt(Dh)), heads=G, per=per),
        grid=(B, K, n) if per else (B, K),
        in_specs=[pl.BlockSpec((None, None, gp, Dh), idx),
                  pl.BlockSpec((None, None, S, Dh), idx),
                  pl.BlockSpec((None, None, S, Dh), idx),
                  pl.BlockSpec((None, S), row),
                  pl.BlockSpec((None,), one)],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="esjax_decode_attention",
    )(q, k, v, mask.astype(jnp.int32), filled)
    return _combine(*out, q.dtype) if per else out
