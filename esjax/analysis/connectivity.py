"""Linear mode connectivity and direction probes (paper 1, docs/protocols.md#e5).

θ(λ) = (1 − λ) θ_a + λ θ_b;  barrier B = max_λ [(1 − λ) f(θ_a) + λ f(θ_b) − f(θ(λ))] for a score f that
is higher-is-better (accuracy, reward); B ≤ 0 means no barrier. Direction probes evaluate
θ_base + t·Δ̂ along a unit direction Δ̂ (ES, GRPO, or a random control of the same dimension).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from esjax.analysis.geometry import global_norm


def interpolate(a, b, lam: float):
    return jax.tree.map(lambda x, y: ((1 - lam) * x.astype(jnp.float32) + lam * y.astype(jnp.float32)).astype(x.dtype), a, b)


def interpolation_curve(score: Callable, a, b, n_points: int = 11, ends: Optional[Tuple[float, float]] = None):
    """(λs, scores) along the straight line from a (λ = 0) to b (λ = 1); ``ends`` = (score(a), score(b))
    when already known (paths sharing endpoints evaluate each endpoint once)."""
    lams = np.linspace(0.0, 1.0, n_points)
    fa, fb = ends if ends is not None else (score(a), score(b))
    return lams, np.array([fa, *[score(interpolate(a, b, float(l))) for l in lams[1:-1]], fb])


def barrier(lams, values) -> float:
    lams, values = np.asarray(lams), np.asarray(values)
    chord = (1 - lams) * values[0] + lams * values[-1]
    return float(np.max(chord - values))


def unit_direction(delta):
    n = global_norm(delta)
    return jax.tree.map(lambda x: x / n, delta)


def random_direction(like, key, select: Optional[Sequence[bool]] = None):
    """A uniformly random unit direction shaped like ``like``: leaf i ~ N(0, I) from the i-th split of
    ``key``, then the whole normalised. ``select`` (one bool per leaf, :func:`esjax.trees.leaf_selection`):
    the direction lies in the selected leaves' subspace (zeros elsewhere), the d dimensions an ES run with
    that ``param_filter`` perturbs, so it is a control of the ES update's own dimension and
    E[uᵀFu] = tr(F)/d over those leaves (the theory's estimate). Selected leaves draw what they draw
    without ``select``."""
    leaves, tree = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    select = [True] * len(leaves) if select is None else list(select)
    if len(select) != len(leaves) or not any(select):
        raise ValueError(f"select must name at least one of the {len(leaves)} leaves, got {len(select)} flags "
                         f"with {sum(map(bool, select))} set")
    return unit_direction(jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) if s else jnp.zeros(x.shape)
                                                    for k, x, s in zip(keys, leaves, select)]))


def direction_probe(score: Callable, base, direction, ts: Sequence[float]):
    """scores of θ_base + t·d̂ for each t (d̂ = direction / ‖direction‖)."""
    d = unit_direction(direction)
    return np.array([score(jax.tree.map(lambda p, x: (p.astype(jnp.float32) + t * x).astype(p.dtype), base, d))
                     for t in ts])
