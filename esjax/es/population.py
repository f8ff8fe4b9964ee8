"""Population evaluation: every member's fitness inputs, as ``vmap`` over member ids in chunks.

``evaluate(params, delta, member, *args)`` is any pure function of one member's model: full-rank members
get ``params = θ + σε_n`` and ``delta = None``; low-rank members get the shared ``θ`` and a
``delta`` (σ A_n B_nᵀ/√r) that the decoder applies inside its matmuls. :func:`population_fn` maps it over
member ids with ``lax.map(..., batch_size=chunk)`` (vmap within a chunk, sequential across chunks) and,
given a mesh, shards the member ids over the ``pop`` axis with ``shard_map`` (params replicated; each
device draws only its own members' noise).
"""
from __future__ import annotations

import functools
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


def _compiled(fn, mesh: Optional[Mesh], in_specs: tuple):
    """jit(fn), or with a mesh jit(shard_map(fn)) with outputs split over ``pop``."""
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(POP), check_vma=False))


def population_fn(evaluate: Callable, cfg: ESConfig, chunk: int, mesh: Optional[Mesh] = None,
                  arg_specs: tuple = ()):
    """``f(state, members, *args)``: outputs of ``evaluate`` per member id, compiled; with a mesh, members
    are split over ``pop`` (len(members) must be a multiple of the pop axis size) and args use
    ``arg_specs`` (default replicated).

    Low-rank members' deltas (a few MB) are drawn by a separate compiled program and passed in: one
    program holding both the noise generator and the model compiled 2× slower (SmolLM2: 68 s vs 12 + 19 s)
    and ran no faster. Full-rank members draw θ + σε inside the evaluator, one chunk at a time (memory)."""
    if cfg.noise == "full":
        draw, extra = None, ()

        def body(state, members, *args):
            return evaluate_population(evaluate, state, members, cfg, chunk, *args)
    else:
        def noise(state, members):
            return jax.vmap(lambda n: member_perturbation(state.params, state.key, state.iteration, n, cfg, cfg.sigma))(members)

        def body(state, members, deltas, *args):
            return jax.lax.map(lambda md: evaluate(state.params, md[1], md[0], *args), (members, deltas), batch_size=chunk)

        draw, extra = _compiled(noise, mesh, (P(), P(POP))), (P(POP),)
    compiled = functools.lru_cache(maxsize=None)(  # per number of evaluator args (their default specs)
        lambda n_args: _compiled(body, mesh, (P(), P(POP), *extra, *(tuple(arg_specs) or (P(),) * n_args))))

    def f(state, members, *args):
        deltas = () if draw is None else (draw(state, members),)
        return compiled(len(args))(state, members, *deltas, *args)

    return f


def lm_evaluator(model_cfg, max_new_tokens: int, cfg: ESConfig, prefix_len: int = 0):
    """``evaluate(params, delta, member, tokens, mask, key) -> Generation`` for one member on a prompt
    batch whose first ``prefix_len`` columns are shared (prefilled once per member); greedy by default,
    sampled members draw from ``fold_in(key, member)``."""
    sampling = SamplingConfig(cfg.member_temperature, 0, cfg.member_top_p)

    def evaluate(params, delta, member, tokens, mask, key):
        return generate(params, model_cfg, tokens, mask, jax.random.fold_in(key, member), max_new_tokens,
                        sampling, delta, prefix_len)

    return evaluate


def member_ids(n: int, shards: int = 1):
    """0..n-1 padded (with repeats of the last id) to a multiple of ``shards``; slice outputs to n."""
    pad = (-n) % shards
    return jnp.concatenate([jnp.arange(n, dtype=jnp.int32), jnp.full((pad,), n - 1, jnp.int32)])
