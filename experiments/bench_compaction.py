"""EOS compaction (``generate(..., compaction=h)``, a run's ``decode_compaction``) against the plain decode
loop, measured side by side in one run: plain generation and the low-rank ES population over rows that
stop early (each row's budget stands in for its EOS: :func:`experiments.bench_common.completion_lengths`,
log-normal around a quarter of the budget with 5 % of rows running to the end), and the worst case, where
every row runs the whole budget. Rates count the tokens the rows keep (Σ lengths), so padding decoded after
a row stopped is not counted as work done. Beside each measured ratio, the one the compaction choice's cost
model predicts (:func:`esjax.compaction.compaction_cost` under :func:`esjax.roofline.cost_peaks` of the
device), and what a run would pick after these lengths.

    python -m experiments.bench_compaction [--rows 32] [--new 256] [--block 64] [--halvings 1,2]
    python -m experiments.bench_compaction --shapes qwen2.5-1.5b --rows 480 --new 1024   # an accelerator
    python -m experiments.bench_compaction --temperature 1 --sections plain   # sampled rows (GRPO rollouts)
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

from esjax.es.population import lm_evaluator, member_ids, population_fn
from esjax.es.step import ESConfig, init_state
from esjax.compaction import compaction_choice, compaction_cost
from esjax.roofline import cost_peaks, kv_slot_bytes, step_cost
from esjax.sampling import SamplingConfig, decode_segments, make_generate
from experiments.bench_common import completion_lengths, first_and_best


def rows_of(x, n: int):
    """The first ``n`` rows of ``x`` repeated."""
    return np.tile(x, (-(-n // x.shape[0]), 1))[:n]


def setup(shapes: str):
    """(model config with EOS off, params, tokens, mask): the embedded SmolLM2 and its chat prompts, or random
    weights of ``shapes`` (experiments.shapes) and random 64-token prompts."""
    if shapes == "smollm2":
        from esjax.models.registry import load_model
        from experiments.bench_common import padded
        model = load_model()
        return (model.cfg.replace(eos_token_ids=()), model.params,
                *padded(model.tokenizer, 8, model.cfg.pad_token_id)[:2])
    from esjax.models.decoder import init_params
    from esjax.models.precision import compute_params
    from experiments.shapes import shape_config
    mcfg = shape_config(shapes, "bfloat16" if jax.default_backend() != "cpu" else "float32")
    params = compute_params(init_params(mcfg.replace(param_dtype="float32"), jax.random.key(0)), mcfg)
    rng = np.random.default_rng(0)
    return mcfg, params, rng.integers(3, mcfg.vocab_size, (8, 64)).astype(np.int32), np.ones((8, 64), bool)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="smollm2", help="smollm2 (the embedded model) or an experiments.shapes name")
    p.add_argument("--rows", type=int, default=32, help="plain generation's rows")
    p.add_argument("--members", type=int, default=4, help="ES members (each decodes --prompts rows)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--block", type=int, default=64, help="decode_cache_block: compaction acts at its boundaries")
    p.add_argument("--halvings", default="1,2")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--sections", default="plain,es")
    p.add_argument("--cases", default="early,worst",
                   help="early: rows that stop early; worst: every row runs the budget")
    p.add_argument("--median", type=float, default=0.25, help="stop-early lengths: median as a share of --new")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="> 0: rows sample (GRPO rollouts, paper 1's members), each with its own key")
    a = p.parse_args(argv)
    mcfg, params, toks, mask = setup(a.shapes)
    halvings = [0] + [int(h) for h in a.halvings.split(",")]
    sampling = SamplingConfig(temperature=a.temperature)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {a.shapes} ({mcfg.compute_dtype}), "
          f"{a.new} new tokens in blocks of {a.block}, " + (f"sampled at T = {a.temperature}" if a.temperature
                                                            else "greedy"))
    print(f"{'case':72s} {'compaction':>10s} {'kept tok/s':>11s} {'x of h=0':>9s} {'predicted':>9s} "
          f"{'first call s':>12s}")
    run_cfg = mcfg.replace(decode_cache_block=a.block, decode_compaction=max(halvings))
    cost, ends, P = step_cost(mcfg, cost_peaks()), decode_segments(a.new, a.block), toks.shape[1]

    def cases(rows, seed):  # (label, (rows,) lengths) of the --cases asked for
        return [(label, lengths) for name, label, lengths in (
            ("early", "stop early", completion_lengths(rows, a.new, a.median, seed=seed)),
            ("worst", "worst case, every row runs the budget", np.full(rows, a.new, np.int32)))
            if name in a.cases.split(",")]

    def picks(lengths, rows):  # what a run's next call would choose after these lengths
        return f"a run picks {compaction_choice(lengths, rows, P, run_cfg, a.new, instances=len(lengths))}"

    def predicted(lengths):  # {h: predicted seconds of the decode loops} ((instances, rows) lengths)
        return {h: compaction_cost(lengths, ends, h, P, cost, kv_slot_bytes(mcfg)) if cost else None
                for h in halvings}

    results = {}

    def report(case, runs, tokens, lengths):  # one row per compaction, rates of the tokens the rows keep
        base, model = None, predicted(lengths)
        for h in halvings:
            first, t = runs[h]
            base = base or t
            guess = model[0] / model[h] if model[h] else None
            results[case, h] = {"tokens_per_s": tokens / t, "ratio": base / t, "predicted": guess, "first_s": first}
            shown = f"{guess:8.2f}x" if guess else f"{'-':>9s}"
            print(f"{case:72s} {h:>10d} {tokens / t:11,.1f} {base / t:8.2f}x {shown} {first:12.1f}")

    if "plain" in a.sections:
        t, m = rows_of(toks, a.rows), rows_of(mask, a.rows)
        for label, lengths in cases(a.rows, 0):
            runs = {}
            for h in halvings:
                gen = make_generate(mcfg, a.new, sampling, cache_block=a.block, logprobs=False, compaction=h)
                runs[h] = first_and_best(lambda: gen(params, t, m, jax.random.key(0), row_max_new=lengths).tokens,
                                         repeats=a.repeats)
            fill = lengths.sum() / (a.rows * lengths.max())
            report(f"generate {a.rows} rows, {label} (fill {fill:.2f}, {picks(lengths[None], a.rows)})", runs,
                   int(lengths.sum()), lengths[None])
    if "es" in a.sections:
        cfg = ESConfig(population_size=a.members, noise="lowrank", rank=1, sigma=1e-3, member_temperature=a.temperature)
        state = init_state(params, jax.random.key(1), cfg)
        t, m = rows_of(toks, a.prompts), rows_of(mask, a.prompts)
        for label, lengths in cases(a.prompts, 1):
            runs = {}
            for h in halvings:
                pop = population_fn(lm_evaluator(mcfg, a.new, cfg, cache_block=a.block, compaction=h), cfg, a.members)
                runs[h] = first_and_best(lambda: pop(state, member_ids(a.members), t, m, jax.random.key(2), lengths).tokens,
                                         repeats=a.repeats)
            per_member = np.tile(lengths, (a.members, 1))  # every member's rows run the same budgets
            report(f"ES low-rank {a.members} x {a.prompts} prompts, {label} ({picks(per_member, a.prompts)})", runs,
                   int(lengths.sum()) * a.members, per_member)
    return results


if __name__ == "__main__":
    main()
