"""Model layer: logits parity with transformers (PyTorch) through our HF-directory loader, export round
trip, generation with cache == re-forward without cache, sampling, and clear errors on bad inputs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.models.config import ModelConfig
from esjax.models.decoder import forward, init_params, positions_from_mask
from esjax.models.hf import load_hf_checkpoint, save_hf_checkpoint
from esjax.sampling import (SamplingConfig, decode_segments, generate_reference, make_generate, pad_prompts,
                            sample_logits)
from jaxprs import sub_jaxprs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)
HF_CASES = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=False, rope_theta=10000.0),
    "llama3-rope-scaling-tied": lambda: transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=1e6),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True, rope_theta=1e6),
}


def _save_random_hf(tmp_path, name, **save_kw):
    torch.manual_seed(0)
    cfg = HF_CASES[name]()
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # non-trivial norms and biases so the parity test sees them
        for n, p in model.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(0.1 * torch.randn_like(p))
    path = str(tmp_path / name)
    model.save_pretrained(path, **save_kw)
    return model, path


def _hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()


def _our_logits(params, cfg, ids, mask):
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    return np.asarray(forward(params, cfg, ids, positions_from_mask(mask), mask)[0])


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_logits_parity_with_transformers(tmp_path, name):
    model, path = _save_random_hf(tmp_path, name)
    params, cfg = load_hf_checkpoint(path)
    ids = np.random.default_rng(0).integers(0, 128, (2, 100)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    err = np.abs(_our_logits(params, cfg, ids, mask) - _hf_logits(model, ids, mask)).max()
    assert err < 1e-4, err


def test_sharded_checkpoint_and_export_round_trip(tmp_path):
    model, path = _save_random_hf(tmp_path, "qwen2", max_shard_size="40KB")
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    params, cfg = load_hf_checkpoint(path)
    out = str(tmp_path / "exported")
    save_hf_checkpoint(params, cfg, out)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids = np.random.default_rng(1).integers(0, 128, (1, 40)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    assert np.abs(_hf_logits(reloaded, ids, mask) - _our_logits(params, cfg, ids, mask)).max() < 1e-4


def test_export_saves_the_tokenizer_and_a_directory_without_one_is_named(tmp_path):
    from esjax.models.hf import load_hf_tokenizer
    from esjax.models.registry import load_model

    model = load_model("tiny-random-qwen2")
    bare, full = str(tmp_path / "bare"), str(tmp_path / "full")
    save_hf_checkpoint(model.params, model.cfg, bare)  # no tokenizer known: weights only
    with pytest.raises(FileNotFoundError, match=rf"^{bare}: no tokenizer files \(looked for tokenizer\.json or "
                                                r"tokenizer\.model or vocab\.json \+ merges\.txt or vocab\.txt"):
        load_hf_tokenizer(bare)
    save_hf_checkpoint(model.params, model.cfg, full, tokenizer=model.tokenizer)
    tok = load_hf_tokenizer(full)
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    assert tok.apply_chat_template(messages, tokenize=False) == model.tokenizer.apply_chat_template(messages, tokenize=False)
    assert tok("héllo <|im_end|> 42")["input_ids"] == model.tokenizer("héllo <|im_end|> 42")["input_ids"]
    again = load_model(f"hf:{full}")  # the export loads back as a model: same weights, same tokenizer
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(model.params)))
    assert again.tokenizer("12 + 30")["input_ids"] == model.tokenizer("12 + 30")["input_ids"]


def test_left_padding_does_not_change_logits():
    cfg = ModelConfig(arch="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
    params = init_params(cfg, jax.random.key(0), 0.2)
    ids = np.random.default_rng(0).integers(1, 64, (1, 7)).astype(np.int32)
    toks, mask = pad_prompts([list(ids[0])], 0, multiple=16)
    padded = _our_logits(params, cfg, toks, mask)[0, -7:]
    plain = _our_logits(params, cfg, ids, np.ones_like(ids, bool))[0]
    np.testing.assert_allclose(padded, plain, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_cached_generation_equals_full_reforward(arch):
    cfg = ModelConfig(arch=arch, vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, eos_token_ids=(3,), pad_token_id=0)
    params = init_params(cfg, jax.random.key(1), 0.3)
    rng = np.random.default_rng(0)
    toks, mask = pad_prompts([list(rng.integers(4, 64, n)) for n in (3, 9, 14)], cfg.pad_token_id)
    out = make_generate(cfg, 12)(params, toks, mask, jax.random.key(0))
    ref = generate_reference(params, cfg, toks, mask, 12)
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, :ref.shape[1]], ref)
    lengths = np.asarray(out.lengths)
    for row, n in zip(np.asarray(out.tokens), lengths):  # everything after a row's EOS is padding
        assert (row[n:] == cfg.pad_token_id).all()
        assert n == 12 or row[n - 1] == 3
    # EOS/budget: with a token the rows produce made the EOS, each row stops right after its first one
    # (EOS included in its length), the rest run to the budget; the tokens before are unchanged
    free = np.asarray(make_generate(cfg.replace(eos_token_ids=()), 12)(params, toks, mask, jax.random.key(0)).tokens)
    eos = int(free[1, 4])
    out = make_generate(cfg.replace(eos_token_ids=(eos,)), 12)(params, toks, mask, jax.random.key(0))
    lengths = np.asarray(out.lengths)
    for row, full, n in zip(np.asarray(out.tokens), free, lengths):
        hits = np.flatnonzero(full == eos)
        assert n == (hits[0] + 1 if hits.size else 12) and row[n - 1] == (eos if hits.size else full[11])
        np.testing.assert_array_equal(row[:n], full[:n])
        assert (row[n:] == cfg.pad_token_id).all()
    assert lengths.min() <= 5 and (lengths <= 12).all()


def test_shared_prefix_generation_equals_left_padded():
    """[prefix | left-padded suffixes], prefix prefilled once at batch 1 and broadcast, gives the same
    tokens and log-probs as plain left padding; also for a low-rank member delta and under vmap, and for
    groups of copies of one prompt prefilled once per group."""
    from esjax.es.noise import lowrank_noise
    from esjax.sampling import shared_prefix_len

    cfg = ModelConfig(arch="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, eos_token_ids=(3,), pad_token_id=0)
    params = init_params(cfg, jax.random.key(1), 0.3)
    rng = np.random.default_rng(0)
    system = list(rng.integers(4, 64, 19))
    prompts = [system + list(rng.integers(4, 64, n)) for n in (1, 6, 11)]
    assert shared_prefix_len(prompts, 8) == 16 and shared_prefix_len(prompts, 1) == 19
    assert shared_prefix_len([system, system + [5]], 1) == 18  # every row keeps a token of its own
    plain = pad_prompts(prompts, 0, 8)
    shared = pad_prompts(prompts, 0, 8, prefix_len=16)
    assert shared[0].shape == (3, 16 + 16) and shared[1][:, :16].all() and not shared[1][0, 16:28].any() and shared[1][0, 28:].all()
    for sampling in (SamplingConfig(), SamplingConfig(temperature=1.0)):
        a = make_generate(cfg, 10, sampling)(params, *plain, jax.random.key(2))
        b = make_generate(cfg, 10, sampling, 16)(params, *shared, jax.random.key(2))
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
    from esjax.sampling import generate
    deltas = jax.vmap(lambda k: lowrank_noise(params, k, 2, 0.05))(jax.random.split(jax.random.key(3), 2))
    run = lambda p, pl: jax.vmap(lambda d: generate(params, cfg, *p, jax.random.key(0), 10, delta=d,  # noqa: E731
                                                    prefix_len=pl).tokens)(deltas)
    np.testing.assert_array_equal(np.asarray(run(plain, 0)), np.asarray(run(shared, 16)))
    # GRPO groups: 2 copies of each prompt, each group's prompt prefilled once (with or without the prefix)
    groups = [p for p in prompts for _ in range(2)]
    plain, shared = pad_prompts(groups, 0, 8), pad_prompts(groups, 0, 8, prefix_len=16)
    a = make_generate(cfg, 10, SamplingConfig(temperature=1.0))(params, *plain, jax.random.key(4))
    assert len({tuple(r) for r in np.asarray(a.tokens)}) == 6  # the copies sample different completions
    for p, pl in ((plain, 0), (shared, 16)):
        b = make_generate(cfg, 10, SamplingConfig(temperature=1.0), pl, 2)(params, *p, jax.random.key(4))
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
    with pytest.raises(ValueError, match="share a prefix"):
        pad_prompts([system, [1] + system], 0, prefix_len=8)


def test_greedy_generation_matches_transformers_generate(tmp_path):
    model, path = _save_random_hf(tmp_path, "llama")
    params, cfg = load_hf_checkpoint(path)
    cfg = cfg.replace(eos_token_ids=(), pad_token_id=0)
    ids = np.random.default_rng(2).integers(1, 128, (1, 9)).astype(np.int32)
    with torch.no_grad():
        ref = model.generate(torch.tensor(ids), max_new_tokens=10, do_sample=False, eos_token_id=None,
                             pad_token_id=0).numpy()[0, 9:]
    toks, mask = pad_prompts([list(ids[0])], 0)
    ours = np.asarray(make_generate(cfg, 10)(params, toks, mask, jax.random.key(0)).tokens)[0]
    np.testing.assert_array_equal(ours, ref)


def test_sampling_filters_and_determinism():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = np.array([int(sample_logits(logits, jax.random.key(i), SamplingConfig(1.0, top_p=0.7))[0]) for i in range(200)])
    assert set(draws) <= {0, 1} and {0, 1} <= set(draws)  # nucleus {0.5, 0.3} reaches 0.7
    draws = np.array([int(sample_logits(logits, jax.random.key(i), SamplingConfig(1.0, top_k=1))[0]) for i in range(20)])
    assert set(draws) == {0}
    a = sample_logits(jnp.zeros((3, 50)), jax.random.key(5), SamplingConfig(1.0))
    b = sample_logits(jnp.zeros((3, 50)), jax.random.key(5), SamplingConfig(1.0))
    np.testing.assert_array_equal(a, b)


def test_generation_stops_at_the_generation_configs_eos_ids_too(tmp_path):
    """Qwen2.5-Instruct: config.json names <|im_end|> only, generation_config.json adds <|endoftext|>;
    transformers' generate and vLLM stop at both, so esjax does; the pad id stays config.json's EOS."""
    from esjax.models.hf import read_hf_config

    path = tmp_path / "qwen"
    path.mkdir()
    cfg = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "eos_token_id": 61}
    json.dump(cfg, open(path / "config.json", "w"))
    assert read_hf_config(str(path)).eos_token_ids == (61,)
    json.dump({"eos_token_id": [61, 59], "pad_token_id": 59}, open(path / "generation_config.json", "w"))
    got = read_hf_config(str(path))
    assert got.eos_token_ids == (61, 59) and got.pad_token_id == 61
    assert read_hf_config(str(path), eos_token_ids=(5,)).eos_token_ids == (5,)  # an explicit setting wins


def test_bad_inputs_give_clear_errors(tmp_path):
    _, path = _save_random_hf(tmp_path, "llama")
    cfg_file = os.path.join(path, "config.json")
    good = json.load(open(cfg_file))
    # missing config key
    json.dump({k: v for k, v in good.items() if k != "hidden_size"}, open(cfg_file, "w"))
    with pytest.raises(ValueError, match="missing required key 'hidden_size'"):
        load_hf_checkpoint(path)
    # unknown architecture
    json.dump(dict(good, model_type="mamba"), open(cfg_file, "w"))
    with pytest.raises(ValueError, match="unknown architecture model_type='mamba'"):
        load_hf_checkpoint(path)
    # wrong tensor shape (config disagrees with weights)
    json.dump(dict(good, intermediate_size=48), open(cfg_file, "w"))
    with pytest.raises(ValueError, match="w_gate: shape"):
        load_hf_checkpoint(path)
    json.dump(good, open(cfg_file, "w"))
    # truncated safetensors
    st = os.path.join(path, "model.safetensors")
    data = open(st, "rb").read()
    open(st, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_hf_checkpoint(path)
    os.remove(st)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_hf_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_hf_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown model"):
        from esjax.models.registry import load_model
        load_model("gpt-5")


def test_prompt_longer_than_context_is_an_error():
    cfg = ModelConfig(arch="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=4, max_position_embeddings=32)
    params = init_params(cfg, jax.random.key(0))
    toks, mask = pad_prompts([[1] * 30], 0)
    with pytest.raises(ValueError, match="exceeds the model context of 32"):
        make_generate(cfg, 8)(params, toks, mask, jax.random.key(0))


def test_per_row_greedy_and_budget_leave_the_other_rows_as_they_were():
    """``greedy_rows`` decodes those rows greedily and ``row_max_new`` stops each row at its budget;
    every other row draws exactly the tokens of the run without them (step keys do not depend on either)."""
    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, eos_token_ids=(), pad_token_id=0)
    params = init_params(cfg, jax.random.key(1), 0.3)
    toks, mask = pad_prompts([[5, 6, 7], [8, 9], [10, 11, 12, 13]], 0, 8)
    hot = SamplingConfig(temperature=1.0)
    free = make_generate(cfg, 10, hot)(params, toks, mask, jax.random.key(3))
    greedy = make_generate(cfg, 10)(params, toks, mask, jax.random.key(3))
    mixed = make_generate(cfg, 10, hot)(params, toks, mask, jax.random.key(3), None, np.array([True, False, True]),
                                        np.array([10, 4, 7], np.int32))
    f, g, m = (np.asarray(x.tokens) for x in (free, greedy, mixed))
    np.testing.assert_array_equal(m[0], g[0])
    np.testing.assert_array_equal(m[2, :7], g[2, :7])
    np.testing.assert_array_equal(m[1, :4], f[1, :4])
    assert list(np.asarray(mixed.lengths)) == [10, 4, 7] and (m[1, 4:] == 0).all() and (m[2, 7:] == 0).all()
    assert not (f[1] == g[1]).all()  # row 1 really sampled


def test_decode_updates_the_kv_cache_in_place():
    """The compiled generation loop never copies a layer's KV cache (B, K, S, Dh): each block writes its
    new keys/values before attending, so the update slice is the buffer's only user (a structural check
    on the optimised HLO, not a timing)."""
    import re

    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, eos_token_ids=(3,), pad_token_id=0)
    params = init_params(cfg, jax.random.key(0))
    toks, mask = jnp.ones((4, 16), jnp.int32), jnp.ones((4, 16), bool)
    hlo = make_generate(cfg, 24).lower(params, toks, mask, jax.random.key(0)).compile().as_text()
    cache_shape = "f32[4,2,40,8]"  # B, K, S = 16 + 24, Dh
    assert cache_shape in hlo
    copies = [line for line in hlo.splitlines() if re.search(r"= f32\[4,2,40,8\]\{[0-9,]*\} copy\(", line)]
    assert not copies, copies
    # a cache grown in blocks of 8: every segment's loop updates its own cache (24, 32, 40 slots) in place
    hlo = make_generate(cfg, 24, cache_block=8).lower(params, toks, mask, jax.random.key(0)).compile().as_text()
    for slots in (24, 32, 40):
        assert f"f32[4,2,{slots},8]" in hlo
        copies = [line for line in hlo.splitlines() if re.search(rf"= f32\[4,2,{slots},8\]\{{[0-9,]*\}} copy\(", line)]
        assert not copies, copies


def test_growing_the_cache_adds_about_one_layer_to_the_peak_memory():
    """The cache grows layer by layer (decoder.grow_cache), so the compiled program's temporary memory with
    blocks is that of one whole-size cache plus at most one layer's keys and values, not two caches."""
    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
                      num_kv_heads=4, head_dim=16, eos_token_ids=(), pad_token_id=0)
    params = init_params(cfg, jax.random.key(0))
    B, P, M = 32, 16, 64
    toks, mask = jnp.ones((B, P), jnp.int32), jnp.ones((B, P), bool)

    def temp(block):
        stats = make_generate(cfg, M, cache_block=block).lower(params, toks, mask, jax.random.key(0)).compile()
        return stats.memory_analysis().temp_size_in_bytes

    whole, layer = temp(0), 2 * B * cfg.num_kv_heads * (P + M) * cfg.head_dim * 4  # one layer's K and V
    assert whole > cfg.num_layers * layer  # the whole-size cache is in it
    assert temp(16) <= whole + layer


@pytest.mark.parametrize("k", [2, 3])
def test_several_decode_steps_per_loop_iteration_change_nothing(k):
    """``steps_per_loop`` = k (the loop condition once per k tokens) gives the tokens, log-probs and lengths of
    k = 1 — greedy and sampled, with rows stopping at EOS and at their own budgets, and a budget that k does
    not divide (the overrun steps record nothing); the compiled loop body holds k decode steps."""
    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, eos_token_ids=(5, 9), pad_token_id=0)
    params = init_params(cfg, jax.random.key(2), 0.3)
    toks, mask = pad_prompts([[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]], 0, 8)
    budgets = np.array([11, 4, 7, 11], np.int32)
    for sampling in (SamplingConfig(), SamplingConfig(temperature=1.0)):
        for row_max_new in (None, budgets):
            one = make_generate(cfg, 11, sampling)(params, toks, mask, jax.random.key(3), None, None, row_max_new)
            many = make_generate(cfg, 11, sampling, steps_per_loop=k)(params, toks, mask, jax.random.key(3), None,
                                                                        None, row_max_new)
            for a, b in zip(one, many):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            # without log-probs (no log-softmax in the loop): the same tokens and lengths
            bare = make_generate(cfg, 11, sampling, steps_per_loop=k, logprobs=False)(params, toks, mask,
                                                                                     jax.random.key(3), None, None,
                                                                                     row_max_new)
            assert bare.logprobs is None
            np.testing.assert_array_equal(np.asarray(bare.tokens), np.asarray(one.tokens))
            np.testing.assert_array_equal(np.asarray(bare.lengths), np.asarray(one.lengths))
    lengths = np.asarray(one.lengths)
    assert lengths.min() < 11 and (lengths <= budgets).all()  # some row stopped early (EOS or budget)
    writes = lambda n: make_generate(cfg, 11, steps_per_loop=n).lower(  # noqa: E731
        params, toks, mask, jax.random.key(3)).as_text().count("dynamic_update_slice")
    assert writes(k) - writes(1) == (k - 1) * (writes(2) - writes(1)) > 0  # k copies of the step's cache writes
    with pytest.raises(ValueError, match="steps_per_loop"):
        make_generate(cfg, 11, steps_per_loop=0)(params, toks, mask, jax.random.key(3))


def test_sampled_generation_draws_step_t_with_the_t_th_split_of_the_key():
    """The sampling key schedule, pinned by an oracle without a cache: token t is drawn from the logits of
    the sequence so far with the t-th split of the key (key, sub = split(key) once per token), so a run's
    sampled tokens do not depend on how the decode loop is arranged (what it carries, k tokens per
    iteration, cache blocks) nor on the budget."""
    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, eos_token_ids=(), pad_token_id=0)
    params = init_params(cfg, jax.random.key(2), 0.3)
    toks, mask = pad_prompts([[5, 6, 7], [8, 9], [10, 11, 12, 13]], 0, 6)
    sampling, M = SamplingConfig(temperature=1.0, top_p=0.9), 6
    expect = generate_reference(params, cfg, toks, mask, M, sampling, jax.random.key(7))
    for kw in ({}, {"steps_per_loop": 4}, {"cache_block": 2}, {"logprobs": False}):
        out = make_generate(cfg, M, sampling, **kw)(params, toks, mask, jax.random.key(7))
        np.testing.assert_array_equal(np.asarray(out.tokens), expect, err_msg=str(kw))
    assert len({tuple(r) for r in expect}) > 1 and len(np.unique(expect)) > 3  # really sampled


def test_decode_segments_end_on_whole_loop_iterations():
    assert decode_segments(11) == decode_segments(11, 11) == decode_segments(11, 16) == (11,)
    assert decode_segments(11, 4) == (4, 8, 11)
    assert decode_segments(11, 4, 3) == (6, 11)  # blocks rounded up to whole iterations of 3 steps
    assert decode_segments(12, 3, 3) == (3, 6, 9, 12)
    with pytest.raises(ValueError, match="cache_block"):
        decode_segments(11, -1)


def _loop_cache_slots(fn, *args) -> list:
    """Cache slots (axis 2 of the (B, K, S, Dh) carries) of each decode while_loop in fn's jaxpr, in order."""
    def loops(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "while":
                yield sorted({v.aval.shape[2] for v in e.invars if getattr(v.aval, "ndim", 0) == 4})
                continue
            for sub in sub_jaxprs(e):  # nested jits
                yield from loops(sub)

    return list(loops(jax.make_jaxpr(fn)(*args).jaxpr))


def test_a_cache_grown_in_blocks_changes_nothing():
    """``cache_block``: each decode segment reads a cache of P + its end slots (not P + max_new) and the
    tokens and lengths are those of one full-size cache (log-probs to float rounding) — greedy and sampled,
    rows stopping at EOS and at their own budgets, with a shared prefix, and with several steps per loop
    iteration."""
    cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, eos_token_ids=(5, 9), pad_token_id=0)
    params = init_params(cfg, jax.random.key(2), 0.3)
    budgets = np.array([11, 4, 7, 11], np.int32)
    prompts = [[3, 4, 5, 6, 7], [3, 4, 8, 9], [3, 4, 10, 11, 12, 13], [3, 4, 14]]
    greedy, sampled = SamplingConfig(), SamplingConfig(temperature=1.0)
    for block, k, prefix, sampling, row_max_new in [(4, 1, 0, sampled, None), (4, 1, 2, greedy, budgets),
                                                    (3, 2, 0, greedy, budgets), (3, 2, 2, sampled, budgets)]:
        toks, mask = pad_prompts(prompts, 0, 8, prefix_len=prefix)
        args = (params, toks, mask, jax.random.key(3), None, None, row_max_new)
        one = make_generate(cfg, 11, sampling, prefix)(*args)
        grown = make_generate(cfg, 11, sampling, prefix, steps_per_loop=k, cache_block=block)(*args)
        np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(grown.tokens))
        np.testing.assert_array_equal(np.asarray(one.lengths), np.asarray(grown.lengths))
        # the softmax sums over fewer (masked, exactly zero) slots: float rounding only
        np.testing.assert_allclose(np.asarray(one.logprobs), np.asarray(grown.logprobs), rtol=1e-5, atol=1e-6)
        assert np.asarray(one.lengths).min() < 11  # some row stopped early (EOS or budget)
        P = toks.shape[1]
        fn = make_generate(cfg, 11, sampling, prefix, steps_per_loop=k, cache_block=block)
        assert _loop_cache_slots(fn, *args) == [[P + end] for end in decode_segments(11, block, k)]
        assert _loop_cache_slots(make_generate(cfg, 11, sampling, prefix), *args) == [[P + 11]]  # default: one
