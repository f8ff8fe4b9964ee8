"""Compile time of the ES programs at LLM scale, ahead of time on abstract shapes (no weights allocated):
the CPU proxy for accelerator compile time that anyone can run.

    python -m experiments.aot_compile [--shapes qwen2.5-1.5b] [--members 30] [--prompts 16] [--new 256]
                                      [--prompt-len 64] [--noise full,lowrank] [--skip-population]
                                      [--cache-block 256] [--compaction 2]

Prints one row per compiled program (lowering and compilation seconds) and the totals per stage: the ES
update (:func:`esjax.es.step.lower_es_update`) and the population (:func:`esjax.es.population.population_fn`'s
``lower``) for each noise scheme, on whatever backend JAX finds (CPU here).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from esjax.es.population import lm_evaluator, member_ids, population_fn
from esjax.es.step import ESConfig, ESState, lower_es_update, make_optimizer
from esjax.models.decoder import param_shapes
from experiments.shapes import shape_config


def abstract_state(model_cfg, cfg: ESConfig) -> ESState:
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), param_shapes(model_cfg),
                          is_leaf=lambda s: isinstance(s, tuple))
    return ESState(params, jax.eval_shape(make_optimizer(cfg).init, params), jax.eval_shape(lambda: jax.random.key(0)),
                   jax.ShapeDtypeStruct((), jnp.int32))


def compile_all(lowerings: dict) -> list:
    """[(name, seconds to compile)] for {name: (Lowered, seconds to lower)}."""
    rows = []
    for name, (lowered, t_lower) in lowerings.items():
        t0 = time.perf_counter()
        lowered.compile()
        rows.append((name, t_lower, time.perf_counter() - t0))
    return rows


def timed_lower(fn):
    t0 = time.perf_counter()
    out = fn()
    t = time.perf_counter() - t0
    return {k: (v, t / len(out)) for k, v in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="qwen2.5-1.5b")
    p.add_argument("--members", type=int, default=30)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--noise", default="full,lowrank")
    p.add_argument("--compute-dtype", default="bfloat16")
    p.add_argument("--skip-population", action="store_true")
    p.add_argument("--cache-block", type=int, default=None, help="the decode loop's cache block (default the "
                   "model config's, 256; 0 = the whole cache every step): one loop body per block to compile")
    p.add_argument("--compaction", type=int, default=0, help="the population's EOS compaction (halvings at the "
                   "first block boundaries; esjax.sampling.generate)")
    args = p.parse_args(argv)
    mcfg = shape_config(args.shapes, args.compute_dtype)
    if args.cache_block is not None:
        mcfg = mcfg.replace(decode_cache_block=args.cache_block)
    mcfg = mcfg.replace(decode_compaction=args.compaction)
    print(f"{args.shapes} shapes ({mcfg.param_count():,} parameters), N = {args.members}, backend "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    totals = {}
    for noise in args.noise.split(","):
        cfg = ESConfig(population_size=args.members, noise=noise, chunk_size=args.members if noise == "lowrank" else 1)
        state = abstract_state(mcfg, cfg)
        stages = {"es_update": lambda: lower_es_update(state, cfg)}
        if not args.skip_population:
            tokens = jax.ShapeDtypeStruct((args.prompts, args.prompt_len), jnp.int32)
            mask = jax.ShapeDtypeStruct((args.prompts, args.prompt_len), jnp.bool_)
            pop = population_fn(lm_evaluator(mcfg, args.new, cfg), cfg, cfg.chunk_size, dtype=mcfg.dtype)
            stages["population"] = lambda: pop.lower(state, member_ids(args.members), tokens, mask,
                                                     jax.eval_shape(lambda: jax.random.key(0)))
        for stage, lower in stages.items():
            rows = compile_all(timed_lower(lower))
            for name, t_lower, t_compile in rows:
                print(f"  {noise:8s} {stage:11s} {name:34s} lower {t_lower:6.2f} s  compile {t_compile:6.2f} s")
            totals[noise, stage] = sum(r[1] + r[2] for r in rows)
    print("totals (lower + compile):")
    for (noise, stage), t in totals.items():
        print(f"  {noise:8s} {stage:11s} {t:7.1f} s")
    return totals


if __name__ == "__main__":
    main()
