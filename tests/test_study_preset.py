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
    assert len(study.COMMANDS) == 3 and study.COMMANDS[0].startswith("python -m experiments.compare --preset study")


def test_study_time_estimate_matches_its_table_and_fits():
    e = study.estimate_seconds()
    ph = {k: round(v) for k, v in e["phases"].items()}
    assert ph == {"compare_load_base_eval": 184, "compare_es": 972, "compare_grpo": 710, "compare_after_evals": 307,
                  "compare_analysis": 498, "sweep_nsweep": 648, "sweep_variants": 648}
    assert e["total"] == pytest.approx(3966, abs=1) and e["total_with_safety"] <= 80 * 60
    # the estimate scales with the run: twice the ES iterations cost ~74 × 12.3 s more
    longer = study.estimate_seconds({**study.PRESET, "es_iterations": 150})
    assert longer["phases"]["compare_es"] - e["phases"]["compare_es"] == pytest.approx(75 * 12.3 + 3 * study.SAVE_S)


def test_study_publishes_the_sweeps_with_the_root_n_law(tmp_path):
    """experiments.study --publish: copies the reports (no checkpoints) and tabulates ‖Δθ‖·√N per N."""
    import json
    import os

    from experiments.study import publish

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
    dest = tmp_path / "docs"
    publish(str(out), str(dest))
    assert sorted(os.listdir(dest)) == ["nsweep-sweep.json", "plots", "report.md", "sweeps.md", "variants-sweep.json"]
    md = (dest / "sweeps.md").read_text()
    assert md.count("| 20.0 |") == 2 and md.count("| 1.053 |") == 2  # ‖Δθ‖·√N constant; measured/predicted
