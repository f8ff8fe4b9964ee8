"""The fused decode-attention kernel (``esjax.models.decode_attention``, ``decode_attention="pallas"``): the
same function as the einsum attention at T = 1 (run here in Pallas' interpret mode on CPU), the same
generations and ES members, a cache read only up to its filled slots, and a decode program that lowers
for CUDA with one Triton kernel per layer (lowered on this CPU: Pallas' Triton lowering runs at lowering
time, so a kernel that cannot lower fails here, not on the first GPU)."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.config import RunConfig
from esjax.es.population import lm_evaluator, member_ids, population_fn
from esjax.es.step import ESConfig, init_state
from esjax.models.config import ModelConfig
import esjax.models.decode_attention as decode_attention_module
from esjax.models.decode_attention import auto_splits, decode_attention
from esjax.models.decoder import attention, init_params
from esjax.models.registry import model_config
from esjax.parallel import POP, make_mesh
from esjax.sampling import SamplingConfig, make_generate, pad_prompts

TRITON = "__gpu$xla.gpu.triton"


def reference(q, k, v, mask):
    """The einsum path (decoder.attention) at T = 1, in the kernel's (B, K, G, Dh) layout."""
    B, K, G, Dh = q.shape
    with jax.default_matmul_precision("highest"):
        out = attention(q.reshape(B, 1, K * G, Dh), k, v, mask[:, None, :])
    return np.asarray(out.reshape(B, K, G, Dh), np.float32)


@pytest.mark.parametrize("G, Dh, S, block, filled", [(1, 16, 16, 16, 16), (3, 64, 100, 64, 77), (6, 32, 45, 16, 45),
                                                     (2, 16, 130, 32, 5), (6, 128, 1100, 64, 1030)])
def test_kernel_is_the_einsum_attention(G, Dh, S, block, filled):
    """Random q, k, v; rows with a padded prompt, a hole (a shared prefix's layout) and a cache filled to
    ``filled`` of S slots (the last block running past S when block ∤ S): the einsum attention's output,
    to float32 rounding; in bfloat16 to bfloat16's; unsplit and split in three (FlashDecoding: a split
    may hold no filled block). The last case has Qwen2.5-1.5B's head (G = 6, Dh = 128) at the seeds'
    1,024-token context."""
    B, K = 3, 2
    r = np.random.default_rng(G * S)
    q, k, v = (r.normal(size=s).astype(np.float32) for s in ((B, K, G, Dh), (B, K, S, Dh), (B, K, S, Dh)))
    mask = np.ones((B, S), bool)
    mask[0, :min(3, filled - 1)] = False
    mask[1, 1:min(4, filled - 1)] = False
    mask[:, filled:] = False
    for splits in (1, 3):  # one program per (row, KV head), or three over thirds of the cache, combined
        out = decode_attention(*map(jnp.asarray, (q, k, v, mask)), filled, block=block, splits=splits)
        assert out.shape == (B, K, G, Dh) and out.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(out), reference(q, k, v, mask), rtol=2e-5, atol=2e-6)
        bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
        out16 = decode_attention(*bf, jnp.asarray(mask), filled, block=block, splits=splits)
        assert out16.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out16, np.float32), reference(*bf, mask), atol=3e-2)


def test_kernel_reads_no_masked_slot_and_zeroes_a_row_with_nothing_to_attend():
    """Masked slots are never read: NaN in them — past ``filled``, in a hole, in the whole first blocks of a
    long left padding — changes nothing (the einsum path multiplies them by zero weights, so NaN reaches its
    output: the control); a row with every slot masked gets zeros."""
    B, K, G, Dh, S, filled = 3, 1, 2, 16, 64, 50
    r = np.random.default_rng(0)
    q, k, v = (r.normal(size=s).astype(np.float32) for s in ((B, K, G, Dh), (B, K, S, Dh), (B, K, S, Dh)))
    mask = np.zeros((B, S), bool)
    mask[0, :filled] = True
    mask[0, 5:9] = False  # a hole (a shared prefix's layout)
    mask[2, 40:filled] = True  # left padding over the first two blocks of 16
    run = lambda splits: np.asarray(decode_attention(*map(jnp.asarray, (q, k, v, mask)), filled, block=16,  # noqa: E731
                                                     splits=splits))
    clean = {sp: run(sp) for sp in (1, 2)}
    want = reference(q, k, v, mask)
    for x in (k, v):
        x[:, :, filled:] = np.nan
        x[0, :, 5:9] = np.nan
        x[2, :, :40] = np.nan
    assert np.isnan(reference(q, k, v, mask)[[0, 2]]).all()  # the control: the einsum path reads those slots
    for sp in (1, 2):
        np.testing.assert_array_equal(clean[sp], run(sp))
        np.testing.assert_allclose(clean[sp][[0, 2]], want[[0, 2]], rtol=2e-5, atol=2e-6)
        np.testing.assert_array_equal(clean[sp][1], 0.0)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(*map(jnp.asarray, (q, k, v, mask)), filled, block=24)


def _gen_case():
    cfg = model_config("tiny-random-llama").replace(eos_token_ids=(5, 9))
    params = init_params(cfg, jax.random.key(2), 0.3)
    prompts = [[3, 4, 5, 6, 7], [3, 4, 8, 9], [3, 4, 10, 11, 12, 13], [3, 4, 14]]
    return cfg, params, prompts, np.array([11, 4, 7, 11], np.int32)


@pytest.mark.parametrize("block, k, prefix, temperature, compaction, group, splits", [
    (0, 1, 0, 0.0, 0, 1, None), (4, 1, 2, 1.0, 0, 1, 2), (3, 2, 0, 0.0, 1, 1, None), (3, 1, 2, 0.0, 1, 1, 2),
    (4, 1, 0, 1.0, 0, 2, None)])
def test_generation_with_the_kernel_decodes_the_same_tokens(block, k, prefix, temperature, compaction, group, splits,
                                                            monkeypatch):
    """``decode_attention="pallas"`` against the default "xla": the same tokens and lengths, log-probs to
    float rounding — greedy and sampled, rows stopping at EOS and at their own budgets, with a shared
    prefix (a hole in the mask), caches grown in blocks, several steps per loop iteration, EOS compaction,
    GRPO's groups (each prompt prefilled once, its cache repeated for the group's rows); and with the
    cache split over two programs per (row, KV head), what a small batch gets on a GPU (``auto_splits``)."""
    if splits:
        monkeypatch.setattr(decode_attention_module, "auto_splits", lambda *a: splits)
    cfg, params, prompts, budgets = _gen_case()
    if group > 1:
        prompts = [p for p in prompts[:2] for _ in range(group)]
    toks, mask = pad_prompts(prompts, 0, 8, prefix_len=prefix)
    args = (params, toks, mask, jax.random.key(3), None, None, budgets)
    sampling = SamplingConfig(temperature=temperature)
    kw = dict(group=group, steps_per_loop=k, cache_block=block, compaction=compaction)
    xla = make_generate(cfg, 11, sampling, prefix, **kw)(*args)
    fused = make_generate(cfg.replace(decode_attention="pallas"), 11, sampling, prefix, **kw)(*args)
    np.testing.assert_array_equal(np.asarray(xla.tokens), np.asarray(fused.tokens))
    np.testing.assert_array_equal(np.asarray(xla.lengths), np.asarray(fused.lengths))
    np.testing.assert_allclose(np.asarray(xla.logprobs), np.asarray(fused.logprobs), rtol=1e-4, atol=1e-5)
    assert np.asarray(xla.lengths).min() < 11


@pytest.mark.parametrize("noise", ["lowrank", "full"])
def test_es_members_with_the_kernel_decode_the_same_tokens(noise):
    """The population program (members under vmap, the kernel batched over them) with the kernel: each
    member's tokens and lengths are those of the einsum path."""
    mcfg = model_config("tiny-random-qwen2").replace(eos_token_ids=(7, 11, 13))
    cfg = ESConfig(population_size=4, noise=noise, rank=2, sigma=0.01)
    state = init_state(init_params(mcfg, jax.random.key(0)), jax.random.key(1), cfg)
    tokens = np.random.default_rng(0).integers(3, mcfg.vocab_size, (2, 8)).astype(np.int32)
    args = (state, member_ids(4), tokens, np.ones((2, 8), bool), jax.random.key(2))
    outs = [population_fn(lm_evaluator(mcfg.replace(decode_attention=a), 6, cfg), cfg, 2)(*args) for a in ("xla", "pallas")]
    np.testing.assert_array_equal(np.asarray(outs[0].tokens), np.asarray(outs[1].tokens))
    np.testing.assert_array_equal(np.asarray(outs[0].lengths), np.asarray(outs[1].lengths))
    if noise == "lowrank":  # members sharded over the mesh (shard_map, one member per device): the same
        mesh = make_mesh()
        sharded = population_fn(lm_evaluator(mcfg.replace(decode_attention="pallas"), 6, cfg), cfg, 1, mesh)
        got = sharded(state, member_ids(4, mesh.shape[POP]), *args[2:])
        np.testing.assert_array_equal(np.asarray(got.tokens)[:4], np.asarray(outs[0].tokens))


def test_the_decode_program_lowers_for_cuda_with_one_triton_kernel_per_layer(monkeypatch):
    """The generation program lowered for CUDA (on this CPU): with the kernel, one Triton custom call per
    layer in each decode loop body and the decode step's score dots gone (the prefill keeps its einsums);
    the "xla" program has no Triton call; with the cache split (a small batch on a GPU) still one kernel per
    layer, its partial results combined by XLA. bfloat16, as on a GPU."""
    cfg = model_config("tiny-random-qwen2").replace(compute_dtype="bfloat16", eos_token_ids=())
    params = init_params(cfg, jax.random.key(0))
    toks, mask = pad_prompts([[3, 4, 5], [6, 7]], 0, 8)

    def lowered(c, new=6):
        gen = make_generate(c, new, cache_block=4, logprobs=False)  # two segments: two decode loop bodies
        return gen.trace(params, toks, mask, jax.random.key(0)).lower(lowering_platforms=("cuda",)).as_text()

    fused, plain = lowered(cfg.replace(decode_attention="pallas")), lowered(cfg)
    assert "esjax_decode_attention" in fused
    assert plain.count(TRITON) == 0
    assert fused.count(TRITON) == 2 * cfg.num_layers
    dots = lambda t: len(re.findall(r"stablehlo\.dot_general", t))  # noqa: E731
    assert dots(plain) - dots(fused) == 2 * 2 * cfg.num_layers  # QKᵀ and PV per layer and loop body
    monkeypatch.setattr(decode_attention_module, "auto_splits", lambda *a: 2)
    split = lowered(cfg.replace(decode_attention="pallas"), 7)  # another program: jit's caches hold the first
    assert split.count(TRITON) == 2 * cfg.num_layers and "tensor<2x2x1x2x16xf32>" in split  # (B, K, splits, G, Dh)
    assert "tensor<2x2x1x2x16xf32>" not in fused  # unsplit: no partial results


def test_auto_splits_fills_the_device_only_for_small_batches():
    """Programs per (row, KV head): one when rows × KV heads fill the device's 132 multiprocessors (an H100's,
    the default where the device does not say), else ⌈2·132 / programs⌉, at most one per two cache blocks."""
    assert auto_splits(128, 2, 1088) == 1 and auto_splits(66, 2, 1088) == 1
    assert auto_splits(64, 2, 1088) == 3 and auto_splits(8, 2, 1088) == 8 and auto_splits(8, 2, 4096) == 17
    assert auto_splits(8, 2, 192) == 1  # three blocks: nothing to split
    with pytest.raises(ValueError, match="splits must be >= 1"):
        decode_attention(jnp.zeros((1, 1, 1, 16)), jnp.zeros((1, 1, 16, 16)), jnp.zeros((1, 1, 16, 16)),
                         jnp.ones((1, 16), bool), 16, splits=0)


def test_decode_attention_is_a_checked_setting_of_the_model_and_the_run():
    assert ModelConfig.decode_attention == "xla" and RunConfig().decode_attention == "xla"
    assert RunConfig(decode_attention="pallas").model_settings()["decode_attention"] == "pallas"
    with pytest.raises(ValueError, match=r"ModelConfig.decode_attention='cudnn'; choose one of \('xla', 'pallas'\)"):
        model_config("tiny-random-llama").replace(decode_attention="cudnn")
    with pytest.raises(ValueError, match="RunConfig.decode_attention must be one of"):
        RunConfig(decode_attention="flash")
    with pytest.raises(ValueError, match="'pallas' .* needs a power-of-two head_dim >= 16, got 24; use decode_attention='xla'"):
        model_config("tiny-random-llama").replace(head_dim=24, decode_attention="pallas")


def test_the_learner_differentiates_cached_forwards_through_the_einsums():
    """The kernel has no VJP, so only a generation's decode steps use it (``forward(..., decode=True)``):
    the learner's scoring with one-column cached forwards (one scored token; a one-column group level)
    differentiates with ``decode_attention="pallas"`` and gives the gradient of "xla"."""
    from esjax.models.decoder import scoring_logits

    cfg = model_config("tiny-random-llama")
    params = init_params(cfg, jax.random.key(0), 0.3)
    toks, mask = pad_prompts([[3, 4, 5, 6], [3, 4, 5, 6], [7, 8, 9, 10], [7, 8, 9, 10]], 0, 4)
    T = toks.shape[1]

    def loss(p, c):
        return scoring_logits(p, c, jnp.asarray(toks), jnp.asarray(mask), start=T - 1, group=2).sum()

    grads = [jax.grad(loss)(params, c) for c in (cfg, cfg.replace(decode_attention="pallas"))]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads[0]))


def test_a_run_with_the_kernel_learns_what_the_einsum_run_learns(tmp_path, method="es"):
    """``--set decode_attention=pallas`` reaches every generation of a run (the members and the
    evaluations): one ES iteration of the tiny preset ends at the parameters of the "xla" run, bit for bit,
    with the same metrics (rewards, accuracies). (GRPO's rollouts are generations with the same model
    config: groups and sampling are in the generation test above; its run took 53 s more here.)"""
    from esjax import runs
    from esjax.config import build_config
    from esjax.models.registry import load_model

    model = load_model("tiny-random-llama")
    out = {}
    for impl in ("xla", "pallas"):
        cfg = build_config("tiny", [f"decode_attention={impl}", "es_iterations=1", "grpo_steps=1", "eval_size=4"])
        summary, state = runs.run_method(cfg, method, str(tmp_path / impl), model, progress=False, log=lambda s: None,
                                         return_state=True)
        out[impl] = summary, state.params
    for a, b in zip(jax.tree.leaves(out["xla"][1]), jax.tree.leaves(out["pallas"][1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    same = ("before", "after", "tokens", "update_norm")  # evaluations before and after, the decoded tokens
    assert {k: out["xla"][0][k] for k in same} == {k: out["pallas"][0][k] for k in same}
    rows = {impl: [json.loads(line) for line in open(tmp_path / impl / method / "metrics.jsonl")] for impl in out}
    scored = [k for k in rows["xla"][0] if any(w in k for w in ("reward", "fitness", "accuracy", "length"))]
    assert scored and [{k: r.get(k) for k in scored} for r in rows["xla"]] == \
        [{k: r.get(k) for k in scored} for r in rows["pallas"]]
