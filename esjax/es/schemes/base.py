"""The noise-scheme interface and its registry: everything ES needs to know about one perturbation family.

Member n of iteration t is scored at θ + σ s_n E_n and the update is g = (1/N) Σ_n w_n s_n E_n
(:mod:`esjax.es.step`). A scheme says, in one place:

* ``perturbation(params, key, scale, selection, cfg)``: scale·E of one member from its key, a pytree whose
  leaves are dense arrays, :class:`~esjax.models.delta.LowRank` factors or ``None`` (leaf not perturbed);
  ``leaf_perturbation(key, i, shape, scale, cfg)``: its leaf i alone (the same values), which
  delta populations draw with one program per leaf shape;
* ``shared_params(params, dtype)`` / ``member(shared, perturbation, dtype)``: how members run — what all
  members of a population call share (computed once per call) and the (params, delta) one member's
  decoder reads, in the compute ``dtype`` (the fp32 master stays the optimizer's);
* ``leaf_gradient(key, iteration, weights, i, shape, cfg)``: leaf i of g, regenerating the N members'
  noise — compiled once per leaf *shape* (:func:`esjax.es.step.estimate_gradient`), so an LLM's ~340
  leaves compile as ~7 small programs;
* ``member_bytes(model_cfg, cfg)``: device memory one member adds while it is evaluated, and
  ``shared_bytes(model_cfg, cfg)``: what ``shared_params`` adds once per population call beside the fp32
  master (chunk sizing: :func:`esjax.es.population.auto_chunk_size`).

``dense`` schemes materialise each member's weights θ + σ s E (formed once per member, directly in the
compute dtype) and run the plain decoder; the others are drawn for the whole population by a program of
their own and applied inside the matmuls as a ``delta``. A new dense scheme only defines ``sample``
(see :class:`DenseScheme`); register it with :func:`register_scheme` and select it by name
(``ESConfig.noise``). The interface follows HyperscaleES's ``Noiser`` (``noiser/base_noiser.py``) with
esjax's delta mechanism in place of model → noiser calls.
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from esjax.es.noise import dense_noise, leaf_key, member_key
from esjax.models.delta import LowRank


class NoiseScheme:
    """Base of every noise scheme (see the module docstring for the contract)."""

    name: str = ""
    dense: bool = True

    def perturbation(self, params, key, scale, selection, cfg):
        raise NotImplementedError

    def leaf_perturbation(self, key, i, shape, scale, cfg):
        raise NotImplementedError

    def shared_params(self, params, dtype):
        return params

    def member(self, shared, perturbation, dtype):
        raise NotImplementedError

    def leaf_gradient(self, key, iteration, weights, i, shape, cfg):
        raise NotImplementedError

    def member_bytes(self, model_cfg, cfg) -> int:
        raise NotImplementedError

    def shared_bytes(self, model_cfg, cfg) -> int:
        """Device memory ``shared_params`` adds (0: the members read the master itself)."""
        return 0


class DenseScheme(NoiseScheme):
    """E_n has an independent draw of ``sample(key, shape)`` (zero mean, unit variance) in every leaf.

    Members are θ + σ s_n E_n, formed once per member in the compute dtype (fp32 sum, then cast); the
    update's leaf i is Σ_n w_n s_n E_n,i / N, regenerated member by member (memory: one leaf)."""

    dense = True

    def sample(self, key, shape):
        raise NotImplementedError

    def perturbation(self, params, key, scale, selection, cfg):
        return dense_noise(params, key, selection, cfg.correlated_noise, self.sample, scale)

    def leaf_perturbation(self, key, i, shape, scale, cfg):
        return scale * self.sample(leaf_key(key, i, cfg.correlated_noise), shape)

    def member(self, shared, perturbation, dtype):
        return jax.tree.map(lambda p, e: self.member_leaf(p, e, dtype), shared, perturbation), None

    def member_leaf(self, theta, e, dtype):
        """One leaf of a member's weights: θ + σ s E summed in fp32, cast once to the compute dtype."""
        return (theta + e).astype(dtype)

    def leaf_gradient(self, key, iteration, weights, i, shape, cfg):
        def body(n, acc):
            k, sign = member_key(key, iteration, n, cfg.antithetic)
            return acc + weights[n] * (sign * self.sample(leaf_key(k, i, cfg.correlated_noise), shape))

        return jax.lax.fori_loop(0, weights.shape[0], body, jnp.zeros(shape, jnp.float32)) / weights.shape[0]

    def member_bytes(self, model_cfg, cfg) -> int:
        """θ + σE in the compute dtype, plus its fp32 draw where XLA does not fuse the two."""
        return model_cfg.param_count() * (np.dtype(model_cfg.dtype).itemsize + 4)


SCHEMES: Dict[str, NoiseScheme] = {}


def register_scheme(scheme: NoiseScheme, replace: bool = False) -> NoiseScheme:
    """Make ``scheme`` selectable as ``ESConfig(noise=scheme.name)``; returns it."""
    if not scheme.name:
        raise ValueError(f"{type(scheme).__name__} has no name")
    if scheme.name in SCHEMES and not replace and type(SCHEMES[scheme.name]) is not type(scheme):
        raise ValueError(f"noise scheme {scheme.name!r} is already registered ({type(SCHEMES[scheme.name]).__name__})")
    SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(name: str) -> NoiseScheme:
    """The registered scheme called ``name``; an unknown name is an error listing the registered ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown noise scheme {name!r}; registered: {sorted(SCHEMES)}") from None


__all__ = ["NoiseScheme", "DenseScheme", "LowRank", "SCHEMES", "register_scheme", "get_scheme"]
