"""Counter-based ES noise, regenerated from (base key, iteration, member) and never stored.

Member n of iteration t uses the key ``fold_in(fold_in(base, t), n)`` (``n // 2`` with antithetic pairs,
whose odd member takes the negated noise). Leaf i of the params pytree draws from
``fold_in(member_key, i)``, so every tensor — every layer, since layers are separate leaves — gets
independent noise. ``correlated=True`` reproduces the seeds' PyTorch bug instead (one key for every
leaf: same-shaped tensors share noise; seeds brief §A.3): for fidelity studies only.

Two perturbation families, both with unit-variance entries so ``σ`` means the same thing:

* ``full``:     ε ~ N(0, I) for every leaf.
* ``lowrank``:  E = A Bᵀ / √r for every matrix leaf (A: (n_in, r), B: (n_out, r) ~ N(0, 1)) — EGGROLL;
                vectors (norm gains, biases) keep full Gaussian noise. Members run through shared
                weights as ``x W + σ (x A) Bᵀ/√r`` (see :mod:`esjax.models.delta`).

``param_filter`` (a regex on leaf paths such as ``layers/3/wq``) restricts perturbation and update
to matching leaves: the sparse / subset ES variant.
"""
from __future__ import annotations

import re
from typing import Optional

import jax
import jax.numpy as jnp

from esjax.models.delta import LowRank


def leaf_paths(params) -> list:
    """'embed', 'layers/0/wq', … for every leaf, in ``jax.tree`` order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in flat]


def leaf_selection(params, param_filter: Optional[str]) -> list:
    """Per-leaf booleans: which leaves ES perturbs and updates."""
    paths = leaf_paths(params)
    if param_filter is None:
        return [True] * len(paths)
    pat = re.compile(param_filter)
    sel = [bool(pat.search(p)) for p in paths]
    if not any(sel):
        raise ValueError(f"param_filter {param_filter!r} matches no parameter (paths look like {paths[:3]})")
    return sel


def member_key(base_key, iteration, member, antithetic: bool = False):
    """(key, sign) of a population member; antithetic pairs (2k, 2k+1) share a key, opposite signs."""
    idx = member // 2 if antithetic else member
    sign = jnp.where((member % 2 == 1) & antithetic, -1.0, 1.0)
    return jax.random.fold_in(jax.random.fold_in(base_key, iteration), idx), sign


def _leaf_key(key, i, correlated):
    return key if correlated else jax.random.fold_in(key, i)


def leaf_normals(key, shapes: dict, correlated: bool = False) -> dict:
    """{leaf index i: N(0, 1) float32 draw of shapes[i] from ``fold_in(key, i)``} (``key`` if correlated).

    Same-shaped draws run as one vmapped threefry call (values identical to one call per leaf): a
    transformer's ~300 leaves take ~10 shapes, so the compiled program stays small."""
    groups = {}
    for i, shape in shapes.items():
        groups.setdefault(tuple(shape), []).append(i)
    out = {}
    for shape, idx in groups.items():
        keys = jax.vmap(lambda i: _leaf_key(key, i, correlated))(jnp.asarray(idx, jnp.uint32))
        draws = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)
        out.update((i, draws[j]) for j, i in enumerate(idx))
    return out


def full_noise(params, key, selection=None, correlated: bool = False):
    """ε ~ N(0, I) shaped like ``params`` (float32); unselected leaves are zeros."""
    leaves, treedef = jax.tree.flatten(params)
    selection = selection or [True] * len(leaves)
    draws = leaf_normals(key, {i: x.shape for i, (x, s) in enumerate(zip(leaves, selection)) if s}, correlated)
    return jax.tree.unflatten(treedef, [draws.get(i, jnp.zeros(x.shape, jnp.float32)) for i, x in enumerate(leaves)])


def lowrank_noise(params, key, rank: int, scale=1.0, selection=None, correlated: bool = False):
    """Delta pytree for one member: LowRank(scale·A/√r, B) per matrix, dense scale·ε per vector.

    Unselected leaves are ``None`` (no perturbation)."""
    leaves, treedef = jax.tree.flatten(params)
    selection = selection or [True] * len(leaves)
    draws = leaf_normals(key, {i: (x.shape[0] + x.shape[1], rank) if x.ndim == 2 else x.shape
                               for i, (x, s) in enumerate(zip(leaves, selection)) if s}, correlated)
    out = []
    for i, x in enumerate(leaves):
        if i not in draws:
            out.append(None)
        elif x.ndim == 2:
            out.append(LowRank(draws[i][:x.shape[0]] * (scale / jnp.sqrt(rank)), draws[i][x.shape[0]:]))
        else:
            out.append(scale * draws[i])
    return jax.tree.unflatten(treedef, out)


def densify(delta):
    """Materialise a delta pytree (LowRank → a bᵀ) — for tests and small models."""
    return jax.tree.map(lambda d: d.a @ d.b.T if isinstance(d, LowRank) else d, delta,
                        is_leaf=lambda d: isinstance(d, LowRank))
