"""experiments.bench_accel runs end to end on CPU (tiny shapes, tiny sizes) and writes its table: the
script a lent GPU runs must not rot between loans. No speed is asserted."""
import json
import re

import jax
import numpy as np


def test_bench_accel_writes_its_table_on_cpu(tmp_path):
    from experiments.bench_accel import main, roofline_step
    from experiments.shapes import shape_config

    out = tmp_path / "bench"
    res = main(["--shapes", "tiny", "--out", str(out), "--no-reference", "--sections",
                "generate,layout,attention,loop,cache,es16,update,n1024,paper2", "--gen-rows", "2", "--new", "4", "--members", "2", "--es-new", "2",
                "--cache-new", "6", "--cache-block", "2"])
    table = (out / "table.md").read_text()
    assert "| generate 2 rows x 4 new |" in table and "ES lowrank N=2 x 16 prompts" in table
    assert "ES update full, N=2" in table and "failed" not in table, table
    assert "| decode step at 2 rows, 4 tokens per loop iteration |" in table and "XLA_FLAGS" in table
    assert "| generate 2 rows x 6 new, cache grown in blocks of 2 |" in table
    assert "| decode step at 2 rows, decoding layout (joined weights) |" in table
    assert "| decode step at 2 rows x 6 new, fused attention kernel |" in table  # the long-context pair
    if jax.default_backend() == "cpu":  # two chunks of the CPU's 512 rows (a GPU's memory fits them all)
        assert "| ES lowrank N=1024 x 1 prompt x 2 new (chunk 512) |" in table
    data = json.loads((out / "results.json").read_text())
    assert data["device"] == jax.devices()[0].device_kind
    ratios = [v["ratio"] for k, v in res.items() if k.startswith("ES ") and "update" not in k]
    assert len(ratios) == 3 and all(r > 0 for r in ratios)
    # roofline: at 1 row the weights dominate; 2 bytes per bf16 parameter over the bandwidth
    m = shape_config("qwen2.5-1.5b")
    r = roofline_step(m, 1, 0, (1e15, 1e12))
    np.testing.assert_allclose(r["ideal_s"], m.param_count() * 2 / 1e12)


def test_paper2_row_scales_the_short_rows_rate_by_the_roofline_of_the_long_iteration(monkeypatch):
    """The paper-2 iteration (30 × 200 × 1,024) is extrapolated from the es200 rate at --es-new tokens, scaled
    by the roofline of the iteration as it would run: each step reads the cache up to its segment's end
    (the cache grown in blocks), and at 1,024 tokens fewer full-rank members fit in a chunk (with 56 GB for
    members, 70 % of 80 GB: 3 instead of 5). Beside it, the arithmetic floor of those chunks."""
    from esjax.es import population as pop
    from esjax.es.step import ESConfig
    from experiments.bench_accel import (Bench, generation_roofline_s, parse, population_roofline_s,
                                        prefill_roofline_s, roofline_step)
    from experiments.shapes import shape_config

    m, peaks = shape_config("qwen2.5-1.5b"), (989e12, 3.35e12)
    step = lambda context, copies=1: roofline_step(m, 1000, context, peaks, copies)["ideal_s"]  # noqa: E731
    # the prefill: compute-bound, 2 FLOPs per non-embedding weight and prompt token, the tied head once per
    # row, causal attention 2·L·H·d·P² per row (≈ 1.0 s of an H100 for 6,000 rows × 64 tokens)
    embed = m.vocab_size * m.hidden_size
    pre = 1000 * (2 * (m.param_count() - embed) * 64 + 2 * embed + 2 * 28 * 12 * 128 * 64 ** 2) / 989e12
    np.testing.assert_allclose(prefill_roofline_s(m, 1000, 64, peaks), pre)
    assert 0.95 < prefill_roofline_s(m, 6000, 64, peaks) < 1.1
    np.testing.assert_allclose(generation_roofline_s(m.replace(decode_cache_block=0), 1000, 64, 600, peaks),
                               pre + 600 * step(664))
    np.testing.assert_allclose(generation_roofline_s(m, 1000, 64, 600, peaks, 5),  # blocks of 256
                               prefill_roofline_s(m, 1000, 64, peaks, 5)
                               + 256 * step(320, 5) + 256 * step(576, 5) + 88 * step(664, 5))
    np.testing.assert_allclose(step(1000, 5) - step(1000), 4 * m.param_count() * 2 / 3.35e12)  # members' own weights
    # 30 members in chunks of at most 4: 8 chunks of 4 (the last padded), as the population runs them
    assert population_roofline_s(m, 30, 200, 64, 600, peaks, 4, True) == (
        8 * generation_roofline_s(m, 800, 64, 600, peaks, 4), 8, 4)

    monkeypatch.setattr(pop, "device_memory_budget", lambda fraction=pop.ACCEL_MEMORY_FRACTION: 0.7 * 80e9)
    cfg = ESConfig(population_size=30, noise="full", rank=1)
    short_chunk, long_chunk = (pop.auto_chunk_size(m, cfg, 200, 64, new) for new in (64, 1024))
    assert long_chunk < short_chunk  # a longer cache per row: fewer members at once
    bench = Bench(parse(["--shapes", "tiny", "--out", "/nonexistent", "--es-new", "64", "--prompt-len", "64"]))
    bench.mcfg, bench.peaks = m, peaks
    bench.results[f"ES full N=30 x 200 prompts x 64 new (chunk {short_chunk})"] = {"tokens_per_s": 1e5,
                                                                                   "chunk": short_chunk}
    bench.results["ES lowrank N=30 x 16 prompts x 64 new (chunk 30)"] = {"tokens_per_s": 4e4, "chunk": 30}  # --quick
    bench.paper2()
    row = bench.results["paper-2 ES iteration, full: 30 x 200 x 1,024 tokens"]
    long, k, size = population_roofline_s(m, 30, 200, 64, 1024, peaks, long_chunk, True)
    short, _, _ = population_roofline_s(m, 30, 200, 64, 64, peaks, short_chunk, True)
    assert long / short > 1024 / 64  # per token, the long iteration's roofline is slower
    np.testing.assert_allclose(row["seconds"], 30 * 200 * 64 / 1e5 * long / short)
    assert row["reference"] == f"arithmetic floor {long:,.0f} s ({k} chunks of {size})" and size == long_chunk
    # low-rank, measured at 16 prompts only (--quick): 480 rows at 64 tokens → 6,000 rows at 1,024
    row = bench.results["paper-2 ES iteration, lowrank: 30 x 200 x 1,024 tokens"]
    lr_chunk = pop.auto_chunk_size(m, ESConfig(population_size=30, noise="lowrank", rank=1), 200, 64, 1024)
    long, _, _ = population_roofline_s(m, 30, 200, 64, 1024, peaks, lr_chunk, False)
    short, _, _ = population_roofline_s(m, 30, 16, 64, 64, peaks, 30, False)
    np.testing.assert_allclose(row["seconds"], 30 * 16 * 64 / 4e4 * long / short)
    assert "the 16-prompt call at 64 tokens" in row["esjax"]


def test_lowrank_roofline_ratio_counts_weights_per_chunk_every_members_factors_and_the_flops():
    """N = 1,024 members, one row each: every member's factors (≈ 2.9 MB in bf16) are read for one row
    each step. On a memory-bound device that allows 0.67x of plain decoding (0.94x at 16 prompts per
    member); at an H100's peaks both steps are compute-bound at 1,024 rows and the bound is ≈ 1.0x (an
    H100 measured 0.79x, above the old bytes-only 0.67x that this test used to assert)."""
    from esjax.es.schemes import get_scheme
    from esjax.es.step import ESConfig
    from esjax.roofline import PEAKS
    from experiments.bench_accel import lowrank_roofline_ratio
    from experiments.shapes import shape_config

    m = shape_config("qwen2.5-1.5b")
    n_params, elems = m.param_count(), get_scheme("lowrank").member_bytes(m, ESConfig(rank=1)) // 4
    w, factors = 2 * n_params, 2 * elems  # bf16
    kv_row = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 96 * 2
    attn_row = 4 * m.num_layers * m.num_heads * m.head_dim * 96
    assert 2.8e6 < factors < 3.0e6  # ≈ 2.9 MB per member
    memory_bound = (1e30, 3.35e12)  # FLOPs free: the ratio is the bytes' ratio
    np.testing.assert_allclose(lowrank_roofline_ratio(m, 1024, 1, 96, 1024, memory_bound),
                               (w + 1024 * kv_row) / (w + 1024 * kv_row + 1024 * factors))
    np.testing.assert_allclose(lowrank_roofline_ratio(m, 1024, 1, 96, 1024, memory_bound), 0.67, atol=0.01)
    np.testing.assert_allclose(lowrank_roofline_ratio(m, 1024, 16, 96, 1024, memory_bound), 0.94, atol=0.01)
    # 30 members in chunks of 4: 8 chunks read the weights, 32 members' rows (2 padded copies)
    np.testing.assert_allclose(lowrank_roofline_ratio(m, 30, 16, 96, 4, memory_bound),
                               (w + 480 * kv_row) / (8 * w + 512 * kv_row + 30 * factors))
    compute_bound = (989e12, 1e30)  # bytes free: the ratio is the FLOPs' ratio (+ 2 r (n_in + n_out) per row)
    rows = 1024
    np.testing.assert_allclose(lowrank_roofline_ratio(m, 1024, 1, 96, 1024, compute_bound),
                               (2 * n_params + attn_row) / (2 * n_params + attn_row + 2 * elems))
    # an H100: 1,024 rows are compute-bound with or without the factors' 3 GB
    assert lowrank_roofline_ratio(m, 1024, 1, 96, 1024, PEAKS["H100"]) > 0.99
    assert rows * 2 * n_params / PEAKS["H100"][0] > (w + rows * kv_row + rows * factors) / PEAKS["H100"][1]


def test_profile_and_ahead_of_time_compile_run_on_cpu(tmp_path):
    """The device check's profile and the CPU proxy (ahead-of-time compile on abstract shapes) run on tiny
    shapes. The profile attributes the population call's time to its programs by name (the weight cast,
    the member noise and the decode program run in one call, and op names such as ``copy.1`` repeat across
    them) and writes the decode program's optimized HLO."""
    from experiments import aot_compile, profile_decode

    text, learner = profile_decode.main(["--shapes", "tiny", "--what", "lowrank,grpo", "--members", "2", "--rows", "4",
                                         "--new", "4", "--prompt-len", "8", "--grpo-rows", "8", "--grpo-new", "4",
                                         "--grpo-micro", "4", "--hlo", "--out", str(tmp_path)])
    assert "failed" not in text and "programs: " in text, text[:600]
    # the GRPO learner update (bench_accel's MFU row), per micro-batch of its scan
    assert "failed" not in learner and "per micro-batch over 2" in learner and "programs: " in learner, learner[:600]
    assert "HloModule" in (tmp_path / "profile_grpo.hlo.txt").read_text()
    if jax.default_backend() == "cpu":  # the CPU client's events name their program (on whichever thread ran it)
        programs = " ".join(ln for ln in text.splitlines() if ln.startswith("programs: "))
        assert "jit_population" in programs or "jit_member_noise" in programs, text[:600]
        assert re.search(r"^\| jit_(population|member_noise):", text, re.M), text[:600]  # ops named program:op
        spans = " ".join(ln for ln in text.splitlines() if ln.startswith("spans (ms from the first op): "))
        assert re.search(r"jit_(population|member_noise) \d+\.\d–\d+\.\d", spans), text[:800]  # when each ran
    hlo = (tmp_path / "profile_lowrank.hlo.txt").read_text()
    assert "HloModule jit_population" in hlo and " while(" in hlo
    totals = aot_compile.main(["--shapes", "tiny", "--members", "4", "--prompts", "2", "--new", "4", "--prompt-len", "8",
                               "--noise", "lowrank"])
    assert set(totals) == {("lowrank", "es_update"), ("lowrank", "population")} and all(t > 0 for t in totals.values())


def test_the_compaction_bench_runs_on_cpu():
    """experiments.bench_compaction on tiny random shapes: a row per case and compaction, the ratios against
    compaction 0 of the same case, and what a run would pick after the case's lengths."""
    from experiments import bench_compaction

    res = bench_compaction.main(["--shapes", "tiny", "--rows", "6", "--members", "2", "--prompts", "4", "--new", "24",
                                 "--block", "4", "--halvings", "1"])
    cases = {case for case, _ in res}
    assert len(cases) == 4 and {h for _, h in res} == {0, 1}, cases  # plain and ES, each early and worst
    assert all(res[c, 0]["ratio"] == 1.0 and res[c, 1]["tokens_per_s"] > 0 for c in cases)
    assert all("a run picks 0" in c for c in cases if "worst case" in c)  # every row still runs at the boundary


def test_paper2_chunk_measures_one_equal_chunk_and_multiplies_by_their_number(monkeypatch):
    """``--paper2-chunk``: the population of one chunk (the size the 30-member iteration's equal chunks
    have at 200 prompts × 1,024 tokens) is measured, and the iteration is that chunk's seconds times the
    number of chunks; the arithmetic floor beside it is the same iteration's."""
    from esjax.es import population as pop
    from esjax.es.step import ESConfig
    from experiments.bench_accel import Bench, parse, population_roofline_s
    from experiments.shapes import shape_config

    m, peaks = shape_config("qwen2.5-1.5b"), (989e12, 3.35e12)
    monkeypatch.setattr(pop, "device_memory_budget", lambda fraction=pop.ACCEL_MEMORY_FRACTION: 0.7 * 80e9)
    bench = Bench(parse(["--shapes", "tiny", "--out", "/nonexistent", "--prompt-len", "64", "--paper2-chunk",
                         "--paper2-noise", "lowrank"]))
    bench.mcfg, bench.peaks = m, peaks
    calls = []

    def population(noise, members, per_member, new):
        calls.append((noise, members, per_member, new))
        return 5e4, 30.0, members

    bench.population = population
    bench.paper2()
    chunk = pop.auto_chunk_size(m, ESConfig(population_size=30, noise="lowrank", rank=1), 200, 64, 1024)
    k, size = pop.balanced_chunks(30, chunk)
    assert calls == [("lowrank", size, 200, 1024)] and 1 < k < 30
    row = bench.results["paper-2 ES iteration, lowrank: 30 x 200 x 1,024 tokens"]
    np.testing.assert_allclose(row["seconds"], k * size * 200 * 1024 / 5e4)
    assert f"one chunk of {size} members measured" in row["esjax"] and f"x {k} chunks" in row["esjax"]
    floor, fk, fsize = population_roofline_s(m, 30, 200, 64, 1024, peaks, chunk, False)
    assert row["reference"] == f"arithmetic floor {floor:,.0f} s ({fk} chunks of {fsize})"
    assert "paper-2 ES iteration, full: 30 x 200 x 1,024 tokens" not in bench.results
