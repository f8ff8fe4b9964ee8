"""EOS compaction in the decode loop (``generate(..., compaction=h)``, a run's ``decode_compaction``): at
the first h cache-block boundaries the rows still running move to the front and the rest of the
generation runs on the halves of the batch that hold one. Each row decodes what it decodes without
compaction; the later segments run at half (quarter, …) the rows, and the whole batch's cache is never
grown past the boundary (checked on the compiled CPU program)."""
import dataclasses
import re

import jax
import numpy as np
import pytest

from esjax.config import build_config
from esjax.es.population import lm_evaluator, member_ids, population_fn
from esjax.models.registry import load_model
from esjax.parallel import POP, make_mesh
from esjax import sampling
from esjax.compaction import compaction_cap, compaction_choice, compaction_cost, compaction_fits
from esjax.roofline import StepCost
from esjax.sampling import SamplingConfig, decode_segments, make_generate, pad_prompts
from test_population_loop import _setup, cache_rewrites


@pytest.fixture(scope="module")
def tiny():
    m = load_model("tiny-random-llama")
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, m.cfg.vocab_size, rng.integers(2, 9))) for _ in range(7)]
    return m, pad_prompts(prompts, m.cfg.pad_token_id)


def _equal(a, b, logprobs=True):
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
    if logprobs:
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps_per_loop", [1, 3])
def test_compacted_generation_decodes_every_row_as_the_whole_batch_does(tiny, steps_per_loop):
    """7 rows (an odd batch: the halves are padded) with budgets that end before, at and after the blocks'
    boundaries (blocks of 3 over 31 tokens; 3 steps per loop iteration overrun the last block), one, two
    and three halvings (each within the memory cap, so each runs): the tokens, lengths and log-probs of the
    uncompacted loop."""
    m, (tokens, mask) = tiny
    budget = np.array([3, 20, 5, 1, 17, 9, 31], np.int32)
    ends = decode_segments(31, 3, steps_per_loop)
    assert [compaction_cap(7, tokens.shape[1], ends, h) for h in (1, 2, 3)] == [1, 2, 3]
    run = lambda h: make_generate(m.cfg, 31, cache_block=3, steps_per_loop=steps_per_loop, compaction=h)(  # noqa: E731
        m.params, tokens, mask, jax.random.key(0), row_max_new=budget)
    ref = run(0)
    np.testing.assert_array_equal(np.asarray(ref.lengths), budget)
    for h in (1, 2, 3):
        _equal(run(h), ref)


def test_compaction_is_the_model_configs_decode_setting_and_is_off_by_default(tiny):
    m, (tokens, mask) = tiny
    assert m.cfg.decode_compaction == 0
    lower = lambda cfg, **kw: make_generate(cfg, 40, cache_block=4, **kw).lower(  # noqa: E731
        m.params, tokens, mask, jax.random.key(0)).as_text()
    assert lower(m.cfg.replace(decode_compaction=2)) == lower(m.cfg, compaction=2) != lower(m.cfg)
    # one segment (no boundary): nothing to compact, the program of compaction=0
    assert make_generate(m.cfg, 4, compaction=2).lower(m.params, tokens, mask, jax.random.key(0)).as_text() == \
        make_generate(m.cfg, 4).lower(m.params, tokens, mask, jax.random.key(0)).as_text()
    with pytest.raises(ValueError, match="compaction must be >= 0, got -1"):
        make_generate(m.cfg, 4, compaction=-1)(m.params, tokens, mask, jax.random.key(0))


def test_sampled_generation_compacts_and_draws_what_the_whole_batch_draws(tiny):
    """Each row draws with its own key (the step's key folded with the row's id, carried as rows move), so
    sampled rows — top-k and top-p, rows decoded greedily among them, budgets that end before, at and after
    the boundaries (blocks of 3 over 31 tokens) — draw with one and three halvings (each within the memory
    cap, so each runs) the tokens and log-probs of the uncompacted loop."""
    m, (tokens, mask) = tiny
    budget = np.array([3, 20, 5, 1, 17, 9, 31], np.int32)
    greedy = np.array([False, True, False, False, False, True, False])
    s = SamplingConfig(temperature=0.7, top_k=40, top_p=0.9)
    assert compaction_cap(7, tokens.shape[1], decode_segments(31, 3), 3) == 3
    run = lambda h: make_generate(m.cfg, 31, s, cache_block=3, compaction=h)(  # noqa: E731
        m.params, tokens, mask, jax.random.key(5), None, greedy, budget)
    ref = run(0)
    assert len({tuple(r) for r in np.asarray(ref.tokens)[:, :3]}) > 3  # the rows really draw different tokens
    for h in (1, 3):
        _equal(run(h), ref)


def _kv_shapes(hlo: str, mcfg) -> set:
    """(rows, slots) of every (members, rows, K, slots, Dh) array in compiled HLO."""
    return {(int(r), int(s)) for r, s in re.findall(rf"\[2,(\d+),{mcfg.num_kv_heads},(\d+),{mcfg.head_dim}\]", hlo)}


def test_population_members_compact_their_rows_in_place_and_decode_the_same_tokens():
    """ES members (vmap with the member axis, chunks of 2) over 6 prompts of 3 tokens, 12 new tokens in
    blocks of 2, EOS tokens that stop some rows at the first step: with two halvings the members decode the
    tokens of the uncompacted loop; the compiled program holds the first segment's cache for 6 rows (3 + 2
    slots), the second's for 3 rows only (7 slots: the whole batch's cache is not grown) and the rest for
    2 rows (9 … 15 slots), and no cache of any size is selected or scattered (the halves' trip count is one
    scalar for the chunk, so the loops stay unbatched)."""
    mcfg, cfg, state, _, _ = _setup("lowrank")
    tokens = np.random.default_rng(0).integers(3, mcfg.vocab_size, (6, 3)).astype(np.int32)
    mask = np.ones((6, 3), bool)
    args = (state, member_ids(4), tokens, mask, jax.random.key(2))
    pop = lambda mc, h: population_fn(lm_evaluator(mc, 12, cfg, cache_block=2, compaction=h), cfg, 2)  # noqa: E731
    first = np.asarray(pop(mcfg, 0)(*args).tokens)[:, :, 0]  # (members, rows) first tokens without EOS
    mcfg = mcfg.replace(eos_token_ids=tuple(int(t) for t in np.unique(first[:, [1, 3]])))
    outs = {h: pop(mcfg, h)(*args) for h in (0, 2)}
    lengths = np.asarray(outs[0].lengths)
    assert (lengths == 1).any() and (lengths == 12).any(), lengths  # rows stop early, others run to the end
    _equal(outs[0], outs[2], logprobs=False)
    hlo = pop(mcfg, 2).lower(*args)["population"].compile().as_text()
    slots = range(5, 16, 2)  # 3 + each segment's end
    kv = {(r, s) for r, s in _kv_shapes(hlo, mcfg) if s in slots}
    assert kv == {(6, 5), (3, 5), (3, 7), (2, 7), (2, 9), (2, 11), (2, 13), (2, 15)}, kv
    for s in slots:
        assert cache_rewrites(hlo, s, mcfg.head_dim) == [], s
    plain = _kv_shapes(pop(mcfg, 0).lower(*args)["population"].compile().as_text(), mcfg)
    assert {(6, s) for s in slots} <= plain  # without compaction every segment runs all 6 rows
    # members sharded over the mesh's pop axis (shard_map, one member per device): the same tokens
    mesh = make_mesh()
    sharded = population_fn(lm_evaluator(mcfg, 12, cfg, cache_block=2, compaction=2), cfg, 1, mesh)
    got = sharded(state, member_ids(4, mesh.shape[POP]), tokens, mask, jax.random.key(2))
    _equal(jax.tree.map(lambda x: x[:4], got), outs[0], logprobs=False)


def test_a_runs_decode_compaction_reaches_its_model(tmp_path):
    with pytest.raises(ValueError, match=r"RunConfig.decode_compaction must be >= 0, got -1"):
        build_config("tiny", ["decode_compaction=-1"])
    cfg = build_config("tiny", ["decode_compaction=2"])
    assert cfg.model_settings()["decode_compaction"] == 2
    from esjax import runs
    assert runs.run_model(load_model("tiny-random-llama"), cfg).cfg.decode_compaction == 2
    assert runs.config_changes(cfg.to_dict(), dataclasses.replace(cfg, decode_compaction=0).to_dict(), "es") == []


def test_compaction_fits_counts_the_rows_still_running_at_each_boundary():
    ends = (256, 512, 768, 1024)
    assert compaction_fits([10] * 8, ends, 2) == 2  # every row stops in the first block
    assert compaction_fits([300] * 4 + [10] * 4, ends, 2) == 2  # 4 of 8 past 256 (one half), none past 512
    assert compaction_fits([300] * 5 + [10] * 3, ends, 2) == 0  # 5 of 8 past 256: both halves would run
    assert compaction_fits([600] * 2 + [300] * 2 + [10] * 4, ends, 3) == 3  # 4 past 256, 2 past 512, 0 past 768
    assert compaction_fits([600] * 3 + [300] + [10] * 4, ends, 3) == 1  # 3 of a quarter's 2 past 512
    assert compaction_fits([10] * 8, ends, 0) == 0 and compaction_fits([10] * 8, (16,), 2) == 0  # off; one segment
    # vmapped members: the member with the most running rows decides
    assert compaction_fits(np.array([[300] * 4 + [10] * 4, [300] * 5 + [10] * 3]), ends, 2) == 0


def test_compaction_cap_keeps_the_cache_peak_within_the_uncompacted_loops():
    """Blocks of 256 over 1,024 tokens: two halvings up to 341-token prompts, one up to 512, none beyond;
    the peak it bounds, Σ_{k<h} ⌈B/2^k⌉·(P + e_k) + ⌈B/2^h⌉·(P + M), checked against B·(P + M) directly."""
    ends = (256, 512, 768, 1024)
    assert [compaction_cap(256, p, ends, 2) for p in (64, 341, 342, 512, 513)] == [2, 2, 1, 1, 0]
    assert compaction_cap(256, 64, ends, 5) == 3 and compaction_cap(256, 64, (1024,), 2) == 0
    def peak(B, P, h):
        return sum(-(-B // 2 ** k) * (P + ends[k]) for k in range(h)) + -(-B // 2 ** h) * (P + 1024)

    for B in (1, 7, 256):
        for P in (0, 100, 341, 342, 600):
            h = compaction_cap(B, P, ends, 3)
            assert peak(B, P, h) <= B * (P + 1024) and (h == 3 or peak(B, P, h + 1) > B * (P + 1024)), (B, P, h)


def test_es_iterations_compact_as_the_last_lengths_predict_and_change_nothing(tokenizer, monkeypatch):
    """ES iterations with ``decode_compaction=2`` (blocks of 4 over 48 tokens, EOS tokens that stop half the
    prompts at the first step): the first iteration decodes uncompacted, the next compacts as the first
    one's lengths predict it pays, within the memory cap (here 1), and fitness and update are those of
    ``decode_compaction=0``; sampled members likewise (each row draws with its own key)."""
    from esjax.es import trainer
    from esjax.es.step import ESConfig, init_state
    from esjax.rollout import prompt_batch
    from esjax.models.decoder import init_params
    from esjax.tasks import get_task

    mcfg = load_model("tiny-random-llama", with_tokenizer=False).cfg.replace(eos_token_ids=(), decode_cache_block=4)
    params = init_params(mcfg, jax.random.key(0), std=0.3)  # rows that differ (the checkpoint's repeat one token)
    task, cfg = get_task("lowercase"), ESConfig(population_size=4, sigma=1e-4, alpha=1e-3)  # members decode as θ
    exs = task.examples("train", 4)
    pb = prompt_batch(tokenizer, task, exs, mcfg.pad_token_id)
    first = np.asarray(make_generate(mcfg, 1)(params, pb.tokens, pb.mask, jax.random.key(0)).tokens[:, 0])
    assert len(set(first.tolist())) > 1, first
    mcfg = mcfg.replace(eos_token_ids=(int(first[0]),))  # stops the rows that start like row 0
    seen = []
    monkeypatch.setattr(trainer, "compaction_choice", lambda *a, **k: (seen.append((a, k)), compaction_choice(*a, **k))[1])
    metrics = {}
    for h in (0, 2):
        it = trainer.make_es_iteration(mcfg.replace(decode_compaction=h), tokenizer, task, cfg, 48, 4)
        state, metrics[h] = init_state(params, jax.random.key(0), cfg), []
        for t in range(2):
            state, m = it(state, exs, jax.random.key(t))
            metrics[h].append(m)
    (lengths, rows, width, _, new, halvings), kw = seen[-1]
    assert (rows, width, new, halvings) == (4, pb.tokens.shape[1], 48, 2) and lengths.shape == (4, 4)
    assert kw == {"instances": 4, "weight_copies": 4}  # one chunk of 4 full-rank members, each its own weights
    assert (lengths == 1).any() and (lengths == 48).any(), lengths
    ends = tuple(range(4, 49, 4))
    assert compaction_fits(lengths, ends, 2) >= 1 and compaction_cap(4, pb.tokens.shape[1], ends, 2) == 1
    assert [m["decode_compaction"] for m in metrics[2]] == [0, 1]
    for a, b in zip(metrics[0], metrics[2]):
        assert a["es_fitness"] == b["es_fitness"] and a["update_norm"] == b["update_norm"]
        assert a["completion_length"] == b["completion_length"]
    sampled = dataclasses.replace(cfg, member_temperature=1.0)
    mcfg = mcfg.replace(eos_token_ids=tuple(range(3, mcfg.vocab_size, 7)))  # sampled rows stop early too
    runs = {}
    for h in (0, 2):
        it = trainer.make_es_iteration(mcfg.replace(decode_compaction=h), tokenizer, task, sampled, 48, 4)
        state = init_state(params, jax.random.key(0), sampled)
        runs[h] = [it(state, exs, jax.random.key(t))[1] for t in range(2)]
    assert runs[2][0]["decode_compaction"] == 0 and runs[2][1]["decode_compaction"] >= 1, runs[2]
    for a, b in zip(runs[0], runs[2]):
        assert (a["es_fitness"], a["completion_length"]) == (b["es_fitness"], b["completion_length"])


def test_compaction_cost_is_the_decode_loops_closed_form():
    """Every row running the whole budget (M = 1,024 in blocks of 256, B = 8 rows, no cache bytes): the
    uncompacted loop runs M steps of B rows; one halving runs the first block at B and both halves the rest;
    two halvings the second block at two halves and the rest at four quarters. A row of length ℓ runs ℓ
    steps, in whole iterations of ``steps_per_loop``; vmapped instances run until the longest one's rows
    stop; full-rank members read a weight copy each."""
    ends, w = (256, 512, 768, 1024), 5.0
    c = StepCost(weights=w, row=1.0, slot=0.0, bandwidth=1.0)
    cost = lambda ls, h, **kw: compaction_cost(np.asarray(ls), ends, h, 10, c, 0.0, **kw)  # noqa: E731
    assert cost([1024] * 8, 0) == 1024 * (w + 8)
    assert cost([1024] * 8, 1) == 256 * (w + 8) + 2 * 768 * (w + 4)
    assert cost([1024] * 8, 2) == 256 * (w + 8) + 2 * 256 * (w + 4) + 4 * 512 * (w + 2)
    # four rows stop at 10: the half that runs holds the four long rows, the other half never runs
    assert cost([300] * 4 + [10] * 4, 1) == 256 * (w + 8) + 44 * (w + 4)
    assert cost([300] * 4 + [10] * 4, 0) == 300 * (w + 8)
    assert cost([301] * 4 + [10] * 4, 1, steps_per_loop=4) == 256 * (w + 8) + 48 * (w + 4)
    # two instances (members) and their weight copies: the loop runs while either has a row running
    two = np.array([[300] * 4 + [10] * 4, [600] * 5 + [10] * 3])
    assert cost(two, 0, weight_copies=2) == 600 * (2 * w + 16)
    assert cost(two, 1, weight_copies=2) == 256 * (2 * w + 16) + 344 * (2 * w + 8) + 344 * (2 * w + 8)
    # the cache bytes: growing it between segments and gathering the halves, read and written
    kv = StepCost(weights=0.0, row=0.0, slot=0.0, bandwidth=2.0)
    assert compaction_cost(np.array([10] * 8), ends, 0, 10, kv, 3.0) == sum(2 * 8 * (10 + e) * 3.0 / 2 for e in ends[:3])
    # a halving at 256 with no row running: no trip, only the first grow's bytes (none, as here)
    assert compaction_cost(np.array([10] * 8), ends, 1, 10, kv, 3.0) == 0.0


def test_compaction_cost_counts_the_steps_and_rows_generate_runs(tiny, monkeypatch):
    """The replay against the decode loops themselves: every decode step's batch is recorded (a callback in
    the forward of the traced program), over 7 rows whose budgets end before, at and after the boundaries
    (blocks of 3 over 31 tokens), 0, 1 and 3 halvings, and 2 at 3 steps per loop iteration. With a step costing 1
    per weight read the prediction is the number of steps; with 1 per row, the row-steps."""
    m, (tokens, mask) = tiny
    budget = np.array([3, 20, 5, 1, 17, 9, 31], np.int32)
    batches = []
    forward = sampling.forward

    def recording(params, cfg, toks, *a, **k):
        if toks.shape[1] == 1:  # a decode step (the prefill runs the prompt)
            jax.debug.callback(lambda: batches.append(toks.shape[0]))
        return forward(params, cfg, toks, *a, **k)

    monkeypatch.setattr(sampling, "forward", recording)
    for k, hs in ((1, (0, 1, 3)), (3, (2,))):
        ends = decode_segments(31, 3, k)
        for h in hs:
            assert compaction_cap(7, tokens.shape[1], ends, h) == h  # each halving runs
            batches.clear()
            jax.block_until_ready(jax.jit(lambda p, t, s: sampling.generate(  # noqa: B023
                p, m.cfg, t, s, jax.random.key(0), 31, cache_block=3, steps_per_loop=k, compaction=h,  # noqa: B023
                row_max_new=budget))(m.params, tokens, mask))
            predict = lambda weights, row: compaction_cost(  # noqa: E731
                budget, ends, h, tokens.shape[1], StepCost(weights, row, 0.0, 1.0), 0.0, k)  # noqa: B023
            assert predict(1.0, 0.0) == len(batches) and predict(0.0, 1.0) == sum(batches), (k, h, batches)


def test_compaction_choice_takes_the_least_predicted_cost():
    """Blocks of 256 over 1,024 tokens. Where the weights dominate a step, a level that runs both halves
    costs more than it saves and the choice stays at 0; where rows dominate (long contexts, a CPU) the same
    lengths compact. Rows that all stop in the first block compact on any device; rows that all run the
    budget never do. Without a cost model (an accelerator the table does not name) the conservative rule,
    :func:`compaction_fits`."""
    mcfg = load_model("tiny-random-llama", with_tokenizer=False).cfg.replace(decode_cache_block=256,
                                                                          decode_compaction=2)
    rng = np.random.default_rng(0)
    both = np.concatenate([rng.integers(257, 400, 5), [1000], rng.integers(1, 100, 2)])  # 6 of 8 past 256
    choose = lambda ls, peaks: compaction_choice(np.asarray(ls), 8, 16, mcfg, 1024, peaks=peaks)  # noqa: E731
    weights_heavy, rows_heavy = (1e15, 1e9), (1e9, 1e15)  # (FLOP/s, bytes/s)
    assert choose(both, weights_heavy) == 0 and choose(both, rows_heavy) >= 1 and compaction_fits(both, (256,) * 2, 2) == 0
    assert choose([10] * 7 + [1000], weights_heavy) == 2 == choose([10] * 7 + [1000], rows_heavy)
    assert choose([1024] * 8, weights_heavy) == 0 == choose([1024] * 8, rows_heavy)
    assert choose(both, None) == 0 and choose([10] * 7 + [1000], None) == 2
    assert compaction_choice(None, 8, 16, mcfg, 1024, peaks=rows_heavy) == 0  # a run's first call
    assert compaction_choice([10] * 8, 8, 16, mcfg, 1024, halvings=0, peaks=rows_heavy) == 0  # off
    # members in calls of 2 (the last padded with its last member): each call's own longest rows count
    members = np.array([[10] * 7 + [1000]] * 2 + [[1000] * 8])
    assert compaction_choice(members, 8, 16, mcfg, 1024, instances=2, peaks=rows_heavy) == 2
    assert compaction_choice(members, 8, 16, mcfg, 1024, instances=3, peaks=weights_heavy) == 0


def test_step_cost_is_the_rooflines_bytes_and_flops_summed():
    """The compaction choice's step cost is linear in rows and slots, and equals bytes / bandwidth + FLOPs /
    peak of the roofline's counts (esjax.roofline) for any rows, slots and weight copies; a CPU gets the
    measured balance, an accelerator the table does not name none."""
    from esjax.roofline import CPU_BALANCE, cost_peaks, step_bytes, step_cost, step_flops
    from experiments.shapes import shape_config

    mcfg = shape_config("qwen2.5-1.5b", "bfloat16")
    peaks = (989e12, 3.35e12)
    cost = step_cost(mcfg, peaks)
    for rows, slots, copies in ((1, 0, 1), (128, 200, 1), (600, 1088, 3)):
        want = step_bytes(mcfg, rows, slots, copies) / peaks[1] + step_flops(mcfg, rows, slots) / peaks[0]
        assert cost.step(rows, slots, copies) == pytest.approx(want, rel=1e-12)
    assert 150 < cost.weights / (cost.row + 128 * cost.slot) < 300  # a weight read ≈ 220 rows' step
    assert cost_peaks() == CPU_BALANCE and step_cost(mcfg, None) is None
    # an untied input embedding is looked up, not read whole: only the head's V·D count (a tied model's one table)
    untied = mcfg.replace(tie_embeddings=False)
    head = mcfg.vocab_size * mcfg.hidden_size * 2  # bf16 bytes
    assert step_bytes(untied, 1, 0) == step_bytes(mcfg, 1, 0) == mcfg.param_count() * 2
    assert step_cost(untied, peaks) == step_cost(mcfg, peaks) and untied.param_count() * 2 == step_bytes(untied, 1, 0) + head


def test_grpo_rollouts_compact_and_draw_what_they_draw_without(tokenizer, monkeypatch):
    """GRPO rollouts (sampled, groups of 4) with ``decode_compaction=2`` (blocks of 4 over 24 tokens, EOS
    tokens that stop rows at different steps): the first step rolls out uncompacted, the next compacts —
    with every halving allowed, whatever the choice would say (it is tested above; here it only receives the
    previous step's lengths) — and the rollouts, rewards and updates are those of ``decode_compaction=0``."""
    from esjax.grpo import trainer
    from esjax.grpo.step import GRPOConfig
    from esjax.grpo.step import init_state as grpo_init
    from esjax.grpo.trainer import make_grpo_iteration

    seen = []
    monkeypatch.setattr(trainer, "compaction_choice", lambda prev, *a: (seen.append(prev), 0 if prev is None else a[4])[1])
    from esjax.models.decoder import init_params
    from esjax.tasks import get_task

    mcfg = load_model("tiny-random-llama", with_tokenizer=False).cfg.replace(decode_cache_block=4)
    params = init_params(mcfg.replace(eos_token_ids=()), jax.random.key(0), std=0.3)
    task, cfg = get_task("lowercase"), GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-3)
    exs = task.examples("train", 2)
    mcfg = mcfg.replace(eos_token_ids=tuple(range(3, mcfg.vocab_size, 13)))  # a thirteenth of the tokens stop a row
    runs = {}
    for h in (0, 2):
        it = make_grpo_iteration(mcfg.replace(decode_compaction=h), tokenizer, task, cfg, 24)
        state, runs[h] = grpo_init(params, jax.random.key(0), cfg), []
        for _ in range(2):
            state, m = it(state, exs)
            runs[h].append(m)
    assert 1 < min(m["completion_length"] for m in runs[0]) and max(m["completion_length"] for m in runs[0]) < 24
    assert [m["decode_compaction"] for m in runs[0]] == [0, 0] and runs[2][0]["decode_compaction"] == 0
    assert runs[2][1]["decode_compaction"] == 2 and seen[-1].shape == (8,)  # the first step's 8 rows
    for a, b in zip(runs[0], runs[2]):
        assert all(a[k] == b[k] for k in ("loss", "reward_mean", "completion_length", "tokens", "grad_norm")), (a, b)


def test_evaluation_compacts_each_batch_from_the_same_problems_at_the_last_evaluation(tokenizer, monkeypatch):
    """``evaluate`` chooses batch i's compaction from batch i's lengths at the previous evaluation of the
    same problems (``previous_lengths``), else from this call's batch i − 1 (a first call's first batch:
    none); a run keeps each task's lengths between its evaluations. Accuracy, rewards and lengths are
    those of ``decode_compaction=0``, whatever is chosen (every halving the cap allows, here)."""
    from esjax import evaluation, runs
    from esjax.models.decoder import init_params
    from esjax.tasks import get_task

    seen = []
    monkeypatch.setattr(evaluation, "compaction_choice", lambda prev, *a: (seen.append(prev), 0 if prev is None else a[2].decode_compaction)[1])
    mcfg = load_model("tiny-random-llama", with_tokenizer=False).cfg.replace(decode_cache_block=4)
    params = init_params(mcfg.replace(eos_token_ids=()), jax.random.key(0), std=0.3)
    mcfg = mcfg.replace(eos_token_ids=tuple(range(3, mcfg.vocab_size, 13)))
    task = get_task("lowercase")
    exs = task.examples("test", 6)
    ev = lambda mc, prev=None: evaluation.evaluate(params, mc, tokenizer, task, exs, 24, 4, prev)  # noqa: E731
    plain, first = ev(mcfg), ev(mcfg.replace(decode_compaction=2))
    assert seen[2] is None and seen[3] is first["batch_lengths"][0]  # batches of 4 and 2: the call's previous
    assert [b.shape for b in first["batch_lengths"]] == [(4,), (2,)]
    second = ev(mcfg.replace(decode_compaction=2), first["batch_lengths"])
    assert seen[4] is first["batch_lengths"][0] and seen[5] is first["batch_lengths"][1]  # the same problems'
    lengths = np.concatenate(plain["batch_lengths"])
    assert lengths.min() < 12 and lengths.max() > lengths.min(), lengths  # rows that stop before others
    for res in (first, second):
        assert {k: res[k] for k in ("accuracy", "reward", "completion_length", "correct")} == \
            {k: plain[k] for k in ("accuracy", "reward", "completion_length", "correct")}
        np.testing.assert_array_equal(np.concatenate(res["batch_lengths"]), lengths)
    kept = {}
    cfg = build_config("tiny", ["task=lowercase", "eval_size=6"])
    model = load_model("tiny-random-llama")._replace(params=params, cfg=mcfg)
    monkeypatch.setattr(runs, "evaluate", lambda *a, previous_lengths=None: (seen.append(("run", previous_lengths)),
                                                                              {**first, "batch_lengths": ["kept"]})[1])
    n = 1 + len(cfg.eval_tasks)
    runs.evaluate_all(params, model, cfg, 24, kept)
    runs.evaluate_all(params, model, cfg, 24, kept)
    assert seen[-2 * n:] == [("run", None)] * n + [("run", ["kept"])] * n
    assert kept == {t: ["kept"] for t in (cfg.task, *cfg.eval_tasks)}


@pytest.mark.parametrize("method", ["es", "grpo"])
def test_a_resumed_run_chooses_its_compaction_as_the_uninterrupted_run(tmp_path, monkeypatch, method):
    """A run's checkpoint keeps the lengths the next EOS compaction is chosen from (the last iteration's and
    each task's last evaluation's), so a run resumed after iteration 2 chooses what the uninterrupted run
    chose (a stand-in choice here: 1 when it has lengths, else 0) and logs the same metrics. On the suite's
    8-device mesh: a restored state used to stay committed to one device, and every resumed mesh run failed."""
    from esjax import evaluation, runs
    from esjax.es import trainer as es_trainer
    from esjax.grpo import trainer as grpo_trainer

    seen = []
    choice = lambda where: lambda prev, *a, **k: (seen.append((where, prev is not None)), int(prev is not None))[1]  # noqa: E731
    for mod in (es_trainer, grpo_trainer):
        monkeypatch.setattr(mod, "compaction_choice", choice("train"))
    monkeypatch.setattr(evaluation, "compaction_choice", choice("eval"))
    model = load_model("tiny-random-llama")
    steps = "es_iterations" if method == "es" else "grpo_steps"
    cfg = lambda n: build_config("tiny", [f"{steps}={n}", "decode_compaction=2", "grpo.total_steps=4"])  # noqa: E731
    quiet = dict(progress=False, log=lambda s: None)
    runs.run_method(cfg(4), method, str(tmp_path / "whole"), model, **quiet)
    whole, seen[:] = list(seen), []
    runs.run_method(cfg(2), method, str(tmp_path / "resumed"), model, **quiet)
    runs.run_method(cfg(4), method, str(tmp_path / "resumed"), model, **quiet)
    train = lambda s: [has for where, has in s if where == "train"]  # noqa: E731
    assert train(whole) == train(seen) == [False, True, True, True]
    # every evaluation after the first (per task, per batch) chose from lengths, the resumed run's included
    assert [has for where, has in seen if where == "eval"][-2:] == [True, True]
    a, b = ([{k: v for k, v in r.items() if not k.startswith("eval/")}  # (the 2-iteration run evaluated at its end)
             for r in runs.strip_timing(runs.read_metrics(str(tmp_path / d / method)))] for d in ("whole", "resumed"))
    assert [r.get("decode_compaction") for r in a] == [None, 0, 1, 1, 1]
    for x, y in zip(a, b):
        assert x == y, {k: (x.get(k), y.get(k)) for k in set(x) | set(y) if x.get(k) != y.get(k)}
