"""Geometry of a fine-tuning update Δθ = θ_ft − θ_base (docs/protocols.md#e1–#e3), on params pytrees.

* ℓ2 norms: global, per leaf, per (layer, bucket); the tied embedding counted once (paper 1, vLLM) or
  twice (paper 2, HF ``state_dict`` with ``lm_head``) via ``count_tied_twice``.
* sparsity(τ) = fraction of entries with |Δ| ≤ τ, computed in fp32 or after casting *both* checkpoints
  to bf16/fp16 (paper 2's number is the 16-bit kind), averaged unweighted over tensors per
  (layer, bucket) with buckets Q, K, V, O, MLP, norm, other.
* numerical rank of ΔW (singular values > rtol·σ_max), cosine of two updates (global, per layer),
  and the overlap of their top-k singular subspaces ‖U_aᵀU_b‖²_F / k.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from esjax.models.config import DTYPES
from esjax.trees import leaf_paths, module_type

BUCKETS = ("Q", "K", "V", "O", "MLP", "norm", "other")
_BUCKET = {"q": "Q", "k": "K", "v": "V", "o": "O", "mlp": "MLP"}  # module_type -> bucket


def named_leaves(tree) -> Dict[str, jax.Array]:
    return dict(zip(leaf_paths(tree), jax.tree.leaves(tree)))


def update(ft, base):
    """Δθ in float32."""
    return jax.tree.map(lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), ft, base)


def bucket(path: str) -> str:
    """Paper 2's bucket of a leaf path, from :func:`esjax.trees.module_type`: Q, K, V, O, MLP; a
    projection's bias with its projection (``bq`` → Q); ``norm`` for the blocks' norms (the final norm,
    embeddings and head → other)."""
    kind = module_type(path)
    if kind == "bias":  # bq/bk/bv: the bucket of wq/wk/wv
        head, _, leaf = path.rpartition("/")
        kind = module_type(f"{head}/w{leaf[1:]}")
    if kind == "norm":
        return "norm" if path.startswith("layers") else "other"
    return _BUCKET.get(kind, "other")


def layer_of(path: str) -> Optional[int]:
    m = re.match(r"layers/(\d+)/", path)
    return int(m.group(1)) if m else None


def global_norm(delta, count_tied_twice: bool = False, tied: bool = False) -> float:
    sq = sum(float(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(delta))
    if count_tied_twice and tied and isinstance(delta, dict) and "embed" in delta:
        sq += float(jnp.sum(jnp.square(delta["embed"])))
    return float(np.sqrt(sq))


def relative_norm(delta, base) -> float:
    return global_norm(delta) / global_norm(base)


def cast_delta(ft, base, dtype: str = "float32"):
    """Δ after casting both checkpoints to ``dtype`` (as if both were saved in it), in float32."""
    dt = DTYPES[dtype]
    return jax.tree.map(lambda a, b: a.astype(dt).astype(jnp.float32) - b.astype(dt).astype(jnp.float32), ft, base)


def sparsity(delta, tau: float = 1e-6) -> float:
    """Fraction of all entries with |Δ| ≤ τ (weighted by size)."""
    n = sum(x.size for x in jax.tree.leaves(delta))
    return float(sum(int(jnp.sum(jnp.abs(x) <= tau)) for x in jax.tree.leaves(delta)) / n)


def sparsity_table(ft, base, taus: Sequence[float] = (1e-6,), dtypes: Sequence[str] = ("float32", "bfloat16")):
    """{dtype: {tau: {"average": s, "global": s, "buckets": {bucket: s}, "layers": {layer: {bucket: s}}}}},
    tensors averaged unweighted within (layer, bucket) and bucket means over layers (paper 2's aggregation).
    ``average``: paper 2's "Average" (Fig. 4) — per decoder layer the unweighted mean over its tensors, then
    the mean over layers; the number its ES ≈ 5–25 % and GRPO ≈ 95 % are. ``global``: the fraction of all
    entries, weighted by size and including leaves outside the layers (the embedding, which a layer-only
    ES never moves, counts as sparse there)."""
    out = {}
    for dt in dtypes:
        named = named_leaves(cast_delta(ft, base, dt))
        out[dt] = {}
        for tau in taus:
            per = {p: float(jnp.mean(jnp.abs(x) <= tau)) for p, x in named.items()}
            layers = defaultdict(lambda: defaultdict(list))
            in_layer = defaultdict(list)
            for p, s in per.items():
                layers[layer_of(p)][bucket(p)].append(s)
                if layer_of(p) is not None:
                    in_layer[layer_of(p)].append(s)
            table = {str(layer): {b: float(np.mean(v)) for b, v in bs.items()} for layer, bs in layers.items()}
            buckets = defaultdict(list)
            for bs in table.values():
                for b, s in bs.items():
                    buckets[b].append(s)
            average = float(np.mean([np.mean(v) for v in in_layer.values()])) if in_layer else None
            out[dt][str(tau)] = {"average": average, "global": sparsity(dict(named), tau),
                                 "buckets": {b: float(np.mean(v)) for b, v in buckets.items()}, "layers": table}
    return out


def layer_bucket_norms(delta) -> Dict[str, Dict[str, float]]:
    """{layer: {bucket: ℓ2 norm}} (layer 'None' = embeddings / final norm)."""
    sq = defaultdict(lambda: defaultdict(float))
    for p, x in named_leaves(delta).items():
        sq[str(layer_of(p))][bucket(p)] += float(jnp.sum(jnp.square(x)))
    return {layer: {b: float(np.sqrt(v)) for b, v in bs.items()} for layer, bs in sq.items()}


def numerical_rank(matrix, rtol: float = 1e-5) -> int:
    s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    return int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0


def _svd_leaves(tree, max_size: int, layers: Optional[Sequence[int]]):
    """2-D leaves up to ``max_size`` entries, optionally only in ``layers`` (SVDs are the costly part)."""
    return {p: x for p, x in named_leaves(tree).items()
            if x.ndim == 2 and x.size <= max_size and (layers is None or layer_of(p) in layers)}


def matrix_ranks(delta, rtol: float = 1e-5, max_size: int = 5_000_000, layers: Optional[Sequence[int]] = None):
    """{path: rank(ΔW)/min(m, n)} for 2-D leaves up to ``max_size`` entries (embeddings skipped by
    default), optionally only in ``layers``."""
    return {p: numerical_rank(x, rtol) / min(x.shape) for p, x in _svd_leaves(delta, max_size, layers).items()}


def cosine(a, b) -> Optional[float]:
    """⟨a, b⟩ / (‖a‖ ‖b‖) over the flattened trees; None where either is zero (an update that never moved
    has no direction: reading it as 0, "orthogonal", was a finding made of nothing)."""
    dot = sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    norms = global_norm(a) * global_norm(b)
    return dot / norms if norms > 0 else None


def layer_cosines(a, b) -> Dict[str, float]:
    """Cosine of the two updates restricted to each layer's parameters."""
    na, nb = named_leaves(a), named_leaves(b)
    groups = defaultdict(list)
    for p in na:
        groups[str(layer_of(p))].append(p)
    return {layer: cosine([na[p] for p in ps], [nb[p] for p in ps]) for layer, ps in groups.items()}


def subspace_overlap(wa, wb, k: int = 8) -> float:
    """Mean of the left and right top-k singular-subspace overlaps ‖U_aᵀ U_b‖²_F / k ∈ [0, 1]
    (random k-subspaces of dimension n overlap ≈ k/n)."""
    ua, _, vta = np.linalg.svd(np.asarray(wa, np.float64), full_matrices=False)
    ub, _, vtb = np.linalg.svd(np.asarray(wb, np.float64), full_matrices=False)
    k = min(k, ua.shape[1], ub.shape[1])
    left = np.sum((ua[:, :k].T @ ub[:, :k]) ** 2) / k
    right = np.sum((vta[:k] @ vtb[:k].T) ** 2) / k
    return float((left + right) / 2)


def subspace_overlaps(a, b, k: int = 8, max_size: int = 5_000_000, layers: Optional[Sequence[int]] = None):
    nb = named_leaves(b)
    return {p: subspace_overlap(x, nb[p], k) for p, x in _svd_leaves(a, max_size, layers).items()}
