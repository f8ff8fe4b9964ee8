"""Fitness shaping: raw fitness (higher is better) → per-member weights z_n. Registry by name.

* ``zscore``:  z = (f − mean f) / (std f + 1e-8), std with ddof 0, so Σ z² = N whenever std > 0
               (Qiu et al. 2025, both seed papers); exactly 0 when every member scores the same.
* ``centered_rank``: ranks mapped linearly to [−0.5, 0.5] (evosax / OpenAI-ES), ties averaged; exactly 0
               when every member scores the same (compiled, 14.5 / 29 − 0.5 left 1e-8).
* ``raw``:     z = f − mean f; exactly 0 when every member scores the same.

Tied fitness is tested for once, by :func:`shape`, for every registered entry (one added by a user too):
max f = min f gives z = 0 exactly. A float32 mean of N equal values is not always that value (0.375 × 30
members: off by one rounding step), and the residue divided by std + 1e-8 ≈ 1e-8 gave every member the
same z of order 1, so a population with nothing to learn took a full-size random step. The entries below
need not handle ties themselves.
"""
from __future__ import annotations

import jax.numpy as jnp

EPS = 1e-8


def zscore(f):
    return (f - f.mean()) / (f.std() + EPS)


def centered_rank(f):
    n = f.shape[0]
    less = (f[None, :] < f[:, None]).sum(1)
    equal = (f[None, :] == f[:, None]).sum(1)
    ranks = less + (equal - 1) / 2.0  # average rank of ties, 0-based
    return ranks / jnp.maximum(n - 1, 1) - 0.5


def raw(f):
    return f - f.mean()


SHAPING = {"zscore": zscore, "centered_rank": centered_rank, "raw": raw}


def shape(name: str, fitness):
    """(N,) fitness → (N,) weights ``SHAPING[name](f)`` on float32 f, exactly 0 when every member tied."""
    f = jnp.asarray(fitness, jnp.float32)
    return jnp.where(f.max() == f.min(), 0.0, SHAPING[name](f))
