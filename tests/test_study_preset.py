"""The ``study`` preset meets issue 17's sizes, its commands parse, and its time estimate is its docstring's."""
import pytest

from esjax.config import build_config
from esjax.presets import study


def test_study_preset_sizes_and_sweeps():
    from experiments.sweep import VARIANTS

    cfg = build_config("study")
    assert cfg.model == "smollm2-135m-instruct" and cfg.task == "arithmetic"
    assert cfg.eval_size >= 256 and cfg.probe_size >= 64
    assert cfg.grpo.total_steps == cfg.grpo_steps  # the lr schedule ends with the run
    assert len(study.SWEEPS["nsweep"]["populations"]) >= 3 and "awd" in study.SWEEPS["variants"]["variants"]
    for s in study.SWEEPS.values():
        assert set(s["variants"]) <= set(VARIANTS)
        run = build_config("study", s["sets"])  # the sweeps' overrides are valid config
        assert run.eval_size >= 64 and run.es_batch <= run.train_pool
    assert len(study.COMMANDS) == 4 and study.COMMANDS[0].startswith("python -m experiments.compare --preset study")
    seq = build_config("study", study.SEQUENTIAL["sets"])  # the sequential phase's overrides are valid config
    assert seq.grpo.total_steps == seq.grpo_steps and seq.es_batch <= seq.train_pool
    assert study.COMMANDS[3].startswith("python -m experiments.sequential --preset study") and "--tasks arithmetic,copy" in study.COMMANDS[3]


def test_study_time_estimate_matches_its_table_and_fits():
    e = study.estimate_seconds()
    ph = {k: round(v) for k, v in e["phases"].items()}
    assert ph == {"compare_load_base_eval": 184, "compare_es": 972, "compare_grpo": 803, "compare_after_evals": 307,
                  "compare_analysis": 498, "sweep_nsweep": 648, "sweep_variants": 648, "sequential": 1526}
    # sequential: load 30 + 2 methods × 3 evals × 2 tasks × 128 × 0.15 + 2 × 60 KL + 2 stages × (ES 42 + 39 × 64 × 0.096
    # + GRPO 61 + 39 × 5.9)
    assert ph["sequential"] == round(30 + 2 * 3 * 2 * 128 * 0.15 + 120 + 2 * (42 + 39 * 64 * 12.3 / 128 + 61 + 39 * 5.9))
    assert ph["compare_grpo"] == round(61 + 119 * 5.9 + 4 * study.SAVE_S)  # 120 steps: saves at 25, 50, 75, 100 (+ last)
    core = e["total"] - e["phases"]["sequential"]  # compare + sweeps
    assert core == pytest.approx(4060, abs=1) and e["total"] <= 95 * 60  # measured: docs/study/phases.json
    # the estimate scales with the run: twice the ES iterations cost ~74 × 12.3 s more
    longer = study.estimate_seconds({**study.PRESET, "es_iterations": 150})
    assert longer["phases"]["compare_es"] - e["phases"]["compare_es"] == pytest.approx(75 * 12.3 + 3 * study.SAVE_S)


def test_study_publishes_the_sweeps_with_the_root_n_law(tmp_path):
    """experiments.study --publish: copies the reports (no checkpoints) and tabulates ‖Δθ‖·√N per N."""
    import json
    import os

    import pytest

    from experiments.study import publish

    with pytest.raises(FileNotFoundError, match=r"study outputs missing .*study-nsweep/sweep.json"):
        publish(str(tmp_path / "none" / "study"), str(tmp_path / "pub"))
    out = tmp_path / "runs" / "study"
    (out / "plots").mkdir(parents=True)
    (out / "report.md").write_text("# report")
    (out / "plots" / "a.png").write_bytes(b"png")
    (out / "es" / "ckpt").mkdir(parents=True)
    rows = [{"run": f"es-N{n}", "N": n, "update_norm": 20.0 / n ** 0.5, "predicted_norm": 19.0 / n ** 0.5,
             "accuracy_after": 0.25, "accuracy_after_ci": [0.2, 0.3], "forgetting": 0.01,
             "forgetting_tasks": ["capitals", "copy"], "offtask_kl": 0.1} for n in (4, 16)]
    for name, rs in (("nsweep", rows), ("variants", rows[:1])):
        os.makedirs(f"{out}-{name}")
        json.dump(rs, open(f"{out}-{name}/sweep.json", "w"))
    seq = tmp_path / "runs" / "study-sequential"
    for f in ("report.md", "plots/acc.png", "es/sequential.json", "es/stage1-arithmetic/es/ckpt/1/x"):
        (seq / f).parent.mkdir(parents=True, exist_ok=True)
        (seq / f).write_text("x")
    dest = tmp_path / "docs"
    publish(str(out), str(dest))
    assert sorted(os.listdir(dest)) == ["nsweep-sweep.json", "plots", "report.md", "sequential", "sweeps.md",
                                        "variants-sweep.json"]
    got = sorted(os.path.relpath(os.path.join(r, f), dest / "sequential") for r, _, fs in os.walk(dest / "sequential") for f in fs)
    assert got == ["es/sequential.json", "plots/acc.png", "report.md"]  # no checkpoints
    md = (dest / "sweeps.md").read_text()
    assert md.count("| 20.0 |") == 2 and md.count("| 1.053 |") == 2  # ‖Δθ‖·√N constant; measured/predicted
