"""Fitness shaping: raw fitness (higher is better) → per-member weights z_n. Registry by name.

* ``zscore``:  z = (f − mean f) / (std f + 1e-8), std with ddof 0, so Σ z² = N whenever std > 0
               (Qiu et al. 2025, both seed papers).
* ``centered_rank``: ranks mapped linearly to [−0.5, 0.5] (evosax / OpenAI-ES), ties averaged.
* ``raw``:     z = f − mean f.
"""
from __future__ import annotations

import jax.numpy as jnp

EPS = 1e-8


def zscore(f):
    f = jnp.asarray(f, jnp.float32)
    return (f - f.mean()) / (f.std() + EPS)


def centered_rank(f):
    f = jnp.asarray(f, jnp.float32)
    n = f.shape[0]
    less = (f[None, :] < f[:, None]).sum(1)
    equal = (f[None, :] == f[:, None]).sum(1)
    ranks = less + (equal - 1) / 2.0  # average rank of ties, 0-based
    return ranks / jnp.maximum(n - 1, 1) - 0.5


def raw(f):
    f = jnp.asarray(f, jnp.float32)
    return f - f.mean()


SHAPING = {"zscore": zscore, "centered_rank": centered_rank, "raw": raw}
