"""ES population-evaluation throughput vs plain batched inference on the same rows, in one run:
full-rank members (θ + σε per member, chunked vmap) and low-rank EGGROLL members (shared W, vmap over
deltas), plus the time to generate one member's noise.

    python -m experiments.bench_es [--members 8] [--prompts 8] [--new 32]
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

from esjax.es.noise import full_noise, lowrank_noise, member_key
from esjax.es.population import lm_evaluator, member_ids, population_fn
from esjax.es.step import ESConfig, init_state
from esjax.models.registry import load_model
from esjax.sampling import make_generate
from experiments.bench_common import padded, timed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--full-chunk", type=int, default=1)
    args = p.parse_args(argv)
    model = load_model()
    cfg = model.cfg.replace(eos_token_ids=())
    N, B = args.members, args.prompts
    toks, mask, _ = padded(model.tokenizer, B, cfg.pad_token_id)
    rows = N * B * args.new
    # plain inference on the same N·B rows
    big_t, big_m = np.tile(toks, (N, 1)), np.tile(mask, (N, 1))
    gen = make_generate(cfg, args.new, logprobs=False)  # tokens only, as the ES members
    _, t_plain = timed(lambda: gen(model.params, big_t, big_m, jax.random.key(0)).tokens, repeats=1)
    results = {"plain": rows / t_plain}
    for noise, chunk in (("lowrank", N), ("full", args.full_chunk)):
        es_cfg = ESConfig(population_size=N, noise=noise, rank=1, chunk_size=chunk)
        state = init_state(model.params, jax.random.key(0), es_cfg)
        pop = population_fn(lm_evaluator(cfg, args.new, es_cfg), es_cfg, chunk)
        _, t = timed(lambda: pop(state, member_ids(N), toks, mask, jax.random.key(1)).tokens, repeats=1)
        results[noise] = rows / t
    k, _ = member_key(jax.random.key(0), 0, 0)
    _, t_full_noise = timed(jax.jit(full_noise), model.params, k)
    _, t_lr_noise = timed(jax.jit(lambda p, k: lowrank_noise(p, k, 1)), model.params, k)
    d = sum(x.size for x in jax.tree.leaves(model.params))
    print(f"SmolLM2-135M, N={N} members x {B} prompts x {args.new} new tokens ({rows} tokens per evaluation)")
    print(f"plain batched inference ({N * B} rows): {results['plain']:8.1f} tokens/s")
    print(f"ES low-rank (EGGROLL r=1):        {results['lowrank']:8.1f} tokens/s  ratio {results['lowrank'] / results['plain']:.2f}x")
    print(f"ES full-rank (chunk {args.full_chunk}):            {results['full']:8.1f} tokens/s  ratio {results['full'] / results['plain']:.2f}x")
    print(f"noise for one member: full-rank {t_full_noise:.2f} s ({d / t_full_noise / 1e6:.0f} M normals/s), "
          f"low-rank {t_lr_noise * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
