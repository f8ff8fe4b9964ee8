"""Analysis functions on hand-made pytrees with known answers."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.analysis import connectivity as lmc
from esjax.analysis import geometry as geo


def test_norms_count_tied_embedding_once_or_twice():
    d = {"embed": jnp.full((2, 2), 1.0), "layers": [{"wq": jnp.full((3,), 2.0)}]}
    assert geo.global_norm(d) == pytest.approx(np.sqrt(4 + 12))
    assert geo.global_norm(d, count_tied_twice=True, tied=True) == pytest.approx(np.sqrt(8 + 12))
    assert geo.relative_norm(d, d) == pytest.approx(1.0)


def test_sparsity_in_fp32_and_after_bf16_cast():
    base = {"layers": [{"wq": jnp.full((4,), 0.02)}], "embed": jnp.zeros((2, 2))}
    ft = {"layers": [{"wq": jnp.array([0.02, 0.02 + 5e-5, 0.02 + 2e-3, 0.02])}], "embed": jnp.zeros((2, 2))}
    t32 = geo.sparsity_table(ft, base, (1e-6,), ("float32", "bfloat16"))
    # fp32: 2 of 4 entries changed in wq; embed unchanged
    assert t32["float32"]["1e-06"]["layers"]["0"]["Q"] == pytest.approx(0.5)
    # bf16 spacing at 0.02 is ≈1.2e-4: the 5e-5 change rounds away, the 2e-3 change survives
    assert t32["bfloat16"]["1e-06"]["layers"]["0"]["Q"] == pytest.approx(0.75)
    assert t32["float32"]["1e-06"]["global"] == pytest.approx(6 / 8)
    assert t32["float32"]["1e-06"]["average"] == pytest.approx(0.5)  # the layers' tensors only (paper 2)


def test_paper2s_layer_average_leaves_out_what_es_never_moved_and_weighs_tensors_alike():
    """A layer-only update: every layer entry moved, the big embedding did not. Paper 2's Average (per layer
    the unweighted tensor mean, then over layers) is 0; the size-weighted fraction is 0.8 (the embedding)."""
    base = {"embed": jnp.zeros((8, 4)), "layers": [{"wq": jnp.zeros((2, 2)), "norm": jnp.zeros((4,))},
                                                    {"wq": jnp.zeros((2, 2)), "norm": jnp.zeros((4,))}]}
    ft = jax.tree.map(lambda x: x + 0.5, base)
    ft["embed"] = base["embed"]
    ft["layers"][1]["norm"] = base["layers"][1]["norm"]  # layer 1: Q moved (4 entries), its norm not (4)
    t = geo.sparsity_table(ft, base, (1e-6,), ("float32",))["float32"]["1e-06"]
    assert t["average"] == pytest.approx((0.0 + 0.5) / 2) and t["global"] == pytest.approx((32 + 4) / 48)


def test_a_zero_update_has_no_cosine_ratio_or_density_finding():
    """GRPO never moved (every group tied): cosine and ratio are undefined, and the three geometric
    findings are inconclusive, not "orthogonal", "≫" and "denser"."""
    from esjax.analysis import verdicts as v

    zero = {"x": jnp.zeros(3)}
    assert geo.cosine({"x": jnp.ones(3)}, zero) is None
    res = {"theory": {"cosine_bound_95": 1e-3}, "cosine": {"global": None},
           "norms": {"es": {"once": 5.0}, "grpo": {"once": 0.0}, "ratio_es_over_grpo": None},
           "sparsity": {m: {"bfloat16": {"1e-06": {"average": s, "global": s}}} for m, s in (("es", 0.1), ("grpo", 1.0))}}
    got = {x["finding"]: x for x in v.seed_verdicts(res, {})}
    for f in ("ES norm ≫ GRPO", "ES denser", "near-orthogonal"):
        assert got[f]["verdict"] == "inconclusive", got[f]
    assert "GRPO's update is zero" in got["ES denser"]["evidence"]


def test_buckets_layers_rank_and_cosine():
    assert geo.bucket("layers/3/wk") == "K" and geo.bucket("layers/0/mlp_norm") == "norm"
    assert geo.bucket("embed") == "other" and geo.layer_of("layers/12/wo") == 12
    u, v = np.random.default_rng(0).normal(size=(2, 20, 3))
    assert geo.numerical_rank(u @ v.T) == 3
    a = {"x": jnp.array([1.0, 0.0]), "y": jnp.array([1.0])}
    b = {"x": jnp.array([0.0, 1.0]), "y": jnp.array([1.0])}
    assert geo.cosine(a, b) == pytest.approx(0.5)
    assert geo.cosine(a, a) == pytest.approx(1.0)
    lc = geo.layer_cosines({"layers": [{"w": jnp.array([1.0, 0.0])}]}, {"layers": [{"w": jnp.array([0.0, 2.0])}]})
    assert lc["0"] == pytest.approx(0.0)


def test_subspace_overlap_identical_and_orthogonal():
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(40, 40)))
    w1 = q[:, :4] @ np.diag([4.0, 3.0, 2.0, 1.0]) @ q[:, 4:8].T
    w2 = q[:, 8:12] @ q[:, 12:16].T
    assert geo.subspace_overlap(w1, w1, 4) == pytest.approx(1.0)
    assert geo.subspace_overlap(w1, w2, 4) == pytest.approx(0.0, abs=1e-10)


def test_barrier_on_a_constructed_1d_loss():
    a, b = {"t": jnp.array(0.0)}, {"t": jnp.array(1.0)}
    score = lambda p: 1.0 - 4 * float(p["t"]) * (1 - float(p["t"]))  # noqa: E731  dip of 1 at λ = ½
    lams, vals = lmc.interpolation_curve(score, a, b, 11)
    assert lmc.barrier(lams, vals) == pytest.approx(1.0)
    flat = lambda p: 2.0 + float(p["t"])  # noqa: E731  linear: no barrier
    assert lmc.barrier(*lmc.interpolation_curve(flat, a, b, 5)) == pytest.approx(0.0, abs=1e-12)
    seen = []  # known endpoint scores are not re-evaluated
    _, vals = lmc.interpolation_curve(lambda p: seen.append(float(p["t"])) or 0.0, a, b, 5, ends=(7.0, 9.0))
    assert seen == [0.25, 0.5, 0.75] and vals[0] == 7.0 and vals[-1] == 9.0


def test_direction_probe_and_random_direction_are_unit():
    base = {"w": jnp.zeros((3,))}
    r = lmc.random_direction(base, jax.random.key(0))
    assert geo.global_norm(r) == pytest.approx(1.0, rel=1e-5)
    vals = lmc.direction_probe(lambda p: float(p["w"][0]), base, {"w": jnp.array([2.0, 0.0, 0.0])}, [0.0, 1.0, 3.0])
    np.testing.assert_allclose(vals, [0.0, 1.0, 3.0], rtol=1e-6)
    # restricted to the leaves ES perturbs (a param_filter): zeros elsewhere, the same draws (rescaled) there
    two = {"a": jnp.zeros((4,)), "b": jnp.zeros((5,))}
    full, sub = lmc.random_direction(two, jax.random.key(1)), lmc.random_direction(two, jax.random.key(1), [False, True])
    assert geo.global_norm(sub) == pytest.approx(1.0, rel=1e-5) and not np.any(np.asarray(sub["a"]))
    ratio = np.asarray(sub["b"]) / np.asarray(full["b"])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    with pytest.raises(ValueError, match="select must name at least one of the 2 leaves"):
        lmc.random_direction(two, jax.random.key(1), [False, False])


def test_exact_and_k1_kl_against_numpy_on_known_distributions():
    from esjax.analysis.drift import make_scorer
    from esjax.models.config import ModelConfig
    from esjax.models.decoder import forward, init_params, positions_from_mask

    cfg = ModelConfig(arch="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=4)
    p, q = init_params(cfg, jax.random.key(0), 0.5), init_params(cfg, jax.random.key(1), 0.5)
    tokens = jnp.array([[3, 5, 7, 9, 11]], jnp.int32)
    attn = jnp.ones((1, 5), bool)
    loss_mask = jnp.array([[0.0, 0.0, 1.0, 1.0]])
    k1, exact, n = make_scorer(cfg)(p, q, tokens, attn, loss_mask)
    lp = np.asarray(jax.nn.log_softmax(forward(p, cfg, tokens, positions_from_mask(attn), attn)[0][0, :-1]))
    lq = np.asarray(jax.nn.log_softmax(forward(q, cfg, tokens, positions_from_mask(attn), attn)[0][0, :-1]))
    ref_exact = sum(np.sum(np.exp(lp[t]) * (lp[t] - lq[t])) for t in (2, 3))
    ref_k1 = sum(lp[t, tokens[0, t + 1]] - lq[t, tokens[0, t + 1]] for t in (2, 3))
    assert float(exact[0]) == pytest.approx(ref_exact, rel=1e-5)
    assert float(k1[0]) == pytest.approx(ref_k1, rel=1e-5)
    assert float(n[0]) == 2.0 and ref_exact > 0
    _, same, _ = make_scorer(cfg)(p, p, tokens, attn, loss_mask)
    assert float(same[0]) == pytest.approx(0.0, abs=1e-6)


def test_kl_drift_runs_every_probe_in_one_batch_like_one_prompt_at_a_time():
    """Probes of different tasks and budgets share batches (sampled and greedy copies in one generation,
    the last batch padded): the greedy sequence-sum KL of each prompt equals a greedy generation of that
    prompt alone, stopped at its probe's budget, scored by a plain forward, prompt by prompt in the
    probe's order; the means are those values' means; identical models drift 0."""
    from esjax.analysis.drift import kl_drift, kl_drift_values
    from esjax.models.decoder import forward, positions_from_mask
    from esjax.models.registry import load_model
    from esjax.sampling import make_generate, pad_prompts
    from esjax.tasks.base import encode_prompts
    from esjax.tasks.probes import probe_sets

    model = load_model("tiny-random-llama")
    cfg, tok, base = model.cfg, model.tokenizer, model.params
    ft = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), base)
    probes = {name: (t, ex[:n]) for (name, (t, ex)), n in zip(probe_sets(["arithmetic"], 3).items(), (3, 2))}
    budgets = {"general": 6, "arithmetic": 4}
    vals = kl_drift_values(ft, base, cfg, tok, probes, jax.random.key(0), budgets, batch_size=4)  # 2 batches of 3
    kl = kl_drift(ft, base, cfg, tok, probes, jax.random.key(0), budgets, batch_size=4)
    for name, (task, examples) in probes.items():
        ref = []
        for ids in encode_prompts(tok, task, examples):
            tokens, mask = pad_prompts([ids], cfg.pad_token_id)
            out = make_generate(cfg, budgets[name])(ft, tokens, mask, jax.random.key(0))
            n = int(out.lengths[0])
            seq = jnp.concatenate([tokens, out.tokens[:, :n]], 1)
            m = jnp.ones(seq.shape, bool).at[:, :tokens.shape[1]].set(mask)
            lp = [jax.nn.log_softmax(forward(p, cfg, seq, positions_from_mask(m), m)[0][0], -1) for p in (ft, base)]
            t = np.arange(tokens.shape[1] - 1, seq.shape[1] - 1)
            ref.append(float(jnp.sum(lp[0][t, seq[0, t + 1]] - lp[1][t, seq[0, t + 1]])))
        np.testing.assert_allclose(vals[name]["greedy_sequence_sum"], ref, rtol=1e-4, atol=1e-5)
        assert all(kl[name][e] == pytest.approx(np.mean(v)) for e, v in vals[name].items())
        assert vals[name]["sampled_token_exact"].shape == (len(examples),) and np.all(vals[name]["sampled_token_exact"] > 0)
    same = kl_drift(base, base, cfg, tok, probes, jax.random.key(0), budgets, batch_size=4)
    assert all(abs(v) < 1e-6 for per in same.values() for v in per.values())
    with pytest.raises(ValueError, match="unknown KL estimators"):
        kl_drift(ft, base, cfg, tok, probes, jax.random.key(0), estimators=("k2",))


def test_sequential_report_transfer_metrics_and_stage_theory(tmp_path):
    """BWT/FWT/forgetting against hand computation on a 3-task matrix; the ES walk clock continues across
    stages; report.md and both plots are written."""
    import json

    from esjax.analysis import sequential_report as sr
    from esjax.analysis.stats import wilson_interval

    tasks = ["a", "b", "c"]
    acc = {"a": [0.25, 0.75, 0.5, 0.375], "b": [0.125, 0.25, 0.875, 0.5], "c": [0.0, 0.125, 0.25, 1.0]}
    R = sr.accuracy_matrix({"tasks": tasks, "accuracy": acc, "method": "es"})
    tr = sr.transfer(R)
    assert tr["forgetting"] == pytest.approx([0.75 - 0.375, 0.875 - 0.5, 0.0])
    assert tr["bwt"] == pytest.approx(((0.375 - 0.75) + (0.5 - 0.875)) / 2)  # final − just trained, tasks a, b
    assert tr["fwt"] == pytest.approx(((0.25 - 0.125) + (0.25 - 0.0)) / 2)  # before training it − base, tasks b, c
    alpha, d, N, f = 0.01, 1000, 4, [1.0, 0.5, 1.5, 2.0, 1.0, 1.0]
    walk = alpha * np.sqrt(np.cumsum(f) * d / N)
    dirs = []
    for s in range(3):  # each stage logs its own iterations 1..2, norms measured from the base model
        run = tmp_path / f"stage{s + 1}" / "es"
        run.mkdir(parents=True)
        rows = [{"iteration": 0}] + [{"iteration": i + 1, "update_norm_from_base": walk[2 * s + i],
                                      "noise_energy_factor": f[2 * s + i]} for i in range(2)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs.append(str(run))
    kl = [{"general": 0.01 * (s + 1), "a": 0.02, "b": 0.03, "c": 0.04} for s in range(3)]
    res = {"method": "es", "tasks": tasks, "columns": ["base", "after a", "after b", "after c"], "accuracy": acc,
           "incremental_kl": kl}
    es_cfg = {"alpha": alpha, "population_size": N, "antithetic": True}
    a = sr.analyze_sequence(res, 8, dirs, d, es_cfg)
    assert a["stage_norms"] == pytest.approx(walk[1::2].tolist())
    assert a["theory"]["stage_end_predicted"] == pytest.approx(walk[1::2].tolist())  # cumulative clock Σf
    assert a["accuracy_ci"][0][1] == pytest.approx(list(wilson_interval(6, 8)))
    from esjax.analysis.theory import awd_norm_prediction  # a sequence with anchored decay (anchor θ₀ throughout)
    awd = sr.analyze_sequence(res, 8, dirs, d, {**es_cfg, "awd_lambda": 20.0})
    assert awd["theory"]["awd"]["lambda"] == 20.0
    assert awd["theory"]["stage_end_predicted"] == pytest.approx(awd_norm_prediction(alpha, 20.0, f, d, N)[1::2].tolist())
    path = sr.write_sequential_report(str(tmp_path), {"es": a, "grpo": {**a, "method": "grpo", "theory": None}})
    md = open(path).read()
    assert "0.750 [" in md and "BWT -0.375, FWT +0.188" in md and "| 3 (c) |" in md
    assert sorted(os.listdir(tmp_path / "plots")) == ["forgetting_curves.png", "matrices.png"]
    with pytest.raises(ValueError, match="not a count out of n=8"):
        sr.analyze_sequence({**res, "accuracy": {**acc, "a": [0.3, 0.75, 0.5, 0.375]}}, 8, dirs)


def test_dimension_counts_the_tied_embedding_once_or_not_at_all():
    from esjax.analysis.report import dimension_info, perturbed_dimension
    from esjax.config import build_config
    from esjax.models.registry import load_model

    model = load_model("tiny-random-llama")
    p, tied = model.params, model.cfg.tie_embeddings
    assert tied and "lm_head" not in p
    every, layers = build_config("tiny", ["es.param_filter=.*"]), build_config("tiny", ["es.param_filter=^layers/"])
    n_embed = p["embed"].size
    assert perturbed_dimension(p, every) - perturbed_dimension(p, layers) == n_embed + p["final_norm"].size
    assert dimension_info(p, every, tied)["embedding_in_d"].startswith("once")
    assert dimension_info(p, layers, tied)["embedding_in_d"].startswith("not perturbed")


def test_a_report_with_a_zero_update_is_written_with_undefined_cosine(tmp_path):
    """The committed cpu-quick results with GRPO's update made zero: report.md is still written (the
    cosine rows read "undefined"), and the three geometric findings are inconclusive."""
    import json
    import shutil

    from esjax.analysis.report import write_report

    src = os.path.join(os.path.dirname(__file__), "..", "docs", "cpu-quick")
    out = tmp_path / "r"
    shutil.copytree(src, out)
    res = json.load(open(out / "results.json"))
    for k in ("intervals", "verdicts"):
        res.pop(k, None)
    res["cosine"]["global"] = res["theory"]["cosine_measured"] = None
    res["norms"]["grpo"]["once"], res["norms"]["ratio_es_over_grpo"] = 0.0, None
    md = open(write_report(str(out), res)).read()
    assert "| cosine(Δ_ES, Δ_GRPO) | undefined |" in md and "| ES/GRPO norm ratio | undefined |" in md
    got = {v["finding"]: v["verdict"] for v in json.load(open(out / "results.json"))["verdicts"]}
    assert [got[f] for f in ("ES norm ≫ GRPO", "ES denser", "near-orthogonal")] == ["inconclusive"] * 3
