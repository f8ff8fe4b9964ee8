"""Generation throughput: esjax (jit prefill + while_loop decode) vs transformers ``generate`` on the same
model (SmolLM2-135M, float32), batch and lengths, measured side by side in one run; plus prefill
GFLOP/s against this machine's measured matmul peak.

    python -m experiments.bench_generate [--batch 32] [--new 64]
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from esjax.models.registry import load_model
from esjax.sampling import make_generate
from experiments.bench_common import matmul_peak_gflops, padded, timed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    args = p.parse_args(argv)
    model = load_model()
    cfg = model.cfg.replace(eos_token_ids=())  # every row generates exactly --new tokens in both libraries
    toks, mask, _ = padded(model.tokenizer, args.batch, cfg.pad_token_id)
    gen = make_generate(cfg, args.new, logprobs=False)  # tokens only, as transformers' generate
    _, t_ours = timed(lambda: gen(model.params, toks, mask, jax.random.key(0)).tokens)
    ours = args.batch * args.new / t_ours
    s_toks, s_mask, prefix = padded(model.tokenizer, args.batch, cfg.pad_token_id, share_prefix=True)
    s_gen = make_generate(cfg, args.new, prefix_len=prefix, logprobs=False)
    _, t_shared = timed(lambda: s_gen(model.params, s_toks, s_mask, jax.random.key(0)).tokens)
    shared = args.batch * args.new / t_shared

    from esjax.models.decoder import forward, positions_from_mask
    prefill = jax.jit(lambda p, t, m: forward(p, cfg, t, positions_from_mask(m), m, last_only=True)[0])
    _, t_pre = timed(prefill, model.params, toks, mask)
    table = cfg.vocab_size * cfg.hidden_size  # the input embedding is a lookup, the head runs on the last position
    flops = 2 * (cfg.param_count() - table) * toks.size + 2 * table * toks.shape[0]
    peak = matmul_peak_gflops()

    import torch
    from transformers import AutoModelForCausalLM
    from esjax.models.gguf_loader import smollm2_gguf_path
    import os
    path = smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()
    ids, am = torch.tensor(toks.astype(np.int64)), torch.tensor(mask.astype(np.int64))
    kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=cfg.pad_token_id)
    with torch.no_grad():
        hf.generate(ids, attention_mask=am, **kw)
        t0 = time.perf_counter()
        hf.generate(ids, attention_mask=am, **kw)
        t_hf = time.perf_counter() - t0
    theirs = args.batch * args.new / t_hf
    print(f"SmolLM2-135M float32, {args.batch} prompts (padded to {toks.shape[1]}) x {args.new} new tokens, "
          f"{torch.get_num_threads()} torch threads")
    print(f"esjax generate:        {ours:8.1f} tokens/s ({t_ours:.2f} s)")
    print(f"transformers generate: {theirs:8.1f} tokens/s ({t_hf:.2f} s)")
    print(f"ratio esjax / transformers: {ours / theirs:.2f}x")
    print(f"esjax, the {prefix}-token shared prefix prefilled once: {shared:8.1f} tokens/s ({t_shared:.2f} s), "
          f"ratio {shared / theirs:.2f}x")
    print(f"prefill: {flops / t_pre / 1e9:.1f} GFLOP/s vs measured matmul peak {peak:.1f} GFLOP/s "
          f"({flops / t_pre / 1e9 / peak:.0%})")


if __name__ == "__main__":
    main()
