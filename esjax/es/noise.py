"""Counter-based ES noise, regenerated from (base key, iteration, member) and never stored.

Member n of iteration t uses the key ``fold_in(fold_in(base, t), n)`` (``n // 2`` with antithetic pairs,
whose odd member takes the negated noise). Leaf i of the params pytree draws from
``fold_in(member_key, i)``, so every tensor — every layer, since layers are separate leaves — gets
independent noise. ``correlated=True`` reproduces the seeds' PyTorch bug instead (one key for every
leaf: same-shaped tensors share noise; docs/protocols.md#a3): for fidelity studies only.

The draws of the two registered noise schemes (:mod:`esjax.es.schemes`), both with unit-variance entries
so ``σ`` means the same thing:

* ``full``:     ε ~ N(0, I) for every leaf.
* ``lowrank``:  E = A Bᵀ / √r for every matrix leaf (A: (n_in, r), B: (n_out, r) ~ N(0, 1)) — EGGROLL;
                vectors (norm gains, biases) keep full Gaussian noise. Members run through shared
                weights as ``x W + σ (x A) Bᵀ/√r`` (see :mod:`esjax.models.delta`).

``param_filter`` (a regex on leaf paths such as ``layers/3/wq``) restricts perturbation and update
to matching leaves: the sparse / subset ES variant.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from esjax.models.delta import LowRank
from esjax.trees import leaf_paths, leaf_selection  # noqa: F401  (re-exported: their old home)


def member_key(base_key, iteration, member, antithetic: bool = False):
    """(key, sign) of a population member; antithetic pairs (2k, 2k+1) share a key, opposite signs."""
    idx = member // 2 if antithetic else member
    sign = jnp.where((member % 2 == 1) & antithetic, -1.0, 1.0)
    return jax.random.fold_in(jax.random.fold_in(base_key, iteration), idx), sign


def leaf_key(key, i, correlated: bool = False):
    """The key of leaf i of a member: ``fold_in(key, i)``, or ``key`` itself with the seeds' correlated bug."""
    return key if correlated else jax.random.fold_in(key, i)


def normal(key, shape):
    """N(0, 1) float32 entries: the Gaussian sampler of full-rank and low-rank noise."""
    return jax.random.normal(key, shape, jnp.float32)


def leaf_draws(key, shapes: dict, correlated: bool = False, sample=normal) -> dict:
    """{leaf index i: ``sample(fold_in(key, i), shapes[i])``} (``key`` itself if correlated).

    Same-shaped draws run as one vmapped call (values identical to one call per leaf): a transformer's
    ~300 leaves take ~10 shapes, so the compiled program stays small."""
    groups = {}
    for i, shape in shapes.items():
        groups.setdefault(tuple(shape), []).append(i)
    out = {}
    for shape, idx in groups.items():
        keys = jax.vmap(lambda i: leaf_key(key, i, correlated))(jnp.asarray(idx, jnp.uint32))
        draws = jax.vmap(lambda k: sample(k, shape))(keys)
        out.update((i, draws[j]) for j, i in enumerate(idx))
    return out


def leaf_normals(key, shapes: dict, correlated: bool = False) -> dict:
    """:func:`leaf_draws` with N(0, 1) entries."""
    return leaf_draws(key, shapes, correlated)


def dense_noise(params, key, selection=None, correlated: bool = False, sample=normal, scale=None):
    """``sample`` draws shaped like ``params`` (float32), times ``scale`` if given; unselected leaves are zeros."""
    leaves, treedef = jax.tree.flatten(params)
    selection = selection or [True] * len(leaves)
    draws = leaf_draws(key, {i: x.shape for i, (x, s) in enumerate(zip(leaves, selection)) if s}, correlated, sample)
    return jax.tree.unflatten(treedef, [(draws[i] if scale is None else scale * draws[i]) if i in draws
                                        else jnp.zeros(x.shape, jnp.float32) for i, x in enumerate(leaves)])


def full_noise(params, key, selection=None, correlated: bool = False):
    """ε ~ N(0, I) shaped like ``params`` (float32); unselected leaves are zeros."""
    return dense_noise(params, key, selection, correlated)


def lowrank_draw_shape(shape, rank: int) -> tuple:
    """What a low-rank leaf draws: (n_in + n_out, r) for a matrix (A stacked on B), the leaf's shape otherwise."""
    return (shape[0] + shape[1], rank) if len(shape) == 2 else tuple(shape)


def lowrank_leaf(draw, shape, rank: int, scale=1.0):
    """One leaf's scaled low-rank perturbation from its draw: LowRank(scale·A/√r, B) for a matrix, scale·ε else."""
    if len(shape) == 2:
        return LowRank(draw[..., :shape[0], :] * (scale / jnp.sqrt(rank)), draw[..., shape[0]:, :])
    return scale * draw


def lowrank_noise(params, key, rank: int, scale=1.0, selection=None, correlated: bool = False):
    """Delta pytree for one member: LowRank(scale·A/√r, B) per matrix, dense scale·ε per vector.

    Unselected leaves are ``None`` (no perturbation)."""
    leaves, treedef = jax.tree.flatten(params)
    selection = selection or [True] * len(leaves)
    draws = leaf_normals(key, {i: lowrank_draw_shape(x.shape, rank)
                               for i, (x, s) in enumerate(zip(leaves, selection)) if s}, correlated)
    return jax.tree.unflatten(treedef, [lowrank_leaf(draws[i], x.shape, rank, scale) if i in draws else None
                                        for i, x in enumerate(leaves)])


def densify(delta):
    """Materialise a delta pytree (LowRank → a bᵀ) — for tests and small models."""
    return jax.tree.map(lambda d: d.a @ d.b.T if isinstance(d, LowRank) else d, delta,
                        is_leaf=lambda d: isinstance(d, LowRank))
