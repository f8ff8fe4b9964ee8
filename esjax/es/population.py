"""Population evaluation: every member's fitness inputs, as ``vmap`` over member ids in chunks.

``evaluate(params, delta, member, *args)`` is any pure function of one member's model: full-rank members
get ``params = θ + σε_n`` and ``delta = None``; low-rank members get the shared ``θ`` and a
``delta`` (σ A_n B_nᵀ/√r) that the decoder applies inside its matmuls. :func:`population_fn` maps it over
member ids with ``lax.map(..., batch_size=chunk)`` (vmap within a chunk, sequential across chunks) and,
given a mesh, shards the member ids over the ``pop`` axis with ``shard_map`` (params replicated).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from esjax.es.step import ESConfig, ESState, member_perturbation, perturbed_params
from esjax.parallel import POP
from esjax.sampling import SamplingConfig, generate


def member_output(evaluate: Callable, state: ESState, member, cfg: ESConfig, *args):
    if cfg.noise == "full":
        return evaluate(perturbed_params(state.params, state.key, state.iteration, member, cfg), None, member, *args)
    delta = member_perturbation(state.params, state.key, state.iteration, member, cfg, cfg.sigma)
    return evaluate(state.params, delta, member, *args)


def evaluate_population(evaluate: Callable, state: ESState, members, cfg: ESConfig, chunk: int, *args):
    """Outputs of ``evaluate`` for each member id in ``members`` (M,), stacked on a leading axis."""
    return jax.lax.map(lambda m: member_output(evaluate, state, m, cfg, *args), members, batch_size=chunk)


def population_fn(evaluate: Callable, cfg: ESConfig, chunk: int, mesh: Optional[Mesh] = None,
                  arg_specs: tuple = ()):
    """jit-compiled ``f(state, members, *args)``; with a mesh, members are split over ``pop``
    (len(members) must be a multiple of the pop axis size) and args use ``arg_specs`` (default
    replicated)."""
    def run(state, members, *args):
        return evaluate_population(evaluate, state, members, cfg, chunk, *args)

    if mesh is None:
        return jax.jit(run)
    specs = tuple(arg_specs) or ()

    def sharded(state, members, *args):
        in_specs = (P(), P(POP), *(specs or (P(),) * len(args)))
        return jax.shard_map(run, mesh=mesh, in_specs=in_specs, out_specs=P(POP), check_vma=False)(state, members, *args)

    return jax.jit(sharded)


def lm_evaluator(model_cfg, max_new_tokens: int, cfg: ESConfig):
    """``evaluate(params, delta, member, tokens, mask, key) -> Generation`` for one member on a prompt
    batch; greedy by default, sampled members draw from ``fold_in(key, member)``."""
    sampling = SamplingConfig(cfg.member_temperature, 0, cfg.member_top_p)

    def evaluate(params, delta, member, tokens, mask, key):
        return generate(params, model_cfg, tokens, mask, jax.random.fold_in(key, member), max_new_tokens,
                        sampling, delta)

    return evaluate


def member_ids(n: int, shards: int = 1):
    """0..n-1 padded (with repeats of the last id) to a multiple of ``shards``; slice outputs to n."""
    pad = (-n) % shards
    return jnp.concatenate([jnp.arange(n, dtype=jnp.int32), jnp.full((pad,), n - 1, jnp.int32)])
