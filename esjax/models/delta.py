"""Additive parameter deltas applied inside the forward pass.

A *delta* is a (possibly partial) dict mirroring the params pytree. Each present leaf is either

* a dense array ``D`` of the parameter's shape: the forward uses ``W + D``;
* a :class:`LowRank` pair ``(a, b)`` with ``a: (..., n_in, r)`` and ``b: (..., n_out, r)``: the forward
  uses ``W + a @ bᵀ`` *without forming it*, computing ``x @ W + (x @ a) @ bᵀ`` instead.

This one mechanism serves EGGROLL low-rank ES (factors regenerated from a seed, population = a ``vmap``
over deltas with shared ``W``) and any other adapter-style perturbation.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp


class LowRank(NamedTuple):
    """Low-rank factors of ΔW = a @ bᵀ; a: (..., n_in, r), b: (..., n_out, r)."""

    a: Any
    b: Any


def apply_dense(w, d):
    """Return ``w + d`` for a dense delta, ``w`` for ``None``; low-rank deltas are applied in matmuls."""
    if d is None or isinstance(d, LowRank):
        return w
    return w + d.astype(w.dtype)


def linear(x, w, d=None):
    """y = x @ (W + ΔW) for x: (..., n_in), W: (n_in, n_out); ΔW dense, low-rank or absent."""
    w = apply_dense(w, d)
    return add_lowrank(x @ w.astype(x.dtype), x, d)


def add_lowrank(y, x, d):
    """y + (x @ a) @ bᵀ for a :class:`LowRank` ``d`` (the low-rank part of x @ (W + a bᵀ), y = x @ W), else
    y: dense deltas belong in W before the matmul (:func:`apply_dense`)."""
    if isinstance(d, LowRank):
        y = y + (x @ d.a.astype(x.dtype)) @ d.b.astype(x.dtype).T
    return y


def embed_lookup(tokens, table, d=None):
    """Rows of (E + ΔE) for integer ``tokens``; E: (V, D), low-rank ΔE = a bᵀ with a: (V, r), b: (D, r)."""
    table = apply_dense(table, d)
    out = jnp.take(table, tokens, axis=0)
    if isinstance(d, LowRank):
        out = out + jnp.take(d.a, tokens, axis=0) @ d.b.T
    return out


def tied_logits(h, table, d=None):
    """h @ (E + ΔE)ᵀ for a tied output head; with low-rank ΔE = a bᵀ this is h Eᵀ + (h b) aᵀ."""
    table = apply_dense(table, d)
    y = h @ table.astype(h.dtype).T
    if isinstance(d, LowRank):
        y = y + (h @ d.b.astype(h.dtype)) @ d.a.astype(h.dtype).T
    return y
