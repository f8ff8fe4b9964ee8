"""End to end on the tiny random model: compare (3 ES iterations + 3 GRPO steps + the whole analysis and
report), the notebooks on the tiny results folder, the preset CLI, sequential training and the sweep
(exact resume after kill -9: ``test_resume.py``)."""
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from esjax.config import build_config
from esjax.runs import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRINTED = {}  # stdout of the module's compare run


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    from experiments.compare import main

    out = str(tmp_path_factory.mktemp("compare"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["--preset", "tiny", "--out", out, "--no-progress", "--interp-points", "3"])
    PRINTED["compare"] = printed.getvalue()
    return out


def test_compare_produces_every_measurement(tiny_results):
    res = json.load(open(os.path.join(tiny_results, "results.json")))
    for key in ("norms", "sparsity", "layer_norms", "cosine", "subspace_overlap_top8", "rank_fraction", "kl_drift",
                "interpolation", "direction_probes", "theory", "summaries"):
        assert key in res
    assert res["norms"]["es"]["once"] > res["norms"]["grpo"]["once"] > 0
    assert set(res["kl_drift"]["es"]["general"]) == {"sampled_token_k1", "greedy_sequence_sum", "sampled_token_exact"}
    assert len(res["interpolation"]["es_to_grpo"]["accuracy"]) == 3
    # fp32 ES on the tiny model follows the random-walk theory closely
    assert abs(res["theory"]["final_ratio_measured_over_predicted"] - 1) < 0.05
    report = open(os.path.join(tiny_results, "report.md")).read()
    assert "Theory vs measured" in report and "ES/GRPO norm ratio" in report
    assert len(os.listdir(os.path.join(tiny_results, "plots"))) == 4
    for m in ("es", "grpo"):
        rows = read_metrics(os.path.join(tiny_results, m))
        assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
        assert json.load(open(os.path.join(tiny_results, m, "config.json")))["model"] == "tiny-random-llama"
        assert res["summaries"][m]["status"] == "complete"
        # per-problem correctness recorded in example order: the report's before → after test is paired
        for when in ("before", "after"):
            c = res["summaries"][m][when]["eval/lowercase/correct"]
            assert len(c) == 8 and set(c) <= {0, 1} and sum(c) / 8 == res["summaries"][m][when]["eval/lowercase/accuracy"]
            assert len(res["summaries"][m][when]["eval/arithmetic/correct"]) == 8
        assert res["intervals"]["accuracy"][m]["lowercase"]["change"]["test"] == "exact McNemar"
        assert rows[-1]["eval/lowercase/correct"] == res["summaries"][m]["after"]["eval/lowercase/correct"]
    # every phase says when it starts and ends, with its time, in order (the analysis takes minutes on CPU)
    lines = PRINTED["compare"].splitlines()
    marks = [i for p in ("load_and_base_eval", "train_es", "train_grpo", "analysis", "report")
             for i, line in enumerate(lines) if line.startswith((f"[{p}] started", f"[{p}] done in "))]
    assert len(marks) == 10 and marks == sorted(marks), PRINTED["compare"]
    assert any(line.startswith("[analysis] started: update geometry") for line in lines)
    stages = [i for p in ("[analysis] started", "geometry", "kl_drift", "connectivity", "direction_probes", "theory",
                          "[analysis] done in ") for i, line in enumerate(lines) if line.startswith((p, f"[analysis/{p}] done in "))]
    assert len(stages) == 7 and stages == sorted(stages), PRINTED["compare"]  # the analysis shows its stages
    assert res["intervals"]["es_vs_grpo_after"]["test"] == "exact McNemar"
    assert res["intervals"]["forgetting_es_minus_grpo"]["test"] == "exact McNemar"
    assert len(res["verdicts"]) == 8 and {v["verdict"] for v in res["verdicts"]} <= {"reproduced", "contradicted",
                                                                                       "inconclusive"}


@pytest.mark.parametrize("name", ["theory_vs_measured_drift", "geometry_es_vs_grpo"])
def test_notebooks_execute_on_tiny_results(tiny_results, name):
    env = dict(os.environ, ESJAX_RESULTS=tiny_results, XLA_FLAGS="")
    subprocess.run([sys.executable, os.path.join(ROOT, "notebooks", f"{name}.py")], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    assert os.listdir(os.path.join(tiny_results, "notebook_figures"))


def test_notebooks_flag_an_unfinished_run(tmp_path):
    """The committed cpu-quick results predate the status field (read as complete); a failed run is named."""
    res = json.load(open(os.path.join(ROOT, "docs", "cpu-quick", "results.json")))
    res["summaries"]["es"].pop("status", None)
    res["summaries"]["grpo"]["status"] = "failed"
    json.dump(res, open(tmp_path / "results.json", "w"))
    env = dict(os.environ, ESJAX_RESULTS=str(tmp_path), XLA_FLAGS="")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "notebooks", "geometry_es_vs_grpo.py")], check=True,
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    assert f"WARNING: the GRPO run in {tmp_path} is failed, not complete" in out and "the ES run" not in out


def test_config_overrides_and_errors():
    cfg = build_config("tiny", ["es.sigma=0.01", "grpo.beta=0.02", "es_iterations=7", "eval_tasks=arithmetic,lowercase",
                                "es.param_filter=layers/0/"])
    assert cfg.es.sigma == 0.01 and cfg.grpo.beta == 0.02 and cfg.es_iterations == 7
    assert cfg.eval_tasks == ("arithmetic", "lowercase") and cfg.es.param_filter == "layers/0/"
    switched = build_config("cpu-quick", ["task=gsm8k", "task_kwargs.path=/data/gsm8k"])
    assert switched.task_kwargs == {"path": "/data/gsm8k"}
    assert build_config("cpu-quick", ["task=countdown"]).task_kwargs == {}
    with pytest.raises(ValueError, match="unknown config key 'es.sgima'"):
        build_config("tiny", ["es.sgima=1"])
    with pytest.raises(ValueError, match="sigma and alpha must be positive"):
        build_config("tiny", ["es.sigma=-1"])
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(ValueError, match="cannot exceed train_pool"):
        build_config("tiny", ["es_batch=100"])


def test_sequential_accuracy_and_kl_matrices(tmp_path):
    from experiments.sequential import main

    # GRPO too: its runs donate their state's buffers to each update, yet every stage's params stay readable
    # for the KL matrix (each run copies the state it is given)
    main(["--preset", "tiny", "--out", str(tmp_path), "--no-progress", "--tasks", "lowercase,arithmetic",
          "--methods", "es,grpo", "--set", "es_iterations=2", "--set", "grpo_steps=2"])
    g = json.load(open(tmp_path / "grpo" / "sequential.json"))
    assert len(g["incremental_kl"]) == 2 and all(len(v) == 3 for v in g["accuracy"].values())
    res = json.load(open(tmp_path / "es" / "sequential.json"))
    assert res["columns"] == ["base", "after lowercase", "after arithmetic"]
    assert all(len(v) == 3 for v in res["accuracy"].values())
    assert len(res["incremental_kl"]) == 2 and set(res["incremental_kl"][0]) == {"general", "lowercase", "arithmetic"}
    # stage 2 continued from stage 1: its first logged norm already includes stage 1's movement
    s2 = read_metrics(str(tmp_path / "es" / "stage2-arithmetic" / "es"))
    s1 = read_metrics(str(tmp_path / "es" / "stage1-lowercase" / "es"))
    assert s2[1]["update_norm_from_base"] > s1[1]["update_norm_from_base"]
    # the stages' checkpoints were trained without --reset-optimizer: a rerun with it is refused, not mixed
    with pytest.raises(ValueError, match=r"reset_optimizer: False -> True"):
        main(["--preset", "tiny", "--out", str(tmp_path), "--no-progress", "--tasks", "lowercase,arithmetic",
              "--methods", "es", "--set", "es_iterations=2", "--reset-optimizer"])
    with pytest.raises(ValueError, match=r"--methods: unknown \['gpro'\]"):
        main(["--preset", "tiny", "--out", str(tmp_path / "typo"), "--methods", "es,gpro"])


def test_sweep_reports_theory_beside_each_variant(tmp_path):
    from experiments.sweep import main

    with pytest.raises(ValueError, match=r"--set es.population_size: the sweep sets these itself"):
        main(["--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "es.population_size=16"])
    dry = main(["--preset", "tiny", "--out", str(tmp_path / "dry"), "--dry-run", "--no-probe", "--populations", "4",
                "--variants", "plain,kl"])  # costs per point; nothing trains
    assert sorted(dry) == ["es-N4-a0.05-kl", "es-N4-a0.05-plain"] and not os.path.exists(tmp_path / "dry" / "sweep.json")
    # without --alphas, α is the config's, a --set es.alpha included (no axis replaces it)
    assert list(main(["--preset", "tiny", "--out", str(tmp_path / "dry"), "--dry-run", "--no-probe", "--populations",
                      "4", "--variants", "plain", "--set", "es.alpha=0.1"])) == ["es-N4-a0.1-plain"]
    rows = main(["--preset", "tiny", "--out", str(tmp_path), "--no-progress", "--populations", "4,8",
                 "--variants", "plain,kl", "--set", "es.antithetic=false", "--probe-size", "2"])
    assert [r["run"] for r in rows] == ["es-N4-a0.05-plain", "es-N4-a0.05-kl", "es-N8-a0.05-plain", "es-N8-a0.05-kl"]
    for r in rows:  # the tiny preset's noise is pure drift: measured ≈ α√(T d f / N) within a few percent
        assert r["update_norm"] == pytest.approx(r["predicted_norm"], rel=0.02) and r["offtask_kl"] >= 0
    assert rows[2]["predicted_norm"] < rows[0]["predicted_norm"]  # larger N, smaller predicted drift
    assert all(r["forgetting_tasks"] == ["arithmetic"] for r in rows)  # eval tasks but the trained one
    assert os.path.exists(tmp_path / "sweep.png") and "predicted_norm" in open(tmp_path / "sweep.csv").readline()
